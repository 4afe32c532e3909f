//! Tests of [`super`]: the fused input stage against the stages it replaces, and the weight
//! casts that ride along with it against each cast alone.

use super::{gather_cast_transpose, gather_cast_transpose_with_weights, WeightCast, KERNELS};
use crate::cpu::fp8::{transpose_ld, Fp8Format, ScalingState};
use crate::cuda::{test_gpu, Gpu};
use crate::ops::augment::{gather_batch, EpochSource, Pixels, TestEpoch, PALETTE};
use crate::ops::fp8::Fp8Scales;
use half::bf16;

/// The fused stage against the two it replaces (the bf16 batch, then its E4M3 cast and
/// transpose) on the same device inputs: every byte of q and qt, the amax and the labels
/// equal, for palette codes and f32 pixels, shifted and not, an odd batch from an odd
/// cursor, more than one tile row, widths with and without 4-byte stores, an image index
/// past the dataset (a NaN row) and a cursor past the plan (poison). Outputs start as
/// garbage.
fn matches_unfused(gpu: &Gpu, side: usize, n: usize) {
    let count = 41usize;
    let inputs = side * side;
    // Codes over a palette with −0.0, a NaN payload, an infinity, bf16's rounding ties,
    // subnormals and values the scale saturates.
    let mut palette: Vec<f32> = (0..PALETTE).map(|k| k as f32 / 255.0).collect();
    palette[3] = -0.0;
    palette[4] = f32::from_bits(0x7FC0_0ABC);
    palette[5] = f32::INFINITY;
    palette[6] = 70000.0;
    palette[7] = f32::from_bits(0x3F80_8000); // 1 + 2^-8: a bf16 tie
    palette[8] = 1e-41; // f32 subnormal
    palette[9] = -3.0;
    let plan_len = n + 20;
    let mut epoch = TestEpoch::new(palette, count, inputs, plan_len, 9);
    epoch.order[12] = count as u32 + 5; // past the dataset: that sample's row is NaN
    let device = epoch.upload(gpu);
    let scale = gpu.upload(&[300.0f32]).unwrap();
    let ld = transpose_ld(n).unwrap();
    for cursor_at in [9usize, plan_len - n + 1] {
        let cursor = gpu.upload(&[0u32, cursor_at as u32]).unwrap();
        for coded in [true, false] {
            for s in [side, 0] {
                let src = device.source(coded, s);
                let run = |fused: bool| {
                    let mut q = gpu.upload(&vec![0xABu8; n * inputs]).unwrap();
                    let mut qt = gpu.upload(&vec![0xCDu8; inputs * ld]).unwrap();
                    let mut amax = gpu.upload(&[0.25f32]).unwrap();
                    let mut lab = gpu.upload(&vec![7u32; n]).unwrap();
                    if fused {
                        gather_cast_transpose(
                            gpu, &src, &cursor, n, &scale, &mut q, &mut qt, &mut amax, &mut lab,
                        )
                        .unwrap();
                    } else {
                        let mut x = gpu.alloc_zeros::<bf16>(n * inputs).unwrap();
                        gather_batch(gpu, &src, &cursor, &mut x, &mut lab, n).unwrap();
                        crate::ops::fp8::cast_transpose(
                            gpu,
                            Fp8Format::E4M3,
                            &x,
                            n,
                            inputs,
                            &scale,
                            Some(&mut q),
                            &mut qt,
                            &mut amax,
                        )
                        .unwrap();
                    }
                    let amax = gpu.download(&amax).unwrap()[0].to_bits();
                    (
                        gpu.download(&q).unwrap(),
                        gpu.download(&qt).unwrap(),
                        amax,
                        gpu.download(&lab).unwrap(),
                    )
                };
                let (fused, unfused) = (run(true), run(false));
                let what = format!("side {s}, coded {coded}, cursor {cursor_at}, n {n}");
                assert_eq!(fused.0, unfused.0, "q: {what}");
                assert_eq!(fused.1, unfused.1, "qt: {what}");
                assert_eq!(fused.2, unfused.2, "amax bits: {what}");
                assert_eq!(fused.3, unfused.3, "labels: {what}");
                if cursor_at + n > plan_len {
                    assert!(fused.3.iter().all(|&l| l == u32::MAX), "poisoned labels");
                } else {
                    // Something saturated, something NaN: the cases above were reached.
                    assert!(fused.0.contains(&0x7E) && fused.0.contains(&0x7F), "{what}");
                }
            }
        }
    }
}

#[test]
fn fused_input_stage_equals_gather_then_cast_bit_for_bit() {
    let Some(gpu) = test_gpu() else { return };
    matches_unfused(&gpu, 28, 71); // 784 inputs: 4-byte stores; two tile rows
    matches_unfused(&gpu, 7, 23); // 49 inputs: byte stores
}

/// Weights cast in the input stage's launch against each cast alone: every byte of q and
/// qt and every amax equal, the batch's outputs as the stage alone writes them. Six weights:
/// four ride along (odd shapes, one tile and less, NaN, infinities, subnormals, values near
/// 65504 and past E4M3's range), one has 10 columns (no 4-element accesses) and one is past
/// the launch's four: those two are cast alone first. Outputs start as garbage; some amaxes
/// start above what their weights hold.
#[test]
fn weights_cast_with_the_input_stage_equal_their_casts_alone() {
    let Some(gpu) = test_gpu() else { return };
    let (side, n) = (28usize, 71usize);
    let inputs = side * side;
    let epoch = TestEpoch::new(
        (0..PALETTE).map(|k| k as f32 / 255.0).collect(),
        41,
        inputs,
        n + 20,
        5,
    );
    let device = epoch.upload(&gpu);
    let src = device.source(true, side);
    let cursor = gpu.upload(&[0u32, 7]).unwrap();
    let shapes = [
        (100usize, 68usize),
        (64, 64),
        (33, 20),
        (17, 10),
        (5, 4),
        (16, 16),
    ];
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let masters: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(r, c)| {
            let mut w: Vec<f32> = (0..r * c)
                .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0)
                .collect();
            let specials = [
                f32::NAN,
                f32::INFINITY,
                -f32::INFINITY,
                1e-41,
                65504.0,
                -1e6,
            ];
            if r != 64 {
                // (One weight keeps none: its amax stays below the history's.)
                for (k, v) in specials.into_iter().enumerate() {
                    let len = w.len();
                    w[(7 * k + 3) % len] = v;
                }
            }
            w
        })
        .collect();
    let scales_of = [7.5f32, 0.5, 300.0, 1.0, 2.0, 0.125];
    let tensors = 1 + shapes.len();
    let states: Vec<ScalingState> = (0..tensors)
        .map(|t| ScalingState {
            history: vec![if t == 2 { 4.0e6 } else { 0.25 }, 1.0, 2.0],
            scale: if t == 0 { 300.0 } else { scales_of[t - 1] },
        })
        .collect();
    let fresh_scales = || {
        let mut s = Fp8Scales::new(&gpu, &vec![Fp8Format::E4M3; tensors], 3).unwrap();
        s.upload(&gpu, &states).unwrap();
        s
    };
    let ld = transpose_ld(n).unwrap();
    let garbage = |len: usize| gpu.upload(&vec![0xABu8; len]).unwrap();
    let w_dev: Vec<_> = masters.iter().map(|w| gpu.upload(w).unwrap()).collect();

    // Together.
    let mut scales = fresh_scales();
    let (mut q, mut qt) = (garbage(n * inputs), garbage(inputs * ld));
    let mut lab = gpu.upload(&vec![7u32; n]).unwrap();
    let mut wq: Vec<_> = shapes.iter().map(|&(r, c)| garbage(r * c)).collect();
    let mut wqt: Vec<_> = shapes
        .iter()
        .map(|&(r, c)| garbage(c * transpose_ld(r).unwrap()))
        .collect();
    let mut jobs: Vec<WeightCast<'_>> = wq
        .iter_mut()
        .zip(wqt.iter_mut())
        .enumerate()
        .map(|(k, (q, qt))| WeightCast {
            tensor: 1 + k,
            src: w_dev[k].slice(..),
            rows: shapes[k].0,
            cols: shapes[k].1,
            q: q.slice_mut(..),
            qt: qt.slice_mut(..),
        })
        .collect();
    gather_cast_transpose_with_weights(
        &gpu,
        &src,
        &cursor,
        n,
        &mut scales,
        0,
        &mut q,
        &mut qt,
        &mut lab,
        &mut jobs,
    )
    .unwrap();
    drop(jobs);
    let together = scales.download(&gpu).unwrap();

    // Alone.
    let mut alone = fresh_scales();
    let (mut q1, mut qt1) = (garbage(n * inputs), garbage(inputs * ld));
    let mut lab1 = gpu.upload(&vec![7u32; n]).unwrap();
    {
        let (scale, mut amax) = alone.scale_and_amax(0).unwrap();
        gather_cast_transpose(
            &gpu, &src, &cursor, n, &scale, &mut q1, &mut qt1, &mut amax, &mut lab1,
        )
        .unwrap();
    }
    assert_eq!(
        gpu.download(&q).unwrap(),
        gpu.download(&q1).unwrap(),
        "batch q"
    );
    assert_eq!(
        gpu.download(&qt).unwrap(),
        gpu.download(&qt1).unwrap(),
        "batch qt"
    );
    assert_eq!(
        gpu.download(&lab).unwrap(),
        gpu.download(&lab1).unwrap(),
        "labels"
    );
    for (k, &(r, c)) in shapes.iter().enumerate() {
        let (mut q1, mut qt1) = (garbage(r * c), garbage(c * transpose_ld(r).unwrap()));
        let (scale, mut amax) = alone.scale_and_amax(1 + k).unwrap();
        let q_dyn: &mut dyn cudarc::driver::DevicePtrMut<u8> = &mut q1;
        crate::ops::fp8::cast_transpose(
            &gpu,
            Fp8Format::E4M3,
            &w_dev[k],
            r,
            c,
            &scale,
            Some(q_dyn),
            &mut qt1,
            &mut amax,
        )
        .unwrap();
        let what = format!("weight {k} ({r}×{c})");
        assert_eq!(
            gpu.download(&wq[k]).unwrap(),
            gpu.download(&q1).unwrap(),
            "q: {what}"
        );
        assert_eq!(
            gpu.download(&wqt[k]).unwrap(),
            gpu.download(&qt1).unwrap(),
            "qt: {what}"
        );
    }
    let alone = alone.download(&gpu).unwrap();
    for (t, (a, b)) in together.iter().zip(&alone).enumerate() {
        let bits = |s: &ScalingState| s.history.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "tensor {t}'s amax history");
        assert_eq!(a.scale.to_bits(), b.scale.to_bits(), "tensor {t}'s scale");
    }
    // The cases were reached: a NaN amax, an amax the weight raised, one it did not.
    assert!(together[1].history[0].is_nan(), "weight 0 holds a NaN");
    assert_eq!(
        together[2].history[0], 4.0e6,
        "weight 1's amax stays above its values"
    );
    assert!(
        together[6].history[0].is_nan(),
        "weight 5 (cast alone) holds a NaN"
    );
}

#[test]
fn rejects_a_weight_of_the_wrong_length_before_launching() {
    let Some(gpu) = test_gpu() else { return };
    let epoch = TestEpoch::new((0..PALETTE).map(|k| k as f32).collect(), 3, 16, 8, 1);
    let device = epoch.upload(&gpu);
    let src = device.source(true, 4);
    let cursor = gpu.upload(&[0u32, 0]).unwrap();
    let mut scales = Fp8Scales::new(&gpu, &[Fp8Format::E4M3; 2], 1).unwrap();
    let (mut q, mut qt) = (
        gpu.alloc_zeros::<u8>(64).unwrap(),
        gpu.alloc_zeros::<u8>(256).unwrap(),
    );
    let mut lab = gpu.alloc_zeros::<u32>(4).unwrap();
    // One 8×8 weight of `len` values, its tensor `tensor`, with a qt of `qt_len` bytes.
    let mut rejected = |tensor: usize, len: usize, qt_len: usize| {
        let w = gpu.alloc_zeros::<f32>(len).unwrap();
        let mut wq = gpu.alloc_zeros::<u8>(64).unwrap();
        let mut wqt = gpu.alloc_zeros::<u8>(qt_len).unwrap();
        let mut jobs = [WeightCast {
            tensor,
            src: w.slice(..),
            rows: 8,
            cols: 8,
            q: wq.slice_mut(..),
            qt: wqt.slice_mut(..),
        }];
        gather_cast_transpose_with_weights(
            &gpu,
            &src,
            &cursor,
            4,
            &mut scales,
            0,
            &mut q,
            &mut qt,
            &mut lab,
            &mut jobs,
        )
        .unwrap_err()
    };
    let err = rejected(1, 63, 128); // a weight one value short
    assert!(matches!(err, crate::Error::ShapeMismatch { .. }), "{err}");
    let err = rejected(2, 64, 128); // a tensor the scales do not hold
    assert!(matches!(err, crate::Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn every_kernel_name_exists_in_both_modules() {
    for module in [&crate::kernels::FP8_TRAIN, &crate::kernels::FP8_TRAIN_PDL] {
        for name in KERNELS.concat() {
            assert!(module.ptx.contains(&format!(".entry {name}(")), "{name}");
        }
    }
}

#[test]
fn rejects_short_buffers_before_launching() {
    let Some(gpu) = test_gpu() else { return };
    let (codes, palette) = (
        gpu.alloc_zeros::<u8>(16).unwrap(),
        gpu.alloc_zeros(PALETTE).unwrap(),
    );
    let labels = gpu.alloc_zeros::<u32>(4).unwrap();
    let order = gpu.alloc_zeros::<u32>(4).unwrap();
    let shifts = gpu.alloc_zeros::<i32>(8).unwrap();
    let src = EpochSource {
        images: Pixels::Coded {
            codes: &codes,
            palette: &palette,
        },
        labels: &labels,
        order: &order,
        shifts: &shifts,
        plan_len: 4,
        inputs: 4,
        side: 2,
        background: 0.0,
    };
    let cursor = gpu.alloc_zeros::<u32>(2).unwrap();
    let scale = gpu.upload(&[1.0f32]).unwrap();
    let mut amax = gpu.alloc_zeros::<f32>(1).unwrap();
    let mut lab = gpu.alloc_zeros::<u32>(4).unwrap();
    let mut q = gpu.alloc_zeros::<u8>(16).unwrap();
    let mut qt_short = gpu.alloc_zeros::<u8>(4 * 15).unwrap();
    let err = gather_cast_transpose(
        &gpu,
        &src,
        &cursor,
        4,
        &scale,
        &mut q,
        &mut qt_short,
        &mut amax,
        &mut lab,
    )
    .unwrap_err();
    assert!(matches!(err, crate::Error::ShapeMismatch { .. }), "{err}");
    let mut q_short = gpu.alloc_zeros::<u8>(15).unwrap();
    let mut qt = gpu.alloc_zeros::<u8>(4 * 16).unwrap();
    let err = gather_cast_transpose(
        &gpu,
        &src,
        &cursor,
        4,
        &scale,
        &mut q_short,
        &mut qt,
        &mut amax,
        &mut lab,
    )
    .unwrap_err();
    assert!(matches!(err, crate::Error::ShapeMismatch { .. }), "{err}");
}
