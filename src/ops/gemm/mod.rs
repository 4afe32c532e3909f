//! FP16 and BF16 tensor-core GEMM (`kernels/gemm.cu`: mma.sync, any GPU ampkit supports;
//! `kernels/gemm_sm90.cu`: wgmma + TMA on compute capability 9.0; the bf16 builds of both:
//! `kernels/gemm_bf16.cu`, `kernels/gemm_sm90_bf16.cu`); CPU twin: [`crate::cpu::gemm`].
//!
//! Same layouts, shapes and epilogue as the CPU reference ([`GemmShape`], [`Layout`]): operands
//! are f16 or bf16 ([`GemmOperand`]), accumulation is f32, the output is the operands' type or
//! f32 ([`GemmOutput`]). Any `m, n, k` (zero included) works. The two element types run the same
//! kernels, tile configurations and planner.
//!
//! # Numerics
//!
//! Products of f16 (or bf16) operands are exact in f32; the tensor cores add them in f32 in an
//! order that differs from the CPU's, so results match [`crate::cpu::gemm::gemm`] to rounding, not
//! bit for bit. The parity tests hold every element to
//! `|out − ref| ≤ 1e-5·√k·max(1, |alpha|) + 1e-5·|ref|` against [`crate::cpu::gemm::gemm_f64`]
//! (plus half an ulp of a 16-bit output: `4.9e-4·|ref| + 6e-8` for f16, `3.9e-3·|ref|` for bf16)
//! and the relative L2 error to 1e-3 (4e-3 with bf16 output). A bf16 output is the f32 result
//! rounded once to nearest even, bit for bit. The epilogue runs in f32 in the reference's order
//! (alpha, bias, `beta·C_old`, ReLU, one rounding to the output type); with `beta = 0` the old
//! contents of C are never read. Results are deterministic: the same inputs give the same bits on
//! every run on one GPU model.
//!
//! # Fast path
//!
//! Each operand's contiguous dimension is a multiple of 8 halves and its device address is
//! 16-byte aligned (A: `k` for `Forward`/`Dgrad`, `m` for `Wgrad`; B: `k` for `Forward`, `n` for
//! `Dgrad`/`Wgrad`). Anything else takes a correct slower path that loads element by element. The
//! output has no alignment requirement.
//!
//! The launch configuration (tile size and K-split) is chosen per shape from a small cost model;
//! the tile configurations and the launch shapes are stated in the kernels' headers,
//! `kernels/gemm.cu` and `kernels/gemm_sm90.cu`, the measurements behind them in
//! `docs/kernels/gemm.md`. A K-split writes f32 partial sums to the device's scratch buffer and a
//! second kernel adds them in a fixed order: results are deterministic. The tile table and the
//! planner are reachable, hidden, as `ampkit::tuning::gemm` for ampkit's own tests and
//! benchmarks only; they are not part of the stable API.
//!
//! ```no_run
//! # fn main() -> ampkit::Result<()> {
//! use ampkit::shape::{GemmShape, Layout};
//! use ampkit::ops::gemm::{gemm, Epilogue};
//! use ampkit::{cuda::Gpu, f16};
//! let gpu = Gpu::new(0)?;
//! let (m, n, k) = (64, 32, 128);
//! let x = gpu.upload(&vec![f16::from_f32(0.5); m * k])?; // X [m, k]
//! let w = gpu.upload(&vec![f16::from_f32(0.25); n * k])?; // W [n, k]
//! let mut y = gpu.alloc_zeros::<f32>(m * n)?; // Y = X·Wᵀ [m, n], f32 out
//! gemm(&gpu, GemmShape::new(Layout::Forward, m, n, k), &x, &w, &Epilogue::plain(), &mut y)?;
//! assert!(gpu.download(&y)?.iter().all(|&v| v == 16.0));
//! # Ok(()) }
//! ```

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::shape::{GemmShape, Layout};
use crate::validate;

mod plan;
pub(crate) mod sm90;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use half::{bf16, f16};
#[doc(hidden)]
pub use sm90::TmaElement;
pub(crate) mod tuning;
use plan::UNALIGNED;
use tuning::{plan, Plan};

/// What happens to the product before it is stored (the CPU reference's order: alpha, bias,
/// beta·C_old, ReLU, one rounding).
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// Scales the product.
    pub alpha: f32,
    /// Scales the old contents of C, added to the result; 0 means C is write-only.
    pub beta: f32,
    /// One f32 per output column (`n` of them), added to every row: any device buffer or view
    /// (`CudaSlice`, `CudaView`, `CudaViewMut`), like the ops' other arguments.
    pub bias: Option<&'a dyn DevicePtr<f32>>,
    /// Applies ReLU last.
    pub relu: bool,
}

impl std::fmt::Debug for Epilogue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epilogue")
            .field("alpha", &self.alpha)
            .field("beta", &self.beta)
            .field("bias_len", &self.bias.map(|b| b.len()))
            .field("relu", &self.relu)
            .finish()
    }
}

impl<'a> Epilogue<'a> {
    /// `C = A·B` with nothing else.
    pub fn plain() -> Self {
        Epilogue {
            alpha: 1.0,
            beta: 0.0,
            bias: None,
            relu: false,
        }
    }

    /// `C = relu?(A·B + bias)`: a linear layer's forward.
    pub fn bias(bias: &'a dyn DevicePtr<f32>, relu: bool) -> Self {
        Epilogue {
            bias: Some(bias),
            relu,
            ..Self::plain()
        }
    }

    /// `C += A·B`: gradient accumulation.
    pub fn accumulate() -> Self {
        Epilogue {
            beta: 1.0,
            ..Self::plain()
        }
    }
}

/// Operand element types of [`gemm`]: f16 or bf16, both accumulated in f32 (bf16 runs the same
/// kernels built for bf16: `kernels/gemm_bf16.cu`, `kernels/gemm_sm90_bf16.cu`).
pub trait GemmOperand: DeviceRepr + sealed::Sealed {
    /// The portable (mma.sync) and the Hopper (wgmma) kernel modules for this element type.
    #[doc(hidden)]
    const MODULES: [crate::kernels::KernelModule; 2];
    /// The element type of the Hopper kernels' TMA tensor maps.
    #[doc(hidden)]
    const TMA: sm90::TmaElement;
}
impl GemmOperand for f16 {
    const MODULES: [crate::kernels::KernelModule; 2] = [kernels::GEMM, kernels::GEMM_SM90];
    const TMA: sm90::TmaElement = sm90::TmaElement::F16;
}
impl GemmOperand for bf16 {
    const MODULES: [crate::kernels::KernelModule; 2] =
        [kernels::GEMM_BF16, kernels::GEMM_SM90_BF16];
    const TMA: sm90::TmaElement = sm90::TmaElement::Bf16;
}

/// Output element types of [`gemm`] for operands of type `T`: f32, or `T` itself (f16 operands
/// give f16 or f32, bf16 operands bf16 or f32, as autocast does).
pub trait GemmOutput<T: GemmOperand = f16>: DeviceRepr + sealed::Sealed {
    /// The kernel's `out_kind` code.
    #[doc(hidden)]
    const KIND: i32;
}
impl GemmOutput<f16> for f16 {
    const KIND: i32 = 0;
}
impl GemmOutput<bf16> for bf16 {
    const KIND: i32 = 0;
}
impl<T: GemmOperand> GemmOutput<T> for f32 {
    const KIND: i32 = 1;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// Element types [`bias_grad`] reads: f16, bf16 or f32.
pub trait BiasGradInput: DeviceRepr + sealed::Sealed {
    /// The pass-1 kernel for this type.
    #[doc(hidden)]
    const KERNEL: &'static str;
}
impl BiasGradInput for f16 {
    const KERNEL: &'static str = "bias_grad_partial_f16";
}
impl BiasGradInput for bf16 {
    const KERNEL: &'static str = "bias_grad_partial_bf16";
}
impl BiasGradInput for f32 {
    const KERNEL: &'static str = "bias_grad_partial_f32";
}

/// `C[m, n] = epilogue(A·B)` on the GPU, f16 or bf16 operands, f32 accumulation, output of the
/// operands' type or f32
/// (`C` is the output element type; write `gemm::<f32, _>` when it cannot be inferred).
/// Operand layouts are in [`crate::shape`]'s module doc; the tolerance against the CPU
/// reference is in the [module doc](self). Queued on [`Gpu::stream`]; does not synchronise.
///
/// Errors, all before any launch: [`Error::ShapeMismatch`] when a buffer's length does not match
/// the shape (or the bias's `n`); [`Error::InvalidArgument`] when a dimension exceeds `i32::MAX`,
/// the output needs more tiles than a grid can launch, or an operand is not aligned to its
/// element size (views at odd byte offsets). A fault while the kernel runs surfaces as
/// [`Error::Driver`] at the next synchronisation (or [`Error::Launch`] with
/// [`Gpu::set_sync_launches`]).
pub fn gemm<C: GemmOutput<T>, T: GemmOperand>(
    gpu: &Gpu,
    shape: GemmShape,
    a: &impl DevicePtr<T>,
    b: &impl DevicePtr<T>,
    epilogue: &Epilogue,
    c: &mut impl DevicePtrMut<C>,
) -> Result<()> {
    gemm_impl(gpu, shape, None, a, b, epilogue, c, None, 0).map(drop)
}

/// [`gemm`] that also reports a non-finite output: when the kernel stores an inf or NaN into `c`
/// (judged on the stored value, after the rounding to `C`), it or'es 1 into `nonfinite[0]`,
/// which it never clears. The training step passes its weight gradients through it at scale 1,
/// so that the unscale need not read them again just to check them. Errors: as [`gemm`], and
/// [`Error::ShapeMismatch`] when `nonfinite` is not one word.
pub fn gemm_checked<C: GemmOutput<T>, T: GemmOperand>(
    gpu: &Gpu,
    shape: GemmShape,
    a: &impl DevicePtr<T>,
    b: &impl DevicePtr<T>,
    epilogue: &Epilogue,
    c: &mut impl DevicePtrMut<C>,
    nonfinite: &mut dyn DevicePtrMut<u32>,
) -> Result<()> {
    let flag = flag_ptr(gpu, nonfinite)?;
    gemm_impl(gpu, shape, None, a, b, epilogue, c, None, flag.0).map(drop)
}

/// The address of a one-word non-finite flag, with its guard. Errors: [`Error::ShapeMismatch`]
/// when it is not one word.
fn flag_ptr<'g>(
    gpu: &'g Gpu,
    nonfinite: &'g mut dyn DevicePtrMut<u32>,
) -> Result<(u64, impl Drop + 'g)> {
    crate::error::expect_len(
        "ops::gemm::gemm",
        "nonfinite",
        nonfinite.len(),
        1,
        "one word",
    )?;
    Ok(nonfinite.device_ptr_mut(gpu.stream()))
}

/// The K-splits the cost model picks for `shape` on `gpu` when the operands meet the fast path's
/// alignment (`aligned`) or not: how many slices of `m·n` f32 a deferred reduce
/// ([`gemm_deferred`]) leaves.
pub(crate) fn planned_splits(gpu: &Gpu, shape: GemmShape, aligned: bool) -> usize {
    let hopper = gpu.info().compute_capability == (9, 0);
    plan(shape, aligned, gpu.info().multiprocessors, hopper)
        .splits
        .max(1)
}

/// The K-split slices the planner takes for the weight gradient of an `out × fan_in` layer over
/// `rows` rows on `gpu` (1: none), for operands in fresh (aligned) buffers: the fast path then
/// needs only both widths to be multiples of 8. The training step's slice buffers are sized by it.
pub(crate) fn wgrad_splits(gpu: &Gpu, out: usize, fan_in: usize, rows: usize) -> usize {
    let shape = GemmShape::new(Layout::Wgrad, out, fan_in, rows);
    planned_splits(gpu, shape, out % 8 == 0 && fan_in % 8 == 0)
}

/// [`gemm`] with a plain epilogue into an f32 output whose K-split reduce, if the plan splits K,
/// is left to the caller: the slices go to `partials` (`splits·m·n` f32, slice s at `s·m·n`)
/// and `c` is not written. Returns the number of slices left there, or 1 when the plan does not
/// split K or `partials` is too short for its slices (then `c` holds the result, as from
/// [`gemm`], checked as by [`gemm_checked`] when `nonfinite` is given). The caller adds the
/// slices in slice order from 0, as `gemm_splitk_reduce` does (the training step:
/// [`crate::ops::unscale::unscale_and_record`]). Errors: as [`gemm_checked`].
pub(crate) fn gemm_deferred<T: GemmOperand>(
    gpu: &Gpu,
    shape: GemmShape,
    a: &impl DevicePtr<T>,
    b: &impl DevicePtr<T>,
    c: &mut impl DevicePtrMut<f32>,
    partials: &mut crate::cuda::DeviceBuffer<f32>,
    nonfinite: Option<&mut crate::cuda::DeviceBuffer<u32>>,
) -> Result<usize> {
    let stream = gpu.stream();
    let capacity = partials.len();
    let (ptr, _g) = partials.device_ptr_mut(stream);
    let flag = nonfinite.map(|f| flag_ptr(gpu, f)).transpose()?;
    gemm_impl(
        gpu,
        shape,
        None,
        a,
        b,
        &Epilogue::plain(),
        c,
        Some((ptr, capacity)),
        flag.as_ref().map_or(0, |f| f.0),
    )
}

/// [`gemm`] with the plan `forced` instead of the cost model's (`None`: the cost model's). An
/// aligned configuration on operands that do not meet the fast path's alignment is replaced by
/// the unaligned one. With `defer` (an f32 buffer's address and length) and a plan that splits
/// K into slices that fit it, the slices go there unreduced; returns their number (1: `c` was
/// written). `nonfinite`: the address of a flag word for [`gemm_checked`], or 0; deferred
/// slices are not checked (their sum is, by the caller).
#[allow(clippy::too_many_arguments)] // gemm's arguments plus the plan, the deferral, the flag
fn gemm_impl<C, T, A, B, O>(
    gpu: &Gpu,
    shape: GemmShape,
    forced: Option<Plan>,
    a: &A,
    b: &B,
    epilogue: &Epilogue,
    c: &mut O,
    defer: Option<(u64, usize)>,
    nonfinite: u64,
) -> Result<usize>
where
    C: GemmOutput<T>,
    T: GemmOperand,
    A: DevicePtr<T>,
    B: DevicePtr<T>,
    O: DevicePtrMut<C>,
{
    let [portable, hopper] = T::MODULES;
    const OP: &str = "ops::gemm::gemm";
    validate::gemm::gemm(
        OP,
        shape,
        [a.len(), b.len(), c.len()],
        epilogue.bias.map(|b| b.len()),
    )?;
    let GemmShape { layout, m, n, k } = shape;
    let dim = |name: &str, v: usize| {
        i32::try_from(v).map_err(|_| Error::InvalidArgument {
            op: OP,
            detail: format!("{name} = {v} exceeds i32::MAX, the kernel's index range"),
        })
    };
    let (mi, ni, ki) = (dim("m", m)?, dim("n", n)?, dim("k", k)?);
    if m == 0 || n == 0 {
        return Ok(1);
    }
    let stream = gpu.stream();
    let (a_ptr, _ga) = a.device_ptr(stream);
    let (b_ptr, _gb) = b.device_ptr(stream);
    let (c_ptr, _gc) = c.device_ptr_mut(stream);
    let bias = epilogue.bias.map(|b| b.device_ptr(stream));
    let bias_ptr = bias.as_ref().map_or(0, |(p, _)| *p);
    for (name, p, bytes) in [
        ("A", a_ptr, 2),
        ("B", b_ptr, 2),
        ("C", c_ptr, std::mem::size_of::<C>()),
        ("bias", bias_ptr, 4),
        ("nonfinite", nonfinite, 4),
    ] {
        if p % bytes as u64 != 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!("{name} at {p:#x} is not aligned to its {bytes}-byte elements"),
            });
        }
    }
    let (a_contig, b_contig) = match layout {
        Layout::Forward => (k, k),
        Layout::Dgrad => (k, n),
        Layout::Wgrad => (m, n),
    };
    let aligned = a_contig % 8 == 0 && b_contig % 8 == 0 && a_ptr % 16 == 0 && b_ptr % 16 == 0;
    let p = match forced {
        Some(p) if aligned || p.config == UNALIGNED => Plan {
            splits: p.splits.max(1),
            ..p
        },
        Some(p) => Plan {
            config: UNALIGNED,
            splits: p.splits.max(1),
            ..p
        },
        None => plan(
            shape,
            aligned,
            gpu.info().multiprocessors,
            gpu.info().compute_capability == (9, 0),
        ),
    };
    let tiles = m.div_ceil(p.config.bm) * n.div_ceil(p.config.bn);
    if tiles > i32::MAX as usize {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: format!("{m}×{n} needs {tiles} tiles, more than a grid can launch"),
        });
    }
    let k_tiles = k.div_ceil(p.config.bk);
    let per_split = k_tiles.div_ceil(p.splits).max(1);
    let grid = if p.config.persistent {
        // One block per SM at most (or the plan's count), in whole clusters, none idle from
        // the start: a cluster per pair of tile-rows × tile-column × split.
        let cluster = plan::PERSISTENT_CLUSTER;
        let units = m.div_ceil(p.config.bm).div_ceil(cluster) * n.div_ceil(p.config.bn) * p.splits;
        let blocks = match p.blocks {
            0 => gpu.info().multiprocessors,
            b => b,
        };
        ((blocks / cluster).clamp(1, units) * cluster) as u32
    } else {
        tiles as u32
    };
    let cfg = LaunchConfig {
        grid: (
            grid,
            1,
            if p.config.persistent {
                1
            } else {
                p.splits as u32
            },
        ),
        block: (p.config.threads, 1, 1),
        shared_bytes: p.config.shared_bytes(layout) as u32,
    };
    let kernel = p.config.kernels[layout as usize];
    // Raw K-split slices (out_kind 2) are not checked: the reduce that sums them is.
    let launch_main = |out: u64, out_kind: i32| {
        let nonfinite = if out_kind == 2 { 0 } else { nonfinite };
        if p.config.hopper {
            let (a_mn, b_mn) = sm90::mn_major(layout);
            let operand = |ptr, mn: bool, rows: usize, tile_rows| sm90::Operand {
                ptr,
                inner: if mn { rows } else { k },
                outer: if mn { k } else { rows },
                k_major: !mn,
                tile_rows,
            };
            // A persistent cluster's blocks each load half of the shared B tile.
            let b_rows = if p.config.persistent {
                p.config.bn / plan::PERSISTENT_CLUSTER
            } else {
                p.config.bn
            };
            return sm90::launch(
                gpu,
                &hopper,
                T::TMA,
                &operand(a_ptr, a_mn, m, p.config.bm),
                &operand(b_ptr, b_mn, n, b_rows),
                &sm90::Launch {
                    kernel,
                    cfg,
                    out,
                    bias: bias_ptr,
                    dims: (mi, ni, ki),
                    epilogue: (epilogue.alpha, epilogue.beta, i32::from(epilogue.relu)),
                    out_kind,
                    schedule: (per_split as i32, p.splits as i32, p.group_m as i32),
                    nonfinite,
                },
            );
        }
        let mut args = KernelArgs::new();
        args.push(a_ptr).push(b_ptr).push(out).push(bias_ptr);
        args.push(mi).push(ni).push(ki);
        args.push(epilogue.alpha)
            .push(epilogue.beta)
            .push(i32::from(epilogue.relu));
        args.push(out_kind)
            .push(per_split as i32)
            .push(p.group_m as i32)
            .push(nonfinite);
        // SAFETY: gemm_<layout>_<config>(const half* A, const half* B, void* C, const float* bias,
        // int M, int N, int K, float alpha, float beta, int relu, int out_kind,
        // int k_tiles_per_split, int group_m, unsigned* nonfinite) matches the arguments
        // (nonfinite null or one u32, checked by the callers). validate::gemm proved A, B, C
        // (and bias) hold exactly what (layout, m, n, k) addresses; the kernel bounds-checks
        // every tile edge; `out` holds splits·m·n f32 when out_kind is 2. Alignment was checked
        // above.
        unsafe { gpu.launch(&portable, kernel, cfg, &args) }
    };
    if p.splits == 1 {
        return launch_main(c_ptr, C::KIND).map(|()| 1);
    }
    if let Some((ptr, _)) = defer.filter(|&(_, cap)| cap >= p.splits * m * n) {
        if ptr % 16 != 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!("the K-split partials at {ptr:#x} are not 16-byte aligned"),
            });
        }
        return launch_main(ptr, 2).map(|()| p.splits);
    }
    gpu.with_scratch(p.splits * m * n * 4, |ws| {
        launch_main(ws, 2)?;
        let mut args = KernelArgs::new();
        args.push(ws)
            .push(p.splits as i32)
            .push(mi)
            .push(ni)
            .push(c_ptr)
            .push(C::KIND);
        args.push(bias_ptr)
            .push(epilogue.alpha)
            .push(epilogue.beta)
            .push(i32::from(epilogue.relu))
            .push(nonfinite);
        let cfg = LaunchConfig::linear(
            (m * n).div_ceil(256).min(gpu.info().multiprocessors * 8) as u32,
            256,
        );
        // SAFETY: gemm_splitk_reduce(const float* ws, int splits, int M, int N, void* C,
        // int out_kind, const float* bias, float alpha, float beta, int relu,
        // unsigned* nonfinite) matches; ws holds
        // splits·m·n f32 written above, C holds m·n elements of the out_kind type.
        unsafe { gpu.launch(&portable, "gemm_splitk_reduce", cfg, &args) }
    })
    .map(|()| 1)
}

/// Bias gradient on the GPU: `db[j] = Σ_i dy[i, j]` over a row-major `[rows, cols]` gradient
/// (f16 or f32), summed in f32 into f32 `db`, deterministic (fixed row blocks, added in a fixed
/// order). CPU twin: [`crate::cpu::gemm::bias_grad`] (which sums in f64); the parity tests allow
/// `4e-6·√rows + 1e-5·|ref|` per element. `db` is overwritten, not accumulated into.
///
/// Errors, before any launch: [`Error::ShapeMismatch`] when `dy` is not `rows·cols` elements or
/// `db` not `cols`; [`Error::InvalidArgument`] when `rows` or `cols` exceeds `i32::MAX`.
pub fn bias_grad<T: BiasGradInput>(
    gpu: &Gpu,
    dy: &impl DevicePtr<T>,
    rows: usize,
    cols: usize,
    db: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    const OP: &str = "ops::gemm::bias_grad";
    validate::gemm::bias_grad(OP, rows, cols, dy.len(), db.len())?;
    let (ri, ci) = (
        i32::try_from(rows).map_err(|_| Error::InvalidArgument {
            op: OP,
            detail: format!("rows = {rows} exceeds i32::MAX"),
        })?,
        i32::try_from(cols).map_err(|_| Error::InvalidArgument {
            op: OP,
            detail: format!("cols = {cols} exceeds i32::MAX"),
        })?,
    );
    if cols == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (dy_ptr, _g1) = dy.device_ptr(stream);
    let (db_ptr, _g2) = db.device_ptr_mut(stream);
    // Enough row blocks for two blocks per SM, each at least 64 rows long.
    let col_blocks = cols.div_ceil(64);
    let want = (2 * gpu.info().multiprocessors).div_ceil(col_blocks).max(1);
    let rows_per_split = rows.div_ceil(want).max(64);
    let splits = rows.div_ceil(rows_per_split).max(1);
    gpu.with_scratch(splits * cols * 4, |partial| {
        let mut args = KernelArgs::new();
        args.push(dy_ptr)
            .push(ri)
            .push(ci)
            .push(rows_per_split as i32)
            .push(partial);
        let cfg = LaunchConfig {
            grid: (col_blocks as u32, splits as u32, 1),
            block: (256, 1, 1),
            shared_bytes: 0,
        };
        // SAFETY: bias_grad_partial_{f16,f32}(const T* dy, int rows, int cols, int rows_per_split,
        // float* partial) matches, with T the kernel's type (T::KERNEL); dy holds rows·cols, the
        // scratch holds splits·cols f32 and the kernel bounds-checks rows and columns.
        unsafe { gpu.launch(&kernels::GEMM, T::KERNEL, cfg, &args)? };
        // SAFETY: the scratch holds splits·cols f32 (the partial kernel wrote every one) and db
        // holds cols (validated above).
        unsafe { bias_grad_finish(gpu, partial, splits as i32, ci, db_ptr) }
    })
}

/// Launches `bias_grad_finish` (kernels/gemm.cu): `db[c] = Σ_s partial[s·cols + c]` for
/// `c < cols`, summed in order of `s` (deterministic).
///
/// # Safety
/// `partial` must point at `splits·cols` f32 written before this launch on the stream and `db` at
/// `cols` f32, both live until the launch completes; `cols > 0`.
pub(crate) unsafe fn bias_grad_finish(
    gpu: &Gpu,
    partial: u64,
    splits: i32,
    cols: i32,
    db: u64,
) -> Result<()> {
    let mut args = KernelArgs::new();
    args.push(partial).push(splits).push(cols).push(db);
    // SAFETY: bias_grad_finish(const float* partial, int splits, int cols, float* db) matches;
    // the caller vouches for the buffers.
    unsafe {
        gpu.launch(
            &kernels::GEMM,
            "bias_grad_finish",
            // kFinishCols (32) columns per 256-thread block.
            LaunchConfig::linear((cols as u32).div_ceil(32), 256),
            &args,
        )
    }
}
