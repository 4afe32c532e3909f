//! FP8 tensor-core GEMM on Hopper (`kernels/gemm_fp8.cu`: wgmma + TMA, sm_90a only); CPU twin:
//! [`crate::cpu::gemm_fp8`].
//!
//! `D[m, n] = scale · Σ_k A[m, k]·B[n, k] (+ bias[n])`: A is `[m, k]` and B `[n, k]`, both
//! row-major FP8 codes (`u8`, E4M3 or E5M2 chosen per operand), i.e. [`Layout::Forward`] with K
//! contiguous in both — the only layout the FP8 tensor cores read, so a gradient GEMM takes
//! operands transposed beforehand (as Transformer Engine's casts write them). `scale` is
//! `a.scale_inv[0] · b.scale_inv[0]`, read on the device (the delayed-scaling recipe's per-tensor
//! inverse scales, [`crate::cpu::fp8::ScalingState`]). The output is f32, f16 or bf16
//! ([`Fp8Output`]).
//!
//! # Numerics
//!
//! FP8 products are exact; the tensor core adds each k32 step's 32 products and the running sum
//! in its own reduced precision (about 14 significant bits are kept per step on H100/H800, as
//! DeepSeek-V3's report measured), into f32 registers: there is no promotion to a separate f32
//! sum (cuBLASLt's `CUBLASLT_MATMUL_DESC_FAST_ACCUM` mode, which Transformer Engine uses for the
//! forward GEMM). The parity tests (`tests/gemm_fp8_gpu.rs`) hold each element to
//! `⌈k/32⌉·2⁻¹³·scale·Σ_k |A·B|` of the f64 reference (plus half an ulp of a 16-bit output; the
//! worst seen on an H100 was 0.36 of that) and the relative L2 error to 1e-2; sums whose partial
//! results fit in 11 bits come out exact, bit for bit after the output's rounding.
//! The epilogue is one f32 `fma(acc, scale, bias)` and one rounding to nearest even to the output
//! type. Results are deterministic (fixed instruction order, no atomics).
//!
//! # Requirements
//!
//! Compute capability 9.0 (H100/H200); `k` a positive multiple of 16 (TMA's row pitch is a
//! multiple of 16 bytes); A and B 16-byte aligned. Any `m` and `n` (tails are zero-filled by TMA
//! and bounds-checked on store); C and bias need only their element alignment.
//!
//! ```no_run
//! # fn main() -> ampkit::Result<()> {
//! use ampkit::cpu::fp8::Fp8Format;
//! use ampkit::ops::gemm_fp8::{gemm_fp8, Fp8Operand};
//! use ampkit::shape::{GemmShape, Layout};
//! let gpu = ampkit::cuda::Gpu::new(0)?;
//! let (m, n, k) = (256, 128, 512);
//! let one = Fp8Format::E4M3.encode(1.0);
//! let x = gpu.upload(&vec![one; m * k])?; // X [m, k], E4M3
//! let w = gpu.upload(&vec![one; n * k])?; // W [n, k], E4M3
//! let (sx, sw) = (gpu.upload(&[0.5f32])?, gpu.upload(&[0.25f32])?);
//! let mut y = gpu.alloc_zeros::<f32>(m * n)?;
//! let a = Fp8Operand { data: &x, format: Fp8Format::E4M3, scale_inv: &sx };
//! let b = Fp8Operand { data: &w, format: Fp8Format::E4M3, scale_inv: &sw };
//! gemm_fp8(&gpu, GemmShape::new(Layout::Forward, m, n, k), &a, &b, None, &mut y)?;
//! assert!(gpu.download(&y)?.iter().all(|&v| v == 64.0)); // 512 · 0.5 · 0.25
//! # Ok(()) }
//! ```

use crate::cpu::fp8::Fp8Format;
use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{expect_len, Error, Result};
use crate::kernels;
use crate::ops::gemm::sm90::tensor_map_2d;
use crate::shape::{GemmShape, Layout};
use crate::validate;
use cudarc::driver::sys::CUtensorMapDataType;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use half::{bf16, f16};

const OP: &str = "ops::gemm_fp8::gemm_fp8";
/// K per pipeline stage: one 128-byte swizzled row of FP8 codes.
const BK: usize = 128;
/// Blocks per cluster (the pair that shares the B tile).
const CLUSTER: usize = 2;
/// Pair-rows of tiles per raster group.
const GROUP_M: i32 = 8;

/// One FP8 operand: codes in device memory (row-major, K contiguous), their format, and the
/// inverse scale that turns a code's value back into the tensor's (one f32 in device memory).
#[derive(Clone, Copy)]
pub struct Fp8Operand<'a> {
    /// The FP8 codes, `rows × k` row-major (any `u8` device buffer or view).
    pub data: &'a dyn DevicePtr<u8>,
    /// How the codes are encoded.
    pub format: Fp8Format,
    /// One f32: the value of a code is `decode(code) · scale_inv[0]`.
    pub scale_inv: &'a dyn DevicePtr<f32>,
}

impl std::fmt::Debug for Fp8Operand<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fp8Operand")
            .field("len", &self.data.len())
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Output element types of [`gemm_fp8`]: f32, f16 or bf16.
pub trait Fp8Output: DeviceRepr + sealed::Sealed {
    /// The kernel's `out_kind` code.
    #[doc(hidden)]
    const KIND: i32;
}
impl Fp8Output for f32 {
    const KIND: i32 = 0;
}
impl Fp8Output for f16 {
    const KIND: i32 = 1;
}
impl Fp8Output for bf16 {
    const KIND: i32 = 2;
}
/// C's `out_kind` in [`launch`]: the [`Fp8Output`] types', or `u8` for the E4M3 codes of
/// [`gemm_fp8_relu_quantized`] (which passes their scale and amax).
trait OutKind {
    const KIND: i32;
}
impl<T: Fp8Output> OutKind for T {
    const KIND: i32 = <T as Fp8Output>::KIND;
}
impl OutKind for u8 {
    const KIND: i32 = OUT_E4M3;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

#[path = "gemm_fp8_configs.rs"]
mod configs;
pub use configs::{plan_fp8, round_fill, Fp8Config, FP8_CONFIGS};

/// `C[m, n] = a.scale_inv·b.scale_inv · Σ_k A[m, k]·B[n, k] (+ bias[n])` on the GPU, FP8
/// operands, f32 accumulation in the tensor core's precision, output f32, f16 or bf16 (see the
/// [module doc](self)). `shape.layout` must be [`Layout::Forward`]. Queued on [`Gpu::stream`];
/// does not synchronise.
///
/// Errors, all before any launch: [`Error::ShapeMismatch`] when a buffer's length does not match
/// the shape (A `m·k`, B `n·k`, C `m·n`, bias `n`, each `scale_inv` one element);
/// [`Error::InvalidArgument`] when the layout is not `Forward`, `k` is not a positive multiple of
/// 16, A or B is not 16-byte aligned (C, bias or a scale not aligned to its element), a
/// dimension exceeds `i32::MAX`, or the GPU is not compute capability 9.0 (the kernels are built
/// for sm_90a only). A fault while the kernel runs surfaces as [`Error::Driver`] at the next
/// synchronisation (or [`Error::Launch`] with [`Gpu::set_sync_launches`]).
pub fn gemm_fp8<C: Fp8Output>(
    gpu: &Gpu,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    c: &mut impl DevicePtrMut<C>,
) -> Result<()> {
    gemm_fp8_with(
        gpu,
        plan_fp8(shape, gpu.info().multiprocessors),
        shape,
        a,
        b,
        bias,
        c,
    )
}

fn invalid(detail: String) -> Error {
    Error::InvalidArgument { op: OP, detail }
}

/// The argument checks of [`gemm_fp8`] that need no device.
fn check_args(
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<usize>,
    c_len: usize,
) -> Result<()> {
    if shape.layout != Layout::Forward {
        return Err(invalid(format!(
            "the FP8 GEMM reads K-major operands only (Layout::Forward: A [m, k], B [n, k]); \
             {:?} needs its operands transposed first",
            shape.layout
        )));
    }
    validate::gemm::gemm(OP, shape, [a.data.len(), b.data.len(), c_len], bias)?;
    expect_len(OP, "A's scale_inv", a.scale_inv.len(), 1, "one")?;
    expect_len(OP, "B's scale_inv", b.scale_inv.len(), 1, "one")?;
    let GemmShape { m, n, k, .. } = shape;
    if k == 0 || k % 16 != 0 {
        return Err(invalid(format!(
            "k = {k}: the FP8 GEMM needs a positive multiple of 16 (the operands' row pitch, \
             k bytes, must be a multiple of 16 for TMA); pad K with zeros"
        )));
    }
    for (name, v) in [("m", m), ("n", n), ("k", k)] {
        if i32::try_from(v).is_err() {
            return Err(invalid(format!(
                "{name} = {v} exceeds i32::MAX, the kernel's index range"
            )));
        }
    }
    Ok(())
}

/// [`gemm_fp8`] followed by a ReLU in the same epilogue: `D = relu(scale·A·Bᵀ + bias)`, with
/// relu keeping NaN and turning everything not above 0 into +0 (as `crate::cpu::relu`'s ReLU),
/// applied before the rounding (which it commutes with). A hidden layer's forward. Errors: as
/// [`gemm_fp8`].
pub fn gemm_fp8_relu<C: Fp8Output>(
    gpu: &Gpu,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    c: &mut impl DevicePtrMut<C>,
) -> Result<()> {
    let config = plan_fp8(shape, gpu.info().multiprocessors);
    gemm_fp8_relu_with(gpu, config, shape, a, b, bias, c)
}

/// [`gemm_fp8`] with the tile configuration `config` instead of the planner's. For ampkit's
/// tests and benchmarks; not part of the stable API.
#[doc(hidden)]
pub fn gemm_fp8_with<C: Fp8Output>(
    gpu: &Gpu,
    config: Fp8Config,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    c: &mut impl DevicePtrMut<C>,
) -> Result<()> {
    launch(
        gpu,
        config,
        shape,
        (a, b, bias),
        false,
        c,
        Extras::default(),
    )
}

/// [`gemm_fp8_relu`] with the tile configuration `config` instead of the planner's. For
/// ampkit's tests and benchmarks; not part of the stable API.
#[doc(hidden)]
pub fn gemm_fp8_relu_with<C: Fp8Output>(
    gpu: &Gpu,
    config: Fp8Config,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    c: &mut impl DevicePtrMut<C>,
) -> Result<()> {
    launch(gpu, config, shape, (a, b, bias), true, c, Extras::default())
}

/// [`gemm_fp8_relu`] that also writes the ReLU mask the backward needs, so that it need not
/// read `c` again: bit `c % 32` of `relu_mask[r·⌈n/32⌉ + c/32]` is set where `c[r][c]`, as
/// stored (after the rounding to `C`), is in (0, +inf]; the other bits, and those past `n`, are
/// 0. [`crate::cpu::relu::mask`] is its CPU twin, and
/// [`crate::ops::fp8::cast_transpose_dbias`] reads it ([`crate::ops::fp8::ReluSource::Mask`]).
/// Errors: as [`gemm_fp8`], and [`Error::ShapeMismatch`] unless `relu_mask` holds `m·⌈n/32⌉`
/// words.
pub fn gemm_fp8_relu_masked<C: Fp8Output>(
    gpu: &Gpu,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    c: &mut impl DevicePtrMut<C>,
    relu_mask: &mut dyn DevicePtrMut<u32>,
) -> Result<()> {
    let config = plan_fp8(shape, gpu.info().multiprocessors);
    gemm_fp8_relu_masked_with(gpu, config, shape, a, b, bias, c, relu_mask)
}

/// [`gemm_fp8_relu_masked`] with the tile configuration `config` instead of the planner's. For
/// ampkit's tests and benchmarks; not part of the stable API.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // gemm_fp8_relu_with's arguments and the mask
pub fn gemm_fp8_relu_masked_with<C: Fp8Output>(
    gpu: &Gpu,
    config: Fp8Config,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    c: &mut impl DevicePtrMut<C>,
    relu_mask: &mut dyn DevicePtrMut<u32>,
) -> Result<()> {
    launch(
        gpu,
        config,
        shape,
        (a, b, bias),
        true,
        c,
        Extras {
            relu_mask: Some(relu_mask),
            ..Extras::default()
        },
    )
}

/// [`gemm_fp8`] that also reports a non-finite output: when the kernel stores an inf or NaN into
/// `c` (after rounding to `C`: an f16 result from magnitude 65520 up is inf), it or'es 1 into
/// `nonfinite[0]`, which it never clears. The training step passes its FP8 layers' weight
/// gradients through it, so that the unscale need not read them again just to check them.
/// Errors: as [`gemm_fp8`], and [`Error::ShapeMismatch`] when `nonfinite` is not one word.
pub fn gemm_fp8_checked<C: Fp8Output>(
    gpu: &Gpu,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    c: &mut impl DevicePtrMut<C>,
    nonfinite: &mut dyn DevicePtrMut<u32>,
) -> Result<()> {
    let config = plan_fp8(shape, gpu.info().multiprocessors);
    gemm_fp8_checked_with(gpu, config, shape, a, b, bias, c, nonfinite)
}

/// [`gemm_fp8_checked`] with the tile configuration `config` instead of the planner's. For
/// ampkit's tests and benchmarks; not part of the stable API.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // gemm_fp8_with's arguments and the flag
pub fn gemm_fp8_checked_with<C: Fp8Output>(
    gpu: &Gpu,
    config: Fp8Config,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    c: &mut impl DevicePtrMut<C>,
    nonfinite: &mut dyn DevicePtrMut<u32>,
) -> Result<()> {
    expect_len(OP, "nonfinite", nonfinite.len(), 1, "one word")?;
    launch(
        gpu,
        config,
        shape,
        (a, b, bias),
        false,
        c,
        Extras {
            nonfinite: Some(nonfinite),
            ..Extras::default()
        },
    )
}

/// What a launch writes besides C: the non-finite flag, the ReLU mask, and for the E4M3 output
/// ([`gemm_fp8_relu_quantized`]) the quantization scale and the amax.
#[derive(Default)]
struct Extras<'a> {
    nonfinite: Option<&'a mut dyn DevicePtrMut<u32>>,
    relu_mask: Option<&'a mut dyn DevicePtrMut<u32>>,
    quantize: Option<(&'a dyn DevicePtr<f32>, &'a mut dyn DevicePtrMut<f32>)>,
}

/// The kernel's `out_kind` of the E4M3 output (OUT_E4M3).
const OUT_E4M3: i32 = 3;

/// The checks and the launch of `config`, with the ReLU epilogue when `relu`; C's elements are
/// the kernel's `out_kind` ([`OutKind`]: E4M3 codes for `u8`, with `extras.quantize`).
fn launch<C: DeviceRepr + OutKind>(
    gpu: &Gpu,
    config: Fp8Config,
    shape: GemmShape,
    (a, b, bias): (
        &Fp8Operand<'_>,
        &Fp8Operand<'_>,
        Option<&dyn DevicePtr<f32>>,
    ),
    relu: bool,
    c: &mut (impl DevicePtrMut<C> + ?Sized),
    extras: Extras<'_>,
) -> Result<()> {
    let Extras {
        nonfinite,
        relu_mask,
        quantize,
    } = extras;
    check_args(shape, a, b, bias.map(|b| b.len()), c.len())?;
    if let Some(mask) = &relu_mask {
        let words = shape.m.checked_mul(shape.n.div_ceil(32)).ok_or_else(|| {
            invalid(format!(
                "the ReLU mask of {} × {} overflows",
                shape.m, shape.n
            ))
        })?;
        expect_len(OP, "relu_mask", mask.len(), words, "m·⌈n/32⌉ words")?;
    }
    let cc = gpu.info().compute_capability;
    if cc != (9, 0) {
        return Err(invalid(format!(
            "the FP8 GEMM runs on Hopper only (wgmma FP8, built for sm_90a: compute capability \
             9.0); this GPU has compute capability {}.{}",
            cc.0, cc.1
        )));
    }
    let GemmShape { m, n, k, .. } = shape;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (a_ptr, _ga) = a.data.device_ptr(stream);
    let (b_ptr, _gb) = b.data.device_ptr(stream);
    let (sa_ptr, _gsa) = a.scale_inv.device_ptr(stream);
    let (sb_ptr, _gsb) = b.scale_inv.device_ptr(stream);
    let (c_ptr, _gc) = c.device_ptr_mut(stream);
    let bias = bias.map(|b| b.device_ptr(stream));
    let bias_ptr = bias.as_ref().map_or(0, |(p, _)| *p);
    let flag = nonfinite.map(|f| f.device_ptr_mut(stream));
    let flag_ptr = flag.as_ref().map_or(0, |(p, _)| *p);
    let mask = relu_mask.map(|f| f.device_ptr_mut(stream));
    let mask_ptr = mask.as_ref().map_or(0, |(p, _)| *p);
    let (q_scale, q_amax) = match quantize {
        Some((scale, amax)) => (
            Some(scale.device_ptr(stream)),
            Some(amax.device_ptr_mut(stream)),
        ),
        None => (None, None),
    };
    let q_scale_ptr = q_scale.as_ref().map_or(0, |(p, _)| *p);
    let q_amax_ptr = q_amax.as_ref().map_or(0, |(p, _)| *p);
    for (name, p, align) in [
        ("A", a_ptr, 16),
        ("B", b_ptr, 16),
        ("C", c_ptr, std::mem::size_of::<C>() as u64),
        ("bias", bias_ptr, 4),
        ("A's scale_inv", sa_ptr, 4),
        ("B's scale_inv", sb_ptr, 4),
        ("nonfinite", flag_ptr, 4),
        ("relu_mask", mask_ptr, 4),
        ("the quantization scale", q_scale_ptr, 4),
        ("amax", q_amax_ptr, 4),
    ] {
        if p % align != 0 {
            return Err(invalid(format!(
                "{name} at {p:#x} is not {align}-byte aligned{}",
                if align == 16 {
                    " (TMA reads the FP8 operands from 16-byte aligned addresses)"
                } else {
                    ""
                }
            )));
        }
    }
    let map = |ptr: u64, rows: usize, box_rows: usize, what: &str| {
        tensor_map_2d(
            ptr,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            1,
            [k, rows],
            [BK as u32, box_rows as u32],
        )
        .map_err(|source| Error::Driver {
            context: format!("encoding the TMA tensor map of {what} ({rows} × {k} FP8 codes)"),
            source,
        })
    };
    // Each block of a cluster loads half of the B tile (and multicasts it to both).
    let ta = map(a_ptr, m, config.bm, "A")?;
    let tb = map(b_ptr, n, config.bn / CLUSTER, "B")?;
    // TMA stores need D's base and row pitch in 16-byte steps; other outputs take the plain
    // epilogue of the same tiles.
    let elem = std::mem::size_of::<C>();
    let config = if c_ptr % 16 == 0 && (n * elem) % 16 == 0 {
        config
    } else {
        config.plain()
    };
    let kind = C::KIND;
    if kind == OUT_E4M3 && !config.tma_store {
        return Err(invalid(format!(
            "the E4M3 output goes out through TMA stores only: it needs a TMA-store config \
             ({} is not one), n a multiple of 16 (n = {n}) and a 16-byte aligned output \
             (at {c_ptr:#x})",
            config.name
        )));
    }
    let tc = if config.tma_store {
        let dtype = match elem {
            4 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            2 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT16,
            _ => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        };
        tensor_map_2d(c_ptr, dtype, elem, [n, m], [(128 / elem) as u32, 64]).map_err(|source| {
            Error::Driver {
                context: format!("encoding the TMA tensor map of C ({m} × {n})"),
                source,
            }
        })?
    } else {
        // Unread by the plain epilogue; any valid map fills the parameter.
        ta
    };
    let units = m.div_ceil(config.bm).div_ceil(CLUSTER) * n.div_ceil(config.bn);
    let clusters = (gpu.info().multiprocessors / CLUSTER).clamp(1, units);
    let cfg = LaunchConfig {
        grid: ((clusters * CLUSTER) as u32, 1, 1),
        block: (384, 1, 1),
        shared_bytes: config.shared_bytes() as u32,
    };
    let format = |f: Fp8Format| match f {
        Fp8Format::E4M3 => 0,
        Fp8Format::E5M2 => 1,
    };
    let kernel = config.kernels[2 * format(a.format) + format(b.format)];
    let mut args = KernelArgs::new();
    args.push(ta).push(tb).push(tc).push(c_ptr).push(bias_ptr);
    args.push(sa_ptr).push(sb_ptr);
    args.push(m as i32).push(n as i32).push(k as i32);
    // Bit 2 of out_kind: the ReLU epilogue (OUT_RELU in the kernel).
    args.push(kind | if relu { 4 } else { 0 }).push(GROUP_M);
    args.push(flag_ptr)
        .push(mask_ptr)
        .push(q_scale_ptr)
        .push(q_amax_ptr);
    // SAFETY: gemm_fp8_<config>_<formats>(TensorMap ta, TensorMap tb, TensorMap tc, void* C,
    // const float* bias, const float* a_scale_inv, const float* b_scale_inv, int M, int N, int K,
    // int out_kind, int group_m, unsigned* nonfinite, unsigned* relu_mask, const float* q_scale,
    // unsigned* q_amax) matches the arguments; the E4M3 output (kind 3, which only the e4e4
    // entry points store) comes only with a TMA-store config (checked above) and E4M3
    // operands (gemm_fp8_relu_quantized checks them), with its scale and amax one f32 each.
    // The tensor maps describe exactly A (m × k bytes), B (n × k bytes) and, for a
    // TMA-store config, C (m × n elements of C, 16-byte aligned base and pitch as checked
    // above); check_args proved those lengths and TMA clips every box to them; C holds m·n
    // elements of the out_kind type and the plain epilogue bounds-checks every store; bias
    // holds n f32, each scale one, nonfinite (null or) one u32 and relu_mask (null or) m·⌈n/32⌉
    // u32, of which the kernel writes word [r][c / 32] for r < m, c < n only; the grid is a
    // multiple of the compiled cluster size (2). The guards above outlive the launch.
    unsafe { gpu.launch(&kernels::GEMM_FP8, kernel, cfg, &args) }
}

#[path = "gemm_fp8_quantized.rs"]
mod quantized;
pub use quantized::{gemm_fp8_relu_quantized, gemm_fp8_relu_quantized_with, QuantizedOut};

#[cfg(test)]
#[path = "gemm_fp8_tests.rs"]
mod tests;
