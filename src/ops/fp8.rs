//! FP8 (E4M3, E5M2) casts of delayed-scaling training on the GPU (`kernels/fp8.cu`,
//! `kernels/fp8_train.cu`); CPU twin: [`crate::cpu::fp8`], bit for bit.
//!
//! [`quantize`] writes `fp8(x·scale)` and folds the tensor's `max |x|` into an amax on the device
//! in the same pass; [`cast_transpose`] does the same for a matrix and also writes its transpose
//! (the FP8 GEMM reads only K-major operands, so a training step needs each FP8 tensor both
//! ways), and [`cast_transpose_dbias`] for an output gradient with its bias gradient and ReLU
//! backward; [`transpose`] transposes codes cast elsewhere (the FP8 GEMM's E4M3 output);
//! [`dequantize`] writes `f32(q)·scale_inv`. Scales and amaxes are one-element device
//! buffers: [`Fp8Scales`] holds a model's, and [`update_scales`] runs the recipe's scale update
//! for all of them in one launch, so the step never needs the host. Work is queued on
//! [`Gpu::stream`]; nothing here synchronises.
//!
//! Errors, before any launch: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when source
//! and destination lengths differ or a scale or amax buffer does not hold exactly one element.
//! Empty tensors launch nothing (the amax is left as it was).

use crate::cpu::fp8::{cast_transpose_sizes, CastInput, Fp8Format};
use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{expect_len, same_len, Result};
use crate::kernels;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use half::bf16;

mod dbias;
mod gather;
mod scales;
pub use dbias::{
    bias_grad_finish_many, cast_transpose_dbias, cast_transpose_dbias_partial, BiasFinish,
    ReluSource,
};
pub(crate) use gather::{gather_cast_transpose_with_weights, WeightCast};
pub use scales::{update_scales, Fp8Scales, MAX_HISTORY};

const THREADS: u32 = 256;

/// The address of an optional output (0, which the casts skip, for `None`) and its guard.
fn optional_ptr_mut<'a, 'q: 'a>(
    q: Option<&'a mut (dyn DevicePtrMut<u8> + 'q)>,
    stream: &'a std::sync::Arc<cudarc::driver::CudaStream>,
) -> (u64, Option<cudarc::driver::SyncOnDrop<'a>>) {
    match q {
        Some(q) => {
            let (p, guard) = q.device_ptr_mut(stream);
            (p, Some(guard))
        }
        None => (0, None),
    }
}

fn launch_config(gpu: &Gpu, n: usize) -> LaunchConfig {
    let blocks = n
        .div_ceil(THREADS as usize)
        .min(gpu.info().multiprocessors * 8);
    LaunchConfig::linear(blocks as u32, THREADS)
}

/// `dst[i] = fp8(src[i]·scale[0])` (round to nearest even, saturating to the format's largest
/// finite value; NaN → 0x7F) and `amax[0] = max(amax[0], max_i |src[i]|)`, the magnitude taken
/// before scaling (a NaN makes it NaN). `amax` accumulates: zero it to start a new one. Bit-exact
/// with [`crate::cpu::fp8::quantize`]; errors as in the [module doc](self).
pub fn quantize(
    gpu: &Gpu,
    format: Fp8Format,
    src: &impl DevicePtr<f32>,
    dst: &mut impl DevicePtrMut<u8>,
    scale: &impl DevicePtr<f32>,
    amax: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    const OP: &str = "fp8::quantize";
    same_len(OP, src.len(), dst.len())?;
    expect_len(OP, "scale", scale.len(), 1, "one")?;
    expect_len(OP, "amax", amax.len(), 1, "one")?;
    let n = src.len();
    if n == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (s, _gs) = src.device_ptr(stream);
    let (d, _gd) = dst.device_ptr_mut(stream);
    let (sc, _gsc) = scale.device_ptr(stream);
    let (am, _gam) = amax.device_ptr_mut(stream);
    let mut args = KernelArgs::new();
    args.push(s).push(d).push(n).push(sc).push(am);
    let kernel = match format {
        Fp8Format::E4M3 => "fp8_quantize_f32_e4m3",
        Fp8Format::E5M2 => "fp8_quantize_f32_e5m2",
    };
    // SAFETY: fp8_quantize_f32_*(const float* x, uint8_t* q, size_t n, const float* scale,
    // unsigned int* amax_bits) matches; x and q hold n elements (same_len), scale and amax one
    // (expect_len); f32 and u32 share size and alignment. The guards outlive the launch.
    unsafe { gpu.launch(&kernels::FP8, kernel, launch_config(gpu, n), &args) }
}

/// `dst[i] = f32(src[i])·scale_inv[0]` (an FP8 NaN gives the f32 NaN 0x7FFFFFFF). Bit-exact with
/// [`crate::cpu::fp8::dequantize`]; errors as in the [module doc](self).
pub fn dequantize(
    gpu: &Gpu,
    format: Fp8Format,
    src: &impl DevicePtr<u8>,
    dst: &mut impl DevicePtrMut<f32>,
    scale_inv: &impl DevicePtr<f32>,
) -> Result<()> {
    const OP: &str = "fp8::dequantize";
    same_len(OP, src.len(), dst.len())?;
    expect_len(OP, "scale_inv", scale_inv.len(), 1, "one")?;
    let n = src.len();
    if n == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (s, _gs) = src.device_ptr(stream);
    let (d, _gd) = dst.device_ptr_mut(stream);
    let (sc, _gsc) = scale_inv.device_ptr(stream);
    let mut args = KernelArgs::new();
    args.push(s).push(d).push(n).push(sc);
    let kernel = match format {
        Fp8Format::E4M3 => "fp8_dequantize_e4m3_f32",
        Fp8Format::E5M2 => "fp8_dequantize_e5m2_f32",
    };
    // SAFETY: fp8_dequantize_*_f32(const uint8_t* q, float* y, size_t n, const float* scale_inv)
    // matches; q and y hold n elements, scale_inv one. The guards outlive the launch.
    unsafe { gpu.launch(&kernels::FP8, kernel, launch_config(gpu, n), &args) }
}

/// Element types [`cast_transpose`] reads: f32, and bf16 (widened exactly, as
/// [`CastInput::widen`]).
pub trait CastSource: DeviceRepr + CastInput {
    /// Kernels by format (E4M3, E5M2), then access (4-element vectors, single elements).
    #[doc(hidden)]
    const KERNELS: [[&'static str; 2]; 2];
}

impl CastSource for f32 {
    const KERNELS: [[&'static str; 2]; 2] = [
        [
            "fp8_cast_transpose_f32_e4m3_v4",
            "fp8_cast_transpose_f32_e4m3_v1",
        ],
        [
            "fp8_cast_transpose_f32_e5m2_v4",
            "fp8_cast_transpose_f32_e5m2_v1",
        ],
    ];
}

impl CastSource for bf16 {
    const KERNELS: [[&'static str; 2]; 2] = [
        [
            "fp8_cast_transpose_bf16_e4m3_v4",
            "fp8_cast_transpose_bf16_e4m3_v1",
        ],
        [
            "fp8_cast_transpose_bf16_e5m2_v4",
            "fp8_cast_transpose_bf16_e5m2_v1",
        ],
    ];
}

/// Threads per block, tile edge and resident blocks per SM of `fp8_cast_transpose_*` (the
/// kernel's `kThreads`, `kTile`, `kBlocksPerSm`).
const CT_THREADS: u32 = 256;
const CT_TILE: usize = 64;
const CT_BLOCKS_PER_SM: usize = 6;

/// The cast + transpose of delayed-scaling training. For `src` `[rows, cols]` row-major:
/// - `q[r·cols + c] = fp8(src[r·cols + c]·scale[0])`, as [`quantize`] (skipped when `q` is
///   `None`);
/// - `qt[c·ld + r] = q[r·cols + c]` for `r < rows` and `0x00` for `rows ≤ r < ld`, where `ld` =
///   [`transpose_ld`](crate::cpu::fp8::transpose_ld)`(rows)` (`rows` rounded up to 16): `qt` is
///   the transpose `[cols, ld]`, whose rows the FP8 GEMM's TMA loads can read;
/// - `amax[0] = max(amax[0], max |src|)`, before scaling (a NaN makes it NaN).
///
/// `src` is f32 or bf16 ([`CastSource`]). With 16-byte-aligned (bf16: 8-byte) `src`, 4-byte
/// aligned `q` and `qt` and `cols` a multiple of 4, the kernel moves 4 elements per access;
/// otherwise one. Bit-exact with [`crate::cpu::fp8::cast_transpose`].
///
/// Errors: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) unless `src` and `q` hold
/// `rows·cols` elements, `qt` `cols·ld`, `scale` and `amax` one;
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when a size overflows. Empty
/// matrices launch nothing.
///
/// ```no_run
/// # fn main() -> ampkit::Result<()> {
/// use ampkit::cpu::fp8::{transpose_ld, Fp8Format};
/// let gpu = ampkit::cuda::Gpu::new(0)?;
/// let (rows, cols) = (100, 64);
/// let ld = transpose_ld(rows).unwrap(); // 112
/// let x = gpu.upload(&vec![1.5f32; rows * cols])?;
/// let (scale, mut amax) = (gpu.upload(&[2.0f32])?, gpu.upload(&[0.0f32])?);
/// let mut q = gpu.alloc_zeros::<u8>(rows * cols)?;
/// let mut qt = gpu.alloc_zeros::<u8>(cols * ld)?;
/// ampkit::ops::fp8::cast_transpose(
///     &gpu, Fp8Format::E4M3, &x, rows, cols, &scale, Some(&mut q), &mut qt, &mut amax,
/// )?;
/// assert_eq!(gpu.download(&amax)?, [1.5]);
/// # Ok(()) }
/// ```
#[allow(clippy::too_many_arguments)] // the matrix, its shape, and the recipe's three buffers
pub fn cast_transpose<T: CastSource>(
    gpu: &Gpu,
    format: Fp8Format,
    src: &impl DevicePtr<T>,
    rows: usize,
    cols: usize,
    scale: &impl DevicePtr<f32>,
    q: Option<&mut dyn DevicePtrMut<u8>>,
    qt: &mut impl DevicePtrMut<u8>,
    amax: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    const OP: &str = "fp8::cast_transpose";
    let (n, ld, nt) = cast_transpose_sizes(OP, rows, cols)?;
    let how = format!("rows·cols = {rows}·{cols}");
    expect_len(OP, "src", src.len(), n, &how)?;
    if let Some(q) = &q {
        expect_len(OP, "q", q.len(), n, &how)?;
    }
    expect_len(OP, "qt", qt.len(), nt, &format!("cols·ld = {cols}·{ld}"))?;
    expect_len(OP, "scale", scale.len(), 1, "one")?;
    expect_len(OP, "amax", amax.len(), 1, "one")?;
    if n == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (s, _gs) = src.device_ptr(stream);
    let (q_ptr, _gq) = optional_ptr_mut(q, stream);
    let (qt_ptr, _gqt) = qt.device_ptr_mut(stream);
    let (sc, _gsc) = scale.device_ptr(stream);
    let (am, _gam) = amax.device_ptr_mut(stream);
    let elem = std::mem::size_of::<T>() as u64;
    let vector = cols % 4 == 0 && s % (4 * elem) == 0 && q_ptr % 4 == 0 && qt_ptr % 4 == 0;
    let by_format = match format {
        Fp8Format::E4M3 => &T::KERNELS[0],
        Fp8Format::E5M2 => &T::KERNELS[1],
    };
    let kernel = by_format[usize::from(!vector)];
    let mut args = KernelArgs::new();
    args.push(s).push(q_ptr).push(qt_ptr);
    args.push(rows).push(cols).push(ld).push(sc).push(am);
    // SAFETY: fp8_cast_transpose_*(const T* src, uint8_t* q, uint8_t* qt, size_t rows,
    // size_t cols, size_t ld, const float* scale, unsigned int* amax) matches (T is f32 or
    // bf16's u16 bits); src and q (or null, which the kernel skips) hold rows·cols elements, qt
    // cols·ld, scale and amax one (checked above); the kernel touches src[r·cols + c] and
    // q[r·cols + c] for r < rows, c < cols, and qt[c·ld + r] for c < cols, r < ld only. The v4
    // kernels' 4-element accesses are aligned: cols % 4 == 0 and every base is aligned
    // (`vector`). The guards outlive the launch.
    unsafe {
        gpu.launch(
            &kernels::FP8_TRAIN,
            kernel,
            cast_grid(gpu, rows, cols, CT_BLOCKS_PER_SM),
            &args,
        )
    }
}

/// The grid of the tile casts (`cast_transpose` and the gradient casts): one block per 64×64
/// tile, capped at `per_sm` resident blocks per SM (the blocks grid-stride over the rest).
fn cast_grid(gpu: &Gpu, rows: usize, cols: usize, per_sm: usize) -> LaunchConfig {
    let tiles = rows.div_ceil(CT_TILE) * cols.div_ceil(CT_TILE);
    let blocks = tiles.min(gpu.info().multiprocessors.max(1) * per_sm);
    LaunchConfig::linear(blocks as u32, CT_THREADS)
}

/// The transpose alone of FP8 codes cast elsewhere (the forward GEMM's E4M3 output,
/// [`crate::ops::gemm_fp8::gemm_fp8_relu_quantized`]): `qt[c·ld + r] = q[r·cols + c]` for `r <
/// rows` and `0x00` for `rows ≤ r < ld`, laid out as [`cast_transpose`]'s `qt`. With 4-byte
/// aligned `q` and `qt` and `cols` a multiple of 4, 4 codes per access. Bit-exact with
/// [`crate::cpu::fp8::transpose`].
///
/// Errors: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) unless `q` holds `rows·cols`
/// codes and `qt` `cols·ld`; [`Error::InvalidArgument`](crate::Error::InvalidArgument) when a
/// size overflows. Empty matrices launch nothing.
pub fn transpose(
    gpu: &Gpu,
    q: &impl DevicePtr<u8>,
    rows: usize,
    cols: usize,
    qt: &mut impl DevicePtrMut<u8>,
) -> Result<()> {
    const OP: &str = "fp8::transpose";
    let (n, ld, nt) = cast_transpose_sizes(OP, rows, cols)?;
    expect_len(OP, "q", q.len(), n, &format!("rows·cols = {rows}·{cols}"))?;
    expect_len(OP, "qt", qt.len(), nt, &format!("cols·ld = {cols}·{ld}"))?;
    if n == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (q_ptr, _gq) = q.device_ptr(stream);
    let (qt_ptr, _gqt) = qt.device_ptr_mut(stream);
    let vector = cols % 4 == 0 && q_ptr % 4 == 0 && qt_ptr % 4 == 0;
    let kernel = if vector {
        "fp8_transpose_v4"
    } else {
        "fp8_transpose_v1"
    };
    let mut args = KernelArgs::new();
    args.push(q_ptr).push(qt_ptr).push(rows).push(cols).push(ld);
    // SAFETY: fp8_transpose_*(const uint8_t* q, uint8_t* qt, size_t rows, size_t cols, size_t
    // ld) matches; q holds rows·cols codes and qt cols·ld (checked above), of which the kernel
    // reads q[r·cols + c] for r < rows, c < cols and writes qt[c·ld + r] for c < cols, r < ld
    // only; the v4 kernel's 4-byte accesses are aligned (`vector`). The guards outlive the
    // launch.
    unsafe {
        gpu.launch(
            &kernels::FP8_TRAIN,
            kernel,
            cast_grid(gpu, rows, cols, CT_BLOCKS_PER_SM),
            &args,
        )
    }
}
