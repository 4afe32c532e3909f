//! `ampkit train` and `ampkit eval`: flags → [`TrainConfig`], then the library's loop.

use ampkit::amp::{LossScale, Precision};
use ampkit::cpu::optim::{AdamConfig, OptimizerConfig, SgdConfig};
use ampkit::cpu::scaler::ScalerConfig;
use ampkit::cpu::schedule::LrSchedule;
use ampkit::nn::MlpConfig;
use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{checkpoint, data, open_backend, Progress, TrainConfig};
use ampkit::{Device, Error, Result};
use clap::{Args, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

/// Which optimizer.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerKind {
    /// Adam (default lr 1e-3).
    Adam,
    /// AdamW (default lr 1e-3, weight decay 1e-2).
    Adamw,
    /// SGD (default lr 0.05; momentum with --momentum).
    Sgd,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScheduleKind {
    /// The base rate throughout.
    Constant,
    /// Cosine decay to --min-lr over the whole run (counted in real steps).
    Cosine,
}

/// Flags of `ampkit train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// MNIST IDX directory (train-/t10k- images and labels, raw or .gz); default: the bundled
    /// 8,000/2,000 split in data/.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Layer widths, input to output.
    #[arg(long, value_delimiter = ',', default_value = "784,512,10")]
    layers: Vec<usize>,
    /// LayerNorm after each hidden layer (before its ReLU).
    #[arg(long)]
    layernorm: bool,
    /// mixed (f16 GEMMs, f32 master weights, loss scaling) or fp32.
    #[arg(long, default_value = "mixed")]
    precision: Precision,
    /// Linear layers (0-based) kept in f32 under mixed precision, e.g. `--fp32-layers 1`.
    #[arg(long, value_delimiter = ',')]
    fp32_layers: Vec<usize>,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerKind,
    /// Base learning rate (default per optimizer).
    #[arg(long)]
    lr: Option<f64>,
    /// Weight decay (L2 for adam and sgd, decoupled for adamw; adamw defaults to 1e-2).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    /// SGD Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// Learning-rate schedule; it advances only on real (not skipped) steps.
    #[arg(long, value_enum, default_value = "constant")]
    schedule: ScheduleKind,
    /// Cosine schedule floor.
    #[arg(long, default_value_t = 0.0)]
    min_lr: f64,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Samples per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Shift training images by up to this many pixels each epoch (0: off).
    #[arg(long, default_value_t = 2)]
    augment_shift: usize,
    /// Feed raw pixels/255 instead of standardised inputs.
    #[arg(long)]
    no_normalize: bool,
    /// GPU: launch every kernel of a step separately instead of replaying a CUDA graph.
    #[arg(long)]
    no_cuda_graph: bool,
    /// Seed for the initial weights and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps in total (a checkpoint records the exact position).
    #[arg(long)]
    max_steps: Option<u64>,
    /// `dynamic` (PyTorch GradScaler), a static scale such as `1024`, or `off`. Default:
    /// dynamic under mixed precision, off with `--precision fp32`.
    #[arg(long)]
    loss_scale: Option<String>,
    /// Dynamic scaling: the first scale.
    #[arg(long, default_value_t = 65536.0)]
    init_scale: f32,
    /// Dynamic scaling: growth factor.
    #[arg(long, default_value_t = 2.0)]
    growth_factor: f64,
    /// Dynamic scaling: backoff factor.
    #[arg(long, default_value_t = 0.5)]
    backoff_factor: f64,
    /// Dynamic scaling: clean steps before a growth.
    #[arg(long, default_value_t = 2000)]
    growth_interval: i32,
    /// Dynamic scaling: floor after a backoff (not in PyTorch).
    #[arg(long)]
    min_scale: Option<f32>,
    /// Dynamic scaling: cap on a growth (not in PyTorch).
    #[arg(long)]
    max_scale: Option<f32>,
    /// `auto` (GPU 0 if there is one), `cpu`, or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Write a checkpoint directory after every epoch (and at --max-steps).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Continue from a checkpoint directory (its model and training flags win; --epochs and
    /// --max-steps may extend the run).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// JSON Lines metrics, one record per step.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// PNG of loss and loss scale over the steps, skipped steps marked.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Flags of `ampkit eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint directory written by `ampkit train --save`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// MNIST IDX directory; default: the bundled split.
    #[arg(long)]
    data: Option<PathBuf>,
    /// `auto`, `cpu`, or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn invalid(detail: String) -> Error {
    Error::InvalidArgument {
        op: "ampkit train",
        detail,
    }
}

fn loss_scale(a: &TrainArgs) -> Result<LossScale> {
    let default = if a.precision == Precision::Fp32 {
        "off"
    } else {
        "dynamic"
    };
    let s = match a.loss_scale.as_deref().unwrap_or(default) {
        "dynamic" => LossScale::Dynamic(ScalerConfig {
            init_scale: a.init_scale,
            growth_factor: a.growth_factor,
            backoff_factor: a.backoff_factor,
            growth_interval: a.growth_interval,
            min_scale: a.min_scale,
            max_scale: a.max_scale,
        }),
        "off" | "none" => LossScale::Off,
        v => LossScale::Static(v.parse().map_err(|_| {
            invalid(format!(
                "--loss-scale {v:?}: use dynamic, off, or a number such as 1024"
            ))
        })?),
    };
    s.validate()?;
    Ok(s)
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

/// `auto`, `cpu`, `cuda`, `cuda:N`.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "auto" => {
            let (d, note) = Device::auto();
            println!("device: {note}");
            Ok(d)
        }
        "cpu" => Ok(Device::cpu()),
        "cuda" | "gpu" => Device::cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::cuda(n),
            None => Err(invalid(format!("--device {s:?}: use auto, cpu or cuda:N"))),
        },
    }
}

fn dataset(dir: &Option<PathBuf>) -> Result<data::MnistSplit> {
    let dir = match dir {
        Some(d) => d.clone(),
        None => data::bundled_dir()?,
    };
    data::load_dir(&dir)
}

/// `ampkit train`.
pub fn train(a: TrainArgs) -> Result<()> {
    let (mut cfg, progress, state) = match &a.resume {
        Some(dir) => {
            let c = checkpoint::load(dir)?;
            let (cfg, progress, state) = (c.config, c.progress, c.state);
            println!(
                "resuming {} at epoch {}, step {} ({} steps done)",
                dir.display(),
                progress.epoch + 1,
                progress.step_in_epoch,
                progress.global_step
            );
            (cfg, progress, Some(state))
        }
        None => {
            let model = MlpConfig {
                layers: a.layers.clone(),
                layernorm: a.layernorm,
                precision: a.precision,
                fp32_layers: a.fp32_layers.clone(),
            };
            let cfg = TrainConfig {
                model,
                optimizer: optimizer(&a),
                schedule: LrSchedule::Constant,
                loss_scale: loss_scale(&a)?,
                epochs: 10,
                batch: a.batch,
                seed: a.seed,
                max_steps: None,
                normalize: !a.no_normalize,
                augment_shift: a.augment_shift,
                cuda_graph: !a.no_cuda_graph,
            };
            (cfg, Progress::default(), None)
        }
    };
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if a.max_steps.is_some() {
        cfg.max_steps = a.max_steps;
    }
    if a.no_cuda_graph {
        cfg.cuda_graph = false;
    }
    let split = dataset(&a.data)?;
    if a.resume.is_none() {
        if let ScheduleKind::Cosine = a.schedule {
            let steps = split.train.len().div_ceil(cfg.batch.max(1)) * cfg.epochs;
            cfg.schedule = LrSchedule::Cosine {
                total: steps as u64,
                min_lr: a.min_lr,
            };
        }
    }
    cfg.validate()?;
    let dev = device(&a.device)?;
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
    let out = Outputs {
        save: a.save.clone(),
        metrics: a.metrics.clone(),
        plot: a.plot.clone(),
        progress_bar: !a.no_progress && std::io::stderr().is_terminal(),
        verbose: true,
    };
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
    if let Some(p) = &a.save {
        println!("checkpoint: {}", p.display());
    }
    Ok(())
}

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
