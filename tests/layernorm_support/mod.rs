//! Shared support of the LayerNorm tests (`layernorm_gpu`, `layernorm_sm90_gpu`; [`naive`] for
//! `layernorm_cpu`): random
//! cases, one forward + backward on the GPU with poisoned outputs, the f64 reference with each
//! element's scale, and the special-value check against the f32 reference.
//!
//! Errors are measured in units of each element's scale, the sum of the magnitudes of the terms
//! that produce it (tests/layernorm_cpu.rs explains why: LayerNorm's outputs cancel). f32 arithmetic
//! with tree sums errs by ≲ (terms per thread + tree depth)·2^-24 ≈ 5e-6 of that scale in the
//! worst case and ~1e-6 typically; the limit is 1e-5, while a wrong formula or index errs by
//! 1e-2 or more.
#![allow(dead_code)]

pub mod naive;

use crate::common::{assert_all_written, assert_scaled};
use ampkit::check::{compare, unwritten, Tolerance};
use ampkit::cpu::layernorm as cpu;
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::layernorm::{backward, forward};
use ampkit::tuning::layernorm::{
    backward_forced, backward_with_warp_limit, forward_forced, BwdForce, FwdForce,
};
use rand::rngs::StdRng;
use rand::Rng;

pub const EPS: f32 = 1e-5;
pub const LIMIT: f64 = 1e-5;

pub fn poison() -> f32 {
    f32::from_bits(0xDEAD_BEEF)
}

pub struct Case {
    pub rows: usize,
    pub cols: usize,
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub dy: Vec<f32>,
}

/// Rows with their own offset and spread (the mean subtraction matters), gamma around 1, beta
/// around 0, a random upstream gradient.
pub fn case(rng: &mut StdRng, rows: usize, cols: usize) -> Case {
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let (offset, spread) = (rng.gen_range(-4.0..4.0f32), rng.gen_range(0.5..2.0f32));
        x.extend((0..cols).map(|_| offset + spread * rng.gen_range(-1.7..1.7f32)));
    }
    Case {
        rows,
        cols,
        x,
        gamma: (0..cols).map(|_| rng.gen_range(0.5..1.5f32)).collect(),
        beta: (0..cols).map(|_| rng.gen_range(-0.5..0.5f32)).collect(),
        dy: (0..rows * cols)
            .map(|_| rng.gen_range(-1.0..1.0f32))
            .collect(),
    }
}

/// Everything the GPU computes for one case, downloaded.
#[derive(PartialEq)]
pub struct Out {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

impl Out {
    pub fn bits(&self) -> Vec<u32> {
        [
            &self.y,
            &self.mean,
            &self.rstd,
            &self.dx,
            &self.dgamma,
            &self.dbeta,
        ]
        .iter()
        .flat_map(|v| v.iter().map(|v| v.to_bits()))
        .collect()
    }
}

/// `v` on the device behind `offset` leading elements, so a view of it starts `4·offset` bytes
/// past an aligned allocation (offset 1 forces the scalar kernels).
pub fn upload_at(gpu: &Gpu, v: &[f32], offset: usize) -> DeviceBuffer<f32> {
    let mut padded = vec![poison(); offset];
    padded.extend_from_slice(v);
    gpu.upload(&padded).unwrap()
}

/// Which backward [`run_gpu`] calls.
#[derive(Clone, Copy, Debug)]
pub enum Bwd {
    /// `backward`: the default plan.
    Default,
    /// `backward_with_warp_limit`: block mode for rows longer than 32·p packs.
    WarpLimit(usize),
    /// `backward_forced`: one launch shape.
    Forced(BwdForce),
}

/// Forward then backward on the GPU, every input and output at element `offset`, outputs
/// poisoned; checks every output element was written.
pub fn run_gpu(gpu: &Gpu, c: &Case, offset: usize, bwd: Bwd) -> Out {
    run_gpu_with(gpu, c, offset, None, bwd)
}

/// [`run_gpu`] with the forward's path forced (`None`: the default plan).
pub fn run_gpu_with(gpu: &Gpu, c: &Case, offset: usize, fwd: Option<FwdForce>, bwd: Bwd) -> Out {
    let (rows, cols, o) = (c.rows, c.cols, offset);
    let up = |v: &[f32]| upload_at(gpu, v, o);
    let (x, gamma, beta, dy) = (up(&c.x), up(&c.gamma), up(&c.beta), up(&c.dy));
    let p = |n: usize| up(&vec![poison(); n]);
    let (mut y, mut mean, mut rstd) = (p(rows * cols), p(rows), p(rows));
    let (mut dx, mut dgamma, mut dbeta) = (p(rows * cols), p(cols), p(cols));
    let (xv, gv, bv) = (x.slice(o..), gamma.slice(o..), beta.slice(o..));
    let (mut yv, mut mv, mut rv) = (y.slice_mut(o..), mean.slice_mut(o..), rstd.slice_mut(o..));
    match fwd {
        None => forward(
            gpu, &xv, rows, cols, &gv, &bv, EPS, &mut yv, &mut mv, &mut rv,
        ),
        Some(f) => forward_forced(
            gpu, &xv, rows, cols, &gv, &bv, EPS, &mut yv, &mut mv, &mut rv, f,
        ),
    }
    .unwrap_or_else(|e| panic!("{rows}x{cols} {fwd:?}: {e}"));
    let (dyv, xv, mv, rv, gv) = (
        dy.slice(o..),
        x.slice(o..),
        mean.slice(o..),
        rstd.slice(o..),
        gamma.slice(o..),
    );
    let (mut dxv, mut dgv, mut dbv) = (
        dx.slice_mut(o..),
        dgamma.slice_mut(o..),
        dbeta.slice_mut(o..),
    );
    let inputs = (&dyv, &xv, &mv, &rv, &gv);
    match bwd {
        Bwd::Default => backward(
            gpu, &dyv, &xv, &mv, &rv, &gv, rows, cols, &mut dxv, &mut dgv, &mut dbv,
        ),
        Bwd::WarpLimit(p) => {
            backward_with_warp_limit(gpu, inputs, rows, cols, &mut dxv, &mut dgv, &mut dbv, p)
        }
        Bwd::Forced(f) => backward_forced(gpu, inputs, rows, cols, &mut dxv, &mut dgv, &mut dbv, f),
    }
    .unwrap_or_else(|e| panic!("{rows}x{cols} {bwd:?}: {e}"));
    let down = |b: &DeviceBuffer<f32>| gpu.download(&b.slice(o..)).unwrap();
    let out = Out {
        y: down(&y),
        mean: down(&mean),
        rstd: down(&rstd),
        dx: down(&dx),
        dgamma: down(&dgamma),
        dbeta: down(&dbeta),
    };
    let what = format!("{rows}x{cols} offset {o}");
    for (name, v) in [
        ("y", &out.y),
        ("mean", &out.mean),
        ("rstd", &out.rstd),
        ("dx", &out.dx),
        ("dgamma", &out.dgamma),
        ("dbeta", &out.dbeta),
    ] {
        assert_all_written(&format!("{what} {name}"), v, poison());
    }
    out
}

pub fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| f64::from(v)).collect()
}

/// Compares one case with the f64 reference (the library's own CPU code in f64), each output in
/// units of its scale.
pub fn check_case(gpu: &Gpu, c: &Case, offset: usize, bwd: Bwd) {
    let got = run_gpu(gpu, c, offset, bwd);
    check_out(&format!("offset {offset} {bwd:?}"), &got, &reference(c));
}

/// The f64 reference's outputs for a case, and each element's scale.
pub struct Reference {
    y: Vec<f64>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
    s: Scales,
    shape: (usize, usize),
}

/// Runs the f64 reference on a case (once per case: several GPU paths compare against it).
pub fn reference(c: &Case) -> Reference {
    let (rows, cols, n) = (c.rows, c.cols, c.cols as f64);
    let (x, gamma, beta, dy) = (wide(&c.x), wide(&c.gamma), wide(&c.beta), wide(&c.dy));
    let (mut y, mut mean, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
    cpu::forward(
        &x,
        rows,
        cols,
        &gamma,
        &beta,
        f64::from(EPS),
        &mut y,
        &mut mean,
        &mut rstd,
    )
    .unwrap();
    let (mut dx, mut dgamma, mut dbeta) =
        (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
    cpu::backward(
        &dy,
        &x,
        &mean,
        &rstd,
        &gamma,
        rows,
        cols,
        &mut dx,
        &mut dgamma,
        &mut dbeta,
    )
    .unwrap();

    // Scales: x̂ carries the rounding of the mean, which is relative to Σ|x|/n, not to |x − mean|.
    let mut s = Scales {
        dgamma: vec![0.0; cols],
        dbeta: vec![0.0; cols],
        ..Scales::default()
    };
    for r in 0..rows {
        let row = r * cols..(r + 1) * cols;
        let mean_abs = x[row.clone()].iter().map(|v| v.abs()).sum::<f64>() / n;
        let (mu, rs) = (mean[r], rstd[r]);
        let xhat_terms = |j: usize| ((x[r * cols + j] - mu) * rs).abs() + mean_abs * rs;
        let g_abs = |j: usize| (dy[r * cols + j] * gamma[j]).abs();
        let mean_g = (0..cols).map(g_abs).sum::<f64>() / n;
        let mean_gx = (0..cols).map(|j| g_abs(j) * xhat_terms(j)).sum::<f64>() / n;
        s.mean.push(mean_abs);
        for j in 0..cols {
            let d = dy[r * cols + j].abs();
            s.y.push(gamma[j].abs() * xhat_terms(j) + beta[j].abs());
            s.dx.push(rs * (g_abs(j) + mean_g + xhat_terms(j) * mean_gx));
            s.dgamma[j] += d * xhat_terms(j);
            s.dbeta[j] += d;
        }
    }
    Reference {
        y,
        mean,
        rstd,
        dx,
        dgamma,
        dbeta,
        s,
        shape: (rows, cols),
    }
}

/// Checks a GPU run against the reference, each output in units of its scale; `what` names the
/// path in failure messages.
pub fn check_out(what: &str, got: &Out, r: &Reference) {
    let (rows, cols) = r.shape;
    let what = format!("{rows}x{cols} {what}");
    for (name, got, want, scale) in [
        ("y", &got.y, &r.y, &r.s.y),
        ("mean", &got.mean, &r.mean, &r.s.mean),
        ("rstd", &got.rstd, &r.rstd, &r.rstd),
        ("dx", &got.dx, &r.dx, &r.s.dx),
        ("dgamma", &got.dgamma, &r.dgamma, &r.s.dgamma),
        ("dbeta", &got.dbeta, &r.dbeta, &r.s.dbeta),
    ] {
        assert_scaled(&format!("{what} {name}"), got, want, scale, LIMIT);
    }
    // Nothing in y or rstd cancels as a whole: the plain relative error is bounded too.
    for (name, got, want) in [("y", &got.y, &r.y), ("rstd", &got.rstd, &r.rstd)] {
        let r = compare(
            got,
            want,
            Tolerance::new(f64::INFINITY, 0.0).with_rel_l2(LIMIT),
        );
        assert!(r.passed(), "{what} {name}: {r}");
    }
}

#[derive(Default)]
pub struct Scales {
    y: Vec<f64>,
    mean: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
}

/// Inputs with NaN, ±inf, −0.0, subnormals and values whose squares overflow f32, 8 rows of
/// `cols`, on the given paths: the GPU must give what the f32 CPU reference gives (the f64
/// reference would not overflow): NaN exactly where it has NaN, the same infinities, finite values
/// close.
pub fn check_specials(gpu: &Gpu, rng: &mut StdRng, cols: usize, fwd: Option<FwdForce>, bwd: Bwd) {
    let rows = 8;
    let mut c = case(rng, rows, cols);
    let row = |r: usize| r * cols..(r + 1) * cols;
    c.x[row(1)][cols / 2] = f32::NAN;
    c.x[row(2)][cols - 1] = f32::INFINITY;
    c.x[row(3)][0] = f32::NEG_INFINITY;
    c.x[row(4)].fill(-0.0);
    // Positive rows, so their means do not cancel (an f32 mean of a zero-centred row of
    // huge values differs between summation orders by more than a relative 1e-5).
    for v in &mut c.x[row(5)] {
        *v = (v.abs() + 1.0) * 1e-40; // subnormal: var underflows, rstd = 1/sqrt(eps)
    }
    for v in &mut c.x[row(6)] {
        *v = (v.abs() + 1.0) * 1e30; // squares overflow: var = inf, rstd = 0, y = beta
    }
    c.x[row(7)][1 % cols] = 3e38;
    c.dy[row(0)][0] = f32::INFINITY;
    c.dy[row(0)][cols - 1] = f32::NAN;
    let got = run_gpu_with(gpu, &c, 0, fwd, bwd);

    let (mut y, mut mean, mut rstd) = (vec![0f32; rows * cols], vec![0f32; rows], vec![0f32; rows]);
    cpu::forward(
        &c.x, rows, cols, &c.gamma, &c.beta, EPS, &mut y, &mut mean, &mut rstd,
    )
    .unwrap();
    let (mut dx, mut dg, mut db) = (vec![0f32; rows * cols], vec![0f32; cols], vec![0f32; cols]);
    cpu::backward(
        &c.dy, &c.x, &mean, &rstd, &c.gamma, rows, cols, &mut dx, &mut dg, &mut db,
    )
    .unwrap();
    // Loose: this test is about which values are NaN or infinite, and accuracy is checked against
    // f64 above (in units of each element's scale; dx cancels to far below its scale, so no
    // tight tolerance on the raw values fits it). The f32 reference sums in f64, so its own error
    // is a few f32 roundings per element.
    let tol = Tolerance::new(1e-3, 1e-3).with_rel_l2(f64::INFINITY);
    for (name, got, want) in [
        ("y", &got.y, &y),
        ("mean", &got.mean, &mean),
        ("rstd", &got.rstd, &rstd),
        ("dx", &got.dx, &dx),
        ("dgamma", &got.dgamma, &dg),
        ("dbeta", &got.dbeta, &db),
    ] {
        let r = compare(got, &wide(want), tol);
        assert!(r.passed(), "cols {cols} {fwd:?} {bwd:?} {name}: {r}");
    }
    assert!(got.y[row(1)].iter().all(|v| v.is_nan()), "a NaN row is NaN");
    assert_eq!(got.mean[2], f32::INFINITY);
    assert_eq!(got.rstd[6], 0.0, "overflowing squares give rstd 0");
    assert_eq!(&got.y[row(4)], &c.beta[..], "a constant row gives beta");
}

/// Whether every output still holds the poison.
pub fn untouched(gpu: &Gpu, outs: &[&DeviceBuffer<f32>]) -> bool {
    outs.iter().all(|o| {
        let v = gpu.download(*o).unwrap();
        unwritten(&v, poison()).len() == v.len()
    })
}
