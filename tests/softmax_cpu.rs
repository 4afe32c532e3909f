//! CPU softmax (`cpu::softmax`): finite-difference gradient checks in f64, f32 against independent
//! f64 formulas, property tests over shapes, stability and non-finite inputs, and argument
//! checks. (The fused softmax-cross-entropy's are tests/cross_entropy_cpu.rs.)

mod common;

use ampkit::check::{compare, numerical_gradient, unwritten, ToF64, Tolerance};
use ampkit::cpu::softmax::{backward, forward};
use common::{
    assert_all_written, assert_close, assert_invalid, assert_scaled, assert_shape_error, rng,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn poison() -> f32 {
    f32::from_bits(0xDEAD_BEEF)
}

/// `rows·cols` logits: each row around its own offset in ±`offset`, spread ±`spread`.
fn logits(rng: &mut StdRng, rows: usize, cols: usize, offset: f32, spread: f32) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let o = rng.gen_range(-offset..=offset);
        x.extend((0..cols).map(|_| o + rng.gen_range(-spread..=spread)));
    }
    x
}

fn uniform(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0f32)).collect()
}

fn wide<T: ToF64>(v: &[T]) -> Vec<f64> {
    v.iter().map(|v| v.to_f64()).collect()
}

/// Softmax written without the max shift, `exp(xⱼ) / Σₖ exp(xₖ)`: fine in f64 for |x| ≲ 700,
/// and a different evaluation from the library's.
fn naive_softmax(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let total: f64 = row.iter().map(|v| v.exp()).sum();
            row.iter().map(move |v| v.exp() / total)
        })
        .collect()
}

/// Softmax backward through the explicit Jacobian `∂yₖ/∂xⱼ = yₖ(δₖⱼ − yⱼ)`, O(cols²) per row.
/// Also returns each entry's error scale `yⱼ·(|dyⱼ| + Σₖ|dyₖ|·yₖ)`: the terms that cancel.
fn naive_softmax_backward(y: &[f64], dy: &[f64], cols: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut dx, mut scale) = (Vec::new(), Vec::new());
    for (y, dy) in y.chunks(cols).zip(dy.chunks(cols)) {
        let dot_abs: f64 = y.iter().zip(dy).map(|(y, d)| y * d.abs()).sum();
        for j in 0..cols {
            let jac = |k: usize| y[k] * (f64::from(k == j) - y[j]);
            dx.push((0..cols).map(|k| dy[k] * jac(k)).sum());
            scale.push(y[j] * (dy[j].abs() + dot_abs));
        }
    }
    (dx, scale)
}

/// Central differences, h = 1e-5 scaled by max(1, |xᵢ|) ≤ 6, in f64. The functions are smooth
/// with derivatives of order 1, so truncation (~step²·|f'''|) and rounding noise (~ε·|L|/h,
/// absolute) stay ≲ 1e-10; entries of order 1e-3 to 1 then agree to ~1e-7 relative or better.
/// The check is elementwise, `|Δ| ≤ 1e-9 + 1e-6·|ref|`. The relative L2 error is reported but not
/// bounded: with 1–2 classes the whole gradient can be ~1e-6 (a near-one-hot row), and the
/// absolute noise then dominates it. Observed over 30 runs: worst element 1.6e-10 absolute, rel
/// L2 ≤ 2e-8.
const FD_TOL: Tolerance = Tolerance::new(1e-9, 1e-6).with_rel_l2(f64::INFINITY);

fn softmax_gradient_check(rng: &mut StdRng, rows: usize, cols: usize) {
    let x = wide(&logits(rng, rows, cols, 3.0, 3.0));
    let g = wide(&uniform(rng, rows * cols));
    let mut y = vec![0.0; x.len()];
    forward(&x, rows, cols, &mut y).unwrap();
    let mut dx = vec![0.0; x.len()];
    backward(&y, &g, rows, cols, &mut dx).unwrap();
    let loss = |x: &[f64]| {
        let mut y = vec![0.0; x.len()];
        forward(x, rows, cols, &mut y).unwrap();
        y.iter().zip(&g).map(|(y, g)| y * g).sum::<f64>()
    };
    let num = numerical_gradient(loss, &x, 1e-5);
    assert_close(
        &format!("softmax {rows}x{cols} dx vs finite differences"),
        &dx,
        &num,
        FD_TOL,
    );
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let mut rng = rng("gradients_match_finite_differences_in_f64");
    for (rows, cols) in [(1, 1), (1, 2), (3, 17), (4, 64), (2, 784)] {
        softmax_gradient_check(&mut rng, rows, cols);
    }
}

/// f32's unit roundoff 2⁻²⁴ ≈ 6e-8: the largest relative error of one rounding to nearest.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// Softmax f32 against the f64 formulas, first order in u = 2⁻²⁴. The row sums accumulate in f64
/// and are rounded once, so no error grows with `cols`. Forward, relative: `xⱼ − m` rounds by
/// ≤ u·|xⱼ − m|, which `exp` turns into a relative ≤ |xⱼ − m| u; `exp` itself ≤ 1 ulp (2 u); the
/// sum averages its terms' errors (≤ w + 2 u, w the y-weighted mean of |x − m|); rounding the sum
/// and the division 1 u each: Eⱼ ≤ (|xⱼ − m| + w + 6) u. With logits spread ±6, |x − m| and w
/// are ≤ 12: ≤ 30 u ≈ 1.8e-6, limit 2e-6. Backward, in units of its scale
/// `yⱼ·(|dyⱼ| + Σ|dy|·y)` (dx cancels dy against Σ dy·y): y's Eⱼ carries through, the dot
/// product takes up to max E + 1 u from the y it sums, the subtraction and the product 1 u each:
/// ≤ (2·12 + 2w + 15) u ≤ 63 u ≈ 3.8e-6, limit 4e-6. Observed worst over 30 runs: 6.2e-7 (10.4 u)
/// forward, 4.6e-7 (7.7 u) backward. (With the earlier left-to-right f32 sums the limits were
/// 1e-5 for both, observed 2.2e-6 and 1.5e-6 at 1000 columns.)
const F32_SOFTMAX_FWD: Tolerance = Tolerance::new(1e-30, 2e-6);
const F32_SOFTMAX_BWD: f64 = 4e-6;

fn softmax_f32_against_f64(rng: &mut StdRng, rows: usize, cols: usize, what: &str) {
    let (x, dy) = (
        logits(rng, rows, cols, 20.0, 6.0),
        uniform(rng, rows * cols),
    );
    let (mut y, mut dx) = (vec![poison(); x.len()], vec![poison(); x.len()]);
    forward(&x, rows, cols, &mut y).unwrap();
    backward(&y, &dy, rows, cols, &mut dx).unwrap();
    assert_all_written(&format!("{what} y"), &y, poison());
    assert_all_written(&format!("{what} dx"), &dx, poison());
    let y_ref = naive_softmax(&wide(&x), cols);
    let (dx_ref, scale) = naive_softmax_backward(&y_ref, &wide(&dy), cols);
    assert_close(
        &format!("{what} f32 softmax y"),
        &y,
        &y_ref,
        F32_SOFTMAX_FWD,
    );
    assert_scaled(
        &format!("{what} f32 softmax dx"),
        &dx,
        &dx_ref,
        &scale,
        F32_SOFTMAX_BWD,
    );
}

#[test]
fn f32_agrees_with_f64_on_the_parallel_path() {
    let mut rng = rng("f32_agrees_with_f64_on_the_parallel_path");
    // 64·1000 elements: past the parallel threshold.
    softmax_f32_against_f64(&mut rng, 64, 1000, "64x1000");
}

/// The f32 softmax against the f64 one (the same code in f64, on the same inputs) on rows of 4096
/// and 65536 columns with a nonzero offset. The row sums (`Σ exp`, `Σ dy·y`) accumulate in f64 and
/// are rounded once, so no error grows with `cols`; each element is held to its own bound from
/// [`F32_SOFTMAX_FWD`]'s derivation (units of u = 2⁻²⁴, `m` the row max, w the y-weighted mean
/// of |x − m|, R the row's largest |x − m|):
/// - y, relative: Eⱼ = (|xⱼ − m| + w + 6) u.
/// - dx, in units of `yⱼ·(|dyⱼ| + Σ|dy|·y)`: Eⱼ + (R + w + 9) u.
///
/// Observed worst over 5 seeds (spread ±6, so |x − m| ≤ 12): y 10.2 u (6.1e-7 relative), dx 7.1 u
/// at both 4096 and 65536 columns, all within their elements' limits. The left-to-right f32 sums
/// this replaced gave y 1400-1470 u (8.3e-5 to 8.8e-5 relative) and dx 940-990 u at 65536
/// columns, y 32-59 u at 4096.
#[test]
fn f32_long_rows_are_accurate_to_a_few_roundings() {
    let mut rng = rng("f32_long_rows_are_accurate_to_a_few_roundings");
    let mut failed = Vec::new();
    for (rows, cols) in [(8, 4096), (4, 65536)] {
        let (x, dy) = (
            logits(&mut rng, rows, cols, 3.0, 6.0),
            uniform(&mut rng, rows * cols),
        );
        let (mut y, mut dx) = (vec![poison(); x.len()], vec![poison(); x.len()]);
        forward(&x, rows, cols, &mut y).unwrap();
        backward(&y, &dy, rows, cols, &mut dx).unwrap();
        let (x64, dy64) = (wide(&x), wide(&dy));
        let (mut y64, mut dx64) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        forward(&x64, rows, cols, &mut y64).unwrap();
        backward(&y64, &dy64, rows, cols, &mut dx64).unwrap();

        // Worst errors in u, and worst excess over each element's limit (≤ 0 passes).
        let (mut y_err, mut y_over, mut dx_err, mut dx_over) = (0f64, f64::MIN, 0f64, f64::MIN);
        for r in 0..rows {
            let row = r * cols..(r + 1) * cols;
            let (x, y, y64) = (&x64[row.clone()], &y[row.clone()], &y64[row.clone()]);
            let (dy, dx, dx64) = (&dy64[row.clone()], &dx[row.clone()], &dx64[row]);
            let m = x.iter().copied().fold(f64::MIN, f64::max);
            let w: f64 = x.iter().zip(y64).map(|(x, y)| y * (m - x)).sum();
            let range = x.iter().map(|x| m - x).fold(0.0, f64::max);
            let dot_abs: f64 = y64.iter().zip(dy).map(|(y, d)| y * d.abs()).sum();
            for j in 0..cols {
                let e = (f64::from(y[j]) - y64[j]).abs() / y64[j] / U;
                y_err = y_err.max(e);
                y_over = y_over.max(e - (m - x[j] + w + 6.0));
                let scale = y64[j] * (dy[j].abs() + dot_abs);
                let e = (f64::from(dx[j]) - dx64[j]).abs() / scale / U;
                dx_err = dx_err.max(e);
                dx_over = dx_over.max(e - (m - x[j] + w + 6.0) - (range + w + 9.0));
            }
        }
        eprintln!(
            "{rows}x{cols} f32 vs f64, worst: softmax y {y_err:.2} u ({:.1e}), dx {dx_err:.2} u \
             of scale",
            y_err * U
        );
        for (bad, what) in [
            (
                y_over > 0.0,
                format!("softmax y: {y_over:.2} u past its limit"),
            ),
            (
                dx_over > 0.0,
                format!("softmax dx: {dx_over:.2} u past its limit"),
            ),
        ] {
            if bad {
                failed.push(format!("{rows}x{cols} {what}"));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn f32_agrees_with_f64_on_any_shape(
        rows in prop::sample::select(vec![1usize, 2, 3, 7, 10, 13, 37]),
        cols in prop::sample::select(vec![1usize, 2, 3, 5, 7, 10, 31, 127, 784]),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let what = format!("{rows}x{cols} seed {seed}");
        softmax_f32_against_f64(&mut rng, rows, cols, &what);
    }

    #[test]
    fn gradients_match_finite_differences_on_any_shape(
        rows in prop::sample::select(vec![1usize, 2, 3, 5]),
        cols in prop::sample::select(vec![1usize, 2, 3, 7, 10, 31, 127]),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        softmax_gradient_check(&mut rng, rows, cols);
    }
}

/// Logits of ±1e4 in f32 (e^1e4 overflows f32 and f64), and signed zeros.
#[test]
fn huge_and_signed_zero_logits() {
    let e1 = (-1.0f64).exp();
    let mut y = [poison(); 4];
    forward(&[1e4f32, 1e4 - 1.0, -1e4, 0.0], 1, 4, &mut y).unwrap();
    let want = [1.0 / (1.0 + e1), e1 / (1.0 + e1), 0.0, 0.0];
    assert_close("softmax of ±1e4", &y, &want, Tolerance::new(0.0, 1e-6));

    let mut y = [poison(); 2];
    forward(&[-0.0f32, 0.0], 1, 2, &mut y).unwrap();
    assert_eq!(y, [0.5, 0.5]);
}

/// −inf masks to exactly 0; a row of all −inf, or one holding NaN or +inf, is NaN throughout
/// (PyTorch's behaviour); other rows are untouched.
#[test]
fn softmax_non_finite_rows() {
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    let x = [
        0.0, -inf, 0.0, -inf, -inf, -inf, 1.0, nan, 2.0, 1.0, inf, 2.0,
    ];
    let mut y = [poison(); 12];
    forward(&x, 4, 3, &mut y).unwrap();
    let mut want = vec![0.5, 0.0, 0.5];
    want.extend([f64::NAN; 9]);
    assert!(compare(&y, &want, Tolerance::EXACT).passed(), "{y:?}");
    let mut dx = [poison(); 12];
    backward(&y, &[1.0; 12], 4, 3, &mut dx).unwrap();
    assert_eq!(&dx[..3], &[0.0; 3]);
    assert!(dx[3..].iter().all(|v| v.is_nan()), "{dx:?}");
}

#[test]
fn wrong_lengths_and_sizes_are_rejected() {
    let (ok, short) = ([0.5f32; 6], [0.5f32; 5]);
    let mut out = vec![poison(); 7];
    assert_shape_error(forward(&short, 2, 3, &mut out[..6]), "x");
    assert_shape_error(forward(&ok, 2, 3, &mut out[..5]), "y");
    assert_shape_error(backward(&short, &ok, 2, 3, &mut out[..6]), "y");
    assert_shape_error(backward(&ok, &short, 2, 3, &mut out[..6]), "dy");
    assert_shape_error(backward(&ok, &ok, 2, 3, &mut out[..7]), "dx");
    assert_invalid(forward::<f32>(&[], 2, 0, &mut []), "cols is 0");
    assert_invalid(forward::<f32>(&[], usize::MAX, 2, &mut []), "overflows");
    forward::<f32>(&[], 0, 3, &mut []).unwrap(); // an empty batch is fine
    assert_eq!(unwritten(&out, poison()).len(), 7, "an output was written");
}
