//! The CUDA runtime layer: one device handle ([`Gpu`]) owning a context, one non-default stream and
//! a lazily filled cache of kernel modules; a launch helper ([`KernelArgs`], [`Gpu::launch`]) that
//! keeps `unsafe` in the thin wrappers of `ops`; and a CUDA-event timer ([`GpuTimer`]).
//!
//! Device memory is cudarc's `CudaSlice<T>` (re-exported as [`DeviceBuffer`]); views of it
//! (`slice(..)`, `slice_mut(..)`) are what the ops accept, so any offset into a buffer works.

mod gpu;
mod launch;
mod timer;

pub use gpu::{Gpu, GpuInfo};
pub use launch::{KernelArgs, LaunchConfig};
pub use timer::{GpuTimer, Timing};

/// A typed buffer in device memory (cudarc's `CudaSlice`).
pub type DeviceBuffer<T> = cudarc::driver::CudaSlice<T>;
