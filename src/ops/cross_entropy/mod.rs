//! Fused softmax-cross-entropy on the GPU (`kernels/cross_entropy.cu`, and on compute capability
//! 9.0 the cluster kernels for long rows in `kernels/softmax_sm90.cu`, the sm_90a module it shares
//! with softmax); CPU twin: [`crate::cpu::cross_entropy`], which documents the
//! function, its non-finite behaviour and the argument checks. Same argument order and errors,
//! reported before anything is launched; the loss differs in where its inputs and output live
//! (below).
//!
//! Logits are f32, f16 or bf16 ([`Logit`]), gradients f32, f16 or bf16 ([`Grad`]), in any
//! pairing; the math is f32 for all. The kernels read 16 bytes of logits at a time (8 f16 or bf16,
//! 4 f32) when `classes` is a multiple of that and both `logits` and `dlogits` are 16-byte
//! aligned, else 4 or 1 elements. The launch
//! shapes (row groups of warps, a warp or block per row, shared memory, a thread-block cluster
//! per row) and the row lengths that choose between them are stated in the kernels' headers,
//! `kernels/cross_entropy.cu` and `kernels/softmax_sm90.cu`; the measurements behind them are in
//! `docs/kernels/cross_entropy.md`.
//!
//! # On the device
//!
//! [`softmax_cross_entropy`] computes in f32 (the reference in f64) and never synchronises with
//! the host, so a training step can be captured in a CUDA graph:
//! - `grad_scale` is **one f32 in device memory**, read by the kernel: AMP's loss scale, updated
//!   on the device by [`crate::ops::scaler`], enters here and nowhere else. It multiplies the
//!   gradient only, never the loss, and is applied as given (a non-finite scale gives non-finite
//!   gradients, which the unscale step's inf check catches).
//! - The mean loss is written to **one f32 in device memory**, in the same launch: each block
//!   writes one f64 partial sum of its rows' losses to the device's scratch buffer, and the last
//!   block to finish (an integer ticket) adds the partials in a fixed order. No float atomics.
//! - exp(x − max) goes through the SFU's flush-to-zero `ex2`: values below 2^−126 are 0, so each
//!   gradient may differ from the reference's by `|grad_scale/rows|·2^−126` (they add nothing to
//!   the row sum in f32).
//! - **Labels out of range**: the reference returns [`Error::InvalidArgument`]; the labels here are
//!   in device memory, and checking them would cost a host synchronisation. Instead a row whose
//!   label is ≥ `classes` gets a NaN loss and NaN in every one of its `dlogits`, so the mean loss
//!   is NaN (visible when the host logs it) and the step's inf/NaN check flags the gradients.
//!   Other rows are computed normally.

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::ops::rows::{
    check_aligned, kernel_dims, p_index, shared_limit, vec_width, ClusterKernel,
};
use crate::validate;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use half::{bf16, f16};
use plan::{ce_forced, ce_plan, CeKernels, CeShape, GROUP_BLOCK};

/// `["<prefix>_v{vec}_p1", … "_p8"]`: a loss kernel keeping the row in registers, for one access
/// width and packs per thread 1, 2, 4, 8.
macro_rules! ce_rows_names {
    ($prefix:literal, $vec:literal) => {
        [
            concat!($prefix, "_v", $vec, "_p1"),
            concat!($prefix, "_v", $vec, "_p2"),
            concat!($prefix, "_v", $vec, "_p4"),
            concat!($prefix, "_v", $vec, "_p8"),
        ]
    };
}

mod plan;
mod sm90;
pub(crate) mod tuning;
use plan::{CeForce, GroupKernel};

/// Logit types [`softmax_cross_entropy`] reads: f32, f16 or bf16 (widened exactly to f32).
pub trait Logit: DeviceRepr + sealed::Sealed {
    /// Access widths the loss kernels are built for, widest first: 16 bytes of logits, then
    /// 4 elements, then 1.
    #[doc(hidden)]
    const VECS: &'static [usize];
    /// Row-in-registers kernels, by access width (as [`Logit::VECS`]) and packs per thread
    /// (1, 2, 4, 8).
    #[doc(hidden)]
    const ROWS: &'static [[&'static str; 4]];
    /// The same with the next row prefetched.
    #[doc(hidden)]
    const ROWS_PF: &'static [[&'static str; 4]];
    /// Block-per-row kernels with the row in shared memory, by access width.
    #[doc(hidden)]
    const BLOCK: &'static [&'static str];
    /// Row-group kernels (16-byte packs), in the planner's order of preference.
    #[doc(hidden)]
    const GROUPS: &'static [GroupKernel];
    /// Whether the default row-group launch prefetches the next row (measured per type).
    #[doc(hidden)]
    const GROUPS_PREFETCH: bool;
    /// Cluster-per-row kernels (16-byte packs, sm_90), smallest cluster first.
    #[doc(hidden)]
    const CLUSTER: &'static [ClusterKernel];
}

/// A `softmax_ce_groups` table entry.
macro_rules! group {
    ($t:literal, $p:literal, $w:literal) => {
        GroupKernel {
            p: $p,
            warps: $w,
            name: concat!("softmax_ce_groups_", $t, "_p", $p, "_w", $w),
            name_pf: concat!("softmax_ce_groups_pf_", $t, "_p", $p, "_w", $w),
        }
    };
}

impl Logit for f32 {
    const VECS: &'static [usize] = &[4, 1];
    const ROWS: &'static [[&'static str; 4]] = &[
        ce_rows_names!("softmax_ce_rows_f32", "4"),
        ce_rows_names!("softmax_ce_rows_f32", "1"),
    ];
    const ROWS_PF: &'static [[&'static str; 4]] = &[
        ce_rows_names!("softmax_ce_rows_pf_f32", "4"),
        ce_rows_names!("softmax_ce_rows_pf_f32", "1"),
    ];
    const BLOCK: &'static [&'static str] = &["softmax_ce_block_f32_v4", "softmax_ce_block_f32_v1"];
    const GROUPS: &'static [GroupKernel] = &[
        group!("f32", 1, 1),
        group!("f32", 2, 1),
        group!("f32", 4, 1),
        group!("f32", 4, 2),
        group!("f32", 4, 4),
        group!("f32", 8, 4),
        group!("f32", 8, 8),
    ];
    const GROUPS_PREFETCH: bool = false;
    const CLUSTER: &'static [ClusterKernel] = sm90::F32_CLUSTER;
}
impl Logit for f16 {
    const VECS: &'static [usize] = &[8, 4, 1];
    const ROWS: &'static [[&'static str; 4]] = &[
        ce_rows_names!("softmax_ce_rows_f16", "8"),
        ce_rows_names!("softmax_ce_rows_f16", "4"),
        ce_rows_names!("softmax_ce_rows_f16", "1"),
    ];
    const ROWS_PF: &'static [[&'static str; 4]] = &[
        ce_rows_names!("softmax_ce_rows_pf_f16", "8"),
        ce_rows_names!("softmax_ce_rows_pf_f16", "4"),
        ce_rows_names!("softmax_ce_rows_pf_f16", "1"),
    ];
    const BLOCK: &'static [&'static str] = &[
        "softmax_ce_block_f16_v8",
        "softmax_ce_block_f16_v4",
        "softmax_ce_block_f16_v1",
    ];
    const GROUPS: &'static [GroupKernel] = &[
        group!("f16", 1, 1),
        group!("f16", 2, 1),
        group!("f16", 4, 1),
        group!("f16", 4, 2),
        group!("f16", 4, 4),
        group!("f16", 4, 8),
    ];
    const GROUPS_PREFETCH: bool = false;
    const CLUSTER: &'static [ClusterKernel] = sm90::F16_CLUSTER;
}
/// bf16 logits take f16's instances (the same widths), built for bf16.
impl Logit for bf16 {
    const VECS: &'static [usize] = &[8, 4, 1];
    const ROWS: &'static [[&'static str; 4]] = &[
        ce_rows_names!("softmax_ce_rows_bf16", "8"),
        ce_rows_names!("softmax_ce_rows_bf16", "4"),
        ce_rows_names!("softmax_ce_rows_bf16", "1"),
    ];
    const ROWS_PF: &'static [[&'static str; 4]] = &[
        ce_rows_names!("softmax_ce_rows_pf_bf16", "8"),
        ce_rows_names!("softmax_ce_rows_pf_bf16", "4"),
        ce_rows_names!("softmax_ce_rows_pf_bf16", "1"),
    ];
    const BLOCK: &'static [&'static str] = &[
        "softmax_ce_block_bf16_v8",
        "softmax_ce_block_bf16_v4",
        "softmax_ce_block_bf16_v1",
    ];
    const GROUPS: &'static [GroupKernel] = &[
        group!("bf16", 1, 1),
        group!("bf16", 2, 1),
        group!("bf16", 4, 1),
        group!("bf16", 4, 2),
        group!("bf16", 4, 4),
        group!("bf16", 4, 8),
    ];
    const GROUPS_PREFETCH: bool = false;
    const CLUSTER: &'static [ClusterKernel] = sm90::BF16_CLUSTER;
}

/// Gradient types [`softmax_cross_entropy`] writes: f32, f16 (round to nearest even, overflow to
/// ±inf from 65520) or bf16 (round to nearest even, bit for bit as `half::bf16::from_f32` on the
/// kernel's f32 value: f32's range, 8 significant bits).
pub trait Grad: DeviceRepr + sealed::Sealed {
    /// The kernels' `out_kind` code (`OUT_F32`, `OUT_F16`, `OUT_BF16` in
    /// `kernels/softmax_common.cuh`).
    #[doc(hidden)]
    const OUT_KIND: i32;
}
impl Grad for f32 {
    const OUT_KIND: i32 = 0;
}
impl Grad for f16 {
    const OUT_KIND: i32 = 1;
}
impl Grad for bf16 {
    const OUT_KIND: i32 = 2;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// Access width of the loss: 16 bytes of logits (8 f16/bf16 or 4 f32: `widest`) when `classes`
/// is a multiple and both row-major buffers are 16-byte aligned, else 4 elements when
/// `classes % 4 == 0` and both are aligned to 4 elements, else 1. (8 f32 per thread would be
/// two 16-byte accesses 32 bytes apart, each using half of every 32-byte sector: measured
/// slower.)
pub(crate) fn ce_vec(
    classes: usize,
    widest: usize,
    logits: (u64, usize),
    dlogits: (u64, usize),
) -> usize {
    let ptrs = [logits, dlogits];
    if widest == 8 && classes % 8 == 0 && ptrs.iter().all(|&(a, _)| a % 16 == 0) {
        8
    } else {
        vec_width(classes, &ptrs)
    }
}

/// Index of `vec` in a logit type's [`Logit::VECS`].
pub(crate) fn ce_vec_index<L: Logit>(vec: usize) -> usize {
    L::VECS
        .iter()
        .position(|&v| v == vec)
        .expect("ce_vec returns one of the logit type's widths")
}

/// The instances the planner may choose from for logits `L` on `gpu` (clusters on 9.0 only).
pub(super) fn ce_kernels<L: Logit>(gpu: &Gpu) -> CeKernels {
    CeKernels {
        widest: L::VECS[0],
        groups: L::GROUPS,
        groups_prefetch: L::GROUPS_PREFETCH,
        cluster: (gpu.info().compute_capability == (9, 0)).then_some(L::CLUSTER),
    }
}

/// Fused softmax + cross-entropy: writes the mean over rows of `logsumexp(xᵣ) − xᵣ[labelᵣ]` to
/// `loss` (one f32 on the device) and `dlogits = (softmax(x) − onehot(label)) · grad_scale / rows`
/// in one pass over the logits, without materialising the probabilities.
///
/// `logits` and `dlogits` are `[rows, classes]` (f32, f16 or bf16 each), `labels` has `rows`
/// entries, `grad_scale` and `loss` are one f32 each, all in device memory. The GPU twin of
/// [`crate::cpu::cross_entropy::softmax_cross_entropy`]: same argument checks and errors (before any
/// launch), except that labels cannot be checked without a host synchronisation: an
/// out-of-range label makes its row's loss and gradients NaN (see the [module docs](self)).
/// One launch; uses a scratch buffer of the `Gpu` handle's own (never shared with other ops) for
/// the partial sums of the loss (8 bytes per block, or per row for the cluster kernels) behind
/// the counter of blocks done.
#[allow(clippy::too_many_arguments)] // the CPU reference's arguments plus the device loss
///
/// The two type parameters are the element types, inferred from the buffers; name them to pick
/// an instance without buffers in scope: `softmax_cross_entropy::<f16, f32>(...)`.
pub fn softmax_cross_entropy<L: Logit, D: Grad>(
    gpu: &Gpu,
    logits: &impl DevicePtr<L>,
    labels: &impl DevicePtr<u32>,
    rows: usize,
    classes: usize,
    grad_scale: &impl DevicePtr<f32>,
    dlogits: &mut impl DevicePtrMut<D>,
    loss: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let bufs = (logits, labels, grad_scale);
    cross_entropy_impl(gpu, bufs, rows, classes, dlogits, loss, None)
}

fn cross_entropy_impl<L, D, X, T, S, G, O>(
    gpu: &Gpu,
    (logits, labels, grad_scale): (&X, &T, &S),
    rows: usize,
    classes: usize,
    dlogits: &mut G,
    loss: &mut O,
    force: Option<CeForce>,
) -> Result<()>
where
    L: Logit,
    D: Grad,
    X: DevicePtr<L>,
    T: DevicePtr<u32>,
    S: DevicePtr<f32>,
    G: DevicePtrMut<D>,
    O: DevicePtrMut<f32>,
{
    const OP: &str = "ops::cross_entropy::softmax_cross_entropy";
    let lens = [logits.len(), dlogits.len(), labels.len()];
    validate::cross_entropy::check(OP, rows, classes, lens)?;
    for (name, n) in [("grad_scale", grad_scale.len()), ("loss", loss.len())] {
        if n != 1 {
            return Err(Error::ShapeMismatch {
                op: OP,
                detail: format!("{name} must be one f32 on the device, got {n} elements"),
            });
        }
    }
    let (ri, ci) = kernel_dims(OP, rows, classes)?;
    let (lb, db) = (std::mem::size_of::<L>(), std::mem::size_of::<D>());
    let stream = gpu.stream();
    let (xp, _g1) = logits.device_ptr(stream);
    let (tp, _g2) = labels.device_ptr(stream);
    let (sp, _g3) = grad_scale.device_ptr(stream);
    let (dp, _g4) = dlogits.device_ptr_mut(stream);
    let (op, _g5) = loss.device_ptr_mut(stream);
    check_aligned(
        OP,
        &[
            ("logits", xp, lb),
            ("labels", tp, 4),
            ("grad_scale", sp, 4),
            ("dlogits", dp, db),
            ("loss", op, 4),
        ],
    )?;
    let vec = ce_vec(classes, L::VECS[0], (xp, lb), (dp, db));
    let packs = classes / vec;
    let limit = shared_limit(gpu)?;
    let k = ce_kernels::<L>(gpu);
    let shape = match force {
        None => ce_plan(packs, vec, limit, lb == 4, &k),
        Some(f) => ce_forced(packs, vec, limit, f, &k).ok_or_else(|| Error::InvalidArgument {
            op: OP,
            detail: format!(
                "{f:?} does not fit rows of {classes} classes (vec {vec}) on this device"
            ),
        })?,
    };
    let blocks = shape.blocks(rows);
    // 8 bytes of completion counter, then one f64 per partial.
    gpu.with_ticket_scratch(8 + shape.partials(rows) * 8, |partial| {
        let mut args = KernelArgs::new();
        args.push(xp).push(tp).push(sp).push(dp).push(D::OUT_KIND);
        args.push(partial).push(op).push(ri).push(ci);
        let mut module = &kernels::CROSS_ENTROPY;
        let (kernel, cfg) = match shape {
            CeShape::Rows {
                p,
                threads,
                group,
                prefetch,
            } => {
                args.push(group as i32);
                let table = if prefetch { L::ROWS_PF } else { L::ROWS };
                let kernel = table[ce_vec_index::<L>(vec)][p_index(p)];
                (kernel, LaunchConfig::linear(blocks as u32, threads))
            }
            CeShape::Shared { threads, cached } => {
                args.push(cached as i32);
                let cfg = LaunchConfig {
                    shared_bytes: (cached * vec * 4) as u32,
                    ..LaunchConfig::linear(blocks as u32, threads)
                };
                (L::BLOCK[ce_vec_index::<L>(vec)], cfg)
            }
            CeShape::Groups {
                kernel, prefetch, ..
            } => {
                let name = if prefetch {
                    kernel.name_pf
                } else {
                    kernel.name
                };
                (name, LaunchConfig::linear(blocks as u32, GROUP_BLOCK))
            }
            CeShape::Cluster(c) => {
                let (sm90_module, kernel, cfg) = sm90::cluster_launch(OP, rows, blocks, c)?;
                module = sm90_module;
                (kernel, cfg)
            }
        };
        // SAFETY: softmax_ce_rows_{f32,f16,bf16}_v*_p*(const L* logits, const unsigned* labels,
        // const float* grad_scale, void* dlogits, int out_kind, double* partial, float* loss,
        // int rows, int classes, int group), softmax_ce_block_{f32,f16,bf16}_v*(…, int classes,
        // int cached), and softmax_ce_groups[_pf]_* and softmax_ce_cluster_* (…, int rows, int
        // classes) match the arguments pushed for each shape, with L (the instance's logit type)
        // and out_kind (dlogits' element type, 2 or 4 bytes as the kernel stores) from the
        // element types. logits and dlogits hold rows·classes elements, labels rows u32, grad_scale and
        // loss one f32 (checked above); 8- and 4-wide accesses only when classes is a multiple and
        // both row-major buffers are aligned for them; the ticket scratch holds the counter
        // (zero between launches) and one f64 per partial (block, or cluster = row); the plans
        // keep every row within the instance's packs per thread × threads (× warps or cluster
        // blocks) and threads within the launch bound, the
        // cluster grid a multiple of its compile-time cluster size on a 9.0 device, and `cached`
        // packs within the shared memory requested; a label ≥ classes is never used as an index.
        unsafe { gpu.launch(module, kernel, cfg, &args) }
    })
}

#[cfg(test)]
mod tests {
    use super::plan::ce_rows_bound;
    use super::*;
    use crate::ops::rows::{ptx_maxntid, PACKS_PER_LANE};

    #[test]
    fn every_kernel_name_exists_with_the_host_launch_bound() {
        let ce = kernels::CROSS_ENTROPY.ptx;
        for g in f32::GROUPS.iter().chain(f16::GROUPS).chain(bf16::GROUPS) {
            for name in [g.name, g.name_pf] {
                assert_eq!(ptx_maxntid(ce, name), Some(256), "{name}");
            }
        }
        for name in [f32::BLOCK, f16::BLOCK, bf16::BLOCK].concat() {
            assert_eq!(ptx_maxntid(ce, name), Some(1024), "{name}");
        }
        for (vecs, rows, rows_pf, block) in [
            (f32::VECS, f32::ROWS, f32::ROWS_PF, f32::BLOCK),
            (f16::VECS, f16::ROWS, f16::ROWS_PF, f16::BLOCK),
            (bf16::VECS, bf16::ROWS, bf16::ROWS_PF, bf16::BLOCK),
        ] {
            assert_eq!((rows.len(), block.len()), (vecs.len(), vecs.len()));
            assert_eq!(rows_pf.len(), vecs.len());
            for (v, &vec) in vecs.iter().enumerate() {
                assert!(block[v].ends_with(&format!("_v{vec}")), "{}", block[v]);
                for (i, p) in PACKS_PER_LANE.into_iter().enumerate() {
                    for name in [rows[v][i], rows_pf[v][i]] {
                        assert!(name.ends_with(&format!("_v{vec}_p{p}")), "{name}");
                        assert_eq!(ptx_maxntid(ce, name), Some(ce_rows_bound(vec, p)), "{name}");
                    }
                    assert!(rows_pf[v][i].contains("_rows_pf_"));
                }
            }
        }
    }

    #[test]
    fn access_width_follows_classes_and_alignment() {
        assert_eq!(ce_vec(1024, 8, (0x1000, 2), (0x2010, 2)), 8);
        assert_eq!(ce_vec(1024, 8, (0x1008, 2), (0x2010, 2)), 4);
        assert_eq!(ce_vec(1024, 4, (0x1000, 4), (0x2010, 4)), 4);
        assert_eq!(ce_vec(1028, 8, (0x1000, 2), (0x2010, 4)), 4);
        assert_eq!(ce_vec(1024, 4, (0x1004, 4), (0x2010, 4)), 1);
        assert_eq!((ce_vec_index::<f16>(4), ce_vec_index::<f32>(4)), (1, 0));
        assert_eq!(ce_vec_index::<bf16>(8), 0);
        assert_eq!(
            (bf16::VECS, bf16::GROUPS.len()),
            (f16::VECS, f16::GROUPS.len())
        );
        assert!(bf16::ROWS.iter().flatten().all(|n| n.contains("_bf16_")));
    }
}
