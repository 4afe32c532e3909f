//! GPU fused softmax-cross-entropy (`ops::cross_entropy`) against the CPU reference run in f64:
//! f16 and f32 logits into f16 and f32 gradients with the loss scale read from device memory,
//! every portable launch shape (warp or block per row with the row in registers, the
//! shared-memory kernel, row groups of 1-8 warps with deferred per-row work) on odd sizes, rows of
//! 1 to 65 537 classes, MNIST's 4096×10, unaligned views; NaN/+inf rows, huge and tiny logits,
//! signed zeros, f16 overflow under a large scale; out-of-range labels (NaN rows on the device);
//! poisoned outputs, run-to-run bit-identical results and typed errors. The Hopper cluster
//! kernels: tests/cross_entropy_sm90_gpu.rs.
//!
//! Limits: 1e-5 relative (gradients in units of the terms that cancel in them,
//! `|grad_scale/rows|·(p + onehot)`; the mean loss). The f32 kernels err by ~1e-6: the rounding of
//! `x − max` carries `|x − max|·2^-24` into each exp (logits here span ≤ 24), plus a few roundings
//! per step and tree sums. f16 gradients add half an f16 ulp (2^-11 relative, 2^-25 absolute for
//! subnormals).
//!
//! Under `AMPKIT_TEST_SANITIZE=1` (compute-sanitizer) the random shapes take fewer rows, each
//! loss shape runs at one of the three scales (rotating) instead of all three, the looping
//! block-per-row shape takes 260×4104 instead of 301×8000, each row-group instance runs with one
//! of the three block bounds per shape (in turn) instead of all three, plus one block on the
//! 300-row shape (its groups flush mid-loop), and the reproducibility shapes shrink to about 1 M
//! logits; every launch shape, instance and type pair still runs.

mod common;
mod cross_entropy_support;
mod softmax_support;

use ampkit::check::{unwritten, Tolerance};
use ampkit::cuda::DeviceBuffer;
use ampkit::ops::cross_entropy::softmax_cross_entropy;
use ampkit::tuning::cross_entropy::CeForce;
use ampkit::{f16, Error};
use common::{assert_all_written, assert_close, assert_scaled, gpu, rng, sanitizing, sized};
use cross_entropy_support::*;
use rand::Rng;
use softmax_support::*;

#[test]
fn cross_entropy_matches_the_f64_reference_for_every_type_pair() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy shapes");
    let mut shapes = vec![
        (1, 1),
        (7, 7),
        (4096, 10),
        (3, 2),
        (64, 1000),
        (5, 1024),
        (4, 1028),
        (6, 1031),
        (3, 4096),
        (2, 65536),
        (2, 65537),
    ];
    for _ in 0..4 {
        shapes.push((rng.gen_range(1..sized(300, 40)), rng.gen_range(1..3000)));
    }
    const SCALES: [f32; 3] = [1.0, 65536.0, 1e-3];
    for (i, (rows, classes)) in shapes.into_iter().enumerate() {
        let x = logits(&mut rng, rows, classes, 20.0, 6.0);
        let l = labels(&mut rng, rows, classes);
        let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        // Sanitizing: one scale per shape, in turn (the scale is data, not a launch shape).
        let scales = if sanitizing() {
            &SCALES[i % 3..i % 3 + 1]
        } else {
            &SCALES[..]
        };
        for &scale in scales {
            let what = format!("{rows}x{classes} scale {scale}");
            check_ce(
                &gpu,
                &x,
                &l,
                classes,
                scale,
                poison(),
                &format!("{what} f32→f32"),
            );
            check_ce(
                &gpu,
                &x16,
                &l,
                classes,
                scale,
                poison(),
                &format!("{what} f16→f32"),
            );
            // f16 gradients overflow past 65504: keep the scaled gradients in range here.
            let s16 = scale.min(1024.0);
            check_ce(
                &gpu,
                &x16,
                &l,
                classes,
                s16,
                poison16(),
                &format!("{what} f16→f16"),
            );
            check_ce(
                &gpu,
                &x,
                &l,
                classes,
                s16,
                poison16(),
                &format!("{what} f32→f16"),
            );
        }
    }
    // Unaligned views: the scalar kernels even though classes % 4 == 0.
    let (x, l) = (
        logits(&mut rng, 9, 1024, 5.0, 5.0),
        labels(&mut rng, 9, 1024),
    );
    let (_, aligned) = run_ce(&gpu, &x, &l, 1024, 8.0, poison(), 0);
    let (_, shifted) = run_ce(&gpu, &x, &l, 1024, 8.0, poison(), 1);
    let mut want = vec![0.0f64; x.len()];
    ampkit::cpu::cross_entropy::softmax_cross_entropy(&x, &l, 9, 1024, 8.0, &mut want).unwrap();
    let allowed = allowance(&wide(&x), &l, 1024, 8.0, &want, false);
    assert_scaled("aligned dlogits", &aligned, &want, &allowed, 1.0);
    assert_scaled("offset-1 dlogits", &shifted, &want, &allowed, 1.0);
}

/// Every launch shape of the loss on odd sizes, for each access width (8: classes % 8 == 0 and
/// 16-byte aligned; 4: a view 4 elements in; 1: odd classes) and type pair: warp per row with
/// 1-8 packs per lane, block per row with the row in registers, and the shared-memory kernel
/// with the row split between shared memory, registers (8 floats per thread) and a re-read tail.
/// Each shape also writes the mean loss in its one launch (last block done).
#[test]
fn cross_entropy_every_forced_shape_matches_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy forced shapes");
    let mut checked = 0;
    for (rows, classes, offset) in [
        (37, 96, 0),
        (37, 96, 4),
        (21, 250, 0),
        (9, 1000, 0),
        (5, 1031, 0),
        (3, 2056, 4),
        (3, 4096, 0),
    ] {
        let x = logits(&mut rng, rows, classes, 20.0, 6.0);
        let l = labels(&mut rng, rows, classes);
        let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let mut forced = vec![];
        for p in [1, 2, 4, 8] {
            for prefetch in [false, true] {
                forced.push(CeForce::Warp { p, prefetch });
                forced.push(CeForce::Block { p, prefetch });
            }
        }
        for (threads, cached) in [(32, 0), (64, 7), (128, 40), (256, classes / 3), (1024, 5)] {
            forced.push(CeForce::Shared { threads, cached });
        }
        for f in forced {
            let what = format!("{rows}x{classes} offset {offset} {f:?}");
            let f = Some(f);
            // A shape the row does not fit is refused before any launch (the unit tests check
            // which); the four type pairs differ in access width, so each may fit or not.
            let mut ran = |r: Result<(f32, Vec<f32>), Error>| match r {
                Ok(_) => checked += 1,
                Err(e) => assert!(e.to_string().contains("does not fit"), "{what}: {e}"),
            };
            let w = format!("{what} f32→f32");
            ran(try_check_ce(
                &gpu,
                &x,
                &l,
                classes,
                8.0,
                poison(),
                &w,
                offset,
                f,
            ));
            let w = format!("{what} f16→f32");
            ran(try_check_ce(
                &gpu,
                &x16,
                &l,
                classes,
                8.0,
                poison(),
                &w,
                offset,
                f,
            ));
            let w = format!("{what} f16→f16");
            let r = try_check_ce(&gpu, &x16, &l, classes, 8.0, poison16(), &w, offset, f);
            ran(r.map(|(loss, _)| (loss, vec![])));
            let w = format!("{what} f32→f16");
            let r = try_check_ce(&gpu, &x, &l, classes, 8.0, poison16(), &w, offset, f);
            ran(r.map(|(loss, _)| (loss, vec![])));
        }
    }
    assert!(checked > 250, "only {checked} shape runs");
    // Launches past 2^18 threads loop over the rows: each block then adds several rows to its
    // partial sum (warp mode: 9000 rows in at most 1024 blocks of 8; a block per row of 1024
    // threads: at most 256 blocks).
    // (rows, classes, f32 shape, f16 shape): 1024-thread blocks take packs of 4 f32 or 8 f16.
    // Sanitizing: 260×4104 instead of 301×8000 (1026 packs of 4 f32 still need 1024 threads of
    // 2 packs, 513 packs of 8 f16 1024 threads of 1; 260 rows still exceed the 256 blocks).
    let (long_rows, long_classes) = sized((301, 8000), (260, 4104));
    for prefetch in [false, true] {
        let warp = CeForce::Warp { p: 1, prefetch };
        let block = |p| CeForce::Block { p, prefetch };
        let shared = |cached| CeForce::Shared {
            threads: 1024,
            cached,
        };
        for (rows, classes, f32_shape, f16_shape) in [
            (9000, 24, warp, warp),
            (long_rows, long_classes, block(2), block(1)),
            (300, 100, shared(5), shared(5)),
            (257, 2000, shared(100), shared(100)),
        ] {
            let x = logits(&mut rng, rows, classes, 20.0, 6.0);
            let l = labels(&mut rng, rows, classes);
            let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let what = format!("{rows}x{classes}");
            let (f32_shape, f16_shape) = (Some(f32_shape), Some(f16_shape));
            let w = format!("{what} {f32_shape:?} f32→f32");
            check_ce_with(&gpu, &x, &l, classes, 8.0, poison(), &w, 0, f32_shape);
            let w = format!("{what} {f16_shape:?} f16→f16");
            check_ce_with(&gpu, &x16, &l, classes, 8.0, poison16(), &w, 0, f16_shape);
        }
    }
}

/// A label ≥ classes cannot be an error on the device: its row's loss and gradients are NaN
/// (so the mean loss is NaN), and every other row is computed as usual.
#[test]
fn out_of_range_labels_give_nan_rows() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy bad labels");
    for classes in [5, 12, 2000] {
        let x = logits(&mut rng, 4, classes, 3.0, 3.0);
        let bad = [1u32, classes as u32, 0, u32::MAX];
        let (loss, got) = run_ce(&gpu, &x, &bad, classes, 2.0, poison(), 0);
        assert!(loss.is_nan(), "classes {classes}: loss {loss}");
        let good = [1u32, 0, 0, 0];
        let mut want = vec![0.0f64; x.len()];
        ampkit::cpu::cross_entropy::softmax_cross_entropy(&x, &good, 4, classes, 2.0, &mut want)
            .unwrap();
        let allowed = allowance(&wide(&x), &good, classes, 2.0, &want, false);
        for r in [1, 3] {
            want[r * classes..(r + 1) * classes].fill(f64::NAN);
        }
        let what = format!("classes {classes} dlogits");
        assert_scaled(&what, &got, &want, &allowed, 1.0);
    }
}

/// Every row-group instance (warps × packs per thread, with and without prefetch), with the
/// default block bound and with 1 or 3 blocks, so that groups loop over many rows and flush
/// their deferred label gradients and losses both mid-loop (after 32·W rows) and at the end.
#[test]
fn cross_entropy_row_groups_match_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy row groups");
    let mut checked = 0;
    const BLOCKS: [usize; 3] = [0, 1, 3];
    for (i, shape) in [
        (300, 8),
        (37, 96),
        (45, 256),
        (9, 1000),
        (70, 1024),
        (5, 2048),
        (3, 4096),
        (2, 8192),
    ]
    .into_iter()
    .enumerate()
    {
        for (w, warps) in [1, 2, 4, 8].into_iter().enumerate() {
            for (j, p) in [1, 2, 4, 8].into_iter().enumerate() {
                for prefetch in [false, true] {
                    // Sanitizing: one bound per instance, in turn, and on the first shape also
                    // one block (300 rows: its groups flush mid-loop).
                    let k = i + w + j + usize::from(prefetch);
                    let blocks: &[usize] = match (sanitizing(), i) {
                        (false, _) => &BLOCKS,
                        (true, 0) => [&[1, 0], &[1, 3]][k % 2],
                        (true, _) => &BLOCKS[k % 3..k % 3 + 1],
                    };
                    for &blocks in blocks {
                        let f = CeForce::Groups {
                            warps,
                            p,
                            prefetch,
                            blocks,
                        };
                        both_types(&gpu, &mut rng, shape, Some(f), &mut checked);
                    }
                }
            }
        }
        both_types(&gpu, &mut rng, shape, None, &mut checked);
    }
    // Instances too narrow for a shape are skipped; this catches a loop that checks nothing
    // (258 runs when sanitizing, which tries one block bound per instance instead of three).
    let least = if sanitizing() { 250 } else { 300 };
    assert!(checked > least, "only {checked} shape runs");
    // Many rows per group: 2000 rows in one block of 8 one-warp groups (250 rows each).
    for prefetch in [false, true] {
        let f = CeForce::Groups {
            warps: 1,
            p: 4,
            prefetch,
            blocks: 1,
        };
        both_types(&gpu, &mut rng, (2000, 32), Some(f), &mut checked);
    }
}

/// The loss gives the same bits on a second run, with other data left in the scratch buffer
/// between the runs.
#[test]
fn results_are_bitwise_reproducible() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy reproducible");
    for (rows, classes) in [(4096, 10), (5000, 100), (30, 3000), (3, 70000)] {
        let x = logits(&mut rng, rows, classes, 5.0, 5.0);
        let l = labels(&mut rng, rows, classes);
        let first = run_ce(&gpu, &x, &l, classes, 1024.0, poison(), 0);
        let other = logits(&mut rng, 77, 33, 1.0, 1.0);
        run_ce(
            &gpu,
            &other,
            &labels(&mut rng, 77, 33),
            33,
            1.0,
            poison(),
            0,
        );
        let again = run_ce(&gpu, &x, &l, classes, 1024.0, poison(), 0);
        let bits = |(loss, d): &(f32, Vec<f32>)| {
            let mut b = vec![loss.to_bits()];
            b.extend(d.iter().map(|v| v.to_bits()));
            b
        };
        assert!(
            bits(&first) == bits(&again),
            "{rows}x{classes}: another run gave other bits"
        );
    }
}

/// The loss's default shapes (row groups, and on compute capability 9.0 a cluster per row) give
/// the same bits on a second run.
#[test]
fn groups_and_clusters_are_bitwise_reproducible() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu groups clusters reproducible");
    let mut shapes = vec![
        sized((4096, 1024), (1024, 1024)),
        sized((1000, 4096), (250, 4096)),
    ];
    if gpu.info().compute_capability == (9, 0) {
        shapes.push((5, 65536));
    }
    for (rows, classes) in shapes {
        let x: Vec<f16> = logits(&mut rng, rows, classes, 5.0, 5.0)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let l = labels(&mut rng, rows, classes);
        let first = run_ce(&gpu, &x, &l, classes, 1024.0, poison(), 0);
        let again = run_ce(&gpu, &x, &l, classes, 1024.0, poison(), 0);
        let bits = |(loss, d): &(f32, Vec<f32>)| {
            let mut b = vec![loss.to_bits()];
            b.extend(d.iter().map(|v| v.to_bits()));
            b
        };
        // Both runs start from poisoned outputs: equal bits alone would not show a gap.
        assert_all_written(&format!("{rows}x{classes} dlogits"), &first.1, poison());
        assert!(bits(&first) == bits(&again), "{rows}x{classes}: other bits");
    }
}

/// NaN/+inf rows give NaN losses and gradients (so a NaN mean), −inf at the label an infinite
/// loss, a masked −inf elsewhere a zero gradient; in the warp and the block kernels.
#[test]
fn non_finite_logits_follow_the_reference() {
    let Some(gpu) = gpu() else { return };
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    for cols in [3, 2000] {
        let mut x = vec![0.25f32; 5 * cols];
        x[1] = -inf;
        x[cols..2 * cols].fill(-inf);
        x[2 * cols + 1] = nan;
        x[3 * cols + cols - 1] = inf;
        x[4 * cols] = -0.0;
        let l = [0u32, 0, 0, 0, 1];
        let (loss, d) = run_ce(&gpu, &x, &l, cols, 1.0, poison(), 0);
        assert!(loss.is_nan());
        assert!(d[cols..4 * cols].iter().all(|v| v.is_nan()));
        assert_eq!(d[1], 0.0);
        let (loss, d) = run_ce(&gpu, &x[..cols], &[1], cols, 1.0, poison(), 0);
        assert_eq!(loss, f32::INFINITY);
        assert_eq!(d[1], -1.0);
    }
}

/// Logits of ±1e4 in f32 and at f16's ±65504 (exp of either overflows without the max shift),
/// of ±1e-30, and signed zeros.
#[test]
fn huge_tiny_and_signed_zero_logits() {
    let Some(gpu) = gpu() else { return };
    let (loss, d) = run_ce(&gpu, &[1e4f32, 0.0, -1e4], &[1], 3, 1.0, poison(), 0);
    assert_eq!((loss, d), (1e4, vec![1.0, -1.0, 0.0]));
    let (loss, d) = run_ce(&gpu, &[1e-30f32, -1e-30, 0.0], &[2], 3, 1.0, poison(), 0);
    assert!((f64::from(loss) - 3f64.ln()).abs() < 1e-6, "{loss}");
    assert_close(
        "tiny logits",
        &d,
        &[1.0 / 3.0, 1.0 / 3.0, -2.0 / 3.0],
        Tolerance::new(0.0, 1e-6),
    );
    let (loss, d) = run_ce(&gpu, &[-0.0f32; 8], &[2, 3], 4, 1.0, poison(), 0);
    assert!((f64::from(loss) - 4f64.ln()).abs() < 1e-6, "{loss}");
    assert_eq!(
        d,
        [0.125, 0.125, -0.375, 0.125, 0.125, 0.125, 0.125, -0.375]
    );

    let x16: Vec<f16> = [65504.0f32, 65504.0, -65504.0, 0.0, 65472.0]
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    for label in [0u32, 2, 4] {
        let what = format!("f16 logits near 65504, label {label}");
        check_ce(&gpu, &x16, &[label], 5, 1.0, poison16(), &what);
        check_ce(&gpu, &x16, &[label], 5, 1.0, poison(), &what);
    }
}

/// f16 gradients overflow to ±inf under a large device-side scale (what the inf check must see);
/// 65504 is still finite; a NaN scale gives NaN gradients and leaves the loss alone.
#[test]
fn device_scale_overflows_f16_gradients_to_inf() {
    let Some(gpu) = gpu() else { return };
    let x = [f16::ZERO, f16::ZERO];
    let ln2 = |loss: f32| (f64::from(loss) - std::f64::consts::LN_2).abs() < 2e-7;
    let (loss, d) = run_ce(&gpu, &x, &[0], 2, 131072.0, poison16(), 0);
    assert!(ln2(loss), "{loss}");
    assert_eq!(d, [f16::NEG_INFINITY, f16::INFINITY]);
    let (_, d) = run_ce(&gpu, &x, &[0], 2, 131008.0, poison16(), 0);
    assert_eq!(d, [f16::from_f32(-65504.0), f16::from_f32(65504.0)]);
    let (loss, d) = run_ce(&gpu, &x, &[0], 2, f32::NAN, poison16(), 0);
    assert!(ln2(loss) && d.iter().all(|v| v.is_nan()), "{loss} {d:?}");
}

#[test]
fn bad_arguments_are_typed_errors_and_write_nothing() {
    let Some(gpu) = gpu() else { return };
    let buf = |n: usize| gpu.upload(&vec![poison(); n]).unwrap();
    let (ok, short, mut out) = (buf(6), buf(5), buf(7));
    let labels = gpu.upload(&[0u32, 1, 2]).unwrap();
    let (scale, scale2) = (gpu.upload(&[1.0f32]).unwrap(), buf(2));
    let mut loss = buf(1);
    let mut ce =
        |x: &DeviceBuffer<f32>, n: usize, rows, classes, s: &DeviceBuffer<f32>, d: usize| {
            softmax_cross_entropy(
                &gpu,
                x,
                &labels.slice(..n),
                rows,
                classes,
                s,
                &mut out.slice_mut(..d),
                &mut loss,
            )
        };
    expect(ce(&short, 2, 2, 3, &scale, 6), true, "logits has 5");
    expect(ce(&ok, 2, 2, 3, &scale, 7), true, "dlogits has 7");
    expect(ce(&ok, 3, 2, 3, &scale, 6), true, "labels has 3");
    expect(
        ce(&ok, 2, 2, 3, &scale2, 6),
        true,
        "grad_scale must be one f32",
    );
    expect(ce(&ok, 0, 0, 3, &scale, 0), false, "rows is 0");
    expect(ce(&ok, 1, 1, 0, &scale, 0), false, "classes is 0");
    let mut two = buf(2);
    let e = softmax_cross_entropy(
        &gpu,
        &ok,
        &labels.slice(..2),
        2,
        3,
        &scale,
        &mut out.slice_mut(..6),
        &mut two,
    )
    .map(|_| ());
    expect(e, true, "loss must be one f32");
    for (name, b) in [("out", &out), ("loss", &loss), ("two", &two)] {
        let v = gpu.download(b).unwrap();
        assert_eq!(unwritten(&v, poison()).len(), v.len(), "{name} was written");
    }
}
