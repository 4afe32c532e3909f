//! The optimizer configs: Adam/AdamW and SGD hyperparameters as PyTorch receives them, their
//! accepted ranges, and the optimizer kind a state is created for.

use crate::error::{Error, Result};

/// Adam/AdamW hyperparameters (f64, as PyTorch receives them).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate. Accepted: finite (also as f32) and ≥ 0.
    pub lr: f64,
    /// First-moment decay β1. Accepted: 0 ≤ β1 < 1.
    pub beta1: f64,
    /// Second-moment decay β2. Accepted: 0 ≤ β2 < 1.
    pub beta2: f64,
    /// Denominator term. Accepted: finite and > 0, also after rounding to f32.
    pub eps: f64,
    /// L2 (Adam) or decoupled (AdamW) weight decay. Accepted: finite and ≥ 0.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// `torch.optim.Adam`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// SGD hyperparameters (f64, as PyTorch receives them).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Learning rate. Accepted: finite (also as f32) and ≥ 0.
    pub lr: f64,
    /// Momentum factor; 0 disables the buffer. Accepted: finite and ≥ 0.
    pub momentum: f64,
    /// Dampening of the gradient's contribution to the buffer. Accepted: 0 ≤ dampening ≤ 1.
    pub dampening: f64,
    /// L2 weight decay added to the gradient. Accepted: finite and ≥ 0.
    pub weight_decay: f64,
    /// Nesterov momentum. Accepted only with momentum > 0 and dampening = 0 (as PyTorch).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// `torch.optim.SGD`'s defaults: lr 1e-3, no momentum, dampening 0, no weight decay.
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// Which optimizer, with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// `torch.optim.Adam`: weight decay is L2, added to the gradient.
    Adam(AdamConfig),
    /// `torch.optim.AdamW`: weight decay is decoupled, `p *= 1 − lr·wd` before the update.
    AdamW(AdamConfig),
    /// `torch.optim.SGD` with optional momentum, dampening, Nesterov and weight decay.
    Sgd(SgdConfig),
}

impl OptimizerConfig {
    /// Adam with PyTorch's defaults and learning rate `lr`.
    pub fn adam(lr: f64) -> Self {
        OptimizerConfig::Adam(AdamConfig {
            lr,
            ..AdamConfig::default()
        })
    }

    /// AdamW with PyTorch's defaults (weight decay 1e-2) and learning rate `lr`.
    pub fn adamw(lr: f64) -> Self {
        OptimizerConfig::AdamW(AdamConfig {
            lr,
            weight_decay: 1e-2,
            ..AdamConfig::default()
        })
    }

    /// Plain SGD (PyTorch's defaults: no momentum, no weight decay) with learning rate `lr`.
    pub fn sgd(lr: f64) -> Self {
        OptimizerConfig::Sgd(SgdConfig {
            lr,
            ..SgdConfig::default()
        })
    }

    /// SGD with momentum (no dampening, not Nesterov) and learning rate `lr`.
    pub fn sgd_momentum(lr: f64, momentum: f64) -> Self {
        OptimizerConfig::Sgd(SgdConfig {
            lr,
            momentum,
            ..SgdConfig::default()
        })
    }

    /// Checks every hyperparameter against the accepted ranges documented on its field;
    /// returns [`Error::InvalidArgument`] naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, name: &str, value: f64, accepted: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidArgument {
                    op: "cpu::optim::OptimizerConfig::validate",
                    detail: format!("{name} = {value}; accepted: {accepted}"),
                })
            }
        };
        // `x as f32` must stay finite too: the per-element math sees the f32 value.
        let finite_nonneg = |x: f64| x >= 0.0 && (x as f32).is_finite();
        let nonneg = "a finite value ≥ 0 (also as f32)";
        match self {
            OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => {
                check(finite_nonneg(c.lr), "lr", c.lr, nonneg)?;
                let beta = (0.0..1.0).contains(&c.beta1);
                check(beta, "beta1", c.beta1, "0 ≤ beta1 < 1 (default 0.9)")?;
                let beta = (0.0..1.0).contains(&c.beta2);
                check(beta, "beta2", c.beta2, "0 ≤ beta2 < 1 (default 0.999)")?;
                let eps = c.eps as f32;
                let accepted = "a finite value > 0 that stays > 0 in f32 (default 1e-8)";
                check(eps > 0.0 && eps.is_finite(), "eps", c.eps, accepted)?;
                check(
                    finite_nonneg(c.weight_decay),
                    "weight_decay",
                    c.weight_decay,
                    nonneg,
                )
            }
            OptimizerConfig::Sgd(c) => {
                check(finite_nonneg(c.lr), "lr", c.lr, nonneg)?;
                check(finite_nonneg(c.momentum), "momentum", c.momentum, nonneg)?;
                let damp = (0.0..=1.0).contains(&c.dampening);
                check(damp, "dampening", c.dampening, "0 ≤ dampening ≤ 1")?;
                check(
                    finite_nonneg(c.weight_decay),
                    "weight_decay",
                    c.weight_decay,
                    nonneg,
                )?;
                let ok = !c.nesterov || (c.momentum > 0.0 && c.dampening == 0.0);
                let accepted = "nesterov = true requires momentum > 0 and dampening = 0";
                check(ok, "nesterov with momentum", c.momentum, accepted)?;
                check(ok, "nesterov with dampening", c.dampening, accepted)
            }
        }
    }

    pub(super) fn kind(&self) -> Kind {
        match self {
            OptimizerConfig::Adam(_) => Kind::Adam,
            OptimizerConfig::AdamW(_) => Kind::AdamW,
            OptimizerConfig::Sgd(_) => Kind::Sgd,
        }
    }
}

/// The optimizer a state was created for (an [`OptimizerConfig`] without its hyperparameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Adam,
    AdamW,
    Sgd,
}
