//! The Hopper path of [`crate::ops::cross_entropy`]: the cluster-per-row instances of the loss
//! (`softmax_ce_cluster_*`, sm_90a) and their launch. Those kernels live in
//! `kernels/softmax_sm90.cu`, in the one sm_90a module softmax and the loss share (the same
//! cluster reductions and row code, `kernels/softmax_common.cuh`); launch shapes are stated in
//! its header. The plan that chooses a cluster for a row is [`super::plan`]'s.

use crate::cuda::LaunchConfig;
use crate::error::{Error, Result};
use crate::kernels::{self, KernelModule};
use crate::ops::rows::{ClusterKernel, ClusterShape};

/// A `softmax_ce_cluster` table entry.
macro_rules! cluster {
    ($t:literal, $c:literal, $p:literal, $bound:literal) => {
        ClusterKernel {
            c: $c,
            p: $p,
            bound: $bound,
            name: concat!("softmax_ce_cluster_", $t, "_c", $c, "_p", $p),
        }
    };
}

/// The cluster instances of one logit type: packs per thread `big` (launch bound 512) and
/// `small` (1024) for clusters of 2, 4 and 8.
macro_rules! clusters {
    ($t:literal, $big:literal, $small:literal) => {
        &[
            cluster!($t, 2, $big, 512),
            cluster!($t, 2, $small, 1024),
            cluster!($t, 4, $big, 512),
            cluster!($t, 4, $small, 1024),
            cluster!($t, 8, $big, 512),
            cluster!($t, 8, $small, 1024),
        ]
    };
}

/// The f32-logit cluster instances, smallest cluster first.
pub(super) const F32_CLUSTER: &[ClusterKernel] = clusters!("f32", 8, 4);
/// The f16-logit cluster instances, smallest cluster first.
pub(super) const F16_CLUSTER: &[ClusterKernel] = clusters!("f16", 4, 2);
/// The bf16-logit cluster instances (f16's shapes), smallest cluster first.
pub(super) const BF16_CLUSTER: &[ClusterKernel] = clusters!("bf16", 4, 2);

/// The module, entry point and launch configuration of a cluster loss over `rows` rows in
/// `blocks` blocks (`c`'s cluster size per row).
pub(super) fn cluster_launch(
    op: &'static str,
    rows: usize,
    blocks: usize,
    c: ClusterShape,
) -> Result<(&'static KernelModule, &'static str, LaunchConfig)> {
    let grid = u32::try_from(blocks).map_err(|_| Error::InvalidArgument {
        op,
        detail: format!("{rows} rows need more than 2^32 blocks"),
    })?;
    Ok((
        &kernels::SOFTMAX_SM90,
        c.kernel.name,
        LaunchConfig::linear(grid, c.threads),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rows::ptx_maxntid;

    #[test]
    fn every_kernel_name_exists_with_the_host_launch_bound() {
        let sm90 = kernels::SOFTMAX_SM90.ptx;
        for k in F32_CLUSTER.iter().chain(F16_CLUSTER).chain(BF16_CLUSTER) {
            assert_eq!(ptx_maxntid(sm90, k.name), Some(k.bound), "{}", k.name);
            assert!(
                sm90.contains(&format!(".entry {}(", k.name))
                    && k.name.contains(&format!("_c{}_p{}", k.c, k.p)),
                "{}",
                k.name
            );
        }
    }
}
