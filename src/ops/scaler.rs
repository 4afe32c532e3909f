//! The dynamic loss-scale update on the GPU (`kernels/scaler.cu`); CPU twin:
//! [`crate::cpu::scaler`], which documents the rule. Bit-exact with it.
//!
//! The scale and growth tracker stay in device memory and are updated in place by one thread,
//! reading the `found_inf` flag that [`crate::ops::unscale`] sets: no host synchronisation, and
//! fixed addresses for CUDA-graph replay. Read them back only when logging.

use crate::cpu::scaler::ScalerConfig;
use crate::cuda::{DeviceBuffer, Gpu, KernelArgs, LaunchConfig};
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

/// Values per step record: loss, scale, found_inf, the two words of the non-finite mask (f32
/// bit patterns) and the gradient norm of norm clipping (NaN without; `RECORD` in
/// `kernels/step_record.cuh`).
pub(crate) const RECORD: usize = 6;

/// Where a training step's record goes: the device loss to record, the record buffer
/// ([`RECORD`] f32 per record) and `[records written, the epoch's next sample]`, advanced by one record and
/// `advance` samples.
pub(crate) struct RecordTarget<'a> {
    pub loss: &'a DeviceBuffer<f32>,
    pub records: &'a mut DeviceBuffer<f32>,
    pub cursor: &'a mut DeviceBuffer<u32>,
    pub advance: usize,
}

/// Checks a record's buffers and returns `record_step`'s arguments after `scale`, `found_inf`
/// and the mask (loss, records, cursor, capacity, advance, dynamic, tracker, the rule), with
/// `update` the tracker and rule of a dynamic scale. The caller checks scale and found_inf.
/// Errors: [`Error::ShapeMismatch`] unless the loss and tracker hold one value, the cursor two
/// and the records a multiple of [`RECORD`]; [`Error::InvalidArgument`] when the rule fails
/// [`ScalerConfig::validate`] or `advance` exceeds u32.
pub(crate) fn record_args(
    gpu: &Gpu,
    op: &'static str,
    target: &mut RecordTarget<'_>,
    update: Option<(&mut DeviceBuffer<i32>, &ScalerConfig)>,
) -> Result<KernelArgs> {
    let tracker_len = update.as_ref().map_or(1, |(t, _)| t.len());
    let (records, cursor) = (&mut *target.records, &mut *target.cursor);
    let ok = target.loss.len() == 1
        && tracker_len == 1
        && cursor.len() == 2
        && records.len() % RECORD == 0;
    if !ok {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!(
                "the loss and the growth tracker must be one value ({}, {tracker_len}), cursor \
                 two ({}), records a multiple of {RECORD} ({})",
                target.loss.len(),
                cursor.len(),
                records.len()
            ),
        });
    }
    if let Some((_, cfg)) = &update {
        cfg.validate()?;
    }
    let capacity = u32::try_from(records.len() / RECORD).unwrap_or(u32::MAX);
    let advance = u32::try_from(target.advance).map_err(|_| Error::InvalidArgument {
        op,
        detail: format!("a batch of {} samples exceeds u32", target.advance),
    })?;
    let stream = gpu.stream();
    // Plain addresses: ampkit's contexts run with cudarc's event tracking off (cuda::gpu), so
    // the guards order nothing and may end here.
    let (l, _g1) = target.loss.device_ptr(stream);
    let (r, _g2) = records.device_ptr_mut(stream);
    let (c, _g3) = cursor.device_ptr_mut(stream);
    let mut args = KernelArgs::new();
    args.push(l).push(r).push(c).push(capacity).push(advance);
    let (tracker, cfg) = match update {
        Some((t, cfg)) => (Some(t.device_ptr_mut(stream).0), *cfg),
        None => (None, ScalerConfig::default()),
    };
    args.push(i32::from(tracker.is_some()))
        .push(tracker.unwrap_or(0));
    push_rule(&mut args, &cfg);
    Ok(args)
}
