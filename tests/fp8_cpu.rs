//! The CPU FP8 cast + transpose (`cpu::fp8::cast_transpose`), against a naive transpose of
//! `cpu::fp8::quantize`: the transposed layout and its zero padding to a multiple of 16 rows,
//! bf16 sources widened exactly, the returned amax, thread-count independence and errors.

mod common;

use ampkit::cpu::fp8::{cast_transpose, quantize, transpose_ld, CastInput, Fp8Format};
use ampkit::Error;
use common::{on_threads, rng};
use half::bf16;
use rand::Rng;

const FORMATS: [Fp8Format; 2] = [Fp8Format::E4M3, Fp8Format::E5M2];
const SIZES: [usize; 8] = [1, 15, 17, 63, 64, 65, 100, 130];

/// `(q, qt)` the slow way: quantize the widened values, then transpose into `[cols, ld]` with
/// zero padding.
fn naive<T: CastInput>(
    f: Fp8Format,
    src: &[T],
    rows: usize,
    cols: usize,
    scale: f32,
) -> (Vec<u8>, Vec<u8>, f32) {
    let wide: Vec<f32> = src.iter().map(|v| v.widen()).collect();
    let mut q = vec![0u8; rows * cols];
    let amax = quantize(f, &wide, scale, &mut q).unwrap();
    let ld = transpose_ld(rows).unwrap();
    let mut qt = vec![0u8; cols * ld];
    for r in 0..rows {
        for c in 0..cols {
            qt[c * ld + r] = q[r * cols + c];
        }
    }
    (q, qt, amax)
}

fn check<T: CastInput + std::fmt::Debug>(what: &str, src: &[T], rows: usize, cols: usize) {
    let ld = transpose_ld(rows).unwrap();
    for f in FORMATS {
        for scale in [1.0f32, 0.37, 64.0] {
            let (want_q, want_qt, want_amax) = naive(f, src, rows, cols, scale);
            let (mut q, mut qt) = (vec![0xA5u8; rows * cols], vec![0xA5u8; cols * ld]);
            let amax = cast_transpose(f, src, rows, cols, scale, Some(&mut q), &mut qt).unwrap();
            let case = format!("{what} {f:?} {rows}x{cols} scale {scale}");
            assert_eq!(q, want_q, "{case}: q");
            assert_eq!(qt, want_qt, "{case}: qt (padding included)");
            assert_eq!(amax.to_bits(), want_amax.to_bits(), "{case}: amax");
            // Without q, the transpose and the amax are the same.
            let mut qt2 = vec![0x5Au8; cols * ld];
            let amax2 = cast_transpose(f, src, rows, cols, scale, None, &mut qt2).unwrap();
            assert_eq!(qt2, want_qt, "{case}: qt without q");
            assert_eq!(
                amax2.to_bits(),
                want_amax.to_bits(),
                "{case}: amax without q"
            );
        }
    }
}

#[test]
fn cast_transpose_is_quantize_then_a_padded_transpose() {
    let mut rng = rng("fp8 cast_transpose cpu");
    for &rows in &SIZES {
        for &cols in &SIZES {
            let n = rows * cols;
            let x: Vec<f32> = (0..n)
                .map(|_| match rng.gen_range(0..4) {
                    0 => f32::from_bits(rng.gen()),
                    1 => rng.gen_range(-1e5f32..1e5),
                    _ => rng.gen_range(-4.0f32..4.0),
                })
                .collect();
            check("f32", &x, rows, cols);
            let b: Vec<bf16> = (0..n).map(|_| bf16::from_bits(rng.gen())).collect();
            check("bf16", &b, rows, cols);
        }
    }
}

#[test]
fn the_layout_and_padding_are_as_documented() {
    // A 3×2 matrix: ld = 16; qt row c holds column c, then 13 zero bytes.
    let e = |x: f32| Fp8Format::E4M3.encode(x);
    let src = [1.0f32, 2.0, 3.0, 4.0, 5.0, -6.0];
    let mut qt = vec![0xFFu8; 2 * 16];
    let amax = cast_transpose(Fp8Format::E4M3, &src, 3, 2, 1.0, None, &mut qt).unwrap();
    assert_eq!(amax, 6.0);
    assert_eq!(&qt[..3], [e(1.0), e(3.0), e(5.0)]);
    assert_eq!(&qt[16..19], [e(2.0), e(4.0), e(-6.0)]);
    assert!(qt[3..16].iter().chain(&qt[19..]).all(|&b| b == 0));
    assert_eq!(transpose_ld(0), Some(0));
    assert_eq!(transpose_ld(16), Some(16));
    assert_eq!(transpose_ld(17), Some(32));
    assert_eq!(transpose_ld(usize::MAX), None);
    // Empty matrices: nothing to write, amax 0.
    let none: [f32; 0] = [];
    assert_eq!(
        cast_transpose(Fp8Format::E5M2, &none, 0, 5, 1.0, None, &mut []).unwrap(),
        0.0
    );
    assert_eq!(
        cast_transpose(Fp8Format::E5M2, &none, 7, 0, 1.0, Some(&mut []), &mut []).unwrap(),
        0.0
    );
}

#[test]
fn bf16_is_widened_exactly_nan_payloads_included() {
    // A signalling NaN (quiet bit clear): half's to_f32 would set the quiet bit; the amax is
    // the widened bits, as the GPU's shift gives them.
    let snan = bf16::from_bits(0xFF81);
    assert_eq!(snan.widen().to_bits(), 0xFF81_0000);
    assert_eq!(bf16::from_f32(-3.5).widen(), -3.5);
    let src = [bf16::from_f32(1.0), snan];
    let mut qt = [0u8; 2 * 16];
    let amax = cast_transpose(Fp8Format::E4M3, &src, 1, 2, 1.0, None, &mut qt).unwrap();
    assert_eq!(amax.to_bits(), 0x7F81_0000);
    assert_eq!(qt[16], 0x7F, "NaN → 0x7F");
}

#[test]
fn the_result_does_not_depend_on_the_thread_count() {
    let mut rng = rng("fp8 cast_transpose threads");
    let (rows, cols) = (301, 257);
    let x: Vec<f32> = (0..rows * cols)
        .map(|_| rng.gen_range(-600.0f32..600.0))
        .collect();
    let ld = transpose_ld(rows).unwrap();
    let run = |threads| {
        on_threads(threads, || {
            let (mut q, mut qt) = (vec![0u8; rows * cols], vec![0u8; cols * ld]);
            let a = cast_transpose(Fp8Format::E4M3, &x, rows, cols, 0.5, Some(&mut q), &mut qt);
            (q, qt, a.unwrap().to_bits())
        })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn bad_lengths_and_overflowing_shapes_are_errors() {
    let f = Fp8Format::E4M3;
    let x = [1.0f32; 6];
    let mut qt = [0u8; 3 * 16];
    let shape = |r: ampkit::Result<f32>, name: &str| {
        let e = r.unwrap_err();
        assert!(
            matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains(name),
            "{name}: {e}"
        );
    };
    shape(cast_transpose(f, &x, 2, 2, 1.0, None, &mut qt), "src");
    shape(
        cast_transpose(f, &x, 2, 3, 1.0, Some(&mut [0u8; 5]), &mut qt),
        "q has 5",
    );
    // ld is 16, not 2: qt of cols·rows bytes is too short.
    shape(
        cast_transpose(f, &x, 2, 3, 1.0, None, &mut [0u8; 6]),
        "qt has 6",
    );
    for (rows, cols) in [(usize::MAX / 2, 4), (usize::MAX, 1), (1 << 40, 1 << 30)] {
        let e = cast_transpose(f, &x, rows, cols, 1.0, None, &mut qt).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("overflows"),
            "{rows}x{cols}: {e}"
        );
    }
}
