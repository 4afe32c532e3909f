//! The f32 scalars one step passes to the per-element math, formed once per step in f64 (the
//! module doc of [`crate::cpu::optim`] says how and why).

use super::{AdamConfig, SgdConfig};

/// The f32 scalars one Adam/AdamW step passes to its per-element math (the GPU kernel's
/// arguments). See the module doc for how each is formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamCoefficients {
    /// `f32(β1)`.
    pub beta1: f32,
    /// `f32(1 − β1)`, formed in f64.
    pub one_minus_beta1: f32,
    /// `f32(β2)`.
    pub beta2: f32,
    /// `f32(1 − β2)`, formed in f64.
    pub one_minus_beta2: f32,
    /// `f32(eps)`.
    pub eps: f32,
    /// `f32(lr / (1 − β1^t))`, formed in f64.
    pub step_size: f32,
    /// `f32(sqrt(1 − β2^t))`, formed in f64.
    pub bias_correction2_sqrt: f32,
    /// Adam's L2 coefficient `f32(wd)` added as `g + wd·p`; 0 for AdamW.
    pub l2: f32,
    /// AdamW's decoupled factor `f32(1 − lr·wd)`, applied when `wd ≠ 0`; exactly 1 otherwise
    /// and for Adam.
    pub decay: f32,
}

impl AdamCoefficients {
    /// The coefficients for step `t` (the count *after* the increment, so ≥ 1) of an Adam
    /// (`decoupled = false`) or AdamW (`decoupled = true`) optimizer.
    pub fn new(cfg: &AdamConfig, decoupled: bool, t: u64) -> Self {
        let t = t as f64;
        let bc1 = 1.0 - cfg.beta1.powf(t);
        let bc2 = 1.0 - cfg.beta2.powf(t);
        let wd = cfg.weight_decay;
        AdamCoefficients {
            beta1: cfg.beta1 as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            eps: cfg.eps as f32,
            step_size: (cfg.lr / bc1) as f32,
            bias_correction2_sqrt: bc2.sqrt() as f32,
            l2: if decoupled { 0.0 } else { wd as f32 },
            decay: if decoupled && wd != 0.0 {
                (1.0 - cfg.lr * wd) as f32
            } else {
                1.0
            },
        }
    }
}

/// The f32 scalars one SGD step passes to its per-element math (the GPU kernel's arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdCoefficients {
    /// `f32(lr)`.
    pub lr: f32,
    /// `f32(momentum)`; 0 means no buffer is read or written.
    pub momentum: f32,
    /// `f32(1 − dampening)`, formed in f64.
    pub one_minus_dampening: f32,
    /// `f32(weight_decay)`.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// The buffer is still empty (no real step with momentum yet): it is set to the gradient
    /// instead of being decayed.
    pub first_step: bool,
}

impl SgdCoefficients {
    /// The coefficients for a step; `first_step` is true until a real step with momentum has
    /// filled the buffers.
    pub fn new(cfg: &SgdConfig, first_step: bool) -> Self {
        SgdCoefficients {
            lr: cfg.lr as f32,
            momentum: cfg.momentum as f32,
            one_minus_dampening: (1.0 - cfg.dampening) as f32,
            weight_decay: cfg.weight_decay as f32,
            nesterov: cfg.nesterov,
            first_step,
        }
    }
}
