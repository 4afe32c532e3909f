//! What the loop says about overflows: why each skipped step was skipped (which gradients were
//! inf/NaN, from the unscale's per-tensor flags), each epoch's skips and scale range, and the
//! scaler's warnings — once each, with a number and a suggestion — when skips pile up, the
//! scale sinks below a floor, or a run's first steps overflow.
//!
//! Everything here reads the step records the loop already fetches: no device work, no
//! synchronisation.

use super::backend::StepRecord;
use super::health::format_scale;
use crate::amp::{LossScale, NonFinite};
use std::fmt;

/// Why a skipped step was skipped, in words (`None` for a step that ran): a non-finite loss
/// (the forward overflowed; every gradient follows), or the gradients whose unscale found an
/// inf/NaN, named from `names` (the parameters in `state_dict` order).
pub fn skip_reason(r: &StepRecord, names: &[String]) -> Option<String> {
    if !r.skipped {
        return None;
    }
    let grads = list(&r.nonfinite.names(names));
    Some(if r.loss.is_finite() {
        format!(
            "inf/NaN gradients in {grads} at loss scale {}",
            format_scale(r.scale)
        )
    } else {
        format!("the loss was inf/NaN (the forward pass overflowed); inf/NaN gradients in {grads}")
    })
}

/// Names joined by commas; "(none recorded)" for an empty list, which a skipped step's record
/// does not have (the unscale flags a tensor whenever it sets found_inf), so that a broken
/// record still reads as a sentence.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none recorded)".to_string()
    } else {
        names.join(", ")
    }
}

/// One epoch's skipped steps per gradient tensor and its range of loss scales.
#[derive(Debug, Clone)]
pub(crate) struct EpochTally {
    /// Skipped steps per mask bit ([`NonFinite::LAST_BIT`] + 1 of them).
    per_tensor: Vec<u64>,
    range: Option<(f32, f32)>,
}

impl Default for EpochTally {
    fn default() -> Self {
        EpochTally {
            per_tensor: vec![0; NonFinite::LAST_BIT + 1],
            range: None,
        }
    }
}

impl EpochTally {
    /// Counts `records` in.
    pub(crate) fn add(&mut self, records: &[StepRecord]) {
        for r in records {
            for t in r.nonfinite.indices() {
                self.per_tensor[t] += 1;
            }
            let (lo, hi) = self.range.unwrap_or((r.scale, r.scale));
            self.range = Some((lo.min(r.scale), hi.max(r.scale)));
        }
    }

    /// The smallest and largest loss scale the epoch's steps ran with.
    pub(crate) fn scale_range(&self) -> Option<(f32, f32)> {
        self.range
    }

    /// `(name, skipped steps in which that gradient was inf/NaN)`, in parameter order.
    pub(crate) fn overflows(&self, names: &[String]) -> Vec<(String, u64)> {
        (self.per_tensor.iter().enumerate())
            .filter(|(_, &n)| n > 0)
            .map(|(t, &n)| (NonFinite::NONE.with(t).names(names).remove(0), n))
            .collect()
    }
}

/// When the scaler's warnings fire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarnConfig {
    /// Consecutive skipped steps that draw a warning (10 by default; 0: never).
    pub skip_streak: u64,
    /// The dynamic loss scale below which a warning fires (by default 1.0, or the scaler's
    /// `min_scale` when it has one: reaching that floor draws it).
    pub scale_floor: Option<f32>,
}

impl Default for WarnConfig {
    fn default() -> Self {
        WarnConfig {
            skip_streak: 10,
            scale_floor: None,
        }
    }
}

/// A warning about the loss scaler, raised once per kind per run.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalerWarning {
    /// `streak` consecutive steps up to global step `step` were skipped (after the run had
    /// taken a real step).
    SkipStreak {
        /// The global step at which the streak reached the limit.
        step: u64,
        /// Consecutive skipped steps.
        streak: u64,
        /// The loss scale of that step.
        scale: f32,
        /// The gradients that were inf/NaN on that step.
        nonfinite: Vec<String>,
        /// Whether that step's loss was finite (the overflow is in the backward pass).
        loss_finite: bool,
    },
    /// The dynamic loss scale reached `scale` at global step `step`, at or below `floor`.
    ScaleBelowFloor {
        /// The global step.
        step: u64,
        /// The scale that step ran with.
        scale: f32,
        /// The floor it crossed (1.0, or the scaler's `min_scale`).
        floor: f32,
    },
    /// The run's first `skipped` steps overflowed; the first real step ran at `settled`.
    EarlyOverflow {
        /// Skipped steps before the first real one.
        skipped: u64,
        /// The loss scale of the first real step.
        settled: f32,
        /// The scale the run started with.
        initial: f32,
    },
}

impl fmt::Display for ScalerWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScalerWarning::SkipStreak {
                step,
                streak,
                scale,
                nonfinite,
                loss_finite,
            } => {
                let grads = list(nonfinite);
                let hint = if *loss_finite {
                    "the backward pass overflows f16 even as the scale halves: run with \
                     --locate-overflow to name the op, lower the learning rate, or keep the \
                     layer named above in f32 (--fp32-layers)"
                } else {
                    "the loss itself is inf/NaN, which no loss scale changes: lower the learning \
                     rate (the weights are blowing up)"
                };
                write!(
                    f,
                    "{streak} consecutive steps skipped up to step {step} (loss scale {}; \
                     inf/NaN gradients in {grads}): {hint}",
                    format_scale(*scale)
                )
            }
            ScalerWarning::ScaleBelowFloor { step, scale, floor } => write!(
                f,
                "the loss scale fell to {} at step {step}, at or below {}: gradients overflow f16 \
                 even barely scaled, so small gradients will flush to zero; lower the learning \
                 rate, or keep the overflowing layer in f32 (--fp32-layers; --locate-overflow \
                 names it)",
                format_scale(*scale),
                format_scale(*floor)
            ),
            ScalerWarning::EarlyOverflow {
                skipped,
                settled,
                initial,
            } => write!(
                f,
                "the run's first {skipped} steps overflowed and were skipped while the loss scale \
                 came down from {} to {}: start at --init-scale {} to skip none",
                format_scale(*initial),
                format_scale(*settled),
                format_scale(*settled)
            ),
        }
    }
}

/// The warning rules' state over a run's records.
#[derive(Debug, Clone)]
pub(crate) struct Advisor {
    cfg: WarnConfig,
    /// The dynamic scaler's floor (None: static or no scaling, no floor warning), and whether
    /// it is the scaler's own `min_scale` (a scale clamped there cannot fall below it: sitting
    /// on it and still skipping draws the warning).
    floor: Option<(f32, bool)>,
    /// The scale of the first record seen (the run's, or a resumed run's, starting scale).
    initial: Option<f32>,
    streak: u64,
    /// Whether every record so far was skipped (the run's first streak).
    opening: bool,
    fired: [bool; 3],
}

impl Advisor {
    pub(crate) fn new(cfg: WarnConfig, loss_scale: &LossScale) -> Advisor {
        let floor = loss_scale
            .dynamic()
            .map(|c| match (cfg.scale_floor, c.min_scale) {
                (Some(f), _) => (f, false),
                (None, Some(m)) => (m, true),
                (None, None) => (1.0, false),
            });
        Advisor {
            cfg,
            floor,
            initial: None,
            streak: 0,
            opening: true,
            fired: [false; 3],
        }
    }

    /// Feeds the records of global steps `first..`; returns the warnings they raise.
    pub(crate) fn observe(
        &mut self,
        first: u64,
        records: &[StepRecord],
        names: &[String],
    ) -> Vec<ScalerWarning> {
        let mut out = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let step = first + i as u64;
            let initial = *self.initial.get_or_insert(r.scale);
            if let Some((floor, clamped)) = self.floor {
                let low = r.scale < floor || (clamped && r.scale <= floor && r.skipped);
                if low && !std::mem::replace(&mut self.fired[1], true) {
                    out.push(ScalerWarning::ScaleBelowFloor {
                        step,
                        scale: r.scale,
                        floor,
                    });
                }
            }
            if !r.skipped {
                if self.opening && self.streak > 0 && !std::mem::replace(&mut self.fired[2], true) {
                    out.push(ScalerWarning::EarlyOverflow {
                        skipped: self.streak,
                        settled: r.scale,
                        initial,
                    });
                }
                self.opening = false;
                self.streak = 0;
                continue;
            }
            self.streak += 1;
            let limit = self.cfg.skip_streak;
            if !self.opening && limit > 0 && self.streak == limit && !self.fired[0] {
                self.fired[0] = true;
                out.push(ScalerWarning::SkipStreak {
                    step,
                    streak: self.streak,
                    scale: r.scale,
                    nonfinite: r.nonfinite.names(names),
                    loss_finite: r.loss.is_finite(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amp::ScalerConfig;

    fn rec(scale: f32, skipped: bool, bad: &[usize]) -> StepRecord {
        StepRecord {
            loss: 0.5,
            scale,
            skipped,
            lr: 1e-3,
            nonfinite: bad.iter().fold(NonFinite::NONE, |s, &t| s.with(t)),
            grad_norm: None,
        }
    }

    fn names() -> Vec<String> {
        ["0.weight", "0.bias", "2.weight", "2.bias"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn reasons_name_the_gradients() {
        let r = rec(65536.0, true, &[0, 1]);
        assert_eq!(
            skip_reason(&r, &names()).unwrap(),
            "inf/NaN gradients in 0.weight, 0.bias at loss scale 65536"
        );
        assert!(skip_reason(&rec(1.0, false, &[]), &names()).is_none());
        let mut r = rec(2.0, true, &[0, 1, 2, 3]);
        r.loss = f32::NAN;
        assert!(skip_reason(&r, &names())
            .unwrap()
            .starts_with("the loss was inf/NaN"));
    }

    #[test]
    fn epochs_tally_skips_per_tensor_and_the_scale_range() {
        let mut t = EpochTally::default();
        assert_eq!(t.scale_range(), None);
        t.add(&[rec(65536.0, true, &[0, 1]), rec(32768.0, true, &[0])]);
        t.add(&[rec(32768.0, false, &[]), rec(131072.0, false, &[])]);
        assert_eq!(t.scale_range(), Some((32768.0, 131072.0)));
        assert_eq!(
            t.overflows(&names()),
            [("0.weight".to_string(), 2), ("0.bias".to_string(), 1)]
        );
    }

    #[test]
    fn warnings_fire_once_with_their_numbers() {
        let dynamic = LossScale::Dynamic(ScalerConfig::default());
        let mut a = Advisor::new(WarnConfig::default(), &dynamic);
        // A run whose first 3 steps overflow: one early-overflow warning at the first real step.
        let mut recs: Vec<StepRecord> = [65536.0, 32768.0, 16384.0]
            .iter()
            .map(|&s| rec(s, true, &[0]))
            .collect();
        recs.push(rec(8192.0, false, &[]));
        let w = a.observe(0, &recs, &names());
        assert_eq!(
            w,
            [ScalerWarning::EarlyOverflow {
                skipped: 3,
                settled: 8192.0,
                initial: 65536.0
            }]
        );
        assert!(w[0].to_string().contains("--init-scale 8192"), "{}", w[0]);
        // Ten skips in a row later on: one streak warning, at the tenth, naming the gradients.
        let streak: Vec<StepRecord> = (0..25)
            .map(|i| rec(8192.0 / 2f32.powi(i), true, &[2]))
            .collect();
        let w = a.observe(4, &streak, &names());
        assert_eq!(w.len(), 2, "{w:?}");
        match &w[0] {
            ScalerWarning::SkipStreak {
                step,
                streak,
                nonfinite,
                ..
            } => {
                assert_eq!((*step, *streak), (13, 10));
                assert_eq!(nonfinite, &["2.weight".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        // The scale sank below 1 at 8192 / 2^14: one floor warning.
        assert_eq!(
            w[1],
            ScalerWarning::ScaleBelowFloor {
                step: 4 + 14,
                scale: 0.5,
                floor: 1.0
            }
        );
        // Nothing fires twice.
        assert!(a.observe(29, &streak, &names()).is_empty());
        // A floored scaler warns when it sits at its floor and still skips; static: never.
        let floored = LossScale::Dynamic(ScalerConfig {
            min_scale: Some(128.0),
            ..ScalerConfig::default()
        });
        let mut a = Advisor::new(WarnConfig::default(), &floored);
        assert!(a.observe(0, &[rec(128.0, false, &[])], &names()).is_empty());
        let w = a.observe(1, &[rec(128.0, true, &[0])], &names());
        assert!(matches!(w[..], [ScalerWarning::ScaleBelowFloor { floor, .. }] if floor == 128.0));
        let mut a = Advisor::new(WarnConfig::default(), &LossScale::Static(0.5));
        assert!(a.observe(0, &[rec(0.5, false, &[])], &names()).is_empty());
    }
}
