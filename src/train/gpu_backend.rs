//! The training step on the GPU: the same sequence as [`super::cpu_backend`], each op from
//! [`crate::ops`], everything on one stream with no host synchronisation and no device-to-host
//! copy. Per step: forward GEMMs (bias and ReLU in the epilogue), fused softmax-cross-entropy
//! (the loss scale read from the [`GradScaler`]'s device buffer), per-layer backward
//! (ReLU/LayerNorm backward, f32 weight gradient, bias gradient, 16-bit data gradient), then the
//! scaler's step: one multi-tensor unscale + inf check whose last block also appends (loss,
//! scale, found_inf, which gradients were non-finite) to a record buffer the host reads back in [`Backend::take_records`],
//! advances the epoch's sample cursor and applies [`GradScaler::update`]'s scale update, and one
//! fused optimizer launch that skips itself on inf/NaN.
//!
//! Where the model allows ([`GpuBackend::set_fusion`]), the last layer, the loss and the
//! gradients around it (both bias gradients, the last dgrad, the hidden layer's ReLU backward)
//! are one kernel (`kernels/head.cu`), and a weight-gradient GEMM that splits K leaves its slices
//! for the unscale to add: 7 kernels per step for the default model.
//!
//! The step's inputs come from the training set resident on the device: each step starts with
//! one kernel that gathers (and shifts, and casts to the first layer's dtype) its batch from the epoch's plan at the
//! device-side cursor ([`Backend::keep_dataset`], [`Backend::load_epoch_plan`]; `load_epoch`'s
//! images take the same path), so a CUDA-graph step is one graph launch and nothing else.
//!
//! The backend runs on a stream of its own ([`Gpu::fork`] of the handle it is given), so other
//! threads' work on that handle never enters its steps or the CUDA graph it captures, and its
//! scratch buffer is its own. All buffers are allocated once for the configured batch, so their
//! addresses are fixed. Layers in f32 (`--precision fp32`, `--fp32-layers`) run their GEMMs
//! through cuBLAS in true f32 ([`crate::ops::blas`]); the per-layer passes are in
//! `train/gpu_layers.rs` (private).
//!
//! The half layers compute in f16 under [`crate::amp::Precision::Mixed`] and in bf16 under
//! [`crate::amp::Precision::Bf16`] (the same step, each op built for both types; the fused head
//! is f16 only, so a bf16 step runs the unfused ops).

use super::backend::{Backend, BackendState, Evaluation};
use super::config::TrainConfig;
use super::gpu_engine::Engine;
use crate::amp::Precision;
use crate::cpu::optim::OptimizerConfig;
use crate::cuda::Gpu;
use crate::error::Result;
#[cfg(doc)]
use crate::{amp::GradScaler, error::Error};
use half::{bf16, f16};
use std::sync::Arc;

/// The GPU backend: the model's parameters, optimizer state, scaler and every buffer of the step
/// on one device.
pub struct GpuBackend {
    engine: Typed,
}

/// The engine for the model's 16-bit type.
enum Typed {
    F16(Engine<f16>),
    Bf16(Engine<bf16>),
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

impl GpuBackend {
    /// The model of `train` with fresh parameters from its seed on `gpu`, with buffers for
    /// batches of up to `train.batch` samples, in CUDA-graph mode if `train.cuda_graph`. Half
    /// layers compute in bf16 under `--precision bf16` ([`Precision::Bf16`]), else in f16.
    ///
    /// The backend works on a fork of `gpu` (a stream and scratch buffer of its own on the same
    /// context, ordered after the work queued on `gpu` so far; launch synchronisation as
    /// `gpu`'s at this point), so `gpu` can be shared with other threads and other backends.
    ///
    /// Errors: [`Error::InvalidArgument`] when `train` fails [`TrainConfig::validate`];
    /// [`Error::InsufficientMemory`] when the model does not fit in the GPU's free memory, before
    /// anything is allocated; [`Error::Driver`] when an allocation fails all the same.
    pub fn new(gpu: Arc<Gpu>, train: &TrainConfig) -> Result<GpuBackend> {
        let engine = match train.model.precision {
            Precision::Bf16 | Precision::Fp8 => Typed::Bf16(Engine::new(gpu, train)?),
            Precision::Mixed | Precision::Fp32 => Typed::F16(Engine::new(gpu, train)?),
        };
        Ok(GpuBackend { engine })
    }

    /// Turns CUDA-graph mode on or off (on by default through [`crate::train::TrainConfig`]).
    /// Graph replay runs the same kernels with the same arguments as eager steps, so results are
    /// bit-identical either way; it only removes the per-launch host overhead.
    pub fn set_cuda_graph(&mut self, on: bool) {
        with_engine!(&mut self.engine, e => e.set_cuda_graph(on))
    }

    /// Turns the step's fused kernels on or off (on by default). A model whose last layer is f16
    /// with at most 16 classes over an f16 ReLU layer whose width is a multiple of 32 (up to
    /// 1024) runs its classifier head (last GEMM, loss, both bias gradients, the last dgrad and
    /// the ReLU backward) as one kernel; off, the step launches the unfused ops one by one.
    /// The two agree within the ops' tolerances, not bit for bit (the head's f32 sums run in
    /// another order); each is deterministic. For comparisons; there is no reason to turn it off.
    /// (A bf16 model always runs the unfused ops.)
    pub fn set_fusion(&mut self, on: bool) {
        with_engine!(&mut self.engine, e => e.set_fusion(on))
    }

    /// The handle the backend queues its work on: a fork of the `Gpu` it was built with (see
    /// [`GpuBackend::new`]); time or order its steps on this handle's stream.
    pub fn gpu(&self) -> &Arc<Gpu> {
        with_engine!(&self.engine, e => e.gpu())
    }

    /// Whether the steps are replaying a captured CUDA graph.
    pub fn graph_active(&self) -> bool {
        with_engine!(&self.engine, e => e.graph_active())
    }
}

impl Backend for GpuBackend {
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
    fn take_records(&mut self) -> Result<Vec<super::StepRecord>> {
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
