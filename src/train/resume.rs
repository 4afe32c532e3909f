//! Resuming a run from a checkpoint: what comes from the checkpoint and what from the new request.
//!
//! A checkpoint fixes everything that makes the continued run the same run: the model, the
//! optimizer and its hyperparameters, the schedule's kind and floor, the loss scaling, the batch
//! size, the seed (data order and augmentation) and the input normalisation. Only the horizon
//! comes from the new request:
//!
//! - **Epochs**: the new value if given, else the saved one. `epochs` counts from the start of
//!   the run, not from the checkpoint: a run saved in epoch 2 of 3 and resumed with 5 epochs
//!   trains to the end of epoch 5.
//! - **Step limit**: `max_steps` is the absolute total of steps since the start of the run
//!   (skipped steps included, the numbering of [`Progress::global_step`]), and it is *not*
//!   carried over from the checkpoint: a run stopped with a step limit of 50 and resumed with 5
//!   epochs and no limit trains to the end of epoch 5; give the limit again to keep it.
//! - **Schedule horizon**: a cosine schedule's `total` is replaced by the new run's end step
//!   ([`TrainConfig::end_step`]: `epochs × steps per epoch`, or `max_steps` if smaller), and
//!   its position in the schedule is the optimizer's count of real (not skipped) steps, saved in
//!   the checkpoint. Extending a cosine run therefore continues the decay from where it was over
//!   the longer horizon (the rate rises to the new curve's value at that position, then decays
//!   to the floor at the new end) instead of staying at the floor. Resuming with the horizon an
//!   uninterrupted run had reproduces that run bit for bit.
//!
//! A request that would train nothing (the checkpoint is already at or past the new end) is an
//! error rather than a silent no-op.
//!
//! The command line adds one rule: a flag that sets one of the fixed settings is an error when
//! it was given explicitly with a value other than the saved one (`--batch 128` on a checkpoint
//! of batch 64); repeating the saved value is accepted. Flags that only change where and how the
//! run reports (`--device`, `--no-cuda-graph`, `--save`, `--metrics`, `--plot`,
//! `--no-progress`) are taken from the new command line.

use super::checkpoint::Progress;
use super::config::TrainConfig;
use crate::error::{Error, Result};

/// What a resumed run may change: its horizon. `None` keeps the saved number of epochs; for
/// `max_steps`, `None` means no step limit (the saved limit is not carried over).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Horizon {
    /// Epochs in total, counted from the start of the run.
    pub epochs: Option<usize>,
    /// Steps in total, counted from the start of the run (skipped steps included).
    pub max_steps: Option<u64>,
}

/// The configuration that continues `saved` (stopped at `progress`) to `horizon`, on a
/// training set of `train_len` samples: the saved configuration with the new epochs and step
/// limit, and a cosine schedule's `total` replaced by the new end step (see the module
/// documentation).
///
/// Errors: [`Error::InvalidArgument`] when the new horizon is invalid (0 epochs or steps), or
/// when `progress` is already at or past its end, saying where the checkpoint stands and what
/// to ask for.
pub fn resumed_config(
    saved: &TrainConfig,
    progress: &Progress,
    horizon: Horizon,
    train_len: usize,
) -> Result<TrainConfig> {
    let mut cfg = saved.clone();
    if let Some(e) = horizon.epochs {
        cfg.epochs = e;
    }
    cfg.max_steps = horizon.max_steps;
    cfg.validate()?;
    let end = cfg.end_step(train_len);
    if progress.global_step >= end {
        let per_epoch = cfg.steps_per_epoch(train_len);
        let limit = cfg
            .max_steps
            .map_or(String::new(), |m| format!(" with the step limit {m}"));
        return Err(Error::InvalidArgument {
            op: "train::resume",
            detail: format!(
                "nothing left to train: the checkpoint is at step {} (epoch {}, step {} of its \
                 {per_epoch}), and {} epoch(s){limit} end the run at step {end}; ask for more \
                 epochs or a larger step limit (both count from the start of the run)",
                progress.global_step,
                progress.epoch + 1,
                progress.step_in_epoch,
                cfg.epochs
            ),
        });
    }
    Ok(cfg.with_schedule_horizon(train_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::schedule::LrSchedule;

    fn at(global_step: u64, per_epoch: u64) -> Progress {
        Progress {
            epoch: (global_step / per_epoch) as usize,
            step_in_epoch: (global_step % per_epoch) as usize,
            global_step,
            skipped: 0,
        }
    }

    #[test]
    fn the_horizon_comes_from_the_request() {
        // 8000 samples at batch 64: 125 steps per epoch.
        let saved = TrainConfig {
            epochs: 2,
            max_steps: Some(50),
            schedule: LrSchedule::Cosine {
                total: 50,
                min_lr: 1e-5,
            },
            ..TrainConfig::mnist_default()
        };
        let five = Horizon {
            epochs: Some(5),
            max_steps: None,
        };
        let cfg = resumed_config(&saved, &at(50, 125), five, 8000).unwrap();
        assert_eq!((cfg.epochs, cfg.max_steps), (5, None));
        assert_eq!(
            cfg.schedule,
            LrSchedule::Cosine {
                total: 625,
                min_lr: 1e-5
            }
        );
        assert_eq!(cfg.end_step(8000), 625);
        // Only the horizon moved.
        assert_eq!(
            TrainConfig {
                epochs: 2,
                max_steps: Some(50),
                schedule: saved.schedule,
                ..cfg.clone()
            },
            saved
        );
        // A step limit is absolute and bounds the horizon.
        let limited = Horizon {
            epochs: Some(5),
            max_steps: Some(300),
        };
        let cfg = resumed_config(&saved, &at(50, 125), limited, 8000).unwrap();
        assert_eq!(
            cfg.schedule,
            LrSchedule::Cosine {
                total: 300,
                min_lr: 1e-5
            }
        );
        // No epochs given: the saved 2.
        let cfg = resumed_config(&saved, &at(50, 125), Horizon::default(), 8000).unwrap();
        assert_eq!((cfg.epochs, cfg.end_step(8000)), (2, 250));
    }

    #[test]
    fn a_request_that_trains_nothing_is_an_error() {
        let saved = TrainConfig {
            epochs: 2,
            ..TrainConfig::mnist_default()
        };
        let e = resumed_config(&saved, &at(250, 125), Horizon::default(), 8000).unwrap_err();
        assert!(e.to_string().contains("nothing left to train"), "{e}");
        let h = Horizon {
            epochs: Some(2),
            max_steps: None,
        };
        let e = resumed_config(&saved, &at(300, 125), h, 8000).unwrap_err();
        assert!(
            e.to_string().contains("at step 300 (epoch 3, step 50"),
            "{e}"
        );
        let h = Horizon {
            epochs: None,
            max_steps: Some(100),
        };
        let e = resumed_config(&saved, &at(100, 125), h, 8000).unwrap_err();
        assert!(e.to_string().contains("the step limit 100"), "{e}");
        let h = Horizon {
            epochs: Some(0),
            max_steps: None,
        };
        assert!(resumed_config(&saved, &at(1, 125), h, 8000).is_err());
    }
}
