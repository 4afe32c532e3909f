//! `ampkit train --resume`: the flags a resumed run must share with its checkpoint. The rules
//! themselves (what is fixed, what the new command line decides) are documented in
//! `ampkit::train::resume`; this module finds the flags that contradict a checkpoint, telling a
//! typed flag from a default through clap's value source.

use crate::train_args::{self, OptimizerKind, ScheduleKind, TrainArgs};
use ampkit::amp::{GradClip, LossScale, Precision};
use ampkit::cpu::optim::OptimizerConfig;
use ampkit::cpu::schedule::LrSchedule;
use ampkit::train::TrainConfig;
use ampkit::{Error, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use std::path::Path;

/// Which flags of a subcommand were typed on the command line, as opposed to defaults.
pub struct Given<'a>(Option<&'a ArgMatches>);

impl<'a> Given<'a> {
    /// The subcommand's matches (`None`: nothing counts as given).
    pub fn new(matches: Option<&'a ArgMatches>) -> Self {
        Given(matches)
    }

    /// Whether the flag with clap id `id` (the field name) was on the command line.
    pub fn has(&self, id: &str) -> bool {
        self.0.is_some_and(|m| {
            // An unknown id is "not given" rather than clap's debug-build panic.
            m.try_contains_id(id).is_ok() && m.value_source(id) == Some(ValueSource::CommandLine)
        })
    }
}

/// Equal up to what a trip through the checkpoint's JSON may change in the last digits.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn close32(a: f32, b: f32) -> bool {
    a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

fn list(v: &[usize]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

fn precision_name(p: Precision) -> &'static str {
    p.name()
}

fn optimizer_name(k: OptimizerKind) -> &'static str {
    match k {
        OptimizerKind::Adam => "adam",
        OptimizerKind::Adamw => "adamw",
        OptimizerKind::Sgd => "sgd",
    }
}

/// How a loss scaling reads in a message: `dynamic`, `static 1024` or `off`.
pub(crate) fn loss_scale_name(s: &LossScale) -> String {
    match s {
        LossScale::Dynamic(_) => "dynamic".into(),
        LossScale::Static(v) => format!("static {v}"),
        LossScale::Off => "off".into(),
    }
}

/// The flags in `a` that were given explicitly (`given`) with a value other than the one
/// `saved` (the checkpoint in `dir`) holds. Repeating a saved value is accepted; the horizon
/// and output flags are not checked (the new command line decides them).
///
/// Errors: [`Error::InvalidArgument`] listing every conflicting flag with the given and the
/// saved value.
pub fn check_flags(
    a: &TrainArgs,
    given: &Given<'_>,
    saved: &TrainConfig,
    dir: &Path,
) -> Result<()> {
    let mut found: Vec<String> = Vec::new();
    let mut check = |id: &str, same: bool, value: String, saved_value: String| {
        if given.has(id) && !same {
            let flag = format!("--{}", id.replace('_', "-"));
            let flag = if value.is_empty() {
                flag
            } else {
                format!("{flag} {value}")
            };
            found.push(format!("{flag} (the checkpoint has {saved_value})"));
        }
    };
    let m = &saved.model;
    check(
        "layers",
        a.layers == m.layers,
        list(&a.layers),
        list(&m.layers),
    );
    check(
        "layernorm",
        m.layernorm,
        String::new(),
        "no LayerNorm".into(),
    );
    check(
        "precision",
        a.precision == m.precision,
        precision_name(a.precision).into(),
        precision_name(m.precision).into(),
    );
    let sorted = |v: &[usize]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.dedup();
        v
    };
    check(
        "fp32_layers",
        sorted(&a.fp32_layers) == sorted(&m.fp32_layers),
        list(&a.fp32_layers),
        list(&m.fp32_layers),
    );
    let fp8 = crate::train_args::fp8_recipe(a);
    check(
        "fp8_history",
        fp8.history_len == m.fp8.history_len,
        fp8.history_len.to_string(),
        m.fp8.history_len.to_string(),
    );
    check(
        "fp8_margin",
        fp8.margin == m.fp8.margin,
        fp8.margin.to_string(),
        m.fp8.margin.to_string(),
    );
    check(
        "fp8_amax_algo",
        fp8.amax_algo == m.fp8.amax_algo,
        format!("{:?}", fp8.amax_algo).to_lowercase(),
        format!("{:?}", m.fp8.amax_algo).to_lowercase(),
    );
    check(
        "fp8_last_layer",
        fp8.last_layer == m.fp8.last_layer,
        String::new(),
        if m.fp8.last_layer {
            "the last layer in FP8"
        } else {
            "the last layer in bf16"
        }
        .into(),
    );
    check(
        "fp8_format",
        fp8.formats == m.fp8.formats,
        format!("{:?}", fp8.formats).to_lowercase(),
        format!("{:?}", m.fp8.formats).to_lowercase(),
    );

    let (kind, lr, wd, sgd) = match saved.optimizer {
        OptimizerConfig::Adam(c) => (OptimizerKind::Adam, c.lr, c.weight_decay, None),
        OptimizerConfig::AdamW(c) => (OptimizerKind::Adamw, c.lr, c.weight_decay, None),
        OptimizerConfig::Sgd(c) => (OptimizerKind::Sgd, c.lr, c.weight_decay, Some(c)),
    };
    let name = optimizer_name(kind);
    check(
        "optimizer",
        a.optimizer == kind,
        optimizer_name(a.optimizer).into(),
        name.into(),
    );
    let given_lr = a.lr.unwrap_or(lr);
    check(
        "lr",
        close(given_lr, lr),
        given_lr.to_string(),
        lr.to_string(),
    );
    let given_wd = a.weight_decay.unwrap_or(wd);
    check(
        "weight_decay",
        close(given_wd, wd),
        given_wd.to_string(),
        wd.to_string(),
    );
    check(
        "momentum",
        sgd.is_some_and(|c| close(a.momentum, c.momentum)),
        a.momentum.to_string(),
        sgd.map_or(format!("{name}, which has none"), |c| {
            c.momentum.to_string()
        }),
    );
    check(
        "nesterov",
        sgd.is_some_and(|c| c.nesterov),
        String::new(),
        "no Nesterov momentum".into(),
    );

    let (schedule, min_lr) = match saved.schedule {
        LrSchedule::Constant => (ScheduleKind::Constant, None),
        LrSchedule::Cosine { min_lr, .. } => (ScheduleKind::Cosine, Some(min_lr)),
    };
    let schedule_name = |k: ScheduleKind| match k {
        ScheduleKind::Constant => "constant",
        ScheduleKind::Cosine => "cosine",
    };
    check(
        "schedule",
        a.schedule == schedule,
        schedule_name(a.schedule).into(),
        schedule_name(schedule).into(),
    );
    check(
        "min_lr",
        min_lr.is_some_and(|v| close(a.min_lr, v)),
        a.min_lr.to_string(),
        min_lr.map_or("a constant schedule".into(), |v| v.to_string()),
    );

    check(
        "batch",
        a.batch == saved.batch,
        a.batch.to_string(),
        saved.batch.to_string(),
    );
    check(
        "seed",
        a.seed == saved.seed,
        a.seed.to_string(),
        saved.seed.to_string(),
    );
    check(
        "augment_shift",
        a.augment_shift == saved.augment_shift,
        a.augment_shift.to_string(),
        saved.augment_shift.to_string(),
    );
    check(
        "no_normalize",
        !saved.normalize,
        String::new(),
        "standardised inputs".into(),
    );

    let clip_name = |c: GradClip| match c {
        GradClip::Off => "no clipping".to_string(),
        GradClip::Norm { max_norm } => format!("--clip-grad-norm {max_norm}"),
        GradClip::Value { value } => format!("--clip-grad-value {value}"),
    };
    let clip = train_args::grad_clip(a)?;
    for id in ["clip_grad_norm", "clip_grad_value"] {
        let value = match clip {
            GradClip::Norm { max_norm } => max_norm.to_string(),
            GradClip::Value { value } => value.to_string(),
            GradClip::Off => String::new(),
        };
        check(id, clip == saved.clip, value, clip_name(saved.clip));
    }

    let saved_scale = loss_scale_name(&saved.loss_scale);
    if given.has("loss_scale") {
        let want = train_args::loss_scale(a)?;
        let same = match (want, saved.loss_scale) {
            (LossScale::Dynamic(_), LossScale::Dynamic(_)) | (LossScale::Off, LossScale::Off) => {
                true
            }
            (LossScale::Static(x), LossScale::Static(y)) => close32(x, y),
            _ => false,
        };
        check(
            "loss_scale",
            same,
            a.loss_scale.clone().unwrap_or_default(),
            saved_scale.clone(),
        );
    }
    let d = saved.loss_scale.dynamic();
    let not_dynamic = || format!("loss scaling {saved_scale}, not dynamic");
    check(
        "init_scale",
        d.is_some_and(|c| close32(a.init_scale, c.init_scale)),
        a.init_scale.to_string(),
        d.map_or_else(not_dynamic, |c| c.init_scale.to_string()),
    );
    check(
        "growth_factor",
        d.is_some_and(|c| close(a.growth_factor, c.growth_factor)),
        a.growth_factor.to_string(),
        d.map_or_else(not_dynamic, |c| c.growth_factor.to_string()),
    );
    check(
        "backoff_factor",
        d.is_some_and(|c| close(a.backoff_factor, c.backoff_factor)),
        a.backoff_factor.to_string(),
        d.map_or_else(not_dynamic, |c| c.backoff_factor.to_string()),
    );
    check(
        "growth_interval",
        d.is_some_and(|c| a.growth_interval == c.growth_interval),
        a.growth_interval.to_string(),
        d.map_or_else(not_dynamic, |c| c.growth_interval.to_string()),
    );
    let clamp = |given: Option<f32>, saved: Option<f32>| match (given, saved) {
        (Some(x), Some(y)) => close32(x, y),
        _ => false,
    };
    let clamp_name = |c: Option<f32>| c.map_or("none".to_string(), |v| v.to_string());
    let opt = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
    check(
        "min_scale",
        clamp(a.min_scale, d.and_then(|c| c.min_scale)),
        opt(a.min_scale),
        d.map_or_else(not_dynamic, |c| clamp_name(c.min_scale)),
    );
    check(
        "max_scale",
        clamp(a.max_scale, d.and_then(|c| c.max_scale)),
        opt(a.max_scale),
        d.map_or_else(not_dynamic, |c| clamp_name(c.max_scale)),
    );

    if found.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        op: "ampkit train --resume",
        detail: format!(
            "{} was saved with other settings: {}. A resumed run keeps its checkpoint's model, \
             optimizer, schedule, loss scaling, batch size and data order; drop these flags (or \
             repeat the saved values), or start a new run without --resume",
            dir.display(),
            found.join("; ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command, FromArgMatches};

    fn parse(args: &[&str]) -> (TrainArgs, ArgMatches) {
        let argv = std::iter::once("train").chain(args.iter().copied());
        let m = TrainArgs::augment_args(Command::new("train"))
            .try_get_matches_from(argv)
            .unwrap();
        (TrainArgs::from_arg_matches(&m).unwrap(), m)
    }

    fn check(args: &[&str], saved: &TrainConfig) -> Result<()> {
        let (a, m) = parse(args);
        check_flags(&a, &Given::new(Some(&m)), saved, Path::new("D"))
    }

    #[test]
    fn typed_flags_are_told_from_defaults() {
        let (_, m) = parse(&["--batch", "64", "--lr", "-1", "--layernorm"]);
        let g = Given::new(Some(&m));
        assert!(g.has("batch") && g.has("lr") && g.has("layernorm"));
        assert!(!g.has("seed") && !g.has("no_such_flag"));
        assert!(!Given::new(None).has("batch"));
    }

    #[test]
    fn every_fixed_flag_is_checked_against_the_checkpoint() {
        let saved = TrainConfig::mnist_default();
        // Each flag alone, with a value other than the saved one.
        let cases: [(&[&str], &str); 22] = [
            (
                &["--layers", "784,256,10"],
                "--layers 784,256,10 (the checkpoint has 784,512,10)",
            ),
            (
                &["--layernorm"],
                "--layernorm (the checkpoint has no LayerNorm)",
            ),
            (
                &["--precision", "fp32"],
                "--precision fp32 (the checkpoint has mixed)",
            ),
            (
                &["--fp32-layers", "1"],
                "--fp32-layers 1 (the checkpoint has none)",
            ),
            (
                &["--optimizer", "sgd"],
                "--optimizer sgd (the checkpoint has adam)",
            ),
            (&["--lr", "0.01"], "--lr 0.01 (the checkpoint has 0.001)"),
            (
                &["--weight-decay", "0.1"],
                "--weight-decay 0.1 (the checkpoint has 0)",
            ),
            (
                &["--momentum", "0.9"],
                "--momentum 0.9 (the checkpoint has adam, which has none)",
            ),
            (
                &["--nesterov"],
                "--nesterov (the checkpoint has no Nesterov momentum)",
            ),
            (
                &["--schedule", "cosine"],
                "--schedule cosine (the checkpoint has constant)",
            ),
            (
                &["--min-lr", "0.0001"],
                "--min-lr 0.0001 (the checkpoint has a constant schedule)",
            ),
            (&["--batch", "128"], "--batch 128 (the checkpoint has 64)"),
            (&["--seed", "3"], "--seed 3 (the checkpoint has 0)"),
            (
                &["--augment-shift", "0"],
                "--augment-shift 0 (the checkpoint has 2)",
            ),
            (
                &["--no-normalize"],
                "--no-normalize (the checkpoint has standardised inputs)",
            ),
            (
                &["--loss-scale", "off"],
                "--loss-scale off (the checkpoint has dynamic)",
            ),
            (
                &["--init-scale", "1024"],
                "--init-scale 1024 (the checkpoint has 65536)",
            ),
            (
                &["--growth-factor", "4"],
                "--growth-factor 4 (the checkpoint has 2)",
            ),
            (
                &["--backoff-factor", "0.25"],
                "--backoff-factor 0.25 (the checkpoint has 0.5)",
            ),
            (
                &["--growth-interval", "10"],
                "--growth-interval 10 (the checkpoint has 2000)",
            ),
            (
                &["--min-scale", "1"],
                "--min-scale 1 (the checkpoint has none)",
            ),
            (
                &["--max-scale", "1e9"],
                "--max-scale 1000000000 (the checkpoint has none)",
            ),
        ];
        for (args, want) in cases {
            let e = check(args, &saved).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(e.contains("was saved with other settings"), "{e}");
        }
        // All of them at once, with the saved values, and the flags a resumed run takes.
        check(
            &[
                "--layers",
                "784,512,10",
                "--precision",
                "mixed",
                "--optimizer",
                "adam",
                "--lr",
                "1e-3",
                "--weight-decay",
                "0",
                "--schedule",
                "constant",
                "--batch",
                "64",
                "--seed",
                "0",
                "--augment-shift",
                "2",
                "--loss-scale",
                "dynamic",
                "--init-scale",
                "65536",
                "--growth-factor",
                "2",
                "--backoff-factor",
                "0.5",
                "--growth-interval",
                "2000",
                "--epochs",
                "7",
                "--max-steps",
                "9",
                "--device",
                "cpu",
                "--no-cuda-graph",
                "--no-progress",
                "--save",
                "S",
                "--metrics",
                "m",
                "--plot",
                "p.png",
            ],
            &saved,
        )
        .unwrap();
    }

    #[test]
    fn several_conflicts_are_reported_together() {
        let saved = TrainConfig::mnist_default();
        let e = check(&["--batch", "32", "--seed", "0", "--lr", "0.5"], &saved)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--lr 0.5 (the checkpoint has 0.001); --batch 32"),
            "{e}"
        );
        assert!(!e.contains("--seed"), "{e}");
    }
}
