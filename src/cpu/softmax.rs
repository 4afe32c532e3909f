//! Softmax over the last dimension and fused softmax-cross-entropy on the CPU; reference for the
//! GPU softmax and loss kernels.
//!
//! Layout: row-major `[rows, cols]` (`[rows, classes]` for the loss), the reduction over each row.
//!
//! # Softmax ([`forward`], [`backward`])
//!
//! Generic over the float type `T` (f32 in training, f64 as the gradient-check reference). For
//! each row, `m = max_j xⱼ`, `eⱼ = exp(xⱼ − m)` in `T`, `s = Σⱼ eⱼ` summed left to right in f64
//! (each `eⱼ` widened exactly) and rounded once to `T`, `yⱼ = eⱼ / s` in `T` (a division, not a
//! multiply by `1/s`). Subtracting the row max keeps `exp` from overflowing at any finite logit.
//!
//! The f64 sum keeps the f32 instantiation's error per element and independent of `cols`: to first
//! order ≤ (|xⱼ − m| + w + 6)·2⁻²⁴ relative, w the y-weighted mean of |x − m| (the rounding of
//! `xⱼ − m`, which `exp` turns into a relative error; `exp`; the terms' errors averaged by the
//! sum; the sum's rounding and the division), measured ≤ 6.2e-7 for logits spread over ±6. A
//! left-to-right f32 sum erred by 8e-5 relative at 65 536 columns instead. The f64 instantiation
//! is plain f64 arithmetic, the reference the GPU kernels are measured against.
//!
//! Non-finite inputs, matching PyTorch's `softmax`:
//! - `−inf` entries in a row with at least one finite entry give exactly `0` (masking).
//! - A row of all `−inf` gives NaN everywhere (`m = −inf`, so `xⱼ − m = −inf + inf = NaN`).
//! - A NaN or `+inf` anywhere in a row makes the whole row NaN. The max skips NaN (like CUDA's
//!   `fmaxf`); the NaN then enters through `exp` and the sum.
//!
//! The backward is `dxⱼ = yⱼ · (dyⱼ − Σₖ dyₖ · yₖ)`, from the saved output `y`: the dot product
//! summed left to right in f64 from the exact f64 products and rounded once to `T`, the rest in
//! `T`.
//!
//! # Fused softmax-cross-entropy ([`softmax_cross_entropy`])
//!
//! For logits `x` of type `L` (f16, f32 or f64) and integer labels, per row
//! `lossᵣ = (m − x_label) + ln Σⱼ exp(xⱼ − m)` (that is `logsumexp(x) − x_label`, arranged so a
//! label at the max loses nothing to cancellation). The function returns `(Σᵣ lossᵣ) / rows`, the
//! row losses added in row order (the same bits for any thread count), and writes
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
//! label makes the loss `+inf`; a row of all `−inf` is NaN, as in [`forward`].
//!
//! # Accepted arguments
//!
//! `cols ≥ 1` for softmax (`rows = 0` is an empty batch); `rows ≥ 1` and `classes ≥ 1` for the
//! loss (the mean over zero rows is undefined). Each label must be `< classes`. Everything is
//! checked before any output is written: a wrong slice length is [`Error::ShapeMismatch`], a bad
//! size or label [`Error::InvalidArgument`].

use crate::cpu::{narrow, wide, Element};
use crate::error::{expect_len, matrix_len, Error, Result};
use num_traits::Float;
use rayon::prelude::*;

/// Below this many elements the work stays on the calling thread (rayon's split costs more).
const PARALLEL_MIN: usize = 1 << 15;

/// Softmax of each row of `x` (`[rows, cols]`, row-major) into `y`.
///
/// Semantics, including non-finite inputs, accepted arguments and errors are in the
/// [module docs](self).
pub fn forward<T: Float + Send + Sync>(
    x: &[T],
    rows: usize,
    cols: usize,
    y: &mut [T],
) -> Result<()> {
    const OP: &str = "cpu::softmax::forward";
    let len = matrix_len(OP, rows, cols, "cols")?;
    let by_rows = format!("rows·cols = {rows}·{cols} = {len}");
    expect_len(OP, "x", x.len(), len, &by_rows)?;
    expect_len(OP, "y", y.len(), len, &by_rows)?;

    let row = |(y, x): (&mut [T], &[T])| {
        let m = row_max(x.iter().copied(), T::neg_infinity());
        let mut s = 0.0f64;
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - m).exp();
            s += wide(*y);
        }
        let s: T = narrow(s);
        for y in y.iter_mut() {
            *y = *y / s;
        }
    };
    if len < PARALLEL_MIN {
        y.chunks_mut(cols).zip(x.chunks(cols)).for_each(row);
    } else {
        y.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(row);
    }
    Ok(())
}

/// Gradient of [`forward`]: `dxⱼ = yⱼ · (dyⱼ − Σₖ dyₖ · yₖ)` per row, from the softmax output `y`
/// and the upstream gradient `dy` (all `[rows, cols]`).
///
/// Accepted arguments and errors are in the [module docs](self).
pub fn backward<T: Float + Send + Sync>(
    y: &[T],
    dy: &[T],
    rows: usize,
    cols: usize,
    dx: &mut [T],
) -> Result<()> {
    const OP: &str = "cpu::softmax::backward";
    let len = matrix_len(OP, rows, cols, "cols")?;
    let by_rows = format!("rows·cols = {rows}·{cols} = {len}");
    expect_len(OP, "y", y.len(), len, &by_rows)?;
    expect_len(OP, "dy", dy.len(), len, &by_rows)?;
    expect_len(OP, "dx", dx.len(), len, &by_rows)?;

    let row = |((dx, y), dy): ((&mut [T], &[T]), &[T])| {
        let dot = y
            .iter()
            .zip(dy)
            .fold(0.0, |s, (&y, &d)| s + wide(y) * wide(d));
        let dot: T = narrow(dot);
        for ((dx, &y), &d) in dx.iter_mut().zip(y).zip(dy) {
            *dx = y * (d - dot);
        }
    };
    if len < PARALLEL_MIN {
        dx.chunks_mut(cols)
            .zip(y.chunks(cols))
            .zip(dy.chunks(cols))
            .for_each(row);
    } else {
        dx.par_chunks_mut(cols)
            .zip(y.par_chunks(cols))
            .zip(dy.par_chunks(cols))
            .for_each(row);
    }
    Ok(())
}

/// Fused softmax + cross-entropy: returns the mean over rows of `logsumexp(xᵣ) − xᵣ[labelᵣ]` and
/// writes `dlogits = (softmax(x) − onehot(label)) / rows · grad_scale`, rounded once to `D`.
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
) -> Result<f64> {
    const OP: &str = "cpu::softmax::softmax_cross_entropy";
    if rows == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: "rows is 0; the loss is a mean over rows and needs rows ≥ 1".into(),
        });
    }
    let len = matrix_len(OP, rows, classes, "classes")?;
    let by_rows = format!("rows·classes = {rows}·{classes} = {len}");
    expect_len(OP, "logits", logits.len(), len, &by_rows)?;
    expect_len(OP, "dlogits", dlogits.len(), len, &by_rows)?;
    expect_len(OP, "labels", labels.len(), rows, "rows")?;
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
    Ok(losses.iter().sum::<f64>() / rows as f64)
}

/// The largest value, skipping NaN (like CUDA's `fmaxf`); `init` for an empty row.
fn row_max<T: PartialOrd + Copy>(values: impl Iterator<Item = T>, init: T) -> T {
    values.fold(init, |m, v| if v > m { v } else { m })
}
