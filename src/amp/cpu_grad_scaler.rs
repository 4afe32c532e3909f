//! [`CpuGradScaler`]: [`super::GradScaler`]'s twin on the CPU references.

use super::{GradClip, LossScale, NonFinite, ScalerStages, ScalerStateDict, Stage};
use crate::cpu::optim::ParamTensor;
use crate::cpu::scaler::{update_scale, ScalerState};
use crate::cpu::unscale::{inv_scale, unscale_and_locate};
use crate::error::Result;
use crate::optim::{HalfCopy, Optimizer, Param, StepOutcome};
#[cfg(doc)]
use {super::GradScaler, crate::error::Error};

/// [`GradScaler`]'s twin on the CPU references, with the same calls and results: the scale and
/// tracker are a [`ScalerState`], the flag a `bool`, and each call runs
/// [`crate::cpu::unscale::unscale_and_locate`], [`crate::cpu::optim::step`] and
/// [`crate::cpu::scaler::update_scale`] exactly as a hand-written step would, so results are
/// bit-identical to those (and to the GPU, as [`GradScaler`] says). Misuse is refused as by
/// [`GradScaler`].
#[derive(Debug, Clone)]
pub struct CpuGradScaler {
    mode: LossScale,
    state: ScalerState,
    nonfinite: NonFinite,
    clip: GradClip,
    /// The last unscale's gradient norm and clip factor (clipping by norm).
    norm: Option<(f32, f32)>,
    stages: ScalerStages,
}

impl CpuGradScaler {
    /// A scaler at `loss_scale`'s initial scale, tracker 0, ready for a backward pass.
    /// Errors: [`Error::InvalidArgument`] when `loss_scale` fails [`LossScale::validate`].
    pub fn new(loss_scale: LossScale) -> Result<CpuGradScaler> {
        loss_scale.validate()?;
        Ok(CpuGradScaler {
            state: ScalerState {
                scale: loss_scale.initial_scale(),
                growth_tracker: 0,
            },
            mode: loss_scale,
            nonfinite: NonFinite::NONE,
            clip: GradClip::Off,
            norm: None,
            stages: ScalerStages::new(),
        })
    }

    /// The loss scale the loss gradient is multiplied by (PyTorch's `scaler.scale(loss)` is
    /// `loss * scale()`).
    pub fn scale(&self) -> f32 {
        self.state.scale
    }

    /// Whether the current (or last) step found an inf/NaN gradient (and so skipped the
    /// optimizer step). Cleared by the next unscale.
    pub fn found_inf(&self) -> bool {
        !self.nonfinite.is_empty()
    }

    /// Which gradients of the last unscale held an inf or NaN, by position in the list it was
    /// given ([`GradScaler::nonfinite_grads`] on the host). Cleared by the next unscale.
    pub fn nonfinite_grads(&self) -> NonFinite {
        self.nonfinite
    }

    /// [`GradScaler::set_grad_clip`] on the host: the optimizer of every following real step
    /// sees the gradients clipped ([`crate::cpu::clip`]); the gradient buffers keep the
    /// unscaled values, as on the GPU. Errors: [`Error::InvalidArgument`] for an invalid limit.
    pub fn set_grad_clip(&mut self, clip: GradClip) -> Result<()> {
        clip.validate()?;
        self.clip = clip;
        Ok(())
    }

    /// The clipping set by [`CpuGradScaler::set_grad_clip`].
    pub fn grad_clip(&self) -> GradClip {
        self.clip
    }

    /// [`GradScaler::last_grad_norm`] on the host: the last unscale's gradient norm when
    /// clipping by norm.
    pub fn last_grad_norm(&self) -> Option<f32> {
        self.norm.map(|(n, _)| n)
    }

    /// Unscales, checks, and with norm clipping computes the norm and factor.
    fn unscale_now(&mut self, grads: &mut [&mut [f32]]) {
        self.nonfinite = unscale_and_locate(grads, inv_scale(self.state.scale));
        self.norm = match self.clip {
            GradClip::Norm { max_norm } => {
                let views: Vec<&[f32]> = grads.iter().map(|g| &**g).collect();
                let n = crate::cpu::clip::grad_norm(&views) as f32;
                Some((n, crate::cpu::clip::clip_coefficient(n, max_norm)))
            }
            _ => None,
        };
    }

    /// The gradients the optimizer sees: clipped copies when clipping applies (a real step),
    /// else none (the buffers themselves).
    fn clipped(&self, grads: &[&[f32]]) -> Option<Vec<Vec<f32>>> {
        if self.found_inf() {
            return None;
        }
        match (self.clip, self.norm) {
            (GradClip::Norm { .. }, Some((_, coef))) => Some(
                grads
                    .iter()
                    .map(|g| g.iter().map(|&x| x * coef).collect())
                    .collect(),
            ),
            (GradClip::Value { value }, _) => {
                let mut out: Vec<Vec<f32>> = grads.iter().map(|g| g.to_vec()).collect();
                let mut views: Vec<&mut [f32]> = out.iter_mut().map(|g| &mut g[..]).collect();
                crate::cpu::clip::clip_grad_value(&mut views, value);
                Some(out)
            }
            _ => None,
        }
    }

    /// The loss-scaling mode.
    pub fn loss_scale(&self) -> &LossScale {
        &self.mode
    }

    /// Where the current step stands.
    pub fn stage(&self) -> Stage {
        self.stages.stage()
    }

    /// [`GradScaler::unscale`] on the host: `g *= f32(1 / f64(scale))` unless that is 1, and
    /// records whether any input was inf or NaN. Errors: [`Error::InvalidArgument`] when
    /// called twice in a step or after [`CpuGradScaler::step`] (nothing changed).
    pub fn unscale(&mut self, grads: &mut [&mut [f32]]) -> Result<()> {
        self.stages.unscale()?;
        self.unscale_now(grads);
        Ok(())
    }

    /// [`GradScaler::step`] on the host: unscales unless already done this step, then the
    /// optimizer step, skipped when an inf/NaN was found; returns which it was. The working
    /// copies are f16 or bf16 ([`HalfCopy`]: `Param<'_>` or `Param<'_, bf16>`).
    ///
    /// Errors, all before anything changes: [`Error::InvalidArgument`] when called twice in a
    /// step or for an optimizer on a GPU; [`Error::ShapeMismatch`] when the tensor count or a
    /// length disagrees with the optimizer.
    pub fn step<O: Optimizer + ?Sized, H: HalfCopy>(
        &mut self,
        optimizer: &mut O,
        params: &mut [Param<'_, H>],
    ) -> Result<StepOutcome> {
        const OP: &str = "amp::CpuGradScaler::step";
        let mut next = self.stages;
        let unscale = next.step()?;
        let lens: Vec<[usize; 3]> = (params.iter())
            .map(|p| [p.master.len(), p.grad.len(), p.half.len()])
            .collect();
        let inner = optimizer.inner_mut();
        inner.check_host(OP, &lens)?;
        if unscale {
            let mut grads: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut *p.grad).collect();
            self.unscale_now(&mut grads);
        }
        let views: Vec<&[f32]> = params.iter().map(|p| &*p.grad).collect();
        let clipped = self.clipped(&views);
        let mut tensors: Vec<ParamTensor<'_, H>> = params
            .iter_mut()
            .enumerate()
            .map(|(t, p)| ParamTensor {
                master: &mut *p.master,
                grad: match &clipped {
                    Some(c) => &c[t][..],
                    None => &*p.grad,
                },
                half: &mut *p.half,
            })
            .collect();
        let outcome = inner.step_host(&mut tensors, self.found_inf())?;
        self.stages = next;
        Ok(outcome)
    }

    /// [`GradScaler::update`] on the host ([`crate::cpu::scaler::update_scale`] for a dynamic
    /// scale). Errors: [`Error::InvalidArgument`] when no unscale or step ran since the last
    /// update.
    pub fn update(&mut self) -> Result<()> {
        self.stages.update()?;
        if let Some(cfg) = self.mode.dynamic() {
            let found_inf = self.found_inf();
            update_scale(&mut self.state, found_inf, cfg);
        }
        Ok(())
    }

    /// The state as plain data.
    pub fn state_dict(&self) -> ScalerStateDict {
        ScalerStateDict {
            loss_scale: self.mode,
            scale: self.state.scale,
            growth_tracker: self.state.growth_tracker,
        }
    }

    /// Replaces the mode, scale and tracker with `dict`'s and starts a new step, as
    /// [`GradScaler::load_state_dict`]. Errors: [`Error::InvalidArgument`] when `dict` fails
    /// [`ScalerStateDict::validate`] (nothing changed).
    pub fn load_state_dict(&mut self, dict: &ScalerStateDict) -> Result<()> {
        dict.validate()?;
        self.mode = dict.loss_scale;
        self.state = ScalerState {
            scale: dict.scale,
            growth_tracker: dict.growth_tracker,
        };
        self.nonfinite = NonFinite::NONE;
        self.stages = ScalerStages::new();
        Ok(())
    }
}
