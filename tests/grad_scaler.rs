//! `amp::CpuGradScaler` with the `optim` objects against the hand-written AMP step on the CPU
//! references, bit for bit, over many steps with inf/NaN gradients injected at random: the
//! skipped step changes nothing, the dynamic scale backs off ×0.5 on an overflow and grows ×2
//! after the interval of clean steps; an explicit unscale is not repeated by step; misuse is a
//! typed error that changes nothing; state dicts round-trip (through JSON) and resume bit for
//! bit; the static and off modes. The GPU twin is `grad_scaler_gpu.rs`.

mod common;
mod grad_scaler_support;
mod optim_support;

use ampkit::amp::{CpuGradScaler, LossScale, ScalerStateDict, Stage};
use ampkit::optim::{
    Adam, AdamConfig, LrSchedule, Moment, Optimizer, OptimizerConfig, OptimizerStateDict, Param,
    Sgd, SgdConfig,
};
use ampkit::{Device, Error};
use common::{assert_all_written, rng};
use grad_scaler_support::*;
use rand::rngs::StdRng;
use rand::Rng;

/// One scaler + optimizer object under test beside the reference, stepped together.
struct Pair {
    scaler: CpuGradScaler,
    opt: Box<dyn Optimizer>,
    weights: Weights,
    reference: Reference,
}

impl Pair {
    fn new(
        rng: &mut StdRng,
        cfg: OptimizerConfig,
        schedule: LrSchedule,
        mode: LossScale,
        lens: &[usize],
    ) -> Pair {
        let weights = Weights::random(rng, lens);
        let mut opt = object(&Device::Cpu, &cfg, lens);
        opt.set_schedule(schedule).unwrap();
        Pair {
            scaler: CpuGradScaler::new(mode).unwrap(),
            opt,
            reference: Reference::new(cfg, schedule, mode, weights.clone()),
            weights,
        }
    }

    /// One step on both sides with the same scaled gradients; compares everything after it.
    fn step(&mut self, what: &str, grads: &[Vec<f32>]) -> (bool, bool) {
        let (mut mine, mut theirs) = (grads.to_vec(), grads.to_vec());
        self.weights.poison_halves();
        let outcome = {
            let mut params = self.weights.params(&mut mine);
            self.scaler.step(&mut *self.opt, &mut params).unwrap()
        };
        self.scaler.update().unwrap();
        let (found, want) = self.reference.step(&mut theirs);
        assert_eq!(self.scaler.found_inf(), found, "{what}: found_inf");
        assert_eq!(outcome, want, "{what}: outcome");
        if outcome.skipped() {
            // Nothing written: the copies still hold the poison; restore them for the next step.
            for h in &self.weights.half {
                assert!(h.iter().all(|x| x.to_bits() == POISON.to_bits()), "{what}");
            }
            self.weights.half = self.reference.weights.half.clone();
        } else {
            for h in &self.weights.half {
                assert_all_written(what, h, POISON);
            }
        }
        self.check(what, &mine, &theirs);
        (found, outcome.skipped())
    }

    fn check(&self, what: &str, grads: &[Vec<f32>], want_grads: &[Vec<f32>]) {
        assert_same_f32(&format!("{what}: unscaled grads"), grads, want_grads);
        let (w, r) = (&self.weights, &self.reference.weights);
        assert_same_f32(&format!("{what}: masters"), &w.master, &r.master);
        assert_same_f16(&format!("{what}: f16 copies"), &w.half, &r.half);
        assert_state_matches(what, &*self.opt, &self.reference);
        let dict = self.scaler.state_dict();
        let want = self.reference.scaler;
        assert_eq!(
            (dict.scale.to_bits(), dict.growth_tracker),
            (want.scale.to_bits(), want.growth_tracker),
            "{what}: scale and tracker"
        );
        assert_eq!(self.scaler.stage(), Stage::Ready, "{what}: stage");
    }
}

#[test]
fn scaler_and_optimizers_match_the_references_over_many_steps() {
    let mut rng = rng("cpu grad scaler steps");
    let lens = sizes(&mut rng, 40_003, 3000, 6);
    let interval = 3;
    for (i, cfg) in optim_support::all_configs().into_iter().enumerate() {
        let schedule = if i % 2 == 0 {
            LrSchedule::Constant
        } else {
            LrSchedule::Cosine {
                total: 20,
                min_lr: 1e-4,
            }
        };
        let mut pair = Pair::new(&mut rng, cfg, schedule, dynamic(interval), &lens);
        // PyTorch's rule, followed independently of the reference: ×0.5 and skip on an
        // overflow, ×2 after `interval` clean steps in a row.
        let (mut scale, mut clean, mut real) = (1024.0f32, 0, 0u64);
        for step in 0..40 {
            let poison = step == 0 || rng.gen_bool(0.25);
            let grads = scaled_grads(&mut rng, &lens, pair.scaler.scale(), poison);
            let before = pair.weights.master.clone();
            let what = format!("{cfg:?} {schedule:?} step {step} (poisoned {poison})");
            let (found, skipped) = pair.step(&what, &grads);
            assert_eq!((found, skipped), (poison, poison), "{what}");
            if poison {
                scale *= 0.5;
                clean = 0;
                assert_same_f32(&what, &pair.weights.master, &before);
            } else {
                real += 1;
                clean += 1;
                if clean == interval {
                    scale *= 2.0;
                    clean = 0;
                }
            }
            assert_eq!(pair.scaler.scale(), scale, "{what}: the scale");
            assert_eq!(pair.opt.step_count().unwrap(), real, "{what}: real steps");
        }
    }
}

#[test]
fn an_explicit_unscale_is_not_repeated_by_step() {
    let mut rng = rng("cpu grad scaler explicit unscale");
    let lens = sizes(&mut rng, 33_000, 500, 2);
    // 3 is not a power of two: unscaling twice would be visible in every element.
    let mode = LossScale::Static(3.0);
    let cfg = OptimizerConfig::adamw(1e-2);
    let mut a = Pair::new(&mut rng, cfg, LrSchedule::Constant, mode, &lens);
    for step in 0..4 {
        let grads = scaled_grads(&mut rng, &lens, 3.0, step == 2);
        let (mut mine, mut theirs) = (grads.clone(), grads.clone());
        {
            let mut views: Vec<&mut [f32]> = mine.iter_mut().map(|g| &mut g[..]).collect();
            a.scaler.unscale(&mut views).unwrap();
        }
        assert_eq!(a.scaler.stage(), Stage::Unscaled);
        // Clipping would go here: the gradients are unscaled now.
        let unscaled = mine.clone();
        let outcome = {
            let mut params = a.weights.params(&mut mine);
            a.scaler.step(&mut *a.opt, &mut params).unwrap()
        };
        assert_same_f32("step left the unscaled gradients alone", &mine, &unscaled);
        a.scaler.update().unwrap();
        let (_, want) = a.reference.step(&mut theirs);
        assert_eq!(outcome, want);
        a.check(&format!("step {step}"), &mine, &theirs);
    }
}

#[test]
fn misuse_is_a_typed_error_and_changes_nothing() {
    let mut rng = rng("cpu grad scaler misuse");
    let lens = [5, 1025];
    let cfg = OptimizerConfig::sgd_momentum(0.1, 0.9);
    let mut p = Pair::new(&mut rng, cfg, LrSchedule::Constant, dynamic(2), &lens);
    let invalid = |r: ampkit::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));

    assert!(invalid(p.scaler.update()), "update before any inf check");
    let grads = scaled_grads(&mut rng, &lens, p.scaler.scale(), false);
    let mut g = grads.clone();
    {
        let mut views: Vec<&mut [f32]> = g.iter_mut().map(|g| &mut g[..]).collect();
        p.scaler.unscale(&mut views).unwrap();
        let once = views.iter().map(|v| v.to_vec()).collect::<Vec<_>>();
        assert!(invalid(p.scaler.unscale(&mut views)), "unscale twice");
        let now = views.iter().map(|v| v.to_vec()).collect::<Vec<_>>();
        assert_same_f32("a refused unscale", &now, &once);
    }
    assert_eq!(p.scaler.stage(), Stage::Unscaled);

    // A step with the wrong tensors is refused before anything changes.
    let before = p.weights.clone();
    let mut short = g[..1].to_vec();
    let err = {
        let mut params = p.weights.params(&mut short);
        p.scaler.step(&mut *p.opt, &mut params).unwrap_err()
    };
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert_eq!(p.scaler.stage(), Stage::Unscaled, "stage unchanged");
    assert_same_f32(
        "masters after a refused step",
        &p.weights.master,
        &before.master,
    );
    assert_eq!(p.opt.step_count().unwrap(), 0);

    let _ = {
        let mut params = p.weights.params(&mut g);
        p.scaler.step(&mut *p.opt, &mut params).unwrap()
    };
    let after_one = p.weights.clone();
    {
        let mut params = p.weights.params(&mut g);
        let err = p.scaler.step(&mut *p.opt, &mut params).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "step twice: {err}"
        );
    }
    assert_same_f32("a refused step", &p.weights.master, &after_one.master);
    let mut views: Vec<&mut [f32]> = g.iter_mut().map(|g| &mut g[..]).collect();
    assert!(invalid(p.scaler.unscale(&mut views)), "unscale after step");
    p.scaler.update().unwrap();
    let scale = p.scaler.scale();
    assert!(invalid(p.scaler.update()), "update twice");
    assert_eq!(p.scaler.scale(), scale, "a refused update changes nothing");
    assert_eq!(p.opt.step_count().unwrap(), 1);

    // Configs of another kind, momentum the buffers cannot hold, bad moments.
    assert!(invalid(p.opt.set_config(OptimizerConfig::adam(1e-3))));
    let mut plain = Sgd::new(&Device::Cpu, SgdConfig::default(), &lens).unwrap();
    assert!(invalid(plain.set_config(cfg)), "momentum without buffers");
    assert!(plain.moment(Moment::MomentumBuffer, 0).is_err());
    assert!(
        p.opt.moment(Moment::ExpAvg, 0).is_err(),
        "SGD keeps no exp_avg"
    );
    assert!(
        p.opt.moment(Moment::MomentumBuffer, 2).is_err(),
        "no tensor 2"
    );
    assert!(
        p.opt.moment_view(Moment::MomentumBuffer, 0).is_err(),
        "on the host"
    );
    assert!(CpuGradScaler::new(LossScale::Static(f32::NAN)).is_err());
}

#[test]
fn state_dicts_round_trip_through_json_and_resume_bit_for_bit() {
    let mut rng = rng("cpu grad scaler state dict");
    let lens = sizes(&mut rng, 33_001, 800, 3);
    for cfg in optim_support::all_configs() {
        let schedule = LrSchedule::Cosine {
            total: 30,
            min_lr: 0.0,
        };
        let mut a = Pair::new(&mut rng, cfg, schedule, dynamic(2), &lens);
        for step in 0..8 {
            let grads = scaled_grads(&mut rng, &lens, a.scaler.scale(), step % 3 == 1);
            a.step(&format!("{cfg:?} step {step}"), &grads);
        }
        let opt_json = serde_json::to_string(&a.opt.state_dict().unwrap()).unwrap();
        let scaler_json = serde_json::to_string(&a.scaler.state_dict()).unwrap();
        let opt_dict: OptimizerStateDict = serde_json::from_str(&opt_json).unwrap();
        let scaler_dict: ScalerStateDict = serde_json::from_str(&scaler_json).unwrap();
        assert_eq!(opt_dict, a.opt.state_dict().unwrap());

        // A fresh pair (other weights, a default config and no schedule) loads the state.
        let mut b = Pair::new(&mut rng, cfg, LrSchedule::Constant, LossScale::Off, &lens);
        b.opt.set_config(with_lr(&cfg, 0.5)).unwrap();
        b.opt.load_state_dict(&opt_dict).unwrap();
        b.scaler.load_state_dict(&scaler_dict).unwrap();
        b.weights = a.weights.clone();
        b.reference = a.reference.clone();
        assert_eq!(b.opt.config(), cfg);
        assert_eq!(b.opt.schedule(), schedule);
        for step in 8..16 {
            let poison = step % 4 == 0;
            let grads = scaled_grads(&mut rng, &lens, a.scaler.scale(), poison);
            let what = format!("{cfg:?} step {step}");
            a.step(&format!("{what}, original"), &grads);
            b.step(&format!("{what}, resumed"), &grads);
            assert_same_f32(&what, &a.weights.master, &b.weights.master);
        }
    }
}

#[test]
fn a_state_dict_that_does_not_fit_is_refused_and_changes_nothing() {
    let lens = [4, 9];
    let mut adam = Adam::new(&Device::Cpu, AdamConfig::default(), &lens).unwrap();
    let good = adam.state_dict().unwrap();
    let refused = |opt: &mut dyn Optimizer, dict: OptimizerStateDict, kind: &str| {
        let before = opt.state_dict().unwrap();
        let err = opt.load_state_dict(&dict).unwrap_err();
        let ok = match kind {
            "shape" => matches!(err, Error::ShapeMismatch { .. }),
            _ => matches!(err, Error::InvalidArgument { .. }),
        };
        assert!(ok, "{kind}: {err}");
        assert_eq!(opt.state_dict().unwrap(), before, "{kind}: changed");
    };
    let mut d = good.clone();
    d.config = OptimizerConfig::adamw(1e-3);
    refused(&mut adam, d, "another kind");
    let mut d = good.clone();
    d.exp_avg.as_mut().unwrap()[1].push(0.0);
    refused(&mut adam, d, "shape");
    let mut d = good.clone();
    d.exp_avg_sq = None;
    refused(&mut adam, d, "missing moment");
    let mut d = good.clone();
    d.momentum_buffer = Some(vec![vec![0.0; 4], vec![0.0; 9]]);
    refused(&mut adam, d, "foreign buffer");
    let mut d = good.clone();
    d.schedule = LrSchedule::Cosine {
        total: 0,
        min_lr: 0.0,
    };
    refused(&mut adam, d, "bad schedule");
    let mut sgd = Sgd::new(&Device::Cpu, SgdConfig::default(), &lens).unwrap();
    let mut d = sgd.state_dict().unwrap();
    d.config = OptimizerConfig::sgd_momentum(0.1, 0.9);
    refused(&mut sgd, d, "momentum without its buffer");

    let mut scaler = CpuGradScaler::new(LossScale::Off).unwrap();
    for scale in [f32::NAN, f32::INFINITY, -1.0] {
        let dict = ScalerStateDict {
            loss_scale: dynamic(5),
            scale,
            growth_tracker: 0,
        };
        assert!(scaler.load_state_dict(&dict).is_err(), "scale {scale}");
        assert_eq!(scaler.state_dict().loss_scale, LossScale::Off);
    }
}

#[test]
fn static_and_off_modes_keep_the_scale_and_still_skip() {
    let mut rng = rng("cpu grad scaler modes");
    let lens = sizes(&mut rng, 1 << 15, 300, 2);
    for mode in [LossScale::Static(96.0), LossScale::Off] {
        let cfg = OptimizerConfig::adam(1e-2);
        let mut p = Pair::new(&mut rng, cfg, LrSchedule::Constant, mode, &lens);
        for step in 0..10 {
            let poison = step % 3 == 0;
            let grads = scaled_grads(&mut rng, &lens, mode.initial_scale(), poison);
            let what = format!("{mode:?} step {step}");
            let (found, skipped) = p.step(&what, &grads);
            assert_eq!((found, skipped), (poison, poison), "{what}");
            assert_eq!(p.scaler.scale(), mode.initial_scale(), "{what}");
        }
        if mode == LossScale::Off {
            // inv_scale(1) == 1: the gradients are checked but not multiplied, so every bit
            // (NaN payloads, −0.0) passes through.
            let mut g = vec![vec![-0.0f32, f32::from_bits(0x7FC0_1234), 3.5]];
            let bits = nan_bits(&g[0]);
            let raw: Vec<u32> = g[0].iter().map(|x| x.to_bits()).collect();
            let mut opt = Adam::new(&Device::Cpu, AdamConfig::default(), &[3]).unwrap();
            let mut w = Weights::random(&mut rng, &[3]);
            let mut params: Vec<Param<'_>> = w.params(&mut g);
            assert!(p.scaler.step(&mut opt, &mut params).unwrap().skipped());
            drop(params);
            assert_eq!(g[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>(), raw);
            assert_eq!(nan_bits(&g[0]), bits);
            p.scaler.update().unwrap();
        }
    }
}

#[test]
fn the_optimizer_objects_are_the_cpu_optimizer() {
    // Stepping an object through a scaler with LossScale::Off and finite gradients is exactly
    // cpu::optim::step (checked by the pair), and its state dict holds what the state holds.
    let mut rng = rng("cpu optimizer objects");
    let lens = [0, 1, 17, 40_000];
    for cfg in optim_support::all_configs() {
        let mut p = Pair::new(&mut rng, cfg, LrSchedule::Constant, LossScale::Off, &lens);
        for step in 0..3 {
            let grads = scaled_grads(&mut rng, &lens, 1.0, false);
            p.step(&format!("{cfg:?} step {step}"), &grads);
        }
        let dict = p.opt.state_dict().unwrap();
        assert_eq!(dict.step, 3);
        let kept = kept_moments(&cfg);
        assert_eq!(dict.exp_avg.is_some(), kept.contains(&Moment::ExpAvg));
        assert_eq!(dict.exp_avg_sq.is_some(), kept.contains(&Moment::ExpAvgSq));
        assert_eq!(
            dict.momentum_buffer.is_some(),
            kept.contains(&Moment::MomentumBuffer)
        );
        assert_eq!(
            dict.momentum_started,
            p.reference.state.momentum_started(),
            "{cfg:?}"
        );
        assert_eq!(p.opt.tensor_lens(), &lens);
    }
}
