//! Softmax over the last dimension on the CPU; reference for the GPU softmax kernels. The fused
//! softmax-cross-entropy is [`crate::cpu::cross_entropy`].
//!
//! Layout: row-major `[rows, cols]`, the reduction over each row.
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
//! # Accepted arguments
//!
//! `cols ≥ 1` (`rows = 0` is an empty batch). Everything is checked before any output is
//! written: a wrong slice length is [`Error::ShapeMismatch`], a bad size
//! [`Error::InvalidArgument`].
//!
//! [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
//! [`Error::InvalidArgument`]: crate::Error::InvalidArgument

use crate::cpu::{narrow, wide};
use crate::error::Result;
use crate::validate;
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
    let len = validate::softmax::forward("cpu::softmax::forward", rows, cols, [x.len(), y.len()])?;

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
    let lens = [y.len(), dy.len(), dx.len()];
    let len = validate::softmax::backward("cpu::softmax::backward", rows, cols, lens)?;

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

/// The largest value, skipping NaN (like CUDA's `fmaxf`); `init` for an empty row. Also the
/// loss's ([`crate::cpu::cross_entropy`]).
pub(crate) fn row_max<T: PartialOrd + Copy>(values: impl Iterator<Item = T>, init: T) -> T {
    values.fold(init, |m, v| if v > m { v } else { m })
}
