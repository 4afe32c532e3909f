//! CPU LayerNorm: finite-difference gradient checks in f64, f32 against independent f64 formulas,
//! property tests over shapes, determinism of the column sums, edge inputs and argument checks.
//!
//! Errors are measured against a scale per element: the sum of the magnitudes of the terms that
//! produce it (a standard rounding-error bound is `γₙ · Σ|terms|`). LayerNorm's outputs cancel:
//! `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` can be 1e-6 of its terms, and for cols = 2 always
//! nearly is, so an error relative to the result itself would measure the cancellation, not the
//! code.

mod common;
mod layernorm_support;

use ampkit::check::{compare, ToF64, Tolerance};
use ampkit::cpu::layernorm::{backward, forward};
use ampkit::Error;
use common::{assert_all_written, assert_close, assert_scaled, rng};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use layernorm_support::naive::*;

#[test]
fn gradients_match_finite_differences_in_f64() {
    let mut rng = rng("gradients_match_finite_differences_in_f64");
    for (rows, cols) in [(1, 1), (1, 2), (3, 17), (4, 64), (2, 784)] {
        gradient_check(&fd_case(&mut rng, rows, cols));
    }
}

/// The f64 path agrees with the Welford/Jacobian formulas to rounding (≤ 2.5e-15 of scale seen).
#[test]
fn f64_matches_independent_formulas() {
    let mut rng = rng("f64_matches_independent_formulas");
    let c = case(&mut rng, 9, 250);
    assert_matches("f64 9x250", &run::<f64>(&c, 0.0), &naive(&c), 1e-13, 1e-13);
}

/// f32's unit roundoff 2⁻²⁴ ≈ 6e-8: the largest relative error of one rounding to nearest.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// f32 against the f64 formulas, in units of each element's scale. The library's sums accumulate
/// in f64 and are rounded once, so their error does not grow with `cols` (or `rows`); what remains
/// is each element's own f32 arithmetic, first order in u = 2⁻²⁴:
/// - mean: rounded once, ≤ 1 u. rstd: the variance rounded once, `+ eps` (with eps itself
///   rounded to f32), `sqrt`, the reciprocal: ≤ 3 u.
/// - x̂ = (x − mean)·rstd in f32: mean's error (u·|mean|), the subtraction, rstd's 3 u and the
///   product: ≤ 5 u of x̂ₜ = |x̂| + |mean|·rstd. y = x̂·γ + β then ≤ 7 u of its scale.
/// - dx = rstd·((g − mean(g)) − x̂·mean(g·x̂)): g and mean(g) 1 u each, mean(g·x̂) 6 u (x̂'s 5
///   and its rounding), the product x̂·mean(g·x̂) 12 u, two subtractions, rstd 3 u and the last
///   product: ≤ 17 u of its scale. dgamma ≤ 6 u (x̂'s 5 and the rounding), dbeta ≤ 1 u.
///
/// So the limits are 8 u ≈ 4.8e-7 (forward) and 17 u ≈ 1.0e-6 (backward). Observed worst over 30
/// runs: mean 1.0 u, rstd 2.1 u, y 3.5 u, dx 2.5 u, dgamma 1.9 u, dbeta 1.0 u. (With the earlier
/// left-to-right f32 sums this test needed 1e-5 and 2e-5: observed 1.4e-6 forward, 1.0e-6
/// backward.) Any formula error shows up at the 1e-2 level or above.
const F32_FWD: f64 = 8.0 * U;
const F32_BWD: f64 = 17.0 * U;

fn f32_against_f64(c: &Case, what: &str) {
    let o = run::<f32>(c, poison());
    for (name, v) in [
        ("y", &o.y),
        ("mean", &o.mean),
        ("rstd", &o.rstd),
        ("dx", &o.dx),
    ] {
        assert_all_written(&format!("{what} {name}"), v, poison());
    }
    assert_all_written(&format!("{what} dgamma"), &o.dgamma, poison());
    assert_all_written(&format!("{what} dbeta"), &o.dbeta, poison());
    assert_matches(&format!("{what} f32"), &o, &naive(c), F32_FWD, F32_BWD);
}

#[test]
fn f32_agrees_with_f64_on_the_parallel_path() {
    let mut rng = rng("f32_agrees_with_f64_on_the_parallel_path");
    // 64·784 elements: past the parallel threshold, several row blocks for the column sums.
    f32_against_f64(&case(&mut rng, 64, 784), "64x784");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn f32_agrees_with_f64_on_any_shape(
        rows in prop::sample::select(vec![1usize, 2, 3, 7, 10, 13, 37]),
        cols in prop::sample::select(vec![1usize, 2, 3, 5, 7, 10, 31, 127, 784]),
        seed in any::<u64>(),
    ) {
        let c = case(&mut StdRng::seed_from_u64(seed), rows, cols);
        f32_against_f64(&c, &format!("{rows}x{cols} seed {seed}"));
    }

    #[test]
    fn gradients_match_finite_differences_on_any_shape(
        rows in prop::sample::select(vec![1usize, 2, 3, 5]),
        cols in prop::sample::select(vec![1usize, 2, 3, 7, 10, 31, 127]),
        seed in any::<u64>(),
    ) {
        gradient_check(&fd_case(&mut StdRng::seed_from_u64(seed), rows, cols));
    }
}

/// Long rows with a clearly nonzero mean (offset ±[2, 6], spread 0.5-2 times ±1.7): what a
/// left-to-right f32 row sum handles worst, its partial sums growing to `cols·|mean|`.
fn long_case(rng: &mut StdRng, rows: usize, cols: usize) -> Case {
    let mut c = case(rng, rows, cols);
    for row in c.x.chunks_mut(cols) {
        let sign = if rng.gen::<bool>() { 1.0 } else { -1.0 };
        let (offset, spread) = (
            sign * rng.gen_range(2.0..6.0f32),
            rng.gen_range(0.5..2.0f32),
        );
        for v in row.iter_mut() {
            *v = offset + spread * rng.gen_range(-1.7..1.7f32);
        }
    }
    c
}

/// The worst `|got − want| / scale` in units of [`U`].
fn worst_in_u<T: ToF64>(got: &[T], want: &[f64], scale: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .zip(scale)
        .map(|((g, w), s)| (g.to_f64() - w).abs() / s / U)
        .fold(0.0, f64::max)
}

/// The f32 reference against the f64 reference (the same code in f64, on the same inputs) on
/// rows of 4096 and 65536 columns with a nonzero mean, each output in units of its scale (as in
/// [`naive`]). The row sums accumulate in f64 and are rounded once, so the errors are those of a
/// few f32 roundings per element, whatever `cols`: the limits are [`F32_FWD`]'s and
/// [`F32_BWD`]'s derivation per output (mean 1 u, rstd 3 u, y 8 u, dx 17 u, dgamma 6 u, dbeta
/// 1 u; here mean and variance are even the f64 ones rounded once).
///
/// Observed worst over 5 seeds, 4096 / 65536 columns: mean 0.92 / 0.74 u, rstd 1.7 / 1.2 u,
/// y 1.9 / 2.2 u, dx 1.2 / 1.2 u, dgamma 0.25 / 1.4 u, dbeta 0.41 / 0 u. The left-to-right f32
/// sums this replaced gave, at 65536 columns: mean 68-142 u (4e-6 to 8.4e-6 relative), rstd
/// 42-116 u, y 71-141 u, dx 9-32 u, dgamma 65-130 u; at 4096: mean 35-42 u, y 35-41 u.
#[test]
fn f32_long_rows_are_accurate_to_a_few_roundings() {
    let mut rng = rng("f32_long_rows_are_accurate_to_a_few_roundings");
    let mut failed = Vec::new();
    for (rows, cols) in [(64, 4096), (4, 65536)] {
        let c = long_case(&mut rng, rows, cols);
        let (lo, hi) = (run::<f32>(&c, poison()), run::<f64>(&c, 0.0));
        let (x, gamma, beta, dy) = (wide(&c.x), wide(&c.gamma), wide(&c.beta), wide(&c.dy));
        let n = cols as f64;
        let mut s = Scales {
            dgamma: vec![0.0; cols],
            dbeta: vec![0.0; cols],
            ..Scales::default()
        };
        for r in 0..rows {
            let row = r * cols..(r + 1) * cols;
            let (mu, rs) = (hi.mean[r], hi.rstd[r]);
            let xt: Vec<f64> = x[row.clone()]
                .iter()
                .map(|v| ((v - mu) * rs).abs() + mu.abs() * rs)
                .collect();
            let g: Vec<f64> = (0..cols)
                .map(|j| (dy[r * cols + j] * gamma[j]).abs())
                .collect();
            let mean_g = g.iter().sum::<f64>() / n;
            let mean_gx = g.iter().zip(&xt).map(|(g, x)| g * x).sum::<f64>() / n;
            s.mean.push(mu.abs());
            for j in 0..cols {
                let d = dy[r * cols + j].abs();
                s.y.push(gamma[j].abs() * xt[j] + beta[j].abs());
                s.dx.push(rs * (g[j] + mean_g + xt[j] * mean_gx));
                s.dgamma[j] += d * xt[j];
                s.dbeta[j] += d;
            }
        }
        let e = [
            ("mean", worst_in_u(&lo.mean, &hi.mean, &s.mean), 1.0),
            ("rstd", worst_in_u(&lo.rstd, &hi.rstd, &hi.rstd), 3.0),
            ("y", worst_in_u(&lo.y, &hi.y, &s.y), 8.0),
            ("dx", worst_in_u(&lo.dx, &hi.dx, &s.dx), 17.0),
            ("dgamma", worst_in_u(&lo.dgamma, &hi.dgamma, &s.dgamma), 6.0),
            ("dbeta", worst_in_u(&lo.dbeta, &hi.dbeta, &s.dbeta), 1.0),
        ];
        let shown: Vec<String> = e
            .iter()
            .map(|(name, err, _)| format!("{name} {err:.2} u ({:.1e})", err * U))
            .collect();
        eprintln!("{rows}x{cols} f32 vs f64, worst: {}", shown.join(", "));
        failed.extend(
            e.iter()
                .filter(|(_, err, limit)| err > limit)
                .map(|(name, err, limit)| {
                    format!(
                        "{rows}x{cols} {name}: {err:.2} u from the f64 reference, limit {limit} u"
                    )
                }),
        );
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[derive(Default)]
struct Scales {
    y: Vec<f64>,
    mean: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
}

/// Column sums come out bit-identical on 1, 3 and 8 threads (the row blocks depend on `rows`
/// only), and dx too. A rayon `reduce` over rows could fail this: its split points depend on the
/// thread count and on work stealing. 5003 rows make 251 blocks of 20 rows (more than
/// `MIN_BLOCK_ROWS`), and the sums must still be right: within [`F32_BWD`] of the naive f64 sums
/// (they accumulate in f64, so 5003 rows add nothing to x̂'s own error).
#[test]
fn column_sums_are_bitwise_reproducible_across_thread_counts() {
    let mut rng = rng("column_sums_are_bitwise_reproducible_across_thread_counts");
    let c = case(&mut rng, 5003, 40);
    let (rows, cols, stats) = (c.rows, c.cols, run::<f32>(&c, 0.0));
    let (mean, rstd) = (&stats.mean, &stats.rstd);
    let run = |threads: usize| {
        common::on_threads(threads, || {
            let (mut dx, mut dg, mut db) =
                (vec![0f32; rows * cols], vec![0f32; cols], vec![0f32; cols]);
            backward(
                &c.dy, &c.x, mean, rstd, &c.gamma, rows, cols, &mut dx, &mut dg, &mut db,
            )
            .unwrap();
            (dx, dg, db)
        })
    };
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let one = run(1);
    for threads in [3, 8] {
        let other = run(threads);
        for (name, a, b) in [
            ("dx", &one.0, &other.0),
            ("dgamma", &one.1, &other.1),
            ("dbeta", &one.2, &other.2),
        ] {
            assert!(
                bits(a) == bits(b),
                "{name}: {threads} threads differ from 1 thread"
            );
        }
    }
    let r = naive(&c);
    assert_scaled(
        "5003 rows dgamma",
        &one.1,
        &r.dgamma,
        &r.dgamma_scale,
        F32_BWD,
    );
    assert_scaled("5003 rows dbeta", &one.2, &r.dbeta, &r.dbeta_scale, F32_BWD);
}

#[test]
fn dgamma_and_dbeta_are_overwritten_not_accumulated() {
    let mut rng = rng("dgamma_and_dbeta_are_overwritten_not_accumulated");
    let c = case(&mut rng, 5, 12);
    let (rows, cols, stats) = (c.rows, c.cols, run::<f32>(&c, 0.0));
    let (mean, rstd) = (&stats.mean, &stats.rstd);
    let grads = |start: f32| {
        let (mut dx, mut dg, mut db) = (
            vec![0f32; rows * cols],
            vec![start; cols],
            vec![start; cols],
        );
        backward(
            &c.dy, &c.x, mean, rstd, &c.gamma, rows, cols, &mut dx, &mut dg, &mut db,
        )
        .unwrap();
        (dg, db)
    };
    assert_eq!(grads(0.0), grads(1e3));
    // rows = 0 is an empty batch: the sums over no rows are zeros, still overwritten.
    let (mut dg, mut db, none) = ([7f32; 3], [7f32; 3], &[][..]);
    backward(
        none,
        none,
        none,
        none,
        &[1.0; 3],
        0,
        3,
        &mut [],
        &mut dg,
        &mut db,
    )
    .unwrap();
    assert_eq!((dg, db), ([0.0; 3], [0.0; 3]));
}

/// A constant row (here signed zeros, and 7s) has var = 0: y is beta exactly, dx is finite, and
/// x̂ = 0 leaves dx = rstd·(g − mean(g)) with rstd = 1/sqrt(eps).
#[test]
fn constant_rows_give_beta_and_finite_gradients() {
    let x = [-0.0f64, 0.0, -0.0, 0.0, 7.0, 7.0, 7.0, 7.0];
    let gamma = [1.5, -2.0, 0.5, 1.0];
    let beta = [0.25, -1.0, 0.0, 3.0];
    let (mut y, mut mean, mut rstd) = ([0.0; 8], [0.0; 2], [0.0; 2]);
    forward(&x, 2, 4, &gamma, &beta, EPS, &mut y, &mut mean, &mut rstd).unwrap();
    assert_eq!(y, [0.25, -1.0, 0.0, 3.0, 0.25, -1.0, 0.0, 3.0]);
    assert_eq!(mean, [0.0, 7.0]);
    assert_eq!(rstd, [1.0 / EPS.sqrt(); 2]);
    let dy = [1.0, 0.5, -1.0, 2.0, 0.0, 1.0, 0.0, 0.0];
    let (mut dx, mut dg, mut db) = ([0.0; 8], [0.0; 4], [0.0; 4]);
    backward(
        &dy, &x, &mean, &rstd, &gamma, 2, 4, &mut dx, &mut dg, &mut db,
    )
    .unwrap();
    let want: Vec<f64> = dy
        .chunks(4)
        .flat_map(|dy| {
            let g: Vec<f64> = dy.iter().zip(&gamma).map(|(d, g)| d * g).collect();
            let mg = g.iter().sum::<f64>() / 4.0;
            g.into_iter().map(move |g| (g - mg) / EPS.sqrt())
        })
        .collect();
    assert_close("constant-row dx", &dx, &want, Tolerance::new(1e-12, 1e-12));
    assert_eq!(dg, [0.0; 4]);
    assert_eq!(db, [1.0, 1.5, -1.0, 2.0]);
}

#[test]
fn non_finite_inputs_poison_only_their_row() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let x = [1.0, 2.0, 3.0, 1.0, nan, 3.0, 1.0, inf, 3.0];
    let (gamma, beta) = ([1.0f32; 3], [0.0f32; 3]);
    let (mut y, mut mean, mut rstd) = ([0f32; 9], [0f32; 3], [0f32; 3]);
    forward(&x, 3, 3, &gamma, &beta, 1e-5, &mut y, &mut mean, &mut rstd).unwrap();
    // Row 0 is [1, 2, 3]: mean 2, biased var 2/3, so y = [−1, 0, 1]·rstd.
    let r = 1.0 / (2.0 / 3.0 + EPS).sqrt();
    let mut want = vec![-r, 0.0, r];
    want.extend([f64::NAN; 6]);
    let report = compare(&y, &want, Tolerance::new(1e-6, 1e-6));
    assert!(report.passed(), "{report}");
    assert!(mean[1].is_nan() && mean[2] == f32::INFINITY, "{mean:?}");
}

#[test]
fn eps_must_be_finite_and_positive() {
    for eps in [0.0f32, -0.0, -1e-5, f32::NAN, f32::INFINITY] {
        let (mut y, mut mean, mut rstd) = ([poison(); 4], [poison(); 2], [poison(); 2]);
        let (x, g) = ([1.0f32; 4], [1.0f32; 2]);
        let e = forward(&x, 2, 2, &g, &g, eps, &mut y, &mut mean, &mut rstd).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "eps {eps}: {e}");
        assert!(e.to_string().contains("> 0"), "{e}");
        assert_eq!(
            ampkit::check::unwritten(&y, poison()).len(),
            4,
            "eps {eps}: y was written"
        );
    }
}

/// Fails unless `r` is a ShapeMismatch naming `name` and no output was written.
fn expect_mismatch(name: &str, (r, untouched): (ampkit::Result<()>, bool)) {
    let e = r.unwrap_err();
    let named = e.to_string().contains(&format!("mismatch: {name} has"));
    assert!(
        matches!(e, Error::ShapeMismatch { .. }) && named,
        "{name}: {e}"
    );
    assert!(untouched, "{name}: an output was written");
}

fn all_poisoned(outs: [&[f32]; 3]) -> bool {
    outs.iter()
        .all(|v| ampkit::check::unwritten(v, poison()).len() == v.len())
}

#[test]
fn wrong_lengths_are_shape_mismatches_and_write_nothing() {
    let (rows, cols, ok, short, g) = (2, 3, [0.5f32; 6], [0.5f32; 5], [1.0f32; 3]);
    let fwd = |x: &[f32], gamma: &[f32], beta: &[f32], ny: usize, nm: usize, nr: usize| {
        let (mut y, mut m, mut r) = (vec![poison(); ny], vec![poison(); nm], vec![poison(); nr]);
        let res = forward(x, rows, cols, gamma, beta, 1e-5, &mut y, &mut m, &mut r);
        (res, all_poisoned([&y, &m, &r]))
    };
    expect_mismatch("x", fwd(&short, &g, &g, 6, 2, 2));
    expect_mismatch("gamma", fwd(&ok, &g[..2], &g, 6, 2, 2));
    expect_mismatch("beta", fwd(&ok, &g, &[1.0; 4], 6, 2, 2));
    expect_mismatch("y", fwd(&ok, &g, &g, 7, 2, 2));
    expect_mismatch("mean", fwd(&ok, &g, &g, 6, 1, 2));
    expect_mismatch("rstd", fwd(&ok, &g, &g, 6, 2, 3));

    let bwd = |dy: &[f32], x: &[f32], m: &[f32], s: &[f32], gamma: &[f32], n: [usize; 3]| {
        let (mut dx, mut dg, mut db) = (
            vec![poison(); n[0]],
            vec![poison(); n[1]],
            vec![poison(); n[2]],
        );
        let res = backward(dy, x, m, s, gamma, rows, cols, &mut dx, &mut dg, &mut db);
        (res, all_poisoned([&dx, &dg, &db]))
    };
    let (m, n) = ([1.0f32; 2], [6, 3, 3]);
    expect_mismatch("dy", bwd(&short, &ok, &m, &m, &g, n));
    expect_mismatch("x", bwd(&ok, &short, &m, &m, &g, n));
    expect_mismatch("mean", bwd(&ok, &ok, &m[..1], &m, &g, n));
    expect_mismatch("rstd", bwd(&ok, &ok, &m, &[1.0; 3], &g, n));
    expect_mismatch("gamma", bwd(&ok, &ok, &m, &m, &[1.0; 4], n));
    expect_mismatch("dx", bwd(&ok, &ok, &m, &m, &g, [5, 3, 3]));
    expect_mismatch("dgamma", bwd(&ok, &ok, &m, &m, &g, [6, 2, 3]));
    expect_mismatch("dbeta", bwd(&ok, &ok, &m, &m, &g, [6, 3, 4]));
}

#[test]
fn zero_cols_and_overflowing_shapes_are_invalid() {
    let (none, mut s) = (&[][..], [0f32; 3]);
    let e = forward(none, 3, 0, none, none, 1e-5, &mut [], &mut [0.0; 3], &mut s).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && msg.contains("cols is 0"),
        "{msg}"
    );
    let (mut dg, mut db) = ([0f32; 2], [0f32; 2]);
    let e = backward(
        none,
        none,
        none,
        none,
        &s[..2],
        usize::MAX,
        2,
        &mut [],
        &mut dg,
        &mut db,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && msg.contains("overflows"),
        "{msg}"
    );
}
