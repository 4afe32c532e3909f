//! The training loop, written once for every [`Backend`]: data order, batching, logging, metrics,
//! checkpoints and the resume logic.

use super::backend::{Backend, Evaluation, StepRecord};
use super::checkpoint::{self, Progress};
use super::config::TrainConfig;
use super::data::Dataset;
use crate::error::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Steps between read-backs of the step records while an epoch runs (each is one device
/// synchronisation on the GPU), so the progress bar shows a recent loss.
const RECORDS_EVERY: u64 = 25;

/// Where the loop writes besides the terminal.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Checkpoint directory, rewritten (atomically) after every epoch and at the end.
    pub save: Option<PathBuf>,
    /// JSON Lines file, one record per step.
    pub metrics: Option<PathBuf>,
    /// PNG of loss and loss scale over the steps of this run.
    pub plot: Option<PathBuf>,
    /// Show a progress bar (off in tests and when output is not a terminal).
    pub progress_bar: bool,
    /// Print the per-epoch lines.
    pub verbose: bool,
}

/// One epoch's summary line.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSummary {
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps in this run.
    pub train_loss: f64,
    /// Accuracy of the end-of-epoch weights on the training set.
    pub train: Evaluation,
    /// Accuracy of the end-of-epoch weights on the test set.
    pub test: Evaluation,
    /// The loss scale after the epoch's last step.
    pub scale: f32,
    /// Skipped steps in the epoch.
    pub skipped: usize,
    /// Training samples per second (steps only, without evaluation).
    pub samples_per_s: f64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Every step of this run, in order (global step, record).
    pub steps: Vec<(u64, StepRecord)>,
    /// One entry per epoch completed in this run.
    pub epochs: Vec<EpochSummary>,
    /// Where training stopped.
    pub progress: Progress,
}

/// The order of epoch `epoch`'s samples: a ChaCha8 shuffle seeded by the run's seed, one
/// stream per epoch, so any epoch's order can be recomputed when resuming.
pub(crate) fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// Fills `xs`/`ys` with epoch `epoch`'s samples in its order ([`epoch_order`]), each image
/// shifted by up to `cfg.augment_shift` pixels in x and y (a ChaCha8 stream per epoch, so a
/// resumed run sees the same images), the uncovered border filled with the background value.
pub(crate) fn epoch_samples(
    cfg: &TrainConfig,
    epoch: usize,
    images: &[f32],
    labels: &[u32],
    xs: &mut [f32],
    ys: &mut [u32],
) {
    let inputs = cfg.model.inputs();
    let side = (1..=inputs).find(|s| s * s >= inputs).unwrap_or(1);
    let square = side * side == inputs;
    let background = images.iter().copied().fold(f32::INFINITY, f32::min);
    let mut shifts = ChaCha8Rng::seed_from_u64(cfg.seed ^ AUGMENT_SEED);
    shifts.set_stream(epoch as u64);
    let max = cfg.augment_shift as i64;
    for (i, &s) in epoch_order(cfg.seed, epoch, labels.len())
        .iter()
        .enumerate()
    {
        let src = &images[s * inputs..(s + 1) * inputs];
        let dst = &mut xs[i * inputs..(i + 1) * inputs];
        ys[i] = labels[s];
        if max == 0 || !square {
            dst.copy_from_slice(src);
            continue;
        }
        let (dx, dy) = (shifts.gen_range(-max..=max), shifts.gen_range(-max..=max));
        for r in 0..side as i64 {
            for c in 0..side as i64 {
                let (sr, sc) = (r - dy, c - dx);
                let inside = (0..side as i64).contains(&sr) && (0..side as i64).contains(&sc);
                dst[r as usize * side + c as usize] = if inside {
                    src[sr as usize * side + sc as usize]
                } else {
                    background
                };
            }
        }
    }
}

/// Mixed into the seed of the augmentation stream, so it differs from the data-order stream.
const AUGMENT_SEED: u64 = 0x5eed_a06e_0000_0001;

/// Runs training from `progress` (zero for a fresh run) to `cfg.epochs` epochs or
/// `cfg.max_steps` steps. Each epoch shuffles the training set with a ChaCha8 stream of
/// `cfg.seed` (and shifts images by up to `cfg.augment_shift` pixels), runs `ceil(n / batch)`
/// AMP steps on `backend`, then evaluates on the whole training and test sets; a checkpoint is
/// written after every epoch when `out.save` is set.
///
/// Errors: [`Error::InvalidArgument`] for an invalid `cfg` or a dataset whose image size is not
/// the model's input width; whatever the backend returns for a step; [`Error::Io`] /
/// [`Error::Checkpoint`] for the metrics file, the plot or a checkpoint.
pub fn run(
    backend: &mut dyn Backend,
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    mut progress: Progress,
    out: &Outputs,
) -> Result<RunSummary> {
    cfg.validate()?;
    for (name, d) in [("training", train), ("test", test)] {
        d.check_input_size(cfg.model.inputs())
            .map_err(|e| Error::InvalidArgument {
                op: "train::run",
                detail: format!("{name} set: {e}"),
            })?;
    }
    let (train_x, train_y) = super::dataset_f32(train, cfg.normalize);
    let (test_x, test_y) = super::dataset_f32(test, cfg.normalize);
    let n = train.len();
    let steps_per_epoch = n.div_ceil(cfg.batch);
    let mut metrics = match &out.metrics {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(progress.global_step > 0)
                .write(true)
                .truncate(progress.global_step == 0)
                .open(p)
                .map_err(|e| Error::io(p, "opening the metrics file", e))?,
        )),
        None => None,
    };
    let mut summary = RunSummary::default();
    let inputs = cfg.model.inputs();
    let mut xs = vec![0f32; n * inputs];
    let mut ys = vec![0u32; n];
    'epochs: while progress.epoch < cfg.epochs {
        let epoch = progress.epoch;
        epoch_samples(cfg, epoch, &train_x, &train_y, &mut xs, &mut ys);
        backend.load_epoch(&xs, &ys)?;
        let bar = if out.progress_bar {
            let bar = ProgressBar::new(steps_per_epoch as u64);
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg}").map_err(
                    |e| Error::InvalidArgument {
                        op: "train::run",
                        detail: e.to_string(),
                    },
                )?,
            );
            bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
            bar.set_position(progress.step_in_epoch as u64);
            bar
        } else {
            ProgressBar::hidden()
        };
        let started = Instant::now();
        let mut epoch_records: Vec<StepRecord> = Vec::new();
        let mut samples = 0usize;
        let mut stopped = false;
        while progress.step_in_epoch < steps_per_epoch {
            if cfg.max_steps.is_some_and(|m| progress.global_step >= m) {
                stopped = true;
                break;
            }
            let first = progress.step_in_epoch * cfg.batch;
            let b = cfg.batch.min(n - first);
            backend.step(first, b)?;
            samples += b;
            progress.step_in_epoch += 1;
            progress.global_step += 1;
            if progress.global_step % RECORDS_EVERY == 0 {
                let records = backend.take_records()?;
                log_records(&mut summary, &mut metrics, &progress, &records, epoch)?;
                if let Some(r) = records.last() {
                    bar.set_message(format!("loss {:.4} scale {}", r.loss, r.scale));
                }
                epoch_records.extend(records);
            }
            bar.set_position(progress.step_in_epoch as u64);
        }
        let records = backend.take_records()?;
        log_records(&mut summary, &mut metrics, &progress, &records, epoch)?;
        epoch_records.extend(records);
        let elapsed = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        progress.skipped += epoch_records.iter().filter(|r| r.skipped).count() as u64;
        if stopped {
            save(backend, cfg, &progress, out)?;
            break 'epochs;
        }
        progress.epoch += 1;
        progress.step_in_epoch = 0;
        let train_eval = backend.evaluate(&train_x, &train_y)?;
        let test_eval = backend.evaluate(&test_x, &test_y)?;
        let line = EpochSummary {
            epoch,
            train_loss: epoch_records.iter().map(|r| f64::from(r.loss)).sum::<f64>()
                / epoch_records.len().max(1) as f64,
            train: train_eval,
            test: test_eval,
            scale: backend.scale()?,
            skipped: epoch_records.iter().filter(|r| r.skipped).count(),
            samples_per_s: samples as f64 / elapsed.max(1e-9),
        };
        if out.verbose {
            println!(
                "epoch {:>3}/{}  loss {:.4}  train acc {:.2}%  test acc {:.2}%  scale {}  skipped {}  {:.0} samples/s  on {}",
                epoch + 1,
                cfg.epochs,
                line.train_loss,
                100.0 * line.train.accuracy(),
                100.0 * line.test.accuracy(),
                line.scale,
                line.skipped,
                line.samples_per_s,
                backend.device()
            );
        }
        summary.epochs.push(line);
        save(backend, cfg, &progress, out)?;
    }
    if let Some(m) = &mut metrics {
        m.flush()
            .map_err(|e| Error::io(out.metrics.as_ref().unwrap(), "writing metrics", e))?;
    }
    if let Some(p) = &out.plot {
        super::plot::loss_and_scale(p, &summary.steps)?;
    }
    summary.progress = progress;
    Ok(summary)
}

fn save(
    backend: &mut dyn Backend,
    cfg: &TrainConfig,
    progress: &Progress,
    out: &Outputs,
) -> Result<()> {
    if let Some(dir) = &out.save {
        let state = backend.export()?;
        checkpoint::save(dir, cfg, progress, &state, None)?;
    }
    Ok(())
}

/// Appends records to the run summary and the metrics file. `progress` is already past the last
/// record.
fn log_records(
    summary: &mut RunSummary,
    metrics: &mut Option<std::io::BufWriter<std::fs::File>>,
    progress: &Progress,
    records: &[StepRecord],
    epoch: usize,
) -> Result<()> {
    let first = progress.global_step - records.len() as u64;
    for (i, r) in records.iter().enumerate() {
        let step = first + i as u64;
        summary.steps.push((step, *r));
        if let Some(m) = metrics {
            let line = serde_json::json!({
                "step": step,
                "epoch": epoch,
                "loss": r.loss,
                "scale": r.scale,
                "skipped": r.skipped,
                "lr": r.lr,
            });
            writeln!(m, "{line}")
                .map_err(|e| Error::io(std::path::Path::new("metrics"), "writing metrics", e))?;
        }
    }
    Ok(())
}
