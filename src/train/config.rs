//! Everything that defines a training run, as saved in a checkpoint's `config.json`.

use crate::amp::{GradClip, LossScale};
use crate::cpu::optim::OptimizerConfig;
use crate::cpu::schedule::LrSchedule;
use crate::error::{Error, Result};
use crate::nn::MlpConfig;
use crate::optim::base_lr;
use serde::{Deserialize, Serialize};

/// A training run's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model.
    pub model: MlpConfig,
    /// Optimizer and its base learning rate.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule (advances on real steps only).
    pub schedule: LrSchedule,
    /// Loss scaling.
    pub loss_scale: LossScale,
    /// Epochs to train.
    pub epochs: usize,
    /// Samples per step (the last step of an epoch takes the remainder).
    pub batch: usize,
    /// Seed of the initial weights and of every epoch's data order.
    pub seed: u64,
    /// Stop after this many steps in total (the checkpoint records where).
    pub max_steps: Option<u64>,
    /// Standardise inputs with MNIST's mean and standard deviation (0.1307 and 0.3081).
    pub normalize: bool,
    /// Shift each training image by up to this many pixels in x and y, freshly each epoch
    /// (0: no augmentation).
    pub augment_shift: usize,
    /// GPU: replay full-batch steps as one captured CUDA graph (bit-identical to eager steps,
    /// less host overhead).
    #[serde(default = "yes")]
    pub cuda_graph: bool,
    /// Gradient clipping of real steps (PyTorch's `clip_grad_norm_` / `clip_grad_value_` after
    /// `unscale_`), fused into the unscale and optimizer passes. Absent in checkpoints of
    /// earlier versions: off.
    #[serde(default)]
    pub clip: GradClip,
}

fn yes() -> bool {
    true
}

impl TrainConfig {
    /// The defaults of `ampkit train`: the 784→512→10 MLP, Adam at 1e-3, PyTorch's dynamic loss
    /// scaling, 10 epochs of batch 64, seed 0, standardised inputs, shifts of up to 2 pixels.
    pub fn mnist_default() -> Self {
        TrainConfig {
            model: MlpConfig::mnist_default(),
            optimizer: OptimizerConfig::adam(1e-3),
            schedule: LrSchedule::Constant,
            loss_scale: LossScale::Dynamic(Default::default()),
            epochs: 10,
            batch: 64,
            seed: 0,
            max_steps: None,
            normalize: true,
            augment_shift: 2,
            cuda_graph: true,
            clip: GradClip::Off,
        }
    }

    /// Checks every part, and how they fit together: at least one epoch and (if set) one step;
    /// a cosine floor not above the base learning rate; an augmentation shift smaller than the
    /// side of a square input image (non-square inputs are never shifted).
    ///
    /// Errors: [`Error::InvalidArgument`] naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        self.loss_scale.validate()?;
        self.clip.validate()?;
        let bad = |detail: String| {
            Err(Error::InvalidArgument {
                op: "train::TrainConfig",
                detail,
            })
        };
        if self.batch == 0 {
            return bad("batch must be ≥ 1".into());
        }
        if self.epochs == 0 {
            return bad("epochs must be ≥ 1 (0 epochs train nothing)".into());
        }
        if self.max_steps == Some(0) {
            return bad("max_steps must be ≥ 1 (0 steps train nothing)".into());
        }
        let lr = base_lr(&self.optimizer);
        if let LrSchedule::Cosine { min_lr, .. } = self.schedule {
            if min_lr > lr {
                return bad(format!(
                    "the cosine schedule's floor min_lr {min_lr} is above the learning rate \
                     {lr}; it decays from the rate down to the floor, so min_lr must be ≤ lr"
                ));
            }
        }
        let inputs = self.model.inputs();
        let side = inputs.isqrt();
        if side * side == inputs && self.augment_shift > 0 && self.augment_shift >= side {
            return bad(format!(
                "augment_shift {} must be smaller than the {side}×{side} input image's side \
                 (a shift of {side} or more moves the whole image out of view)",
                self.augment_shift
            ));
        }
        Ok(())
    }

    /// Steps in one epoch of `train_len` samples: `ceil(train_len / batch)` (the last step
    /// takes the remainder).
    pub fn steps_per_epoch(&self, train_len: usize) -> u64 {
        train_len.div_ceil(self.batch.max(1)) as u64
    }

    /// The global step this configuration stops at on a training set of `train_len` samples:
    /// `epochs × steps_per_epoch`, or `max_steps` if that is smaller (both count attempted
    /// steps, skipped ones included).
    pub fn end_step(&self, train_len: usize) -> u64 {
        let epochs = (self.epochs as u64).saturating_mul(self.steps_per_epoch(train_len));
        self.max_steps.map_or(epochs, |m| m.min(epochs))
    }

    /// The same configuration with its schedule's horizon set to [`TrainConfig::end_step`]:
    /// a cosine schedule decays to its floor over exactly the steps this run is asked to take
    /// (counting from step 0 of the run, resumed or not). A constant schedule is unchanged.
    pub fn with_schedule_horizon(mut self, train_len: usize) -> TrainConfig {
        self.schedule = self.schedule.with_total(self.end_step(train_len).max(1));
        self
    }
}
