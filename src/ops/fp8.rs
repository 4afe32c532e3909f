//! FP8 (E4M3, E5M2) quantize and dequantize on the GPU (`kernels/fp8.cu`); CPU twin:
//! [`crate::cpu::fp8`], bit for bit.
//!
//! The casts of delayed-scaling FP8 training: [`quantize`] writes `fp8(x·scale)` and folds the
//! tensor's `max |x|` into an amax on the device in the same pass; [`dequantize`] writes
//! `f32(q)·scale_inv`. Scales and amaxes are one-element device buffers, so the recipe's scale
//! update never needs the host. Work is queued on [`Gpu::stream`]; nothing here synchronises.
//!
//! Errors, before any launch: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when source
//! and destination lengths differ or a scale or amax buffer does not hold exactly one element.
//! Empty tensors launch nothing (the amax is left as it was).

use crate::cpu::fp8::Fp8Format;
use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{expect_len, same_len, Result};
use crate::kernels;
use cudarc::driver::{DevicePtr, DevicePtrMut};

const THREADS: u32 = 256;

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
