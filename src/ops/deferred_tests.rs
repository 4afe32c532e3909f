//! The training step's deferred K-split reduce: a weight-gradient GEMM that leaves its K-split
//! slices unreduced ([`crate::ops::gemm::gemm_deferred`]) followed by the unscale that adds them
//! and records the step ([`super::unscale_and_record`]) must give the gradients, the flag, the
//! record and the cursors of the unfused path (the GEMM with its own reduce, then
//! [`super::unscale_and_check`]) bit for bit: the slices are added in the same order. Shapes of
//! the MLP step that split K on the H100 (512×784 and the unaligned 10×512 over 4096 rows) and
//! one that does not; finite gradients and gradients with an inf. In-crate: both ops are the
//! training step's. Also the step's other source of gradients: tensors checked by the kernel
//! that wrote them, whose flag words the unscale folds in without reading the tensors.

use super::{unscale_and_check, unscale_and_record, GradSource};
use crate::cuda::test_gpu;
use crate::ops::gemm::{gemm, gemm_deferred, planned_splits, Epilogue};
use crate::ops::scaler::{RecordTarget, RECORD};
use crate::shape::{GemmShape, Layout};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn deferred_reduce_in_the_unscale_matches_the_gemm_reduce() {
    let Some(gpu) = test_gpu() else { return };
    let sanitizing = std::env::var("AMPKIT_TEST_SANITIZE").is_ok_and(|v| v == "1");
    let rows = if sanitizing { 1024 } else { 4096 };
    let mut rng = StdRng::seed_from_u64(17);
    for (m, n, k, inf) in [
        (512, 784, rows, false),
        (10, 512, rows, false),
        (10, 512, rows, true),
        (64, 96, 64, false),
    ] {
        let what = format!("{m}x{n} over {k}{}", if inf { " with an inf" } else { "" });
        let shape = GemmShape::new(Layout::Wgrad, m, n, k);
        let mut dy: Vec<f16> = (0..k * m)
            .map(|_| f16::from_f32(rng.gen_range(-8.0f32..8.0)))
            .collect();
        if inf {
            dy[k * m / 2] = f16::INFINITY;
        }
        let x: Vec<f16> = (0..k * n)
            .map(|_| f16::from_f32(rng.gen_range(0.0f32..2.0)))
            .collect();
        let (dy, x) = (gpu.upload(&dy).unwrap(), gpu.upload(&x).unwrap());
        let scale_value = 1024.0f32;
        // The unfused path.
        let mut want = gpu.alloc_zeros::<f32>(m * n).unwrap();
        gemm(&gpu, shape, &dy, &x, &Epilogue::plain(), &mut want).unwrap();
        let scale = gpu.upload(&[scale_value]).unwrap();
        let mut want_flag = gpu.alloc_zeros::<f32>(1).unwrap();
        unscale_and_check(&gpu, &mut [want.slice_mut(..)], &scale, &mut want_flag).unwrap();
        // The deferred path: poisoned gradient, slices, then the unscale that adds them.
        let aligned = m % 8 == 0 && n % 8 == 0;
        let planned = planned_splits(&gpu, shape, aligned);
        let mut partials = gpu.alloc_zeros::<f32>(planned.max(1) * m * n).unwrap();
        let mut got = gpu
            .upload(&vec![f32::from_bits(0x7FA5_5A5A); m * n])
            .unwrap();
        // Asked to check: only a gradient written whole is (K-split slices are not: their sum
        // is, by the unscale).
        let mut word = gpu.alloc_zeros::<u32>(1).unwrap();
        let splits = gemm_deferred(
            &gpu,
            shape,
            &dy,
            &x,
            &mut got,
            &mut partials,
            Some(&mut word),
        )
        .unwrap();
        assert_eq!(splits, planned, "{what}: slices");
        let checked_inf = splits == 1 && inf;
        assert_eq!(
            gpu.download(&word).unwrap(),
            [u32::from(checked_inf)],
            "{what}: word"
        );
        let mut scale = gpu.upload(&[scale_value]).unwrap();
        let mut flag = gpu.alloc_zeros::<f32>(1).unwrap();
        let loss = gpu.upload(&[2.5f32]).unwrap();
        let mut records = gpu.alloc_zeros::<f32>(2 * RECORD).unwrap();
        let mut mask = gpu.alloc_zeros::<u32>(2).unwrap();
        let mut cursor = gpu.upload(&[1u32, 100]).unwrap();
        let mut pending = [if splits > 1 {
            GradSource::Partials(partials.slice(..), splits)
        } else {
            GradSource::Whole
        }];
        let mut target = RecordTarget {
            loss: &loss,
            records: &mut records,
            cursor: &mut cursor,
            advance: 64,
        };
        unscale_and_record(
            &gpu,
            &mut [got.slice_mut(..)],
            &mut pending,
            &mut scale,
            &mut flag,
            &mut mask,
            None,
            &mut target,
            None,
        )
        .unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let (g, w) = (gpu.download(&got).unwrap(), gpu.download(&want).unwrap());
        // NaN payloads aside (an inf meets a finite partial in a different operation).
        let same = g
            .iter()
            .zip(&w)
            .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
        assert!(same, "{what}: gradients differ");
        assert_eq!(
            bits(gpu.download(&flag).unwrap()),
            bits(gpu.download(&want_flag).unwrap())
        );
        assert_eq!(
            gpu.download(&flag).unwrap()[0],
            if inf { 1.0 } else { 0.0 },
            "{what}"
        );
        // Record 1 (the cursor said one was written): loss, the scale the step ran with, flag,
        // the mask (tensor 0 when the gradient held the inf), which the record cleared.
        let r = gpu.download(&records).unwrap();
        assert_eq!(
            &r[RECORD..RECORD + 3],
            &[2.5, scale_value, if inf { 1.0 } else { 0.0 }],
            "{what}"
        );
        let words = [r[RECORD + 3].to_bits(), r[RECORD + 4].to_bits()];
        assert_eq!(words, [u32::from(inf), 0], "{what}: mask in the record");
        assert_eq!(gpu.download(&mask).unwrap(), [0, 0], "{what}: mask cleared");
        assert_eq!(
            gpu.download(&cursor).unwrap(),
            vec![2, 164],
            "{what}: cursors"
        );
        assert_eq!(
            gpu.download(&scale).unwrap(),
            vec![scale_value],
            "{what}: static scale"
        );
    }
}

/// Gradients checked where they were written ([`GradSource::Checked`]) at scale 1: their flag
/// words, not their values, decide found_inf and their mask bits; the words are zeroed for the
/// next step; a list of checked tensors only still records the step (one block, no chunks).
#[test]
fn checked_gradients_are_folded_from_their_flags_not_read() {
    let Some(gpu) = test_gpu() else { return };
    let mut rng = StdRng::seed_from_u64(29);
    // (what, tensor 0 whole?, flags of tensors 1 and 2, expected mask)
    for (what, whole0, flags, want) in [
        ("clean", true, [0u32, 0], 0u32),
        ("tensor 2 flagged", true, [0, 1], 0b100),
        ("both flagged", true, [3, 1], 0b110),
        ("all checked, tensor 1 flagged", false, [1, 0], 0b010),
        ("all checked, clean", false, [0, 0], 0),
    ] {
        let lens = [5003usize, 3000, 4096];
        let mut data: Vec<Vec<f32>> = (lens.iter())
            .map(|&n| (0..n).map(|_| rng.gen_range(-4.0f32..4.0)).collect())
            .collect();
        // Tensor 1 holds a NaN its writer did not report: a read would flag it.
        data[1][17] = f32::NAN;
        if !whole0 {
            data[0][3] = f32::INFINITY; // unread too when tensor 0 is checked
        }
        let mut grads: Vec<_> = data.iter().map(|d| gpu.upload(d).unwrap()).collect();
        let mut words: Vec<_> = (0..3)
            .map(|t| {
                let w = if t == 0 { 0 } else { flags[t - 1] };
                gpu.upload(&[w]).unwrap()
            })
            .collect();
        let mut scale = gpu.upload(&[1.0f32]).unwrap();
        let mut flag = gpu.alloc_zeros::<f32>(1).unwrap();
        let loss = gpu.upload(&[0.75f32]).unwrap();
        let mut records = gpu.alloc_zeros::<f32>(2 * RECORD).unwrap();
        let mut mask = gpu.alloc_zeros::<u32>(2).unwrap();
        let mut cursor = gpu.upload(&[0u32, 0]).unwrap();
        let mut target = RecordTarget {
            loss: &loss,
            records: &mut records,
            cursor: &mut cursor,
            advance: 32,
        };
        let mut sources: Vec<GradSource<'_>> = (words.iter_mut().enumerate())
            .map(|(t, w)| {
                if t == 0 && whole0 {
                    GradSource::Whole
                } else {
                    GradSource::Checked(w.slice_mut(..))
                }
            })
            .collect();
        let mut views: Vec<_> = grads.iter_mut().map(|g| g.slice_mut(..)).collect();
        unscale_and_record(
            &gpu,
            &mut views,
            &mut sources,
            &mut scale,
            &mut flag,
            &mut mask,
            None,
            &mut target,
            None,
        )
        .unwrap();
        drop((views, sources));
        let found = if want != 0 { 1.0 } else { 0.0 };
        assert_eq!(gpu.download(&flag).unwrap(), [found], "{what}: found_inf");
        let r = gpu.download(&records).unwrap();
        assert_eq!(&r[..3], &[0.75, 1.0, found], "{what}: record");
        assert_eq!(r[3].to_bits(), want, "{what}: mask in the record");
        assert_eq!(gpu.download(&cursor).unwrap(), [1, 32], "{what}: cursors");
        for (t, w) in words.iter().enumerate() {
            assert_eq!(gpu.download(w).unwrap(), [0], "{what}: word {t} zeroed");
        }
        for (t, (g, d)) in grads.iter().zip(&data).enumerate() {
            let same =
                (gpu.download(g).unwrap().iter().zip(d)).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{what}: tensor {t} changed");
        }
    }
}
