//! [`gemm_fp8_relu_quantized`]: an FP8 hidden layer's forward GEMM whose output is the next FP8
//! layer's E4M3 input, so that the next layer's cast shrinks to a transpose of codes
//! ([`crate::ops::fp8::transpose`]).

use super::{check_args, invalid, launch, plan_fp8, Extras, Fp8Config, Fp8Operand, OP};
use crate::cpu::fp8::Fp8Format;
use crate::cuda::Gpu;
use crate::error::{expect_len, Result};
use crate::shape::GemmShape;
use cudarc::driver::{DevicePtr, DevicePtrMut};

/// Where [`gemm_fp8_relu_quantized`] writes: the E4M3 codes (`[m, n]` row-major), the scale they
/// are quantized with (one f32, read on the device) and the amax the recipe records (one f32,
/// raised to the output's largest magnitude, never lowered).
pub struct QuantizedOut<'a> {
    /// `m·n` E4M3 codes, 16-byte aligned.
    pub q: &'a mut dyn DevicePtrMut<u8>,
    /// The quantization scale: a value `v` becomes `encode(v · scale[0])`.
    pub scale: &'a dyn DevicePtr<f32>,
    /// `amax[0] = max(amax[0], max |v|)`, as the casts fold it (on the f32 bits; a NaN wins).
    pub amax: &'a mut dyn DevicePtrMut<f32>,
}

impl std::fmt::Debug for QuantizedOut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantizedOut({} codes)", self.q.len())
    }
}

/// [`gemm_fp8_relu_masked`](super::gemm_fp8_relu_masked) with a bf16 output that is quantized
/// before it is stored: each `v = relu(scale·A·Bᵀ + bias)` is rounded to bf16 as the bf16
/// output would store it, then `out.q` gets [`crate::ops::fp8::cast_transpose`]'s E4M3 code of
/// that bf16 value at `out.scale` and `out.amax` its magnitude: bit for bit the bf16 GEMM
/// followed by the cast, without the bf16 tensor (2 bytes per element written and read back).
/// The ReLU mask is the bf16 output's. Only E4M3×E4M3 operands (the forward's) are supported.
///
/// The tiles are the planner's ([`plan_fp8`]) with the TMA-store epilogue.
///
/// Errors, all before any launch: as [`gemm_fp8_relu_masked`](super::gemm_fp8_relu_masked), and
/// [`crate::Error::ShapeMismatch`] unless `out.q` holds `m·n` codes and `out.scale`, `out.amax`
/// one f32 each; [`crate::Error::InvalidArgument`] unless both operands are E4M3, `n` is a
/// multiple of 16 and `out.q` 16-byte aligned (the codes go out through TMA stores).
pub fn gemm_fp8_relu_quantized(
    gpu: &Gpu,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    out: QuantizedOut<'_>,
    relu_mask: &mut dyn DevicePtrMut<u32>,
) -> Result<()> {
    // The planner's tiles, with the TMA-store epilogue (its small-product choice, pp128, has
    // the plain one).
    let config = plan_fp8(shape, gpu.info().multiprocessors).with_tma_store();
    gemm_fp8_relu_quantized_with(gpu, config, shape, a, b, bias, out, relu_mask)
}

/// [`gemm_fp8_relu_quantized`] with the tile configuration `config` instead of the planner's.
/// For ampkit's tests and benchmarks; not part of the stable API.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // gemm_fp8_relu_quantized's arguments and the config
pub fn gemm_fp8_relu_quantized_with(
    gpu: &Gpu,
    config: Fp8Config,
    shape: GemmShape,
    a: &Fp8Operand<'_>,
    b: &Fp8Operand<'_>,
    bias: Option<&dyn DevicePtr<f32>>,
    out: QuantizedOut<'_>,
    relu_mask: &mut dyn DevicePtrMut<u32>,
) -> Result<()> {
    check_args(shape, a, b, bias.map(|b| b.len()), out.q.len())?;
    expect_len(OP, "the quantization scale", out.scale.len(), 1, "one")?;
    expect_len(OP, "amax", out.amax.len(), 1, "one")?;
    if (a.format, b.format) != (Fp8Format::E4M3, Fp8Format::E4M3) {
        return Err(invalid(format!(
            "the E4M3 output is the forward's: both operands must be E4M3 (got {:?} × {:?})",
            a.format, b.format
        )));
    }
    if shape.n % 16 != 0 {
        return Err(invalid(format!(
            "n = {}: the E4M3 output goes out through TMA stores, whose row pitch (n bytes) \
             must be a multiple of 16; quantize a bf16 output with ops::fp8::cast_transpose",
            shape.n
        )));
    }
    let QuantizedOut { q, scale, amax } = out;
    launch(
        gpu,
        config,
        shape,
        (a, b, bias),
        true,
        q,
        Extras {
            relu_mask: Some(relu_mask),
            quantize: Some((scale, amax)),
            ..Extras::default()
        },
    )
}
