//! LayerNorm over the last dimension on the CPU; reference for the GPU layernorm kernels.
//!
//! Layout: `x`, `y`, `dy`, `dx` are row-major `[rows, cols]`; `gamma`, `beta`, `dgamma`, `dbeta`
//! hold `cols` elements; `mean` and `rstd` hold one value per row. Every function is generic over
//! the float type `T` (f32 in training, f64 as the gradient-check reference). Sums accumulate in
//! f64 and are rounded to `T` once (see [Summation order](#summation-order)); everything else is
//! arithmetic in `T`. For `T = f64` that is all arithmetic in `T`.
//!
//! # Forward (PyTorch `nn.LayerNorm(cols, eps)` with an affine transform)
//!
//! For each row, with `n = cols`:
//! - `mean = (Σⱼ xⱼ) / n`, the sum and the division in f64, rounded once to `T`
//! - `var  = (Σⱼ (xⱼ − mean)²) / n` — biased, and two-pass (the deviations are taken from the
//!   mean computed first, the f64 one before its rounding; never `E[x²] − mean²`, which cancels
//!   catastrophically); all in f64, rounded once to `T`
//! - `rstd = 1 / sqrt(var + eps)` in `T`
//! - `yⱼ = ((xⱼ − mean) · rstd) · gammaⱼ + betaⱼ` in `T` from the rounded `mean` and `rstd`,
//!   evaluated in that order, no fused multiply-add
//!
//! `mean` and `rstd` are saved for the backward pass. A constant row has `var = 0`, so `y = beta`
//! exactly (up to the sign of zero). A variance beyond `T`'s range rounds to `+inf`, which gives
//! `rstd = 0` and `y = beta`; only the finished variance is rounded, so squares that would
//! overflow `T` one by one while their mean fits give a finite variance. Non-finite inputs
//! propagate: a NaN or ±inf in a row makes that row's `mean`/`rstd` non-finite and every `y` of
//! the row NaN; nothing is clamped.
//!
//! # Backward
//!
//! With `x̂ⱼ = (xⱼ − mean) · rstd` recomputed in `T` from the saved statistics and
//! `gⱼ = dyⱼ · gammaⱼ`:
//! - `dxⱼ = rstd · (gⱼ − mean(g) − x̂ⱼ · mean(g · x̂))` in `T`, the means taken over the row in
//!   f64 (from the f64 products of the `T` values `dyⱼ`, `gammaⱼ`, `x̂ⱼ`) and each rounded once to
//!   `T`
//! - `dgammaⱼ = Σ_rows dyⱼ · x̂ⱼ` and `dbetaⱼ = Σ_rows dyⱼ`, summed in f64 (the products too) and
//!   rounded once to `T`
//!
//! `dgamma` and `dbeta` are **overwritten**, not accumulated into: a caller that needs
//! accumulation (gradient accumulation over micro-batches) adds them to its own buffers.
//!
//! # Summation order
//!
//! Every sum accumulates in f64, whatever `T` is: its terms are formed in f64 from the exactly
//! widened `T` values (a product of two f32 values is exact there), and the finished mean or sum
//! is rounded to `T` once. For f32 the sums' own error, ≲ n·2⁻⁵³ of Σ|terms| for n terms, stays
//! far below that one rounding even at 65 536 columns: on the same inputs the f32 `mean` is the
//! f64 instantiation's rounded to f32, its variance likewise, and `rstd` is within 3·2⁻²⁴
//! (relative) of the f64 one. Left-to-right f32 sums erred by up to ~√n·2⁻²⁴ of their partial
//! sums instead: measured 4e-6 to 8e-6 relative for `mean` at 65 536 columns with row means of 2
//! to 6 in magnitude. The f64 instantiation is plain f64 arithmetic, the reference the GPU
//! kernels are measured against.
//!
//! Row sums run left to right. The column sums for `dgamma`/`dbeta` are deterministic: rows
//! are cut into consecutive blocks whose size depends only on `rows` (never on the thread count),
//! each block sums its rows in order, and the block partials are added in block order. A run gives
//! the same bits on 1 thread or 64. A GPU kernel reduces in a different order (in f32), so it
//! matches these results to a tolerance, not bit for bit.
//!
//! # Accepted arguments
//!
//! `cols ≥ 1` (a zero-width row has no mean); `rows = 0` is an empty batch (the backward then
//! writes zeros to `dgamma` and `dbeta`). `eps` must be finite and `> 0`, since `eps = 0` turns a
//! constant row into `0 · inf = NaN`. Every slice length is checked before anything is written:
//! a wrong length is [`Error::ShapeMismatch`], a bad `cols` or `eps` is
//! [`Error::InvalidArgument`].
//!
//! [`Error::InvalidArgument`]: crate::Error::InvalidArgument
//! [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch

use crate::cpu::{narrow, wide};
use crate::error::Result;
use crate::validate;
use num_traits::Float;
use rayon::prelude::*;

/// Below this many elements the work stays on the calling thread (rayon's split costs more).
const PARALLEL_MIN: usize = 1 << 15;

/// Smallest row block for the `dgamma`/`dbeta` partial sums: big enough that a block's work
/// outweighs the cost of its partial buffer.
const MIN_BLOCK_ROWS: usize = 16;

/// Most row blocks: bounds the partial buffers at `2 · cols · MAX_BLOCKS` f64 values however many
/// rows there are, while leaving far more blocks than threads.
const MAX_BLOCKS: usize = 256;

/// Normalises each row of `x` (`[rows, cols]`, row-major) and applies `gamma`/`beta`; saves the
/// row `mean` and `rstd = 1/sqrt(var + eps)` for [`backward`].
///
/// Semantics, accepted arguments and errors are in the [module docs](self).
#[allow(clippy::too_many_arguments)] // mirrors the GPU op's argument list one for one
pub fn forward<T: Float + Send + Sync>(
    x: &[T],
    rows: usize,
    cols: usize,
    gamma: &[T],
    beta: &[T],
    eps: T,
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) -> Result<()> {
    let lens = [
        x.len(),
        y.len(),
        gamma.len(),
        beta.len(),
        mean.len(),
        rstd.len(),
    ];
    let len = validate::layernorm::forward("cpu::layernorm::forward", rows, cols, wide(eps), lens)?;
    let n = cols as f64; // the divisor of the row means, exact below 2⁵³

    let row = |((y, x), (m, r)): RowArgs<'_, T>| {
        (*m, *r) = forward_row(x, gamma, beta, eps, n, y);
    };
    if len < PARALLEL_MIN {
        y.chunks_mut(cols)
            .zip(x.chunks(cols))
            .zip(mean.iter_mut().zip(rstd.iter_mut()))
            .for_each(row);
    } else {
        y.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
            .for_each(row);
    }
    Ok(())
}

/// Gradients of [`forward`]: writes `dx` (`[rows, cols]`) and **overwrites** `dgamma` and `dbeta`
/// (`cols` each) with the sums over all rows, from the upstream gradient `dy` and the `mean` and
/// `rstd` that [`forward`] saved for this `x`.
///
/// The `dgamma`/`dbeta` column sums are bitwise reproducible for any thread count. Semantics,
/// accepted arguments and errors are in the [module docs](self).
#[allow(clippy::too_many_arguments)] // mirrors the GPU op's argument list one for one
pub fn backward<T: Float + Send + Sync>(
    dy: &[T],
    x: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    rows: usize,
    cols: usize,
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) -> Result<()> {
    let lens = [
        dy.len(),
        x.len(),
        dx.len(),
        mean.len(),
        rstd.len(),
        gamma.len(),
        dgamma.len(),
        dbeta.len(),
    ];
    let len = validate::layernorm::backward("cpu::layernorm::backward", rows, cols, lens)?;
    let n = cols as f64; // the divisor of the row means, exact below 2⁵³

    // Depends on `rows` alone, so the block partition, and with it every rounding in the column
    // sums, is the same whatever the thread count.
    let block_rows = rows.div_ceil(MAX_BLOCKS).max(MIN_BLOCK_ROWS);
    let block_len = block_rows * cols;
    let block = |(((dx, x), dy), (mean, rstd)): BlockArgs<'_, T>| {
        backward_block(dy, x, mean, rstd, gamma, n, dx)
    };
    let partials: Vec<Vec<f64>> = if len < PARALLEL_MIN {
        dx.chunks_mut(block_len)
            .zip(x.chunks(block_len))
            .zip(dy.chunks(block_len))
            .zip(mean.chunks(block_rows).zip(rstd.chunks(block_rows)))
            .map(block)
            .collect()
    } else {
        // An indexed collect keeps the blocks in order, whichever thread finished first.
        dx.par_chunks_mut(block_len)
            .zip(x.par_chunks(block_len))
            .zip(dy.par_chunks(block_len))
            .zip(mean.par_chunks(block_rows).zip(rstd.par_chunks(block_rows)))
            .map(block)
            .collect()
    };

    // Block partials added in block order, in f64, then rounded once; no rows at all sum to zero.
    let mut blocks = partials.into_iter();
    let mut sums = blocks.next().unwrap_or_else(|| vec![0.0; 2 * cols]);
    for p in blocks {
        for (s, v) in sums.iter_mut().zip(p) {
            *s += v;
        }
    }
    for (d, &s) in dgamma.iter_mut().chain(dbeta.iter_mut()).zip(&sums) {
        *d = narrow(s);
    }
    Ok(())
}

/// One row for [`forward`]: `(y, x), (mean, rstd)`.
type RowArgs<'a, T> = ((&'a mut [T], &'a [T]), (&'a mut T, &'a mut T));

/// One block of rows for [`backward`]: `((dx, x), dy), (mean, rstd)`.
type BlockArgs<'a, T> = (((&'a mut [T], &'a [T]), &'a [T]), (&'a [T], &'a [T]));

/// Normalises one row into `y`; returns `(mean, rstd)`. `n` is `cols` (exact in f64).
fn forward_row<T: Float>(x: &[T], gamma: &[T], beta: &[T], eps: T, n: f64, y: &mut [T]) -> (T, T) {
    // Folds from +0.0 (`Sum` for floats may start from −0.0): the sign of a zero mean is part of
    // the f64 results, which must not change.
    let mean_wide = x.iter().fold(0.0, |s, &v| s + wide(v)) / n;
    let var = x.iter().fold(0.0, |s, &v| {
        let d = wide(v) - mean_wide;
        s + d * d
    }) / n;
    let (mean, var): (T, T) = (narrow(mean_wide), narrow(var));
    let rstd = (var + eps).sqrt().recip();
    for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
        *y = (x - mean) * rstd * g + b;
    }
    (mean, rstd)
}

/// `dx` for a block of rows; returns the block's column sums in f64,
/// `[Σ dy·x̂ (cols), Σ dy (cols)]`, accumulated over its rows in order. `n` is `cols`.
fn backward_block<T: Float>(
    dy: &[T],
    x: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    n: f64,
    dx: &mut [T],
) -> Vec<f64> {
    let cols = gamma.len();
    let mut partial = vec![0.0f64; 2 * cols];
    let (pg, pb) = partial.split_at_mut(cols);
    let rows = dx.chunks_mut(cols).zip(x.chunks(cols)).zip(dy.chunks(cols));
    for (r, ((dx, x), dy)) in rows.enumerate() {
        let (mu, rs) = (mean[r], rstd[r]);
        let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
        for j in 0..cols {
            let xhat = wide((x[j] - mu) * rs);
            let (d, g) = (wide(dy[j]), wide(dy[j]) * wide(gamma[j]));
            sum_g += g;
            sum_gx += g * xhat;
            pg[j] += d * xhat;
            pb[j] += d;
        }
        let (mean_g, mean_gx): (T, T) = (narrow(sum_g / n), narrow(sum_gx / n));
        for j in 0..cols {
            let xhat = (x[j] - mu) * rs;
            dx[j] = rs * (dy[j] * gamma[j] - mean_g - xhat * mean_gx);
        }
    }
    partial
}
