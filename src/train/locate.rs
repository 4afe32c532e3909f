//! `--locate-overflow`: the first op of a skipped step whose output was inf/NaN.
//!
//! The unscale's per-tensor flags ([`crate::amp::NonFinite`]) say which gradients were
//! non-finite; every gradient downstream of an overflow is, so they rarely say where it began.
//! The locator replays the skipped step op by op on the CPU reference ([`crate::cpu`], the
//! arithmetic every GPU kernel is tested against: the same f16 roundings, f32 accumulation up
//! to summation order) with the weights, batch and loss scale of that step, and checks each
//! op's output as it is produced: the first non-finite one is the overflow's origin. For an op
//! that writes f16, it also reports the largest magnitude of the output before rounding (an
//! f16 overflow is a value past 65504 rounding to inf).
//!
//! The replay runs on the host whatever backend trained, so it needs the step's weights: the
//! loop reads the records back after every step while locating (one synchronisation per step)
//! and replays a skipped step before the next one can change anything.

use std::fmt;

/// The part of the step an op belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The batch as it entered the model.
    Input,
    /// Forward ops (GEMM, LayerNorm, ReLU).
    Forward,
    /// The loss and its gradient.
    Loss,
    /// Backward ops.
    Backward,
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pass::Input => "input",
            Pass::Forward => "forward",
            Pass::Loss => "loss",
            Pass::Backward => "backward",
        })
    }
}

/// Where a skipped step's first inf/NaN appeared.
#[derive(Debug, Clone, PartialEq)]
pub struct OverflowSite {
    /// Forward, loss or backward.
    pub pass: Pass,
    /// The op, e.g. `Linear 0 output` or `dgrad of Linear 2 (its input's gradient)`.
    pub op: String,
    /// The op's storage type (`f16`, `f32`).
    pub dtype: &'static str,
    /// The largest magnitude of the op's output before rounding to `dtype`, when that was
    /// finite (an overflow on rounding); `None` when the op itself produced inf/NaN.
    pub max_abs: Option<f64>,
    /// Elements of the output that were inf/NaN, and the output's size.
    pub nonfinite: (usize, usize),
}

impl fmt::Display for OverflowSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (bad, all) = self.nonfinite;
        match self.max_abs {
            Some(m) => write!(
                f,
                "{}: {} overflowed {} (max |x| = {m:.1e}; {bad} of {all} values inf/NaN)",
                self.pass, self.op, self.dtype
            ),
            None => write!(
                f,
                "{}: {} was inf/NaN ({bad} of {all} values, computed in {} from finite inputs)",
                self.pass, self.op, self.dtype
            ),
        }
    }
}

/// Collects the first non-finite op output of a replay; checks are free once one is found.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    site: Option<OverflowSite>,
}

impl Probe {
    /// The first site found, if any.
    pub(crate) fn into_site(self) -> Option<OverflowSite> {
        self.site
    }

    /// Checks an op's output (`out`, already in its storage precision, f32 storage). When it
    /// holds an inf/NaN and no earlier op did, records the op; `wide` recomputes the output
    /// before its rounding to f16 (for the max |x|; empty if that failed), `None` for ops
    /// without a rounding.
    pub(crate) fn check(
        &mut self,
        pass: Pass,
        op: impl FnOnce() -> String,
        dtype: &'static str,
        out: &[f32],
        wide: Option<&dyn Fn() -> Vec<f32>>,
    ) {
        if self.site.is_some() {
            return;
        }
        let bad = out.iter().filter(|v| !v.is_finite()).count();
        if bad == 0 {
            return;
        }
        // No range when the recomputation failed (empty) or was itself non-finite.
        let max_abs = wide.and_then(|w| {
            let v = w();
            (!v.is_empty() && v.iter().all(|x| x.is_finite()))
                .then(|| v.iter().fold(0f64, |m, x| m.max(f64::from(x.abs()))))
        });
        self.site = Some(OverflowSite {
            pass,
            op: op(),
            dtype,
            max_abs,
            nonfinite: (bad, out.len()),
        });
    }

    /// [`Probe::check`] for an op whose output is stored as 16-bit values of type `dtype` (f32
    /// storage).
    pub(crate) fn check_half(
        &mut self,
        pass: Pass,
        op: impl FnOnce() -> String,
        dtype: &'static str,
        out: &[f32],
        wide: &dyn Fn() -> Vec<f32>,
    ) {
        self.check(pass, op, dtype, out, Some(wide));
    }
}

/// The module prefix of a linear layer in `state_dict` names (`"2"` for `2.weight`).
pub(crate) fn layer_name(weight_name: &str) -> String {
    let prefix = weight_name.strip_suffix(".weight").unwrap_or(weight_name);
    format!("Linear {prefix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_finite_output_wins() {
        let mut p = Probe::default();
        p.check(Pass::Forward, || "a".into(), "f32", &[1.0, 2.0], None);
        assert!(p.site.is_none());
        let wide = || vec![70000.0f32, 1.0];
        p.check_half(
            Pass::Forward,
            || "Linear 0 output".into(),
            "f16",
            &[f32::INFINITY, 1.0],
            &wide,
        );
        p.check(Pass::Backward, || "later".into(), "f32", &[f32::NAN], None);
        let site = p.into_site().unwrap();
        assert_eq!(site.op, "Linear 0 output");
        assert_eq!(
            site.to_string(),
            "forward: Linear 0 output overflowed f16 (max |x| = 7.0e4; 1 of 2 values inf/NaN)"
        );
        let mut p = Probe::default();
        let nan = || vec![f32::NAN];
        p.check_half(Pass::Loss, || "dlogits".into(), "f16", &[f32::NAN], &nan);
        assert!(p
            .into_site()
            .unwrap()
            .to_string()
            .contains("was inf/NaN (1 of 1 values"));
        assert_eq!(layer_name("2.weight"), "Linear 2");
    }
}
