//! LayerNorm's tuning surface, for ampkit's tests and benchmarks: forward and backward in a
//! launch path the caller forces, and the backward with a limit on warp mode. Public only as
//! `ampkit::tuning::layernorm`.

use super::backward::Choice;
use crate::cuda::Gpu;
use crate::error::Result;
use cudarc::driver::{DevicePtr, DevicePtrMut};

pub use super::backward::BwdForce;

/// A forward launch path chosen by the caller instead of the default plan: for benchmarks that
/// compare paths on one size, and tests that run the cluster kernels on odd sizes.
// Hidden like the rest of the tuning surface: its variants' fields are described in prose.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdForce {
    /// The portable kernels (a warp or a block per row), on any device.
    Portable,
    /// `layernorm_fwd_cluster_c{c}_p{p}`: a cluster of `c` blocks (2, 4, 8) per row, `p` packs
    /// of 4 floats per thread (2, 4, 8). Compute capability 9.0 and float4 rows only.
    Cluster { c: usize, p: usize },
}

/// [`forward`](super::forward) on the path the caller forces (see [`FwdForce`]): for benchmarks
/// and tests. A path the row or the device does not fit is [`Error::InvalidArgument`], before
/// any launch.
///
/// [`Error::InvalidArgument`]: crate::Error::InvalidArgument
#[allow(clippy::too_many_arguments)]
pub fn forward_forced(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    rows: usize,
    cols: usize,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    eps: f32,
    y: &mut impl DevicePtrMut<f32>,
    mean: &mut impl DevicePtrMut<f32>,
    rstd: &mut impl DevicePtrMut<f32>,
    force: FwdForce,
) -> Result<()> {
    super::forward_impl(
        gpu,
        x,
        rows,
        cols,
        gamma,
        beta,
        eps,
        y,
        mean,
        rstd,
        Some(force),
    )
}

/// [`backward`](super::backward) with warp mode limited to rows of `32·max_warp_p` packs (1, 2,
/// 4 or 8; longer rows take block mode), the inputs `(dy, x, mean, rstd, gamma)` as one tuple:
/// for benchmarks and tests that compare the two shapes on one size.
#[allow(clippy::too_many_arguments)]
pub fn backward_with_warp_limit<DY, X, M, R, G, DX, DG, DB>(
    gpu: &Gpu,
    inputs: (&DY, &X, &M, &R, &G),
    rows: usize,
    cols: usize,
    dx: &mut DX,
    dgamma: &mut DG,
    dbeta: &mut DB,
    max_warp_p: usize,
) -> Result<()>
where
    DY: DevicePtr<f32>,
    X: DevicePtr<f32>,
    M: DevicePtr<f32>,
    R: DevicePtr<f32>,
    G: DevicePtr<f32>,
    DX: DevicePtrMut<f32>,
    DG: DevicePtrMut<f32>,
    DB: DevicePtrMut<f32>,
{
    let choice = Choice::WarpLimit(max_warp_p);
    super::backward::backward_impl(gpu, inputs, rows, cols, dx, dgamma, dbeta, choice)
}

/// [`backward`](super::backward) in a shape the caller forces (see [`BwdForce`]), the inputs
/// `(dy, x, mean, rstd, gamma)` as one tuple: for benchmarks and tests. A shape the row does not
/// fit is [`Error::InvalidArgument`], before any launch.
///
/// [`Error::InvalidArgument`]: crate::Error::InvalidArgument
#[allow(clippy::too_many_arguments)]
pub fn backward_forced<DY, X, M, R, G, DX, DG, DB>(
    gpu: &Gpu,
    inputs: (&DY, &X, &M, &R, &G),
    rows: usize,
    cols: usize,
    dx: &mut DX,
    dgamma: &mut DG,
    dbeta: &mut DB,
    force: BwdForce,
) -> Result<()>
where
    DY: DevicePtr<f32>,
    X: DevicePtr<f32>,
    M: DevicePtr<f32>,
    R: DevicePtr<f32>,
    G: DevicePtr<f32>,
    DX: DevicePtrMut<f32>,
    DG: DevicePtrMut<f32>,
    DB: DevicePtrMut<f32>,
{
    super::backward::backward_impl(
        gpu,
        inputs,
        rows,
        cols,
        dx,
        dgamma,
        dbeta,
        Choice::Forced(force),
    )
}
