//! Learning-rate schedules (the reference formula; the GPU optimizer evaluates the same one). The rate is a function of the number of *real* optimizer steps taken
//! so far, so a skipped step (inf/NaN gradient) does not advance the schedule; on the GPU the
//! optimizer kernel evaluates the same formula from its device-side step counter.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the learning rate moves over training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// `lr(t) = min_lr + (base − min_lr)·(1 + cos(π·min(t, total)/total))/2`, t = real steps
    /// taken before this one (PyTorch's `CosineAnnealingLR` with `T_max = total`, `eta_min`).
    Cosine {
        /// Steps to decay over (`T_max`).
        total: u64,
        /// The floor (`eta_min`).
        min_lr: f64,
    },
}

impl LrSchedule {
    /// The rate for the step after `t` real steps, given the base rate. f64 throughout; the GPU
    /// kernel computes the same expression in f64.
    pub fn lr_at(&self, base: f64, t: u64) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine { total, min_lr } => {
                let frac = t.min(total) as f64 / total.max(1) as f64;
                min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * frac).cos()) / 2.0
            }
        }
    }

    /// The same schedule over `total` steps: a cosine schedule's `total` (`T_max`) is replaced,
    /// its floor kept; a constant schedule is returned as it is. Extending a run uses this: the
    /// rate of the next step is `lr_at(base, t)` with `t` still the real steps taken so far, so
    /// the decay continues from where the run is, over the new horizon.
    pub fn with_total(self, total: u64) -> LrSchedule {
        match self {
            LrSchedule::Constant => LrSchedule::Constant,
            LrSchedule::Cosine { min_lr, .. } => LrSchedule::Cosine { total, min_lr },
        }
    }

    /// The schedule's code and parameters for the GPU optimizer kernel: (kind, total, min_lr),
    /// kind 0 constant, 1 cosine.
    pub(crate) fn device_params(&self) -> (i32, u64, f64) {
        match *self {
            LrSchedule::Constant => (0, 0, 0.0),
            LrSchedule::Cosine { total, min_lr } => (1, total, min_lr),
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LrSchedule::Cosine { total, min_lr }
                if total == 0 || !min_lr.is_finite() || min_lr < 0.0 =>
            {
                Err(Error::InvalidArgument {
                    op: "cpu::schedule::LrSchedule",
                    detail: format!(
                        "cosine needs total ≥ 1 and min_lr ≥ 0 (got total {total}, min_lr {min_lr})"
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_goes_from_base_to_floor() {
        let s = LrSchedule::Cosine {
            total: 100,
            min_lr: 1e-5,
        };
        assert_eq!(s.lr_at(1e-3, 0), 1e-3);
        assert!((s.lr_at(1e-3, 50) - (1e-3 + 1e-5) / 2.0).abs() < 1e-15);
        assert!((s.lr_at(1e-3, 100) - 1e-5).abs() < 1e-18);
        assert_eq!(s.lr_at(1e-3, 1000), s.lr_at(1e-3, 100));
        assert_eq!(LrSchedule::Constant.lr_at(0.1, 77), 0.1);
        assert!(LrSchedule::Cosine {
            total: 0,
            min_lr: 0.0
        }
        .validate()
        .is_err());
    }
}
