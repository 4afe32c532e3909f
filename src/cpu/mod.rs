//! CPU reference implementations (rayon). Each module computes exactly the function of its GPU
//! twin in [`crate::ops`] (same name, same argument order); tests compare the two through
//! [`crate::check`], and the CPU backend trains with these when no GPU exists.
//!
//! Functions that matter for gradient checks are generic over [`Element`], so the same code also
//! runs in f64 as the high-precision reference.
//!
//! Reductions: the row and column sums of [`layernorm`] and [`softmax`] (means, variance, sum of
//! exponentials, the backward dot products, `dgamma`/`dbeta`) accumulate in f64 for every element
//! type and are rounded once, so an f32 result is within a few f32 roundings per element of the
//! f64 one at any row length (the kernels' f32 tree sums are measured against the f64 one); the
//! loss ([`cross_entropy`], all in f64) and [`gemm::bias_grad`] sum in f64 too. [`gemm::gemm`] is the exception, on purpose:
//! it accumulates in f32 like the tensor cores, so that the CPU backend trains with the GPU's
//! precision; its accurate reference is [`gemm::gemm_f64`].

pub mod augment;
pub mod cast;
pub mod clip;
pub mod cross_entropy;
pub mod fp8;
pub mod gemm;
pub mod gemm_fp8;
#[cfg(test)]
pub(crate) mod head;
pub mod layernorm;
pub mod optim;
pub mod relu;
pub mod scaler;
pub mod schedule;
pub mod softmax;
pub mod unscale;

use half::{bf16, f16};
use num_traits::Float;

/// A storage type ops read and write: f16, bf16 and f32 in training, f64 for references.
pub trait Element: Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// Widens (or narrows, for f64) to f32; exact for f16, bf16 and f32.
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type, to nearest even.
    fn from_f32(x: f32) -> Self;
    /// Widens to f64; exact.
    fn to_f64(self) -> f64;
    /// Rounds an f64 to this type, to nearest even (once: no double rounding through f32).
    fn from_f64(x: f64) -> Self;
    /// The type a scalar reduced over elements of this type comes back in (the fused loss):
    /// f32 for f16 and f32, as the GPU kernels write it; f64 for the f64 references.
    type Acc: Copy + PartialOrd + std::fmt::Debug + std::fmt::Display + Into<f64>;
    /// Rounds an f64 to [`Element::Acc`], to nearest even.
    fn acc_from_f64(x: f64) -> Self::Acc;
}

impl Element for f16 {
    type Acc = f32;
    fn acc_from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(x: f64) -> Self {
        // half's f16::from_f64 goes through f32 with round-to-nearest twice, which can round a
        // value just above an f16 tie down to the tie and then to even. Rounding to f32 *to odd*
        // first keeps the information a second rounding needs (f32 has 13 more bits than f16).
        f16::from_f32(f32_round_to_odd(x))
    }
}

impl Element for bf16 {
    type Acc = f32;
    fn acc_from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(x: f64) -> Self {
        // One rounding, as for f16: round-to-odd to f32 keeps what the rounding to bf16 needs.
        bf16::from_f32(f32_round_to_odd(x))
    }
}

/// `x` rounded to f32 by round-to-odd: exact values stay, inexact ones take whichever neighbour
/// has an odd significand. A following round-to-nearest to any format at least two bits
/// narrower then equals a single rounding of `x`.
fn f32_round_to_odd(x: f64) -> f32 {
    let r = x as f32;
    if !r.is_finite() || f64::from(r) == x || r.to_bits() & 1 == 1 {
        return r;
    }
    // r is even and inexact: its neighbour on x's side is odd.
    let away_from_zero = f64::from(r).abs() < x.abs();
    f32::from_bits(if away_from_zero {
        r.to_bits() + 1
    } else {
        r.to_bits() - 1
    })
}

impl Element for f32 {
    type Acc = f32;
    fn acc_from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Element for f64 {
    type Acc = f64;
    fn acc_from_f64(x: f64) -> f64 {
        x
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f32(x: f32) -> Self {
        f64::from(x)
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// `v` widened to f64, for the f64 sums of the [`Float`]-generic references (layernorm, softmax):
/// exact for f32 and f64.
fn wide<T: Float>(v: T) -> f64 {
    // Float-to-float conversions always succeed (num-traits casts with `as`).
    v.to_f64().unwrap_or(f64::NAN)
}

/// An f64 rounded to `T` once, to nearest even (overflow to ±inf); the identity for f64.
fn narrow<T: Float>(v: f64) -> T {
    T::from(v).unwrap_or_else(T::nan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_from_f64_rounds_once() {
        // Just above the tie between 1 and 1 + 2^-10: must round up, not to the even 1.
        let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-30);
        assert_eq!(<f16 as Element>::from_f64(x).to_bits(), 0x3C01);
        assert_eq!(<f16 as Element>::from_f64(-x).to_bits(), 0xBC01);
        // An exact tie still goes to even, and exact values are untouched.
        assert_eq!(
            <f16 as Element>::from_f64(1.0 + 2f64.powi(-11)).to_bits(),
            0x3C00
        );
        assert_eq!(<f16 as Element>::from_f64(65504.0).to_bits(), 0x7BFF);
        assert_eq!(<f16 as Element>::from_f64(1e300), f16::INFINITY);
        assert!(<f16 as Element>::from_f64(f64::NAN).is_nan());
        // Below the smallest subnormal's half: +0; just above it: the smallest subnormal.
        assert_eq!(<f16 as Element>::from_f64(2f64.powi(-25)).to_bits(), 0);
        assert_eq!(
            <f16 as Element>::from_f64(2f64.powi(-25) + 2f64.powi(-60)).to_bits(),
            1
        );
    }

    #[test]
    fn f16_from_f64_matches_exact_rounding_on_random_values() {
        // No f16 neighbour of the result may be nearer to x (ties: the result is even). Distances
        // are exact in f64 for these magnitudes. Exponents span f16's subnormals to 1.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x =
                f64::from_bits((state & 0x800F_FFFF_FFFF_FFFF) | (0x3F0u64 + (state >> 60)) << 52);
            let got = <f16 as Element>::from_f64(x);
            let lo = f16::from_f32(x as f32);
            for cand in [
                f16::from_bits(lo.to_bits().wrapping_sub(1)),
                f16::from_bits(lo.to_bits() + 1),
            ] {
                if cand == got {
                    continue;
                }
                let (d_got, d_cand) = ((got.to_f64() - x).abs(), (cand.to_f64() - x).abs());
                assert!(
                    d_got < d_cand || (d_got == d_cand && got.to_bits() & 1 == 0),
                    "{x:e}: got {got:?}, but {cand:?} is nearer"
                );
            }
        }
    }
}
