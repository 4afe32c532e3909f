//! Softmax's tuning surface, for ampkit's tests and benchmarks: forward and backward in a launch
//! shape the caller forces, and whether a forced shape fits. Public only as
//! `ampkit::tuning::softmax`.

use crate::cuda::Gpu;
use crate::error::Result;
use cudarc::driver::{DevicePtr, DevicePtrMut};

pub use super::sm90::{softmax_force_fits, SoftmaxForce};

/// [`forward`](super::forward) in a forced launch shape, for benchmarks and tests.
pub fn forward_forced(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    rows: usize,
    cols: usize,
    y: &mut impl DevicePtrMut<f32>,
    force: SoftmaxForce,
) -> Result<()> {
    super::forward_impl(gpu, x, rows, cols, y, Some(force))
}

/// [`backward`](super::backward) in a forced launch shape, for benchmarks and tests.
pub fn backward_forced<Y, DY, DX>(
    gpu: &Gpu,
    (y, dy): (&Y, &DY),
    rows: usize,
    cols: usize,
    dx: &mut DX,
    force: SoftmaxForce,
) -> Result<()>
where
    Y: DevicePtr<f32>,
    DY: DevicePtr<f32>,
    DX: DevicePtrMut<f32>,
{
    super::backward_impl(gpu, (y, dy), rows, cols, dx, Some(force))
}
