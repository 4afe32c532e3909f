//! The Hopper path of [`crate::ops::softmax`] (`kernels/softmax_sm90.cu`, sm_90a): the
//! cluster-per-row instances, the choice of one for a row (default or forced), and their launches.
//! Launch shapes are stated in the kernel's header.

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::ops::rows::{cluster_plan, cluster_threads, ClusterKernel, ClusterShape};

/// The six cluster instances of a softmax kernel: packs per thread `big` (launch bound 512) and
/// `small` (1024) for clusters of 2, 4 and 8.
macro_rules! softmax_clusters {
    ($prefix:literal, $big:literal, $small:literal) => {
        [
            ClusterKernel {
                c: 2,
                p: $big,
                bound: 512,
                name: concat!($prefix, "_c2_p", $big),
            },
            ClusterKernel {
                c: 2,
                p: $small,
                bound: 1024,
                name: concat!($prefix, "_c2_p", $small),
            },
            ClusterKernel {
                c: 4,
                p: $big,
                bound: 512,
                name: concat!($prefix, "_c4_p", $big),
            },
            ClusterKernel {
                c: 4,
                p: $small,
                bound: 1024,
                name: concat!($prefix, "_c4_p", $small),
            },
            ClusterKernel {
                c: 8,
                p: $big,
                bound: 512,
                name: concat!($prefix, "_c8_p", $big),
            },
            ClusterKernel {
                c: 8,
                p: $small,
                bound: 1024,
                name: concat!($prefix, "_c8_p", $small),
            },
        ]
    };
}

/// Cluster-per-row forward kernels (`kernels/softmax_sm90.cu`), smallest cluster first.
pub(super) const FWD_CLUSTER: [ClusterKernel; 6] = softmax_clusters!("softmax_fwd_cluster", 8, 4);
/// Cluster-per-row backward kernels (two arrays per thread: half the packs of the forward).
pub(super) const BWD_CLUSTER: [ClusterKernel; 6] = softmax_clusters!("softmax_bwd_cluster", 4, 2);
/// Rows of at least this many columns take a cluster per row on compute capability 9.0 (with
/// 4-element accesses); shorter rows a warp or a block per row.
const CLUSTER_MIN_COLS: usize = 16384;

/// A launch shape of [`forward`](super::forward) or [`backward`](super::backward) forced by
/// benchmarks and tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftmaxForce {
    /// The portable kernels (`kernels/softmax.cu`) even where a cluster would be used.
    Portable,
    /// A cluster of `c` blocks of `threads` per row, `p` packs per thread (compute capability
    /// 9.0, 4-element accesses; an instance must exist and hold the row).
    Cluster { c: usize, p: usize, threads: u32 },
}

/// Whether `force` fits rows of `cols` columns on `gpu` for the forward (`bwd`: the backward)
/// with 16-byte aligned buffers, without launching anything.
pub fn softmax_force_fits(gpu: &Gpu, cols: usize, bwd: bool, force: SoftmaxForce) -> bool {
    let vec = if cols % 4 == 0 { 4 } else { 1 };
    let kernels: &[ClusterKernel] = if bwd { &BWD_CLUSTER } else { &FWD_CLUSTER };
    cluster_shape("sweep", gpu, cols, vec, kernels, Some(force)).is_ok()
}

/// The cluster shape for rows of `cols` columns of 4-element packs: the forced one, or by
/// default the first instance that holds a row of ≥ [`CLUSTER_MIN_COLS`] columns, on a 9.0 device.
pub(super) fn cluster_shape(
    op: &'static str,
    gpu: &Gpu,
    cols: usize,
    vec: usize,
    kernels: &[ClusterKernel],
    force: Option<SoftmaxForce>,
) -> Result<Option<ClusterShape>> {
    let hopper = gpu.info().compute_capability == (9, 0);
    let packs = cols / 4;
    match force {
        None => Ok((hopper && vec == 4 && cols >= CLUSTER_MIN_COLS)
            .then(|| cluster_plan(packs, kernels))
            .flatten()),
        Some(SoftmaxForce::Portable) => Ok(None),
        Some(SoftmaxForce::Cluster { c, p, threads }) => {
            let shape = kernels
                .iter()
                .find(|k| k.c == c && k.p == p)
                .filter(|k| {
                    let least = cluster_threads(k, packs, k.bound);
                    hopper && vec == 4 && least.is_some_and(|l| threads >= l)
                })
                .filter(|k| threads <= k.bound && threads % 32 == 0)
                .map(|k| ClusterShape {
                    kernel: *k,
                    threads,
                });
            shape.map(Some).ok_or_else(|| Error::InvalidArgument {
                op,
                detail: format!("{force:?} does not fit rows of {cols} columns on this device"),
            })
        }
    }
}

/// The launch of a cluster kernel over `rows` rows: `c` blocks per row.
fn cluster_launch(op: &'static str, rows: usize, c: ClusterShape) -> Result<LaunchConfig> {
    let grid = u32::try_from(rows * c.kernel.c).map_err(|_| Error::InvalidArgument {
        op,
        detail: format!("{rows} rows need more than 2^32 blocks"),
    })?;
    Ok(LaunchConfig::linear(grid, c.threads))
}

/// Launches the forward cluster kernel `c` (from [`cluster_shape`] with [`FWD_CLUSTER`]) over
/// `rows` rows of `cols` columns: `ptrs` are x and y. The caller has checked both buffers' lengths
/// and their 16-byte alignment.
pub(super) fn launch_fwd(
    op: &'static str,
    gpu: &Gpu,
    rows: usize,
    c: ClusterShape,
    [xp, yp]: [u64; 2],
    cols: i32,
) -> Result<()> {
    let mut args = KernelArgs::new();
    args.push(xp).push(yp).push(cols);
    let cfg = cluster_launch(op, rows, c)?;
    // SAFETY: softmax_fwd_cluster_c*_p*(const float* x, float* y, int cols) matches; x and
    // y hold rows·cols f32 (checked by the caller), cols % 4 == 0 with 16-byte aligned rows
    // (vec); the grid is rows clusters of the kernel's compile-time size, every row within
    // c·p·threads packs, threads within the launch bound, on a 9.0 device.
    unsafe { gpu.launch(&kernels::SOFTMAX_SM90, c.kernel.name, cfg, &args) }
}

/// Launches the backward cluster kernel `c` (from [`cluster_shape`] with [`BWD_CLUSTER`]) over
/// `rows` rows of `cols` columns: `ptrs` are y, dy and dx. Same caller duties as [`launch_fwd`].
pub(super) fn launch_bwd(
    op: &'static str,
    gpu: &Gpu,
    rows: usize,
    c: ClusterShape,
    [yp, dyp, dxp]: [u64; 3],
    cols: i32,
) -> Result<()> {
    let mut args = KernelArgs::new();
    args.push(yp).push(dyp).push(dxp).push(cols);
    let cfg = cluster_launch(op, rows, c)?;
    // SAFETY: softmax_bwd_cluster_c*_p*(const float* y, const float* dy, float* dx, int
    // cols) matches; the buffers hold rows·cols f32 (checked by the caller), cols % 4 == 0 with
    // 16-byte aligned rows (vec); the grid is rows clusters of the kernel's compile-time
    // size, every row within c·p·threads packs, threads within the launch bound, on 9.0.
    unsafe { gpu.launch(&kernels::SOFTMAX_SM90, c.kernel.name, cfg, &args) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rows::ptx_maxntid;

    #[test]
    fn every_kernel_name_exists_with_the_host_launch_bound() {
        let sm90 = kernels::SOFTMAX_SM90.ptx;
        for k in FWD_CLUSTER.iter().chain(&BWD_CLUSTER) {
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
