//! Dynamic loss-scale update on the CPU; the reference for the single-thread GPU kernel and
//! PyTorch's `torch._amp_update_scale_` (`GradScaler.update()`).
//!
//! # Semantics (the GPU twin matches them bit for bit)
//!
//! The state is an f32 `scale` and an i32 `growth_tracker` (PyTorch's `_scale` and
//! `_growth_tracker` tensors). [`update_scale`] applies, in order:
//!
//! ```text
//! if found_inf {
//!     scale = f32(f64(scale) * backoff_factor)      // one rounding, f64 product
//!     if let Some(min) = min_scale { scale = max(scale, min) }
//!     growth_tracker = 0
//! } else {
//!     s = growth_tracker + 1                        // two's-complement wrap, never a panic
//!     if s == growth_interval {
//!         n = f32(f64(scale) * growth_factor)       // may round to +inf
//!         if let Some(max) = max_scale { n = min(n, max) }
//!         if n.is_finite() { scale = n }            // "do not grow the scale past fp32 bounds"
//!         growth_tracker = 0
//!     } else {
//!         growth_tracker = s
//!     }
//! }
//! ```
//!
//! - The products are formed in f64 and rounded once to f32 because PyTorch passes the factors
//!   to its kernel as `double`, so C++ evaluates `float * double` in double before the store
//!   converts it. The f64 product of an f32 and an f64 factor can still round (it is not exact
//!   for a factor like 1.1), and that rounding-then-rounding is part of the definition: e.g.
//!   growing 3.0 by 1.1 gives `3.3f32` here, `3.3000002` if computed as two f32s.
//! - Without `min_scale` there is **no floor**, as in PyTorch (its docstring: "the scale factor
//!   is not guaranteed to be above 1"): repeated overflows halve the scale below 1, through the
//!   subnormals, and to `+0.0` (2⁻¹⁴⁹ · 0.5 rounds to even, i.e. zero), where it stays.
//!   `min_scale`/`max_scale` are opt-in extensions (apex and Megatron have them); with both
//!   off the rule is PyTorch's exactly.
//! - `max_scale` caps a growth: a growth that would overflow f32 lands on `max_scale` (finite)
//!   instead of being refused. Without it, an overflowing growth leaves the scale unchanged and
//!   still resets the tracker.
//! - `min` and `max` are IEEE `fmaxf`/`fminf`: a NaN operand yields the other operand.
//! - The tracker comparison is `==`, not `>=`, as in PyTorch: a tracker set above the interval
//!   (e.g. by loading state for another interval) counts up until it wraps.
//!
//! [`update_scale`] does not validate its config (the GPU kernel cannot report errors and
//! PyTorch validates once, in the constructor); validate it once with
//! [`ScalerConfig::validate`], which [`ScalerState::new`] does.

use crate::error::{Error, Result};

/// Loss-scaler hyperparameters. [`Default`] is PyTorch's `GradScaler()`: 2¹⁶, ×2, ×0.5,
/// 2000, no clamps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScalerConfig {
    /// The scale before the first update. Accepted: finite and > 0 (and within the clamps).
    pub init_scale: f32,
    /// Multiplier after `growth_interval` consecutive clean steps. Accepted: finite and > 1.
    pub growth_factor: f64,
    /// Multiplier after a step with an inf/NaN gradient. Accepted: 0 < backoff_factor < 1.
    pub backoff_factor: f64,
    /// Consecutive clean steps before a growth. Accepted: ≥ 1.
    pub growth_interval: i32,
    /// Optional floor applied after a backoff (not in PyTorch). Accepted: finite and > 0.
    pub min_scale: Option<f32>,
    /// Optional cap applied to a growth (not in PyTorch). Accepted: finite, > 0, ≥ `min_scale`.
    pub max_scale: Option<f32>,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            min_scale: None,
            max_scale: None,
        }
    }
}

impl ScalerConfig {
    /// Checks every field against the accepted ranges documented on it; returns
    /// [`Error::InvalidArgument`] naming the first field that is out of range.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "cpu::scaler::ScalerConfig::validate";
        let bad = |detail: String| Err(Error::InvalidArgument { op: OP, detail });
        if !(self.init_scale.is_finite() && self.init_scale > 0.0) {
            return bad(format!(
                "init_scale = {}; accepted: a finite value > 0 (PyTorch's default is 65536)",
                self.init_scale
            ));
        }
        if !(self.growth_factor.is_finite() && self.growth_factor > 1.0) {
            return bad(format!(
                "growth_factor = {}; accepted: a finite value > 1 (default 2)",
                self.growth_factor
            ));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return bad(format!(
                "backoff_factor = {}; accepted: 0 < backoff_factor < 1 (default 0.5)",
                self.backoff_factor
            ));
        }
        if self.growth_interval < 1 {
            return bad(format!(
                "growth_interval = {}; accepted: ≥ 1 (default 2000)",
                self.growth_interval
            ));
        }
        for (name, v) in [("min_scale", self.min_scale), ("max_scale", self.max_scale)] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return bad(format!(
                        "{name} = {v}; accepted: None or a finite value > 0"
                    ));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (self.min_scale, self.max_scale) {
            if lo > hi {
                return bad(format!(
                    "min_scale = {lo} exceeds max_scale = {hi}; accepted: min_scale ≤ max_scale"
                ));
            }
        }
        let lo = self.min_scale.unwrap_or(0.0);
        let hi = self.max_scale.unwrap_or(f32::MAX);
        if !(lo..=hi).contains(&self.init_scale) {
            return bad(format!(
                "init_scale = {} lies outside [min_scale, max_scale] = [{lo}, {hi}]; accepted: \
                 an init_scale within the clamps",
                self.init_scale
            ));
        }
        Ok(())
    }
}

/// The scaler's mutable state: what lives on the device as two 0-dim tensors in PyTorch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalerState {
    /// The current loss scale (f32, as PyTorch's `_scale`).
    pub scale: f32,
    /// Clean steps since the last growth or backoff (i32, as PyTorch's `_growth_tracker`).
    pub growth_tracker: i32,
}

impl ScalerState {
    /// The initial state for `cfg` (scale `init_scale`, tracker 0), after validating `cfg`.
    pub fn new(cfg: &ScalerConfig) -> Result<ScalerState> {
        cfg.validate()?;
        Ok(ScalerState {
            scale: cfg.init_scale,
            growth_tracker: 0,
        })
    }
}

/// One `GradScaler.update()`: backs off on `found_inf`, otherwise counts a clean step and grows
/// the scale every `growth_interval` of them. The exact rule is in the module doc.
pub fn update_scale(state: &mut ScalerState, found_inf: bool, cfg: &ScalerConfig) {
    if found_inf {
        let mut scale = (f64::from(state.scale) * cfg.backoff_factor) as f32;
        if let Some(min) = cfg.min_scale {
            scale = scale.max(min);
        }
        state.scale = scale;
        state.growth_tracker = 0;
    } else {
        let successful = state.growth_tracker.wrapping_add(1);
        if successful == cfg.growth_interval {
            let mut grown = (f64::from(state.scale) * cfg.growth_factor) as f32;
            if let Some(max) = cfg.max_scale {
                grown = grown.min(max);
            }
            if grown.is_finite() {
                state.scale = grown;
            }
            state.growth_tracker = 0;
        } else {
            state.growth_tracker = successful;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_after_the_interval_and_backs_off_on_inf() {
        let cfg = ScalerConfig {
            growth_interval: 2,
            ..ScalerConfig::default()
        };
        let mut s = ScalerState::new(&cfg).unwrap();
        update_scale(&mut s, false, &cfg);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 1));
        update_scale(&mut s, false, &cfg);
        assert_eq!((s.scale, s.growth_tracker), (131072.0, 0));
        update_scale(&mut s, true, &cfg);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
    }
}
