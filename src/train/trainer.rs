//! The training loop, written once for every [`Backend`]: data order, batching, logging, metrics,
//! checkpoints and the resume logic.

use super::backend::{Backend, Evaluation, StepRecord};
use super::checkpoint::{self, Progress};
use super::config::TrainConfig;
use super::data::Dataset;
use super::health::{format_scale, Health};
use super::locate::OverflowSite;
use super::overflow::{skip_reason, Advisor, EpochTally, ScalerWarning};
use super::progress::EpochBar;
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::time::Instant;

pub use super::outputs::Outputs;

/// Steps between read-backs of the step records while an epoch runs (each is one device
/// synchronisation on the GPU), so the progress bar shows a recent loss and a dead run
/// ([`super::health`]) is found within this many steps.
pub(crate) const RECORDS_EVERY: u64 = 25;

/// One epoch's summary line.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSummary {
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps in this run; `None` when the run took none of
    /// them (it resumed at the epoch's end).
    pub train_loss: Option<f64>,
    /// Accuracy of the end-of-epoch weights on the training set.
    pub train: Evaluation,
    /// Accuracy of the end-of-epoch weights on the test set.
    pub test: Evaluation,
    /// The loss scale after the epoch's last step.
    pub scale: f32,
    /// Skipped steps in the epoch.
    pub skipped: usize,
    /// The smallest and largest loss scale the epoch's steps ran with (`None`: no steps).
    pub scale_range: Option<(f32, f32)>,
    /// Per parameter (`state_dict` name) whose gradient was inf/NaN on some skipped step of the
    /// epoch: how many, in parameter order.
    pub overflows: Vec<(String, u64)>,
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
    /// Where the last checkpoint this run wrote stands (`None`: none written, because no
    /// directory was given or every save was withheld; see [`run`]).
    pub saved: Option<Progress>,
    /// Wall time spent in the epochs' step loops (the steps and the record read-backs, not the
    /// data preparation, the evaluations or the checkpoints), seconds.
    pub step_seconds: f64,
    /// The loss scaler's warnings, in the order they fired (each kind at most once; printed
    /// as they fire when [`Outputs::verbose`]).
    pub warnings: Vec<(u64, ScalerWarning)>,
    /// With [`Outputs::locate_overflow`]: every skipped step (global step) and the first op of
    /// its replay whose output was inf/NaN (`None`: the replay found every op finite).
    pub overflow_sites: Vec<(u64, Option<OverflowSite>)>,
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

/// Epoch `epoch`'s plan: the samples in its order ([`epoch_order`]), a (dx, dy) shift of up to
/// `cfg.augment_shift` pixels per sample (a ChaCha8 stream per epoch, so a resumed run sees the
/// same images), and the image side to shift on (0: no shift, for a shift of 0 or inputs that are
/// not a square image, and then no shift is drawn).
fn epoch_plan(cfg: &TrainConfig, epoch: usize, n: usize) -> (Vec<u32>, Vec<i32>, usize) {
    let inputs = cfg.model.inputs();
    let side = (1..=inputs).find(|s| s * s >= inputs).unwrap_or(1);
    let order: Vec<u32> = epoch_order(cfg.seed, epoch, n)
        .into_iter()
        .map(|s| s as u32)
        .collect();
    if cfg.augment_shift == 0 || side * side != inputs {
        return (order, vec![0; 2 * n], 0);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ AUGMENT_SEED);
    rng.set_stream(epoch as u64);
    // Drawn as i64, as since the first release, so that checkpoints resume onto the same images.
    let max = cfg.augment_shift as i64;
    let shifts = (0..n)
        .flat_map(|_| {
            let dx = rng.gen_range(-max..=max) as i32;
            [dx, rng.gen_range(-max..=max) as i32]
        })
        .collect();
    (order, shifts, side)
}

/// Fills `xs`/`ys` with epoch `epoch`'s samples ([`epoch_plan`]) through
/// [`crate::cpu::augment::gather_shifted`], the uncovered border filled with `border` (the
/// data's smallest value, [`background`], computed once per run).
pub(crate) fn epoch_samples(
    cfg: &TrainConfig,
    epoch: usize,
    (images, labels): (&[f32], &[u32]),
    border: f32,
    xs: &mut [f32],
    ys: &mut [u32],
) -> Result<()> {
    let (order, shifts, side) = epoch_plan(cfg, epoch, labels.len());
    for (y, &s) in ys.iter_mut().zip(&order) {
        *y = labels[s as usize];
    }
    let inputs = cfg.model.inputs();
    crate::cpu::augment::gather_shifted(images, inputs, side, &order, &shifts, border, xs)
}

/// The value a shifted image's uncovered border takes: the data's smallest.
fn background(images: &[f32]) -> f32 {
    images.iter().copied().fold(f32::INFINITY, f32::min)
}

/// Mixed into the seed of the augmentation stream, so it differs from the data-order stream.
const AUGMENT_SEED: u64 = 0x5eed_a06e_0000_0001;

/// Runs training from `progress` (zero for a fresh run) to `cfg.epochs` epochs or
/// `cfg.max_steps` steps in total. Each epoch shuffles the training set with a ChaCha8 stream of
/// `cfg.seed` (and shifts images by up to `cfg.augment_shift` pixels), runs `ceil(n / batch)`
/// AMP steps on `backend`, then evaluates on the whole training and test sets; a checkpoint is
/// written after every epoch and where `max_steps` stops the run, when `out.save` is set.
///
/// Before the first step it checks `cfg`, the data and every output path
/// ([`Outputs::validate`]). On every record read-back it applies the divergence rules listed
/// under [`Error::Diverged`]; a checkpoint is written only after they pass, and is withheld (the
/// previous one kept, [`RunSummary::saved`] telling which) while the latest step's loss is
/// inf/NaN. A progress already at or past the end trains nothing and returns an empty summary
/// (`super::resume::resumed_config` refuses that case for a resumed run).
///
/// Errors: [`Error::InvalidArgument`] for an invalid `cfg`, an output path that cannot be
/// written, or a dataset whose image size is not the model's input width; [`Error::Diverged`]
/// when the run can no longer learn (the plot, if asked for, is still drawn, so it shows how);
/// whatever the backend returns for a step; [`Error::Io`] / [`Error::Checkpoint`] for the
/// metrics file, the plot or a checkpoint.
pub fn run(
    backend: &mut dyn Backend,
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    progress: Progress,
    out: &Outputs,
) -> Result<RunSummary> {
    cfg.validate()?;
    out.validate()?;
    for (name, d) in [("training", train), ("test", test)] {
        d.check_input_size(cfg.model.inputs())
            .map_err(|e| Error::InvalidArgument {
                op: "train::run",
                detail: format!("{name} set: {e}"),
            })?;
    }
    let mut summary = RunSummary::default();
    let result = epochs(backend, cfg, train, test, progress, out, &mut summary);
    let plotted = match &out.plot {
        Some(p) => super::outputs::draw_plot(p, &summary.steps),
        None => Ok(()),
    };
    // A dead run's plot is drawn too (it shows how it died), but its error is the one to report.
    result?;
    plotted?;
    Ok(summary)
}

/// The epochs of [`run`], filling `summary` as they go so that the plot can be drawn from it
/// even when a step fails.
fn epochs(
    backend: &mut dyn Backend,
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    mut progress: Progress,
    out: &Outputs,
    summary: &mut RunSummary,
) -> Result<()> {
    let (train_x, train_y) = super::dataset_f32(train, cfg.normalize);
    let (test_x, test_y) = super::dataset_f32(test, cfg.normalize);
    let n = train.len();
    let steps_per_epoch = cfg.steps_per_epoch(n) as usize;
    let mut metrics = match &out.metrics {
        Some(p) => Some((
            std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(progress.global_step > 0)
                    .write(true)
                    .truncate(progress.global_step == 0)
                    .open(p)
                    .map_err(|e| Error::io(p, "opening the metrics file", e))?,
            ),
            p.as_path(),
        )),
        None => None,
    };
    let mut health = Health::new(&cfg.loss_scale);
    let mut advisor = Advisor::new(out.warn, &cfg.loss_scale);
    let names: Vec<String> = (cfg.model.parameter_specs().into_iter())
        .map(|s| s.name)
        .collect();
    let mut seen = Seen {
        health: &mut health,
        advisor: &mut advisor,
        names: &names,
        verbose: out.verbose,
    };
    // A backend that keeps the training set (the GPU) assembles each epoch itself from its plan;
    // otherwise the epoch's samples are assembled here. The same bytes either way.
    let kept = backend.keep_dataset(&train_x, &train_y)?;
    let border = background(&train_x);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    // Records are read back after every step while locating overflows, so that a skipped step
    // is replayed with the weights it ran with.
    let records_every = if out.locate_overflow {
        1
    } else {
        RECORDS_EVERY
    };
    let at_max = |p: &Progress| cfg.max_steps.is_some_and(|m| p.global_step >= m);
    while progress.epoch < cfg.epochs && !at_max(&progress) {
        let epoch = progress.epoch;
        let mut plan = None;
        if kept {
            let (order, shifts, side) = epoch_plan(cfg, epoch, n);
            backend.load_epoch_plan(&order, &shifts, side, border)?;
            plan = Some((order, shifts, side));
        } else {
            xs.resize(n * cfg.model.inputs(), 0.0);
            ys.resize(n, 0);
            epoch_samples(cfg, epoch, (&train_x, &train_y), border, &mut xs, &mut ys)?;
            backend.load_epoch(&xs, &ys)?;
        }
        let bar = EpochBar::new(
            out.progress_bar,
            steps_per_epoch as u64,
            format!("{}/{}", epoch + 1, cfg.epochs),
            progress.step_in_epoch as u64,
        )?;
        let started = Instant::now();
        let mut epoch_records: Vec<StepRecord> = Vec::new();
        let mut tally = EpochTally::default();
        let mut samples = 0usize;
        let mut stopped = false;
        while progress.step_in_epoch < steps_per_epoch {
            if at_max(&progress) {
                stopped = true;
                break;
            }
            let first = progress.step_in_epoch * cfg.batch;
            let b = cfg.batch.min(n - first);
            backend.step(first, b)?;
            samples += b;
            progress.step_in_epoch += 1;
            progress.global_step += 1;
            if progress.global_step % records_every == 0 {
                let records = backend.take_records()?;
                let site = match records.last() {
                    Some(r) if r.skipped && out.locate_overflow => {
                        let epoch_set = match &plan {
                            Some(p) => EpochSet::Plan(p, (&train_x, &train_y), border),
                            None => EpochSet::Samples(&xs, &ys),
                        };
                        let batch = step_batch(cfg, epoch_set, first, b)?;
                        let site = replay(backend, cfg, batch, r.scale)?;
                        summary
                            .overflow_sites
                            .push((progress.global_step - 1, site.clone()));
                        Some(site)
                    }
                    _ => None,
                };
                seen.records(summary, &mut metrics, &progress, &records, epoch, site)?;
                tally.add(&records);
                if let Some(r) = records.last() {
                    bar.set_message(format!(
                        "loss {:.4} scale {}",
                        r.loss,
                        format_scale(r.scale)
                    ));
                }
                epoch_records.extend(records);
            }
            bar.set_position(progress.step_in_epoch as u64);
        }
        let records = backend.take_records()?;
        seen.records(summary, &mut metrics, &progress, &records, epoch, None)?;
        tally.add(&records);
        epoch_records.extend(records);
        let elapsed = started.elapsed().as_secs_f64();
        summary.step_seconds += elapsed;
        bar.finish_and_clear();
        progress.skipped += epoch_records.iter().filter(|r| r.skipped).count() as u64;
        if stopped {
            let scale = backend.scale()?;
            seen.health.check_scale(progress.global_step, scale)?;
            save(backend, cfg, &progress, out, seen.health, summary)?;
            break;
        }
        progress.epoch += 1;
        progress.step_in_epoch = 0;
        let train_eval = backend.evaluate(&train_x, &train_y)?;
        let test_eval = backend.evaluate(&test_x, &test_y)?;
        let scale = backend.scale()?;
        seen.health.check_scale(progress.global_step, scale)?;
        let line = EpochSummary {
            epoch,
            train_loss: (!epoch_records.is_empty()).then(|| {
                epoch_records.iter().map(|r| f64::from(r.loss)).sum::<f64>()
                    / epoch_records.len() as f64
            }),
            train: train_eval,
            test: test_eval,
            scale,
            skipped: epoch_records.iter().filter(|r| r.skipped).count(),
            scale_range: tally.scale_range(),
            overflows: tally.overflows(&names),
            samples_per_s: samples as f64 / elapsed.max(1e-9),
        };
        if out.verbose {
            println!("{}", epoch_line(&line, cfg.epochs, &backend.device()));
        }
        summary.epochs.push(line);
        save(backend, cfg, &progress, out, seen.health, summary)?;
    }
    if let Some((m, p)) = &mut metrics {
        m.flush()
            .map_err(|e| Error::io(p, "writing metrics to", e))?;
    }
    summary.progress = progress;
    Ok(())
}

/// The line printed after an epoch. A mean loss over no steps is not 0 (nor the `-0` an empty
/// f64 sum gives): it is said to be absent.
fn epoch_line(line: &EpochSummary, epochs: usize, device: &str) -> String {
    let loss = match line.train_loss {
        Some(l) => format!("loss {l:.4}"),
        None => "loss n/a (no steps of this epoch in this run)".to_string(),
    };
    let range = match line.scale_range {
        Some((lo, hi)) if lo != hi => {
            format!(" (steps ran at {}-{})", format_scale(lo), format_scale(hi))
        }
        _ => String::new(),
    };
    let mut text = format!(
        "epoch {:>3}/{epochs}  {loss}  train acc {:.2}%  test acc {:.2}%  scale {}{range}  skipped {}  {:.0} samples/s  on {device}",
        line.epoch + 1,
        100.0 * line.train.accuracy(),
        100.0 * line.test.accuracy(),
        format_scale(line.scale),
        line.skipped,
        line.samples_per_s,
    );
    if !line.overflows.is_empty() {
        let per: Vec<String> = (line.overflows.iter())
            .map(|(name, n)| format!("{name} ({n})"))
            .collect();
        text.push_str(&format!(
            "\n           skipped steps had inf/NaN gradients in: {}",
            per.join(", ")
        ));
    }
    text
}

/// Writes a checkpoint when `out.save` is set, unless the latest step's loss was inf/NaN: such
/// weights are on their way to [`Error::Diverged`] (rule 2 of [`super::health`]) and must not
/// replace a good checkpoint.
fn save(
    backend: &mut dyn Backend,
    cfg: &TrainConfig,
    progress: &Progress,
    out: &Outputs,
    health: &Health,
    summary: &mut RunSummary,
) -> Result<()> {
    let Some(dir) = &out.save else {
        return Ok(());
    };
    if !health.last_loss_finite() {
        if out.verbose {
            println!(
                "checkpoint not written at step {}: the last step's loss was inf/NaN; {} keeps \
                 the previous one",
                progress.global_step,
                dir.display()
            );
        }
        return Ok(());
    }
    let state = backend.export()?;
    checkpoint::save(dir, cfg, progress, &state, out.data.as_ref())?;
    summary.saved = Some(*progress);
    Ok(())
}

// The record read-backs' consumers (warnings, metrics, the overflow locator's replays): a child
// module, so it sees this module's items.
#[path = "trainer_records.rs"]
mod records;
use records::{replay, step_batch, EpochSet, Seen};

#[cfg(test)]
mod tests {
    use super::*;

    /// The epoch assembly of 0.2.0 and before (per-sample draws interleaved with the copies),
    /// kept to pin the gather-based [`epoch_samples`] to the same bytes: checkpoints of earlier
    /// runs resume onto the same images.
    fn epoch_samples_0_2(
        cfg: &TrainConfig,
        epoch: usize,
        images: &[f32],
        labels: &[u32],
    ) -> (Vec<f32>, Vec<u32>) {
        let inputs = cfg.model.inputs();
        let (mut xs, mut ys) = (vec![0f32; labels.len() * inputs], vec![0u32; labels.len()]);
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
        (xs, ys)
    }

    #[test]
    fn epoch_samples_are_the_bytes_of_0_2() {
        let mut cfg = TrainConfig::mnist_default();
        let inputs = cfg.model.inputs();
        let n = 300;
        let images: Vec<f32> = (0..(n * inputs) as u32)
            .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 8) as f32 / 16_777_216.0 - 0.3)
            .collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        for (seed, shift, epoch) in [(0, 2, 0), (7, 2, 3), (1, 0, 1), (3, 5, 2)] {
            cfg.seed = seed;
            cfg.augment_shift = shift;
            let (want_x, want_y) = epoch_samples_0_2(&cfg, epoch, &images, &labels);
            let (mut xs, mut ys) = (vec![f32::NAN; n * inputs], vec![u32::MAX; n]);
            let border = background(&images);
            epoch_samples(&cfg, epoch, (&images, &labels), border, &mut xs, &mut ys).unwrap();
            assert_eq!(ys, want_y, "seed {seed} shift {shift} epoch {epoch}");
            assert!(
                xs.iter()
                    .zip(&want_x)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "seed {seed} shift {shift} epoch {epoch}: images differ"
            );
        }
    }

    #[test]
    fn a_located_steps_batch_is_the_one_the_backend_saw() {
        // The overflow locator rebuilds a step's batch from a kept dataset's plan: the same
        // samples as the host-assembled epoch's rows.
        let cfg = TrainConfig::mnist_default();
        let (n, inputs) = (300, cfg.model.inputs());
        let images: Vec<f32> = (0..(n * inputs) as u32)
            .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 8) as f32 / 16_777_216.0)
            .collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        let border = background(&images);
        let (mut xs, mut ys) = (vec![0f32; n * inputs], vec![0u32; n]);
        epoch_samples(&cfg, 3, (&images, &labels), border, &mut xs, &mut ys).unwrap();
        let plan = epoch_plan(&cfg, 3, n);
        for (first, b) in [(0, 64), (128, 64), (256, 44)] {
            let set = EpochSet::Plan(&plan, (&images, &labels), border);
            let from_plan = step_batch(&cfg, set, first, b).unwrap();
            let host = step_batch(&cfg, EpochSet::Samples(&xs, &ys), first, b).unwrap();
            assert_eq!(from_plan, host, "rows {first}..{}", first + b);
        }
    }

    #[test]
    fn an_epoch_without_steps_says_so() {
        let eval = Evaluation {
            loss: 0.5,
            correct: 9,
            total: 10,
        };
        let mut line = EpochSummary {
            epoch: 2,
            train_loss: None,
            train: eval,
            test: eval,
            scale: f32::from_bits(1 << 19), // 2^-130, subnormal
            skipped: 0,
            scale_range: None,
            overflows: Vec::new(),
            samples_per_s: 0.0,
        };
        let text = epoch_line(&line, 5, "cpu");
        assert!(
            text.starts_with("epoch   3/5  loss n/a (no steps"),
            "{text}"
        );
        assert!(text.contains("scale 7.34684e-40"), "{text}");
        assert!(!text.contains("-0"), "{text}");
        line.train_loss = Some(0.25);
        line.scale = 65536.0;
        let text = epoch_line(&line, 5, "cpu");
        assert!(text.contains("loss 0.2500  train acc 90.00%"), "{text}");
        assert!(text.contains("scale 65536  skipped 0"), "{text}");
    }
}
