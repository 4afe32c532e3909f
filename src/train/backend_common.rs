//! What both backends share around a step: the checks of samples, batches and parameters, the
//! conversion of a backend's state to and from a checkpoint's dicts, and accuracy counting.

use super::backend::BackendState;
use crate::amp::{LossScale, ScalerStateDict};
use crate::cpu::optim::OptimizerConfig;
use crate::cpu::scaler::ScalerState;
use crate::cpu::schedule::LrSchedule;
use crate::error::{Error, Result};
use crate::nn::{MlpConfig, Tensor};
use crate::optim::OptimizerStateDict;

/// A checkpoint's state from the parameters and the optimizer's and scaler's state dicts: the
/// moments one vector per tensor, empty where the optimizer keeps none (SGD's momentum buffer
/// in `exp_avg`).
pub(crate) fn export_state(
    params: Vec<Tensor>,
    opt: &OptimizerStateDict,
    scaler: ScalerState,
    fp8: Vec<crate::cpu::fp8::ScalingState>,
) -> Result<BackendState> {
    let n = params.len();
    let per_tensor = |m: &Option<Vec<Vec<f32>>>| m.clone().unwrap_or_else(|| vec![Vec::new(); n]);
    Ok(BackendState {
        params,
        optimizer_step: opt.step,
        momentum_started: opt.momentum_started,
        exp_avg: per_tensor(if opt.exp_avg.is_some() {
            &opt.exp_avg
        } else {
            &opt.momentum_buffer
        }),
        exp_avg_sq: per_tensor(&opt.exp_avg_sq),
        scaler,
        fp8,
    })
}

/// The optimizer's and scaler's state dicts of a checkpoint, for the run's optimizer config and
/// schedule and loss-scaling mode: the moments the config keeps (SGD's momentum buffer from
/// `exp_avg` when it has momentum), the scale and tracker as saved.
pub(crate) fn import_dicts(
    opt: &OptimizerConfig,
    schedule: LrSchedule,
    loss_scale: &LossScale,
    state: &BackendState,
) -> Result<(OptimizerStateDict, ScalerStateDict)> {
    let (exp_avg, exp_avg_sq, momentum_buffer) = match opt {
        OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => (
            Some(state.exp_avg.clone()),
            Some(state.exp_avg_sq.clone()),
            None,
        ),
        OptimizerConfig::Sgd(c) if c.momentum != 0.0 => (None, None, Some(state.exp_avg.clone())),
        OptimizerConfig::Sgd(_) => (None, None, None),
    };
    let opt = OptimizerStateDict {
        config: *opt,
        schedule,
        step: state.optimizer_step,
        momentum_started: state.momentum_started,
        exp_avg,
        exp_avg_sq,
        momentum_buffer,
    };
    let scaler = ScalerStateDict {
        loss_scale: *loss_scale,
        scale: state.scaler.scale,
        growth_tracker: state.scaler.growth_tracker,
    };
    Ok((opt, scaler))
}

/// Argmax per row (ties to the lowest class; NaN never wins) compared with the labels.
pub(crate) fn count_correct(logits: &[f32], labels: &[u32], classes: usize) -> usize {
    logits
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &y)| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] || row[best].is_nan() && !v.is_nan() {
                    best = j;
                }
            }
            best == y as usize
        })
        .count()
}

/// Images `[n, inputs]` and `n` labels below `classes`.
pub(crate) fn check_samples(
    op: &'static str,
    cfg: &MlpConfig,
    images: &[f32],
    labels: &[u32],
) -> Result<()> {
    let n = labels.len();
    if images.len() != n * cfg.inputs() {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!(
                "{} image values for {n} labels; the model's {} inputs need {}",
                images.len(),
                cfg.inputs(),
                n * cfg.inputs()
            ),
        });
    }
    if let Some(i) = labels.iter().position(|&y| y as usize >= cfg.classes()) {
        return Err(Error::InvalidArgument {
            op,
            detail: format!(
                "label {} of sample {i} is not below the model's {} classes",
                labels[i],
                cfg.classes()
            ),
        });
    }
    Ok(())
}

/// `first..first + batch` must be a non-empty range inside the loaded epoch.
pub(crate) fn check_batch(op: &'static str, first: usize, batch: usize, n: usize) -> Result<()> {
    if batch == 0 || first + batch > n {
        return Err(Error::InvalidArgument {
            op,
            detail: format!(
                "batch {first}..{} is empty or past the {n} loaded samples",
                first + batch
            ),
        });
    }
    Ok(())
}

/// A checkpoint's parameters must match the model's names and shapes.
pub(crate) fn check_params(
    op: &'static str,
    specs: &[crate::nn::ParamSpec],
    params: &[Tensor],
) -> Result<()> {
    let want: Vec<(&str, &[usize])> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    let got: Vec<(&str, &[usize])> = params
        .iter()
        .map(|p| (p.name.as_str(), p.shape.as_slice()))
        .collect();
    if want != got
        || params
            .iter()
            .any(|p| p.data.len() != p.shape.iter().product::<usize>())
    {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!("the state holds {got:?}; the model needs {want:?}"),
        });
    }
    Ok(())
}

/// Indices into the parameter list of one linear layer's tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerParams {
    pub w: usize,
    pub b: usize,
    /// LayerNorm γ and β after this layer, if any.
    pub ln: Option<(usize, usize)>,
}

/// The parameter indices of every linear layer, in [`MlpConfig::parameter_specs`] order.
pub(crate) fn layer_params(cfg: &MlpConfig) -> Vec<LayerParams> {
    let mut next = 0;
    (0..cfg.linear_count())
        .map(|l| {
            let (w, b) = (next, next + 1);
            next += 2;
            let ln = (cfg.layernorm && l + 1 < cfg.linear_count()).then(|| {
                next += 2;
                (next - 2, next - 1)
            });
            LayerParams { w, b, ln }
        })
        .collect()
}
