//! Training: MNIST data, one loop over two backends (the CPU reference and the GPU),
//! checkpoints, metrics and plots. `ampkit train` is a thin CLI over this module.
//!
//! ```no_run
//! use ampkit::train::{data, open_backend, trainer, Progress, TrainConfig};
//! # fn main() -> ampkit::Result<()> {
//! let cfg = TrainConfig::mnist_default();
//! let split = data::load_dir(&data::bundled_dir()?)?;
//! let (device, note) = ampkit::Device::auto();
//! println!("{note}");
//! let mut backend = open_backend(&device, &cfg)?;
//! let out = trainer::Outputs { verbose: true, ..Default::default() };
//! let summary = trainer::run(backend.as_mut(), &cfg, &split.train, &split.test, Progress::default(), &out)?;
//! println!("test accuracy {:.2}%", 100.0 * summary.epochs.last().unwrap().test.accuracy());
//! # Ok(()) }
//! ```

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod cpu_backend;
pub mod data;
pub mod gpu_backend;
pub mod plot;
pub mod schedule;
pub mod trainer;

pub use backend::{Backend, BackendState, Evaluation, StepRecord};
pub use checkpoint::Progress;
pub use config::TrainConfig;

use crate::device::Device;
use crate::error::Result;

/// The backend for a device: the CPU reference, or the GPU path for a CUDA device.
pub fn open_backend(device: &Device, cfg: &TrainConfig) -> Result<Box<dyn Backend>> {
    cfg.validate()?;
    Ok(match device {
        Device::Cpu => Box::new(cpu_backend::CpuBackend::new(
            &cfg.model,
            cfg.optimizer,
            cfg.schedule,
            cfg.loss_scale,
            cfg.seed,
        )?),
        Device::Cuda(gpu) => Box::new(gpu_backend::GpuBackend::new(
            gpu.clone(),
            &cfg.model,
            cfg.optimizer,
            cfg.schedule,
            cfg.loss_scale,
            cfg.batch,
            cfg.seed,
        )?),
    })
}

/// A dataset's images as f32 in [0, 1] (`[n, rows·cols]`) and its labels as u32.
pub fn dataset_f32(d: &data::Dataset) -> (Vec<f32>, Vec<u32>) {
    (
        d.images().iter().map(|&p| f32::from(p) / 255.0).collect(),
        d.labels().iter().map(|&l| u32::from(l)).collect(),
    )
}
