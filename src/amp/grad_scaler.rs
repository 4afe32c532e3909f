//! PyTorch's `GradScaler` as objects: [`GradScaler`] keeps its state in device memory and queues
//! every step on the GPU without synchronising; [`CpuGradScaler`](super::CpuGradScaler) is its
//! host twin over the CPU references. The module doc of [`crate::amp`] shows one step.

use super::clip::Clipping;
use super::{GradClip, LossScale, NonFinite, ScalerStages, Stage};
use crate::cuda::{DeviceBuffer, Gpu};
use crate::error::{Error, Result};
use crate::ops;
use crate::ops::optim::GpuParamTensor;
use crate::optim::{GpuParam, HalfCopy, Inner, Optimizer};
use cudarc::driver::{CudaViewMut, DevicePtrMut};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A scaler's state as plain data (serde), PyTorch's `GradScaler.state_dict()`: the mode with
/// its hyperparameters, the scale and the growth tracker. The stage of a step in progress is
/// not part of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalerStateDict {
    /// The loss-scaling mode and, when dynamic, its config.
    pub loss_scale: LossScale,
    /// The current loss scale (f32, PyTorch's `_scale`). Accepted: finite and ≥ 0 (a dynamic
    /// scale without `min_scale` may have collapsed to 0).
    pub scale: f32,
    /// Clean steps since the last growth or backoff (i32, PyTorch's `_growth_tracker`).
    pub growth_tracker: i32,
}

impl ScalerStateDict {
    /// Checks the mode ([`LossScale::validate`]) and that the scale is finite and ≥ 0; returns
    /// [`Error::InvalidArgument`] naming what is out of range.
    pub fn validate(&self) -> Result<()> {
        self.loss_scale.validate()?;
        if !(self.scale.is_finite() && self.scale >= 0.0) {
            return Err(Error::InvalidArgument {
                op: "amp::ScalerStateDict::validate",
                detail: format!(
                    "scale = {}; accepted: a finite value ≥ 0, as the update rule produces",
                    self.scale
                ),
            });
        }
        Ok(())
    }
}

/// PyTorch's `torch.amp.GradScaler` on a GPU: the scale, the growth tracker and the inf/NaN flag
/// are one-element device buffers that every call updates in place with queued kernels. No call
/// of a step ([`GradScaler::unscale`], [`GradScaler::step`], [`GradScaler::update`])
/// synchronises, copies to the host or allocates device memory, and the buffers never move, so a
/// whole step can be captured in a CUDA graph ([`Gpu::capture`]) and replayed.
///
/// Per step, in this order (the module doc of [`crate::amp`] has the code):
/// 1. compute the loss's gradient at [`GradScaler::scale`] (the device scale the loss kernel
///    multiplies by) and run backward: the gradients are scaled;
/// 2. optionally [`GradScaler::unscale`] them (e.g. to clip them);
/// 3. [`GradScaler::step`]: unscales unless step 2 did, then runs the optimizer, which changes
///    nothing when an inf/NaN gradient was found;
/// 4. [`GradScaler::update`]: the dynamic scale backs off (×`backoff_factor`) after an
///    overflow and grows (×`growth_factor`, if still finite) after `growth_interval` clean
///    steps.
///
/// Every result is bit-identical to the primitives it runs ([`ops::unscale::unscale_and_check`],
/// the optimizer's fused kernel, [`ops::scaler::update_scale`]), and so to [`CpuGradScaler`](super::CpuGradScaler):
/// the flag, the unscaled gradients, the scale and the tracker always (NaN payloads aside), the
/// optimizer's results as the kernel matches [`crate::cpu::optim`] (bit for bit with a constant
/// learning rate; a cosine schedule's f64 cosine may differ in its last bit between CUDA and
/// libm before it is rounded to f32). Calls out of this order are refused
/// like PyTorch refuses them ([`Error::InvalidArgument`], nothing changed): `unscale` twice or
/// after `step`, `step` twice, `update` without an `unscale` or `step` since the last one. One
/// optimizer per step: unscale all its gradients at once.
///
/// All work is queued on the stream of the `Gpu` the scaler was created with; create the
/// optimizer with the same handle.
#[derive(Debug)]
pub struct GradScaler {
    gpu: Arc<Gpu>,
    mode: LossScale,
    scale: DeviceBuffer<f32>,
    growth_tracker: DeviceBuffer<i32>,
    found_inf: DeviceBuffer<f32>,
    /// Two words: bit t set when gradient t of the last unscale held an inf/NaN.
    nonfinite: DeviceBuffer<u32>,
    /// Whether `nonfinite` may hold bits of a [`GradScaler::unscale`] / [`GradScaler::step`]
    /// (the training step's record clears its own).
    nonfinite_dirty: bool,
    /// Gradient clipping of real steps.
    clipping: Clipping,
    stages: ScalerStages,
}

impl GradScaler {
    /// A scaler on `gpu` at `loss_scale`'s initial scale, tracker 0, ready for a backward pass.
    ///
    /// Errors: [`Error::InvalidArgument`] when `loss_scale` fails [`LossScale::validate`];
    /// [`Error::Driver`] when the three buffers cannot be allocated.
    pub fn new(gpu: &Arc<Gpu>, loss_scale: LossScale) -> Result<GradScaler> {
        loss_scale.validate()?;
        Ok(GradScaler {
            scale: gpu.upload(&[loss_scale.initial_scale()])?,
            growth_tracker: gpu.alloc_zeros(1)?,
            found_inf: gpu.alloc_zeros(1)?,
            nonfinite: gpu.alloc_zeros(2)?,
            nonfinite_dirty: false,
            clipping: Clipping::new(gpu)?,
            gpu: gpu.clone(),
            mode: loss_scale,
            stages: ScalerStages::new(),
        })
    }

    /// The loss scale in device memory (one f32): pass it to the loss kernel (e.g.
    /// [`ops::cross_entropy::softmax_cross_entropy`]'s `scale`), which multiplies the loss gradient
    /// by it — PyTorch's `scaler.scale(loss)`. [`GradScaler::update`] changes it in place.
    pub fn scale(&self) -> &DeviceBuffer<f32> {
        &self.scale
    }

    /// The current scale, copied to the host: waits for the work queued so far (PyTorch's
    /// `get_scale()`). For logs; the step itself never needs it. Errors: [`Error::Driver`].
    pub fn get_scale(&self) -> Result<f32> {
        Ok(self.gpu.download(&self.scale)?[0])
    }

    /// The inf/NaN flag of the current (or last) step in device memory (one f32, 1.0 when a
    /// gradient was inf or NaN and the optimizer step was skipped, else 0.0): copy it where you
    /// keep per-step records. Cleared by the next unscale.
    pub fn found_inf(&self) -> &DeviceBuffer<f32> {
        &self.found_inf
    }

    /// Which gradients of the last [`GradScaler::unscale`] or [`GradScaler::step`] held an inf
    /// or NaN, by position in the list it was given (the overflow locator's per-tensor flags,
    /// set by the unscale kernel in the same pass as [`GradScaler::found_inf`]). Copies two
    /// words to the host: waits for the queued work. Empty when that step was clean.
    /// Errors: [`Error::Driver`].
    pub fn nonfinite_grads(&self) -> Result<NonFinite> {
        let w = self.gpu.download(&self.nonfinite)?;
        Ok(NonFinite::from_words(w[0], w[1]))
    }

    /// The loss-scaling mode.
    pub fn loss_scale(&self) -> &LossScale {
        &self.mode
    }

    /// Where the current step stands.
    pub fn stage(&self) -> Stage {
        self.stages.stage()
    }

    /// Clips the unscaled gradients of every following real step ([`GradClip`]: the norm in
    /// the unscale pass, the factor or clamp in the optimizer's; nothing synchronises). Takes
    /// effect at the next unscale. Errors: [`Error::InvalidArgument`] for an invalid limit.
    pub fn set_grad_clip(&mut self, clip: GradClip) -> Result<()> {
        clip.validate()?;
        self.clipping.mode = clip;
        Ok(())
    }

    /// The clipping set by [`GradScaler::set_grad_clip`] (off by default).
    pub fn grad_clip(&self) -> GradClip {
        self.clipping.mode
    }

    /// With [`GradClip::Norm`]: the global 2-norm of the last step's unscaled gradients (f32,
    /// what `clip_grad_norm_` returns; inf or NaN on a skipped step). Copies one value to the
    /// host: waits for the queued work. `None` without norm clipping. Errors: [`Error::Driver`].
    pub fn last_grad_norm(&self) -> Result<Option<f32>> {
        self.clipping.last_norm(&self.gpu)
    }

    /// PyTorch's `unscale_(optimizer)`: multiplies every gradient in place by
    /// `f32(1 / f64(scale))` (skipped when that is exactly 1) and records in
    /// [`GradScaler::found_inf`] whether any was inf or NaN, in one launch per 96 tensors.
    /// Pass all gradients of the optimizer at once; [`GradScaler::step`] then does not unscale
    /// again.
    ///
    /// Errors, with nothing queued: [`Error::InvalidArgument`] when called twice in a step or
    /// after [`GradScaler::step`], or for a misaligned tensor; otherwise as
    /// [`ops::unscale::unscale_and_check`].
    pub fn unscale<D: DevicePtrMut<f32>>(&mut self, grads: &mut [D]) -> Result<()> {
        let mut next = self.stages;
        next.unscale()?;
        self.unscale_now(grads)?;
        self.stages = next;
        Ok(())
    }

    /// Clears the flags, then unscales and checks (the flags are an OR over the call), and
    /// computes the clip factor when clipping by norm.
    fn unscale_now<D: DevicePtrMut<f32>>(&mut self, grads: &mut [D]) -> Result<()> {
        let lens: Vec<usize> = grads.iter().map(|g| g.len()).collect();
        self.clipping.reserve(&self.gpu, &lens)?;
        self.clear_flag()?;
        self.nonfinite_dirty = true;
        let gpu = self.gpu.clone();
        let (scale, found_inf, mask) = (&self.scale, &mut self.found_inf, &mut self.nonfinite);
        let mut norm = self.clipping.norm_target();
        ops::unscale::unscale_locate_norm(&gpu, grads, scale, found_inf, mask, norm.as_mut())
    }

    /// Zeroes the device flag, and the per-tensor mask when an earlier unscale may have left
    /// bits in it, before a step's unscale.
    fn clear_flag(&mut self) -> Result<()> {
        let stream = self.gpu.stream();
        stream
            .memset_zeros(&mut self.found_inf)
            .map_err(Error::driver("clearing found_inf"))?;
        if self.nonfinite_dirty {
            stream
                .memset_zeros(&mut self.nonfinite)
                .map_err(Error::driver("clearing the non-finite mask"))?;
            self.nonfinite_dirty = false;
        }
        Ok(())
    }

    /// `optimizer`'s device state, checked against this handle and `params`' count and lengths.
    fn checked_optimizer<'o, O: Optimizer + ?Sized, H: HalfCopy>(
        &self,
        op: &'static str,
        optimizer: &'o mut O,
        params: &[GpuParam<'_, H>],
    ) -> Result<&'o mut Inner> {
        let lens: Vec<[usize; 3]> = (params.iter())
            .map(|p| [p.master.len(), p.grad.len(), p.half.len()])
            .collect();
        let inner = optimizer.inner_mut();
        inner.check_device(op, &self.gpu, &lens)?;
        Ok(inner)
    }

    /// The optimizer's step over `params`, which the device skips when the flag is set.
    fn optimizer_step<H: HalfCopy>(
        &self,
        inner: &mut Inner,
        params: &mut [GpuParam<'_, H>],
    ) -> Result<()> {
        let mut tensors: Vec<GpuParamTensor<'_, H>> = params
            .iter_mut()
            .map(|p| GpuParamTensor {
                master: p.master.slice_mut(..),
                grad: p.grad.slice(..),
                half: p.half.slice_mut(..),
            })
            .collect();
        inner.step_device(
            &self.gpu,
            &mut tensors,
            &self.found_inf,
            self.clipping.optimizer_args(&self.gpu),
        )
    }

    /// PyTorch's `step(optimizer)`: unscales the gradients in `params` unless
    /// [`GradScaler::unscale`] already did this step, then queues one optimizer step over every
    /// tensor, which the device skips entirely (masters, 16-bit copies, moments, step counter)
    /// when the flag is set. The working copies are f16 or bf16 ([`HalfCopy`]: `GpuParam<'_>`
    /// or `GpuParam<'_, bf16>`). `params` are in the order, and of the lengths, the optimizer was
    /// created for. Nothing synchronises: whether the step was skipped is
    /// [`GradScaler::found_inf`].
    ///
    /// Errors, all before anything is queued or changed: [`Error::InvalidArgument`] when called
    /// twice in a step, for an optimizer on the host or created with another `Gpu` handle, or
    /// for an optimizer error [`crate::ops::optim::GpuOptimizer::step`] lists;
    /// [`Error::ShapeMismatch`] when the tensor count or a length disagrees with the optimizer.
    pub fn step<O: Optimizer + ?Sized, H: HalfCopy>(
        &mut self,
        optimizer: &mut O,
        params: &mut [GpuParam<'_, H>],
    ) -> Result<()> {
        const OP: &str = "amp::GradScaler::step";
        let mut next = self.stages;
        let unscale = next.step()?;
        let inner = self.checked_optimizer(OP, optimizer, params)?;
        if unscale {
            let mut grads: Vec<CudaViewMut<'_, f32>> =
                params.iter_mut().map(|p| p.grad.slice_mut(..)).collect();
            self.unscale_now(&mut grads)?;
        }
        self.optimizer_step(inner, params)?;
        self.stages = next;
        Ok(())
    }

    /// PyTorch's `update()`: with [`LossScale::Dynamic`], one launch applies the update rule of
    /// [`crate::cpu::scaler`] to the device scale and tracker from this step's flag; with
    /// [`LossScale::Static`] and [`LossScale::Off`] the scale stays. Ends the step.
    ///
    /// Errors, with nothing queued: [`Error::InvalidArgument`] when neither
    /// [`GradScaler::unscale`] nor [`GradScaler::step`] ran since the last update (PyTorch:
    /// "No inf checks were recorded"); [`Error::Launch`] when the launch fails.
    pub fn update(&mut self) -> Result<()> {
        let mut next = self.stages;
        next.update()?;
        if let Some(cfg) = self.mode.dynamic() {
            ops::scaler::update_scale(
                &self.gpu,
                &mut self.scale,
                &mut self.growth_tracker,
                &self.found_inf,
                cfg,
            )?;
        }
        self.stages = next;
        Ok(())
    }

    /// Whether a step's unscale only reads the gradients to check them: scale 1 for good
    /// ([`LossScale::Off`] or a static 1) and no clipping by norm. Then a gradient checked by
    /// the kernel that wrote it need not be read again.
    pub(crate) fn only_checks(&self) -> bool {
        let unit = match self.mode {
            LossScale::Off => true,
            LossScale::Static(s) => s == 1.0,
            LossScale::Dynamic(_) => false,
        };
        unit && !matches!(self.clipping.mode, GradClip::Norm { .. })
    }

    /// [`GradScaler::step`] and [`GradScaler::update`] of a training step, with the step's
    /// bookkeeping (`record_step` in `kernels/scaler.cu`: `(loss, scale, found_inf)` appended to the
    /// record buffer at the device's record cursor, the cursors advanced) and the scale update
    /// run by the last block of the unscale launch ([`ops::unscale::unscale_and_record`]), then
    /// the optimizer: one launch fewer than `step` + `update`, the same results (the optimizer
    /// reads only the flag; the record holds the scale the step ran with). Ends the step.
    /// `sources[t]` says where parameter `t`'s gradient values are (K-split slices that the
    /// unscale adds first, or checked where they were written; see
    /// [`ops::unscale::unscale_and_record`]). A checked gradient needs
    /// [`GradScaler::only_checks`].
    ///
    /// Errors: as `step`'s and `update`'s, and [`Error::InvalidArgument`] after
    /// [`GradScaler::unscale`] this step or for a checked gradient when the unscale must do
    /// more than check; nothing queued.
    pub(crate) fn step_recording<O: Optimizer + ?Sized, H: HalfCopy>(
        &mut self,
        optimizer: &mut O,
        params: &mut [GpuParam<'_, H>],
        sources: &mut [ops::unscale::GradSource<'_>],
        target: &mut ops::scaler::RecordTarget<'_>,
    ) -> Result<()> {
        const OP: &str = "amp::GradScaler::step_recording";
        let checked = (sources.iter()).any(|s| matches!(s, ops::unscale::GradSource::Checked(_)));
        if checked && !self.only_checks() {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "a gradient checked where it was written, but the unscale must also scale \
                     or measure it (loss scale {:?}, clipping {:?})",
                    self.mode, self.clipping.mode
                ),
            });
        }
        let mut next = self.stages;
        if !next.step()? {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: "the gradients were unscaled already this step: use step and update".into(),
            });
        }
        next.update()?;
        let inner = self.checked_optimizer(OP, optimizer, params)?;
        let lens: Vec<usize> = params.iter().map(|p| p.grad.len()).collect();
        self.clipping.reserve(&self.gpu, &lens)?;
        self.clear_flag()?;
        let mut grads: Vec<CudaViewMut<'_, f32>> =
            params.iter_mut().map(|p| p.grad.slice_mut(..)).collect();
        let rule = self.mode.dynamic().copied();
        let mut norm = self.clipping.norm_target();
        ops::unscale::unscale_and_record(
            &self.gpu,
            &mut grads,
            sources,
            &mut self.scale,
            &mut self.found_inf,
            &mut self.nonfinite,
            norm.as_mut(),
            target,
            rule.as_ref().map(|cfg| (&mut self.growth_tracker, cfg)),
        )?;
        drop(grads);
        self.optimizer_step(inner, params)?;
        self.stages = next;
        Ok(())
    }

    /// The state as plain data: copies the scale and tracker to the host (waits for the queued
    /// work). Errors: [`Error::Driver`].
    pub fn state_dict(&self) -> Result<ScalerStateDict> {
        Ok(ScalerStateDict {
            loss_scale: self.mode,
            scale: self.get_scale()?,
            growth_tracker: self.gpu.download(&self.growth_tracker)?[0],
        })
    }

    /// Replaces the mode, scale and tracker with `dict`'s, copied into the existing device
    /// buffers (their addresses, and a CUDA graph captured over them, stay valid), and starts a
    /// new step. The scale is taken as it is, also for a static mode.
    ///
    /// Errors, with nothing changed: [`Error::InvalidArgument`] when `dict` fails
    /// [`ScalerStateDict::validate`]; [`Error::Driver`] when a copy fails.
    pub fn load_state_dict(&mut self, dict: &ScalerStateDict) -> Result<()> {
        dict.validate()?;
        let stream = self.gpu.stream();
        stream
            .memcpy_htod(&[dict.scale], &mut self.scale)
            .map_err(Error::driver("copying the loss scale to the device"))?;
        stream
            .memcpy_htod(&[dict.growth_tracker], &mut self.growth_tracker)
            .map_err(Error::driver("copying the growth tracker to the device"))?;
        self.mode = dict.loss_scale;
        self.stages = ScalerStages::new();
        Ok(())
    }

    /// Back to the start of a step, for a caller whose step was abandoned before it ran (a
    /// CUDA-graph capture that failed queues nothing).
    pub(crate) fn restart_step(&mut self) {
        self.stages = ScalerStages::new();
    }
}
