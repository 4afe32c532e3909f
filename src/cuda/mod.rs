//! The CUDA runtime layer: the device handle ([`Gpu`]) owning or borrowing a context and one
//! stream (forks add more), with a lazily filled, context-wide cache of ampkit's kernel modules
//! (see [`Gpu`] for what sharing one across threads means); device buffers (cudarc's, see
//! [`DeviceBuffer`]); and a CUDA-event timer ([`GpuTimer`]).
//!
//! Device memory is cudarc's `CudaSlice<T>` (re-exported as [`DeviceBuffer`]); views of it
//! (`slice(..)`, `slice_mut(..)`) are what the ops accept, so any offset into a buffer works, and
//! buffers you allocate with cudarc work as they are. Interop goes both ways: [`Gpu::from_stream`]
//! runs ampkit on your cudarc stream, and [`Gpu::context`] / [`Gpu::stream`] give ampkit's out.
//!
//! Nothing here needs a GPU to compile or link: cudarc loads the driver at run time, and
//! [`Gpu::new`] returns [`crate::Error::NoCudaDevice`] on a machine without one.
//!
//! ```
//! // Runs anywhere: on a machine without a GPU this takes the `Err` branch.
//! match ampkit::cuda::Gpu::new(0) {
//!     Ok(gpu) => println!("{}: {} SMs", gpu.info().name, gpu.info().multiprocessors),
//!     Err(ampkit::Error::NoCudaDevice { reason }) => println!("no GPU: {reason}"),
//!     Err(e) => panic!("{e}"),
//! }
//! ```

mod gpu;
mod launch;
pub(crate) mod modules;
mod timer;

pub use gpu::{Gpu, GpuInfo};
pub(crate) use launch::{KernelArgs, LaunchConfig};
pub use modules::ModuleImage;
pub use timer::{GpuTimer, Timing};

/// A typed buffer in device memory: cudarc's [`CudaSlice`](cudarc::driver::CudaSlice). Make
/// one with [`Gpu::upload`] / [`Gpu::alloc_zeros`] or with cudarc on [`Gpu::stream`]; views
/// (`buf.slice(a..b)`, `buf.slice_mut(a..b)`) are accepted wherever a buffer is.
pub type DeviceBuffer<T> = cudarc::driver::CudaSlice<T>;

/// The GPU for the library's own GPU unit tests (the training step's crate-private ops), as
/// `tests/common`'s `gpu()` for the integration tests: `None` after printing `skipped: no CUDA
/// device (...)`, or a failure with `AMPKIT_REQUIRE_GPU=1`; launches synchronised so a fault
/// names its kernel.
#[cfg(test)]
pub(crate) fn test_gpu() -> Option<std::sync::Arc<Gpu>> {
    match Gpu::new(0) {
        Ok(g) => {
            g.set_sync_launches(true);
            Some(g)
        }
        Err(crate::Error::NoCudaDevice { reason }) => {
            if std::env::var("AMPKIT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("AMPKIT_REQUIRE_GPU=1 but there is no CUDA device: {reason}");
            }
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped: no CUDA device ({reason})");
            None
        }
        Err(e) => panic!("opening the GPU failed: {e}"),
    }
}
