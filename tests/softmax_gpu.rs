//! GPU softmax (`ops::softmax`) against the CPU reference run in f64: warp-per-row (1-8 packs per
//! lane, 4-wide and scalar) and block-per-row kernels (row cached in shared memory, and past the
//! shared-memory limit a re-read tail), rows of 1 to 65 537 columns, MNIST's 4096×10, unaligned
//! views; −inf masking, NaN/+inf rows, huge logits, signed zeros; poisoned outputs, run-to-run
//! bit-identical results and typed errors. The Hopper cluster kernels: tests/softmax_sm90_gpu.rs;
//! the fused loss: tests/cross_entropy_gpu.rs.
//!
//! Limits: 1e-5 relative (softmax outputs elementwise; gradients in units of the terms that cancel
//! in them, `y·(|dy| + Σ|dy|·y)`). The f32 kernels err by ~1e-6: the rounding of `x − max` carries
//! `|x − max|·2^-24` into each exp (logits here span ≤ 24), plus a few roundings per step and tree
//! sums.
//!
//! Under `AMPKIT_TEST_SANITIZE=1` (compute-sanitizer) the random shapes take fewer rows; every
//! launch shape still runs.

mod common;
mod softmax_support;

use ampkit::check::{unwritten, Tolerance};
use ampkit::cpu::softmax as cpu;
use ampkit::cuda::DeviceBuffer;
use ampkit::ops::softmax::{backward, forward};
use common::{assert_close, gpu, rng, sized};
use rand::Rng;
use softmax_support::*;

#[test]
fn softmax_matches_the_f64_reference_on_every_launch_shape() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu softmax shapes");
    let mut shapes = vec![
        (1, 1),
        (7, 7),
        (10, 10),
        (4096, 10),
        (3, 128),
        (5, 256),
        (6, 512),
        (9, 1000),
        (5, 1024),
        (4, 257),
        (4, 1028),
        (33, 784),
        (3, 4096),
        (2, 40000),
        (2, 65536),
        (2, 65537),
        // 48 KB of cached row exactly (forward 12288 floats, backward 6144 × 2 arrays): with the
        // kernels' static buffers past the 48 KB that needs no opt-in.
        (3, 12288),
        (4, 6144),
    ];
    for _ in 0..6 {
        shapes.push((rng.gen_range(1..sized(200, 40)), rng.gen_range(1..5000)));
    }
    for (rows, cols) in shapes {
        check_softmax(&gpu, &mut rng, rows, cols, 0);
    }
    for (rows, cols) in [(33, 784), (3, 4096)] {
        check_softmax(&gpu, &mut rng, rows, cols, 1);
    }
}

/// Softmax gives the same bits on a second run.
#[test]
fn results_are_bitwise_reproducible() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu softmax reproducible");
    for (rows, classes) in [(4096, 10), (5000, 100), (30, 3000), (3, 70000)] {
        let x = logits(&mut rng, rows, classes, 5.0, 5.0);
        let xd = gpu.upload(&x).unwrap();
        let softmax = |y: &mut DeviceBuffer<f32>| {
            forward(&gpu, &xd, rows, classes, y).unwrap();
            gpu.download(y).unwrap()
        };
        let mut y = gpu.alloc_zeros::<f32>(x.len()).unwrap();
        let a: Vec<u32> = softmax(&mut y).iter().map(|v| v.to_bits()).collect();
        let b: Vec<u32> = softmax(&mut y).iter().map(|v| v.to_bits()).collect();
        assert!(a == b, "{rows}x{classes}: softmax bits differ between runs");
    }
}

/// −inf masks to exactly 0; a row of all −inf, or holding NaN or +inf, is NaN throughout; the
/// other rows are untouched; in the warp and the block kernels.
#[test]
fn non_finite_rows_follow_the_reference() {
    let Some(gpu) = gpu() else { return };
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    for cols in [3, 2000] {
        let mut x = vec![0.25f32; 5 * cols];
        x[1] = -inf;
        x[cols..2 * cols].fill(-inf);
        x[2 * cols + 1] = nan;
        x[3 * cols + cols - 1] = inf;
        x[4 * cols] = -0.0;
        let xd = gpu.upload(&x).unwrap();
        let mut y = gpu.upload(&vec![poison(); x.len()]).unwrap();
        forward(&gpu, &xd, 5, cols, &mut y).unwrap();
        let got = gpu.download(&y).unwrap();
        let mut want = vec![0.0f64; x.len()];
        cpu::forward(&wide(&x), 5, cols, &mut want).unwrap();
        assert_close(&format!("{cols} cols"), &got, &want, SOFTMAX_FWD);
        assert_eq!(got[1], 0.0, "−inf masks to exactly 0");
        assert!(got[cols..4 * cols].iter().all(|v| v.is_nan()));
        let mut dx = gpu.upload(&vec![poison(); x.len()]).unwrap();
        backward(
            &gpu,
            &y,
            &gpu.upload(&vec![1.0f32; x.len()]).unwrap(),
            5,
            cols,
            &mut dx,
        )
        .unwrap();
        let dx = gpu.download(&dx).unwrap();
        assert!(
            dx[..cols].iter().all(|v| v.abs() < 1e-6)
                && dx[cols..4 * cols].iter().all(|v| v.is_nan())
        );
    }
}

/// Logits of ±1e4 (exp overflows without the max shift).
#[test]
fn huge_logits() {
    let Some(gpu) = gpu() else { return };
    let e1 = (-1.0f64).exp();
    let xd = gpu.upload(&[1e4f32, 1e4 - 1.0, -1e4, 0.0]).unwrap();
    let mut y = gpu.upload(&[poison(); 4]).unwrap();
    forward(&gpu, &xd, 1, 4, &mut y).unwrap();
    let want = [1.0 / (1.0 + e1), e1 / (1.0 + e1), 0.0, 0.0];
    assert_close(
        "softmax of ±1e4",
        &gpu.download(&y).unwrap(),
        &want,
        Tolerance::new(0.0, 1e-6),
    );
}

#[test]
fn bad_arguments_are_typed_errors_and_write_nothing() {
    let Some(gpu) = gpu() else { return };
    let buf = |n: usize| gpu.upload(&vec![poison(); n]).unwrap();
    let (ok, short, mut out) = (buf(6), buf(5), buf(7));
    expect(
        forward(&gpu, &short, 2, 3, &mut out.slice_mut(..6)),
        true,
        "x has 5",
    );
    expect(
        forward(&gpu, &ok, 2, 3, &mut out.slice_mut(..5)),
        true,
        "y has 5",
    );
    expect(
        backward(&gpu, &short, &ok, 2, 3, &mut out.slice_mut(..6)),
        true,
        "y has 5",
    );
    expect(
        backward(&gpu, &ok, &short, 2, 3, &mut out.slice_mut(..6)),
        true,
        "dy has 5",
    );
    expect(backward(&gpu, &ok, &ok, 2, 3, &mut out), true, "dx has 7");
    expect(
        forward(&gpu, &ok.slice(..0), 2, 0, &mut out.slice_mut(..0)),
        false,
        "cols is 0",
    );
    let v = gpu.download(&out).unwrap();
    assert_eq!(unwritten(&v, poison()).len(), v.len(), "out was written");
}
