//! GPU LayerNorm (`ops::layernorm`) against the CPU reference run in f64: every launch shape (warp
//! per row with 1-8 packs per lane, float4 and scalar; block per row with the row cached in
//! shared memory and, past the shared-memory limit, a re-read tail; the backward's block mode and
//! its two-pass path past 8192 columns), rows and columns of 1, 7, 10, 784, 4096 and 65 536+, odd
//! sizes and unaligned views; inf, NaN, −0.0, subnormal and huge inputs; poisoned outputs; run-to-
//! run bit-identical results; typed errors before any launch.
//!
//! Errors are measured in units of each element's scale, the sum of the magnitudes of the terms
//! that produce it (tests/layernorm.rs explains why: LayerNorm's outputs cancel). f32 arithmetic
//! with tree sums errs by ≲ (terms per thread + tree depth)·2^-24 ≈ 5e-6 of that scale in the
//! worst case and ~1e-6 typically; the limit is 1e-5, while a wrong formula or index errs by
//! 1e-2 or more.

mod common;

use ampkit::check::{compare, unwritten, Tolerance};
use ampkit::cpu::layernorm as cpu;
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::layernorm::{
    backward, backward_forced, backward_with_warp_limit, forward, BwdForce,
};
use ampkit::Error;
use common::{assert_all_written, assert_scaled, gpu, rng};
use rand::rngs::StdRng;
use rand::Rng;

const EPS: f32 = 1e-5;
const LIMIT: f64 = 1e-5;

fn poison() -> f32 {
    f32::from_bits(0xDEAD_BEEF)
}

struct Case {
    rows: usize,
    cols: usize,
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    dy: Vec<f32>,
}

/// Rows with their own offset and spread (the mean subtraction matters), gamma around 1, beta
/// around 0, a random upstream gradient.
fn case(rng: &mut StdRng, rows: usize, cols: usize) -> Case {
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
struct Out {
    y: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

impl Out {
    fn bits(&self) -> Vec<u32> {
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
fn upload_at(gpu: &Gpu, v: &[f32], offset: usize) -> DeviceBuffer<f32> {
    let mut padded = vec![poison(); offset];
    padded.extend_from_slice(v);
    gpu.upload(&padded).unwrap()
}

/// Which backward [`run_gpu`] calls.
#[derive(Clone, Copy, Debug)]
enum Bwd {
    /// `backward`: the default plan.
    Default,
    /// `backward_with_warp_limit`: block mode for rows longer than 32·p packs.
    WarpLimit(usize),
    /// `backward_forced`: one launch shape.
    Forced(BwdForce),
}

/// Forward then backward on the GPU, every input and output at element `offset`, outputs
/// poisoned; checks every output element was written.
fn run_gpu(gpu: &Gpu, c: &Case, offset: usize, bwd: Bwd) -> Out {
    let (rows, cols, o) = (c.rows, c.cols, offset);
    let up = |v: &[f32]| upload_at(gpu, v, o);
    let (x, gamma, beta, dy) = (up(&c.x), up(&c.gamma), up(&c.beta), up(&c.dy));
    let p = |n: usize| up(&vec![poison(); n]);
    let (mut y, mut mean, mut rstd) = (p(rows * cols), p(rows), p(rows));
    let (mut dx, mut dgamma, mut dbeta) = (p(rows * cols), p(cols), p(cols));
    forward(
        gpu,
        &x.slice(o..),
        rows,
        cols,
        &gamma.slice(o..),
        &beta.slice(o..),
        EPS,
        &mut y.slice_mut(o..),
        &mut mean.slice_mut(o..),
        &mut rstd.slice_mut(o..),
    )
    .unwrap();
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

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| f64::from(v)).collect()
}

/// Compares one case with the f64 reference (the library's own CPU code in f64), each output in
/// units of its scale.
fn check_case(gpu: &Gpu, c: &Case, offset: usize, bwd: Bwd) {
    let got = run_gpu(gpu, c, offset, bwd);
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
    let what = format!("{rows}x{cols} offset {offset} {bwd:?}");
    for (name, got, want, scale) in [
        ("y", &got.y, &y, &s.y),
        ("mean", &got.mean, &mean, &s.mean),
        ("rstd", &got.rstd, &rstd, &rstd),
        ("dx", &got.dx, &dx, &s.dx),
        ("dgamma", &got.dgamma, &dgamma, &s.dgamma),
        ("dbeta", &got.dbeta, &dbeta, &s.dbeta),
    ] {
        assert_scaled(&format!("{what} {name}"), got, want, scale, LIMIT);
    }
    // Nothing in y or rstd cancels as a whole: the plain relative error is bounded too.
    for (name, got, want) in [("y", &got.y, &y), ("rstd", &got.rstd, &rstd)] {
        let r = compare(
            got,
            want,
            Tolerance::new(f64::INFINITY, 0.0).with_rel_l2(LIMIT),
        );
        assert!(r.passed(), "{what} {name}: {r}");
    }
}

#[derive(Default)]
struct Scales {
    y: Vec<f64>,
    mean: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
}

#[test]
fn every_launch_shape_matches_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu layernorm shapes");
    // (rows, cols): warp mode with 1, 2, 4, 8 packs per lane, float4 and scalar; block rows with
    // everything cached; backward block mode; the two-pass backward and the re-read tail of the
    // forward (65 536 floats exceed any GPU's 227 KB of shared memory per block); many rows, so
    // many partial rows in the column sums.
    let mut shapes = vec![
        (1, 1),
        (7, 7),
        (10, 10),
        (1, 784),
        (64, 784),
        (33, 512),
        (5, 1024),
        (3, 1023),
        (5, 1028),
        (4096, 512),
        (4096, 10),
        (9, 4096),
        (2, 8192),
        (3, 8196),
        (2, 8193),
        (3, 65536),
        (2, 65537),
        (5000, 40),
        (20000, 8),
        (1100, 3),
        (7, 1),
    ];
    for _ in 0..6 {
        shapes.push((rng.gen_range(1..300), rng.gen_range(1..3000)));
    }
    for (rows, cols) in shapes {
        check_case(&gpu, &case(&mut rng, rows, cols), 0, Bwd::Default);
    }
    // Unaligned views take the scalar kernels even when cols % 4 == 0.
    for (rows, cols) in [(64, 784), (3, 4096), (2, 12288)] {
        check_case(&gpu, &case(&mut rng, rows, cols), 1, Bwd::Default);
    }
    // The backward's block mode on rows that would fit a warp (the benchmark's alternative).
    for (rows, cols) in [(33, 512), (5, 1024), (300, 784), (9, 100)] {
        check_case(&gpu, &case(&mut rng, rows, cols), 0, Bwd::WarpLimit(1));
    }
}

/// Every backward launch shape the benchmark compares (warp or block per row, 1-8 packs per
/// thread, with and without prefetch, 1-33 rows per block, the two-pass path on short rows), on
/// odd sizes, float4 and scalar: the same function as the reference whichever shape runs.
#[test]
fn every_forced_backward_shape_matches_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu layernorm forced shapes");
    let mut checked = 0;
    for (rows, cols, offset) in [
        (37, 100, 0),
        (37, 100, 1),
        (29, 508, 0),
        (70, 1000, 0),
        (13, 1023, 0),
        (11, 2052, 0),
        (5, 4100, 1),
        (3, 8188, 0),
    ] {
        let c = case(&mut rng, rows, cols);
        let vec = if cols % 4 == 0 && offset == 0 { 4 } else { 1 };
        let packs = cols / vec;
        for p in [1, 2, 4, 8] {
            for prefetch in [false, true] {
                for min_rows in [1, 3, 16, 33] {
                    let block_threads = packs.div_ceil(p).next_power_of_two().max(32);
                    let bound = match (prefetch, vec * p) {
                        (false, 0..=8) | (true, 0..=4) => 1024,
                        (false, 9..=16) | (true, 5..=8) => 512,
                        _ => 256,
                    };
                    let mut forced = vec![];
                    if packs <= 32 * p {
                        forced.push(BwdForce::Warp {
                            p,
                            prefetch,
                            min_rows,
                        });
                    }
                    if block_threads <= bound {
                        forced.push(BwdForce::Block {
                            p,
                            prefetch,
                            min_rows,
                        });
                    }
                    for f in forced {
                        check_case(&gpu, &c, offset, Bwd::Forced(f));
                        checked += 1;
                    }
                }
            }
        }
        check_case(
            &gpu,
            &c,
            offset,
            Bwd::Forced(BwdForce::TwoPass { min_rows: 5 }),
        );
    }
    assert!(checked > 100, "only {checked} shapes ran");
    // A shape the row does not fit is an error, not a launch.
    let c = case(&mut rng, 2, 200);
    let up = |v: &[f32]| gpu.upload(v).unwrap();
    let (x, dy, gamma) = (up(&c.x), up(&c.dy), up(&c.gamma));
    let (mean, rstd) = (up(&[0.0; 2]), up(&[1.0; 2]));
    let (mut dx, mut dg, mut db) = (
        up(&[poison(); 400]),
        up(&[poison(); 200]),
        up(&[poison(); 200]),
    );
    let warp = BwdForce::Warp {
        p: 1,
        prefetch: false,
        min_rows: 1,
    };
    let inputs = (&dy, &x, &mean, &rstd, &gamma);
    let e = backward_forced(&gpu, inputs, 2, 200, &mut dx, &mut dg, &mut db, warp).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(untouched(&gpu, &[&dx, &dg, &db]));
}

/// Inputs with NaN, ±inf, −0.0, subnormals and values whose squares overflow f32: the GPU must
/// give what the f32 CPU reference gives (the f64 reference would not overflow): NaN exactly
/// where it has NaN, the same infinities, finite values close.
#[test]
fn special_values_behave_like_the_f32_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu layernorm specials");
    for cols in [10, 784, 1028, 8196] {
        let rows = 8;
        let mut c = case(&mut rng, rows, cols);
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
        let got = run_gpu(&gpu, &c, 0, Bwd::Default);

        let (mut y, mut mean, mut rstd) =
            (vec![0f32; rows * cols], vec![0f32; rows], vec![0f32; rows]);
        cpu::forward(
            &c.x, rows, cols, &c.gamma, &c.beta, EPS, &mut y, &mut mean, &mut rstd,
        )
        .unwrap();
        let (mut dx, mut dg, mut db) =
            (vec![0f32; rows * cols], vec![0f32; cols], vec![0f32; cols]);
        cpu::backward(
            &c.dy, &c.x, &mean, &rstd, &c.gamma, rows, cols, &mut dx, &mut dg, &mut db,
        )
        .unwrap();
        // Loose: this test is about which values are NaN or infinite; the f32 reference's own
        // left-to-right sums over 8196 columns err by ~1e-5 of dx's magnitude, and accuracy is
        // checked against f64 above.
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
            assert!(r.passed(), "cols {cols} {name}: {r}");
        }
        assert!(got.y[row(1)].iter().all(|v| v.is_nan()), "a NaN row is NaN");
        assert_eq!(got.mean[2], f32::INFINITY);
        assert_eq!(got.rstd[6], 0.0, "overflowing squares give rstd 0");
        assert_eq!(&got.y[row(4)], &c.beta[..], "a constant row gives beta");
    }
}

/// Bit-identical results run to run, with the shared scratch buffer holding other data in
/// between (a different shape's backward overwrites it), for each backward path.
#[test]
fn results_are_bitwise_reproducible() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu layernorm reproducible");
    for (rows, cols) in [(4096, 512), (3001, 100), (40, 3000), (6, 9000)] {
        let c = case(&mut rng, rows, cols);
        let first = run_gpu(&gpu, &c, 0, Bwd::Default);
        let other = case(&mut rng, 77, 333);
        run_gpu(&gpu, &other, 0, Bwd::Default);
        let again = run_gpu(&gpu, &c, 0, Bwd::Default);
        assert!(
            first.bits() == again.bits(),
            "{rows}x{cols}: a second run gave other bits"
        );
    }
}

/// rows = 0 is an empty batch: nothing to write in the forward, zeros in dgamma and dbeta.
#[test]
fn an_empty_batch_writes_zero_column_sums() {
    let Some(gpu) = gpu() else { return };
    let none = gpu.alloc_zeros::<f32>(1).unwrap();
    let gamma = gpu.upload(&[1.0f32; 5]).unwrap();
    let mut dgamma = gpu.upload(&[poison(); 5]).unwrap();
    let mut dbeta = gpu.upload(&[poison(); 5]).unwrap();
    let mut outs: Vec<DeviceBuffer<f32>> = (0..4).map(|_| gpu.alloc_zeros(1).unwrap()).collect();
    let [y, mean, rstd, dx] = &mut outs[..] else {
        unreachable!()
    };
    let e = none.slice(0..0);
    forward(
        &gpu,
        &e,
        0,
        5,
        &gamma,
        &gamma,
        EPS,
        &mut y.slice_mut(0..0),
        &mut mean.slice_mut(0..0),
        &mut rstd.slice_mut(0..0),
    )
    .unwrap();
    backward(
        &gpu,
        &e,
        &e,
        &e,
        &e,
        &gamma,
        0,
        5,
        &mut dx.slice_mut(0..0),
        &mut dgamma,
        &mut dbeta,
    )
    .unwrap();
    assert_eq!(gpu.download(&dgamma).unwrap(), vec![0.0; 5]);
    assert_eq!(gpu.download(&dbeta).unwrap(), vec![0.0; 5]);
}

/// Runs the forward (rows 2, cols 3) with buffers of the given lengths (x, gamma, beta, y, mean,
/// rstd) and `eps`; returns its error and whether every output still holds the poison.
fn forward_error(gpu: &Gpu, lens: [usize; 6], eps: f32) -> (Error, bool) {
    let b: Vec<DeviceBuffer<f32>> = lens
        .iter()
        .map(|&n| gpu.upload(&vec![poison(); n]).unwrap())
        .collect();
    let [x, gamma, beta, y, mean, rstd] = &b[..] else {
        unreachable!()
    };
    let (mut y, mut mean, mut rstd) = (y.clone(), mean.clone(), rstd.clone());
    let e = forward(gpu, x, 2, 3, gamma, beta, eps, &mut y, &mut mean, &mut rstd).unwrap_err();
    (e, untouched(gpu, &[&y, &mean, &rstd]))
}

/// The backward with buffers of the given lengths (dy, x, mean, rstd, gamma, dx, dgamma, dbeta).
fn backward_error(gpu: &Gpu, lens: [usize; 8]) -> (Error, bool) {
    let b: Vec<DeviceBuffer<f32>> = lens
        .iter()
        .map(|&n| gpu.upload(&vec![0.5f32; n]).unwrap())
        .collect();
    let [dy, x, mean, rstd, gamma, ..] = &b[..] else {
        unreachable!()
    };
    let fresh = |n: usize| gpu.upload(&vec![poison(); n]).unwrap();
    let (mut dx, mut dg, mut db) = (fresh(lens[5]), fresh(lens[6]), fresh(lens[7]));
    let e = backward(
        gpu, dy, x, mean, rstd, gamma, 2, 3, &mut dx, &mut dg, &mut db,
    )
    .unwrap_err();
    (e, untouched(gpu, &[&dx, &dg, &db]))
}

fn untouched(gpu: &Gpu, outs: &[&DeviceBuffer<f32>]) -> bool {
    outs.iter().all(|o| {
        let v = gpu.download(*o).unwrap();
        unwritten(&v, poison()).len() == v.len()
    })
}

fn expect(what: &str, (e, untouched): (Error, bool), shape: bool) {
    let kind = if shape {
        matches!(e, Error::ShapeMismatch { .. })
    } else {
        matches!(e, Error::InvalidArgument { .. })
    };
    assert!(kind && e.to_string().contains(what), "{what}: {e}");
    assert!(untouched, "{what}: an output was written");
}

/// Wrong lengths are `ShapeMismatch` naming the buffer, a bad eps is `InvalidArgument`, both
/// before anything is written; so is `cols = 0`.
#[test]
fn bad_arguments_are_typed_errors_and_write_nothing() {
    let Some(gpu) = gpu() else { return };
    let ok = [6, 3, 3, 6, 2, 2];
    for (i, name) in ["x", "gamma", "beta", "y", "mean", "rstd"]
        .iter()
        .enumerate()
    {
        let mut lens = ok;
        lens[i] += 1;
        expect(
            &format!("{name} has {}", lens[i]),
            forward_error(&gpu, lens, EPS),
            true,
        );
    }
    for eps in [0.0, -0.0, -1e-5, f32::NAN, f32::INFINITY] {
        expect("> 0", forward_error(&gpu, ok, eps), false);
    }
    let ok = [6, 6, 2, 2, 3, 6, 3, 3];
    let names = ["dy", "x", "mean", "rstd", "gamma", "dx", "dgamma", "dbeta"];
    for (i, name) in names.iter().enumerate() {
        let mut lens = ok;
        lens[i] -= 1;
        expect(
            &format!("{name} has {}", lens[i]),
            backward_error(&gpu, lens),
            true,
        );
    }
    let one = gpu.upload(&[1.0f32; 3]).unwrap();
    let mut out = gpu.upload(&[poison(); 3]).unwrap();
    let mut m = gpu.upload(&[poison(); 3]).unwrap();
    let mut r = gpu.upload(&[poison(); 3]).unwrap();
    let e = forward(
        &gpu,
        &one.slice(0..0),
        3,
        0,
        &one.slice(0..0),
        &one.slice(0..0),
        EPS,
        &mut out.slice_mut(0..0),
        &mut m,
        &mut r,
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("cols is 0"),
        "{e}"
    );
    assert!(untouched(&gpu, &[&out, &m, &r]));
}
