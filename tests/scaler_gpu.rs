//! GPU loss-scale update vs the CPU reference, bit for bit after every step of scripted and
//! random sequences: growth after the interval, backoff on overflow, a growth that would overflow
//! f32, the missing floor, min/max clamps, non-power-of-two factors.

mod common;

use ampkit::cpu::scaler::{update_scale as cpu_update, ScalerConfig, ScalerState};
use ampkit::ops::scaler::update_scale;
use common::{gpu, rng, sized};
use rand::Rng;

/// Runs `flags` through both implementations from `start`, comparing after every step.
fn replay(gpu: &ampkit::cuda::Gpu, cfg: &ScalerConfig, start: ScalerState, flags: &[bool]) {
    let mut cpu = start;
    let mut scale = gpu.upload(&[start.scale]).unwrap();
    let mut tracker = gpu.upload(&[start.growth_tracker]).unwrap();
    let flag_true = gpu.upload(&[1.0f32]).unwrap();
    let flag_false = gpu.upload(&[0.0f32]).unwrap();
    for (step, &found) in flags.iter().enumerate() {
        cpu_update(&mut cpu, found, cfg);
        let flag = if found { &flag_true } else { &flag_false };
        update_scale(gpu, &mut scale, &mut tracker, flag, cfg).unwrap();
        // Reading back every step is for the test only; training reads them when it logs.
        let (s, t) = (
            gpu.download(&scale).unwrap()[0],
            gpu.download(&tracker).unwrap()[0],
        );
        assert_eq!(
            (s.to_bits(), t),
            (cpu.scale.to_bits(), cpu.growth_tracker),
            "step {step} (found_inf {found}): gpu scale {s} tracker {t}, cpu {cpu:?}"
        );
    }
}

#[test]
fn scripted_sequences_match_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let pytorch = ScalerConfig {
        growth_interval: 3,
        ..ScalerConfig::default()
    };
    let start = ScalerState::new(&pytorch).unwrap();
    // Growth, backoff, growth again.
    replay(
        &gpu,
        &pytorch,
        start,
        &[false, false, false, true, false, false, false, false],
    );
    // A growth that would overflow f32 keeps the scale and resets the tracker.
    replay(
        &gpu,
        &pytorch,
        ScalerState {
            scale: f32::MAX / 1.5,
            growth_tracker: 2,
        },
        &[false, false],
    );
    // No floor: repeated overflows go below 1, through the subnormals, to zero.
    replay(
        &gpu,
        &pytorch,
        ScalerState {
            scale: 1e-40,
            growth_tracker: 0,
        },
        &[true; 20],
    );
    // Clamps and factors that are not powers of two (f64 product, one rounding).
    let clamped = ScalerConfig {
        growth_factor: 1.1,
        backoff_factor: 0.3,
        growth_interval: 2,
        init_scale: 3.0,
        min_scale: Some(0.75),
        max_scale: Some(5.0),
    };
    replay(
        &gpu,
        &clamped,
        ScalerState {
            scale: 3.0,
            growth_tracker: 0,
        },
        &[false; 12],
    );
    replay(
        &gpu,
        &clamped,
        ScalerState {
            scale: 3.0,
            growth_tracker: 0,
        },
        &[true; 4],
    );
}

#[test]
fn random_sequences_match_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu scaler random");
    let cfg = ScalerConfig {
        growth_interval: 5,
        ..ScalerConfig::default()
    };
    // Sanitizing: 100 steps (still many growths and backoffs at this interval).
    let flags: Vec<bool> = (0..sized(400, 100)).map(|_| rng.gen_bool(0.15)).collect();
    replay(&gpu, &cfg, ScalerState::new(&cfg).unwrap(), &flags);
}

#[test]
fn an_invalid_config_is_rejected_before_launch() {
    let Some(gpu) = gpu() else { return };
    let bad = ScalerConfig {
        growth_factor: 0.5,
        ..ScalerConfig::default()
    };
    let mut scale = gpu.upload(&[1.0f32]).unwrap();
    let mut tracker = gpu.upload(&[0i32]).unwrap();
    let flag = gpu.upload(&[0.0f32]).unwrap();
    assert!(update_scale(&gpu, &mut scale, &mut tracker, &flag, &bad).is_err());
    assert_eq!(gpu.download(&scale).unwrap()[0], 1.0);
}
