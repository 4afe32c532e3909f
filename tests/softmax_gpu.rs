//! GPU softmax and fused softmax-cross-entropy (`ops::softmax`) against the CPU reference run in
//! f64: warp-per-row (1-8 packs per lane, 4-wide and scalar) and block-per-row kernels (row cached
//! in shared memory, and past the shared-memory limit a re-read tail), rows of 1 to 65 537
//! columns, MNIST's 4096×10, unaligned views; f16 and f32 logits into f16 and f32 gradients with
//! the loss scale read from device memory; −inf masking, NaN/+inf rows, huge and tiny logits,
//! signed zeros, f16 overflow under a large scale; out-of-range labels (NaN rows on the device);
//! poisoned outputs, run-to-run bit-identical results and typed errors.
//!
//! Limits: 1e-5 relative (softmax outputs elementwise; gradients in units of the terms that cancel
//! in them, `y·(|dy| + Σ|dy|·y)` and `|grad_scale/rows|·(p + onehot)`; the mean loss). The f32
//! kernels err by ~1e-6: the rounding of `x − max` carries `|x − max|·2^-24` into each exp
//! (logits here span ≤ 24), plus a few roundings per step and tree sums. f16 gradients add half
//! an f16 ulp (2^-11 relative, 2^-25 absolute for subnormals).
//!
//! Under `AMPKIT_TEST_SANITIZE=1` (compute-sanitizer) the random shapes take fewer rows, each
//! loss shape runs at one of the three scales (rotating) instead of all three, and the looping
//! block-per-row shape takes 260×4104 instead of 301×8000; every launch shape and type pair
//! still runs.

mod common;
mod softmax_support;

use ampkit::check::{unwritten, Tolerance};
use ampkit::cpu::softmax as cpu;
use ampkit::cuda::DeviceBuffer;
use ampkit::ops::cross_entropy::softmax_cross_entropy;
use ampkit::ops::softmax::{backward, forward};
use ampkit::tuning::cross_entropy::CeForce;
use ampkit::{f16, Error};
use common::{assert_close, assert_scaled, gpu, rng, sanitizing, sized};
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

/// Softmax and loss give the same bits on a second run, with other data left in the scratch
/// buffer between the runs.
#[test]
fn results_are_bitwise_reproducible() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu softmax reproducible");
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

        // The loss: NaN/+inf rows are NaN, −inf at the label is +inf, a masked −inf elsewhere is 0.
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

/// Fails unless `r` is the expected kind of error mentioning `needle`.
fn expect(r: ampkit::Result<()>, shape: bool, needle: &str) {
    let e = r.unwrap_err();
    let kind = if shape {
        matches!(e, Error::ShapeMismatch { .. })
    } else {
        matches!(e, Error::InvalidArgument { .. })
    };
    assert!(kind && e.to_string().contains(needle), "{needle}: {e}");
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
