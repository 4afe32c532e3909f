//! Shared support of the optimizer tests (`optim_cpu`, `optim_gpu`): the optimizer configs both
//! cover, a CPU model (f32 masters, f16 copies) stepped through `cpu::optim` with accessors for the
//! state's buffers, (in [`rig`]) the GPU-vs-CPU rig of the GPU tests, and (in [`expected`]) the
//! CPU tests' float64 expected values.
#![allow(dead_code)]

pub mod expected;
pub mod rig;

use crate::common::{assert_all_written, assert_bits_eq};
use ampkit::cpu::optim::{
    self, AdamConfig, OptimizerConfig, OptimizerState, ParamTensor, SgdConfig, StepOutcome,
};
use ampkit::f16;

pub const POISON_F16: u16 = 0xDEAD;

pub fn adam_default() -> OptimizerConfig {
    OptimizerConfig::adam(1e-3)
}

pub fn adam_l2() -> OptimizerConfig {
    OptimizerConfig::Adam(AdamConfig {
        lr: 0.05,
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.1,
    })
}

pub fn adamw() -> OptimizerConfig {
    OptimizerConfig::AdamW(AdamConfig {
        lr: 0.05,
        weight_decay: 0.1,
        ..AdamConfig::default()
    })
}

/// SGD with (lr, momentum, dampening, weight_decay, nesterov).
pub fn sgd(lr: f64, m: f64, d: f64, wd: f64, nesterov: bool) -> OptimizerConfig {
    OptimizerConfig::Sgd(SgdConfig {
        lr,
        momentum: m,
        dampening: d,
        weight_decay: wd,
        nesterov,
    })
}

/// Every optimizer variant the scripted tests (and the GPU tests) cover.
pub fn all_configs() -> Vec<OptimizerConfig> {
    vec![
        adam_default(),
        adam_l2(),
        adamw(),
        sgd(0.05, 0.0, 0.0, 0.0, false),
        sgd(0.05, 0.9, 0.0, 0.0, false),
        sgd(0.05, 0.9, 0.5, 0.01, false),
        sgd(0.05, 0.9, 0.0, 0.01, true),
    ]
}

pub fn split(flat: &[f32], lens: &[usize]) -> Vec<Vec<f32>> {
    let mut rest = flat;
    lens.iter()
        .map(|&n| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head.to_vec()
        })
        .collect()
}

/// The f32 master weights and f16 working copies of a model.
#[derive(Clone)]
pub struct Model {
    pub master: Vec<Vec<f32>>,
    pub half: Vec<Vec<f16>>,
}

impl Model {
    pub fn new(master: Vec<Vec<f32>>) -> Model {
        let half = master
            .iter()
            .map(|t| t.iter().map(|&x| f16::from_f32(x)).collect())
            .collect();
        Model { master, half }
    }

    pub fn step(
        &mut self,
        cfg: &OptimizerConfig,
        state: &mut OptimizerState,
        grads: &[Vec<f32>],
        found_inf: bool,
    ) -> ampkit::Result<StepOutcome> {
        let mut params: Vec<ParamTensor<'_>> = self
            .master
            .iter_mut()
            .zip(self.half.iter_mut())
            .zip(grads)
            .map(|((master, half), grad)| ParamTensor { master, grad, half })
            .collect();
        optim::step(cfg, state, &mut params, found_inf)
    }

    pub fn master_flat(&self) -> Vec<f32> {
        self.master.concat()
    }

    pub fn master_bits(&self) -> Vec<u32> {
        self.master.concat().iter().map(|x| x.to_bits()).collect()
    }

    pub fn half_bits(&self) -> Vec<u16> {
        self.half.concat().iter().map(|h| h.to_bits()).collect()
    }

    pub fn poison_half(&mut self) {
        for t in &mut self.half {
            t.fill(f16::from_bits(POISON_F16));
        }
    }

    /// The f16 copy must be the master rounded to nearest even, and fully rewritten.
    pub fn assert_half_is_rounded_master(&self, what: &str) {
        for (t, (h, m)) in self.half.iter().zip(&self.master).enumerate() {
            assert_all_written(
                &format!("{what}: f16 copy {t}"),
                h,
                f16::from_bits(POISON_F16),
            );
            let want: Vec<u16> = m.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
            let got: Vec<u16> = h.iter().map(|x| x.to_bits()).collect();
            assert_bits_eq(&format!("{what}: f16 copy {t}"), &got, &want, |i| m[i]);
        }
    }
}

/// One of the state's buffer accessors.
pub type Getter = fn(&OptimizerState, usize) -> Option<&[f32]>;

/// Every buffer of the state, concatenated, as bits: [m, v] (Adam) or [momentum] (SGD).
pub fn state_bits(state: &OptimizerState) -> Vec<Vec<u32>> {
    let getters: [Getter; 3] = [
        OptimizerState::exp_avg,
        OptimizerState::exp_avg_sq,
        OptimizerState::momentum_buffer,
    ];
    getters
        .iter()
        .filter_map(|get| {
            (0..state.tensor_lens().len())
                .map(|t| get(state, t).map(|b| b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.concat())
        })
        .collect()
}

pub fn buffer_flat(state: &OptimizerState, get: Getter) -> Vec<f32> {
    (0..state.tensor_lens().len())
        .flat_map(|t| get(state, t).expect("buffer exists").to_vec())
        .collect()
}

/// The state's buffers for `cfg`, in the order the script prints them after the params.
pub fn buffers_of(cfg: &OptimizerConfig) -> Vec<(&'static str, Getter)> {
    match cfg {
        OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => vec![
            ("m", OptimizerState::exp_avg),
            ("v", OptimizerState::exp_avg_sq),
        ],
        OptimizerConfig::Sgd(c) if c.momentum != 0.0 => {
            vec![("momentum", OptimizerState::momentum_buffer)]
        }
        OptimizerConfig::Sgd(_) => vec![],
    }
}
