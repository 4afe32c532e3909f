//! Training: MNIST data, one loop over two backends (the CPU reference and the GPU),
//! checkpoints, metrics and plots. `ampkit train` is a thin CLI over this module.
//!
//! ```no_run
//! use ampkit::train::{data, open_backend, trainer, Progress, TrainConfig};
//! # fn main() -> ampkit::Result<()> {
//! let cfg = TrainConfig::mnist_default();
//! let split = data::bundled()?;
//! let (device, note) = ampkit::Device::auto();
//! println!("{note}");
//! let mut backend = open_backend(&device, &cfg)?;
//! let out = trainer::Outputs { verbose: true, ..Default::default() };
//! let summary = trainer::run(backend.as_mut(), &cfg, &split.train, &split.test, Progress::default(), &out)?;
//! println!("test accuracy {:.2}%", 100.0 * summary.epochs.last().unwrap().test.accuracy());
//! # Ok(()) }
//! ```

pub mod backend;
mod backend_common;
pub mod checkpoint;
pub mod config;
pub mod cpu_backend;
mod cpu_engine;
mod cpu_fp8;
pub mod data;
pub mod gpu_backend;
mod gpu_data;
mod gpu_engine;
mod gpu_fp8;
mod gpu_layers;
mod half;
pub(crate) mod health;
pub mod locate;
pub mod memory;
pub mod outputs;
pub mod overflow;
#[cfg(feature = "plot")]
pub(crate) mod plot;
mod progress;
pub mod resume;

pub mod trainer;

pub use backend::{Backend, BackendState, Evaluation, StepRecord};
pub use checkpoint::Progress;
pub use config::TrainConfig;

use crate::device::Device;
use crate::error::Result;

/// The backend for a device: the CPU reference ([`cpu_backend::CpuBackend`], built from
/// [`crate::cpu`]), or the GPU path ([`gpu_backend::GpuBackend`], built from [`crate::ops`]) for a
/// CUDA device, with fresh parameters from `cfg.seed`. Both run the same AMP step; their losses
/// agree to the GEMM and reduction tolerances of [`crate::ops`], not bit for bit.
///
/// Errors: [`crate::Error::InvalidArgument`] when `cfg` fails [`TrainConfig::validate`]; on a GPU,
/// [`crate::Error::Driver`] when its buffers cannot be allocated.
pub fn open_backend(device: &Device, cfg: &TrainConfig) -> Result<Box<dyn Backend>> {
    cfg.validate()?;
    Ok(match device {
        Device::Cpu => Box::new(cpu_backend::CpuBackend::new(cfg)?),
        Device::Cuda(gpu) => Box::new(gpu_backend::GpuBackend::new(gpu.clone(), cfg)?),
    })
}

/// MNIST's pixel mean and standard deviation (over the 60,000 training images, in [0, 1]
/// units): the constants of PyTorch's MNIST example, `Normalize((0.1307,), (0.3081,))`.
pub(crate) const MNIST_MEAN: f32 = 0.1307;
/// See [`MNIST_MEAN`].
pub(crate) const MNIST_STD: f32 = 0.3081;

/// A dataset's images as f32 (`[n, rows·cols]`): pixels/255, standardised with MNIST's mean
/// 0.1307 and standard deviation 0.3081 when `normalize`; and its labels as u32.
pub fn dataset_f32(d: &data::Dataset, normalize: bool) -> (Vec<f32>, Vec<u32>) {
    let pixel = |p: u8| {
        let v = f32::from(p) / 255.0;
        if normalize {
            (v - MNIST_MEAN) / MNIST_STD
        } else {
            v
        }
    };
    (
        d.images().iter().map(|&p| pixel(p)).collect(),
        d.labels().iter().map(|&l| u32::from(l)).collect(),
    )
}
