//! GPU LayerNorm (`ops::layernorm`) against the CPU reference run in f64: every launch shape (warp
//! per row with 1-8 packs per lane, float4 and scalar; block per row with the row cached in
//! shared memory and, past the shared-memory limit, a re-read tail; the backward's block mode and
//! its two-pass path past 8192 columns), rows and columns of 1, 7, 10, 784, 4096 and 65 536+, odd
//! sizes and unaligned views; inf, NaN, −0.0, subnormal and huge inputs; poisoned outputs; run-to-
//! run bit-identical results; typed errors before any launch.
//!
//! Errors are measured in units of each element's scale, the sum of the magnitudes of the terms
//! that produce it (tests/layernorm_cpu.rs explains why: LayerNorm's outputs cancel). f32 arithmetic
//! with tree sums errs by ≲ (terms per thread + tree depth)·2^-24 ≈ 5e-6 of that scale in the
//! worst case and ~1e-6 typically; the limit is 1e-5, while a wrong formula or index errs by
//! 1e-2 or more.
//!
//! Under `AMPKIT_TEST_SANITIZE=1` (compute-sanitizer) the many-row cases shrink (4096×512 to
//! 512×512, random shapes to < 64 rows) and the forced backward shapes take one `min_rows` each
//! (in turn, so every value still runs on every shape); every launch shape still runs, the long
//! rows included.

mod common;
mod layernorm_support;

use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::layernorm::{backward, forward};
use ampkit::tuning::layernorm::{backward_forced, BwdForce};
use ampkit::Error;
use common::{gpu, rng, sanitizing, sized};
use layernorm_support::*;
use rand::Rng;

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
        sized((4096, 512), (512, 512)),
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
        shapes.push((rng.gen_range(1..sized(300, 64)), rng.gen_range(1..3000)));
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
    const MIN_ROWS: [usize; 4] = [1, 3, 16, 33];
    for (i, (rows, cols, offset)) in [
        (37, 100, 0),
        (37, 100, 1),
        (29, 508, 0),
        (70, 1000, 0),
        (13, 1023, 0),
        (11, 2052, 0),
        (5, 4100, 1),
        (3, 8188, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let c = case(&mut rng, rows, cols);
        let vec = if cols % 4 == 0 && offset == 0 { 4 } else { 1 };
        let packs = cols / vec;
        for (j, p) in [1, 2, 4, 8].into_iter().enumerate() {
            for prefetch in [false, true] {
                // Sanitizing: one of the four per (p, prefetch), a different one per shape.
                let k = i + 2 * j + usize::from(prefetch);
                let min_rows = if sanitizing() {
                    &MIN_ROWS[k % 4..k % 4 + 1]
                } else {
                    &MIN_ROWS[..]
                };
                for &min_rows in min_rows {
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
    assert!(checked > sized(100, 60), "only {checked} shapes ran");
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

/// Inputs with NaN, ±inf, −0.0, subnormals and values whose squares overflow f32 give what the
/// f32 CPU reference gives (`check_specials`), on the default paths.
#[test]
fn special_values_behave_like_the_f32_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu layernorm specials");
    for cols in [10, 784, 1028, 8196] {
        check_specials(&gpu, &mut rng, cols, None, Bwd::Default);
    }
}

/// Forward and backward give the same bits on a second run, with other work in the scratch buffer
/// in between (a different shape's backward overwrites it), for each backward path.
#[test]
fn results_are_bitwise_reproducible() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu layernorm reproducible");
    let (many, more) = sized(((4096, 512), (3001, 100)), ((512, 512), (1001, 100)));
    for (rows, cols) in [many, more, (40, 3000), (6, 9000)] {
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
