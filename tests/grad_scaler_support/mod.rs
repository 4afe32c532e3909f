//! Shared support of the scaler-object tests (`grad_scaler`, `grad_scaler_gpu`): tensor sizes,
//! scaled random gradients with an inf or NaN injected on chosen steps, the hand-written AMP
//! step the scalers must reproduce bit for bit (`cpu::unscale`, `cpu::optim::step` at the
//! schedule's rate, `cpu::scaler::update_scale`), and NaN-aware bit comparisons.
#![allow(dead_code)]

pub mod device;

use crate::common::assert_bits_eq;
use ampkit::amp::{LossScale, ScalerConfig};
use ampkit::cpu::optim::{self, OptimizerConfig, OptimizerState, ParamTensor, StepOutcome};
use ampkit::cpu::scaler::{update_scale, ScalerState};
use ampkit::cpu::unscale::{inv_scale, unscale_and_check};
use ampkit::optim::{Adam, AdamW, LrSchedule, Moment, Optimizer, Param, Sgd};
use ampkit::{f16, Device};
use rand::rngs::StdRng;
use rand::Rng;

/// A signalling NaN: `f16::from_f32` never produces it, so a copy still holding it was not
/// written.
pub const POISON: f16 = f16::from_bits(0x7C01);

/// Odd tensor sizes around the kernels' vector and chunk boundaries, plus `extra` random ones
/// below `most`; `large` crosses the CPU's parallel threshold (2^15) and several GPU chunks.
pub fn sizes(rng: &mut StdRng, large: usize, most: usize, extra: usize) -> Vec<usize> {
    let mut s = vec![1, 3, 7, 10, 1023, 1025, 4097, large];
    s.extend((0..extra).map(|_| rng.gen_range(1..most)));
    s
}

/// Random values of varied magnitude (2^-20 to 4), with subnormals and signed zeros sprinkled.
pub fn values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * 2f32.powi(rng.gen_range(-20..3)))
        .collect();
    for _ in 0..n / 200 {
        let i = rng.gen_range(0..n);
        v[i] = [-0.0, 0.0, 1e-40, -1e-45][rng.gen_range(0..4)];
    }
    v
}

/// What is injected into a poisoned step's gradients.
pub const POISONS: [f32; 3] = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN];

/// Gradients as backward leaves them at `scale` (values times the scale, in f32), with one
/// element of one non-empty tensor replaced by inf, −inf or NaN when `poison`.
pub fn scaled_grads(rng: &mut StdRng, lens: &[usize], scale: f32, poison: bool) -> Vec<Vec<f32>> {
    let mut g: Vec<Vec<f32>> = lens
        .iter()
        .map(|&n| values(rng, n).iter().map(|v| v * scale).collect())
        .collect();
    if poison {
        let nonempty: Vec<usize> = (0..lens.len()).filter(|&t| lens[t] > 0).collect();
        let t = nonempty[rng.gen_range(0..nonempty.len())];
        let i = rng.gen_range(0..lens[t]);
        g[t][i] = POISONS[rng.gen_range(0..POISONS.len())];
    }
    g
}

/// The optimizer object `cfg` names, on `device`.
pub fn object(device: &Device, cfg: &OptimizerConfig, lens: &[usize]) -> Box<dyn Optimizer> {
    match *cfg {
        OptimizerConfig::Adam(c) => Box::new(Adam::new(device, c, lens).unwrap()),
        OptimizerConfig::AdamW(c) => Box::new(AdamW::new(device, c, lens).unwrap()),
        OptimizerConfig::Sgd(c) => Box::new(Sgd::new(device, c, lens).unwrap()),
    }
}

/// A dynamic scale from 1024 growing after `interval` clean steps (PyTorch's factors).
pub fn dynamic(interval: i32) -> LossScale {
    LossScale::Dynamic(ScalerConfig {
        init_scale: 1024.0,
        growth_interval: interval,
        ..ScalerConfig::default()
    })
}

/// The same config with another learning rate.
pub fn with_lr(cfg: &OptimizerConfig, lr: f64) -> OptimizerConfig {
    let mut c = *cfg;
    match &mut c {
        OptimizerConfig::Adam(a) | OptimizerConfig::AdamW(a) => a.lr = lr,
        OptimizerConfig::Sgd(s) => s.lr = lr,
    }
    c
}

pub fn base_lr(cfg: &OptimizerConfig) -> f64 {
    match cfg {
        OptimizerConfig::Adam(a) | OptimizerConfig::AdamW(a) => a.lr,
        OptimizerConfig::Sgd(s) => s.lr,
    }
}

/// f32 master weights and their f16 copies.
#[derive(Clone, Debug)]
pub struct Weights {
    pub master: Vec<Vec<f32>>,
    pub half: Vec<Vec<f16>>,
}

impl Weights {
    pub fn random(rng: &mut StdRng, lens: &[usize]) -> Weights {
        let master: Vec<Vec<f32>> = lens.iter().map(|&n| values(rng, n)).collect();
        let half = master
            .iter()
            .map(|m| m.iter().map(|&x| f16::from_f32(x)).collect())
            .collect();
        Weights { master, half }
    }

    /// The scaler's view of these weights with `grads`.
    pub fn params<'a>(&'a mut self, grads: &'a mut [Vec<f32>]) -> Vec<Param<'a>> {
        (self.master.iter_mut())
            .zip(grads.iter_mut())
            .zip(self.half.iter_mut())
            .map(|((master, grad), half)| Param { master, grad, half })
            .collect()
    }

    pub fn poison_halves(&mut self) {
        self.half.iter_mut().for_each(|h| h.fill(POISON));
    }
}

/// The AMP step written out with the CPU references: what every scaler must reproduce.
#[derive(Clone)]
pub struct Reference {
    pub cfg: OptimizerConfig,
    pub schedule: LrSchedule,
    pub loss_scale: LossScale,
    pub weights: Weights,
    pub state: OptimizerState,
    pub scaler: ScalerState,
}

impl Reference {
    pub fn new(
        cfg: OptimizerConfig,
        schedule: LrSchedule,
        loss_scale: LossScale,
        weights: Weights,
    ) -> Reference {
        let lens: Vec<usize> = weights.master.iter().map(Vec::len).collect();
        Reference {
            state: OptimizerState::new(&cfg, &lens).unwrap(),
            scaler: ScalerState {
                scale: loss_scale.initial_scale(),
                growth_tracker: 0,
            },
            cfg,
            schedule,
            loss_scale,
            weights,
        }
    }

    /// Unscale + check, the optimizer at the schedule's rate (skipped on found_inf), update.
    /// Unscales `grads` in place; returns found_inf and what the optimizer did.
    pub fn step(&mut self, grads: &mut [Vec<f32>]) -> (bool, StepOutcome) {
        let mut views: Vec<&mut [f32]> = grads.iter_mut().map(|g| &mut g[..]).collect();
        let found = unscale_and_check(&mut views, inv_scale(self.scaler.scale));
        let lr = self
            .schedule
            .lr_at(base_lr(&self.cfg), self.state.step_count());
        let mut params: Vec<ParamTensor<'_>> = (self.weights.master.iter_mut())
            .zip(grads.iter())
            .zip(self.weights.half.iter_mut())
            .map(|((master, grad), half)| ParamTensor { master, grad, half })
            .collect();
        let outcome = optim::step(&with_lr(&self.cfg, lr), &mut self.state, &mut params, found)
            .expect("the reference step");
        if let Some(c) = self.loss_scale.dynamic() {
            update_scale(&mut self.scaler, found, c);
        }
        (found, outcome)
    }

    /// The reference state's moments of tensor `t` (`None` where it keeps none).
    pub fn moment(&self, which: Moment, t: usize) -> Option<&[f32]> {
        match which {
            Moment::ExpAvg => self.state.exp_avg(t),
            Moment::ExpAvgSq => self.state.exp_avg_sq(t),
            Moment::MomentumBuffer => self.state.momentum_buffer(t),
        }
    }
}

/// The moments `cfg`'s optimizer keeps.
pub fn kept_moments(cfg: &OptimizerConfig) -> Vec<Moment> {
    match cfg {
        OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => {
            vec![Moment::ExpAvg, Moment::ExpAvgSq]
        }
        OptimizerConfig::Sgd(c) if c.momentum != 0.0 => vec![Moment::MomentumBuffer],
        OptimizerConfig::Sgd(_) => vec![],
    }
}

/// Bits of f32 values with every NaN mapped to one pattern (NaN payloads are the hardware's).
pub fn nan_bits(v: &[f32]) -> Vec<u32> {
    v.iter()
        .map(|x| if x.is_nan() { 0x7FC0_0000 } else { x.to_bits() })
        .collect()
}

/// Asserts two lists of f32 tensors are equal bit for bit, NaN as NaN.
pub fn assert_same_f32(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{what}: tensor count");
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        assert_bits_eq(
            &format!("{what}, tensor {t}"),
            &nan_bits(g),
            &nan_bits(w),
            |i| i,
        );
    }
}

/// Asserts two lists of f16 tensors are equal bit for bit.
pub fn assert_same_f16(what: &str, got: &[Vec<f16>], want: &[Vec<f16>]) {
    assert_eq!(got.len(), want.len(), "{what}: tensor count");
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>();
        assert_bits_eq(&format!("{what}, tensor {t}"), &bits(g), &bits(w), |i| i);
    }
}

/// Asserts an optimizer object's state equals the reference's, bit for bit: step count and
/// every kept moment of every tensor.
pub fn assert_state_matches(what: &str, opt: &dyn Optimizer, reference: &Reference) {
    assert_eq!(
        opt.step_count().unwrap(),
        reference.state.step_count(),
        "{what}: step count"
    );
    for which in kept_moments(&reference.cfg) {
        let got: Vec<Vec<f32>> = (0..opt.tensor_lens().len())
            .map(|t| opt.moment(which, t).unwrap())
            .collect();
        let want: Vec<Vec<f32>> = (0..got.len())
            .map(|t| reference.moment(which, t).unwrap().to_vec())
            .collect();
        assert_same_f32(&format!("{what}: {which:?}"), &got, &want);
    }
}
