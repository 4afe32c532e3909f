//! The loss's tuning surface, for ampkit's tests and benchmarks: the loss in a launch shape the
//! caller forces, and whether a forced shape fits. Public only as
//! `ampkit::tuning::cross_entropy`.

use super::plan::ce_forced;
use super::{ce_kernels, ce_vec, Grad, Logit};
use crate::cuda::Gpu;
use crate::error::Result;
use crate::ops::rows::shared_limit;
use cudarc::driver::{DevicePtr, DevicePtrMut};

pub use super::plan::{CeForce, GroupKernel};

/// Whether `force` fits rows of `classes` logits of type `L` on `gpu` with 16-byte aligned
/// buffers (what the benchmark sweep allocates), without launching anything.
pub fn ce_force_fits<L: Logit>(gpu: &Gpu, classes: usize, force: CeForce) -> Result<bool> {
    let lb = std::mem::size_of::<L>();
    let vec = ce_vec(classes, L::VECS[0], (0, lb), (0, lb));
    let k = ce_kernels::<L>(gpu);
    Ok(ce_forced(classes / vec, vec, shared_limit(gpu)?, force, &k).is_some())
}

/// [`softmax_cross_entropy`](super::softmax_cross_entropy) in a launch shape the caller forces
/// (see [`CeForce`]), the inputs `(logits, labels, grad_scale)` as one tuple: for benchmarks and
/// tests. A shape the row does not fit is [`Error::InvalidArgument`], before any launch.
///
/// [`Error::InvalidArgument`]: crate::Error::InvalidArgument
#[allow(clippy::too_many_arguments)]
pub fn softmax_cross_entropy_forced<L, D, X, T, S, G, O>(
    gpu: &Gpu,
    inputs: (&X, &T, &S),
    rows: usize,
    classes: usize,
    dlogits: &mut G,
    loss: &mut O,
    force: CeForce,
) -> Result<()>
where
    L: Logit,
    D: Grad,
    X: DevicePtr<L>,
    T: DevicePtr<u32>,
    S: DevicePtr<f32>,
    G: DevicePtrMut<D>,
    O: DevicePtrMut<f32>,
{
    super::cross_entropy_impl(gpu, inputs, rows, classes, dlogits, loss, Some(force))
}
