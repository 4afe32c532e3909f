//! FP8 (E4M3, E5M2) quantize and dequantize on the CPU, reference for [`crate::ops::fp8`]; and
//! the delayed-scaling recipe's per-tensor state ([`ScalingState`]: amax history, scale update).
//!
//! The conversion is the `float8` crate's, a port of `cuda_fp8.hpp`: round to nearest even with
//! saturation to the largest finite value (E4M3 ±448, E5M2 ±57344, infinities included), f32
//! subnormals to ±0, FP8 subnormals produced. A NaN becomes 0x7F, `cuda_fp8.hpp`'s canonical NaN
//! (which drops the sign); dequantizing an FP8 NaN gives the f32 NaN 0x7FFFFFFF.
//!
//! ```
//! use ampkit::cpu::fp8::{quantize, dequantize, Fp8Format};
//! let mut q = [0u8; 3];
//! // amax is taken before the scale: 1000; 1000·0.5 = 500 saturates to 448.
//! let amax = quantize(Fp8Format::E4M3, &[1.0, -1000.0, 0.3], 0.5, &mut q)?;
//! assert_eq!(amax, 1000.0);
//! let mut y = [0f32; 3];
//! dequantize(Fp8Format::E4M3, &q, 2.0, &mut y)?;
//! assert_eq!(y, [1.0, -896.0, 0.3125]); // 0.15 rounds to 0.15625 in E4M3
//! # Ok::<(), ampkit::Error>(())
//! ```

use crate::error::{same_len, Result};
use float8::{F8E4M3, F8E5M2};
use rayon::prelude::*;

/// The two FP8 formats of the H100's tensor cores (OCP FP8): E4M3 (4 exponent bits, 3 mantissa
/// bits, max 448, no infinities) for forward tensors, E5M2 (max 57344) for gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp8Format {
    /// 4 exponent bits, 3 mantissa bits: ±448, 2^-9 the smallest subnormal.
    E4M3,
    /// 5 exponent bits, 2 mantissa bits: ±57344, 2^-16 the smallest subnormal.
    E5M2,
}

impl Fp8Format {
    /// The largest finite value.
    pub fn max(self) -> f32 {
        match self {
            Fp8Format::E4M3 => 448.0,
            Fp8Format::E5M2 => 57344.0,
        }
    }

    /// `x` rounded to this format (nearest even, saturating), as its bit pattern.
    pub fn encode(self, x: f32) -> u8 {
        if x.is_nan() {
            return 0x7F;
        }
        match self {
            Fp8Format::E4M3 => F8E4M3::from_f32(x).to_bits(),
            Fp8Format::E5M2 => F8E5M2::from_f32(x).to_bits(),
        }
    }

    /// The value of the bit pattern `bits` (exact; NaN as 0x7FFFFFFF).
    pub fn decode(self, bits: u8) -> f32 {
        let v = match self {
            Fp8Format::E4M3 => F8E4M3::from_bits(bits).to_f32(),
            Fp8Format::E5M2 => F8E5M2::from_bits(bits).to_f32(),
        };
        if v.is_nan() {
            f32::from_bits(0x7FFF_FFFF)
        } else {
            v
        }
    }
}

/// `q[i] = fp8(x[i]·scale)` (one f32 multiply, then [`Fp8Format::encode`]); returns
/// `max |x[i]|` before scaling (0 for an empty `x`; a NaN's magnitude when `x` holds one: the
/// largest bit pattern, as the GPU's atomic max on the bits finds it). Errors:
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) unless the lengths agree.
pub fn quantize(format: Fp8Format, x: &[f32], scale: f32, q: &mut [u8]) -> Result<f32> {
    same_len("cpu::fp8::quantize", x.len(), q.len())?;
    q.par_iter_mut()
        .zip(x.par_iter())
        .for_each(|(o, &v)| *o = format.encode(v * scale));
    let bits = x
        .par_iter()
        .map(|v| v.to_bits() & 0x7FFF_FFFF)
        .max()
        .unwrap_or(0);
    Ok(f32::from_bits(bits))
}

/// `y[i] = f32(q[i])·scale_inv` ([`Fp8Format::decode`], then one f32 multiply; NaN stays
/// 0x7FFFFFFF). Errors: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) unless the lengths
/// agree.
pub fn dequantize(format: Fp8Format, q: &[u8], scale_inv: f32, y: &mut [f32]) -> Result<()> {
    same_len("cpu::fp8::dequantize", q.len(), y.len())?;
    y.par_iter_mut().zip(q.par_iter()).for_each(|(o, &b)| {
        let v = format.decode(b);
        *o = if v.is_nan() { v } else { v * scale_inv };
    });
    Ok(())
}

/// How the recipe reduces an amax history to the amax a scale is computed from (Transformer
/// Engine's `amax_compute_algo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AmaxAlgo {
    /// The largest amax in the window (NaN entries ignored, as `fmaxf` does). TE's default.
    #[default]
    Max,
    /// The amax of the step that just ran.
    MostRecent,
}

/// Delayed scaling's per-tensor state: an amax history and the scale derived from it.
///
/// `history[0]` collects the current step's amax (the casts fold theirs in with a max, as
/// [`quantize`] returns it); [`ScalingState::update`] then computes the next scale and rolls the
/// window, exactly as Transformer Engine's `amax_and_scale_update` kernel does:
/// - the amax used is the max over the whole history, the entry about to leave included
///   ([`AmaxAlgo::Max`], NaN entries ignored), or `history[0]` ([`AmaxAlgo::MostRecent`]);
/// - `scale = fp8_max · 2^-margin / amax` if that amax is finite and positive, else the scale is
///   kept (an overflowing or all-zero tensor never drives it to 0 or inf);
/// - the history becomes `[0, h[2], …, h[len-1], h[0]]`: the oldest entry (`h[1]`) leaves, this
///   step's moves to the end, and slot 0 is cleared for the next step.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingState {
    /// The amax window; `history[0]` is the step in progress.
    pub history: Vec<f32>,
    /// The scale the next casts multiply by (1 before the first update).
    pub scale: f32,
}

impl ScalingState {
    /// A fresh state: `len` zero amaxes (at least one) and scale 1.
    pub fn new(len: usize) -> ScalingState {
        ScalingState {
            history: vec![0.0; len.max(1)],
            scale: 1.0,
        }
    }

    /// Folds a cast's amax into this step's slot (a max; NaN wins, as the GPU's atomic max on
    /// the bits makes it).
    pub fn record(&mut self, amax: f32) {
        let slot = &mut self.history[0];
        if amax.is_nan() || amax > *slot {
            *slot = amax;
        }
    }

    /// The scale update and history roll described on [`ScalingState`]; returns the new scale.
    pub fn update(&mut self, format: Fp8Format, algo: AmaxAlgo, margin: f32) -> f32 {
        let h = &mut self.history;
        let amax = match algo {
            AmaxAlgo::Max => h.iter().fold(0f32, |m, &a| m.max(a)),
            AmaxAlgo::MostRecent => h[0],
        };
        let scaled_max = format.max() * 2f32.powf(-margin);
        if amax.is_finite() && amax > 0.0 {
            self.scale = scaled_max / amax;
        }
        if h.len() > 1 {
            let newest = h[0];
            h.rotate_left(1); // [h1, h2, …, h_last, h0]
            h[0] = 0.0; // drops h1, the oldest
            let last = h.len() - 1;
            h[last] = newest;
        } else {
            h[0] = 0.0;
        }
        self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formats_saturate_round_to_even_and_keep_subnormals() {
        let (e4, e5) = (Fp8Format::E4M3, Fp8Format::E5M2);
        assert_eq!(e4.encode(448.0), 0x7E);
        assert_eq!(e4.encode(1e9), 0x7E);
        assert_eq!(e4.encode(f32::INFINITY), 0x7E);
        assert_eq!(e4.encode(f32::NEG_INFINITY), 0xFE);
        assert_eq!(e5.encode(1e9), 0x7B);
        assert_eq!(e5.decode(0x7B), 57344.0);
        assert_eq!(e4.encode(f32::NAN), 0x7F);
        assert_eq!(e4.encode(-f32::NAN), 0x7F);
        // 1.0625 is halfway between 1 and 1.125 (E4M3): even mantissa wins, 1.0.
        assert_eq!(e4.decode(e4.encode(1.0625)), 1.0);
        assert_eq!(e4.decode(e4.encode(1.1875)), 1.25);
        // Smallest subnormals: 2^-9 (E4M3), 2^-16 (E5M2); half of it rounds to even (0).
        assert_eq!(e4.decode(1), 2f32.powi(-9));
        assert_eq!(e5.decode(1), 2f32.powi(-16));
        assert_eq!(e4.encode(2f32.powi(-10)), 0);
        assert_eq!(e4.decode(0x7F).to_bits(), 0x7FFF_FFFF);
        for b in 0..=255u8 {
            for f in [e4, e5] {
                // E5M2's infinities saturate to the largest finite value on the way back.
                let v = f.decode(b);
                if v.is_finite() {
                    assert_eq!(f.encode(v), b, "{f:?} {b:#x} round trip");
                }
            }
        }
    }

    #[test]
    fn quantize_reports_the_amax_before_scaling() {
        let mut q = [0u8; 4];
        let amax = quantize(Fp8Format::E5M2, &[0.5, -3.0, 2.0, 0.0], 100.0, &mut q).unwrap();
        assert_eq!(amax, 3.0);
        let nan = quantize(Fp8Format::E5M2, &[0.5, f32::NAN, 2.0, 0.0], 1.0, &mut q).unwrap();
        assert!(nan.is_nan());
        assert!(quantize(Fp8Format::E4M3, &[1.0], 1.0, &mut [0u8; 2]).is_err());
    }

    #[test]
    fn delayed_scaling_follows_the_window_and_keeps_the_scale_on_bad_amaxes() {
        let f = Fp8Format::E4M3;
        let mut s = ScalingState::new(3);
        // No amax yet: the scale stays 1.
        assert_eq!(s.update(f, AmaxAlgo::Max, 0.0), 1.0);
        s.record(2.0);
        s.record(4.0);
        s.record(1.0);
        assert_eq!(s.update(f, AmaxAlgo::Max, 0.0), 448.0 / 4.0);
        assert_eq!(s.history, [0.0, 0.0, 4.0]);
        s.record(1.0);
        assert_eq!(
            s.update(f, AmaxAlgo::Max, 1.0),
            224.0 / 4.0,
            "margin 1 halves it"
        );
        assert_eq!(s.history, [0.0, 4.0, 1.0]);
        s.record(0.5);
        s.update(f, AmaxAlgo::Max, 0.0);
        // The oldest amax (4) still counts in the update that drops it, as in TE's kernel.
        assert_eq!(s.scale, 112.0);
        assert_eq!(
            s.history,
            [0.0, 1.0, 0.5],
            "the oldest amax (4) left the window"
        );
        s.record(8.0);
        assert_eq!(s.update(f, AmaxAlgo::MostRecent, 0.0), 56.0);
        // An infinite amax keeps the scale while it is in the window; a NaN one is ignored by
        // Max and keeps the scale under MostRecent.
        s.record(f32::INFINITY);
        assert_eq!(s.update(f, AmaxAlgo::Max, 0.0), 56.0);
        s.record(f32::NAN);
        assert_eq!(s.update(f, AmaxAlgo::MostRecent, 0.0), 56.0);
        let mut one = ScalingState::new(1);
        one.record(7.0);
        assert_eq!(
            one.update(Fp8Format::E5M2, AmaxAlgo::Max, 0.0),
            57344.0 / 7.0
        );
        assert_eq!(one.history, [0.0]);
    }
}
