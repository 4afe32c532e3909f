//! ReLU on the CPU; the reference for the GPU's fused GEMM epilogue and its backward.
//!
//! Semantics (the GPU matches them exactly):
//! - forward `relu(x) = x` for `x > 0`, NaN stays NaN (as in PyTorch), everything else (negative
//!   numbers, `-0.0`, `-inf`) becomes `+0.0`;
//! - backward `dx = dy` where the forward *output* `y > 0`, else `+0.0`. Using the output rather
//!   than the pre-activation lets the forward keep only `y` (the next layer's input anyway): the
//!   two agree everywhere except at NaN, where no gradient is meaningful.

use crate::cpu::Element;
use crate::error::Result;
use crate::validate;
use rayon::prelude::*;

/// Below this many elements the work stays on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;

/// ReLU of one value (see the module doc for NaN and `-0.0`).
#[inline]
pub(crate) fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() {
        x
    } else {
        0.0
    }
}

/// `y[i] = relu(x[i])`, computed in f32 and rounded to `T` (exact for f16, bf16, f32 and f64
/// inputs).
/// Errors: [`Error::ShapeMismatch`] unless the lengths agree.
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn forward<T: Element>(x: &[T], y: &mut [T]) -> Result<()> {
    validate::relu::same_len("cpu::relu::forward", &[("x", x.len()), ("y", y.len())])?;
    zip_map(y, x, x, |v, _| {
        if v.to_f64() > 0.0 || v.to_f64().is_nan() {
            v
        } else {
            T::from_f32(0.0)
        }
    });
    Ok(())
}

/// `dx[i] = dy[i]` where the forward output `y[i] > 0`, else `+0.0`. Errors:
/// [`Error::ShapeMismatch`] naming the operand unless the three
/// lengths agree.
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn backward<T: Element>(dy: &[T], y: &[T], dx: &mut [T]) -> Result<()> {
    validate::relu::same_len(
        "cpu::relu::backward",
        &[("dy", dy.len()), ("y", y.len()), ("dx", dx.len())],
    )?;
    zip_map(dx, dy, y, |g, out| {
        if out.to_f64() > 0.0 {
            g
        } else {
            T::from_f32(0.0)
        }
    });
    Ok(())
}

/// The ReLU mask of a forward output `y` (`[rows, cols]` row-major): one bit per element, set
/// where `y > 0` (the test [`backward`] makes), row `r`'s bits in words `r·⌈cols/32⌉ ..`, bit
/// `c % 32` of word `c / 32`; bits past `cols` are 0. What the FP8 GEMM's ReLU epilogue writes
/// beside its output ([`gemm_fp8_relu_masked`](crate::ops::gemm_fp8::gemm_fp8_relu_masked)) so
/// that the backward reads 1 bit per element instead of the output.
/// Errors: [`Error::ShapeMismatch`] unless `y` holds `rows·cols` elements;
/// [`Error::InvalidArgument`] when the sizes overflow.
///
/// ```
/// use ampkit::cpu::relu::mask;
/// let y = [0.5f32, 0.0, f32::NAN, 2.0, -1.0]; // [1, 5]
/// assert_eq!(mask(&y, 1, 5)?, vec![0b01001]);
/// # Ok::<(), ampkit::Error>(())
/// ```
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
/// [`Error::InvalidArgument`]: crate::Error::InvalidArgument
pub fn mask<T: Element>(y: &[T], rows: usize, cols: usize) -> Result<Vec<u32>> {
    const OP: &str = "cpu::relu::mask";
    let overflow = || crate::Error::InvalidArgument {
        op: OP,
        detail: format!("a {rows} × {cols} mask overflows usize"),
    };
    let n = rows.checked_mul(cols).ok_or_else(overflow)?;
    let words = cols.div_ceil(32);
    rows.checked_mul(words).ok_or_else(overflow)?;
    crate::error::expect_len(OP, "y", y.len(), n, &format!("rows·cols = {rows}·{cols}"))?;
    let mut out = vec![0u32; rows * words];
    if words > 0 {
        out.par_chunks_mut(words)
            .zip(y.par_chunks(cols.max(1)))
            .for_each(|(bits, row)| {
                for (c, v) in row.iter().enumerate() {
                    if v.to_f64() > 0.0 {
                        bits[c / 32] |= 1 << (c % 32);
                    }
                }
            });
    }
    Ok(out)
}

fn zip_map<T: Element>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) {
    if dst.len() < PARALLEL_MIN {
        for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
            *d = f(x, y);
        }
    } else {
        dst.par_iter_mut()
            .zip(a.par_iter().zip(b.par_iter()))
            .for_each(|(d, (&x, &y))| *d = f(x, y));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn the_mask_holds_the_backward_test_row_by_row() {
        // 3 rows of 70 columns (3 words each, the last holding 6 columns): every special value.
        let (rows, cols) = (3, 70);
        let specials = [
            1.0f32,
            0.0,
            -0.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            1e-45,
            -1e-45,
        ];
        let y: Vec<f32> = (0..rows * cols)
            .map(|i| specials[(i * 7 + i / 5) % 8])
            .collect();
        let m = mask(&y, rows, cols).unwrap();
        assert_eq!(m.len(), rows * 3);
        let ones = vec![1f32; rows * cols];
        let mut dx = vec![0f32; rows * cols];
        backward(&ones, &y, &mut dx).unwrap();
        for r in 0..rows {
            for c in 0..96 {
                let bit = m[r * 3 + c / 32] >> (c % 32) & 1;
                let want = u32::from(c < cols && dx[r * cols + c] == 1.0);
                assert_eq!(bit, want, "row {r} column {c}");
            }
        }
        assert!(mask(&y[1..], rows, cols).is_err());
        assert!(mask::<f32>(&[], usize::MAX, 2).is_err());
        assert_eq!(mask::<f32>(&[], 0, 5).unwrap(), Vec::<u32>::new());
        assert_eq!(mask::<f32>(&[], 4, 0).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn scalar_semantics() {
        assert_eq!(relu(2.5), 2.5);
        assert_eq!(relu(-2.5).to_bits(), 0);
        assert_eq!(relu(-0.0).to_bits(), 0, "-0.0 becomes +0.0");
        assert_eq!(relu(f32::NEG_INFINITY), 0.0);
        assert!(relu(f32::NAN).is_nan());
    }

    #[test]
    fn forward_and_backward_on_f16() {
        let x: Vec<f16> = [1.0f32, -1.0, -0.0, 65504.0, f32::NAN]
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let mut y = vec![f16::ZERO; 5];
        forward(&x, &mut y).unwrap();
        let bits: Vec<u16> = y.iter().map(|v| v.to_bits()).collect();
        assert_eq!(&bits[..4], &[0x3C00, 0, 0, 0x7BFF]);
        assert!(y[4].is_nan());
        let dy = vec![f16::from_f32(3.0); 5];
        let mut dx = vec![f16::ONE; 5];
        backward(&dy, &y, &mut dx).unwrap();
        let bits: Vec<u16> = dx.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, [0x4200, 0, 0, 0x4200, 0]);
    }

    #[test]
    fn forward_and_backward_on_bf16() {
        use half::bf16;
        // 1, −1, −0, bf16's largest, +inf, −inf, a NaN with a payload, the smallest subnormal.
        let bits = [
            0x3F80u16, 0xBF80, 0x8000, 0x7F7F, 0x7F80, 0xFF80, 0x7FC1, 0x0001,
        ];
        let x: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b)).collect();
        let mut y = vec![bf16::ZERO; x.len()];
        forward(&x, &mut y).unwrap();
        let got: Vec<u16> = y.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, [0x3F80, 0, 0, 0x7F7F, 0x7F80, 0, 0x7FC1, 0x0001]);
        let dy = vec![bf16::from_bits(0xC040); x.len()]; // −3
        let mut dx = vec![bf16::ONE; x.len()];
        backward(&dy, &y, &mut dx).unwrap();
        let got: Vec<u16> = dx.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, [0xC040, 0, 0, 0xC040, 0xC040, 0, 0, 0xC040]);
    }

    #[test]
    fn length_mismatch_names_the_operand() {
        let e = backward(&[1.0f32; 3], &[1.0; 3], &mut [0.0; 2]).unwrap_err();
        assert!(e.to_string().contains("dx has 2"), "{e}");
    }
}
