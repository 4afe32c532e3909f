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

/// The case table `ampkit bench` and `bench/pytorch_reference.py` read too (`bench/cases.json`),
/// through the binary's own loader. Each bench reads one family, so the rest is unused here.
#[allow(dead_code)]
#[path = "../../src/bin/ampkit/bench/cases.rs"]
pub mod cases;

/// The workloads of `bench/cases.json`; a malformed table stops the bench with its error.
#[allow(dead_code)]
pub fn cases() -> cases::Cases {
    cases::Cases::embedded().unwrap_or_else(|e| panic!("{e}"))
}
