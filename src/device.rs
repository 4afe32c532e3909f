//! Where ampkit computes: the CPU reference backend or one CUDA GPU.

use crate::cuda::Gpu;
use crate::error::Result;
use std::sync::Arc;

/// A compute device.
#[derive(Debug, Clone)]
pub enum Device {
    /// The CPU reference backend (rayon); always available.
    Cpu,
    /// One CUDA GPU.
    Cuda(Arc<Gpu>),
}

impl Device {
    /// The CPU backend.
    pub fn cpu() -> Device {
        Device::Cpu
    }

    /// CUDA device `ordinal`; [`crate::Error::NoCudaDevice`] if it cannot be opened.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::Cuda(Gpu::new(ordinal)?))
    }

    /// GPU 0 if one can be opened, else the CPU. The second value says which was chosen and, on
    /// fallback, why no GPU was used; callers print it so a silent CPU run never surprises anyone.
    pub fn auto() -> (Device, String) {
        match Gpu::new(0) {
            Ok(gpu) => {
                let note = format!("using {}", Device::Cuda(gpu.clone()));
                (Device::Cuda(gpu), note)
            }
            Err(e) => (Device::Cpu, format!("using the CPU: {e}")),
        }
    }

    /// The GPU, if this is one.
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Device::Cpu => None,
            Device::Cuda(gpu) => Some(gpu),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu ({} threads)", rayon::current_num_threads()),
            Device::Cuda(gpu) => {
                let i = gpu.info();
                let (major, minor) = i.compute_capability;
                write!(
                    f,
                    "cuda:{} ({}, compute capability {major}.{minor})",
                    i.ordinal, i.name
                )
            }
        }
    }
}
