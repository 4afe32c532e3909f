//! Shared benchmark support.

use ampkit::cuda::Gpu;
use ampkit::Error;
use std::sync::Arc;

/// GPU 0, or `None` after printing `skipped: no CUDA device (...)`: a benchmark without a GPU
/// exits cleanly. Any other failure to open the GPU is a real error and panics.
pub fn gpu_or_skip() -> Option<Arc<Gpu>> {
    match Gpu::new(0) {
        Ok(gpu) => Some(gpu),
        Err(Error::NoCudaDevice { reason }) => {
            eprintln!("skipped: no CUDA device ({reason})");
            None
        }
        Err(e) => panic!("opening the GPU: {e}"),
    }
}
