//! The dynamic loss-scale update on the GPU (`kernels/scaler.cu`); CPU twin:
//! [`crate::cpu::scaler`], which documents the rule. Bit-exact with it.
//!
//! The scale and growth tracker stay in device memory and are updated in place by one thread,
//! reading the `found_inf` flag that [`crate::ops::unscale`] sets: no host synchronisation, and
//! fixed addresses for CUDA-graph replay. Read them back only when logging.

use crate::cpu::scaler::ScalerConfig;
use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;
use cudarc::driver::{DevicePtr, DevicePtrMut};

/// Applies one update to the device-resident `scale` (one f32) and `growth_tracker` (one i32)
/// from the device flag `found_inf` (one f32, nonzero meaning an overflow), with `cfg`'s factors
/// and optional clamps; bit-exact with [`crate::cpu::scaler::update_scale`]. Queued on
/// [`Gpu::stream`]; read the scale back only when you need it on the host.
///
/// Errors, before any launch: [`Error::InvalidArgument`] when `cfg` fails
/// [`ScalerConfig::validate`]; [`Error::ShapeMismatch`] unless each of the three buffers is one
/// element.
pub fn update_scale(
    gpu: &Gpu,
    scale: &mut impl DevicePtrMut<f32>,
    growth_tracker: &mut impl DevicePtrMut<i32>,
    found_inf: &impl DevicePtr<f32>,
    cfg: &ScalerConfig,
) -> Result<()> {
    const OP: &str = "ops::scaler::update_scale";
    cfg.validate()?;
    for (name, len) in [
        ("scale", scale.len()),
        ("growth_tracker", growth_tracker.len()),
        ("found_inf", found_inf.len()),
    ] {
        if len != 1 {
            return Err(Error::ShapeMismatch {
                op: OP,
                detail: format!("{name} must be one element on the device, got {len}"),
            });
        }
    }
    let stream = gpu.stream();
    let (s, _g1) = scale.device_ptr_mut(stream);
    let (t, _g2) = growth_tracker.device_ptr_mut(stream);
    let (f, _g3) = found_inf.device_ptr(stream);
    let mut args = KernelArgs::new();
    args.push(s).push(t).push(f);
    push_rule(&mut args, cfg);
    // SAFETY: update_scale(float* scale, int* tracker, const float* found_inf, double growth,
    // double backoff, int interval, int has_min, float min_scale, int has_max, float max_scale)
    // matches the arguments in order and type; the three pointers each hold one element.
    unsafe {
        gpu.launch(
            &kernels::SCALER,
            "update_scale",
            LaunchConfig::linear(1, 1),
            &args,
        )
    }
}

/// The update rule's parameters, in the kernels' order: growth, backoff, interval, has_min,
/// min_scale, has_max, max_scale.
fn push_rule(args: &mut KernelArgs, cfg: &ScalerConfig) {
    args.push(cfg.growth_factor)
        .push(cfg.backoff_factor)
        .push(cfg.growth_interval);
    args.push(i32::from(cfg.min_scale.is_some()))
        .push(cfg.min_scale.unwrap_or(0.0));
    args.push(i32::from(cfg.max_scale.is_some()))
        .push(cfg.max_scale.unwrap_or(0.0));
}

/// A training step's bookkeeping on the device (`record_step` in `kernels/scaler.cu`): appends
/// `(loss, scale, found_inf)` as record `cursor[0]` of `records` (three f32 per record; nothing is
/// written once the buffer is full, but the cursor still counts), advances `cursor[0]` by one and
/// the epoch's sample cursor `cursor[1]` by `advance` (the step's batch, where
/// [`crate::ops::augment::gather_batch`] starts the next step), then, with `update`, applies
/// [`update_scale`]'s rule to `scale` and the tracker in the same launch. The record holds the
/// scale the step ran with.
///
/// Errors, before any launch: [`Error::ShapeMismatch`] unless `loss`, `scale`, `found_inf` and
/// the tracker hold one value, `cursor` two and `records` a multiple of three;
/// [`Error::InvalidArgument`] when the rule fails [`ScalerConfig::validate`].
#[allow(clippy::too_many_arguments)] // one launch's buffers
pub(crate) fn record_step(
    gpu: &Gpu,
    loss: &crate::cuda::DeviceBuffer<f32>,
    scale: &mut crate::cuda::DeviceBuffer<f32>,
    found_inf: &crate::cuda::DeviceBuffer<f32>,
    update: Option<(&mut crate::cuda::DeviceBuffer<i32>, &ScalerConfig)>,
    records: &mut crate::cuda::DeviceBuffer<f32>,
    cursor: &mut crate::cuda::DeviceBuffer<u32>,
    advance: usize,
) -> Result<()> {
    const OP: &str = "ops::scaler::record_step";
    let tracker_len = update.as_ref().map_or(1, |(t, _)| t.len());
    let ok = loss.len() == 1
        && scale.len() == 1
        && found_inf.len() == 1
        && tracker_len == 1
        && cursor.len() == 2
        && records.len() % 3 == 0;
    if !ok {
        return Err(Error::ShapeMismatch {
            op: OP,
            detail: format!(
                "loss, scale, found_inf and the growth tracker must be one value ({}, {}, {}, \
                 {tracker_len}), cursor two ({}), records a multiple of three ({})",
                loss.len(),
                scale.len(),
                found_inf.len(),
                cursor.len(),
                records.len()
            ),
        });
    }
    if let Some((_, cfg)) = &update {
        cfg.validate()?;
    }
    let capacity = u32::try_from(records.len() / 3).unwrap_or(u32::MAX);
    let advance = u32::try_from(advance).map_err(|_| Error::InvalidArgument {
        op: OP,
        detail: format!("a batch of {advance} samples exceeds u32"),
    })?;
    let stream = gpu.stream();
    let (l, _g1) = loss.device_ptr(stream);
    let (s, _g2) = scale.device_ptr_mut(stream);
    let (f, _g3) = found_inf.device_ptr(stream);
    let (r, _g4) = records.device_ptr_mut(stream);
    let (c, _g5) = cursor.device_ptr_mut(stream);
    let mut args = KernelArgs::new();
    args.push(l).push(s).push(f).push(r).push(c);
    args.push(capacity).push(advance);
    let (mut tracker, cfg) = match update {
        Some((t, cfg)) => (Some(t), *cfg),
        None => (None, ScalerConfig::default()),
    };
    let tracker_ptr = tracker.as_mut().map(|t| t.device_ptr_mut(stream));
    args.push(i32::from(tracker_ptr.is_some()))
        .push(tracker_ptr.as_ref().map_or(0u64, |(p, _)| *p));
    push_rule(&mut args, &cfg);
    // SAFETY: record_step(const float* loss, float* scale, const float* found_inf, float* records,
    // unsigned* cursor, unsigned capacity, unsigned advance, int dynamic, int* tracker, double
    // growth, double backoff, int interval, int has_min, float min_scale, int has_max, float
    // max_scale) matches in order and type; loss, scale, found_inf and (when dynamic) the tracker
    // hold one value each, cursor two, records 3·capacity values, which the kernel never writes
    // past; the tracker (null when not dynamic) is read only when dynamic is 1.
    let launched = unsafe {
        gpu.launch(
            &kernels::SCALER,
            "record_step",
            LaunchConfig::linear(1, 1),
            &args,
        )
    };
    drop(tracker_ptr);
    launched
}
