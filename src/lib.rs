//! # ampkit
//!
//! Hand-written CUDA kernels with a Rust host for mixed-precision (AMP) training. Every GPU op in
//! [`ops`] has a CPU twin in [`cpu`] computing the same function, and tests compare the two.
//!
//! Layers, bottom to top:
//! - [`kernels`]: the PTX modules compiled from `kernels/*.cu` at build time.
//! - [`cuda`]: device handle, stream, module cache, launch helper, event timer.
//! - [`ops`]: safe launch wrappers; [`cpu`]: their references.
//! - [`check`]: the tolerance harness every parity test uses.
//! - [`Device`]: the CPU backend or a GPU, chosen by the caller or by [`Device::auto`].
//! - [`train`]: training on MNIST (the data layer so far).
#![warn(missing_docs)]

pub mod amp;
pub mod check;
pub mod cpu;
pub mod cuda;
mod device;
mod error;
pub mod kernels;
pub mod nn;
pub mod ops;
pub mod train;

pub use device::Device;
pub use error::{Error, Result};
pub use half::f16;
