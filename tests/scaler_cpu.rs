//! CPU loss-scale update: scripted sequences checked after every step against closed forms
//! computed here (never by calling `update_scale`), overflow of a growth, the missing floor,
//! the optional clamps, config validation, and a property test against an integer model of the
//! scale's exponent.

mod common;

use ampkit::cpu::scaler::{update_scale, ScalerConfig, ScalerState};
use ampkit::Error;
use proptest::prelude::*;

/// `2^e` as f32, computed in f64 and rounded once: exact for −149 ≤ e ≤ 127, `+0.0` below
/// (2⁻¹⁵⁰ is a tie between 0 and the smallest subnormal, and rounds to the even one, 0).
fn pow2(e: i32) -> f32 {
    2f64.powi(e) as f32
}

fn step(s: &mut ScalerState, found_inf: bool, cfg: &ScalerConfig) -> (u32, i32) {
    update_scale(s, found_inf, cfg);
    (s.scale.to_bits(), s.growth_tracker)
}

fn want(scale: f32, tracker: i32) -> (u32, i32) {
    (scale.to_bits(), tracker)
}

#[test]
fn default_is_pytorchs_grad_scaler() {
    let cfg = ScalerConfig::default();
    assert_eq!(
        cfg,
        ScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            min_scale: None,
            max_scale: None,
        }
    );
    let s = ScalerState::new(&cfg).unwrap();
    assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
}

/// 4000 clean steps (growths at 2000 and 4000), an inf, 4500 clean steps (growths 2000 and
/// 4000 steps after the inf), an inf in the middle of a run (1999 clean steps do not grow), and
/// clean steps again. Every step is checked against the closed form.
#[test]
fn scripted_sequence_matches_the_closed_form_at_every_step() {
    let cfg = ScalerConfig::default();
    let mut s = ScalerState::new(&cfg).unwrap();
    for i in 1..=4000 {
        let w = want(65536.0 * pow2(i / 2000), i % 2000);
        assert_eq!(step(&mut s, false, &cfg), w, "clean step {i}");
    }
    assert_eq!(s.scale, 262144.0);
    assert_eq!(
        step(&mut s, true, &cfg),
        want(131072.0, 0),
        "inf after 4000"
    );
    for j in 1..=4500 {
        let w = want(131072.0 * pow2(j / 2000), j % 2000);
        assert_eq!(step(&mut s, false, &cfg), w, "clean step {j} after the inf");
    }
    // 4500 = 2·2000 + 500: scale 2^19, tracker 500.
    for j in 501..=1999 {
        assert_eq!(step(&mut s, false, &cfg), want(pow2(19), j), "run {j}");
    }
    assert_eq!(step(&mut s, true, &cfg), want(pow2(18), 0), "inf at 1999");
    for j in 1..=2001 {
        let w = want(pow2(18 + j / 2000), j % 2000);
        assert_eq!(
            step(&mut s, false, &cfg),
            w,
            "clean step {j} after the second inf"
        );
    }
    // Consecutive infs each back off and keep the tracker at 0.
    for k in 1..=3 {
        assert_eq!(step(&mut s, true, &cfg), want(pow2(19 - k), 0), "inf {k}");
    }
}

/// A growth whose f32 result would be infinite leaves the scale alone and still resets the
/// tracker; the finiteness test is on the f32 rounding, not on the (finite) f64 product.
#[test]
fn growth_that_would_overflow_keeps_the_scale_and_resets_the_tracker() {
    let cfg = ScalerConfig::default();
    let at_interval = |scale| ScalerState {
        scale,
        growth_tracker: cfg.growth_interval - 1,
    };
    for scale in [f32::MAX, pow2(127), f32::MAX / 1.5] {
        let mut s = at_interval(scale);
        assert_eq!(step(&mut s, false, &cfg), want(scale, 0), "{scale:e}");
        // The next 1999 clean steps only count, and the 2000th tries (and fails) again.
        for i in 1..cfg.growth_interval {
            assert_eq!(step(&mut s, false, &cfg), want(scale, i));
        }
        assert_eq!(step(&mut s, false, &cfg), want(scale, 0));
    }
    // The largest scale that still doubles: MAX/2 is exact, and doubling it gives MAX.
    let mut s = at_interval(f32::MAX / 2.0);
    assert_eq!(step(&mut s, false, &cfg), want(f32::MAX, 0));
    // f64 product MAX·(1 + 1e-7) is finite but above MAX + ulp/2: it rounds to +inf in f32.
    let tiny_growth = ScalerConfig {
        growth_factor: 1.0 + 1e-7,
        growth_interval: 1,
        ..cfg
    };
    let mut s = ScalerState {
        scale: f32::MAX,
        growth_tracker: 0,
    };
    assert!((f64::from(f32::MAX) * tiny_growth.growth_factor).is_finite());
    assert_eq!(step(&mut s, false, &tiny_growth), want(f32::MAX, 0));
}

/// PyTorch has no floor: repeated infs halve the scale below 1, through the subnormals, to +0.
#[test]
fn repeated_infs_drive_the_scale_below_one_and_to_zero() {
    let cfg = ScalerConfig::default();
    let mut s = ScalerState::new(&cfg).unwrap();
    for i in 1..=170 {
        // 2^(16−i): 1.0 after 16 infs, 0.5 after 17, 2^-149 after 165, +0 from 166 on.
        assert_eq!(step(&mut s, true, &cfg), want(pow2(16 - i), 0), "inf {i}");
    }
    assert_eq!(s.scale.to_bits(), 0);
    // From zero, growth stays at zero (0·2 is finite), and the tracker keeps cycling.
    for i in 1..=2000 {
        assert_eq!(step(&mut s, false, &cfg), want(0.0, i % 2000));
    }
}

/// The factors are applied as f64 products rounded once to f32, as PyTorch passes them as double:
/// the f32-only products would differ in the last bit for these values.
#[test]
fn factors_multiply_in_f64_and_round_once() {
    let cfg = ScalerConfig {
        init_scale: 3.0,
        growth_factor: 1.1,
        backoff_factor: 0.3,
        growth_interval: 1,
        ..ScalerConfig::default()
    };
    let mut s = ScalerState::new(&cfg).unwrap();
    assert_eq!(step(&mut s, false, &cfg), want(3.3, 0));
    assert_ne!(
        3.3f32,
        3.0f32 * 1.1f32,
        "the f32-only product must differ here"
    );
    let mut s = ScalerState {
        scale: 100.0,
        growth_tracker: 0,
    };
    assert_eq!(step(&mut s, true, &cfg), want(30.0, 0));
    assert_ne!(
        30.0f32,
        100.0f32 * 0.3f32,
        "the f32-only product must differ here"
    );
}

#[test]
fn min_scale_clamps_a_backoff() {
    for min in [1.0f32, 3.0] {
        let cfg = ScalerConfig {
            min_scale: Some(min),
            ..ScalerConfig::default()
        };
        let mut s = ScalerState::new(&cfg).unwrap();
        for i in 1..=40 {
            let w = want((65536.0 * pow2(-i)).max(min), 0);
            assert_eq!(step(&mut s, true, &cfg), w, "min {min}, inf {i}");
        }
        assert_eq!(s.scale, min);
        // Growth from the floor is unaffected by it.
        for i in 1..=2000 {
            let w = want(if i == 2000 { 2.0 * min } else { min }, i % 2000);
            assert_eq!(step(&mut s, false, &cfg), w, "min {min}, clean {i}");
        }
    }
}

#[test]
fn max_scale_caps_a_growth() {
    for max in [pow2(20), 100_000.0] {
        let cfg = ScalerConfig {
            growth_interval: 1,
            max_scale: Some(max),
            ..ScalerConfig::default()
        };
        let mut s = ScalerState::new(&cfg).unwrap();
        for i in 1..=10 {
            let w = want((65536.0 * pow2(i)).min(max), 0);
            assert_eq!(step(&mut s, false, &cfg), w, "max {max}, clean {i}");
        }
        // A backoff from the cap is not clamped by it.
        assert_eq!(step(&mut s, true, &cfg), want(max / 2.0, 0));
    }
    // With a cap, a growth that would overflow lands on the cap instead of being refused.
    let cfg = ScalerConfig {
        growth_interval: 1,
        max_scale: Some(f32::MAX),
        ..ScalerConfig::default()
    };
    let mut s = ScalerState {
        scale: pow2(127),
        growth_tracker: 0,
    };
    assert_eq!(step(&mut s, false, &cfg), want(f32::MAX, 0));
}

#[test]
fn a_tracker_past_the_interval_wraps_instead_of_panicking() {
    let cfg = ScalerConfig::default();
    let mut s = ScalerState {
        scale: 8.0,
        growth_tracker: i32::MAX,
    };
    assert_eq!(step(&mut s, false, &cfg), want(8.0, i32::MIN));
}

#[test]
fn invalid_configs_are_rejected() {
    let d = ScalerConfig::default();
    let bad = [
        ScalerConfig {
            init_scale: 0.0,
            ..d
        },
        ScalerConfig {
            init_scale: -1.0,
            ..d
        },
        ScalerConfig {
            init_scale: f32::NAN,
            ..d
        },
        ScalerConfig {
            init_scale: f32::INFINITY,
            ..d
        },
        ScalerConfig {
            growth_factor: 1.0,
            ..d
        },
        ScalerConfig {
            growth_factor: 0.5,
            ..d
        },
        ScalerConfig {
            growth_factor: f64::NAN,
            ..d
        },
        ScalerConfig {
            growth_factor: f64::INFINITY,
            ..d
        },
        ScalerConfig {
            backoff_factor: 1.0,
            ..d
        },
        ScalerConfig {
            backoff_factor: 0.0,
            ..d
        },
        ScalerConfig {
            backoff_factor: -0.5,
            ..d
        },
        ScalerConfig {
            backoff_factor: f64::NAN,
            ..d
        },
        ScalerConfig {
            growth_interval: 0,
            ..d
        },
        ScalerConfig {
            growth_interval: -5,
            ..d
        },
        ScalerConfig {
            min_scale: Some(0.0),
            ..d
        },
        ScalerConfig {
            min_scale: Some(f32::NAN),
            ..d
        },
        ScalerConfig {
            max_scale: Some(-1.0),
            ..d
        },
        ScalerConfig {
            max_scale: Some(f32::INFINITY),
            ..d
        },
        ScalerConfig {
            min_scale: Some(4.0),
            max_scale: Some(2.0),
            init_scale: 3.0,
            ..d
        },
        ScalerConfig {
            min_scale: Some(1e6),
            ..d
        },
        ScalerConfig {
            max_scale: Some(1024.0),
            ..d
        },
    ];
    for cfg in bad {
        let e = cfg.validate().unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{cfg:?}: {e}");
        assert!(e.to_string().contains("accepted"), "{e}");
        assert!(ScalerState::new(&cfg).is_err(), "{cfg:?}");
    }
    let good = [
        ScalerConfig {
            growth_interval: 1,
            growth_factor: 1.0001,
            backoff_factor: 0.9999,
            ..d
        },
        ScalerConfig {
            min_scale: Some(65536.0),
            max_scale: Some(65536.0),
            ..d
        },
        ScalerConfig {
            init_scale: 1e-30,
            ..d
        },
    ];
    for cfg in good {
        cfg.validate().unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
    }
}

/// The scale with factors 2 and ½ is always 2^e (or +0): an integer model of `e` and the
/// tracker, with optional power-of-two clamps, must agree with the f32 state after every step.
fn model_step(
    (e, tracker): (Option<i32>, i32),
    found_inf: bool,
    interval: i32,
    min_e: Option<i32>,
    max_e: Option<i32>,
) -> (Option<i32>, i32) {
    if found_inf {
        let e = e.map(|e| e - 1).filter(|&e| e >= -149);
        let e = match (e, min_e) {
            (Some(e), Some(m)) => Some(e.max(m)),
            (None, Some(m)) => Some(m),
            (e, None) => e,
        };
        (e, 0)
    } else if tracker + 1 == interval {
        let e = e.map(|e| match max_e {
            Some(m) => (e + 1).min(m),
            None if e + 1 > 127 => e,
            None => e + 1,
        });
        (e, 0)
    } else {
        (e, tracker + 1)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_sequences_follow_the_exponent_model(
        init_e in -140i32..127,
        interval in 1i32..6,
        steps in prop::collection::vec(prop::bool::weighted(0.3), 0..400),
        min_off in prop::option::of(0i32..20),
        max_off in prop::option::of(0i32..20),
    ) {
        let min_e = min_off.map(|o| (init_e - o).max(-149));
        let max_e = max_off.map(|o| (init_e + o).min(127));
        let cfg = ScalerConfig {
            init_scale: pow2(init_e),
            growth_interval: interval,
            min_scale: min_e.map(pow2),
            max_scale: max_e.map(pow2),
            ..ScalerConfig::default()
        };
        let mut s = ScalerState::new(&cfg).unwrap();
        let mut model = (Some(init_e), 0);
        for (i, &inf) in steps.iter().enumerate() {
            update_scale(&mut s, inf, &cfg);
            model = model_step(model, inf, interval, min_e, max_e);
            let want_scale = model.0.map_or(0.0, pow2);
            prop_assert_eq!(
                (s.scale.to_bits(), s.growth_tracker),
                (want_scale.to_bits(), model.1),
                "step {} (found_inf {})", i, inf
            );
        }
    }
}
