//! The classifier head of an f16 MLP's training step in one launch (`kernels/head.cu`): the last
//! linear layer (at most 16 classes), softmax-cross-entropy at the loss scale, both bias
//! gradients, the last layer's data gradient and the hidden layer's ReLU backward. The CPU twin
//! is [`crate::cpu::head`], the unfused ops' references composed.
//!
//! The training step uses it where the model allows ([`fits`]): it replaces six launches (the
//! narrow forward GEMM, the loss, the K = classes dgrad GEMM, the ReLU backward and two bias
//! gradients) that together took most of a small model's step. The last layer's weight gradient
//! stays a GEMM.

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
/// The widest hidden layer: its weights (twice) and the warps' bias-gradient rows fit the shared
/// memory of every supported GPU (103 KiB at 1024).
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
/// and the mean loss (one f32). All overwritten.
pub(crate) struct HeadOutputs<'a> {
    pub logits: CudaViewMut<'a, f16>,
    pub dlogits: CudaViewMut<'a, f16>,
    pub dhidden: CudaViewMut<'a, f16>,
    pub dbias_hidden: CudaViewMut<'a, f32>,
    pub dbias: CudaViewMut<'a, f32>,
    pub loss: &'a mut DeviceBuffer<f32>,
}

/// The shared memory the kernel asks for at `width`: w (rows padded so that consecutive class
/// rows fall 64 bytes apart in the banks), wᵀ (18 halves per column) and one f32 row per warp.
fn shared_bytes(width: usize) -> usize {
    let ws = width + if (width * 2) % 128 == 0 { 32 } else { 0 };
    CLASSES_MAX * ws * 2 + width * 18 * 2 + WARPS * width * 4
}

/// One launch of the head over `rows` samples (see the module docs and `kernels/head.cu`). An
/// out-of-range label makes its row's loss and gradients NaN, as in
/// [`crate::ops::cross_entropy::softmax_cross_entropy`].
///
/// Errors, before any launch: [`Error::InvalidArgument`] unless [`fits`] and the hidden
/// activations and their gradient are 16-byte aligned; [`Error::ShapeMismatch`] when a buffer's
/// length disagrees with `rows`, `width` and `classes`.
pub(crate) fn head_step(
    gpu: &Gpu,
    rows: usize,
    width: usize,
    classes: usize,
    inputs: &HeadInputs<'_>,
    outputs: &mut HeadOutputs<'_>,
) -> Result<()> {
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
    check_aligned(
        OP,
        &[
            ("hidden (16-byte rows)", hp, 16),
            ("dhidden (16-byte rows)", zp, 16),
            ("weight", wp, 2),
            ("bias", bp, 4),
            ("labels", lp, 4),
            ("grad_scale", sp, 4),
            ("logits", xp, 2),
            ("dlogits", dp, 2),
            ("dbias_hidden", hbp, 4),
            ("dbias", obp, 4),
            ("loss", op, 4),
        ],
    )?;
    let tiles = rows.div_ceil(16);
    let blocks = tiles.div_ceil(WARPS).min(gpu.info().multiprocessors.max(1));
    // The ticket counter (8 bytes), one f64 loss partial per block, then width + 16 f32
    // bias-gradient partials per block.
    let scratch = 8 + blocks * 8 + blocks * (width + CLASSES_MAX) * 4;
    let ci = classes as i32; // ≤ 16 (fits)
    gpu.with_ticket_scratch(scratch, |partial| {
        let mut args = KernelArgs::new();
        args.push(hp).push(wp).push(bp).push(lp).push(sp);
        args.push(ri).push(wi).push(ci);
        args.push(xp).push(dp).push(zp).push(hbp).push(obp);
        args.push(partial).push(op);
        let cfg = LaunchConfig {
            shared_bytes: shared_bytes(width) as u32,
            ..LaunchConfig::linear(blocks as u32, (WARPS * 32) as u32)
        };
        // SAFETY: mlp_head_f16(const __half* h, const __half* w, const float* bias,
        // const unsigned* labels, const float* grad_scale, int rows, int hidden, int classes,
        // __half* logits, __half* dlogits, __half* dz, float* dbias_hidden, float* dbias,
        // double* partial, float* loss) matches the arguments in order and type. Every buffer's
        // length was checked against rows, width and classes above; h and dz are 16-byte aligned
        // and width is a multiple of 32, so every row's 16-byte accesses are aligned and inside;
        // the shared memory requested is what the kernel lays out for this width; the ticket
        // scratch holds the counter (zero between launches), `blocks` f64 partials and
        // blocks·(width + 16) f32 partials; a label ≥ classes is never used as an index.
        unsafe { gpu.launch(&kernels::HEAD, "mlp_head_f16", cfg, &args) }
    })
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
