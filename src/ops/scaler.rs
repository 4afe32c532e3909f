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
    args.push(cfg.growth_factor)
        .push(cfg.backoff_factor)
        .push(cfg.growth_interval);
    args.push(i32::from(cfg.min_scale.is_some()))
        .push(cfg.min_scale.unwrap_or(0.0));
    args.push(i32::from(cfg.max_scale.is_some()))
        .push(cfg.max_scale.unwrap_or(0.0));
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
