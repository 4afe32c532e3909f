//! The fused softmax-cross-entropy half of [`super`]: logit and gradient types, the loss's launch
//! plans, and the entry points (see the parent module's docs for the device-side contract).

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{expect_len, matrix_len, Error, Result};
use crate::kernels;
use crate::ops::rows::{
    block_threads, check_aligned, kernel_dims, p_index, shared_limit, vec_width, PACKS_PER_LANE,
    WARP_THREADS,
};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use half::f16;

/// Logit types [`softmax_cross_entropy`] reads: f16 or f32.
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
}

/// Gradient types [`softmax_cross_entropy`] writes: f16 (round to nearest even, overflow to
/// ±inf) or f32.
pub trait Grad: DeviceRepr + sealed::Sealed {
    /// The kernels' `out_f16` flag.
    #[doc(hidden)]
    const OUT_F16: i32;
}
impl Grad for f32 {
    const OUT_F16: i32 = 0;
}
impl Grad for f16 {
    const OUT_F16: i32 = 1;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for f32 {}
}

/// Launch bound of `softmax_ce_rows_*_v{vec}_p{p}` (`ce_rows_bound` in the kernel): it keeps
/// vec·p floats of the row per thread.
pub(super) fn ce_rows_bound(vec: usize, p: usize) -> u32 {
    match vec * p {
        0..=16 => 1024,
        17..=32 => 512,
        _ => 256,
    }
}

/// Floats per thread the long-row loss keeps in registers past its shared-memory cache
/// (`TAIL_FLOATS` in the kernel).
#[cfg(test)]
const TAIL_FLOATS: usize = 8;

/// Access width of the loss: 16 bytes of logits (8 f16 or 4 f32: `widest`) when `classes` is a
/// multiple and both row-major buffers are 16-byte aligned, else 4 elements when `classes % 4 ==
/// 0` and both are aligned to 4 elements, else 1. (8 f32 per thread would be two 16-byte accesses
/// 32 bytes apart, each using half of every 32-byte sector: measured slower.)
fn ce_vec(classes: usize, widest: usize, logits: (u64, usize), dlogits: (u64, usize)) -> usize {
    let ptrs = [logits, dlogits];
    if widest == 8 && classes % 8 == 0 && ptrs.iter().all(|&(a, _)| a % 16 == 0) {
        8
    } else {
        vec_width(classes, &ptrs)
    }
}

/// Index of `vec` in a logit type's [`Logit::VECS`].
pub(super) fn ce_vec_index<L: Logit>(vec: usize) -> usize {
    L::VECS
        .iter()
        .position(|&v| v == vec)
        .expect("ce_vec returns one of the logit type's widths")
}

/// A launch shape of the loss, forced by benchmarks and tests instead of the default plan.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeForce {
    /// A warp per row, `p` packs per lane (the row must fit: `packs ≤ 32·p`), 8 rows per block;
    /// `prefetch` loads each lane's next row before working on the current one.
    Warp { p: usize, prefetch: bool },
    /// A block per row, `p` packs per thread in registers, as many threads as the next power
    /// of two of `packs / p` (32 or more, within the kernel's launch bound).
    Block { p: usize, prefetch: bool },
    /// A block of `threads` per row; the first `cached` packs (at most what the device's shared
    /// memory holds) in shared memory, the next 8 floats per thread in registers, the rest read
    /// again.
    Shared { threads: u32, cached: usize },
}

/// How the loss covers its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CeShape {
    /// `softmax_ce_rows[_pf]`: row groups of `group` threads (32: a warp per row) in blocks of
    /// `threads`, `p` packs per thread.
    Rows {
        p: usize,
        threads: u32,
        group: u32,
        prefetch: bool,
    },
    /// `softmax_ce_block`: a block per row with `cached` packs in shared memory.
    Shared { threads: u32, cached: usize },
}

/// Threads in a loss launch at most: its blocks loop over the row sets (one row per group) past
/// this, so the per-block ticket and barrier of the one-launch mean are paid a bounded number of
/// times. 2^18 is about one wave of the H100's 132 SMs × 2048 threads; a constant, so the number
/// of partial sums (and their order) does not depend on the device.
const CE_GRID_THREADS: usize = 1 << 18;

impl CeShape {
    /// Blocks in the launch over `rows` rows.
    fn blocks(self, rows: usize) -> usize {
        let (sets, threads) = match self {
            CeShape::Rows { threads, group, .. } => {
                (rows.div_ceil((threads / group) as usize), threads)
            }
            CeShape::Shared { threads, .. } => (rows, threads),
        };
        sets.min(CE_GRID_THREADS / threads as usize).max(1)
    }
}

/// Rows of up to this many floats per lane take a warp each; longer rows a block each, with at
/// least 2 packs per thread and at most `CE_BLOCK_THREADS` threads where the row allows
/// (measured: docs/kernels/softmax.md).
const CE_WARP_FLOATS: usize = 32;
const CE_BLOCK_THREADS: u32 = 256;

/// The loss's default shape for rows of `packs` packs of `vec` elements, with `shared_limit`
/// bytes of shared memory per block; `prefetch` picks the kernels that load the next row ahead
/// (measured faster for f32 logits, slower for f16, whose 16-byte packs already keep enough in
/// flight and whose prefetch registers cost a resident block). Depends on the device only
/// through `shared_limit`, and only for rows too long for registers.
pub(crate) fn ce_plan(packs: usize, vec: usize, shared_limit: usize, prefetch: bool) -> CeShape {
    let warp = PACKS_PER_LANE
        .into_iter()
        .find(|&p| 32 * p >= packs && vec * p <= CE_WARP_FLOATS);
    if let Some(p) = warp {
        return CeShape::Rows {
            p,
            threads: WARP_THREADS,
            group: 32,
            prefetch,
        };
    }
    let fits = |p: usize, most: u32| {
        let threads = packs.div_ceil(p).next_power_of_two().max(32) as u32;
        (threads <= most.min(ce_rows_bound(vec, p))).then_some(CeShape::Rows {
            p,
            threads,
            group: threads,
            prefetch,
        })
    };
    let block = [2, 4, 8]
        .into_iter()
        .find_map(|p| fits(p, CE_BLOCK_THREADS))
        .or_else(|| PACKS_PER_LANE.into_iter().find_map(|p| fits(p, 1024)));
    block.unwrap_or(CeShape::Shared {
        threads: block_threads(packs),
        cached: packs.min(shared_limit / (vec * 4)),
    })
}

/// The shape for a forced choice, or `None` if the row does not fit it.
pub(crate) fn ce_forced(
    packs: usize,
    vec: usize,
    shared_limit: usize,
    force: CeForce,
) -> Option<CeShape> {
    match force {
        CeForce::Warp { p, prefetch } => (PACKS_PER_LANE.contains(&p) && packs <= 32 * p)
            .then_some(CeShape::Rows {
                p,
                threads: WARP_THREADS,
                group: 32,
                prefetch,
            }),
        CeForce::Block { p, prefetch } => {
            let threads = packs.div_ceil(p).next_power_of_two().max(32) as u32;
            (PACKS_PER_LANE.contains(&p) && threads <= ce_rows_bound(vec, p)).then_some(
                CeShape::Rows {
                    p,
                    threads,
                    group: threads,
                    prefetch,
                },
            )
        }
        CeForce::Shared { threads, cached } => {
            let ok = threads.is_power_of_two()
                && (32..=1024).contains(&threads)
                && cached <= packs
                && cached * vec * 4 <= shared_limit;
            ok.then_some(CeShape::Shared { threads, cached })
        }
    }
}

/// Fused softmax + cross-entropy: writes the mean over rows of `logsumexp(xᵣ) − xᵣ[labelᵣ]` to
/// `loss` (one f32 on the device) and `dlogits = (softmax(x) − onehot(label)) · grad_scale / rows`
/// in one pass over the logits, without materialising the probabilities.
///
/// `logits` and `dlogits` are `[rows, classes]` (f16 or f32 each), `labels` has `rows` entries,
/// `grad_scale` and `loss` are one f32 each, all in device memory. The GPU twin of
/// [`crate::cpu::softmax::softmax_cross_entropy`]: same argument checks and errors (before any
/// launch), except that labels cannot be checked without a host synchronisation: an
/// out-of-range label makes its row's loss and gradients NaN (see the [module docs](super)).
/// One launch; uses the device's scratch buffer for per-block partial sums of the loss (8 bytes
/// per block, at most 2^18 / threads per block blocks).
#[allow(clippy::too_many_arguments)] // the CPU reference's arguments plus the device loss
pub fn softmax_cross_entropy<L, D, X, T, S, G, O>(
    gpu: &Gpu,
    logits: &X,
    labels: &T,
    rows: usize,
    classes: usize,
    grad_scale: &S,
    dlogits: &mut G,
    loss: &mut O,
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
    let bufs = (logits, labels, grad_scale);
    cross_entropy_impl(gpu, bufs, rows, classes, dlogits, loss, None)
}

/// [`softmax_cross_entropy`] in a launch shape the caller forces (see [`CeForce`]), the inputs
/// `(logits, labels, grad_scale)` as one tuple: for benchmarks and tests. A shape the row does
/// not fit is [`Error::InvalidArgument`], before any launch.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn softmax_cross_entropy_forced<L, D, X, T, S, G, O>(
    gpu: &Gpu,
    inputs: (&X, &T, &S),
    rows: usize,
    classes: usize,
    dlogits: &mut G,
    loss: &mut O,
    force: CeForce,
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
    cross_entropy_impl(gpu, inputs, rows, classes, dlogits, loss, Some(force))
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
    const OP: &str = "ops::softmax::softmax_cross_entropy";
    if rows == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: "rows is 0; the loss is a mean over rows and needs rows ≥ 1".into(),
        });
    }
    let len = matrix_len(OP, rows, classes, "classes")?;
    let by_rows = format!("rows·classes = {rows}·{classes} = {len}");
    expect_len(OP, "logits", logits.len(), len, &by_rows)?;
    expect_len(OP, "dlogits", dlogits.len(), len, &by_rows)?;
    expect_len(OP, "labels", labels.len(), rows, "rows")?;
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
    let shape = match force {
        None => ce_plan(packs, vec, limit, lb == 4),
        Some(f) => ce_forced(packs, vec, limit, f).ok_or_else(|| Error::InvalidArgument {
            op: OP,
            detail: format!("{f:?} does not fit rows of {classes} classes (vec {vec})"),
        })?,
    };
    let blocks = shape.blocks(rows);
    gpu.with_scratch((blocks * 8).max(256), |partial| {
        let mut args = KernelArgs::new();
        args.push(xp).push(tp).push(sp).push(dp).push(D::OUT_F16);
        args.push(partial).push(op).push(ri).push(ci);
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
        };
        // SAFETY: softmax_ce_rows_{f32,f16}_v*_p*(const L* logits, const unsigned* labels,
        // const float* grad_scale, void* dlogits, int out_f16, double* partial, float* loss,
        // int rows, int classes, int group) and softmax_ce_block_{f32,f16}_v*(…, int classes,
        // int cached) match, with L and out_f16 from the element types. logits and dlogits hold
        // rows·classes elements, labels rows u32, grad_scale and loss one f32 (checked above);
        // 8- and 4-wide accesses only when classes is a multiple and both row-major buffers are
        // aligned for them; the scratch holds one f64 per block; the plan keeps packs ≤ p·group
        // and threads within the launch bound, and `cached` packs within the shared memory
        // requested; a label ≥ classes is never used as an index.
        unsafe { gpu.launch(&kernels::SOFTMAX, kernel, cfg, &args) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rows::*;

    #[test]
    fn loss_shapes_fit_their_kernels() {
        let h100 = 227 * 1024 - STATIC_SHARED_RESERVE;
        let check = |packs: usize, vec: usize, shape: CeShape| match shape {
            CeShape::Rows {
                p, threads, group, ..
            } => {
                assert!(packs <= p * group as usize, "{packs}: {shape:?}");
                assert!(threads <= ce_rows_bound(vec, p), "{shape:?}");
                assert!(group == 32 || group == threads, "{shape:?}");
                assert!(threads % 32 == 0, "{shape:?}");
            }
            CeShape::Shared { threads, cached } => {
                assert!(cached <= packs && cached * vec * 4 <= h100, "{shape:?}");
                assert!(threads.is_power_of_two() && threads <= 1024, "{shape:?}");
            }
        };
        for vec in [8, 4, 1] {
            for classes in [
                1usize, 10, 256, 1000, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 70000,
            ] {
                let packs = classes.div_ceil(vec);
                for prefetch in [false, true] {
                    check(packs, vec, ce_plan(packs, vec, h100, prefetch));
                }
                for p in PACKS_PER_LANE {
                    for prefetch in [false, true] {
                        let forced = [
                            CeForce::Warp { p, prefetch },
                            CeForce::Block { p, prefetch },
                        ];
                        for f in forced {
                            if let Some(shape) = ce_forced(packs, vec, h100, f) {
                                check(packs, vec, shape);
                            }
                        }
                    }
                }
            }
        }
        // Rows of 1024 take a warp (f16: 4 packs of 8 per lane, f32: 8 of 4, prefetched);
        // 2048 to 16384 a block with the row in registers, 2+ packs per thread, ≤ 256 threads
        // where that fits.
        let rows = |p, threads, group, prefetch| CeShape::Rows {
            p,
            threads,
            group,
            prefetch,
        };
        assert_eq!(ce_plan(128, 8, h100, false), rows(4, 256, 32, false));
        assert_eq!(ce_plan(256, 4, h100, true), rows(8, 256, 32, true));
        assert_eq!(ce_plan(256, 8, h100, false), rows(2, 128, 128, false));
        assert_eq!(ce_plan(512, 4, h100, true), rows(2, 256, 256, true));
        assert_eq!(ce_plan(1024, 8, h100, false), rows(4, 256, 256, false));
        assert_eq!(ce_plan(4096, 4, h100, true), rows(4, 1024, 1024, true));
        // 65 536 classes: shared memory plus 8 floats per thread in registers hold the row.
        match ce_plan(8192, 8, h100, false) {
            CeShape::Shared { threads, cached } => {
                assert_eq!(threads, 1024);
                assert!(cached + TAIL_FLOATS / 8 * threads as usize >= 8192);
            }
            other => panic!("{other:?}"),
        }
        // Launches loop over their rows past 2^18 threads.
        let warp = CeShape::Rows {
            p: 4,
            threads: 256,
            group: 32,
            prefetch: true,
        };
        assert_eq!((warp.blocks(16384), warp.blocks(100)), (1024, 13));
        let shared = CeShape::Shared {
            threads: 1024,
            cached: 10,
        };
        assert_eq!((shared.blocks(256), shared.blocks(1000)), (256, 256));
        let warp1 = CeForce::Warp {
            p: 1,
            prefetch: false,
        };
        assert_eq!(ce_forced(40, 1, h100, warp1), None);
        assert_eq!(
            ce_forced(
                40,
                1,
                h100,
                CeForce::Shared {
                    threads: 100,
                    cached: 0
                }
            ),
            None
        );
        assert_eq!(ce_vec(1024, 8, (0x1000, 2), (0x2010, 2)), 8);
        assert_eq!(ce_vec(1024, 8, (0x1008, 2), (0x2010, 2)), 4);
        assert_eq!(ce_vec(1024, 4, (0x1000, 4), (0x2010, 4)), 4);
        assert_eq!(ce_vec(1028, 8, (0x1000, 2), (0x2010, 4)), 4);
        assert_eq!(ce_vec(1024, 4, (0x1004, 4), (0x2010, 4)), 1);
    }
}
