//! The GEMM's tuning surface, for ampkit's tests and benchmarks: the tile table, the planner and
//! a GEMM in a forced plan. Public only as `ampkit::tuning::gemm`.

use super::{Epilogue, GemmOperand, GemmOutput};
use crate::cuda::Gpu;
use crate::error::Result;
use crate::shape::GemmShape;
use cudarc::driver::{DevicePtr, DevicePtrMut};

pub use super::plan::{
    configs_for, plan, Plan, TileConfig, CONFIGS, GROUP_M, HOPPER_CONFIGS, UNALIGNED,
};

/// [`gemm`](super::gemm) with a forced [`Plan`] instead of the cost model's, for tests and
/// benchmarks that must exercise every configuration. An aligned configuration on operands that
/// do not meet the fast path's alignment is replaced by the unaligned one.
pub fn gemm_with_plan<C, T, A, B, O>(
    gpu: &Gpu,
    shape: GemmShape,
    forced: Option<Plan>,
    a: &A,
    b: &B,
    epilogue: &Epilogue,
    c: &mut O,
) -> Result<()>
where
    C: GemmOutput<T>,
    T: GemmOperand,
    A: DevicePtr<T>,
    B: DevicePtr<T>,
    O: DevicePtrMut<C>,
{
    super::gemm_impl(gpu, shape, forced, a, b, epilogue, c, None, 0).map(drop)
}

/// [`gemm_checked`](super::gemm_checked) with a forced [`Plan`] (as [`gemm_with_plan`]).
#[allow(clippy::too_many_arguments)] // gemm_with_plan's arguments and the flag
pub fn gemm_checked_with_plan<C, T, A, B, O>(
    gpu: &Gpu,
    shape: GemmShape,
    forced: Option<Plan>,
    a: &A,
    b: &B,
    epilogue: &Epilogue,
    c: &mut O,
    nonfinite: &mut dyn DevicePtrMut<u32>,
) -> Result<()>
where
    C: GemmOutput<T>,
    T: GemmOperand,
    A: DevicePtr<T>,
    B: DevicePtr<T>,
    O: DevicePtrMut<C>,
{
    let flag = super::flag_ptr(gpu, nonfinite)?;
    super::gemm_impl(gpu, shape, forced, a, b, epilogue, c, None, flag.0).map(drop)
}
