//! The interface the training loop drives: one implementation on the CPU reference
//! ([`super::cpu_backend::CpuBackend`]), one on the GPU ([`super::gpu_backend::GpuBackend`]).
//!
//! The loop owns everything that must be the same on both (data order, batching, the
//! learning-rate schedule's inputs, logging, checkpoints); a backend owns the model's numbers and
//! runs one AMP step at a time. A GPU step must not synchronise: its per-step records stay on
//! the device until [`Backend::take_records`].

use crate::amp::NonFinite;
use crate::cpu::fp8::ScalingState;
use crate::cpu::optim::OptimizerConfig;
use crate::cpu::scaler::ScalerState;
use crate::error::Result;
use crate::nn::Tensor;

/// Samples per forward pass in [`Backend::evaluate`] (the CPU backend's; the memory estimate
/// sizes one evaluation batch with it).
pub(crate) const EVAL_BATCH: usize = 1000;

/// What one step did, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    /// Mean cross-entropy of the batch (unscaled).
    pub loss: f32,
    /// The loss scale the step ran with.
    pub scale: f32,
    /// Whether the optimizer step was skipped (inf/NaN gradient).
    pub skipped: bool,
    /// The learning rate of the step (a skipped step reports the rate it would have used).
    pub lr: f64,
    /// Which parameter gradients held an inf or NaN (positions in
    /// [`crate::nn::MlpConfig::parameter_specs`] order; empty on a step that was not skipped),
    /// from the unscale's per-tensor flags.
    pub nonfinite: NonFinite,
    /// With norm clipping ([`crate::amp::GradClip::Norm`]): the global 2-norm of the step's
    /// unscaled gradients, before clipping (inf/NaN on a skipped step).
    pub grad_norm: Option<f32>,
}

/// Loss and accuracy over a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Correctly classified samples (argmax of the logits; ties to the lowest class).
    pub correct: usize,
    /// Samples.
    pub total: usize,
}

impl Evaluation {
    /// `correct / total`.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// Everything a backend needs to continue exactly where it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendState {
    /// f32 master weights in `state_dict` order.
    pub params: Vec<Tensor>,
    /// Real (not skipped) optimizer steps.
    pub optimizer_step: u64,
    /// SGD: whether the momentum buffers are live.
    pub momentum_started: bool,
    /// Adam's `m` or SGD's momentum buffer per parameter (empty when the optimizer keeps none).
    pub exp_avg: Vec<Vec<f32>>,
    /// Adam's `v` per parameter (empty when the optimizer keeps none).
    pub exp_avg_sq: Vec<Vec<f32>>,
    /// Loss scale and growth tracker.
    pub scaler: ScalerState,
    /// `--precision fp8`: delayed scaling's amax history and scale of every FP8 tensor, per
    /// FP8 layer its input, weight and output gradient, layers in order; empty otherwise.
    pub fp8: Vec<ScalingState>,
}

/// One AMP training step at a time, on some device.
pub trait Backend {
    /// Where the work runs, for logs (e.g. `cuda:0 (NVIDIA H100 80GB HBM3)`).
    fn device(&self) -> String;

    /// Loads one epoch's training samples, already in the epoch's order: `images` is
    /// `[n, inputs]` in [0, 1], `labels` has `n` entries.
    fn load_epoch(&mut self, images: &[f32], labels: &[u32]) -> Result<()>;

    /// Keeps the training set (`images` `[n, inputs]`, `labels`) where the backend computes,
    /// for [`Backend::load_epoch_plan`], which then assembles each epoch there: the GPU keeps it
    /// in device memory and gathers every batch on the device. Returns `false` when the backend
    /// keeps no dataset (the default): assemble epochs yourself and call
    /// [`Backend::load_epoch`]. Errors: as `load_epoch`'s checks, and an empty set.
    fn keep_dataset(&mut self, images: &[f32], labels: &[u32]) -> Result<bool> {
        let _ = (images, labels);
        Ok(false)
    }

    /// Loads an epoch of the kept dataset ([`Backend::keep_dataset`]): sample `i` is image
    /// `order[i]` shifted by `(shifts[2i], shifts[2i + 1])` pixels on its `side × side` grid
    /// (`side` 0: no shift, `shifts` unread), the uncovered border `background`, with label
    /// `labels[order[i]]`: bit for bit the samples that
    /// [`crate::cpu::augment::gather_shifted`] makes of the same arguments.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] when no dataset is kept (always, for a backend
    /// that keeps none), an index is past it, or `side` is neither 0 nor the images' side;
    /// [`crate::Error::ShapeMismatch`] for a `shifts` that is not two values per sample.
    fn load_epoch_plan(
        &mut self,
        order: &[u32],
        shifts: &[i32],
        side: usize,
        background: f32,
    ) -> Result<()> {
        let _ = (order, shifts, side, background);
        Err(crate::Error::InvalidArgument {
            op: "train::Backend::load_epoch_plan",
            detail: "this backend keeps no dataset (keep_dataset returned false): assemble the \
                     epoch and call load_epoch"
                .into(),
        })
    }

    /// One step on samples `first..first + batch` of the loaded epoch: forward, scaled
    /// backward, unscale + inf check, optimizer (skipped on inf/NaN), scale update.
    fn step(&mut self, first: usize, batch: usize) -> Result<()>;

    /// The records of the steps since the last call, oldest first (the GPU reads them back
    /// here, once, instead of once per step).
    fn take_records(&mut self) -> Result<Vec<StepRecord>>;

    /// Loss and accuracy of the current weights on `images` (`[n, inputs]`) and `labels`.
    fn evaluate(&mut self, images: &[f32], labels: &[u32]) -> Result<Evaluation>;

    /// The complete state, for a checkpoint.
    fn export(&mut self) -> Result<BackendState>;

    /// Replaces the state with a checkpoint's (shapes and optimizer kind are checked).
    fn import(&mut self, state: &BackendState) -> Result<()>;

    /// The current loss scale (the GPU reads it back: synchronises).
    fn scale(&mut self) -> Result<f32>;

    /// The optimizer configuration (learning rate = the schedule's base rate).
    fn optimizer(&self) -> &OptimizerConfig;
}
