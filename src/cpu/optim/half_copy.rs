//! [`HalfCopy`]: the element type of the 16-bit working copy a real optimizer step rewrites from
//! the f32 master weights, f16 (PyTorch AMP's default) or bf16.

use half::{bf16, f16};

pub(crate) mod sealed {
    /// Keeps [`super::HalfCopy`] implemented by `f16` and `bf16` only, and carries the code the
    /// optimizer kernel reads to know which copy it writes (`copy_kind` in `kernels/optim.cu`).
    pub trait Sealed {
        /// `COPY_F16` (0) or `COPY_BF16` (1) in `kernels/optim.cu`.
        const DEVICE_KIND: i32;
    }
}

/// The element type of a parameter's 16-bit working copy, which a real optimizer step rewrites
/// from the new f32 master weights: [`half::f16`] (the default of every type that takes one) or
/// [`half::bf16`]. Sealed: implemented for these two only.
///
/// The conversion is the `half` crate's, on the CPU and bit for bit on the GPU: round to nearest
/// even; f16 overflows to ±inf from 65520 and keeps subnormals, bf16 keeps f32's range (it
/// overflows only within half an ulp of f32's largest value); a NaN stays a NaN with its sign
/// and top payload bits and the quiet bit set. Both types are 2 bytes, so a copy's alignment
/// rules are the same for either.
pub trait HalfCopy:
    sealed::Sealed + Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// The type's name (`"f16"`, `"bf16"`), for messages.
    const NAME: &'static str;

    /// `x` rounded to this type as a real step writes it (`half`'s `from_f32`).
    fn from_f32(x: f32) -> Self;

    /// The value as f32 (exact).
    fn to_f32(self) -> f32;

    /// The raw bits.
    fn to_bits(self) -> u16;
}

impl sealed::Sealed for f16 {
    const DEVICE_KIND: i32 = 0;
}

impl HalfCopy for f16 {
    const NAME: &'static str = "f16";

    #[inline]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }

    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[inline]
    fn to_bits(self) -> u16 {
        f16::to_bits(self)
    }
}

impl sealed::Sealed for bf16 {
    const DEVICE_KIND: i32 = 1;
}

impl HalfCopy for bf16 {
    const NAME: &'static str = "bf16";

    #[inline]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }

    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }

    #[inline]
    fn to_bits(self) -> u16 {
        bf16::to_bits(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_half_s() {
        for x in [
            0.1f32,
            -0.0,
            65520.0,
            1e-40,
            f32::MAX,
            f32::from_bits(0x7F80_0001),
        ] {
            assert_eq!(
                <f16 as HalfCopy>::from_f32(x).to_bits(),
                f16::from_f32(x).to_bits()
            );
            assert_eq!(
                <bf16 as HalfCopy>::from_f32(x).to_bits(),
                bf16::from_f32(x).to_bits()
            );
        }
        use sealed::Sealed;
        assert_eq!((f16::DEVICE_KIND, bf16::DEVICE_KIND), (0, 1));
    }
}
