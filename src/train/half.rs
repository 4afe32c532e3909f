//! The 16-bit type a model's half layers compute in: f16 (`--precision mixed`) or bf16
//! (`--precision bf16`). The backends are generic over it; [`TrainHalf`] gathers what each op
//! family needs of the type, so one training step serves both.

use crate::cpu::fp8::Fp8Format;
use crate::cuda::{DeviceBuffer, Gpu};
use crate::error::Result;
use crate::ops::augment::AugmentOutput;
use crate::ops::cast;
use crate::ops::cross_entropy::{Grad, Logit};
use crate::ops::gemm::{BiasGradInput, GemmOperand, GemmOutput};
use crate::ops::gemm_fp8::Fp8Output;
use crate::ops::relu::ReluElement;
use crate::optim::HalfCopy;
use cudarc::driver::{CudaView, CudaViewMut};
use half::{bf16, f16};

/// Where an FP8 layer's ReLU backward reads which elements its forward's ReLU passed: the
/// output, or its ReLU mask ([`crate::ops::fp8::ReluSource`]).
pub(crate) enum ReluIn<'a, H> {
    /// The layer's output after its ReLU.
    Output(&'a CudaView<'a, H>),
    /// Its ReLU mask (`rows·⌈cols/32⌉` words).
    Mask(&'a CudaView<'a, u32>),
}

/// A 16-bit training type: f16 or bf16.
pub(crate) trait TrainHalf:
    GemmOperand
    + GemmOutput<Self>
    + BiasGradInput
    + Fp8Output
    + ReluElement
    + AugmentOutput
    + Logit
    + Grad
    + HalfCopy
    + crate::cpu::Element
    + cudarc::driver::ValidAsZeroBits
    + Default
    + Send
    + Sync
    + Unpin
{
    /// The dtype's name in messages (`f16`, `bf16`).
    const DTYPE: &'static str;
    /// Whether the fused classifier head ([`crate::ops::head`], f16 only) can serve the type.
    const FUSED_HEAD: bool;
    /// `dst[i] = f32(src[i])`, exact.
    fn widen(gpu: &Gpu, src: &CudaView<'_, Self>, dst: &mut CudaViewMut<'_, f32>) -> Result<()>;
    /// `dst[i] = Self(src[i])`, round to nearest even.
    fn narrow(gpu: &Gpu, src: &CudaView<'_, f32>, dst: &mut CudaViewMut<'_, Self>) -> Result<()>;
    /// [`crate::ops::fp8::cast_transpose`] of a `[rows, cols]` matrix of this type (bf16 only:
    /// FP8 layers run among bf16 ones; f16 refuses).
    #[allow(clippy::too_many_arguments)] // the cast's own arguments
    fn cast_transpose_fp8(
        gpu: &Gpu,
        format: Fp8Format,
        src: &CudaView<'_, Self>,
        rows: usize,
        cols: usize,
        scale: &CudaView<'_, f32>,
        q: &mut CudaViewMut<'_, u8>,
        qt: &mut CudaViewMut<'_, u8>,
        amax: &mut CudaViewMut<'_, f32>,
    ) -> Result<()>;
    /// [`crate::ops::fp8::cast_transpose_dbias_partial`] of a `[rows, cols]` output gradient
    /// of this type, with the ReLU backward on `relu` when given (bf16 only, as
    /// [`TrainHalf::cast_transpose_fp8`]); the bias gradient's tile sums go to `partial`.
    #[allow(clippy::too_many_arguments)] // the cast's own arguments
    fn cast_transpose_dbias_partial_fp8(
        gpu: &Gpu,
        format: Fp8Format,
        grad: &CudaView<'_, Self>,
        relu: Option<ReluIn<'_, Self>>,
        rows_cols: (usize, usize),
        scale: &CudaView<'_, f32>,
        q: &mut CudaViewMut<'_, u8>,
        qt: &mut CudaViewMut<'_, u8>,
        amax: &mut CudaViewMut<'_, f32>,
        partial: &mut CudaViewMut<'_, f32>,
    ) -> Result<()>;
    /// The buffer as f16, for the fused classifier head (f16 only: `None` for bf16, whose step
    /// runs the unfused ops).
    fn as_f16(buf: &DeviceBuffer<Self>) -> Option<&DeviceBuffer<f16>>;
    /// [`TrainHalf::as_f16`], mutably.
    fn as_f16_mut(buf: &mut DeviceBuffer<Self>) -> Option<&mut DeviceBuffer<f16>>;
}

impl TrainHalf for f16 {
    const DTYPE: &'static str = "f16";
    const FUSED_HEAD: bool = true;
    fn widen(gpu: &Gpu, src: &CudaView<'_, f16>, dst: &mut CudaViewMut<'_, f32>) -> Result<()> {
        cast::f16_to_f32(gpu, src, dst)
    }
    fn narrow(gpu: &Gpu, src: &CudaView<'_, f32>, dst: &mut CudaViewMut<'_, f16>) -> Result<()> {
        cast::f32_to_f16(gpu, src, dst)
    }
    fn cast_transpose_fp8(
        _: &Gpu,
        _: Fp8Format,
        _: &CudaView<'_, f16>,
        _: usize,
        _: usize,
        _: &CudaView<'_, f32>,
        _: &mut CudaViewMut<'_, u8>,
        _: &mut CudaViewMut<'_, u8>,
        _: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        Err(fp8_among_f16())
    }
    fn cast_transpose_dbias_partial_fp8(
        _: &Gpu,
        _: Fp8Format,
        _: &CudaView<'_, f16>,
        _: Option<ReluIn<'_, f16>>,
        _: (usize, usize),
        _: &CudaView<'_, f32>,
        _: &mut CudaViewMut<'_, u8>,
        _: &mut CudaViewMut<'_, u8>,
        _: &mut CudaViewMut<'_, f32>,
        _: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        Err(fp8_among_f16())
    }
    fn as_f16(buf: &DeviceBuffer<f16>) -> Option<&DeviceBuffer<f16>> {
        Some(buf)
    }
    fn as_f16_mut(buf: &mut DeviceBuffer<f16>) -> Option<&mut DeviceBuffer<f16>> {
        Some(buf)
    }
}

impl TrainHalf for bf16 {
    const DTYPE: &'static str = "bf16";
    const FUSED_HEAD: bool = false;
    fn widen(gpu: &Gpu, src: &CudaView<'_, bf16>, dst: &mut CudaViewMut<'_, f32>) -> Result<()> {
        cast::bf16_to_f32(gpu, src, dst)
    }
    fn narrow(gpu: &Gpu, src: &CudaView<'_, f32>, dst: &mut CudaViewMut<'_, bf16>) -> Result<()> {
        cast::f32_to_bf16(gpu, src, dst)
    }
    fn cast_transpose_fp8(
        gpu: &Gpu,
        format: Fp8Format,
        src: &CudaView<'_, bf16>,
        rows: usize,
        cols: usize,
        scale: &CudaView<'_, f32>,
        q: &mut CudaViewMut<'_, u8>,
        qt: &mut CudaViewMut<'_, u8>,
        amax: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        crate::ops::fp8::cast_transpose(gpu, format, src, rows, cols, scale, Some(q), qt, amax)
    }
    fn cast_transpose_dbias_partial_fp8(
        gpu: &Gpu,
        format: Fp8Format,
        grad: &CudaView<'_, bf16>,
        relu: Option<ReluIn<'_, bf16>>,
        rows_cols: (usize, usize),
        scale: &CudaView<'_, f32>,
        q: &mut CudaViewMut<'_, u8>,
        qt: &mut CudaViewMut<'_, u8>,
        amax: &mut CudaViewMut<'_, f32>,
        partial: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        use crate::ops::fp8::ReluSource;
        let relu = relu.map(|r| match r {
            ReluIn::Output(y) => ReluSource::Output(y),
            ReluIn::Mask(m) => ReluSource::Mask(m),
        });
        crate::ops::fp8::cast_transpose_dbias_partial(
            gpu,
            format,
            grad,
            relu,
            rows_cols,
            scale,
            Some(q),
            qt,
            amax,
            partial,
        )
    }
    fn as_f16(_: &DeviceBuffer<bf16>) -> Option<&DeviceBuffer<f16>> {
        None
    }
    fn as_f16_mut(_: &mut DeviceBuffer<bf16>) -> Option<&mut DeviceBuffer<f16>> {
        None
    }
}

/// What the FP8 methods of f16 return.
fn fp8_among_f16() -> crate::Error {
    crate::Error::InvalidArgument {
        op: "train::GpuBackend",
        detail: "FP8 layers run among bf16 layers (--precision fp8), not f16 ones".into(),
    }
}

/// Rounds every element to the nearest `H` (kept in f32).
pub(crate) fn round_to<H: crate::cpu::Element>(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = H::from_f32(*v).to_f32());
}

/// `x` rounded to `H`.
pub(crate) fn narrow_vec<H: crate::cpu::Element>(x: &[f32]) -> Vec<H> {
    x.iter().map(|&v| H::from_f32(v)).collect()
}

/// `x` widened to f32.
pub(crate) fn widen_vec<H: crate::cpu::Element>(x: &[H]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}
