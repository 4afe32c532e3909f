//! The training step on the CPU reference ops ([`crate::cpu`]): the numerics every GPU step is
//! compared with, and the fallback when there is no GPU.
//!
//! Activations are kept in f32 vectors; a half-precision layer rounds its input to its 16-bit
//! type (f16 under mixed precision, bf16 under `--precision bf16`), runs the 16-bit GEMM with f32
//! accumulation and rounds its output to that type (so every stored value is exactly what the
//! GPU stores). Order per step, as on the GPU: forward; softmax-cross-entropy
//! whose gradient carries the loss scale; per layer backward (ReLU/LayerNorm backward, weight
//! gradient in f32, bias gradient, data gradient); unscale + inf check; optimizer (skipped on
//! inf/NaN); scale update.

use super::backend::{Backend, BackendState, Evaluation, StepRecord};
pub(crate) use super::backend_common::{
    check_batch, check_params, check_samples, count_correct, export_state, import_dicts,
    layer_params, LayerParams,
};
use super::config::TrainConfig;
use super::cpu_engine::CpuEngine;
use super::locate::OverflowSite;
use crate::amp::Precision;
use crate::cpu::optim::OptimizerConfig;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use half::{bf16, f16};

/// The CPU backend: the model's parameters, optimizer state and scaler on the host.
pub struct CpuBackend {
    engine: Typed,
}

/// The engine for the model's 16-bit type.
enum Typed {
    F16(CpuEngine<f16>),
    Bf16(CpuEngine<bf16>),
}

/// Runs `$body` with `$e` bound to the engine, whichever its type.
macro_rules! with_engine {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            Typed::F16($e) => $body,
            Typed::Bf16($e) => $body,
        }
    };
}

impl CpuBackend {
    /// The model of `train` with fresh parameters from its seed; half layers compute in bf16
    /// under `--precision bf16` ([`Precision::Bf16`]), else in f16.
    ///
    /// Errors: [`Error::InvalidArgument`] for an invalid model, schedule or loss scaling;
    /// [`Error::InsufficientMemory`] when the model does not fit in the host's free memory,
    /// before anything is allocated.
    pub fn new(train: &TrainConfig) -> Result<CpuBackend> {
        let engine = match train.model.precision {
            Precision::Bf16 | Precision::Fp8 => Typed::Bf16(CpuEngine::new(train)?),
            Precision::Mixed | Precision::Fp32 => Typed::F16(CpuEngine::new(train)?),
        };
        Ok(CpuBackend { engine })
    }

    /// Replays the forward and backward of a step on samples `first..first + batch` of the
    /// loaded epoch at loss scale `scale`, checking every op's output: the first that held an
    /// inf/NaN ([`super::locate`]), or `None` when all were finite. Overwrites the gradient
    /// buffers (a step recomputes them) and nothing else: weights, optimizer and scaler stay.
    pub(crate) fn locate(
        &mut self,
        first: usize,
        batch: usize,
        scale: f32,
    ) -> Result<Option<OverflowSite>> {
        with_engine!(&mut self.engine, e => e.locate(first, batch, scale))
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> String {
        with_engine!(&self.engine, e => e.device())
    }
    fn load_epoch(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        with_engine!(&mut self.engine, e => e.load_epoch(images, labels))
    }
    fn keep_dataset(&mut self, images: &[f32], labels: &[u32]) -> Result<bool> {
        with_engine!(&mut self.engine, e => e.keep_dataset(images, labels))
    }
    fn load_epoch_plan(
        &mut self,
        order: &[u32],
        shifts: &[i32],
        side: usize,
        background: f32,
    ) -> Result<()> {
        with_engine!(&mut self.engine, e => e.load_epoch_plan(order, shifts, side, background))
    }
    fn step(&mut self, first: usize, batch: usize) -> Result<()> {
        with_engine!(&mut self.engine, e => e.step(first, batch))
    }
    fn take_records(&mut self) -> Result<Vec<StepRecord>> {
        with_engine!(&mut self.engine, e => e.take_records())
    }
    fn evaluate(&mut self, images: &[f32], labels: &[u32]) -> Result<Evaluation> {
        with_engine!(&mut self.engine, e => e.evaluate(images, labels))
    }
    fn export(&mut self) -> Result<BackendState> {
        with_engine!(&mut self.engine, e => e.export())
    }
    fn import(&mut self, state: &BackendState) -> Result<()> {
        with_engine!(&mut self.engine, e => e.import(state))
    }
    fn scale(&mut self) -> Result<f32> {
        with_engine!(&mut self.engine, e => e.scale())
    }
    fn optimizer(&self) -> &OptimizerConfig {
        with_engine!(&self.engine, e => e.optimizer())
    }
}
