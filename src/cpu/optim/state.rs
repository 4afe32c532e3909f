//! The optimizer's state (moment buffers and the step counter) and what a step takes and returns.

use super::config::Kind;
use super::HalfCopy;
use super::OptimizerConfig;
use crate::error::{Error, Result};
use half::f16;

/// Per-tensor optimizer buffers and the one step counter shared by all tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    kind: Kind,
    pub(super) step: u64,
    pub(super) lens: Vec<usize>,
    /// Adam's first moment, or SGD's momentum buffer; empty vectors when unused.
    pub(super) exp_avg: Vec<Vec<f32>>,
    /// Adam's second moment; empty vectors when unused.
    pub(super) exp_avg_sq: Vec<Vec<f32>>,
    /// SGD only: whether `exp_avg` holds momentum buffers.
    momentum_buffers: bool,
    /// SGD only: whether a real step with momentum has filled the buffers (PyTorch's buffer
    /// stops being `None`).
    pub(super) momentum_started: bool,
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

    /// Checks that [`step`](super::step) accepts `cfg` for this state: the optimizer it was created for, and
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

/// One parameter tensor as the optimizer sees it, with a working copy of type `H`
/// ([`half::f16`] by default, or [`half::bf16`]).
#[derive(Debug)]
pub struct ParamTensor<'a, H: HalfCopy = f16> {
    /// f32 master weights, updated in place.
    pub master: &'a mut [f32],
    /// The f32 gradient, already unscaled.
    pub grad: &'a [f32],
    /// The 16-bit working copy, rewritten from the new master weights after a real step
    /// ([`HalfCopy::from_f32`]); empty for a tensor that keeps none (whose users read the
    /// master, as an FP8 layer's casts do).
    pub half: &'a mut [H],
}

/// What [`step`](super::step) did.
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
