//! When a run can no longer learn, and how the loop finds out without slowing down.
//!
//! A skipped step (inf/NaN gradient) leaves the weights as they were; only the loss scale moves
//! (dynamic scaling halves it) and the next step sees another batch. A healthy run skips a step
//! now and then (after each growth of the scale that overflows) and, with a huge initial scale,
//! a burst at the start until the scale comes down. A run is declared dead, with
//! [`Error::Diverged`], when its step records show any of:
//!
//! 1. **The dynamic loss scale is not a normal f32** (0, subnormal, inf or NaN). Each skip
//!    multiplies the scale by the backoff factor, so from PyTorch's 65536 it takes 143
//!    consecutive skips with the default 0.5 to fall below f32's smallest normal (2⁻¹²⁶ ≈
//!    1.2e-38), and 166 to reach 0. Gradients scaled by less than 2⁻¹²⁶ flush to zero in f16
//!    long before: no batch can produce a finite, non-zero gradient at that scale.
//! 2. **[`LOSS_STREAK`] consecutive skipped steps with an inf/NaN loss.** The forward loss does
//!    not depend on the loss scale, and a skipped step does not change the weights: these are
//!    25 different batches on which the same weights already give non-finite outputs (and
//!    non-finite gradients). Nothing in the loop can change that; it is what a too-high
//!    learning rate looks like one step after the blow-up, and it is caught within two record
//!    read-backs instead of after the scale has halved 143 times.
//! 3. **More consecutive skipped steps than `Health::skip_limit`**: [`MIN_SKIP_STREAK`] (256)
//!    under a static scale or none, where a skip changes nothing at all; under dynamic scaling
//!    256 plus the backoffs that bring the initial scale down to 1 (16 for 65536, so 272), so
//!    that a huge initial scale has room to come down first. Without a `min_scale` floor rule 1
//!    fires first; this rule is for static scales, `--loss-scale off` and floored scales,
//!    where the scale cannot collapse and the gradients are inf/NaN every time.
//!
//! The rules read only the records the loop already fetches (every
//! [`super::trainer::RECORDS_EVERY`] steps and at the end of each epoch), so they cost no
//! device synchronisation; a dead run is found at most 25 steps late. The streaks start at 0
//! when a run starts or resumes. The loop checks the rules on every read-back before it writes
//! a checkpoint, so a state that meets one is never saved; a state whose last step had an
//! inf/NaN loss is not saved either (the run is then on its way to rule 2), and the previous
//! checkpoint stays as it was.

use super::backend::StepRecord;
use crate::amp::LossScale;
use crate::error::{Error, Result};

/// Consecutive skipped steps with a non-finite loss that end a run (rule 2 above).
pub(crate) const LOSS_STREAK: u64 = 25;

/// Consecutive skipped steps that end a run under a scale that cannot collapse (rule 3 above).
pub(crate) const MIN_SKIP_STREAK: u64 = 256;

/// What to do when the weights themselves are gone.
const BLOWN_UP: &str =
    "the weights blew up, most often from too high a learning rate: lower the learning rate";

/// The divergence rules' state across record read-backs.
#[derive(Debug, Clone)]
pub struct Health {
    loss_scale: LossScale,
    skip_limit: u64,
    skipped: u64,
    nonfinite: u64,
    last_loss_finite: bool,
}

impl Health {
    /// Fresh streaks for a run with this loss scaling.
    pub fn new(loss_scale: &LossScale) -> Health {
        let backoffs_to_one = match loss_scale {
            LossScale::Dynamic(c) if c.init_scale > 1.0 => {
                let n = f64::from(c.init_scale).log2() / -c.backoff_factor.log2();
                // Validated factors keep n finite and positive; the cast saturates otherwise.
                n.ceil() as u64
            }
            _ => 0,
        };
        Health {
            loss_scale: *loss_scale,
            skip_limit: MIN_SKIP_STREAK.saturating_add(backoffs_to_one),
            skipped: 0,
            nonfinite: 0,
            last_loss_finite: true,
        }
    }

    /// Consecutive skipped steps that end the run (rule 3).
    #[cfg(test)]
    fn skip_limit(&self) -> u64 {
        self.skip_limit
    }

    /// Consecutive skipped steps up to the latest record seen.
    #[cfg(test)]
    fn skip_streak(&self) -> u64 {
        self.skipped
    }

    /// Whether the latest record seen had a finite loss (true before any record).
    pub fn last_loss_finite(&self) -> bool {
        self.last_loss_finite
    }

    /// Checks the scale read back after global step `step` (rule 1, for the scale the next step
    /// would use: the records hold the scale each step started with).
    ///
    /// Errors: [`Error::Diverged`] when a dynamic scale is 0, subnormal, inf or NaN.
    pub fn check_scale(&self, step: u64, scale: f32) -> Result<()> {
        if self.loss_scale.dynamic().is_some() && !scale.is_normal() {
            return Err(Error::Diverged {
                step,
                reason: format!(
                    "the loss scale reached {} after {} consecutive skipped steps, below f32's \
                     smallest normal number: the gradients are inf/NaN at any scale",
                    format_scale(scale),
                    self.skipped
                ),
                hint: BLOWN_UP.into(),
            });
        }
        Ok(())
    }

    /// Feeds the records of global steps `first..first + records.len()`, oldest first.
    ///
    /// Errors: [`Error::Diverged`] for the first record that meets a rule.
    pub fn observe(&mut self, first: u64, records: &[StepRecord]) -> Result<()> {
        for (i, r) in records.iter().enumerate() {
            let step = first + i as u64;
            self.check_scale(step, r.scale)?;
            self.last_loss_finite = r.loss.is_finite();
            if r.skipped {
                self.skipped += 1;
                self.nonfinite = if r.loss.is_finite() {
                    0
                } else {
                    self.nonfinite + 1
                };
            } else {
                self.skipped = 0;
                self.nonfinite = 0;
            }
            if self.nonfinite >= LOSS_STREAK {
                return Err(Error::Diverged {
                    step,
                    reason: format!(
                        "the loss was inf/NaN on {} consecutive steps (all skipped): the weights \
                         no longer give finite outputs, and skipped steps cannot change them",
                        self.nonfinite
                    ),
                    hint: BLOWN_UP.into(),
                });
            }
            if self.skipped >= self.skip_limit {
                let hint = match self.loss_scale {
                    LossScale::Static(_) => {
                        "use a smaller static loss scale or dynamic scaling, or lower the \
                         learning rate"
                    }
                    LossScale::Dynamic(_) => "lower the minimum scale or the learning rate",
                    LossScale::Off => "lower the learning rate",
                };
                return Err(Error::Diverged {
                    step,
                    reason: format!(
                        "{} consecutive steps were skipped for inf/NaN gradients (loss scale {})",
                        self.skipped,
                        format_scale(r.scale)
                    ),
                    hint: hint.into(),
                });
            }
        }
        Ok(())
    }
}

/// A loss scale for a log line: plain between 1e-3 and 1e9 (and 0), else in exponent form, so a
/// collapsing scale prints as `5.877472e-39` rather than forty digits.
pub(crate) fn format_scale(s: f32) -> String {
    if s == 0.0 {
        // Also for -0.0, which the scaler never produces but a log must not print as "-0".
        "0".to_string()
    } else if (1e-3..1e9).contains(&s.abs()) {
        format!("{s}")
    } else {
        format!("{s:e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::scaler::ScalerConfig;

    fn rec(loss: f32, scale: f32, skipped: bool) -> StepRecord {
        StepRecord {
            loss,
            scale,
            skipped,
            lr: 1e-3,
            nonfinite: crate::amp::NonFinite::NONE,
            grad_norm: None,
        }
    }

    #[test]
    fn scales_print_short() {
        assert_eq!(format_scale(65536.0), "65536");
        assert_eq!(format_scale(0.25), "0.25");
        assert_eq!(format_scale(-0.0), "0");
        assert_eq!(format_scale(2f32.powi(-127)), "5.877472e-39");
        assert_eq!(format_scale(1e30), "1e30");
    }

    #[test]
    fn limits_follow_the_scaler() {
        let dynamic = |init_scale, backoff_factor| {
            Health::new(&LossScale::Dynamic(ScalerConfig {
                init_scale,
                backoff_factor,
                ..ScalerConfig::default()
            }))
            .skip_limit()
        };
        assert_eq!(dynamic(65536.0, 0.5), 256 + 16);
        assert_eq!(dynamic(1e30, 0.5), 256 + 100);
        assert_eq!(dynamic(0.5, 0.5), 256);
        assert_eq!(dynamic(65536.0, 0.25), 256 + 8);
        assert_eq!(Health::new(&LossScale::Off).skip_limit(), 256);
        assert_eq!(Health::new(&LossScale::Static(1024.0)).skip_limit(), 256);
    }

    #[test]
    fn a_collapsed_scale_ends_the_run() {
        let mut h = Health::new(&LossScale::Dynamic(ScalerConfig::default()));
        h.observe(0, &[rec(2.3, 65536.0, false)]).unwrap();
        let halvings: Vec<StepRecord> = (0..142)
            .map(|k| rec(1.0, 65536.0 * 0.5f32.powi(k), true))
            .collect();
        h.observe(1, &halvings).unwrap();
        assert_eq!(h.skip_streak(), 142);
        let e = h.observe(143, &[rec(1.0, 2f32.powi(-127), true)]);
        match e {
            Err(Error::Diverged { step, reason, .. }) => {
                assert_eq!(step, 143);
                assert!(reason.contains("142 consecutive"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let mut h = Health::new(&LossScale::Dynamic(ScalerConfig::default()));
        assert!(h.observe(0, &[rec(1.0, f32::NAN, false)]).is_err());
    }

    #[test]
    fn a_streak_of_nonfinite_losses_ends_the_run_and_a_real_step_resets_it() {
        let mut h = Health::new(&LossScale::Off);
        let nan = |n: usize| vec![rec(f32::NAN, 1.0, true); n];
        h.observe(0, &nan(24)).unwrap();
        assert!(!h.last_loss_finite());
        h.observe(24, &[rec(0.5, 1.0, false)]).unwrap();
        assert!(h.last_loss_finite());
        h.observe(25, &nan(24)).unwrap();
        // A finite loss on a skipped step breaks the loss streak, not the skip streak.
        h.observe(49, &[rec(0.5, 1.0, true)]).unwrap();
        h.observe(50, &nan(24)).unwrap();
        match h.observe(74, &[rec(f32::INFINITY, 1.0, true)]) {
            Err(Error::Diverged { step, reason, .. }) => {
                assert_eq!(step, 74);
                assert!(reason.contains("25 consecutive"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endless_skips_at_a_fixed_scale_end_the_run() {
        let mut h = Health::new(&LossScale::Static(1e4));
        let skips = vec![rec(0.7, 1e4, true); 255];
        h.observe(0, &skips).unwrap();
        match h.observe(255, &[rec(0.7, 1e4, true)]) {
            Err(e @ Error::Diverged { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("256 consecutive steps were skipped"), "{msg}");
                assert!(msg.contains("smaller static loss scale"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // A healthy run's occasional skip never accumulates.
        let mut h = Health::new(&LossScale::Static(1e4));
        for s in 0..2000u64 {
            h.observe(s, &[rec(0.3, 1e4, s % 7 == 0)]).unwrap();
        }
    }
}
