//! Optimizers on f32 master weights on the CPU (Adam, AdamW, SGD with momentum); the reference for
//! the fused, skip-aware GPU optimizer kernel. Formulas are `torch.optim`'s single-tensor ones.
//!
//! # One step
//!
//! [`step`] takes the config, the [`OptimizerState`] (moment buffers and ONE step counter), a list
//! of [`ParamTensor`]s (f32 master weights, f32 *unscaled* gradient, f16 working copy) and the
//! scaler's `found_inf`:
//!
//! - Everything is validated first (config ranges, state kind, tensor count, every length);
//!   an error modifies nothing.
//! - `found_inf = true`: nothing is touched — master weights, moments, the step counter and the
//!   f16 copies stay bit-identical — and [`StepOutcome::Skipped`] is returned. Because the
//!   counter does not advance, the next real step uses the bias corrections it would have used
//!   had the skipped step never been attempted (as `_fused_adam` undoes its step increment).
//! - Otherwise the counter advances to `t`, each element is updated as below, and the f16 copy
//!   becomes `f16::from_f32(new master)` (round to nearest even, overflow to ±inf).
//!
//! # Precision: what is f64 and what is f32
//!
//! Hyperparameters are f64, like the Python floats PyTorch receives. Once per step the scalar
//! coefficients are computed in f64 and rounded once to f32 ([`AdamCoefficients::new`],
//! [`SgdCoefficients::new`]); the GPU kernel receives these same f32 values as arguments, and
//! the per-element math is f32 only. The f64 scalars are:
//! - the bias corrections `bc1 = 1 − β1^t`, `bc2 = 1 − β2^t` (`powf`), then
//!   `step_size = lr / bc1` and `bc2_sqrt = sqrt(bc2)`. In f32, `1 − β^t` multiplies the
//!   rounding error of `β` by `1/(1 − β^t)`: `1 − f32(0.999)` is 1.3e-5 off, so every early
//!   update would be 6.4e-6 off. f64 keeps `β`'s digits, and the final rounding to f32 hides any
//!   last-bit difference between libm's and CUDA's `pow`. PyTorch's single-tensor Adam also
//!   forms these in Python (f64) floats.
//! - `1 − β1`, `1 − β2`, `1 − dampening` and AdamW's `1 − lr·wd`, for the same reason
//!   (PyTorch forms them in Python floats too).
//! - `lr`, `β1`, `β2`, `eps`, `weight_decay` and `momentum` are simply rounded to f32.
//!
//! # Per element (f32, every operation rounded to nearest even, in the order written)
//!
//! Adam / AdamW, with `g` the gradient and `p` the master weight:
//! ```text
//! Adam,  wd ≠ 0:  g = g + wd·p                     (L2: decay added to the gradient)
//! AdamW, wd ≠ 0:  p = p · decay,  decay = f32(1 − lr·wd)     (decoupled, before the update)
//! m = β1·m + (1−β1)·g
//! v = β2·v + ((1−β2)·g)·g
//! p = p − (step_size·m) / (sqrt(v)/bc2_sqrt + eps)
//! ```
//! SGD (`first` = no real step with momentum yet, when PyTorch's buffer is still `None`):
//! ```text
//! wd ≠ 0:        d = g + wd·p      else d = g
//! momentum ≠ 0:  buf = first ? d : momentum·buf + (1−dampening)·d
//!                d = nesterov ? d + momentum·buf : buf
//! p = p − lr·d
//! ```
//! No fused multiply-add: a GPU twin must use `__fmul_rn`/`__fadd_rn` (or `-fmad=false`) and
//! IEEE `sqrtf` and division (nvcc's defaults without `--use_fast_math`) to match bit for bit.
//! PyTorch's `p.add_(d, alpha=-lr)` and `addcdiv_(m, denom, value=-step_size)` equal the
//! subtractions above exactly (negation is exact). Elements are independent, so the result does
//! not depend on how the work is split over threads.
//!
//! Moments use the documented form `β1·m + (1−β1)·g`, as `_fused_adam`'s kernel does; the
//! single-tensor path's `lerp_` can differ from it in the last bit. A non-finite gradient with
//! `found_inf = false` is not checked: the flag is trusted, and NaN propagates into the state.
//! Not implemented: `amsgrad`, `maximize`.

use crate::error::{Error, Result};
use half::f16;
use rayon::prelude::*;

/// Below this many elements the work stays on the calling thread (as in [`crate::cpu::cast`]).
const PARALLEL_MIN: usize = 1 << 15;

/// Elements per rayon task inside one large tensor.
const CHUNK: usize = 1 << 14;

/// Adam/AdamW hyperparameters (f64, as PyTorch receives them).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate. Accepted: finite (also as f32) and ≥ 0.
    pub lr: f64,
    /// First-moment decay β1. Accepted: 0 ≤ β1 < 1.
    pub beta1: f64,
    /// Second-moment decay β2. Accepted: 0 ≤ β2 < 1.
    pub beta2: f64,
    /// Denominator term. Accepted: finite and > 0, also after rounding to f32.
    pub eps: f64,
    /// L2 (Adam) or decoupled (AdamW) weight decay. Accepted: finite and ≥ 0.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// `torch.optim.Adam`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// SGD hyperparameters (f64, as PyTorch receives them).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Learning rate. Accepted: finite (also as f32) and ≥ 0.
    pub lr: f64,
    /// Momentum factor; 0 disables the buffer. Accepted: finite and ≥ 0.
    pub momentum: f64,
    /// Dampening of the gradient's contribution to the buffer. Accepted: 0 ≤ dampening ≤ 1.
    pub dampening: f64,
    /// L2 weight decay added to the gradient. Accepted: finite and ≥ 0.
    pub weight_decay: f64,
    /// Nesterov momentum. Accepted only with momentum > 0 and dampening = 0 (as PyTorch).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// `torch.optim.SGD`'s defaults: lr 1e-3, no momentum, dampening 0, no weight decay.
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// Which optimizer, with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// `torch.optim.Adam`: weight decay is L2, added to the gradient.
    Adam(AdamConfig),
    /// `torch.optim.AdamW`: weight decay is decoupled, `p *= 1 − lr·wd` before the update.
    AdamW(AdamConfig),
    /// `torch.optim.SGD` with optional momentum, dampening, Nesterov and weight decay.
    Sgd(SgdConfig),
}

impl OptimizerConfig {
    /// Adam with PyTorch's defaults and learning rate `lr`.
    pub fn adam(lr: f64) -> Self {
        OptimizerConfig::Adam(AdamConfig {
            lr,
            ..AdamConfig::default()
        })
    }

    /// AdamW with PyTorch's defaults (weight decay 1e-2) and learning rate `lr`.
    pub fn adamw(lr: f64) -> Self {
        OptimizerConfig::AdamW(AdamConfig {
            lr,
            weight_decay: 1e-2,
            ..AdamConfig::default()
        })
    }

    /// Plain SGD (PyTorch's defaults: no momentum, no weight decay) with learning rate `lr`.
    pub fn sgd(lr: f64) -> Self {
        OptimizerConfig::Sgd(SgdConfig {
            lr,
            ..SgdConfig::default()
        })
    }

    /// SGD with momentum (no dampening, not Nesterov) and learning rate `lr`.
    pub fn sgd_momentum(lr: f64, momentum: f64) -> Self {
        OptimizerConfig::Sgd(SgdConfig {
            lr,
            momentum,
            ..SgdConfig::default()
        })
    }

    /// Checks every hyperparameter against the accepted ranges documented on its field;
    /// returns [`Error::InvalidArgument`] naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, name: &str, value: f64, accepted: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidArgument {
                    op: "cpu::optim::OptimizerConfig::validate",
                    detail: format!("{name} = {value}; accepted: {accepted}"),
                })
            }
        };
        // `x as f32` must stay finite too: the per-element math sees the f32 value.
        let finite_nonneg = |x: f64| x >= 0.0 && (x as f32).is_finite();
        let nonneg = "a finite value ≥ 0 (also as f32)";
        match self {
            OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => {
                check(finite_nonneg(c.lr), "lr", c.lr, nonneg)?;
                let beta = (0.0..1.0).contains(&c.beta1);
                check(beta, "beta1", c.beta1, "0 ≤ beta1 < 1 (default 0.9)")?;
                let beta = (0.0..1.0).contains(&c.beta2);
                check(beta, "beta2", c.beta2, "0 ≤ beta2 < 1 (default 0.999)")?;
                let eps = c.eps as f32;
                let accepted = "a finite value > 0 that stays > 0 in f32 (default 1e-8)";
                check(eps > 0.0 && eps.is_finite(), "eps", c.eps, accepted)?;
                check(
                    finite_nonneg(c.weight_decay),
                    "weight_decay",
                    c.weight_decay,
                    nonneg,
                )
            }
            OptimizerConfig::Sgd(c) => {
                check(finite_nonneg(c.lr), "lr", c.lr, nonneg)?;
                check(finite_nonneg(c.momentum), "momentum", c.momentum, nonneg)?;
                let damp = (0.0..=1.0).contains(&c.dampening);
                check(damp, "dampening", c.dampening, "0 ≤ dampening ≤ 1")?;
                check(
                    finite_nonneg(c.weight_decay),
                    "weight_decay",
                    c.weight_decay,
                    nonneg,
                )?;
                let ok = !c.nesterov || (c.momentum > 0.0 && c.dampening == 0.0);
                let accepted = "nesterov = true requires momentum > 0 and dampening = 0";
                check(ok, "nesterov with momentum", c.momentum, accepted)?;
                check(ok, "nesterov with dampening", c.dampening, accepted)
            }
        }
    }

    fn kind(&self) -> Kind {
        match self {
            OptimizerConfig::Adam(_) => Kind::Adam,
            OptimizerConfig::AdamW(_) => Kind::AdamW,
            OptimizerConfig::Sgd(_) => Kind::Sgd,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Adam,
    AdamW,
    Sgd,
}

/// The f32 scalars one Adam/AdamW step passes to its per-element math (the GPU kernel's
/// arguments). See the module doc for how each is formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamCoefficients {
    /// `f32(β1)`.
    pub beta1: f32,
    /// `f32(1 − β1)`, formed in f64.
    pub one_minus_beta1: f32,
    /// `f32(β2)`.
    pub beta2: f32,
    /// `f32(1 − β2)`, formed in f64.
    pub one_minus_beta2: f32,
    /// `f32(eps)`.
    pub eps: f32,
    /// `f32(lr / (1 − β1^t))`, formed in f64.
    pub step_size: f32,
    /// `f32(sqrt(1 − β2^t))`, formed in f64.
    pub bias_correction2_sqrt: f32,
    /// Adam's L2 coefficient `f32(wd)` added as `g + wd·p`; 0 for AdamW.
    pub l2: f32,
    /// AdamW's decoupled factor `f32(1 − lr·wd)`, applied when `wd ≠ 0`; exactly 1 otherwise
    /// and for Adam.
    pub decay: f32,
}

impl AdamCoefficients {
    /// The coefficients for step `t` (the count *after* the increment, so ≥ 1) of an Adam
    /// (`decoupled = false`) or AdamW (`decoupled = true`) optimizer.
    pub fn new(cfg: &AdamConfig, decoupled: bool, t: u64) -> Self {
        let t = t as f64;
        let bc1 = 1.0 - cfg.beta1.powf(t);
        let bc2 = 1.0 - cfg.beta2.powf(t);
        let wd = cfg.weight_decay;
        AdamCoefficients {
            beta1: cfg.beta1 as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            eps: cfg.eps as f32,
            step_size: (cfg.lr / bc1) as f32,
            bias_correction2_sqrt: bc2.sqrt() as f32,
            l2: if decoupled { 0.0 } else { wd as f32 },
            decay: if decoupled && wd != 0.0 {
                (1.0 - cfg.lr * wd) as f32
            } else {
                1.0
            },
        }
    }
}

/// The f32 scalars one SGD step passes to its per-element math (the GPU kernel's arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdCoefficients {
    /// `f32(lr)`.
    pub lr: f32,
    /// `f32(momentum)`; 0 means no buffer is read or written.
    pub momentum: f32,
    /// `f32(1 − dampening)`, formed in f64.
    pub one_minus_dampening: f32,
    /// `f32(weight_decay)`.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// The buffer is still empty (no real step with momentum yet): it is set to the gradient
    /// instead of being decayed.
    pub first_step: bool,
}

impl SgdCoefficients {
    /// The coefficients for a step; `first_step` is true until a real step with momentum has
    /// filled the buffers.
    pub fn new(cfg: &SgdConfig, first_step: bool) -> Self {
        SgdCoefficients {
            lr: cfg.lr as f32,
            momentum: cfg.momentum as f32,
            one_minus_dampening: (1.0 - cfg.dampening) as f32,
            weight_decay: cfg.weight_decay as f32,
            nesterov: cfg.nesterov,
            first_step,
        }
    }
}

/// Per-tensor optimizer buffers and the one step counter shared by all tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    kind: Kind,
    step: u64,
    lens: Vec<usize>,
    /// Adam's first moment, or SGD's momentum buffer; empty vectors when unused.
    exp_avg: Vec<Vec<f32>>,
    /// Adam's second moment; empty vectors when unused.
    exp_avg_sq: Vec<Vec<f32>>,
    /// SGD only: whether `exp_avg` holds momentum buffers.
    momentum_buffers: bool,
    /// SGD only: whether a real step with momentum has filled the buffers (PyTorch's buffer
    /// stops being `None`).
    momentum_started: bool,
}

impl OptimizerState {
    /// Zeroed buffers for tensors of the given lengths, for the optimizer `cfg` selects
    /// (validated here). Adam/AdamW get two moments per tensor, SGD with momentum one buffer,
    /// plain SGD none. The step counter starts at 0.
    pub fn new(cfg: &OptimizerConfig, lens: &[usize]) -> Result<OptimizerState> {
        cfg.validate()?;
        let zeros = || lens.iter().map(|&n| vec![0.0f32; n]).collect::<Vec<_>>();
        let empty = || vec![Vec::new(); lens.len()];
        let momentum_buffers = matches!(cfg, OptimizerConfig::Sgd(c) if c.momentum != 0.0);
        let (exp_avg, exp_avg_sq) = match cfg {
            OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => (zeros(), zeros()),
            OptimizerConfig::Sgd(_) if momentum_buffers => (zeros(), empty()),
            OptimizerConfig::Sgd(_) => (empty(), empty()),
        };
        Ok(OptimizerState {
            kind: cfg.kind(),
            step: 0,
            lens: lens.to_vec(),
            exp_avg,
            exp_avg_sq,
            momentum_buffers,
            momentum_started: false,
        })
    }

    /// Real (not skipped) steps taken so far; Adam's `t` for the next step is this plus one.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The tensor lengths the state was created for.
    pub fn tensor_lens(&self) -> &[usize] {
        &self.lens
    }

    /// Adam/AdamW's first moment `m` of tensor `t`; `None` for SGD or an index out of range.
    pub fn exp_avg(&self, t: usize) -> Option<&[f32]> {
        matches!(self.kind, Kind::Adam | Kind::AdamW)
            .then(|| self.exp_avg.get(t).map(Vec::as_slice))
            .flatten()
    }

    /// Adam/AdamW's second moment `v` of tensor `t`; `None` for SGD or an index out of range.
    pub fn exp_avg_sq(&self, t: usize) -> Option<&[f32]> {
        matches!(self.kind, Kind::Adam | Kind::AdamW)
            .then(|| self.exp_avg_sq.get(t).map(Vec::as_slice))
            .flatten()
    }

    /// SGD's momentum buffer of tensor `t` (zeros until the first real step with momentum);
    /// `None` for Adam, SGD created without momentum, or an index out of range.
    pub fn momentum_buffer(&self, t: usize) -> Option<&[f32]> {
        self.momentum_buffers
            .then(|| self.exp_avg.get(t).map(Vec::as_slice))
            .flatten()
    }

    /// SGD only: whether the state holds momentum buffers (it was created with momentum ≠ 0).
    pub fn has_momentum_buffers(&self) -> bool {
        self.momentum_buffers
    }

    /// SGD only: whether a real step with momentum has filled the buffers, so the next step
    /// decays them instead of overwriting them with the gradient.
    pub fn momentum_started(&self) -> bool {
        self.momentum_started
    }

    /// Rebuilds a state from its parts (a checkpoint, or a GPU optimizer's download), for the
    /// optimizer `cfg` selects and tensors of lengths `lens`. `exp_avg` holds one vector per
    /// tensor for Adam/AdamW (`m`) and for SGD with momentum buffers, else `None`; `exp_avg_sq`
    /// one per tensor for Adam/AdamW (`v`), else `None`. `momentum_started` may be true only with
    /// momentum buffers. Anything else is [`Error::InvalidArgument`] or [`Error::ShapeMismatch`].
    pub fn from_parts(
        cfg: &OptimizerConfig,
        lens: &[usize],
        step: u64,
        momentum_started: bool,
        exp_avg: Option<Vec<Vec<f32>>>,
        exp_avg_sq: Option<Vec<Vec<f32>>>,
    ) -> Result<OptimizerState> {
        const OP: &str = "cpu::optim::OptimizerState::from_parts";
        cfg.validate()?;
        let adam = matches!(cfg.kind(), Kind::Adam | Kind::AdamW);
        let invalid = |detail: String| Err(Error::InvalidArgument { op: OP, detail });
        if adam != exp_avg_sq.is_some() || (adam && exp_avg.is_none()) {
            return invalid(format!(
                "a {:?} state needs {}; pass Some for the buffers the optimizer keeps and None \
                 for the others",
                cfg.kind(),
                if adam {
                    "exp_avg and exp_avg_sq"
                } else {
                    "no exp_avg_sq"
                }
            ));
        }
        let momentum_buffers = !adam && exp_avg.is_some();
        if momentum_started && !momentum_buffers {
            return invalid("momentum_started is true but there are no momentum buffers".into());
        }
        let checked = |name: &str, bufs: Option<Vec<Vec<f32>>>| -> Result<Vec<Vec<f32>>> {
            let Some(bufs) = bufs else {
                return Ok(vec![Vec::new(); lens.len()]);
            };
            let got: Vec<usize> = bufs.iter().map(Vec::len).collect();
            if got != lens {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    detail: format!("{name} has tensors of lengths {got:?}, expected {lens:?}"),
                });
            }
            Ok(bufs)
        };
        Ok(OptimizerState {
            kind: cfg.kind(),
            step,
            lens: lens.to_vec(),
            exp_avg: checked("exp_avg", exp_avg)?,
            exp_avg_sq: checked("exp_avg_sq", exp_avg_sq)?,
            momentum_buffers,
            momentum_started,
        })
    }

    /// Checks that [`step`] accepts `cfg` for this state: the optimizer it was created for, and
    /// momentum buffers if `cfg` asks for momentum. `op` names the caller in the error.
    pub(crate) fn check_config(&self, op: &'static str, cfg: &OptimizerConfig) -> Result<()> {
        cfg.validate()?;
        if cfg.kind() != self.kind {
            return Err(Error::InvalidArgument {
                op,
                detail: format!(
                    "the state was created for {:?} but the config is {:?}; step a state with the \
                     optimizer it was created for",
                    self.kind,
                    cfg.kind()
                ),
            });
        }
        if let OptimizerConfig::Sgd(c) = cfg {
            if c.momentum != 0.0 && !self.momentum_buffers {
                return Err(Error::InvalidArgument {
                    op,
                    detail: format!(
                        "momentum = {} but the state was created without momentum buffers; \
                         create the state with the momentum config",
                        c.momentum
                    ),
                });
            }
        }
        Ok(())
    }
}

/// One parameter tensor as the optimizer sees it.
#[derive(Debug)]
pub struct ParamTensor<'a> {
    /// f32 master weights, updated in place.
    pub master: &'a mut [f32],
    /// The f32 gradient, already unscaled.
    pub grad: &'a [f32],
    /// The f16 working copy, rewritten from the new master weights after a real step.
    pub half: &'a mut [f16],
}

/// What [`step`] did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The parameters, buffers and step counter were updated.
    Stepped,
    /// `found_inf` was set: nothing was modified.
    Skipped,
}

impl StepOutcome {
    /// Whether the step was skipped.
    pub fn skipped(self) -> bool {
        self == StepOutcome::Skipped
    }
}

/// One optimizer step over every tensor, skipped entirely when `found_inf` is set. The exact
/// semantics are in the module doc.
///
/// Errors, all raised before anything is modified: [`Error::InvalidArgument`] for an invalid
/// config or one of another kind than the state was created for (or SGD momentum on a state
/// created without); [`Error::ShapeMismatch`] when the tensor count or any master/grad/half
/// length disagrees with the state.
pub fn step(
    cfg: &OptimizerConfig,
    state: &mut OptimizerState,
    params: &mut [ParamTensor<'_>],
    found_inf: bool,
) -> Result<StepOutcome> {
    const OP: &str = "cpu::optim::step";
    validate_step(OP, cfg, state, params)?;
    if found_inf {
        return Ok(StepOutcome::Skipped);
    }
    state.step += 1;
    let parallel = state.lens.iter().sum::<usize>() >= PARALLEL_MIN;
    match cfg {
        OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => {
            let decoupled = matches!(cfg, OptimizerConfig::AdamW(_));
            let k = AdamCoefficients::new(c, decoupled, state.step);
            let (ms, vs) = (&mut state.exp_avg, &mut state.exp_avg_sq);
            let f = |(p, (m, v)): (_, (&mut Vec<f32>, &mut Vec<f32>))| adam_tensor(&k, p, m, v);
            if parallel {
                let work = ms.par_iter_mut().zip(vs.par_iter_mut());
                params.par_iter_mut().zip(work).for_each(f);
            } else {
                params.iter_mut().zip(ms.iter_mut().zip(vs)).for_each(f);
            }
        }
        OptimizerConfig::Sgd(c) => {
            let k = SgdCoefficients::new(c, !state.momentum_started);
            state.momentum_started |= k.momentum != 0.0;
            // Without momentum `exp_avg` holds one empty vector per tensor, never read.
            let f = |(p, b): (_, &mut Vec<f32>)| {
                sgd_tensor(&k, p, (k.momentum != 0.0).then_some(b.as_mut_slice()))
            };
            if parallel {
                let work = state.exp_avg.par_iter_mut();
                params.par_iter_mut().zip(work).for_each(f);
            } else {
                params.iter_mut().zip(&mut state.exp_avg).for_each(f);
            }
        }
    }
    Ok(StepOutcome::Stepped)
}

fn validate_step(
    op: &'static str,
    cfg: &OptimizerConfig,
    state: &OptimizerState,
    params: &[ParamTensor<'_>],
) -> Result<()> {
    state.check_config(op, cfg)?;
    let lens: Vec<[usize; 3]> = params
        .iter()
        .map(|p| [p.master.len(), p.grad.len(), p.half.len()])
        .collect();
    check_tensor_lens(op, &state.lens, &lens)
}

/// The parameter list of a step (each tensor's master, grad and half lengths) against the
/// lengths its optimizer state was created for; shared by the CPU and GPU optimizers.
pub(crate) fn check_tensor_lens(
    op: &'static str,
    state: &[usize],
    got: &[[usize; 3]],
) -> Result<()> {
    if got.len() != state.len() {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!(
                "{} parameter tensors but the state was created for {}",
                got.len(),
                state.len()
            ),
        });
    }
    for (t, (&[master, grad, half], &n)) in got.iter().zip(state).enumerate() {
        if master != n || grad != n || half != n {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!(
                    "tensor {t}: master has {master} elements, grad {grad}, half {half}; the \
                     state was created for {n} and all four must agree"
                ),
            });
        }
    }
    Ok(())
}

/// One tensor, split into rayon tasks when it is large.
fn adam_tensor(k: &AdamCoefficients, p: &mut ParamTensor<'_>, m: &mut [f32], v: &mut [f32]) {
    if p.master.len() < PARALLEL_MIN {
        adam_chunk(k, p.master, p.grad, p.half, m, v);
        return;
    }
    p.master
        .par_chunks_mut(CHUNK)
        .zip(p.grad.par_chunks(CHUNK))
        .zip(p.half.par_chunks_mut(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|(((w, g), h), (m, v))| adam_chunk(k, w, g, h, m, v));
}

fn adam_chunk(
    k: &AdamCoefficients,
    master: &mut [f32],
    grad: &[f32],
    half: &mut [f16],
    m: &mut [f32],
    v: &mut [f32],
) {
    for ((((w, &g), h), m), v) in master.iter_mut().zip(grad).zip(half).zip(m).zip(v) {
        let mut p = *w;
        let mut g = g;
        if k.l2 != 0.0 {
            g += k.l2 * p;
        }
        if k.decay != 1.0 {
            p *= k.decay;
        }
        *m = k.beta1 * *m + k.one_minus_beta1 * g;
        *v = k.beta2 * *v + k.one_minus_beta2 * g * g;
        let denom = v.sqrt() / k.bias_correction2_sqrt + k.eps;
        p -= k.step_size * *m / denom;
        *w = p;
        *h = f16::from_f32(p);
    }
}

fn sgd_tensor(k: &SgdCoefficients, p: &mut ParamTensor<'_>, buf: Option<&mut [f32]>) {
    if p.master.len() < PARALLEL_MIN {
        sgd_chunk(k, p.master, p.grad, p.half, buf);
        return;
    }
    let tasks = p
        .master
        .par_chunks_mut(CHUNK)
        .zip(p.grad.par_chunks(CHUNK))
        .zip(p.half.par_chunks_mut(CHUNK));
    match buf {
        Some(buf) => tasks
            .zip(buf.par_chunks_mut(CHUNK))
            .for_each(|(((w, g), h), b)| sgd_chunk(k, w, g, h, Some(b))),
        None => tasks.for_each(|((w, g), h)| sgd_chunk(k, w, g, h, None)),
    }
}

/// `buf` is `Some` exactly when momentum is nonzero.
fn sgd_chunk(
    k: &SgdCoefficients,
    master: &mut [f32],
    grad: &[f32],
    half: &mut [f16],
    buf: Option<&mut [f32]>,
) {
    let decayed = |p: f32, g: f32| {
        if k.weight_decay != 0.0 {
            g + k.weight_decay * p
        } else {
            g
        }
    };
    match buf {
        None => {
            for ((w, &g), h) in master.iter_mut().zip(grad).zip(half) {
                *w -= k.lr * decayed(*w, g);
                *h = f16::from_f32(*w);
            }
        }
        Some(buf) => {
            for (((w, &g), h), b) in master.iter_mut().zip(grad).zip(half).zip(buf) {
                let d = decayed(*w, g);
                *b = if k.first_step {
                    d
                } else {
                    k.momentum * *b + k.one_minus_dampening * d
                };
                let d = if k.nesterov { d + k.momentum * *b } else { *b };
                *w -= k.lr * d;
                *h = f16::from_f32(*w);
            }
        }
    }
}
