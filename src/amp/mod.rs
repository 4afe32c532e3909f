//! Automatic mixed precision: the loss-scaling modes, PyTorch `GradScaler`'s per-step state
//! machine, and the precision policy (which op runs in which dtype).
//!
//! The scale arithmetic itself lives in [`crate::cpu::scaler`] (reference) and
//! [`crate::ops::scaler`] (the device-side update); this module decides *when* each piece runs
//! and refuses the misuse PyTorch refuses.
//!
//! One step, PyTorch's `scaler.scale(loss).backward(); scaler.step(opt); scaler.update()`, on the
//! CPU references (the GPU path calls the [`crate::ops`] twins in the same order):
//!
//! ```
//! use ampkit::amp::ScalerStages;
//! use ampkit::cpu::{scaler, unscale};
//!
//! let cfg = scaler::ScalerConfig::default(); // 2^16, ×2 per 2000 clean steps, ×0.5 on overflow
//! let mut state = scaler::ScalerState::new(&cfg)?;
//! let mut stages = ScalerStages::new();
//!
//! // backward at the current scale produced these gradients (one overflowed):
//! let mut grads = vec![1.5 * state.scale, f32::INFINITY];
//! stages.unscale()?; // scaler.unscale_(opt)
//! let found_inf = unscale::unscale_and_check(&mut [&mut grads[..]], unscale::inv_scale(state.scale));
//! assert!(found_inf);
//! assert!(!stages.step()?); // scaler.step(opt): already unscaled; the optimizer skips on found_inf
//! scaler::update_scale(&mut state, found_inf, &cfg); // scaler.update(): back off
//! stages.update()?;
//! assert_eq!(state.scale, 32768.0);
//! assert!(stages.update().is_err()); // update() twice without an inf check: refused, like PyTorch
//! # Ok::<(), ampkit::Error>(())
//! ```

use crate::cpu::scaler::ScalerConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the loss is scaled.
///
/// Serialised with a `mode` tag: `{"mode": "dynamic", "init_scale": 65536.0, ...}` (the
/// [`ScalerConfig`] fields), `{"mode": "static", "scale": 1024.0}`, `{"mode": "off"}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "LossScaleRepr", into = "LossScaleRepr")]
pub enum LossScale {
    /// PyTorch `GradScaler`: start at `init_scale`, back off on an inf/NaN gradient (the step is
    /// skipped), grow after `growth_interval` clean steps.
    Dynamic(ScalerConfig),
    /// A fixed scale. Gradients are still unscaled and checked, and a step with an inf/NaN
    /// gradient is still skipped; the scale never changes.
    Static(f32),
    /// No scaling (scale 1). Gradients are still checked, and a non-finite step is skipped.
    Off,
}

/// [`LossScale`]'s serialised form. serde cannot write an internally tagged newtype variant
/// holding a number, so the static scale gets a field name; the other modes are written as the
/// derived internally tagged enum always wrote them.
#[derive(Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
enum LossScaleRepr {
    Dynamic(ScalerConfig),
    Static { scale: f32 },
    Off,
}

impl From<LossScaleRepr> for LossScale {
    fn from(r: LossScaleRepr) -> LossScale {
        match r {
            LossScaleRepr::Dynamic(c) => LossScale::Dynamic(c),
            LossScaleRepr::Static { scale } => LossScale::Static(scale),
            LossScaleRepr::Off => LossScale::Off,
        }
    }
}

impl From<LossScale> for LossScaleRepr {
    fn from(s: LossScale) -> LossScaleRepr {
        match s {
            LossScale::Dynamic(c) => LossScaleRepr::Dynamic(c),
            LossScale::Static(scale) => LossScaleRepr::Static { scale },
            LossScale::Off => LossScaleRepr::Off,
        }
    }
}

impl LossScale {
    /// The scale of the first step.
    pub fn initial_scale(&self) -> f32 {
        match self {
            LossScale::Dynamic(c) => c.init_scale,
            LossScale::Static(s) => *s,
            LossScale::Off => 1.0,
        }
    }

    /// The dynamic scaler's config, if the scale is dynamic.
    pub fn dynamic(&self) -> Option<&ScalerConfig> {
        match self {
            LossScale::Dynamic(c) => Some(c),
            _ => None,
        }
    }

    /// Checks the config (dynamic) or that a static scale is finite and > 0. Errors:
    /// [`Error::InvalidArgument`] naming what is out of range.
    pub fn validate(&self) -> Result<()> {
        match self {
            LossScale::Dynamic(c) => c.validate(),
            LossScale::Static(s) if !(s.is_finite() && *s > 0.0) => Err(Error::InvalidArgument {
                op: "amp::LossScale",
                detail: format!("a static loss scale must be finite and > 0, got {s}"),
            }),
            _ => Ok(()),
        }
    }
}

/// Where a step stands in PyTorch `GradScaler`'s protocol: `scale(loss).backward()`, then
/// optionally `unscale_()`, then `step()` (which unscales if that has not happened), then
/// `update()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// Gradients are (being) produced at the current scale.
    #[default]
    Ready,
    /// Gradients were unscaled and checked for inf/NaN.
    Unscaled,
    /// The optimizer step ran (or was skipped).
    Stepped,
}

/// The `GradScaler` state machine: refuses to unscale twice or step twice before an update,
/// with the same rules and nearly the same messages as PyTorch. It records only the call order;
/// the scale itself is a [`crate::cpu::scaler::ScalerState`] (or its device twin). Misuse is an
/// [`Error::InvalidArgument`] naming the call and the expected order, and leaves the stage
/// unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScalerStages {
    stage: Stage,
}

impl ScalerStages {
    /// A fresh scaler, ready for a backward pass.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Records `unscale_()`. Errors if the gradients were already unscaled or the step already
    /// ran since the last [`update`](Self::update).
    pub fn unscale(&mut self) -> Result<()> {
        match self.stage {
            Stage::Ready => {
                self.stage = Stage::Unscaled;
                Ok(())
            }
            Stage::Unscaled => Err(misuse(
                "unscale_() has already been called on this optimizer since the last update()",
            )),
            Stage::Stepped => Err(misuse("unscale_() is being called after step()")),
        }
    }

    /// Records `step()`; unscales first when that has not happened (returns whether it did).
    /// Errors if the step already ran since the last [`update`](Self::update).
    pub fn step(&mut self) -> Result<bool> {
        match self.stage {
            Stage::Ready => {
                self.stage = Stage::Stepped;
                Ok(true)
            }
            Stage::Unscaled => {
                self.stage = Stage::Stepped;
                Ok(false)
            }
            Stage::Stepped => Err(misuse(
                "step() has already been called since the last update()",
            )),
        }
    }

    /// Records `update()`. Errors unless an inf check happened since the last update (PyTorch:
    /// "No inf checks were recorded prior to update.").
    pub fn update(&mut self) -> Result<()> {
        if self.stage == Stage::Ready {
            return Err(misuse(
                "update() without a prior unscale_() or step(): no inf checks were recorded",
            ));
        }
        self.stage = Stage::Ready;
        Ok(())
    }
}

fn misuse(detail: &str) -> Error {
    Error::InvalidArgument {
        op: "amp::ScalerStages",
        detail: format!("{detail} (call order per step: backward, [unscale], step, update)"),
    }
}

/// Which dtype the model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// PyTorch autocast: GEMMs in f16 with f32 accumulation, layernorm, softmax and the loss in
    /// f32, f32 master weights. Layers named in the model's `fp32_layers` run in f32, like an
    /// `autocast(enabled=False)` region.
    #[default]
    Mixed,
    /// Everything in f32 (the baseline).
    Fp32,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "amp" | "mixed" | "fp16" => Ok(Precision::Mixed),
            "fp32" | "f32" => Ok(Precision::Fp32),
            _ => Err(format!("unknown precision {s:?}: use mixed (fp16) or fp32")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_enforced() {
        let mut s = ScalerStages::new();
        assert!(s.update().is_err(), "update before any inf check");
        s.unscale().unwrap();
        assert!(s.unscale().is_err(), "unscale twice");
        assert!(!s.step().unwrap(), "already unscaled");
        assert!(s.step().is_err(), "step twice");
        assert!(s.unscale().is_err(), "unscale after step");
        s.update().unwrap();
        assert!(s.step().unwrap(), "step unscales on its own");
        s.update().unwrap();
        assert_eq!(s.stage(), Stage::Ready);
    }

    #[test]
    fn loss_scale_modes() {
        assert_eq!(LossScale::Off.initial_scale(), 1.0);
        assert_eq!(LossScale::Static(128.0).initial_scale(), 128.0);
        assert_eq!(
            LossScale::Dynamic(ScalerConfig::default()).initial_scale(),
            65536.0
        );
        assert!(LossScale::Static(0.0).validate().is_err());
        assert!(LossScale::Static(f32::INFINITY).validate().is_err());
    }

    #[test]
    fn every_loss_scale_mode_round_trips_through_json() {
        let dynamic = LossScale::Dynamic(ScalerConfig {
            min_scale: Some(1.0),
            ..ScalerConfig::default()
        });
        for (mode, json) in [
            (
                LossScale::Static(1024.0),
                r#"{"mode":"static","scale":1024.0}"#,
            ),
            (LossScale::Off, r#"{"mode":"off"}"#),
            (
                dynamic,
                r#"{"mode":"dynamic","init_scale":65536.0,"growth_factor":2.0,"backoff_factor":0.5,"growth_interval":2000,"min_scale":1.0,"max_scale":null}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&mode).unwrap(), json);
            assert_eq!(serde_json::from_str::<LossScale>(json).unwrap(), mode);
        }
    }
}
