//! The FP8 GEMM on the CPU, reference for [`crate::ops::gemm_fp8`]:
//! `D[m, n] = a.scale_inv·b.scale_inv · Σ_k A[m, k]·B[n, k] (+ bias[n])` with A `[m, k]` and B
//! `[n, k]` row-major FP8 codes ([`Layout::Forward`]).
//!
//! Codes are decoded exactly ([`Fp8Format::decode`]); products and sums are taken in f64 (exact
//! for FP8 products, and for sums up to 2^53 times the smallest product), then scaled by the f64
//! product of the two inverse scales, the bias added, and the result rounded once to the output
//! type. The GPU accumulates in the tensor core's coarser precision: compare with the tolerances
//! of [`crate::ops::gemm_fp8`]'s module doc, using [`gemm_fp8_magnitude`] for the per-element
//! scale of the error.

use super::fp8::Fp8Format;
use super::Element;
use crate::error::{Error, Result};
use crate::shape::{GemmShape, Layout};
use crate::validate;
use rayon::prelude::*;

const OP: &str = "cpu::gemm_fp8";

/// One FP8 operand on the host: codes (row-major, K contiguous), their format, and the inverse
/// scale (the value of a code is `decode(code) · scale_inv`).
#[derive(Debug, Clone, Copy)]
pub struct Fp8Matrix<'a> {
    /// The codes, `rows × k`.
    pub data: &'a [u8],
    /// How they are encoded.
    pub format: Fp8Format,
    /// Multiplies every decoded code.
    pub scale_inv: f32,
}

impl Fp8Matrix<'_> {
    /// The `rows × k` codes decoded to f64 (unscaled).
    fn decoded(&self) -> Vec<f64> {
        let lut: Vec<f64> = (0..=255u8)
            .map(|c| f64::from(self.format.decode(c)))
            .collect();
        self.data.par_iter().map(|&c| lut[usize::from(c)]).collect()
    }
}

/// Fails like the GPU twin for the wrong layout or lengths (the GPU's alignment and `k % 16`
/// rules are its own).
fn check(
    shape: GemmShape,
    a: &Fp8Matrix<'_>,
    b: &Fp8Matrix<'_>,
    bias: Option<&[f32]>,
    c_len: usize,
) -> Result<()> {
    if shape.layout != Layout::Forward {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: format!(
                "the FP8 GEMM reads K-major operands only (Layout::Forward: A [m, k], B [n, k]); \
                 {:?} needs its operands transposed first",
                shape.layout
            ),
        });
    }
    validate::gemm::gemm(
        OP,
        shape,
        [a.data.len(), b.data.len(), c_len],
        bias.map(<[f32]>::len),
    )
}

/// `Σ_k f(A[i, l], B[j, l])` for every output element, row-major `[m, n]`, with the decoded
/// (unscaled) codes.
fn reduce(
    shape: GemmShape,
    a: &Fp8Matrix<'_>,
    b: &Fp8Matrix<'_>,
    f: fn(f64, f64) -> f64,
) -> Vec<f64> {
    let GemmShape { m, n, k, .. } = shape;
    let (da, db) = (a.decoded(), b.decoded());
    let mut out = vec![0f64; m * n];
    if k == 0 {
        return out;
    }
    out.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            let ar = &da[i * k..(i + 1) * k];
            for (j, o) in row.iter_mut().enumerate() {
                let br = &db[j * k..(j + 1) * k];
                *o = ar.iter().zip(br).map(|(&x, &y)| f(x, y)).sum();
            }
        });
    out
}

/// The exact result in f64, row-major `[m, n]`: `scale·Σ_k A·B + bias` with
/// `scale = f64(a.scale_inv)·f64(b.scale_inv)`. Errors: [`Error::InvalidArgument`] unless the
/// layout is [`Layout::Forward`]; [`Error::ShapeMismatch`] for a length that does not match the
/// shape.
pub fn gemm_fp8_f64(
    shape: GemmShape,
    a: &Fp8Matrix<'_>,
    b: &Fp8Matrix<'_>,
    bias: Option<&[f32]>,
) -> Result<Vec<f64>> {
    check(shape, a, b, bias, shape.m * shape.n)?;
    let scale = f64::from(a.scale_inv) * f64::from(b.scale_inv);
    let mut out = reduce(shape, a, b, |x, y| x * y);
    let n = shape.n.max(1);
    out.par_chunks_mut(n).for_each(|row| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = *v * scale + bias.map_or(0.0, |b| f64::from(b[j]));
        }
    });
    Ok(out)
}

/// [`gemm_fp8_f64`] rounded once (nearest even) to the output type `C` (f32, f16, bf16 or f64)
/// into `c` (`m·n`). Errors as [`gemm_fp8_f64`], plus [`Error::ShapeMismatch`] for `c`.
pub fn gemm_fp8<C: Element>(
    shape: GemmShape,
    a: &Fp8Matrix<'_>,
    b: &Fp8Matrix<'_>,
    bias: Option<&[f32]>,
    c: &mut [C],
) -> Result<()> {
    check(shape, a, b, bias, c.len())?;
    let exact = gemm_fp8_f64(shape, a, b, bias)?;
    c.par_iter_mut()
        .zip(exact.par_iter())
        .for_each(|(o, &v)| *o = C::from_f64(v));
    Ok(())
}

/// `|scale|·Σ_k |A·B|` per output element (row-major `[m, n]`): the size the tensor core's
/// accumulation error is relative to, for tolerances. Errors as [`gemm_fp8_f64`].
pub fn gemm_fp8_magnitude(
    shape: GemmShape,
    a: &Fp8Matrix<'_>,
    b: &Fp8Matrix<'_>,
) -> Result<Vec<f64>> {
    check(shape, a, b, None, shape.m * shape.n)?;
    let scale = (f64::from(a.scale_inv) * f64::from(b.scale_inv)).abs();
    let mut out = reduce(shape, a, b, |x, y| (x * y).abs());
    out.par_iter_mut().for_each(|v| *v *= scale);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_product_bias_and_rounding() {
        let e4 = Fp8Format::E4M3;
        let e5 = Fp8Format::E5M2;
        // A [2, 3] in E4M3, B [2, 3] in E5M2.
        let a: Vec<u8> = [1.0, 2.0, -0.5, 3.0, 0.0, 448.0]
            .iter()
            .map(|&v| e4.encode(v))
            .collect();
        let b: Vec<u8> = [1.0, 1.0, 1.0, 0.25, -2.0, 1.0]
            .iter()
            .map(|&v| e5.encode(v))
            .collect();
        let (am, bm) = (
            Fp8Matrix {
                data: &a,
                format: e4,
                scale_inv: 0.5,
            },
            Fp8Matrix {
                data: &b,
                format: e5,
                scale_inv: 4.0,
            },
        );
        let shape = GemmShape::new(Layout::Forward, 2, 2, 3);
        let bias = [1.0f32, -1.0];
        let got = gemm_fp8_f64(shape, &am, &bm, Some(&bias)).unwrap();
        // scale 2: rows·cols dot products (2.5, -4.25; 451, 448.75), then + bias.
        assert_eq!(got, vec![6.0, -9.5, 903.0, 896.5]);
        let mut h = vec![half::f16::ZERO; 4];
        gemm_fp8(shape, &am, &bm, Some(&bias), &mut h).unwrap();
        assert_eq!(h[3].to_f32(), 896.5);
        let mag = gemm_fp8_magnitude(shape, &am, &bm).unwrap();
        assert_eq!(mag, vec![7.0, 9.5, 902.0, 897.5]);
        let wrong = GemmShape::new(Layout::Dgrad, 2, 2, 3);
        assert!(matches!(
            gemm_fp8_f64(wrong, &am, &bm, None),
            Err(Error::InvalidArgument { .. })
        ));
        let short = GemmShape::new(Layout::Forward, 2, 2, 4);
        assert!(matches!(
            gemm_fp8_f64(short, &am, &bm, None),
            Err(Error::ShapeMismatch { .. })
        ));
    }
}
