//! Safe launch wrappers: each checks shapes and alignment, picks a launch configuration and
//! launches a kernel from `kernels/`. `unsafe` in ampkit lives here, in `cuda`, and in the CPU
//! GEMM's calls into matrixmultiply, nowhere else.
//!
//! Each module here has a CPU twin of the same name in [`crate::cpu`] computing the same function.

pub mod blas;
pub mod cast;
pub mod gemm;
mod gemm_sm90;
pub mod layernorm;
pub mod optim;
mod plan;
pub mod relu;
pub mod scaler;
pub mod softmax;
pub mod unscale;
