//! The flags of `ampkit train` and `ampkit eval`, and the loss scaling they ask for: shared by
//! the commands (`cli.rs`) and the resume checks (`cli_resume.rs`), which both read them.

use ampkit::amp::{Fp8Formats, Fp8Recipe, GradClip, LossScale, Precision};
use ampkit::cpu::fp8::AmaxAlgo;
use ampkit::cpu::scaler::ScalerConfig;
use ampkit::{Error, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerKind {
    /// Adam (default lr 1e-3).
    Adam,
    /// AdamW (default lr 1e-3, weight decay 1e-2).
    Adamw,
    /// SGD (default lr 0.05; momentum with --momentum).
    Sgd,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleKind {
    /// The base rate throughout.
    Constant,
    /// Cosine decay to --min-lr over the run's steps (--epochs, or --max-steps if fewer),
    /// advanced by real steps only.
    Cosine,
}

/// Flags of `ampkit train`. Numeric flags take negative values (`--lr -1`, `--lr -1e-3`) so
/// that validation can say what is wrong with them, instead of clap reading them as flags.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// MNIST IDX directory (train-/t10k- images and labels, raw or .gz); default: the bundled
    /// 8,000/2,000 split in data/.
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Layer widths, input to output.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "784,512,10",
        allow_negative_numbers = true
    )]
    pub(crate) layers: Vec<usize>,
    /// LayerNorm after each hidden layer (before its ReLU).
    #[arg(long)]
    pub(crate) layernorm: bool,
    /// mixed (f16 GEMMs, f32 master weights, loss scaling), bf16 (bf16 GEMMs, f32 master
    /// weights, no loss scaling), fp8 (bf16 with FP8 GEMMs in every layer but the last, delayed
    /// scaling) or fp32.
    #[arg(long, default_value = "mixed")]
    pub(crate) precision: Precision,
    /// Linear layers (0-based) kept in f32 under mixed or bf16 precision, e.g. `--fp32-layers 1`.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub(crate) fp32_layers: Vec<usize>,
    /// --precision fp8: steps of amax history per scale (Transformer Engine's
    /// amax_history_len).
    #[arg(long, default_value_t = 1024)]
    pub(crate) fp8_history: usize,
    /// --precision fp8: scale = fp8_max / amax / 2^margin.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) fp8_margin: i32,
    /// --precision fp8: reduce the amax history by its max, or use the latest step's amax.
    #[arg(long, value_enum, default_value = "max")]
    pub(crate) fp8_amax_algo: AmaxAlgoArg,
    /// --precision fp8: the last layer in FP8 too (by default it stays in bf16, as Transformer
    /// Engine recommends for a classifier).
    #[arg(long)]
    pub(crate) fp8_last_layer: bool,
    /// --precision fp8: hybrid (E4M3 inputs and weights, E5M2 gradients) or e4m3 throughout.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub(crate) fp8_format: Fp8FormatArg,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "adam")]
    pub(crate) optimizer: OptimizerKind,
    /// Base learning rate (default per optimizer).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) lr: Option<f64>,
    /// Weight decay (L2 for adam and sgd, decoupled for adamw; adamw defaults to 1e-2).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) weight_decay: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub(crate) momentum: f64,
    /// SGD Nesterov momentum.
    #[arg(long)]
    pub(crate) nesterov: bool,
    /// Learning-rate schedule; it advances only on real (not skipped) steps.
    #[arg(long, value_enum, default_value = "constant")]
    pub(crate) schedule: ScheduleKind,
    /// Cosine schedule floor.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub(crate) min_lr: f64,
    /// Epochs (default 10; on --resume, the checkpoint's), counted from the start of the run.
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) epochs: Option<usize>,
    /// Samples per step.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    pub(crate) batch: usize,
    /// Shift training images by up to this many pixels each epoch (0: off).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    pub(crate) augment_shift: usize,
    /// Feed raw pixels/255 instead of standardised inputs.
    #[arg(long)]
    pub(crate) no_normalize: bool,
    /// GPU: launch every kernel of a step separately instead of replaying a CUDA graph.
    #[arg(long)]
    pub(crate) no_cuda_graph: bool,
    /// Seed for the initial weights and the data order.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) seed: u64,
    /// Stop after this many steps in total, counted from the start of the run (resumed or
    /// not); the checkpoint records the exact position. Not carried over by --resume.
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) max_steps: Option<u64>,
    /// `dynamic` (PyTorch GradScaler), a static scale such as `1024`, or `off`. Default:
    /// dynamic under mixed precision, off with `--precision bf16` or `fp32`.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) loss_scale: Option<String>,
    /// Dynamic scaling: the first scale.
    #[arg(long, default_value_t = 65536.0, allow_hyphen_values = true)]
    pub(crate) init_scale: f32,
    /// Dynamic scaling: growth factor.
    #[arg(long, default_value_t = 2.0, allow_hyphen_values = true)]
    pub(crate) growth_factor: f64,
    /// Dynamic scaling: backoff factor.
    #[arg(long, default_value_t = 0.5, allow_hyphen_values = true)]
    pub(crate) backoff_factor: f64,
    /// Dynamic scaling: clean steps before a growth.
    #[arg(long, default_value_t = 2000, allow_negative_numbers = true)]
    pub(crate) growth_interval: i32,
    /// Dynamic scaling: floor after a backoff (not in PyTorch).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) min_scale: Option<f32>,
    /// Dynamic scaling: cap on a growth (not in PyTorch).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) max_scale: Option<f32>,
    /// `auto` (GPU 0 if there is one, else the CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub(crate) device: String,
    /// Write a checkpoint directory after every epoch (and at --max-steps).
    #[arg(long)]
    pub(crate) save: Option<PathBuf>,
    /// Continue from a checkpoint directory: its model, optimizer, schedule, loss scaling and
    /// data order are kept (giving another value is an error); --epochs and --max-steps set the
    /// new end, counted from the start of the run, and a cosine schedule decays over it.
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// JSON Lines metrics, one record per step.
    #[arg(long)]
    pub(crate) metrics: Option<PathBuf>,
    /// PNG of loss and loss scale over the steps, skipped steps marked.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// Warn (once) when this many consecutive steps are skipped (0: never).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub(crate) warn_skip_streak: u64,
    /// Clip the unscaled gradients of every real step to this global 2-norm (PyTorch's
    /// clip_grad_norm_, fused into the unscale and optimizer passes).
    #[arg(long, allow_hyphen_values = true, conflicts_with = "clip_grad_value")]
    pub(crate) clip_grad_norm: Option<f32>,
    /// Clamp the unscaled gradients of every real step to [-VALUE, VALUE] (clip_grad_value_).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) clip_grad_value: Option<f32>,
    /// On every skipped step, replay the step op by op on the CPU reference and name the first
    /// op whose output was inf/NaN (reads the step records back after every step).
    #[arg(long)]
    pub(crate) locate_overflow: bool,
}

/// Flags of `ampkit eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint directory written by `ampkit train --save`.
    #[arg(long)]
    pub(crate) checkpoint: PathBuf,
    /// MNIST IDX directory; default: the bundled split.
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// `auto`, `cpu`, or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub(crate) device: String,
}

/// The gradient clipping the flags ask for, checked.
pub(crate) fn grad_clip(a: &TrainArgs) -> Result<GradClip> {
    let clip = match (a.clip_grad_norm, a.clip_grad_value) {
        (Some(max_norm), _) => GradClip::Norm { max_norm },
        (None, Some(value)) => GradClip::Value { value },
        (None, None) => GradClip::Off,
    };
    clip.validate()?;
    Ok(clip)
}

/// The loss scaling the flags ask for (`--loss-scale`, and the dynamic scaler's flags), checked.
pub(crate) fn loss_scale(a: &TrainArgs) -> Result<LossScale> {
    let default = if a.precision.scales_loss() {
        "dynamic"
    } else {
        "off"
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
        v => LossScale::Static(v.parse().map_err(|_| Error::InvalidArgument {
            op: "ampkit train",
            detail: format!("--loss-scale {v:?}: use dynamic, off, or a number such as 1024"),
        })?),
    };
    s.validate()?;
    Ok(s)
}

/// `--fp8-amax-algo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AmaxAlgoArg {
    /// The largest amax in the window.
    Max,
    /// The latest step's amax.
    MostRecent,
}

/// `--fp8-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Fp8FormatArg {
    /// E4M3 forward tensors, E5M2 gradients.
    Hybrid,
    /// E4M3 for every tensor.
    E4m3,
}

/// The FP8 recipe the flags ask for (checked with the model).
pub(crate) fn fp8_recipe(a: &TrainArgs) -> Fp8Recipe {
    Fp8Recipe {
        history_len: a.fp8_history,
        margin: a.fp8_margin,
        amax_algo: match a.fp8_amax_algo {
            AmaxAlgoArg::Max => AmaxAlgo::Max,
            AmaxAlgoArg::MostRecent => AmaxAlgo::MostRecent,
        },
        formats: match a.fp8_format {
            Fp8FormatArg::Hybrid => Fp8Formats::Hybrid,
            Fp8FormatArg::E4m3 => Fp8Formats::E4m3,
        },
        last_layer: a.fp8_last_layer,
    }
}
