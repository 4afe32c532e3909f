//! Everything that defines a training run, as saved in a checkpoint's `config.json`.

use crate::amp::LossScale;
use crate::cpu::optim::OptimizerConfig;
use crate::cpu::schedule::LrSchedule;
use crate::error::{Error, Result};
use crate::nn::MlpConfig;
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
    /// Standardise inputs with MNIST's mean and standard deviation ([`super::MNIST_MEAN`]).
    pub normalize: bool,
    /// Shift each training image by up to this many pixels in x and y, freshly each epoch
    /// (0: no augmentation).
    pub augment_shift: usize,
    /// GPU: replay full-batch steps as one captured CUDA graph (bit-identical to eager steps,
    /// less host overhead).
    #[serde(default = "yes")]
    pub cuda_graph: bool,
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
        }
    }

    /// Checks every part.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        self.loss_scale.validate()?;
        if self.batch == 0 {
            return Err(Error::InvalidArgument {
                op: "train::TrainConfig",
                detail: "batch must be ≥ 1".into(),
            });
        }
        Ok(())
    }
}
