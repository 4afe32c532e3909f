//! The GPU MLP's per-layer buffers and its forward and backward passes, for any mix of 16-bit
//! (f16 under mixed precision, bf16 under bf16 precision: the type `H`) and f32 layers, with or
//! without LayerNorm. Used by
//! [`super::gpu_backend::GpuBackend`]; the CPU twin is [`super::cpu_backend`].
//!
//! Dtypes follow PyTorch autocast: a half layer runs the 16-bit GEMM (f32 accumulation) and
//! emits `H`; an f32 layer runs cuBLAS in f32; LayerNorm, its ReLU and everything after them is
//! f32 until the next half layer rounds its input to `H`. Where a producer's dtype differs from what
//! its consumer needs, one cast kernel converts into the consumer's own buffer.

use super::cpu_backend::LayerParams;
use super::gpu_fp8::{self, Fp8Bufs, Fp8Grad, Fp8Out, Fp8Run};
use super::half::TrainHalf;
use crate::cuda::{DeviceBuffer, Gpu};
use crate::error::Result;
use crate::nn::{MlpConfig, LAYERNORM_EPS};
use crate::ops::blas::Blas;
use crate::ops::gemm::{bias_grad, gemm, gemm_checked, gemm_deferred, Epilogue};
use crate::ops::unscale::GradSource;
use crate::ops::{layernorm, relu};
use crate::shape::{GemmShape, Layout};
use cudarc::driver::{CudaView, CudaViewMut};

/// A device buffer of either dtype.
pub(crate) enum Buf<H: TrainHalf> {
    /// 16-bit values.
    H(DeviceBuffer<H>),
    /// f32 values.
    F(DeviceBuffer<f32>),
}

/// A view of either dtype.
pub(crate) enum View<'a, H: TrainHalf> {
    /// 16-bit values.
    H(CudaView<'a, H>),
    /// f32 values.
    F(CudaView<'a, f32>),
}

impl<H: TrainHalf> Buf<H> {
    pub(crate) fn new(gpu: &Gpu, half: bool, n: usize) -> Result<Buf<H>> {
        Ok(if half {
            Buf::H(gpu.alloc_zeros(n.max(1))?)
        } else {
            Buf::F(gpu.alloc_zeros(n.max(1))?)
        })
    }
    fn view(&self, n: usize) -> View<'_, H> {
        match self {
            Buf::H(b) => View::H(b.slice(..n)),
            Buf::F(b) => View::F(b.slice(..n)),
        }
    }
    fn h(&mut self, n: usize) -> CudaViewMut<'_, H> {
        match self {
            Buf::H(b) => b.slice_mut(..n),
            Buf::F(_) => unreachable!("dtype fixed at construction"),
        }
    }
    fn f(&mut self, n: usize) -> CudaViewMut<'_, f32> {
        match self {
            Buf::F(b) => b.slice_mut(..n),
            Buf::H(_) => unreachable!("dtype fixed at construction"),
        }
    }
}

impl<'a, H: TrainHalf> View<'a, H> {
    fn h(&self) -> &CudaView<'_, H> {
        match self {
            View::H(v) => v,
            View::F(_) => unreachable!("dtype checked by the caller"),
        }
    }
    fn f(&self) -> &CudaView<'_, f32> {
        match self {
            View::F(v) => v,
            View::H(_) => unreachable!("dtype checked by the caller"),
        }
    }
    fn into_h(self) -> CudaView<'a, H> {
        match self {
            View::H(v) => v,
            View::F(_) => unreachable!("dtype checked by the caller"),
        }
    }
    fn is_half(&self) -> bool {
        matches!(self, View::H(_))
    }
}

/// Converts `src` into `dst` (different dtypes).
fn convert<H: TrainHalf>(gpu: &Gpu, src: &View<'_, H>, dst: &mut Buf<H>, n: usize) -> Result<()> {
    match (src, dst) {
        (View::H(s), Buf::F(d)) => H::widen(gpu, s, &mut d.slice_mut(..n)),
        (View::F(s), Buf::H(d)) => H::narrow(gpu, s, &mut d.slice_mut(..n)),
        _ => unreachable!("convert is called only across dtypes"),
    }
}

/// One linear layer (+ LayerNorm + ReLU when hidden).
pub(crate) struct Layer<H: TrainHalf> {
    pub p: LayerParams,
    fan_in: usize,
    out: usize,
    /// Computes in `H`.
    half: bool,
    last: bool,
    /// The input in this layer's dtype when the producer emits the other one.
    input: Option<Buf<H>>,
    /// GEMM output in f32 when something follows it (LayerNorm, or an f32 hidden layer's ReLU).
    z: Option<DeviceBuffer<f32>>,
    /// LayerNorm output, mean, rstd.
    ln: Option<(DeviceBuffer<f32>, DeviceBuffer<f32>, DeviceBuffer<f32>)>,
    /// The layer's output (after ReLU for hidden layers; the logits for the last).
    pub out_buf: Buf<H>,
    /// Gradient of the output as the next layer's dgrad produced it, and its conversion.
    grad_in: Option<Buf<H>>,
    grad_conv: Option<Buf<H>>,
    /// f32 scratch (LayerNorm path).
    tmp: Option<DeviceBuffer<f32>>,
    /// Gradient of the GEMM output, in this layer's dtype (the last layer's: dlogits). `None` for
    /// an FP8 hidden layer without LayerNorm that the fused head does not serve: its ReLU
    /// backward runs inside its gradient's FP8 cast, which reads the output's gradient directly.
    pub dz: Option<Buf<H>>,
    /// f32 gradient of the GEMM output of a half LayerNorm layer, before its cast.
    dz32: Option<DeviceBuffer<f32>>,
    /// The weight gradient's K-split slices, for a half layer whose wgrad GEMM splits K at the
    /// configured batch: the unscale adds them (the GEMM's own reduce launch saved).
    pub wgrad_partials: Option<DeviceBuffer<f32>>,
    /// Slices the last backward left in `wgrad_partials` (1: the gradient is in `grads`).
    pub wgrad_splits: usize,
    /// Whether the last fused head computed this (last) layer's weight gradient: it does at
    /// small batches ([`crate::ops::head::weight_slices`]); otherwise backward runs the GEMM.
    pub wgrad_by_head: bool,
    /// Non-zero once a checked weight-gradient GEMM stored an inf or NaN; the step's unscale
    /// folds it into its flags and zeroes it ([`GradSource::Checked`]).
    wgrad_nonfinite: DeviceBuffer<u32>,
    /// Whether the last backward's weight-gradient GEMM checked the whole gradient into
    /// `wgrad_nonfinite` (asked for, and not left in K-split slices).
    wgrad_checked: bool,
    /// FP8 layers ([`MlpConfig::fp8_layer`]): their FP8 copies; their GEMMs run in FP8.
    fp8: Option<Fp8Bufs>,
}

impl<H: TrainHalf> Layer<H> {
    /// Whether the output is `H` (a half layer without LayerNorm).
    pub fn out_half(&self) -> bool {
        self.half && self.ln.is_none()
    }

    /// An FP8 layer that reads its input as given (no conversion buffer): its FP8 buffers, into
    /// which the step's input stage may cast the batch directly
    /// ([`gpu_fp8::gather_input`]).
    pub(crate) fn fp8_direct_input(&mut self) -> Option<&mut Fp8Bufs> {
        self.fp8.as_mut().filter(|_| self.input.is_none())
    }

    /// An FP8 layer's buffers with its master weight (in `masters`) and shape, for the input
    /// stage that casts every FP8 weight ([`gpu_fp8::gather_input`]).
    pub(crate) fn fp8_weight<'a>(
        &'a mut self,
        masters: &'a [DeviceBuffer<f32>],
    ) -> Option<gpu_fp8::Fp8Weight<'a>> {
        let (w, out, fan_in) = (masters.get(self.p.w)?, self.out, self.fan_in);
        self.fp8.as_mut().map(|bufs| gpu_fp8::Fp8Weight {
            bufs,
            w,
            out,
            fan_in,
        })
    }
}

/// Buffers of every layer for batches of up to `batch` samples.
pub(crate) fn build<H: TrainHalf>(
    gpu: &Gpu,
    cfg: &MlpConfig,
    params: &[LayerParams],
    batch: usize,
) -> Result<Vec<Layer<H>>> {
    let n_layers = cfg.linear_count();
    let mut layers: Vec<Layer<H>> = Vec::with_capacity(n_layers);
    let fp8_slots = super::cpu_fp8::slots(cfg);
    for (l, &p) in params.iter().enumerate() {
        let (fan_in, out) = (cfg.layers[l], cfg.layers[l + 1]);
        let half = cfg.half_layer(l);
        let last = l + 1 == n_layers;
        let has_ln = p.ln.is_some();
        let out_half = half && !has_ln;
        let n = batch * out;
        // The producer's output dtype (layer 0 reads the epoch data, stored in its own dtype).
        let producer_half = layers.last().map_or(half, Layer::out_half);
        let next_half = (l + 1 < n_layers).then(|| cfg.half_layer(l + 1));
        layers.push(Layer {
            p,
            fan_in,
            out,
            half,
            last,
            input: (producer_half != half)
                .then(|| Buf::new(gpu, half, batch * fan_in))
                .transpose()?,
            z: (has_ln || (!half && !last))
                .then(|| gpu.alloc_zeros(n))
                .transpose()?,
            ln: if has_ln {
                Some((
                    gpu.alloc_zeros(n)?,
                    gpu.alloc_zeros(batch)?,
                    gpu.alloc_zeros(batch)?,
                ))
            } else {
                None
            },
            out_buf: Buf::new(gpu, out_half, n)?,
            grad_in: next_half.map(|h| Buf::new(gpu, h, n)).transpose()?,
            grad_conv: next_half
                .filter(|&h| h != out_half)
                .map(|h| Buf::new(gpu, !h, n))
                .transpose()?,
            tmp: has_ln.then(|| gpu.alloc_zeros(n)).transpose()?,
            dz: {
                let head_writes = H::FUSED_HEAD && l + 2 == n_layers;
                let relu_in_cast = fp8_slots[l].is_some() && !has_ln && !last;
                (!relu_in_cast || head_writes)
                    .then(|| Buf::new(gpu, half, n))
                    .transpose()?
            },
            dz32: (has_ln && half).then(|| gpu.alloc_zeros(n)).transpose()?,
            wgrad_partials: {
                let head = last && H::FUSED_HEAD;
                let splits = crate::ops::head::step_weight_slices(gpu, out, fan_in, batch, head);
                (half && splits > 1 && fp8_slots[l].is_none())
                    .then(|| gpu.alloc_zeros(splits * out * fan_in))
                    .transpose()?
            },
            wgrad_splits: 1,
            wgrad_by_head: false,
            wgrad_nonfinite: gpu.alloc_zeros(1)?,
            wgrad_checked: false,
            fp8: fp8_slots[l]
                .map(|base| Fp8Bufs::new(gpu, base, (batch, out, fan_in)))
                .transpose()?,
        });
    }
    Ok(layers)
}

/// The parameters as the passes need them.
pub(crate) struct Params<'a, H: TrainHalf> {
    pub masters: &'a [DeviceBuffer<f32>],
    pub halves: &'a [DeviceBuffer<H>],
}

/// Whether the last layer and the hidden layer below it can run as the fused head
/// ([`head`]): both f16 (not bf16) without LayerNorm, at most 16 classes over a hidden width the kernel
/// serves.
pub(crate) fn head_fits<H: TrainHalf>(layers: &[Layer<H>]) -> bool {
    match layers {
        [.., prev, last] => {
            H::FUSED_HEAD
                && prev.out_half()
                && matches!(prev.dz, Some(Buf::H(_)))
                && last.out_half()
                && last.input.is_none()
                && crate::ops::head::fits(last.fan_in, last.out)
        }
        _ => false,
    }
}

/// The fused head over `b` samples (see [`crate::ops::head`]): from the hidden layer's output,
/// the logits (the last layer's `out_buf`), the loss, the dlogits (its `dz`), the hidden layer's
/// `dz`, both bias gradients and, at small batches, the last layer's weight gradient (in its
/// `wgrad_partials` when the head leaves several slices). Call only where [`head_fits`].
#[allow(clippy::too_many_arguments)] // the passes' shared state
pub(crate) fn head<H: TrainHalf>(
    gpu: &Gpu,
    layers: &mut [Layer<H>],
    p: &Params<'_, H>,
    grads: &mut [DeviceBuffer<f32>],
    labels: CudaView<'_, u32>,
    grad_scale: &DeviceBuffer<f32>,
    loss: &mut DeviceBuffer<f32>,
    b: usize,
) -> Result<()> {
    use crate::ops::head::{head_step, HeadInputs, HeadOutputs};
    let [.., prev, last] = layers else {
        unreachable!("head_fits: at least two layers")
    };
    let (width, classes) = (last.fan_in, last.out);
    let slices = crate::ops::head::weight_slices(gpu, b);
    let [dbias_hidden, dbias, dweight] = disjoint_mut(grads, [prev.p.b, last.p.b, last.p.w]);
    let dweight = match (slices, &mut last.wgrad_partials) {
        // Several slices: in the buffer build sized for the configured batch.
        (Some(n), Some(p)) if n > 1 && p.len() >= n * classes * width => {
            Some(p.slice_mut(..n * classes * width))
        }
        // One slice: the gradient itself (several without a buffer for them: head_step's
        // ShapeMismatch, which step_weight_slices' sizing rules out).
        (Some(_), _) => Some(dweight.slice_mut(..)),
        // A batch this large leaves the weight gradient to the GEMM (backward).
        (None, _) => None,
    };
    let not_f16 = || crate::Error::InvalidArgument {
        op: "train::GpuBackend",
        detail: format!("the fused head serves f16 layers, not {}", H::DTYPE),
    };
    let (Buf::H(hidden), Some(Buf::H(dhidden))) = (&prev.out_buf, &mut prev.dz) else {
        unreachable!("head_fits: a 16-bit hidden layer")
    };
    let (Buf::H(logits), Some(Buf::H(dlogits))) = (&mut last.out_buf, &mut last.dz) else {
        unreachable!("head_fits: a 16-bit last layer")
    };
    let hidden = H::as_f16(hidden).ok_or_else(not_f16)?;
    let dhidden = H::as_f16_mut(dhidden).ok_or_else(not_f16)?;
    let weight = H::as_f16(&p.halves[last.p.w]).ok_or_else(not_f16)?;
    let logits = H::as_f16_mut(logits).ok_or_else(not_f16)?;
    let dlogits = H::as_f16_mut(dlogits).ok_or_else(not_f16)?;
    let inputs = HeadInputs {
        hidden: hidden.slice(..b * width),
        weight: weight.slice(..),
        bias: p.masters[last.p.b].slice(..),
        labels,
        grad_scale,
    };
    let mut outputs = HeadOutputs {
        logits: logits.slice_mut(..b * classes),
        dlogits: dlogits.slice_mut(..b * classes),
        dhidden: dhidden.slice_mut(..b * width),
        dbias_hidden: dbias_hidden.slice_mut(..),
        dbias: dbias.slice_mut(..),
        dweight,
        loss,
    };
    let slices = head_step(gpu, b, width, classes, &inputs, &mut outputs)?;
    last.wgrad_by_head = slices > 0;
    if slices > 0 {
        last.wgrad_splits = slices;
    }
    Ok(())
}

/// Forward pass over `b` samples of `x` (`[b, inputs]` in layer 0's dtype) through the first
/// `count` layers; with all of them, the logits end in the last layer's `out_buf`.
#[allow(clippy::too_many_arguments)] // the passes' shared state
pub(crate) fn forward<H: TrainHalf>(
    gpu: &Gpu,
    blas: &mut Option<Blas>,
    layers: &mut [Layer<H>],
    p: &Params<'_, H>,
    x: &View<'_, H>,
    b: usize,
    count: usize,
    (fp8, record): (&mut Option<Fp8Run>, bool),
) -> Result<()> {
    for l in 0..count.min(layers.len()) {
        // Convert the producer's output into this layer's dtype if needed.
        if layers[l].input.is_some() {
            let n = b * layers[l].fan_in;
            let (before, rest) = layers.split_at_mut(l);
            let src = match before.last() {
                Some(prev) => prev.out_buf.view(n),
                None => match x {
                    View::H(v) => View::H(v.slice(..n)),
                    View::F(v) => View::F(v.slice(..n)),
                },
            };
            convert(gpu, &src, rest[0].input.as_mut().expect("checked"), n)?;
        }
        let (before, rest) = layers.split_at_mut(l);
        let layer = &mut rest[0];
        let (fan_in, out, n) = (layer.fan_in, layer.out, b * layer.out);
        let input = match &layer.input {
            Some(buf) => buf.view(b * fan_in),
            None => match before.last() {
                Some(prev) => prev.out_buf.view(b * fan_in),
                None => match x {
                    View::H(v) => View::H(v.slice(..b * fan_in)),
                    View::F(v) => View::F(v.slice(..b * fan_in)),
                },
            },
        };
        let shape = GemmShape::new(Layout::Forward, b, out, fan_in);
        let bias = p.masters[layer.p.b].slice(..);
        let relu_here = !layer.last;
        // The GEMM (+ bias, + ReLU when nothing else follows it).
        if let Some(bufs) = &mut layer.fp8 {
            let dst = match &mut layer.z {
                Some(z) => Fp8Out::Z(z.slice_mut(..n)),
                None if relu_here => Fp8Out::Relu(layer.out_buf.h(n)),
                None => Fp8Out::Plain(layer.out_buf.h(n)),
            };
            gpu_fp8::forward(
                gpu,
                fp8_run(fp8)?,
                bufs,
                input.h(),
                &p.masters[layer.p.w],
                &bias,
                (b, out, fan_in),
                record,
                dst,
            )?;
        } else {
            match (&mut layer.z, layer.half) {
                (Some(z), true) => gemm(
                    gpu,
                    shape,
                    input.h(),
                    &p.halves[layer.p.w],
                    &Epilogue::bias(&bias, false),
                    &mut z.slice_mut(..n),
                )?,
                (Some(z), false) => f32_blas(blas)?.gemm_f32(
                    gpu,
                    shape,
                    input.f(),
                    &p.masters[layer.p.w],
                    Some(&bias),
                    0.0,
                    &mut z.slice_mut(..n),
                )?,
                (None, true) => gemm(
                    gpu,
                    shape,
                    input.h(),
                    &p.halves[layer.p.w],
                    &Epilogue::bias(&bias, relu_here),
                    &mut layer.out_buf.h(n),
                )?,
                (None, false) => f32_blas(blas)?.gemm_f32(
                    gpu,
                    shape,
                    input.f(),
                    &p.masters[layer.p.w],
                    Some(&bias),
                    0.0,
                    &mut layer.out_buf.f(n),
                )?,
            }
        }
        // LayerNorm and/or ReLU on the f32 GEMM output.
        if let Some(z) = &layer.z {
            let z = z.slice(..n);
            match (&mut layer.ln, layer.p.ln) {
                (Some((y, mean, rstd)), Some((g, be))) => {
                    layernorm::forward(
                        gpu,
                        &z,
                        b,
                        out,
                        &p.masters[g],
                        &p.masters[be],
                        LAYERNORM_EPS,
                        &mut y.slice_mut(..n),
                        &mut mean.slice_mut(..b),
                        &mut rstd.slice_mut(..b),
                    )?;
                    relu::forward(gpu, &y.slice(..n), &mut layer.out_buf.f(n))?;
                }
                _ => relu::forward(gpu, &z, &mut layer.out_buf.f(n))?,
            }
        }
    }
    Ok(())
}

/// Backward pass over `b` samples from the dlogits in the last layer's `dz`; writes every
/// (scaled) weight and bias gradient into `grads` (and LayerNorm's γ/β gradients). After the
/// fused [`head`] (`after_head`), what it computed is skipped: the last layer's bias and data
/// gradients (and its weight gradient where the head computed it), and the hidden layer's ReLU
/// backward and bias gradient. With `check_wgrad`, the weight-gradient GEMMs of the FP8 and
/// half layers check what they write (see [`grad_sources`]).
#[allow(clippy::too_many_arguments)] // the passes' shared state
pub(crate) fn backward<H: TrainHalf>(
    gpu: &Gpu,
    blas: &mut Option<Blas>,
    layers: &mut [Layer<H>],
    p: &Params<'_, H>,
    grads: &mut [DeviceBuffer<f32>],
    x: &View<'_, H>,
    b: usize,
    after_head: bool,
    fp8: &mut Option<Fp8Run>,
    check_wgrad: bool,
) -> Result<()> {
    let top = layers.len();
    for layer in layers.iter_mut() {
        layer.wgrad_checked = false;
    }
    for l in (0..top).rev() {
        // Done by the head: this layer's bias gradient (and, for the last, its dgrad; for the
        // hidden layer below, its ReLU backward).
        let head_did = after_head && l + 2 >= top;
        let (before, rest) = layers.split_at_mut(l);
        let layer = &mut rest[0];
        if head_did && layer.last && layer.wgrad_by_head {
            // The head did all of the last layer's backward (its weight gradient waits in
            // `wgrad_partials` when `wgrad_splits` > 1).
            continue;
        }
        let (fan_in, out, n) = (layer.fan_in, layer.out, b * layer.out);
        // An FP8 layer's ReLU backward runs inside its gradient's cast (with the bias gradient).
        let mut relu_in_cast = false;
        if !layer.last && !head_did {
            // The gradient of the output, in the output's dtype.
            let out_half = layer.out_half();
            let grad_in = layer.grad_in.as_ref().expect("hidden layers have one");
            let g = if let Some(conv) = &mut layer.grad_conv {
                convert(gpu, &grad_in.view(n), conv, n)?;
                conv.view(n)
            } else {
                grad_in.view(n)
            };
            debug_assert_eq!(g.is_half(), out_half);
            match (&mut layer.ln, layer.p.ln) {
                (Some((_, mean, rstd)), Some((gi, bi))) => {
                    let tmp = layer.tmp.as_mut().expect("LayerNorm layers have one");
                    relu::backward(
                        gpu,
                        g.f(),
                        &layer.out_buf.view(n).f().slice(..),
                        &mut tmp.slice_mut(..n),
                    )?;
                    let z = layer
                        .z
                        .as_ref()
                        .expect("LayerNorm layers have one")
                        .slice(..n);
                    let [dg, db] = disjoint_mut(grads, [gi, bi]);
                    let dz = layer.dz.as_mut().expect("LayerNorm layers have one");
                    let mut dx32 = match (&mut layer.dz32, &mut *dz) {
                        (Some(d), _) => d.slice_mut(..n),
                        (None, Buf::F(d)) => d.slice_mut(..n),
                        (None, Buf::H(_)) => unreachable!("a half LayerNorm layer has dz32"),
                    };
                    layernorm::backward(
                        gpu,
                        &tmp.slice(..n),
                        &z,
                        &mean.slice(..b),
                        &rstd.slice(..b),
                        &p.masters[gi],
                        b,
                        out,
                        &mut dx32,
                        dg,
                        db,
                    )?;
                    if let Some(d32) = &layer.dz32 {
                        H::narrow(gpu, &d32.slice(..n), &mut dz.h(n))?;
                    }
                }
                _ if layer.fp8.is_some() && g.is_half() => relu_in_cast = true,
                _ => match (&g, layer.dz.as_mut().expect("built with the layer's ReLU")) {
                    (View::H(g), Buf::H(dz)) => relu::backward(
                        gpu,
                        g,
                        &layer.out_buf.view(n).h().slice(..),
                        &mut dz.slice_mut(..n),
                    )?,
                    (View::F(g), Buf::F(dz)) => relu::backward(
                        gpu,
                        g,
                        &layer.out_buf.view(n).f().slice(..),
                        &mut dz.slice_mut(..n),
                    )?,
                    _ => unreachable!("a layer without LayerNorm emits its own dtype"),
                },
            }
        }
        let (prev_out, prev_grad) = match before.last_mut() {
            Some(prev) => (
                Some(&prev.out_buf),
                prev.grad_in.as_mut().filter(|_| !(head_did && layer.last)),
            ),
            None => (None, None),
        };
        let input = match (&layer.input, prev_out) {
            (Some(buf), _) => buf.view(b * fan_in),
            (None, Some(out)) => out.view(b * fan_in),
            (None, None) => match x {
                View::H(v) => View::H(v.slice(..b * fan_in)),
                View::F(v) => View::F(v.slice(..b * fan_in)),
            },
        };
        let wshape = GemmShape::new(Layout::Wgrad, out, fan_in, b);
        let dshape = GemmShape::new(Layout::Dgrad, b, fan_in, out);
        let [gw, gb] = disjoint_mut(grads, [layer.p.w, layer.p.b]);
        // The previous layer receives dX in this layer's dtype.
        if let Some(bufs) = layer.fp8.as_mut() {
            let dx = prev_grad.map(|pg| pg.h(b * fan_in));
            let src = if relu_in_cast {
                let g = match (&layer.grad_conv, &layer.grad_in) {
                    (Some(conv), _) => conv.view(n),
                    (None, Some(grad_in)) => grad_in.view(n),
                    (None, None) => unreachable!("hidden layers have one"),
                };
                Fp8Grad::Relu {
                    grad: g.into_h(),
                    relu_out: layer.out_buf.view(n).into_h(),
                }
            } else {
                let dz = layer
                    .dz
                    .as_ref()
                    .expect("only relu_in_cast layers lack one");
                Fp8Grad::Plain(dz.view(n).into_h())
            };
            // The bias gradient's tile sums wait in `bufs` for finish_bias_grads, below.
            let dbias = !head_did;
            let dims = (b, out, fan_in);
            let flag = check_wgrad.then_some(&mut layer.wgrad_nonfinite);
            gpu_fp8::backward(gpu, fp8_run(fp8)?, bufs, src, dims, (gw, flag), dbias, dx)?;
            layer.wgrad_splits = 1;
            layer.wgrad_checked = check_wgrad;
            continue;
        }
        let dz = layer.dz.as_ref().expect("only FP8 layers may lack one");
        match dz.view(n) {
            View::H(dz) => {
                let flag = check_wgrad.then_some(&mut layer.wgrad_nonfinite);
                layer.wgrad_splits = match (&mut layer.wgrad_partials, flag) {
                    (Some(partials), flag) => {
                        gemm_deferred(gpu, wshape, &dz, input.h(), gw, partials, flag)?
                    }
                    (None, Some(flag)) => {
                        gemm_checked(gpu, wshape, &dz, input.h(), &Epilogue::plain(), gw, flag)?;
                        1
                    }
                    (None, None) => {
                        gemm(gpu, wshape, &dz, input.h(), &Epilogue::plain(), gw)?;
                        1
                    }
                };
                layer.wgrad_checked = check_wgrad && layer.wgrad_splits == 1;
                if !head_did {
                    bias_grad(gpu, &dz, b, out, gb)?;
                }
                if let Some(pg) = prev_grad {
                    gemm(
                        gpu,
                        dshape,
                        &dz,
                        &p.halves[layer.p.w],
                        &Epilogue::plain(),
                        &mut pg.h(b * fan_in),
                    )?;
                }
            }
            View::F(dz) => {
                f32_blas(blas)?.gemm_f32(gpu, wshape, &dz, input.f(), None, 0.0, gw)?;
                bias_grad(gpu, &dz, b, out, gb)?;
                if let Some(pg) = prev_grad {
                    f32_blas(blas)?.gemm_f32(
                        gpu,
                        dshape,
                        &dz,
                        &p.masters[layer.p.w],
                        None,
                        0.0,
                        &mut pg.f(b * fan_in),
                    )?;
                }
            }
        }
    }
    // Every FP8 layer's bias gradient from its cast's tile sums, in one launch: one short,
    // latency-bound pass each would cost a launch of its own.
    let mut bias_grads: Vec<Option<&mut DeviceBuffer<f32>>> = grads.iter_mut().map(Some).collect();
    let pending = layers
        .iter_mut()
        .filter_map(|layer| {
            let db = bias_grads.get_mut(layer.p.b)?.take()?;
            Some((layer.fp8.as_mut()?, db))
        })
        .collect();
    gpu_fp8::finish_bias_grads(gpu, pending)?;
    Ok(())
}

/// The FP8 state of a model with FP8 layers (the backend creates one when it has some).
fn fp8_run(run: &mut Option<Fp8Run>) -> Result<&mut Fp8Run> {
    run.as_mut().ok_or_else(|| crate::Error::InvalidArgument {
        op: "train::GpuBackend",
        detail: "an FP8 layer without its scaling state".into(),
    })
}

/// The cuBLAS handle of the f32 layers: the backend creates one only for a model that has some.
fn f32_blas(blas: &mut Option<Blas>) -> Result<&mut Blas> {
    blas.as_mut().ok_or_else(|| crate::Error::InvalidArgument {
        op: "train::GpuBackend",
        detail: "an f32 layer without a cuBLAS handle (the backend creates one when the model \
                 has f32 layers)"
            .into(),
    })
}

/// For each parameter tensor, where the step's unscale finds its gradient after the last
/// backward: in the K-split slices it waits in, checked already by the GEMM that wrote it (a
/// backward with `check_wgrad`), or whole.
pub(crate) fn grad_sources<H: TrainHalf>(
    layers: &mut [Layer<H>],
    tensors: usize,
) -> Vec<GradSource<'_>> {
    let mut out: Vec<GradSource<'_>> = (0..tensors).map(|_| GradSource::Whole).collect();
    for layer in layers {
        let w = layer.p.w;
        match (&layer.wgrad_partials, layer.wgrad_splits) {
            (Some(p), splits) if splits > 1 => out[w] = GradSource::Partials(p.slice(..), splits),
            _ if layer.wgrad_checked => {
                out[w] = GradSource::Checked(layer.wgrad_nonfinite.slice_mut(..));
            }
            _ => {}
        }
    }
    out
}

/// Distinct elements of a slice, mutably, in the order of `at` (the indices must differ and lie
/// within the slice: parameter tensor indices of one model).
fn disjoint_mut<T, const N: usize>(v: &mut [T], at: [usize; N]) -> [&mut T; N] {
    let mut out: [Option<&mut T>; N] = [(); N].map(|_| None);
    for (i, x) in v.iter_mut().enumerate() {
        if let Some(k) = at.iter().position(|&j| j == i) {
            out[k] = Some(x);
        }
    }
    out.map(|o| o.expect("distinct parameter tensors"))
}
