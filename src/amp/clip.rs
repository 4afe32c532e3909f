//! Gradient clipping as part of the AMP step: PyTorch's `clip_grad_norm_` / `clip_grad_value_`
//! after `scaler.unscale_(optimizer)`, fused into the passes the step already makes.

use crate::cuda::{DeviceBuffer, Gpu};
use crate::error::{Error, Result};
use crate::ops;
use cudarc::driver::DevicePtr;
use serde::{Deserialize, Serialize};

/// Gradient clipping a scaler applies to the unscaled gradients of every real step (a skipped
/// step is not clipped: nothing is updated).
///
/// - `Norm { max_norm }`: PyTorch's `clip_grad_norm_(params, max_norm)` (2-norm,
///   `error_if_nonfinite=False`): the unscale pass also sums the squares of the unscaled
///   gradients (f64, compensated, a fixed order), its last block forms the factor
///   `min(max_norm / (norm + 1e-6), 1)` in PyTorch's f32 operations ([`crate::cpu::clip`]), and
///   the optimizer multiplies each gradient by it as it loads it: no extra pass over the
///   gradients and no host synchronisation.
/// - `Value { value }`: `clip_grad_value_(params, value)`, each gradient clamped to
///   `[−value, value]` as the optimizer loads it.
///
/// On the GPU the gradient buffers keep the unscaled, unclipped values (the optimizer clips on
/// the fly); [`super::CpuGradScaler`] does the same, so both leave identical buffers.
///
/// Serialised with a `mode` tag: `{"mode": "off"}`, `{"mode": "norm", "max_norm": 1.0}`,
/// `{"mode": "value", "value": 0.5}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum GradClip {
    /// No clipping.
    #[default]
    Off,
    /// Scale all gradients so that their global 2-norm is at most `max_norm`.
    Norm {
        /// The largest norm kept.
        max_norm: f32,
    },
    /// Clamp every gradient to `[−value, value]`.
    Value {
        /// The largest magnitude kept.
        value: f32,
    },
}

impl GradClip {
    /// Errors: [`Error::InvalidArgument`] for a limit that is not a finite positive number.
    pub fn validate(&self) -> Result<()> {
        let (what, v) = match *self {
            GradClip::Off => return Ok(()),
            GradClip::Norm { max_norm } => ("max_norm", max_norm),
            GradClip::Value { value } => ("value", value),
        };
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                op: "amp::GradClip",
                detail: format!(
                    "gradient clipping {what} must be a finite number above 0, got {v}"
                ),
            })
        }
    }
}

/// A [`super::GradScaler`]'s clipping: the mode, the device's `[factor, norm]` (written by the
/// unscale's last block, read by the optimizer) and the unscale's per-block sums of squares.
#[derive(Debug)]
pub(crate) struct Clipping {
    pub(crate) mode: GradClip,
    out: DeviceBuffer<f32>,
    partials: DeviceBuffer<f64>,
}

impl Clipping {
    /// Off; the factor reads 1 until a clipped unscale writes it.
    pub(crate) fn new(gpu: &Gpu) -> Result<Clipping> {
        Ok(Clipping {
            mode: GradClip::Off,
            out: gpu.upload(&[1.0f32, 0.0])?,
            partials: gpu.alloc_zeros(2)?,
        })
    }

    /// Sizes the partials for an unscale over tensors of `lens` when clipping by norm (an
    /// allocation only at a model's first step: a captured step never allocates).
    pub(crate) fn reserve(&mut self, gpu: &Gpu, lens: &[usize]) -> Result<()> {
        if matches!(self.mode, GradClip::Norm { .. }) {
            let slots = ops::unscale::norm_slots(gpu, lens);
            if self.partials.len() < 2 * slots {
                self.partials = gpu.alloc_zeros(2 * slots)?;
            }
        }
        Ok(())
    }

    /// The unscale's norm target when clipping by norm ([`Clipping::reserve`] first).
    pub(crate) fn norm_target(&mut self) -> Option<ops::unscale::NormTarget<'_>> {
        let GradClip::Norm { max_norm } = self.mode else {
            return None;
        };
        Some(ops::unscale::NormTarget {
            partials: &mut self.partials,
            clip: &mut self.out,
            max_norm,
        })
    }

    /// The last clipped unscale's norm (`None` unless clipping by norm); waits for the device.
    pub(crate) fn last_norm(&self, gpu: &Gpu) -> Result<Option<f32>> {
        match self.mode {
            GradClip::Norm { .. } => Ok(Some(gpu.download(&self.out)?[1])),
            _ => Ok(None),
        }
    }

    /// The optimizer's view: the factor's address or the clamp value.
    pub(crate) fn optimizer_args(&self, gpu: &Gpu) -> ops::optim::GradClip {
        match self.mode {
            GradClip::Off => ops::optim::GradClip::default(),
            // A plain address: ampkit's contexts run without cudarc's event tracking.
            GradClip::Norm { .. } => ops::optim::GradClip {
                coef: self.out.device_ptr(gpu.stream()).0,
                ..Default::default()
            },
            GradClip::Value { value } => ops::optim::GradClip {
                value,
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_and_serialised_with_a_tag() {
        assert!(GradClip::Norm { max_norm: 1.0 }.validate().is_ok());
        assert!(GradClip::Off.validate().is_ok());
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(GradClip::Norm { max_norm: bad }.validate().is_err());
            assert!(GradClip::Value { value: bad }.validate().is_err());
        }
        let json = serde_json::to_string(&GradClip::Norm { max_norm: 1.5 }).unwrap();
        assert_eq!(json, r#"{"mode":"norm","max_norm":1.5}"#);
        let back: GradClip = serde_json::from_str(r#"{"mode":"value","value":0.5}"#).unwrap();
        assert_eq!(back, GradClip::Value { value: 0.5 });
    }
}
