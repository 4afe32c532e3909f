//! Automatic mixed precision: PyTorch's `GradScaler` — [`GradScaler`] with its state in device
//! memory, [`CpuGradScaler`] its twin on the CPU references — the loss-scaling modes
//! ([`LossScale`]) and the precision policy ([`Precision`]).
//!
//! # One AMP step
//!
//! On your own buffers, with an optimizer from [`crate::optim`], one step is three calls around
//! your forward and backward:
//!
//! 1. **scale**: compute the loss's gradient multiplied by `scaler.scale()` (PyTorch's
//!    `scaler.scale(loss).backward()`); the loss kernels take the scale as an argument
//!    ([`crate::ops::cross_entropy::softmax_cross_entropy`] reads it from device memory), and
//!    backward leaves every gradient scaled;
//! 2. **step**: `scaler.step(&mut opt, &mut params)?` unscales the gradients in place, checks
//!    them for inf/NaN and runs the optimizer, which changes nothing (weights, f16 copies,
//!    moments, step counter) when one was found. Call `scaler.unscale(grads)` before it to see
//!    or clip the unscaled gradients; `step` then does not unscale again;
//! 3. **update**: `scaler.update()?` halves a dynamic scale after an overflow and doubles it
//!    after `growth_interval` clean steps (if it stays finite).
//!
//! On the CPU, with a tiny model `loss = ½(w·x)²` whose backward we write by hand; the second
//! step's input overflows, so that step is skipped and the scale backs off:
//!
//! ```
//! use ampkit::amp::{CpuGradScaler, LossScale, ScalerConfig};
//! use ampkit::optim::{Optimizer, Param, Sgd, SgdConfig};
//! use ampkit::{f16, Device};
//!
//! let mut scaler = CpuGradScaler::new(LossScale::Dynamic(ScalerConfig::default()))?;
//! let mut opt = Sgd::new(&Device::Cpu, SgdConfig { lr: 0.5, ..SgdConfig::default() }, &[2])?;
//! let mut w = vec![1.0f32, -1.0]; // f32 master weights
//! let mut w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect(); // f16 copy
//! for x in [[0.5f32, 0.25], [f32::INFINITY, 1.0]] {
//!     // 1. scale: backward of scale·loss, d/dw = scale·(w·x)·x
//!     let y: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
//!     let mut grad: Vec<f32> = x.iter().map(|&xi| scaler.scale() * y * xi).collect();
//!     // 2. step: unscale, check, optimizer (skipped on inf/NaN)
//!     let param = Param { master: &mut w, grad: &mut grad, half: &mut w16 };
//!     let outcome = scaler.step(&mut opt, &mut [param])?;
//!     // 3. update the scale
//!     scaler.update()?;
//!     println!("skipped: {}, scale now {}", outcome.skipped(), scaler.scale());
//! }
//! assert_eq!(w, [0.9375, -1.03125]); // one real step: w − 0.5·(w·x)·x
//! assert_eq!(scaler.scale(), 32768.0); // 65536 backed off once
//! assert_eq!(opt.step_count()?, 1);
//! assert!(scaler.update().is_err()); // update() twice without an inf check: refused
//! # Ok::<(), ampkit::Error>(())
//! ```
//!
//! On a GPU the same three calls run on device buffers and never synchronise (`no_run`: it
//! needs a GPU; `examples/04_amp_step.rs` runs both):
//!
//! ```no_run
//! # fn main() -> ampkit::Result<()> {
//! use ampkit::amp::{GradScaler, LossScale, ScalerConfig};
//! use ampkit::optim::{Adam, AdamConfig, GpuParam};
//! use ampkit::{f16, Device};
//!
//! let gpu = ampkit::cuda::Gpu::new(0)?;
//! let (rows, classes) = (32, 10);
//! let (mut w, mut w16) = (gpu.alloc_zeros::<f32>(640)?, gpu.alloc_zeros::<f16>(640)?);
//! let mut dw = gpu.alloc_zeros::<f32>(640)?;
//! let (logits, labels) = (gpu.alloc_zeros::<f32>(rows * classes)?, gpu.alloc_zeros::<u32>(rows)?);
//! let (mut dlogits, mut loss) = (gpu.alloc_zeros::<f16>(rows * classes)?, gpu.alloc_zeros(1)?);
//!
//! let mut scaler = GradScaler::new(&gpu, LossScale::Dynamic(ScalerConfig::default()))?;
//! let mut opt = Adam::new(&Device::Cuda(gpu.clone()), AdamConfig::default(), &[640])?;
//! // forward into `logits`, then 1. the loss gradient at the scaler's (device) scale:
//! ampkit::ops::cross_entropy::softmax_cross_entropy(
//!     &gpu, &logits, &labels, rows, classes, scaler.scale(), &mut dlogits, &mut loss,
//! )?;
//! // ... backward from dlogits into dw (scaled), then 2. and 3.:
//! let param = GpuParam { master: w.slice_mut(..), grad: dw.slice_mut(..), half: w16.slice_mut(..) };
//! scaler.step(&mut opt, &mut [param])?;
//! scaler.update()?;
//! # Ok(()) }
//! ```
//!
//! The scale arithmetic is [`crate::cpu::scaler`]'s (reference) and [`crate::ops::scaler`]'s
//! (device), the unscale [`crate::cpu::unscale`]'s and [`crate::ops::unscale`]'s; the scalers
//! decide when each runs and refuse the call orders PyTorch refuses.

mod clip;
mod cpu_grad_scaler;
mod fp8;
mod grad_scaler;
mod nonfinite;

pub use crate::cpu::scaler::ScalerConfig;
pub use clip::GradClip;
pub use cpu_grad_scaler::CpuGradScaler;
pub use fp8::{Fp8Formats, Fp8Recipe};
pub use grad_scaler::{GradScaler, ScalerStateDict};
pub use nonfinite::NonFinite;

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

/// Where a step stands in PyTorch `GradScaler`'s protocol ([`GradScaler::stage`]):
/// `scale(loss).backward()`, then optionally `unscale()`, then `step()` (which unscales if that
/// has not happened), then `update()`.
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

/// The call-order state machine inside [`GradScaler`] and [`CpuGradScaler`]: refuses to
/// unscale twice or step twice before an update, with the same rules and nearly the same
/// messages as PyTorch. It records only the call order. Misuse is an [`Error::InvalidArgument`]
/// naming the call and the expected order, and leaves the stage unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ScalerStages {
    stage: Stage,
}

impl ScalerStages {
    /// A fresh scaler, ready for a backward pass.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The current stage.
    pub(crate) fn stage(&self) -> Stage {
        self.stage
    }

    /// Records `unscale_()`. Errors if the gradients were already unscaled or the step already
    /// ran since the last [`update`](Self::update).
    pub(crate) fn unscale(&mut self) -> Result<()> {
        match self.stage {
            Stage::Ready => {
                self.stage = Stage::Unscaled;
                Ok(())
            }
            Stage::Unscaled => Err(misuse(
                "unscale() has already been called since the last update()",
            )),
            Stage::Stepped => Err(misuse("unscale() is being called after step()")),
        }
    }

    /// Records `step()`; unscales first when that has not happened (returns whether it did).
    /// Errors if the step already ran since the last [`update`](Self::update).
    pub(crate) fn step(&mut self) -> Result<bool> {
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
    pub(crate) fn update(&mut self) -> Result<()> {
        if self.stage == Stage::Ready {
            return Err(misuse(
                "update() without a prior unscale() or step(): no inf checks were recorded",
            ));
        }
        self.stage = Stage::Ready;
        Ok(())
    }
}

fn misuse(detail: &str) -> Error {
    Error::InvalidArgument {
        op: "amp::GradScaler",
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
    /// BF16 autocast: the same placement as [`Precision::Mixed`] with bf16 in place of f16
    /// (bf16 GEMM operands and activations, f32 accumulation, f32 master weights with bf16
    /// copies). bf16 has f32's exponent range, so it trains without loss scaling: the default
    /// loss scaling is off, as PyTorch uses no `GradScaler` with bf16 autocast.
    Bf16,
    /// FP8 GEMMs in the hidden linear layers with Transformer Engine's delayed scaling
    /// ([`Fp8Recipe`]: E4M3 inputs and weights, E5M2 gradients, per-tensor scales from an amax
    /// history), f32 accumulation; everything else as [`Precision::Bf16`] (the last layer,
    /// which TE recommends keeping in higher precision, the activations between layers, f32
    /// masters, no loss scaling).
    Fp8,
    /// Everything in f32 (the baseline).
    Fp32,
}

impl Precision {
    /// The name `--precision` takes and messages use: `mixed`, `bf16`, `fp8` or `fp32`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Mixed => "mixed",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
            Precision::Fp32 => "fp32",
        }
    }

    /// Whether the default loss scaling is dynamic (f16 only: bf16, FP8 with its per-tensor
    /// scales, and f32 need none).
    pub fn scales_loss(self) -> bool {
        self == Precision::Mixed
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "amp" | "mixed" | "fp16" | "f16" => Ok(Precision::Mixed),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "fp8" | "f8" => Ok(Precision::Fp8),
            "fp32" | "f32" => Ok(Precision::Fp32),
            _ => Err(format!(
                "unknown precision {s:?}: use mixed (fp16), bf16, fp8 or fp32"
            )),
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
