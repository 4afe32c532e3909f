//! The CPU LayerNorm tests' references (`layernorm_cpu`): random cases, the library's forward
//! and backward on them, an independent f64 LayerNorm (Welford statistics, the explicit
//! Jacobian) with each element's error scale, and central differences through the library's f64
//! path. Errors are in units of each element's scale: see tests/layernorm_cpu.rs.

use crate::common::assert_scaled;
use ampkit::check::{numerical_gradient, ToF64};
use ampkit::cpu::layernorm::{backward, forward};
use num_traits::Float;
use rand::rngs::StdRng;
use rand::Rng;

pub const EPS: f64 = 1e-5;

pub fn poison() -> f32 {
    f32::from_bits(0xDEAD_BEEF)
}

/// Inputs for one problem: rows with their own offset and spread (so the two-pass variance and
/// the mean subtraction matter), gamma around 1, beta around 0, an upstream gradient.
pub struct Case {
    pub rows: usize,
    pub cols: usize,
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub dy: Vec<f32>,
}

pub fn case(rng: &mut StdRng, rows: usize, cols: usize) -> Case {
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let (offset, spread) = (rng.gen_range(-4.0..4.0f32), rng.gen_range(0.5..2.0f32));
        x.extend((0..cols).map(|_| offset + spread * rng.gen_range(-1.7..1.7f32)));
    }
    let gamma = (0..cols).map(|_| rng.gen_range(0.5..1.5f32)).collect();
    let beta = (0..cols).map(|_| rng.gen_range(-0.5..0.5f32)).collect();
    let dy = (0..rows * cols)
        .map(|_| rng.gen_range(-1.0..1.0f32))
        .collect();
    Case {
        rows,
        cols,
        x,
        gamma,
        beta,
        dy,
    }
}

pub fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| f64::from(v)).collect()
}

/// Everything the library computes for one case.
pub struct Out<T> {
    pub y: Vec<T>,
    pub mean: Vec<T>,
    pub rstd: Vec<T>,
    pub dx: Vec<T>,
    pub dgamma: Vec<T>,
    pub dbeta: Vec<T>,
}

/// Runs the library's forward and backward in `T`, outputs pre-filled with `fill`.
pub fn run<T: Float + Send + Sync>(c: &Case, fill: T) -> Out<T> {
    let t = |v: &[f32]| -> Vec<T> { v.iter().map(|&v| T::from(v).unwrap()).collect() };
    let (x, gamma, beta, dy) = (t(&c.x), t(&c.gamma), t(&c.beta), t(&c.dy));
    let (rows, cols, len) = (c.rows, c.cols, c.rows * c.cols);
    let eps = T::from(EPS).unwrap();
    let mut o = Out {
        y: vec![fill; len],
        mean: vec![fill; rows],
        rstd: vec![fill; rows],
        dx: vec![fill; len],
        dgamma: vec![fill; cols],
        dbeta: vec![fill; cols],
    };
    forward(
        &x,
        rows,
        cols,
        &gamma,
        &beta,
        eps,
        &mut o.y,
        &mut o.mean,
        &mut o.rstd,
    )
    .unwrap();
    backward(
        &dy,
        &x,
        &o.mean,
        &o.rstd,
        &gamma,
        rows,
        cols,
        &mut o.dx,
        &mut o.dgamma,
        &mut o.dbeta,
    )
    .unwrap();
    o
}

/// Textbook LayerNorm and its gradients in f64, independent of the library, each with its error
/// scale.
pub struct Naive {
    pub y: Vec<f64>,
    pub mean: Vec<f64>,
    pub rstd: Vec<f64>,
    pub dx: Vec<f64>,
    pub dgamma: Vec<f64>,
    pub dbeta: Vec<f64>,
    pub y_scale: Vec<f64>,
    pub mean_scale: Vec<f64>,
    pub dx_scale: Vec<f64>,
    pub dgamma_scale: Vec<f64>,
    pub dbeta_scale: Vec<f64>,
}

/// Welford's one-pass mean and variance (other roundings than the library's two-pass sums),
/// `y = gamma·(x − mean)/sqrt(var + eps) + beta`, and the backward through the explicit Jacobian
/// `∂x̂ₖ/∂xⱼ = rstd·(δₖⱼ − 1/n − x̂ₖx̂ⱼ/n)`, O(cols²) per row.
pub fn naive(c: &Case) -> Naive {
    let cols = c.cols;
    let n = cols as f64;
    let (x, gamma, beta, dy) = (wide(&c.x), wide(&c.gamma), wide(&c.beta), wide(&c.dy));
    let mut r = Naive {
        y: vec![],
        mean: vec![],
        rstd: vec![],
        dx: vec![],
        dgamma: vec![0.0; cols],
        dbeta: vec![0.0; cols],
        y_scale: vec![],
        mean_scale: vec![],
        dx_scale: vec![],
        dgamma_scale: vec![0.0; cols],
        dbeta_scale: vec![0.0; cols],
    };
    for (row, dy) in x.chunks(cols).zip(dy.chunks(cols)) {
        let (mut mean, mut m2) = (0.0, 0.0);
        for (k, &v) in row.iter().enumerate() {
            let delta = v - mean;
            mean += delta / (k + 1) as f64;
            m2 += delta * (v - mean);
        }
        let sd = (m2 / n + EPS).sqrt();
        let rstd = 1.0 / sd;
        r.mean.push(mean);
        r.rstd.push(rstd);
        r.mean_scale
            .push(row.iter().map(|v| v.abs()).sum::<f64>() / n);

        let xhat: Vec<f64> = row.iter().map(|v| (v - mean) / sd).collect();
        let g_abs = (0..cols).map(|k| (dy[k] * gamma[k]).abs()).sum::<f64>() / n;
        let gx_abs = (0..cols)
            .map(|k| (dy[k] * gamma[k] * xhat[k]).abs())
            .sum::<f64>()
            / n;
        for j in 0..cols {
            r.y.push(gamma[j] * (row[j] - mean) / sd + beta[j]);
            let jac = |k: usize| rstd * (f64::from(k == j) - 1.0 / n - xhat[k] * xhat[j] / n);
            r.dx.push((0..cols).map(|k| dy[k] * gamma[k] * jac(k)).sum());
            r.dgamma[j] += dy[j] * xhat[j];
            r.dbeta[j] += dy[j];
            // x̂ carries the rounding of `x − mean`, which is relative to |mean|, not |x − mean|.
            let xhat_terms = xhat[j].abs() + mean.abs() * rstd;
            r.y_scale.push(gamma[j].abs() * xhat_terms + beta[j].abs());
            r.dx_scale
                .push(rstd * ((dy[j] * gamma[j]).abs() + g_abs + xhat_terms * gx_abs));
            r.dgamma_scale[j] += dy[j].abs() * xhat_terms;
            r.dbeta_scale[j] += dy[j].abs();
        }
    }
    r
}

/// Checks every output against the naive reference: forward outputs to `fwd`, gradients to `bwd`,
/// in units of their scales (rstd's scale is rstd itself: nothing in it cancels).
pub fn assert_matches<T: ToF64>(what: &str, o: &Out<T>, r: &Naive, fwd: f64, bwd: f64) {
    for (name, got, want, scale, limit) in [
        ("y", &o.y, &r.y, &r.y_scale, fwd),
        ("mean", &o.mean, &r.mean, &r.mean_scale, fwd),
        ("rstd", &o.rstd, &r.rstd, &r.rstd, fwd),
        ("dx", &o.dx, &r.dx, &r.dx_scale, bwd),
        ("dgamma", &o.dgamma, &r.dgamma, &r.dgamma_scale, bwd),
        ("dbeta", &o.dbeta, &r.dbeta, &r.dbeta_scale, bwd),
    ] {
        assert_scaled(&format!("{what} {name}"), got, want, scale, limit);
    }
}

/// Forward in f64 through the library, `y` only (for finite differences).
pub fn forward_y(x: &[f64], rows: usize, cols: usize, gamma: &[f64], beta: &[f64]) -> Vec<f64> {
    let (mut y, mut mean, mut rstd) = (vec![0.0; x.len()], vec![0.0; rows], vec![0.0; rows]);
    forward(
        x, rows, cols, gamma, beta, EPS, &mut y, &mut mean, &mut rstd,
    )
    .unwrap();
    y
}

/// `Σ aᵢbᵢ` with Neumaier's compensated summation. A plain sum of n terms would add rounding noise
/// of ~√n·ε·|partial sums| to each loss evaluation, which central differences divide by 2h: for
/// 2·784 terms that alone is ~1e-8 in the numerical gradient.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let (mut sum, mut carry) = (0.0f64, 0.0f64);
    for (a, b) in a.iter().zip(b) {
        let t = a * b;
        let s = sum + t;
        carry += if sum.abs() >= t.abs() {
            (sum - s) + t
        } else {
            (t - s) + sum
        };
        sum = s;
    }
    sum + carry
}

/// A case whose rows all have a standard deviation in [0.5, 2]. Central differences of a row
/// with variance near 0 (two nearly equal entries in a row of 2) are dominated by truncation error
/// ∝ (step·rstd)², which says nothing about the backward; the f32 tests keep such rows.
pub fn fd_case(rng: &mut StdRng, rows: usize, cols: usize) -> Case {
    let mut c = case(rng, rows, cols);
    for row in c.x.chunks_mut(cols) {
        let n = cols as f64;
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let sd = (row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let target = rng.gen_range(0.5..2.0);
        if sd > 0.0 {
            for v in row.iter_mut() {
                *v = (mean + (f64::from(*v) - mean) * target / sd) as f32;
            }
        }
    }
    c
}

/// Central differences in f64 with h = 1e-5, scaled by max(1, |xᵢ|) ≤ 8: truncation
/// ~(step·rstd)² ≲ 3e-8 of the gradient's scale for rows with std ≥ 0.5, and rounding noise of
/// ~ε·|L|/h absolute, which [`FD_FLOOR`] covers where a gradient's scale is tiny (a dbeta entry
/// from one small dy). Observed worst 1.4e-8 of scale over 30 runs; the limit is 2e-7.
pub const FD_LIMIT: f64 = 2e-7;
pub const FD_FLOOR: f64 = 1e-9;

/// The library's f64 backward against central differences of `L = Σ G∘y` in x, gamma and beta,
/// with G = dy of the case: `|analytic − numerical| ≤ FD_LIMIT·scale + FD_FLOOR` elementwise.
pub fn gradient_check(c: &Case) {
    let (rows, cols) = (c.rows, c.cols);
    let o = run::<f64>(c, 0.0);
    let r = naive(c);
    let (x, gamma, beta, g) = (wide(&c.x), wide(&c.gamma), wide(&c.beta), wide(&c.dy));
    let h = 1e-5;
    let loss =
        |x: &[f64], gamma: &[f64], beta: &[f64]| dot(&g, &forward_y(x, rows, cols, gamma, beta));
    let num_dx = numerical_gradient(|x| loss(x, &gamma, &beta), &x, h);
    let num_dgamma = numerical_gradient(|gm| loss(&x, gm, &beta), &gamma, h);
    let num_dbeta = numerical_gradient(|b| loss(&x, &gamma, b), &beta, h);
    let floored = |s: &[f64]| -> Vec<f64> { s.iter().map(|s| s + FD_FLOOR / FD_LIMIT).collect() };
    let shape = format!("{rows}x{cols} vs finite differences");
    for (name, got, want, scale) in [
        ("dx", &o.dx, &num_dx, &r.dx_scale),
        ("dgamma", &o.dgamma, &num_dgamma, &r.dgamma_scale),
        ("dbeta", &o.dbeta, &num_dbeta, &r.dbeta_scale),
    ] {
        assert_scaled(
            &format!("{shape}: {name}"),
            got,
            want,
            &floored(scale),
            FD_LIMIT,
        );
    }
}
