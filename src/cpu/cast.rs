//! f32 ↔ f16 and f32 ↔ bf16 conversion and fill on the CPU; reference for [`crate::ops::cast`].
//!
//! Conversions are the `half` crate's: f32 → f16 rounds to nearest even (overflow → ±inf,
//! subnormal results rounded, NaN → sign | 0x7E00 | top payload bits); f16 → f32 is exact
//! (NaN → sign | 0x7FC00000 | payload << 13). f32 → bf16 rounds to nearest even (overflow → ±inf,
//! subnormals kept, NaN → its top 16 bits with the quiet bit 0x0040 set); bf16 → f32 is exact
//! (NaN gets the quiet bit).
//!
//! ```
//! use ampkit::{cpu::cast, f16};
//! let mut h = [f16::ZERO; 4];
//! cast::f32_to_f16(&[1.0, 65504.0, 65520.0, 1e-8], &mut h)?;
//! // 65520 is the tie between f16::MAX and the next power of two: it rounds to even, i.e. inf;
//! // 1e-8 is below half the smallest subnormal: +0.
//! assert_eq!(h, [f16::ONE, f16::MAX, f16::INFINITY, f16::ZERO]);
//! # Ok::<(), ampkit::Error>(())
//! ```

use crate::error::{same_len, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// Below this many elements the work stays on the calling thread (rayon's split costs more).
const PARALLEL_MIN: usize = 1 << 15;

/// `dst[i] = f16(src[i])`, round to nearest even. Errors: [`Error::ShapeMismatch`] unless the
/// lengths agree (nothing is written then).
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) -> Result<()> {
    same_len("cpu::cast::f32_to_f16", src.len(), dst.len())?;
    map(src, dst, f16::from_f32);
    Ok(())
}

/// `dst[i] = f32(src[i])`, exact. Errors: [`Error::ShapeMismatch`] unless the lengths agree
/// (nothing is written then).
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) -> Result<()> {
    same_len("cpu::cast::f16_to_f32", src.len(), dst.len())?;
    map(src, dst, f16::to_f32);
    Ok(())
}

/// `dst[i] = bf16(src[i])`, round to nearest even. Errors: [`Error::ShapeMismatch`] unless the
/// lengths agree (nothing is written then).
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) -> Result<()> {
    same_len("cpu::cast::f32_to_bf16", src.len(), dst.len())?;
    map(src, dst, bf16::from_f32);
    Ok(())
}

/// `dst[i] = f32(src[i])`, exact. Errors: [`Error::ShapeMismatch`] unless the lengths agree
/// (nothing is written then).
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) -> Result<()> {
    same_len("cpu::cast::bf16_to_f32", src.len(), dst.len())?;
    map(src, dst, bf16::to_f32);
    Ok(())
}

/// Sets every element of `dst` to `value`.
pub fn fill<T: Copy + Send + Sync>(dst: &mut [T], value: T) {
    if dst.len() < PARALLEL_MIN {
        dst.fill(value);
    } else {
        dst.par_iter_mut().for_each(|d| *d = value);
    }
}

fn map<S: Copy + Sync, D: Send>(src: &[S], dst: &mut [D], f: impl Fn(S) -> D + Sync) {
    if src.len() < PARALLEL_MIN {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f(s));
    } else {
        dst.par_iter_mut()
            .zip(src.par_iter())
            .for_each(|(d, &s)| *d = f(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn rounds_to_nearest_even_and_saturates_to_inf() {
        let src = [
            1.0f32 + f32::EPSILON,
            65504.0,
            65519.99,
            65520.0,
            -1e9,
            1e-8,
            5.9604645e-8,
        ];
        let mut dst = [f16::ZERO; 7];
        f32_to_f16(&src, &mut dst).unwrap();
        let bits: Vec<u16> = dst.iter().map(|h| h.to_bits()).collect();
        // 1 + 2^-23 rounds to 1.0; 65519.99 still rounds down to 65504; 65520 ties to even → inf;
        // 1e-8 is under half the smallest subnormal → +0; 2^-24 is the smallest subnormal.
        assert_eq!(
            bits,
            [0x3C00, 0x7BFF, 0x7BFF, 0x7C00, 0xFC00, 0x0000, 0x0001]
        );
    }

    #[test]
    fn nan_keeps_sign_and_payload_quietly() {
        let src = [f32::from_bits(0xFF80_2000), f32::from_bits(0x7FC0_0000)];
        let mut dst = [f16::ZERO; 2];
        f32_to_f16(&src, &mut dst).unwrap();
        assert_eq!([dst[0].to_bits(), dst[1].to_bits()], [0xFE01, 0x7E00]);
        let mut back = [0f32; 2];
        f16_to_f32(&dst, &mut back).unwrap();
        assert_eq!(
            [back[0].to_bits(), back[1].to_bits()],
            [0xFFC0_2000, 0x7FC0_0000]
        );
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let e = f32_to_f16(&[1.0; 3], &mut [f16::ZERO; 2]).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    }
}
