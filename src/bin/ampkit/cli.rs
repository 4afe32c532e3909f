//! `ampkit train` and `ampkit eval`: flags → [`TrainConfig`], then the library's loop.

use crate::cli_resume::{self, Given};
use crate::train_args::{self, loss_scale, EvalArgs, OptimizerKind, ScheduleKind, TrainArgs};
use ampkit::cpu::optim::{AdamConfig, OptimizerConfig, SgdConfig};
use ampkit::cpu::schedule::LrSchedule;
use ampkit::nn::MlpConfig;
use ampkit::train::resume::{self, Horizon};
use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{checkpoint, data, memory, open_backend, Progress, TrainConfig};
use ampkit::{Device, Error, Result};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

fn invalid(detail: String) -> Error {
    Error::InvalidArgument {
        op: "ampkit train",
        detail,
    }
}

fn optimizer(a: &TrainArgs) -> OptimizerConfig {
    match a.optimizer {
        OptimizerKind::Adam | OptimizerKind::Adamw => {
            let adamw = matches!(a.optimizer, OptimizerKind::Adamw);
            let c = AdamConfig {
                lr: a.lr.unwrap_or(1e-3),
                weight_decay: a.weight_decay.unwrap_or(if adamw { 1e-2 } else { 0.0 }),
                ..AdamConfig::default()
            };
            if adamw {
                OptimizerConfig::AdamW(c)
            } else {
                OptimizerConfig::Adam(c)
            }
        }
        OptimizerKind::Sgd => OptimizerConfig::Sgd(SgdConfig {
            lr: a.lr.unwrap_or(0.05),
            momentum: a.momentum,
            weight_decay: a.weight_decay.unwrap_or(0.0),
            nesterov: a.nesterov,
            ..SgdConfig::default()
        }),
    }
}

/// A `--device` value, the same syntax for every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// GPU 0 if one can be opened, else the CPU.
    Auto,
    /// The CPU reference backend.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

/// Parses `auto`, `cpu`, `cuda` (= `cuda:0`, also `gpu`) or `cuda:N`; a bare `N` is kept as an
/// alias of `cuda:N`, the syntax `ampkit info --device` once had.
pub fn device_spec(spec: &str) -> Result<DeviceSpec> {
    match spec {
        "auto" => Ok(DeviceSpec::Auto),
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
        s => match s.strip_prefix("cuda:").unwrap_or(s).parse() {
            Ok(n) => Ok(DeviceSpec::Cuda(n)),
            Err(_) => Err(Error::InvalidArgument {
                op: "--device",
                detail: format!("{s:?} is not a device: use auto, cpu or cuda:N (cuda is cuda:0)"),
            }),
        },
    }
}

/// Opens the device a `--device` value names (`auto` prints which one it chose).
pub fn device(spec: &str) -> Result<Device> {
    match device_spec(spec)? {
        DeviceSpec::Auto => {
            let (d, note) = Device::auto();
            println!("device: {note}");
            Ok(d)
        }
        DeviceSpec::Cpu => Ok(Device::cpu()),
        DeviceSpec::Cuda(n) => Device::cuda(n),
    }
}

fn dataset(dir: &Option<PathBuf>) -> Result<data::MnistSplit> {
    match dir {
        Some(dir) => data::load_dir(dir),
        None => data::bundled(),
    }
}

/// `ampkit train`. `given` tells which flags were typed on the command line (as opposed to
/// defaults): a resumed run rejects those that contradict its checkpoint
/// ([`cli_resume::check_flags`]), and a fresh run those that would be ignored.
pub fn train(a: TrainArgs, given: &Given<'_>) -> Result<()> {
    let out = Outputs {
        save: a.save.clone(),
        metrics: a.metrics.clone(),
        plot: a.plot.clone(),
        progress_bar: !a.no_progress && std::io::stderr().is_terminal(),
        verbose: true,
        warn: ampkit::train::overflow::WarnConfig {
            skip_streak: a.warn_skip_streak,
            scale_floor: None,
        },
        locate_overflow: a.locate_overflow,
        data: None,
    };
    // Everything that can be checked without training is checked before the first step: a bad
    // path found after the last epoch costs the whole run.
    out.validate()?;
    let dev = device(&a.device)?;
    let split = dataset(&a.data)?;
    let out = Outputs {
        data: Some(split.fingerprint()),
        ..out
    };
    let n = split.train.len();
    let (cfg, progress, state) = match &a.resume {
        Some(dir) => {
            let checkpoint::Checkpoint {
                config: saved,
                progress,
                state,
                data: saved_data,
                ..
            } = checkpoint::load(dir)?;
            cli_resume::check_flags(&a, given, &saved, dir)?;
            if let Some(w) = data_warning(saved_data.as_ref(), &split.fingerprint()) {
                eprintln!("warning: {w}");
            }
            let horizon = Horizon {
                epochs: a.epochs,
                max_steps: a.max_steps,
            };
            let mut cfg = resume::resumed_config(&saved, &progress, horizon, n)?;
            cfg.cuda_graph = !a.no_cuda_graph;
            println!(
                "resuming {} at epoch {}, step {} ({} steps done); this run ends at step {}",
                dir.display(),
                progress.epoch + 1,
                progress.step_in_epoch,
                progress.global_step,
                cfg.end_step(n)
            );
            (cfg, progress, Some(state))
        }
        None => (fresh_config(&a, given, n)?, Progress::default(), None),
    };
    memory::check_run(&dev, &cfg, n, split.test.len())?;
    let mut backend = open_backend(&dev, &cfg)?;
    if let Some(state) = &state {
        backend.import(state)?;
    }
    println!(
        "model: {} ({} parameters, {:?}), {} train / {} test samples, batch {}, {:?}, loss scale {:?}",
        cfg.model.describe(),
        cfg.model.parameter_count(),
        cfg.model.precision,
        split.train.len(),
        split.test.len(),
        cfg.batch,
        cfg.optimizer,
        cfg.loss_scale
    );
    let t = Instant::now();
    let summary = trainer::run(
        backend.as_mut(),
        &cfg,
        &split.train,
        &split.test,
        progress,
        &out,
    )?;
    let skipped = summary.steps.iter().filter(|(_, r)| r.skipped).count();
    println!(
        "done: {} steps in {:.1} s ({} skipped) on {}",
        summary.steps.len(),
        t.elapsed().as_secs_f64(),
        skipped,
        backend.device()
    );
    println!("{}", speed_line(&summary, t.elapsed().as_secs_f64(), &dev));
    if let Some(p) = &a.save {
        println!("{}", saved_line(p, &summary));
    }
    Ok(())
}

/// Where a run's time went: steps per second inside the step loops, their share of the run, and
/// on a GPU the most device memory held at once.
fn speed_line(summary: &trainer::RunSummary, run_seconds: f64, dev: &Device) -> String {
    let steps = summary.steps.len();
    let mut line = format!(
        "steps: {:.0} steps/s, {:.3} s in the step loops ({:.0} % of the run)",
        steps as f64 / summary.step_seconds.max(1e-9),
        summary.step_seconds,
        100.0 * summary.step_seconds / run_seconds.max(1e-9)
    );
    if let Device::Cuda(gpu) = dev {
        match gpu.peak_memory() {
            Ok(b) => {
                line += &format!(
                    "; peak device memory {:.1} MiB",
                    b as f64 / (1 << 20) as f64
                )
            }
            Err(e) => line += &format!("; peak device memory unknown ({e})"),
        }
    }
    line
}

/// Why a resumed run's data may not be the data its checkpoint was trained on: the parts whose
/// sha256 differ, or that the checkpoint (written before data identities were recorded) cannot
/// tell. A different data set is allowed (fine-tuning on new data is legitimate), so this is a
/// warning, not an error.
fn data_warning(
    saved: Option<&std::collections::BTreeMap<String, String>>,
    now: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    let Some(saved) = saved else {
        return Some(
            "the checkpoint does not record which data it was trained on (written by an older \
             ampkit); make sure --data names the same set"
                .into(),
        );
    };
    let differ: Vec<&str> = now
        .iter()
        .filter(|(k, v)| saved.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str())
        .chain(
            saved
                .keys()
                .filter(|k| !now.contains_key(*k))
                .map(String::as_str),
        )
        .collect();
    (!differ.is_empty()).then(|| {
        format!(
            "this data differs from the data the checkpoint was trained on ({} changed, by \
             sha256): the run continues, on the new data",
            differ.join(", ")
        )
    })
}

/// What `--save` left behind, said exactly: the step the checkpoint holds, or that none was
/// written (every save withheld because the loss was inf/NaN at the time).
fn saved_line(dir: &std::path::Path, summary: &trainer::RunSummary) -> String {
    match summary.saved {
        Some(p) if p == summary.progress => {
            let at = if p.step_in_epoch == 0 {
                format!("the end of epoch {}", p.epoch)
            } else {
                format!("step {} of epoch {}", p.step_in_epoch, p.epoch + 1)
            };
            format!(
                "checkpoint: {} (global step {}, {at})",
                dir.display(),
                p.global_step
            )
        }
        Some(p) => format!(
            "checkpoint: {} holds step {}, not the final step {} (the loss was inf/NaN when the \
             later saves were due)",
            dir.display(),
            p.global_step,
            summary.progress.global_step
        ),
        None => format!(
            "no checkpoint written to {}: the loss was inf/NaN whenever a save was due",
            dir.display()
        ),
    }
}

/// The configuration of a new run from its flags. Flags that would be silently ignored in
/// this combination are errors.
fn fresh_config(a: &TrainArgs, given: &Given<'_>, train_len: usize) -> Result<TrainConfig> {
    let sgd = matches!(a.optimizer, OptimizerKind::Sgd);
    for (id, ok, needs) in [
        ("momentum", sgd, "--optimizer sgd"),
        ("nesterov", sgd, "--optimizer sgd"),
        (
            "min_lr",
            matches!(a.schedule, ScheduleKind::Cosine),
            "--schedule cosine",
        ),
    ] {
        if given.has(id) && !ok {
            return Err(invalid(format!(
                "--{} applies only with {needs}; it would be ignored here",
                id.replace('_', "-")
            )));
        }
    }
    // The library names the field (`lr = -1`); the command line names the flag.
    for (flag, v) in [
        ("lr", a.lr),
        ("weight-decay", a.weight_decay),
        ("momentum", Some(a.momentum)),
        ("min-lr", Some(a.min_lr)),
    ] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(invalid(format!(
                "--{flag} {v}: must be a finite number ≥ 0"
            )));
        }
    }
    let loss_scale = loss_scale(a)?;
    if loss_scale.dynamic().is_none() {
        if let Some(id) = DYNAMIC_FLAGS.iter().find(|id| given.has(id)) {
            return Err(invalid(format!(
                "--{} applies only to dynamic loss scaling, and the loss scale is {}",
                id.replace('_', "-"),
                cli_resume::loss_scale_name(&loss_scale)
            )));
        }
    }
    if a.precision != ampkit::amp::Precision::Fp8 {
        if let Some(id) = FP8_FLAGS.iter().find(|id| given.has(id)) {
            return Err(invalid(format!(
                "--{} applies only to --precision fp8, and the precision is {}",
                id.replace('_', "-"),
                a.precision.name()
            )));
        }
    }
    let cfg = TrainConfig {
        model: MlpConfig {
            layers: a.layers.clone(),
            layernorm: a.layernorm,
            precision: a.precision,
            fp32_layers: a.fp32_layers.clone(),
            fp8: train_args::fp8_recipe(a),
        },
        optimizer: optimizer(a),
        schedule: match a.schedule {
            ScheduleKind::Constant => LrSchedule::Constant,
            // The horizon is set below, from the epochs and the step limit.
            ScheduleKind::Cosine => LrSchedule::Cosine {
                total: 1,
                min_lr: a.min_lr,
            },
        },
        loss_scale,
        epochs: a.epochs.unwrap_or(10),
        batch: a.batch,
        seed: a.seed,
        max_steps: a.max_steps,
        normalize: !a.no_normalize,
        augment_shift: a.augment_shift,
        cuda_graph: !a.no_cuda_graph,
        clip: train_args::grad_clip(a)?,
    };
    cfg.validate()?;
    Ok(cfg.with_schedule_horizon(train_len))
}

/// The flags of dynamic loss scaling (clap ids).
/// The flags of the FP8 recipe (`--precision fp8` only).
pub(crate) const FP8_FLAGS: [&str; 4] =
    ["fp8_history", "fp8_margin", "fp8_amax_algo", "fp8_format"];

pub(crate) const DYNAMIC_FLAGS: [&str; 6] = [
    "init_scale",
    "growth_factor",
    "backoff_factor",
    "growth_interval",
    "min_scale",
    "max_scale",
];

/// `ampkit eval`.
pub fn eval(a: EvalArgs) -> Result<()> {
    // The model alone: evaluation needs neither the optimizer moments nor train_state.safetensors.
    let checkpoint::ModelCheckpoint {
        config: cfg,
        progress,
        params,
        ..
    } = checkpoint::load_model(&a.checkpoint)?;
    let split = dataset(&a.data)?;
    let dev = device(&a.device)?;
    let mut backend = open_backend(&dev, &cfg)?;
    // import takes a whole state: the fresh backend's zero moments stand in for the optimizer's,
    // which evaluation never reads.
    let mut state = backend.export()?;
    state.params = params;
    backend.import(&state)?;
    split.test.check_input_size(cfg.model.inputs())?;
    let (x, y) = ampkit::train::dataset_f32(&split.test, cfg.normalize);
    let e = backend.evaluate(&x, &y)?;
    println!(
        "checkpoint {} (step {}): test accuracy {:.2}% ({}/{}), loss {:.4}, on {}",
        a.checkpoint.display(),
        progress.global_step,
        100.0 * e.accuracy(),
        e.correct,
        e.total,
        e.loss,
        backend.device()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::data_warning;
    use std::collections::BTreeMap;

    fn record(parts: &[(&str, &str)]) -> BTreeMap<String, String> {
        parts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn resuming_on_other_data_names_the_parts_that_differ() {
        let saved = record(&[
            ("train-images", "aa"),
            ("train-labels", "bb"),
            ("test-images", "cc"),
        ]);
        assert_eq!(data_warning(Some(&saved), &saved.clone()), None);
        let now = record(&[
            ("train-images", "aa"),
            ("train-labels", "b2"),
            ("test-labels", "dd"),
        ]);
        let w = data_warning(Some(&saved), &now).expect("a warning");
        assert!(
            w.contains("train-labels") && w.contains("test-labels") && w.contains("test-images"),
            "{w}"
        );
        assert!(!w.contains("train-images"), "{w}");
        let old = data_warning(None, &now).expect("a warning for a checkpoint without a record");
        assert!(old.contains("does not record"), "{old}");
    }
}
