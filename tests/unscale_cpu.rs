//! CPU multi-tensor unscale + inf/NaN check: bit-exact agreement with an independent per-element
//! computation on random tensor lists (inf, NaN with payloads, subnormals, −0.0, values near
//! 65504 and near f32::MAX at random places), the found_inf flag exactly when a non-finite value
//! is present, pass-through at inv_scale = 1, the f16 → f32 variant, argument checks,
//! thread-count independence, and property tests.
//!
//! The independent computation: the product of two f32 values is exact in f64 (24 + 24 < 53
//! significand bits), so `f32(f64(v) · f64(inv))` is the correctly rounded f32 product, including
//! overflow to inf and subnormal results, without using an f32 multiply.

mod common;

use ampkit::check::{compare, Tolerance};
use ampkit::cpu::unscale::{inv_scale, unscale_and_check, unscale_f16_to_f32};
use ampkit::{f16, Error};
use common::{assert_all_written, assert_bits_eq, rng};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LENGTHS: &[usize] = &[0, 1, 2, 3, 7, 31, 127, 1000, 4097, 65_537, 100_003];
/// A signalling NaN: never produced by a multiply or an f16 widening, so it marks unwritten
/// outputs.
const POISON_F32: u32 = 0x7FBA_DBAD;

/// Multipliers under test: PyTorch's default scale, a non-power-of-two scale, a scale below 1
/// (so products overflow), a huge scale (so products go subnormal), and exactly 1.
fn inv_scales() -> Vec<f32> {
    vec![
        inv_scale(65536.0),
        inv_scale(3.0),
        inv_scale(1e-3),
        inv_scale(f32::MAX),
        inv_scale(1.0),
    ]
}

/// A finite gradient value from one of several regimes.
fn finite(rng: &mut StdRng) -> f32 {
    let sign = if rng.gen() { 1.0 } else { -1.0 };
    match rng.gen_range(0..8) {
        0 => f32::from_bits(rng.gen_range(1..0x0080_0000)) * sign, // f32 subnormal
        1 => [0.0, -0.0][rng.gen_range(0..2)],
        2 => rng.gen_range(65_000.0f32..66_000.0) * sign, // around f16's 65504
        3 => rng.gen_range(1e37f32..f32::MAX) * sign,     // overflows when inv > 1
        _ => rng.gen_range(0.5f32..1.0) * 2f32.powi(rng.gen_range(-30..30)) * sign,
    }
}

/// A non-finite value: ±inf, or a NaN (quiet or signalling) with a random payload and sign.
fn nonfinite(rng: &mut StdRng) -> f32 {
    match rng.gen_range(0..3) {
        0 => f32::INFINITY,
        1 => f32::NEG_INFINITY,
        _ => f32::from_bits((rng.gen::<u32>() & 0x807F_FFFF) | 0x7F80_0001),
    }
}

/// A list of tensors with lengths drawn from `lengths`; when `dirty`, 1–3 non-finite values at
/// random places (a large tensor's middle included), else none.
fn tensor_list(rng: &mut StdRng, lengths: &[usize], dirty: bool) -> Vec<Vec<f32>> {
    let count = rng.gen_range(1..5);
    let mut list: Vec<Vec<f32>> = (0..count)
        .map(|_| {
            let n = lengths[rng.gen_range(0..lengths.len())];
            (0..n).map(|_| finite(rng)).collect()
        })
        .collect();
    if dirty {
        let slots: Vec<(usize, usize)> = list
            .iter()
            .enumerate()
            .flat_map(|(t, v)| (0..v.len()).map(move |i| (t, i)))
            .collect();
        if slots.is_empty() {
            list.push(vec![nonfinite(rng)]);
        }
        for _ in 0..rng.gen_range(1..4) {
            if let Some(&(t, i)) = slots.get(rng.gen_range(0..slots.len().max(1))) {
                list[t][i] = nonfinite(rng);
            }
        }
    }
    list
}

/// The reference per element, without an f32 multiply.
fn expected(v: f32, inv: f32) -> f32 {
    if inv == 1.0 {
        v
    } else {
        (f64::from(v) * f64::from(inv)) as f32
    }
}

/// Bits with every NaN made canonical: below inv = 1 the NaN payload is the hardware's.
fn bits_nan_as_one(x: &[f32], inv: f32) -> Vec<u32> {
    x.iter()
        .map(|v| match v.is_nan() && inv != 1.0 {
            true => 0x7FC0_0000,
            false => v.to_bits(),
        })
        .collect()
}

/// Runs `unscale_and_check` on a copy of `list` and checks every element and the flag.
fn check_unscale(what: &str, list: &[Vec<f32>], inv: f32) {
    let mut out = list.to_vec();
    let mut views: Vec<&mut [f32]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    let found = unscale_and_check(&mut views, inv);
    let want_found = list.iter().flatten().any(|v| !v.is_finite());
    assert_eq!(found, want_found, "{what}: found_inf");
    for (t, (got, input)) in out.iter().zip(list).enumerate() {
        let want: Vec<f32> = input.iter().map(|&v| expected(v, inv)).collect();
        let what = format!("{what}: tensor {t} (n = {}, inv = {inv:e})", input.len());
        assert_bits_eq(
            &what,
            &bits_nan_as_one(got, inv),
            &bits_nan_as_one(&want, inv),
            |i| input[i],
        );
        let reference: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
        let report = compare(got, &reference, Tolerance::EXACT);
        assert!(report.passed(), "{what}: {report}");
    }
}

#[test]
fn inv_scale_is_the_rounded_f64_reciprocal() {
    assert_eq!(inv_scale(65536.0), 2f32.powi(-16));
    assert_eq!(inv_scale(1.0), 1.0);
    assert_eq!(inv_scale(3.0).to_bits(), 0x3EAA_AAAB); // 0.33333334
    assert_eq!(inv_scale(0.0), f32::INFINITY);
    assert_eq!(inv_scale(-0.0), f32::NEG_INFINITY);
    assert_eq!(inv_scale(f32::INFINITY).to_bits(), 0);
    assert_eq!(inv_scale(1e-39), f32::INFINITY); // 1e39 overflows f32
    let tiny = inv_scale(f32::MAX); // 2.9e-39: subnormal, kept
    assert!(tiny > 0.0 && !tiny.is_normal());
    assert_eq!(tiny, (1.0 / f64::from(f32::MAX)) as f32);
    assert!(inv_scale(f32::NAN).is_nan());
}

#[test]
fn random_lists_match_the_reference_bit_for_bit() {
    let mut rng = rng("unscale random lists");
    for round in 0..40 {
        let dirty = round % 2 == 1;
        let list = tensor_list(&mut rng, LENGTHS, dirty);
        for inv in inv_scales() {
            check_unscale(&format!("round {round}"), &list, inv);
        }
    }
}

/// found_inf must see a lone non-finite value anywhere: first or last element, inside a chunk
/// another thread handles, in the last of many tensors.
#[test]
fn a_single_nonfinite_value_anywhere_is_found() {
    let mut rng = rng("unscale single nonfinite");
    let lens = [5usize, 100_003, 1, 65_536];
    let clean: Vec<Vec<f32>> = lens
        .iter()
        .map(|&n| (0..n).map(|_| finite(&mut rng)).collect())
        .collect();
    check_unscale("clean", &clean, inv_scale(1024.0));
    let places = [
        (0, 0),
        (0, 4),
        (1, 0),
        (1, 50_000),
        (1, 100_002),
        (2, 0),
        (3, 65_535),
    ];
    for (t, i) in places {
        for bad in [
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0xFF80_0001),
        ] {
            let mut list = clean.clone();
            list[t][i] = bad;
            check_unscale(&format!("{bad:?} at [{t}][{i}]"), &list, inv_scale(1024.0));
            check_unscale(&format!("{bad:?} at [{t}][{i}], check only"), &list, 1.0);
        }
    }
}

/// At inv_scale = 1 nothing changes, bit for bit: NaN payloads, signalling NaNs, −0.0.
#[test]
fn inv_scale_one_passes_every_bit_pattern_through() {
    let mut rng = rng("unscale pass-through");
    let mut list: Vec<Vec<f32>> = [3usize, 1000, 70_001]
        .iter()
        .map(|&n| (0..n).map(|_| f32::from_bits(rng.gen())).collect())
        .collect();
    list[0] = vec![
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0xFFC0_1234),
        -0.0,
    ];
    let before: Vec<Vec<u32>> = list
        .iter()
        .map(|t| t.iter().map(|v| v.to_bits()).collect())
        .collect();
    let mut views: Vec<&mut [f32]> = list.iter_mut().map(|v| v.as_mut_slice()).collect();
    assert!(unscale_and_check(&mut views, 1.0));
    for (t, (got, want)) in list.iter().zip(&before).enumerate() {
        let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert_bits_eq(&format!("tensor {t}"), &got, want, |i| want[i]);
    }
}

/// f16 → f32 widening: every f16 bit pattern, at every multiplier. The reference widens through
/// f64 (exact) and builds the NaN bits by hand: sign | 0x7FC00000 | payload << 13.
#[test]
fn f16_to_f32_variant_matches_the_reference_for_every_f16() {
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let short: Vec<f16> = all[0x3C00..0x3C07].to_vec();
    let src: Vec<&[f16]> = vec![&all, &[], &short];
    for inv in inv_scales() {
        let mut dst: Vec<Vec<f32>> = src
            .iter()
            .map(|s| vec![f32::from_bits(POISON_F32); s.len()])
            .collect();
        let mut views: Vec<&mut [f32]> = dst.iter_mut().map(|v| v.as_mut_slice()).collect();
        let found = unscale_f16_to_f32(&src, &mut views, inv).unwrap();
        assert!(found, "the f16 table holds infinities and NaNs");
        for (t, (got, s)) in dst.iter().zip(&src).enumerate() {
            let what = format!("f16 tensor {t}, inv {inv:e}");
            assert_all_written(&what, got, f32::from_bits(POISON_F32));
            let want: Vec<u32> = s
                .iter()
                .map(|h| {
                    let b = u32::from(h.to_bits());
                    if h.is_nan() && inv == 1.0 {
                        ((b & 0x8000) << 16) | 0x7FC0_0000 | ((b & 0x03FF) << 13)
                    } else {
                        expected(h.to_f64() as f32, inv).to_bits()
                    }
                })
                .collect();
            let want = want.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>();
            assert_bits_eq(
                &what,
                &bits_nan_as_one(got, inv),
                &bits_nan_as_one(&want, inv),
                |i| s[i],
            );
        }
        // Without the non-finite patterns the flag is clear.
        let finite_only: Vec<f16> = all.iter().copied().filter(|h| h.is_finite()).collect();
        let mut out = vec![0f32; finite_only.len()];
        assert!(!unscale_f16_to_f32(&[&finite_only], &mut [&mut out], inv).unwrap());
    }
}

#[test]
fn f16_length_mismatches_are_shape_errors_and_write_nothing() {
    let a = vec![f16::ONE; 4];
    let b = vec![f16::ONE; 3];
    let (a, b) = (a.as_slice(), b.as_slice());
    let cases = [
        ("fewer destinations", vec![a, b], vec![4]),
        ("more destinations", vec![a], vec![4, 3]),
        ("second tensor short", vec![a, b], vec![4, 2]),
        ("first tensor long", vec![a, b], vec![5, 3]),
    ];
    for (what, src, dst_lens) in cases {
        let mut dst: Vec<Vec<f32>> = dst_lens
            .iter()
            .map(|&n| vec![f32::from_bits(POISON_F32); n])
            .collect();
        let mut views: Vec<&mut [f32]> = dst.iter_mut().map(|v| v.as_mut_slice()).collect();
        let e = unscale_f16_to_f32(&src, &mut views, 0.5).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{what}: {e}");
        let untouched = dst.iter().flatten().all(|v| v.to_bits() == POISON_F32);
        assert!(untouched, "{what}: a destination was written");
    }
}

#[test]
fn empty_lists_and_empty_tensors_are_fine() {
    assert!(!unscale_and_check(&mut [], 0.5));
    assert!(!unscale_and_check(&mut [&mut [], &mut []], 0.5));
    assert!(!unscale_f16_to_f32(&[], &mut [], 0.5).unwrap());
    assert!(!unscale_f16_to_f32(&[&[]], &mut [&mut []], 0.5).unwrap());
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = rng("unscale thread count");
    let list = tensor_list(&mut rng, &[100_003, 65_537, 40_000], true);
    let src: Vec<f16> = (0..200_001).map(|_| f16::from_bits(rng.gen())).collect();
    let inv = inv_scale(3.0);
    let run = |threads: usize| {
        common::on_threads(threads, || {
            let mut out = list.clone();
            let mut views: Vec<&mut [f32]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
            let found = unscale_and_check(&mut views, inv);
            let mut wide = vec![0f32; src.len()];
            let found16 = unscale_f16_to_f32(&[&src], &mut [&mut wide], inv).unwrap();
            let bits: Vec<u32> = out
                .concat()
                .iter()
                .chain(&wide)
                .map(|v| v.to_bits())
                .collect();
            (found, found16, bits)
        })
    };
    let (one, three) = (run(1), run(3));
    assert_eq!((one.0, one.1), (three.0, three.1));
    assert_bits_eq("1 vs 3 threads", &three.2, &one.2, |i| i);
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    let sizes = vec![0usize, 1, 2, 3, 5, 7, 10, 13, 31, 97, 127, 784];
    prop::collection::vec(prop::sample::select(sizes), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random lists: every element follows the reference and found_inf is exactly "some input
    /// was non-finite", for both entry points.
    #[test]
    fn random_lists_follow_the_reference(
        lens in sizes(),
        seed: u64,
        which_inv in 0usize..5,
        nonfinite_rate in prop::sample::select(vec![0.0, 0.001, 0.05]),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let inv = inv_scales()[which_inv];
        let list: Vec<Vec<f32>> = lens
            .iter()
            .map(|&n| {
                let mut value = |_| match rng.gen_bool(nonfinite_rate) {
                    true => nonfinite(&mut rng),
                    false => finite(&mut rng),
                };
                (0..n).map(&mut value).collect()
            })
            .collect();
        check_unscale(&format!("{lens:?}"), &list, inv);

        let halves: Vec<Vec<f16>> = list
            .iter()
            .map(|t| t.iter().map(|&v| f16::from_f32(v)).collect())
            .collect();
        let src: Vec<&[f16]> = halves.iter().map(|v| v.as_slice()).collect();
        let poison = f32::from_bits(POISON_F32);
        let mut dst: Vec<Vec<f32>> = lens.iter().map(|&n| vec![poison; n]).collect();
        let mut views: Vec<&mut [f32]> = dst.iter_mut().map(|v| v.as_mut_slice()).collect();
        let found = unscale_f16_to_f32(&src, &mut views, inv).unwrap();
        prop_assert_eq!(found, halves.iter().flatten().any(|h| !h.is_finite()));
        for (got, h) in dst.iter().zip(&halves) {
            let want: Vec<f32> = h.iter().map(|h| expected(h.to_f64() as f32, inv)).collect();
            prop_assert_eq!(bits_nan_as_one(got, 0.5), bits_nan_as_one(&want, 0.5));
        }
    }
}
