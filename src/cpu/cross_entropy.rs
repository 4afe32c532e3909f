//! Fused softmax-cross-entropy on the CPU; reference for the GPU loss kernels
//! ([`crate::ops::cross_entropy`]).
//!
//! Layout: `logits` and `dlogits` are row-major `[rows, classes]`, `labels` has one entry per row.
//!
//! For logits `x` of type `L` (f16, bf16, f32 or f64) and integer labels, per row
//! `lossᵣ = (m − x_label) + ln Σⱼ exp(xⱼ − m)` (that is `logsumexp(x) − x_label`, arranged so a
//! label at the max loses nothing to cancellation). The function returns `(Σᵣ lossᵣ) / rows`, the
//! row losses added in row order (the same bits for any thread count) and rounded once to
//! `D::Acc` (f32 for f16, bf16 and f32 gradients, the type the GPU writes its loss in; f64 for f64
//! gradients, the reference the GPU tests compare with), and writes
//! `dlogitsⱼ = (softmax(x)ⱼ − [j = label]) · (grad_scale / rows)`, rounded once to `D` by
//! [`Element::from_f64`].
//!
//! This reference computes everything in f64 from the exactly widened logits, so its only
//! rounding that matters is the final one to `D`; the GPU kernel computes in f32 and is compared
//! with it to a tolerance. `grad_scale` is where AMP's loss scale enters: it multiplies the
//! gradient only, never the returned loss. It is applied as given, not validated: a device-side
//! loss scale cannot be checked by the host either, and a scale that is non-finite or overflows
//! `D` (f16 tops out at 65504) yields inf/NaN gradients, which is what the scaler's inf check
//! exists to catch.
//!
//! Non-finite logits propagate rather than being masked or clamped: a NaN or `+inf` logit makes
//! its row's loss and every gradient in that row NaN, and so the mean loss; a `−inf` logit at the
//! label makes the loss `+inf`; a row of all `−inf` is NaN, as in [`crate::cpu::softmax::forward`].
//!
//! # Accepted arguments
//!
//! `rows ≥ 1` and `classes ≥ 1` (the mean over zero rows is undefined). Each label must be
//! `< classes`. Everything is checked before any output is written: a wrong slice length is
//! [`Error::ShapeMismatch`], a bad size or label [`Error::InvalidArgument`].

use crate::cpu::softmax::row_max;
use crate::cpu::Element;
use crate::error::{Error, Result};
use crate::validate;
use rayon::prelude::*;

/// Below this many elements the work stays on the calling thread (rayon's split costs more).
const PARALLEL_MIN: usize = 1 << 15;

/// Fused softmax + cross-entropy: returns the mean over rows of `logsumexp(xᵣ) − xᵣ[labelᵣ]`
/// (as `D::Acc`: f32 like the GPU's loss for f16/f32 gradients, f64 for f64 ones) and writes
/// `dlogits = (softmax(x) − onehot(label)) / rows · grad_scale`, rounded once to `D`.
///
/// `logits` and `dlogits` are `[rows, classes]`, `labels` has `rows` entries. Computed in f64 (the
/// GPU kernel computes in f32 and is checked against this). `grad_scale` scales the gradient
/// only, never the returned loss. A label `≥ classes` is [`Error::InvalidArgument`] naming the row
/// and the label, reported before `dlogits` is touched. Semantics, including non-finite logits,
/// are in the [module docs](self).
pub fn softmax_cross_entropy<L: Element, D: Element>(
    logits: &[L],
    labels: &[u32],
    rows: usize,
    classes: usize,
    grad_scale: f32,
    dlogits: &mut [D],
) -> Result<D::Acc> {
    const OP: &str = "cpu::cross_entropy::softmax_cross_entropy";
    let lens = [logits.len(), dlogits.len(), labels.len()];
    let len = validate::cross_entropy::check(OP, rows, classes, lens)?;
    if let Some(row) = labels.iter().position(|&l| l as usize >= classes) {
        let label = labels[row];
        return Err(Error::InvalidArgument {
            op: OP,
            detail: format!("row {row} has label {label}; labels must be < classes = {classes}"),
        });
    }

    // One f64 factor, so each gradient is rounded exactly once, on the way to `D`.
    let scale = f64::from(grad_scale) / rows as f64;
    let row = |((d, x), &label): ((&mut [D], &[L]), &u32)| -> f64 {
        let m = row_max(x.iter().map(|v| v.to_f64()), f64::NEG_INFINITY);
        let s: f64 = x.iter().map(|v| (v.to_f64() - m).exp()).sum();
        let label = label as usize;
        for (j, (d, v)) in d.iter_mut().zip(x).enumerate() {
            let p = (v.to_f64() - m).exp() / s;
            let g = if j == label { p - 1.0 } else { p };
            *d = D::from_f64(g * scale);
        }
        (m - x[label].to_f64()) + s.ln()
    };
    // Per-row losses come back in row order and are summed sequentially: the same bits for any
    // thread count.
    let losses: Vec<f64> = if len < PARALLEL_MIN {
        dlogits
            .chunks_mut(classes)
            .zip(logits.chunks(classes))
            .zip(labels)
            .map(row)
            .collect()
    } else {
        dlogits
            .par_chunks_mut(classes)
            .zip(logits.par_chunks(classes))
            .zip(labels.par_iter())
            .map(row)
            .collect()
    };
    Ok(D::acc_from_f64(losses.iter().sum::<f64>() / rows as f64))
}
