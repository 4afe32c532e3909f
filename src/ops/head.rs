//! The classifier head of an f16 MLP's training step in one launch (`kernels/head.cu`): the last
//! linear layer (at most 16 classes), softmax-cross-entropy at the loss scale, both bias
//! gradients, the last layer's weight and data gradients and the hidden layer's ReLU backward.
//! The CPU twin is [`crate::cpu::head`], the unfused ops' references composed.
//!
//! The training step uses it where the model allows ([`fits`]): it replaces seven launches (the
//! narrow forward GEMM, the loss, the K = classes dgrad GEMM, the N = classes weight-gradient
//! GEMM, the ReLU backward and two bias gradients) that together took most of a small model's
//! step. The weight gradient comes as [`weight_slices`] f32 slices for the unscale to add (one:
//! the gradient itself).

use crate::cuda::{DeviceBuffer, Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::ops::rows::{check_aligned, kernel_dims};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use half::f16;

const OP: &str = "ops::head::head_step";
/// Warps per block (`WARPS` in the kernel); a warp takes 16 rows at a time.
const WARPS: usize = 8;
/// Classes padded to two mma n-tiles.
const CLASSES_MAX: usize = 16;
/// The widest hidden layer: 4 column blocks of 32 for each of the 8 warps (wider would need
/// another instance and more registers).
const WIDTH_MAX: usize = 1024;

/// Whether the head kernel serves a last layer of `classes` outputs over a hidden layer of
/// `width` units.
pub(crate) fn fits(width: usize, classes: usize) -> bool {
    (1..=CLASSES_MAX).contains(&classes) && width % 32 == 0 && (32..=WIDTH_MAX).contains(&width)
}

/// The head's inputs: the hidden layer's f16 output `[rows, width]` (after its ReLU), the last
/// layer's f16 weights `[classes, width]` and f32 bias, the labels, and the loss scale (one f32).
pub(crate) struct HeadInputs<'a> {
    pub hidden: CudaView<'a, f16>,
    pub weight: CudaView<'a, f16>,
    pub bias: CudaView<'a, f32>,
    pub labels: CudaView<'a, u32>,
    pub grad_scale: &'a DeviceBuffer<f32>,
}

/// The head's outputs: f16 logits and dlogits `[rows, classes]`, the hidden layer's f16 GEMM-output
/// gradient `[rows, width]` (ReLU applied), the f32 bias gradients of the hidden and last layers,
/// the last layer's f32 weight gradient as [`weight_slices`] slices of `[classes, width]` (their
/// sum in slice order is the gradient) where the head computes it (`None` otherwise), and the
/// mean loss (one f32). All overwritten.
pub(crate) struct HeadOutputs<'a> {
    pub logits: CudaViewMut<'a, f16>,
    pub dlogits: CudaViewMut<'a, f16>,
    pub dhidden: CudaViewMut<'a, f16>,
    pub dbias_hidden: CudaViewMut<'a, f32>,
    pub dbias: CudaViewMut<'a, f32>,
    pub dweight: Option<CudaViewMut<'a, f32>>,
    pub loss: &'a mut DeviceBuffer<f32>,
}

/// Blocks per first-level group of the partial sums (`GROUP` in the kernel).
const GROUP: usize = 16;

/// Blocks of one launch over `rows` rows: one per 16-row tile, up to two per SM.
fn grid_blocks(gpu: &Gpu, rows: usize) -> usize {
    rows.div_ceil(16)
        .min(2 * gpu.info().multiprocessors.max(1))
        .max(1)
}

/// The most 16-row tiles whose weight-gradient slices the head leaves to the unscale.
const WEIGHT_SLICES_MAX: usize = 16;

/// Whether a launch over `rows` rows also computes the last layer's weight gradient, and in how
/// many f32 slices (one per block and 16-row tile; their sum in slice order is the gradient): up
/// to 16 tiles (256 rows), each in a block of its own. Beyond, the weight-gradient GEMM is faster
/// than adding the blocks' slices (`docs/kernels/head.md`, v4).
pub(crate) fn weight_slices(gpu: &Gpu, rows: usize) -> Option<usize> {
    let tiles = rows.div_ceil(16);
    (tiles <= WEIGHT_SLICES_MAX && grid_blocks(gpu, rows) == tiles).then_some(tiles)
}

/// The f32 copies of an `out × fan_in` f16 layer's weight gradient that a training step of at
/// most `batch` rows leaves for the unscale to add (the trainer's slice buffers are sized by it):
/// the GEMM planner's K-splits ([`crate::ops::gemm::wgrad_splits`]) or, for a `last` layer the
/// head serves, the head's [`weight_slices`] at any batch up to `batch`, if more (the step may
/// run fused or not).
pub(crate) fn step_weight_slices(
    gpu: &Gpu,
    out: usize,
    fan_in: usize,
    batch: usize,
    last: bool,
) -> usize {
    let gemm = crate::ops::gemm::wgrad_splits(gpu, out, fan_in, batch);
    // Any batch up to `batch` may come (an epoch's last one is shorter), and the head leaves the
    // most slices at the largest batch it serves: min(batch, 256) rows.
    let head_rows = batch.min(16 * WEIGHT_SLICES_MAX);
    match weight_slices(gpu, head_rows) {
        Some(head) if last && fits(fan_in, out) => gemm.max(head),
        _ => gemm,
    }
}

/// The instance for `width`: column blocks of 32 per warp (1, 2 or 4).
fn instance(width: usize) -> &'static str {
    match (width / 32).div_ceil(WARPS) {
        0 | 1 => "mlp_head_f16_j1",
        2 => "mlp_head_f16_j2",
        _ => "mlp_head_f16_j4",
    }
}

/// One launch of the head over `rows` samples (see the module docs and `kernels/head.cu`). An
/// out-of-range label makes its row's loss and gradients NaN, as in
/// [`crate::ops::cross_entropy::softmax_cross_entropy`].
///
/// Returns the weight gradient's slices in `outputs.dweight` ([`weight_slices`]; 0 where the head
/// leaves the weight gradient to the GEMM).
///
/// Errors, before any launch: [`Error::InvalidArgument`] unless [`fits`] and the hidden
/// activations, their gradient and the weight gradient are 16-byte aligned;
/// [`Error::ShapeMismatch`] when a buffer's length disagrees with `rows`, `width` and `classes`.
pub(crate) fn head_step(
    gpu: &Gpu,
    rows: usize,
    width: usize,
    classes: usize,
    inputs: &HeadInputs<'_>,
    outputs: &mut HeadOutputs<'_>,
) -> Result<usize> {
    if !fits(width, classes) {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: format!(
                "the fused head takes 1..={CLASSES_MAX} classes over a hidden width that is a \
                 multiple of 32 up to {WIDTH_MAX}, got {classes} classes over {width}"
            ),
        });
    }
    let (ri, wi) = kernel_dims(OP, rows, width)?;
    let slices = weight_slices(gpu, rows).unwrap_or(0);
    let want = [
        ("hidden", inputs.hidden.len(), rows * width),
        ("weight", inputs.weight.len(), classes * width),
        ("bias", inputs.bias.len(), classes),
        ("labels", inputs.labels.len(), rows),
        ("grad_scale", inputs.grad_scale.len(), 1),
        ("logits", outputs.logits.len(), rows * classes),
        ("dlogits", outputs.dlogits.len(), rows * classes),
        ("dhidden", outputs.dhidden.len(), rows * width),
        ("dbias_hidden", outputs.dbias_hidden.len(), width),
        ("dbias", outputs.dbias.len(), classes),
        (
            "dweight",
            outputs.dweight.as_ref().map_or(0, |d| d.len()),
            slices * classes * width,
        ),
        ("loss", outputs.loss.len(), 1),
    ];
    if let Some((name, got, need)) = want.iter().find(|(_, got, need)| got != need) {
        return Err(Error::ShapeMismatch {
            op: OP,
            detail: format!(
                "{name} has {got} elements, {need} expected for {rows} rows, width {width}, \
                 {classes} classes"
            ),
        });
    }
    let stream = gpu.stream();
    let (hp, _g1) = inputs.hidden.device_ptr(stream);
    let (wp, _g2) = inputs.weight.device_ptr(stream);
    let (bp, _g3) = inputs.bias.device_ptr(stream);
    let (lp, _g4) = inputs.labels.device_ptr(stream);
    let (sp, _g5) = inputs.grad_scale.device_ptr(stream);
    let (xp, _g6) = outputs.logits.device_ptr_mut(stream);
    let (dp, _g7) = outputs.dlogits.device_ptr_mut(stream);
    let (zp, _g8) = outputs.dhidden.device_ptr_mut(stream);
    let (hbp, _g9) = outputs.dbias_hidden.device_ptr_mut(stream);
    let (obp, _g10) = outputs.dbias.device_ptr_mut(stream);
    let (op, _g11) = outputs.loss.device_ptr_mut(stream);
    let (dwp, _g12) = match &mut outputs.dweight {
        Some(d) => {
            let (p, g) = d.device_ptr_mut(stream);
            (p, Some(g))
        }
        None => (0, None),
    };
    check_aligned(
        OP,
        &[
            ("hidden (16-byte rows)", hp, 16),
            ("dhidden (16-byte rows)", zp, 16),
            ("weight (16-byte rows)", wp, 16),
            ("bias", bp, 4),
            ("labels", lp, 4),
            ("grad_scale", sp, 4),
            ("logits", xp, 2),
            ("dlogits", dp, 2),
            ("dbias_hidden", hbp, 4),
            ("dbias", obp, 4),
            ("dweight (16-byte rows)", dwp, 16),
            ("loss", op, 4),
        ],
    )?;
    // A block per 16-row tile (its 8 warps split the width), up to two per SM; blocks loop over
    // tiles beyond that.
    let blocks = grid_blocks(gpu, rows);
    let groups = blocks.div_ceil(GROUP);
    let partial_rows = blocks + groups;
    // One f32 row of width + 16 per block and per group, then one f64 loss partial for each.
    let row_bytes = partial_rows * (width + CLASSES_MAX) * 4;
    let scratch = row_bytes + partial_rows * 8;
    let ci = classes as i32; // ≤ 16 (fits)
    gpu.with_scratch(scratch, |rows_p| {
        gpu.with_counters((groups + 1) * 4, |counters| {
            let loss_p = rows_p + row_bytes as u64; // a multiple of 8 bytes in
            let mut args = KernelArgs::new();
            args.push(hp).push(wp).push(bp).push(lp).push(sp);
            args.push(ri).push(wi).push(ci);
            args.push(xp)
                .push(dp)
                .push(zp)
                .push(hbp)
                .push(obp)
                .push(dwp);
            args.push(rows_p).push(loss_p).push(counters).push(op);
            let cfg = LaunchConfig::linear(blocks as u32, (WARPS * 32) as u32);
            // SAFETY: mlp_head_f16_j{1,2,4}(const __half* h, const __half* w, const float* bias,
            // const unsigned* labels, const float* grad_scale, int rows, int hidden, int classes,
            // __half* logits, __half* dlogits, __half* dz, float* dbias_hidden, float* dbias,
            // float* dw, float* rows_p, double* loss_p, unsigned* counters, float* loss) matches
            // the arguments in order and type. Every buffer's length was checked against rows,
            // width and classes above (dw: null, or a classes × width slice per block); h, dz,
            // dw and w are 16-byte aligned and width is a multiple of 32 within the instance's
            // 32·8·JW, so every 16-byte access is aligned and inside (w's rows ≥ classes are
            // never read); the scratch holds blocks + groups rows of width + 16 f32 (16-byte
            // aligned: the buffer is, and width + 16 is a multiple of 4) and as many f64 after
            // them; the counters (groups + 1 u32) are zero between launches and the kernel
            // leaves them zero; a label ≥ classes is never used as an index.
            unsafe { gpu.launch(&kernels::HEAD, instance(width), cfg, &args) }
        })
    })?;
    Ok(slices)
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
