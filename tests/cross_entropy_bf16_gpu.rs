//! GPU fused softmax-cross-entropy (`ops::cross_entropy`) with bf16 logits or bf16 gradients,
//! against the CPU reference run in f64, with the limits of tests/cross_entropy_gpu.rs (which
//! covers f16 and f32) plus half a bf16 ulp (2^-8 relative) for bf16 gradients: every type pair
//! with bf16 on either side, every portable launch shape and row-group instance, unaligned views;
//! non-finite and huge logits (bf16 has f32's range), bf16 gradients where f16's would overflow,
//! overflow to ±inf at f32's largest values, NaN scales. bf16 gradients are, bit for bit, the f32
//! gradients of the same launch rounded by `half::bf16::from_f32` (the kernels compute in f32 and
//! only the stores differ). The Hopper cluster kernels: tests/cross_entropy_sm90_gpu.rs.
//!
//! Under `AMPKIT_TEST_SANITIZE=1` the random shapes take fewer rows and each row-group instance
//! runs with one block bound (in turn) instead of three.

mod common;
mod cross_entropy_support;
mod softmax_support;

use ampkit::f16;
use ampkit::tuning::cross_entropy::CeForce;
use common::{assert_all_written, gpu, rng, sanitizing, sized};
use cross_entropy_support::*;
use half::bf16;
use rand::Rng;
use softmax_support::*;

fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

#[test]
fn cross_entropy_bf16_matches_the_f64_reference_for_every_type_pair() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy bf16 shapes");
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
    for (i, (rows, classes)) in shapes.into_iter().enumerate() {
        let x = logits(&mut rng, rows, classes, 20.0, 6.0);
        let l = labels(&mut rng, rows, classes);
        let (xb, x16) = (
            to_bf16(&x),
            x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
        );
        // bf16 gradients keep f32's range: the large scale stays (f16 would overflow).
        let scales = [1.0f32, 65536.0, 1e-3];
        let scales = if sanitizing() {
            &scales[i % 3..i % 3 + 1]
        } else {
            &scales[..]
        };
        for &scale in scales {
            let what = format!("{rows}x{classes} scale {scale}");
            let pb = poison_bf16();
            check_ce(
                &gpu,
                &xb,
                &l,
                classes,
                scale,
                pb,
                &format!("{what} bf16→bf16"),
            );
            check_ce(
                &gpu,
                &xb,
                &l,
                classes,
                scale,
                poison(),
                &format!("{what} bf16→f32"),
            );
            check_ce(
                &gpu,
                &x,
                &l,
                classes,
                scale,
                pb,
                &format!("{what} f32→bf16"),
            );
            check_ce(
                &gpu,
                &x16,
                &l,
                classes,
                scale,
                pb,
                &format!("{what} f16→bf16"),
            );
            let s16 = scale.min(1024.0);
            let w = format!("{what} bf16→f16");
            check_ce(&gpu, &xb, &l, classes, s16, poison16(), &w);
        }
    }
    // Unaligned views: the scalar and 4-wide kernels even though classes % 8 == 0.
    let x = to_bf16(&logits(&mut rng, 9, 1024, 5.0, 5.0));
    let l = labels(&mut rng, 9, 1024);
    for offset in [1, 4] {
        let what = format!("offset {offset} bf16→bf16");
        check_ce_with(&gpu, &x, &l, 1024, 8.0, poison_bf16(), &what, offset, None);
    }
}

/// Every portable launch shape (warp or block per row with the row in registers, with and
/// without prefetch; the shared-memory kernel) for each access width (8, 4, 1) of bf16 logits,
/// into bf16 and f32 gradients, and f32 logits into bf16 gradients.
#[test]
fn cross_entropy_bf16_every_forced_shape_matches_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy bf16 forced shapes");
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
        let xb = to_bf16(&x);
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
            let mut ran = |r: Result<f32, ampkit::Error>| match r {
                Ok(_) => checked += 1,
                Err(e) => assert!(e.to_string().contains("does not fit"), "{what}: {e}"),
            };
            let (pb, p32) = (poison_bf16(), poison());
            let w = format!("{what} bf16→bf16");
            ran(try_check_ce(&gpu, &xb, &l, classes, 8.0, pb, &w, offset, f).map(|r| r.0));
            let w = format!("{what} bf16→f32");
            ran(try_check_ce(&gpu, &xb, &l, classes, 8.0, p32, &w, offset, f).map(|r| r.0));
            let w = format!("{what} f32→bf16");
            ran(try_check_ce(&gpu, &x, &l, classes, 8.0, pb, &w, offset, f).map(|r| r.0));
        }
    }
    assert!(checked > 200, "only {checked} shape runs");
    // Launches past 2^18 threads loop over the rows (as in cross_entropy_gpu.rs).
    let (long_rows, long_classes) = sized((301, 8000), (260, 4104));
    for prefetch in [false, true] {
        let shared = |cached| CeForce::Shared {
            threads: 1024,
            cached,
        };
        for (rows, classes, shape) in [
            (9000, 24, CeForce::Warp { p: 1, prefetch }),
            (long_rows, long_classes, CeForce::Block { p: 1, prefetch }),
            (300, 100, shared(5)),
            (257, 2000, shared(100)),
        ] {
            let x = to_bf16(&logits(&mut rng, rows, classes, 20.0, 6.0));
            let l = labels(&mut rng, rows, classes);
            let w = format!("{rows}x{classes} {shape:?} bf16→bf16");
            check_ce_with(
                &gpu,
                &x,
                &l,
                classes,
                8.0,
                poison_bf16(),
                &w,
                0,
                Some(shape),
            );
        }
    }
}

/// Every row-group instance of bf16 logits (warps × packs per thread, with and without
/// prefetch), with the default block bound and with 1 or 3 blocks, so that groups flush their
/// deferred work both mid-loop and at the end.
#[test]
fn cross_entropy_bf16_row_groups_match_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy bf16 row groups");
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
                        bf16_types(&gpu, &mut rng, shape, Some(f), &mut checked);
                    }
                }
            }
        }
        bf16_types(&gpu, &mut rng, shape, None, &mut checked);
    }
    let least = if sanitizing() { 250 } else { 300 };
    assert!(checked > least, "only {checked} shape runs");
}

/// The kernels compute in f32 and differ by output type only in their stores, so a launch's
/// bf16 gradients are its f32 gradients rounded by `bf16::from_f32`, bit for bit (NaN as NaN),
/// and the loss has the same bits; in every default shape (row groups, warp and block rows,
/// shared memory, and clusters on compute capability 9.0), with NaN rows and large values.
#[test]
fn bf16_gradients_are_the_f32_gradients_rounded() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy bf16 rounding");
    let mut shapes = vec![(4096, 10), (64, 1000), (70, 1024), (6, 1031), (3, 20000)];
    if gpu.info().compute_capability == (9, 0) {
        shapes.push((3, 65536));
    }
    for (rows, classes) in shapes {
        let mut x = logits(&mut rng, rows, classes, 20.0, 6.0);
        x[classes + 3] = f32::NAN; // row 1 is NaN
        let l = labels(&mut rng, rows, classes);
        let xb = to_bf16(&x);
        for scale in [1.0f32, 3.0e38, 1e-30] {
            let what = format!("{rows}x{classes} scale {scale}");
            let (loss32, g32) = run_ce(&gpu, &xb, &l, classes, scale, poison(), 0);
            let (loss16, gb) = run_ce(&gpu, &xb, &l, classes, scale, poison_bf16(), 0);
            assert_all_written(&what, &gb, poison_bf16());
            assert_eq!(loss16.to_bits(), loss32.to_bits(), "{what}: loss");
            let canon = |b: u16| if b & 0x7FFF > 0x7F80 { 0x7FC0 } else { b };
            let got: Vec<u16> = gb.iter().map(|h| canon(h.to_bits())).collect();
            let want: Vec<u16> = (g32.iter())
                .map(|&g| canon(bf16::from_f32(g).to_bits()))
                .collect();
            common::assert_bits_eq(&what, &got, &want, |i| g32[i]);
        }
    }
}

/// bf16 gradients keep f32's range: a scale that overflows f16 gradients gives finite bf16 ones;
/// f32's largest gradients round to ±inf (past bf16's largest, 0x7F7F); a NaN scale gives NaN
/// gradients and leaves the loss alone. Logits far past f16's range, ±inf and NaN follow the
/// reference.
#[test]
fn bf16_ranges_and_non_finite_values() {
    let Some(gpu) = gpu() else { return };
    let z = [bf16::ZERO, bf16::ZERO];
    let ln2 = |loss: f32| (f64::from(loss) - std::f64::consts::LN_2).abs() < 2e-7;
    let (loss, d) = run_ce(&gpu, &z, &[0], 2, 131072.0, poison_bf16(), 0);
    assert!(ln2(loss), "{loss}");
    assert_eq!(d, [bf16::from_f32(-65536.0), bf16::from_f32(65536.0)]);
    let x = [bf16::ZERO, bf16::NEG_INFINITY];
    let (loss, d) = run_ce(&gpu, &x, &[1], 2, f32::MAX, poison_bf16(), 0);
    assert_eq!(loss, f32::INFINITY);
    assert_eq!(d, [bf16::INFINITY, bf16::NEG_INFINITY]);
    let (loss, d) = run_ce(&gpu, &z, &[0], 2, f32::NAN, poison_bf16(), 0);
    assert!(ln2(loss) && d.iter().all(|v| v.is_nan()), "{loss} {d:?}");

    // The widest spread whose loss stays finite in f32 (m − x_label = 3.2e38).
    let big = to_bf16(&[1.6e38, 1.6e38, -1.6e38, 0.0, 1e38]);
    for label in [0u32, 2, 4] {
        let what = format!("bf16 logits of ±1.6e38, label {label}");
        check_ce(&gpu, &big, &[label], 5, 1.0, poison_bf16(), &what);
        check_ce(&gpu, &big, &[label], 5, 1.0, poison(), &what);
    }
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    for cols in [3, 2000] {
        let mut x = vec![0.25f32; 5 * cols];
        x[1] = -inf;
        x[cols..2 * cols].fill(-inf);
        x[2 * cols + 1] = nan;
        x[3 * cols + cols - 1] = inf;
        x[4 * cols] = -0.0;
        let xb = to_bf16(&x);
        let l = [0u32, 0, 0, 0, 1];
        let (loss, d) = run_ce(&gpu, &xb, &l, cols, 1.0, poison_bf16(), 0);
        assert!(loss.is_nan());
        assert!(d[cols..4 * cols].iter().all(|v| v.is_nan()));
        assert_eq!(d[1], bf16::ZERO);
        let (loss, d) = run_ce(&gpu, &xb[..cols], &[1], cols, 1.0, poison_bf16(), 0);
        assert_eq!(loss, f32::INFINITY);
        assert_eq!(d[1], bf16::from_f32(-1.0));
    }
}
