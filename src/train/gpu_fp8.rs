//! The FP8 layers of `--precision fp8` on the GPU: the twin of [`super::cpu_fp8`] (which states
//! the recipe), built from [`crate::ops::fp8`]'s casts and [`crate::ops::gemm_fp8`].
//!
//! Per FP8 layer and step: the input (bf16) and the f32 master weight are cast to E4M3, each
//! also transposed, with their amaxes folded into the recipe's history in the same pass; the
//! forward GEMM reads the two K-major copies. In backward the output gradient (bf16) is cast the
//! same way; the weight-gradient GEMM reads the two transposes (K = the batch, padded to 16 with
//! zeros), the input-gradient GEMM the gradient and the weight's transpose. One launch after the
//! optimizer updates every scale ([`crate::ops::fp8::update_scales`]). Every buffer is
//! allocated once, so the step stays capturable as a CUDA graph.

use super::cpu_fp8::{fresh_states, GRAD, INPUT, WEIGHT};
use super::half::{ReluIn, TrainHalf};
use crate::amp::Fp8Recipe;
use crate::cpu::fp8::{transpose_ld, Fp8Format, ScalingState};
use crate::cuda::{DeviceBuffer, Gpu};
use crate::error::{Error, Result};
use crate::nn::MlpConfig;
use crate::ops::fp8::{
    bias_grad_finish_many, gather_cast_transpose_with_weights, update_scales, BiasFinish,
    Fp8Scales, WeightCast,
};
use crate::ops::gemm_fp8::{gemm_fp8, gemm_fp8_checked, gemm_fp8_relu_masked, Fp8Operand};
use crate::shape::{GemmShape, Layout};
use cudarc::driver::{CudaView, CudaViewMut};

/// The model's FP8 scaling state on the device, and the recipe.
pub(crate) struct Fp8Run {
    scales: Fp8Scales,
    recipe: Fp8Recipe,
    /// Where evaluations' casts fold their amax: they must not touch the histories.
    scratch_amax: DeviceBuffer<f32>,
}

impl Fp8Run {
    /// The state of `cfg`'s FP8 tensors (fresh: scale 1, zero histories), or `None` for a model
    /// without FP8 layers.
    pub(crate) fn new(gpu: &Gpu, cfg: &MlpConfig) -> Result<Option<Fp8Run>> {
        let states = fresh_states(cfg);
        if states.is_empty() {
            return Ok(None);
        }
        let formats = super::cpu_fp8::formats(&cfg.fp8, states.len());
        Ok(Some(Fp8Run {
            scales: Fp8Scales::new(gpu, &formats, cfg.fp8.history_len)?,
            recipe: cfg.fp8,
            scratch_amax: gpu.alloc_zeros(1)?,
        }))
    }

    /// The step's scale update: every next scale and window roll, one launch.
    pub(crate) fn update(&mut self, gpu: &Gpu) -> Result<()> {
        let margin = self.recipe.margin as f32;
        update_scales(gpu, &mut self.scales, self.recipe.amax_algo, margin)
    }

    /// The states, for a checkpoint (waits for the stream).
    pub(crate) fn download(&self, gpu: &Gpu) -> Result<Vec<ScalingState>> {
        self.scales.download(gpu)
    }

    /// Replaces the states (a resumed run's).
    pub(crate) fn upload(&mut self, gpu: &Gpu, states: &[ScalingState]) -> Result<()> {
        self.scales.upload(gpu, states)
    }
}

/// One FP8 layer's device buffers, for batches of up to the backend's batch.
pub(crate) struct Fp8Bufs {
    /// The layer's first state.
    base: usize,
    /// The input `[b, in]` and its transpose `[in, ld(b)]`.
    xq: DeviceBuffer<u8>,
    xqt: DeviceBuffer<u8>,
    /// The weight `[out, in]` and its transpose `[in, out]`.
    wq: DeviceBuffer<u8>,
    wqt: DeviceBuffer<u8>,
    /// The output gradient `[b, out]` and its transpose `[out, ld(b)]`.
    dq: DeviceBuffer<u8>,
    dqt: DeviceBuffer<u8>,
    /// The ReLU mask of the output (`[b, ⌈out/32⌉]` words), written by a forward with a ReLU and
    /// read by the backward's cast instead of the output.
    relu_mask: DeviceBuffer<u32>,
    /// The rows `relu_mask` holds for the last forward (none: that forward had no ReLU).
    mask_rows: Option<usize>,
    /// The bias gradient's tile sums (`[⌈b/64⌉, out]`) from the backward's cast, which
    /// [`finish_bias_grads`] adds into the bias gradient with the other FP8 layers'.
    dbias_partial: DeviceBuffer<f32>,
    /// The rows the pending tile sums cover (none: nothing to finish).
    pending_dbias: Option<usize>,
    /// `xq` and `xqt` already hold this step's input ([`gather_input`]): the next forward skips
    /// its input cast (and clears this).
    input_ready: bool,
    /// `wq` and `wqt` already hold this step's weight ([`gather_input`]): the next training
    /// forward skips the weight's cast (and clears this).
    weight_ready: bool,
}

/// `rows` rounded up to 16 (the transposes' row pitch), as the casts lay them out.
fn ld(rows: usize) -> Result<usize> {
    transpose_ld(rows).ok_or_else(|| Error::InvalidArgument {
        op: "train::GpuBackend",
        detail: format!("{rows} rows overflow the FP8 transposes' sizes"),
    })
}

impl Fp8Bufs {
    /// The buffers of a `fan_in → out` layer whose first state is `base`.
    pub(crate) fn new(
        gpu: &Gpu,
        base: usize,
        (batch, out, fan_in): (usize, usize, usize),
    ) -> Result<Fp8Bufs> {
        let ldb = ld(batch)?;
        let z = |n: usize| gpu.alloc_zeros::<u8>(n.max(1));
        Ok(Fp8Bufs {
            base,
            xq: z(batch * fan_in)?,
            xqt: z(fan_in * ldb)?,
            wq: z(out * fan_in)?,
            wqt: z(fan_in * out)?,
            dq: z(batch * out)?,
            dqt: z(out * ldb)?,
            relu_mask: gpu.alloc_zeros::<u32>((batch * out.div_ceil(32)).max(1))?,
            mask_rows: None,
            dbias_partial: gpu.alloc_zeros::<f32>((batch.div_ceil(64) * out).max(1))?,
            pending_dbias: None,
            input_ready: false,
            weight_ready: false,
        })
    }
}

/// Where an FP8 layer's forward writes: the f32 GEMM output that LayerNorm reads, or the layer's
/// output after its ReLU.
pub(crate) enum Fp8Out<'a, H: TrainHalf> {
    /// f32, no ReLU.
    Z(CudaViewMut<'a, f32>),
    /// `H`, after the ReLU.
    Relu(CudaViewMut<'a, H>),
    /// `H`, no ReLU (the last layer: the logits).
    Plain(CudaViewMut<'a, H>),
}

/// An FP8 operand of the GEMM.
fn operand<'a>(
    data: &'a CudaView<'a, u8>,
    format: Fp8Format,
    scale_inv: &'a CudaView<'a, f32>,
) -> Fp8Operand<'a> {
    Fp8Operand {
        data,
        format,
        scale_inv,
    }
}

/// The forward of FP8 layer `bufs` over `b` samples of `x` (`[b, fan_in]`): casts of the input
/// and of the master weight `w`, their amaxes recorded when `record` (a training step; an
/// evaluation records nothing), then the GEMM with the bias into `out`.
#[allow(clippy::too_many_arguments)] // one layer's operands and shapes
pub(crate) fn forward<H: TrainHalf>(
    gpu: &Gpu,
    run: &mut Fp8Run,
    bufs: &mut Fp8Bufs,
    x: &CudaView<'_, H>,
    w: &DeviceBuffer<f32>,
    bias: &CudaView<'_, f32>,
    (b, out, fan_in): (usize, usize, usize),
    record: bool,
    dst: Fp8Out<'_, H>,
) -> Result<()> {
    let f = run.recipe.forward_format();
    let ldb = ld(b)?;
    let (ti, tw) = (bufs.base + INPUT, bufs.base + WEIGHT);
    let input_ready = std::mem::take(&mut bufs.input_ready) && record;
    if !input_ready {
        let q = bufs.xq.slice_mut(..b * fan_in);
        let qt = bufs.xqt.slice_mut(..fan_in * ldb);
        let Fp8Run {
            scales,
            scratch_amax,
            ..
        } = &mut *run;
        let spare = (!record).then(|| scratch_amax.slice_mut(..));
        cast(gpu, scales, spare, ti, q, qt, |gpu, scale, q, qt, amax| {
            H::cast_transpose_fp8(gpu, f, x, b, fan_in, scale, q, qt, amax)
        })?;
    }
    let weight_ready = std::mem::take(&mut bufs.weight_ready) && record;
    if !weight_ready {
        let (q, qt) = (bufs.wq.slice_mut(..), bufs.wqt.slice_mut(..));
        let Fp8Run {
            scales,
            scratch_amax,
            ..
        } = &mut *run;
        let spare = (!record).then(|| scratch_amax.slice_mut(..));
        cast(gpu, scales, spare, tw, q, qt, |gpu, scale, q, qt, amax| {
            crate::ops::fp8::cast_transpose(gpu, f, w, out, fan_in, scale, Some(q), qt, amax)
        })?;
    }
    let (sx, sw) = (run.scales.scale_inv(ti)?, run.scales.scale_inv(tw)?);
    let (xq, wq) = (bufs.xq.slice(..b * fan_in), bufs.wq.slice(..));
    let (a, bm) = (operand(&xq, f, &sx), operand(&wq, f, &sw));
    let shape = GemmShape::new(Layout::Forward, b, out, fan_in);
    bufs.mask_rows = None;
    match dst {
        Fp8Out::Z(mut z) => gemm_fp8(gpu, shape, &a, &bm, Some(bias), &mut z),
        Fp8Out::Plain(mut y) => gemm_fp8(gpu, shape, &a, &bm, Some(bias), &mut y),
        Fp8Out::Relu(mut y) => {
            // The ReLU mask beside the output: the backward's cast reads it instead of y.
            let mut mask = bufs.relu_mask.slice_mut(..b * out.div_ceil(32));
            gemm_fp8_relu_masked(gpu, shape, &a, &bm, Some(bias), &mut y, &mut mask)?;
            bufs.mask_rows = Some(b);
            Ok(())
        }
    }
}

/// An FP8 layer as the input stage sees it: its buffers, its f32 master weight and its shape.
pub(crate) struct Fp8Weight<'a> {
    pub(crate) bufs: &'a mut Fp8Bufs,
    pub(crate) w: &'a DeviceBuffer<f32>,
    pub(crate) out: usize,
    pub(crate) fan_in: usize,
}

/// The training step's input stage for a model whose first layer is FP8 (`layers[0]`, then the
/// model's other FP8 layers in order): `b` samples of `src` from the device cursor, their labels
/// into `labels_out`, gathered, rounded to bf16 and cast straight into the first layer's E4M3
/// input and its transpose, the amax recorded
/// ([`crate::ops::fp8::gather_cast_transpose_with_weights`]: what [`forward`] would cast from
/// the bf16 batch, bit for bit, without that batch). Every layer's weight cast rides along in
/// the same launch (it depends only on the masters, which the step's forward does not change),
/// its amax recorded as [`forward`] records it. The next training [`forward`] of each layer
/// uses what is ready as it is.
pub(crate) fn gather_input(
    gpu: &Gpu,
    run: &mut Fp8Run,
    layers: &mut [Fp8Weight<'_>],
    src: &crate::ops::augment::EpochSource<'_>,
    cursor: &DeviceBuffer<u32>,
    labels_out: &mut DeviceBuffer<u32>,
    b: usize,
) -> Result<()> {
    let fan_in = src.inputs;
    let ldb = ld(b)?;
    let Some((first, rest)) = layers.split_first_mut() else {
        return Err(Error::InvalidArgument {
            op: "train::GpuBackend",
            detail: "the FP8 input stage without an FP8 first layer".into(),
        });
    };
    let input = first.bufs.base + INPUT;
    fn weight<'a>(
        base: usize,
        w: &'a DeviceBuffer<f32>,
        (rows, cols): (usize, usize),
        q: CudaViewMut<'a, u8>,
        qt: CudaViewMut<'a, u8>,
    ) -> WeightCast<'a> {
        let (tensor, src) = (base + WEIGHT, w.slice(..));
        WeightCast {
            tensor,
            src,
            rows,
            cols,
            q,
            qt,
        }
    }
    let Fp8Bufs {
        base,
        xq,
        xqt,
        wq,
        wqt,
        ..
    } = &mut *first.bufs;
    let mut weights = Vec::with_capacity(1 + rest.len());
    let shape = (first.out, first.fan_in);
    weights.push(weight(
        *base,
        first.w,
        shape,
        wq.slice_mut(..),
        wqt.slice_mut(..),
    ));
    for l in rest.iter_mut() {
        let (q, qt) = (l.bufs.wq.slice_mut(..), l.bufs.wqt.slice_mut(..));
        weights.push(weight(l.bufs.base, l.w, (l.out, l.fan_in), q, qt));
    }
    gather_cast_transpose_with_weights(
        gpu,
        src,
        cursor,
        b,
        &mut run.scales,
        input,
        &mut xq.slice_mut(..b * fan_in),
        &mut xqt.slice_mut(..fan_in * ldb),
        &mut labels_out.slice_mut(..b),
        &mut weights,
    )?;
    drop(weights);
    first.bufs.input_ready = true;
    for l in layers.iter_mut() {
        l.bufs.weight_ready = true;
    }
    Ok(())
}

/// One cast of state `t` at its scale, its amax folded into its history's current slot or,
/// given `spare`, into that scratch value (evaluations).
fn cast<'q>(
    gpu: &Gpu,
    scales: &mut Fp8Scales,
    spare: Option<CudaViewMut<'_, f32>>,
    t: usize,
    mut q: CudaViewMut<'q, u8>,
    mut qt: CudaViewMut<'q, u8>,
    go: impl FnOnce(
        &Gpu,
        &CudaView<'_, f32>,
        &mut CudaViewMut<'q, u8>,
        &mut CudaViewMut<'q, u8>,
        &mut CudaViewMut<'_, f32>,
    ) -> Result<()>,
) -> Result<()> {
    match spare {
        Some(mut amax) => {
            let scale = scales.scale(t)?;
            go(gpu, &scale, &mut q, &mut qt, &mut amax)
        }
        None => {
            let (scale, mut amax) = scales.scale_and_amax(t)?;
            go(gpu, &scale, &mut q, &mut qt, &mut amax)
        }
    }
}

/// The gradient of an FP8 layer's GEMM output, as its backward receives it.
pub(crate) enum Fp8Grad<'a, H: TrainHalf> {
    /// The gradient itself (`[b, out]`).
    Plain(CudaView<'a, H>),
    /// The gradient of the layer's output after its ReLU, and that output: the backward's cast
    /// applies the ReLU backward on the way ([`crate::ops::fp8::cast_transpose_dbias`]).
    Relu {
        grad: CudaView<'a, H>,
        relu_out: CudaView<'a, H>,
    },
}

/// The backward of FP8 layer `bufs` from `dz` (`[b, out]`, the gradient of its GEMM output):
/// its cast (amax recorded) and, with `dbias`, the bias gradient's tile sums from the
/// unquantised `dz` in the same pass (pending in `bufs` until [`finish_bias_grads`] adds them
/// up); the f32 weight gradient into `dw` (checked into its flag word when one is given:
/// [`gemm_fp8_checked`]) and, with `dx`, the input gradient (`[b, fan_in]`). A
/// [`Fp8Grad::Relu`] gradient needs `dbias` (its ReLU backward is fused only into the cast
/// with the bias gradient).
#[allow(clippy::too_many_arguments)] // one layer's operands and shapes
pub(crate) fn backward<H: TrainHalf>(
    gpu: &Gpu,
    run: &mut Fp8Run,
    bufs: &mut Fp8Bufs,
    dz: Fp8Grad<'_, H>,
    (b, out, fan_in): (usize, usize, usize),
    (dw, nonfinite): (&mut DeviceBuffer<f32>, Option<&mut DeviceBuffer<u32>>),
    dbias: bool,
    dx: Option<CudaViewMut<'_, H>>,
) -> Result<()> {
    let (ff, gf) = (run.recipe.forward_format(), run.recipe.gradient_format());
    let ldb = ld(b)?;
    let (ti, tw, tg) = (bufs.base + INPUT, bufs.base + WEIGHT, bufs.base + GRAD);
    {
        let q = bufs.dq.slice_mut(..b * out);
        let qt = bufs.dqt.slice_mut(..out * ldb);
        // The ReLU backward reads the forward's mask when it wrote one for these rows.
        let mask =
            (bufs.mask_rows == Some(b)).then(|| bufs.relu_mask.slice(..b * out.div_ceil(32)));
        let mut partial = bufs.dbias_partial.slice_mut(..b.div_ceil(64) * out);
        let (grad, relu) = match (&dz, &mask) {
            (Fp8Grad::Plain(g), _) => (g, None),
            (Fp8Grad::Relu { grad, .. }, Some(m)) => (grad, Some(ReluIn::Mask(m))),
            (Fp8Grad::Relu { grad, relu_out }, None) => (grad, Some(ReluIn::Output(relu_out))),
        };
        cast(
            gpu,
            &mut run.scales,
            None,
            tg,
            q,
            qt,
            |gpu, scale, q, qt, amax| match (dbias, relu) {
                (true, relu) => H::cast_transpose_dbias_partial_fp8(
                    gpu,
                    gf,
                    grad,
                    relu,
                    (b, out),
                    scale,
                    q,
                    qt,
                    amax,
                    &mut partial,
                ),
                (false, None) => H::cast_transpose_fp8(gpu, gf, grad, b, out, scale, q, qt, amax),
                (false, Some(_)) => Err(Error::InvalidArgument {
                    op: "train::GpuBackend",
                    detail: "an FP8 layer's ReLU backward without its bias gradient".into(),
                }),
            },
        )?;
    }
    bufs.pending_dbias = dbias.then_some(b);
    let (sx, sw, sg) = (
        run.scales.scale_inv(ti)?,
        run.scales.scale_inv(tw)?,
        run.scales.scale_inv(tg)?,
    );
    // dW [out, in] = dzᵀ·x: the two transposes, K = the padded batch (zeros past b).
    let (dqt, xqt) = (bufs.dqt.slice(..out * ldb), bufs.xqt.slice(..fan_in * ldb));
    let wshape = GemmShape::new(Layout::Forward, out, fan_in, ldb);
    let (dqt, xqt) = (operand(&dqt, gf, &sg), operand(&xqt, ff, &sx));
    match nonfinite {
        Some(flag) => gemm_fp8_checked(gpu, wshape, &dqt, &xqt, None, dw, flag)?,
        None => gemm_fp8(gpu, wshape, &dqt, &xqt, None, dw)?,
    }
    if let Some(mut dx) = dx {
        // dX [b, in] = dz·W: the gradient and the weight's transpose, K = out.
        let (dq, wqt) = (bufs.dq.slice(..b * out), bufs.wqt.slice(..));
        gemm_fp8(
            gpu,
            GemmShape::new(Layout::Forward, b, fan_in, out),
            &operand(&dq, gf, &sg),
            &operand(&wqt, ff, &sw),
            None,
            &mut dx,
        )?;
    }
    Ok(())
}

/// Adds the pending bias-gradient tile sums of the FP8 layers' backwards into their bias
/// gradients, all in one launch per 4 layers ([`bias_grad_finish_many`]): `layers` pairs each
/// layer's buffers with its bias gradient. Layers with nothing pending are skipped; the pending
/// sums are consumed.
pub(crate) fn finish_bias_grads(
    gpu: &Gpu,
    layers: Vec<(&mut Fp8Bufs, &mut DeviceBuffer<f32>)>,
) -> Result<()> {
    let mut jobs = Vec::with_capacity(layers.len());
    for (bufs, db) in layers {
        let Some(rows) = bufs.pending_dbias.take() else {
            continue;
        };
        let len = rows.div_ceil(64) * db.len();
        jobs.push((bufs.dbias_partial.slice(..len), rows, db));
    }
    let mut finish: Vec<BiasFinish<'_>> = jobs
        .iter_mut()
        .map(|(partial, rows, db)| BiasFinish {
            partial: &*partial,
            rows: *rows,
            dbias: &mut **db,
        })
        .collect();
    bias_grad_finish_many(gpu, &mut finish)
}
