//! Multi-tensor gradient unscale with an inf/NaN check on the CPU; the reference for the fused
//! GPU kernel and PyTorch's `torch._amp_foreach_non_finite_check_and_unscale_`.
//!
//! # Semantics (the GPU twin matches them bit for bit)
//!
//! - The multiplier is [`inv_scale`]`(scale)`: the f64 reciprocal of the f32 scale, rounded once
//!   to f32 (`_scale.double().reciprocal().float()` in `GradScaler.unscale_`). For f32 inputs this
//!   equals the correctly rounded f32 division `1.0f32 / scale`; `inv_scale(0.0) = +inf`,
//!   `inv_scale(±inf) = ±0.0`, and a scale below ~2.9e-39 gives `+inf`.
//! - Per element, in f32: `found_inf |= !v.is_finite()` on the *input* value, then
//!   `v = if inv == 1.0 { v } else { v * inv }`. The product is one IEEE multiply, rounded to
//!   nearest even, with subnormal inputs and results kept (no flush to zero: nvcc's default
//!   without `--use_fast_math`). PyTorch multiplies by the reciprocal and never divides, so the
//!   result is `round(v · inv)`, not `round(v / scale)`: the two differ when `scale` is not a
//!   power of two.
//! - `inv == 1.0` returns the input untouched, so NaN payloads, signalling NaNs and `-0.0` pass
//!   through bit for bit (this is the "check only" call). Otherwise a NaN input gives *a* NaN:
//!   its payload is the hardware's (x86 keeps the quieted input payload, CUDA returns the
//!   canonical `0x7FFF_FFFF`), so parity tests compare NaN as NaN, not by bits.
//! - A non-finite `inv` is not rejected (PyTorch does not check it either): `0 · inf = NaN`.
//! - Every element is written back, even after an inf was seen: the kernel never exits early
//!   and never synchronises, and downstream code relies on the whole gradient being defined.
//! - `found_inf` is an OR over every element of every tensor; it does not depend on the order
//!   of the work, so the result is the same for any thread count. The GPU's racy store of 1.0
//!   from every finder gives the same flag. The caller owns the flag's reset: each call here
//!   starts from `false` and returns the result, and the caller ORs it into its running flag.
//! - [`unscale_f16_to_f32`] is apex's `multi_tensor_scale` with f16 model gradients and f32
//!   master gradients: `v = f32(h)` (exact), then the same rule; the check looks at `f32(h)`,
//!   which is non-finite exactly when `h` is.
//! - Empty lists and empty tensors are accepted and contribute nothing.

use crate::amp::NonFinite;
use crate::error::Result;
use crate::validate;
use half::f16;
use rayon::prelude::*;

/// Below this many elements the work stays on the calling thread (rayon's split costs more).
/// The same threshold as [`crate::cpu::cast`].
const PARALLEL_MIN: usize = 1 << 15;

/// Elements per rayon task inside one large tensor; a multiple of 4 so vectorised loops stay
/// whole. The split changes nothing in the results (every element is independent).
const CHUNK: usize = 1 << 14;

/// The unscale multiplier for `scale`: `f32(1.0f64 / f64(scale))`, as `GradScaler.unscale_`
/// computes it.
pub fn inv_scale(scale: f32) -> f32 {
    (1.0f64 / f64::from(scale)) as f32
}

/// Unscales every gradient in place and reports whether any input element was inf or NaN.
///
/// Each element becomes `v` if `inv_scale == 1.0`, else `v * inv_scale` (f32); the return value
/// is `true` exactly when some element was non-finite *before* the multiply. Every element is
/// written, whatever is found. See the module doc for the exact rules.
pub fn unscale_and_check(grads: &mut [&mut [f32]], inv_scale: f32) -> bool {
    !unscale_and_locate(grads, inv_scale).is_empty()
}

/// [`unscale_and_check`] that also says which tensors held an inf or NaN (by position in
/// `grads`): the reference of the GPU's per-tensor flags
/// ([`crate::ops::unscale::unscale_and_locate`]). Empty exactly when `unscale_and_check` would
/// return `false`; the gradients are written the same.
pub fn unscale_and_locate(grads: &mut [&mut [f32]], inv_scale: f32) -> NonFinite {
    let total: usize = grads.iter().map(|g| g.len()).sum();
    let flags: Vec<bool> = if total < PARALLEL_MIN {
        grads
            .iter_mut()
            .map(|g| unscale_slice(g, inv_scale))
            .collect()
    } else {
        grads
            .par_iter_mut()
            .map(|g| unscale_tensor(g, inv_scale))
            .collect()
    };
    NonFinite::from_flags(flags)
}

/// Widens f16 gradients to f32, unscales them into `dst` and reports whether any input element
/// was inf or NaN, in one pass.
///
/// `dst[t][i] = f32(src[t][i])`, times `inv_scale` unless it is exactly 1.0. Every element of
/// every `dst` tensor is written. The tensor count and each tensor's length must agree
/// ([`Error::ShapeMismatch`] otherwise, before anything is written).
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn unscale_f16_to_f32(src: &[&[f16]], dst: &mut [&mut [f32]], inv_scale: f32) -> Result<bool> {
    validate::unscale::pairs(
        "cpu::unscale::unscale_f16_to_f32",
        src.iter().map(|s| s.len()),
        dst.iter().map(|d| d.len()),
    )?;
    let total: usize = src.iter().map(|s| s.len()).sum();
    let found = if total < PARALLEL_MIN {
        src.iter()
            .zip(dst.iter_mut())
            .fold(false, |found, (s, d)| widen_slice(s, d, inv_scale) | found)
    } else {
        src.par_iter()
            .zip(dst.par_iter_mut())
            .map(|(s, d)| widen_tensor(s, d, inv_scale))
            .reduce(|| false, |a, b| a | b)
    };
    Ok(found)
}

/// One tensor, split into rayon tasks when it is large.
fn unscale_tensor(g: &mut [f32], inv: f32) -> bool {
    if g.len() < PARALLEL_MIN {
        unscale_slice(g, inv)
    } else {
        g.par_chunks_mut(CHUNK)
            .map(|c| unscale_slice(c, inv))
            .reduce(|| false, |a, b| a | b)
    }
}

fn widen_tensor(s: &[f16], d: &mut [f32], inv: f32) -> bool {
    if s.len() < PARALLEL_MIN {
        widen_slice(s, d, inv)
    } else {
        s.par_chunks(CHUNK)
            .zip(d.par_chunks_mut(CHUNK))
            .map(|(s, d)| widen_slice(s, d, inv))
            .reduce(|| false, |a, b| a | b)
    }
}

/// The serial kernel. The `inv == 1` test is hoisted out of the loop (it is per call, not per
/// element), and the flag is accumulated without branches so the loop vectorises.
fn unscale_slice(g: &mut [f32], inv: f32) -> bool {
    let mut nonfinite = false;
    if inv == 1.0 {
        for v in g.iter() {
            nonfinite |= !v.is_finite();
        }
    } else {
        for v in g.iter_mut() {
            nonfinite |= !v.is_finite();
            *v *= inv;
        }
    }
    nonfinite
}

fn widen_slice(s: &[f16], d: &mut [f32], inv: f32) -> bool {
    let mut nonfinite = false;
    if inv == 1.0 {
        for (d, s) in d.iter_mut().zip(s) {
            let v = s.to_f32();
            nonfinite |= !v.is_finite();
            *d = v;
        }
    } else {
        for (d, s) in d.iter_mut().zip(s) {
            let v = s.to_f32();
            nonfinite |= !v.is_finite();
            *d = v * inv;
        }
    }
    nonfinite
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reciprocal_of_powers_of_two_is_exact() {
        assert_eq!(inv_scale(65536.0), 1.0 / 65536.0);
        assert_eq!(inv_scale(0.5), 2.0);
        assert_eq!(inv_scale(0.0), f32::INFINITY);
    }

    #[test]
    fn locates_the_tensors_that_overflowed() {
        // Small lists take the serial path, a list past PARALLEL_MIN the rayon one.
        for big in [1usize, PARALLEL_MIN] {
            let mut g: Vec<Vec<f32>> = (0..70).map(|t| vec![t as f32; big + t % 3]).collect();
            g[1][0] = f32::NAN;
            g[4][big - 1] = f32::NEG_INFINITY;
            g[66][0] = f32::INFINITY;
            let mut views: Vec<&mut [f32]> = g.iter_mut().map(|v| &mut v[..]).collect();
            let got = unscale_and_locate(&mut views, 0.5);
            assert_eq!(got.indices().collect::<Vec<_>>(), [1, 4, 63], "{big}");
            assert_eq!(g[3][0], 1.5, "every tensor is unscaled");
            let mut clean: Vec<Vec<f32>> = vec![vec![2.0; big]; 3];
            let mut views: Vec<&mut [f32]> = clean.iter_mut().map(|v| &mut v[..]).collect();
            assert!(unscale_and_locate(&mut views, 0.5).is_empty());
        }
    }

    #[test]
    fn flags_inf_and_still_writes_everything() {
        let mut a = [1.0f32, f32::INFINITY, 4.0];
        let mut b = [8.0f32];
        let found = unscale_and_check(&mut [&mut a, &mut b], 0.25);
        assert!(found);
        assert_eq!(a, [0.25, f32::INFINITY, 1.0]);
        assert_eq!(b, [2.0]);
    }
}
