//! The tolerance harness: how every GPU result is compared with its reference.
//!
//! Public because users validate their own kernels with it too. Three checks, used together:
//! - [`compare`]: the relative error `‖out − ref‖₂ / ‖ref‖₂` against a reference computed in f64,
//!   and elementwise `|out − ref| ≤ atol + rtol·|ref|`, reporting the first mismatches and the
//!   worst element. Non-finite values must match exactly: NaN where the reference is NaN (an
//!   expected NaN), the same infinity where it is infinite; a NaN anywhere else fails.
//! - [`unwritten`]: outputs are poisoned before a call; elements still holding the poison's bit
//!   pattern afterwards were never written.
//! - [`numerical_gradient`]: central finite differences in f64, for gradient checks of every
//!   backward.
//!
//! Checking a kernel of your own: compute its output (on the GPU, then downloaded, or anywhere),
//! compute the reference in f64 (the [`crate::cpu`] functions are generic over f64 where it
//! matters), pick a tolerance from the arithmetic (f32 sums of `n` terms err by about
//! `√n·2⁻²⁴` of their size; an f16 output adds half an ulp, `2⁻¹¹` relative), and compare:
//!
//! ```
//! use ampkit::check::{compare, unwritten, Tolerance};
//! // "my kernel": a softmax written with f32 arithmetic.
//! let x = [1.0f32, 2.0, 3.0, -1.0];
//! let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
//! let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
//! let s: f32 = e.iter().sum();
//! let mine: Vec<f32> = e.iter().map(|v| v / s).collect();
//! // The reference, in f64.
//! let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
//! let mut want = vec![0f64; 4];
//! ampkit::cpu::softmax::forward(&x64, 1, 4, &mut want)?;
//! let report = compare(&mine, &want, Tolerance::new(1e-7, 1e-6));
//! assert!(report.passed(), "{report}"); // Display lists the worst element and first mismatches
//! assert!(unwritten(&mine, f32::from_bits(0xDEAD_BEEF)).is_empty());
//! # Ok::<(), ampkit::Error>(())
//! ```

use half::f16;
use std::fmt;

/// A value the harness can compare: widened to f64 exactly.
pub trait ToF64: Copy {
    /// The value as f64 (exact for f16, bf16, f32 and f64).
    fn to_f64(self) -> f64;
}

impl ToF64 for f16 {
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}
impl ToF64 for half::bf16 {
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}
impl ToF64 for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}
impl ToF64 for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

/// Acceptance limits for [`compare`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute slack per element.
    pub atol: f64,
    /// Slack per element relative to `|ref|`.
    pub rtol: f64,
    /// Largest accepted `‖out − ref‖₂ / ‖ref‖₂` over the finite reference elements.
    pub max_rel_l2: f64,
}

impl Tolerance {
    /// Bit-for-bit agreement (NaN matches NaN).
    pub const EXACT: Tolerance = Tolerance {
        atol: 0.0,
        rtol: 0.0,
        max_rel_l2: 0.0,
    };

    /// Elementwise `atol + rtol·|ref|`, and a relative L2 error of at most `rtol`.
    pub const fn new(atol: f64, rtol: f64) -> Tolerance {
        Tolerance {
            atol,
            rtol,
            max_rel_l2: rtol,
        }
    }

    /// The same limits with another bound on the relative L2 error.
    pub const fn with_rel_l2(self, max_rel_l2: f64) -> Tolerance {
        Tolerance { max_rel_l2, ..self }
    }
}

/// One element that failed, or the worst one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Element {
    /// Index into the compared slices.
    pub index: usize,
    /// What was computed.
    pub got: f64,
    /// The reference.
    pub want: f64,
}

/// The outcome of a [`compare`].
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Elements compared.
    pub len: usize,
    /// `‖out − ref‖₂ / ‖ref‖₂` over the finite reference elements (`‖out − ref‖₂` if `ref` is 0).
    pub rel_l2: f64,
    /// Largest `|out − ref|` relative to its allowance, among finite elements.
    pub worst: Option<Element>,
    /// How many elements broke the elementwise bound (or the non-finite rule).
    pub mismatches: usize,
    /// The first few of them.
    pub first_mismatches: Vec<Element>,
    /// The limits used.
    pub tolerance: Tolerance,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.mismatches == 0 && self.rel_l2 <= self.tolerance.max_rel_l2
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} elements, rel L2 error {:.3e} (limit {:.1e}), {} outside atol {:.1e} + rtol {:.1e}·|ref|",
            self.len,
            self.rel_l2,
            self.tolerance.max_rel_l2,
            self.mismatches,
            self.tolerance.atol,
            self.tolerance.rtol
        )?;
        if let Some(w) = self.worst {
            write!(f, "; worst [{}] got {:e} want {:e}", w.index, w.got, w.want)?;
        }
        for m in &self.first_mismatches {
            write!(f, "\n  [{}] got {:e} want {:e}", m.index, m.got, m.want)?;
        }
        Ok(())
    }
}

/// How many mismatches a [`Report`] lists.
const SHOWN: usize = 8;

/// Compares `out` with a reference computed in f64. Returns the report; check
/// [`Report::passed`]. Lengths must agree (a mismatch counts every missing element as failed).
pub fn compare<T: ToF64>(out: &[T], reference: &[f64], tolerance: Tolerance) -> Report {
    let mut report = Report {
        len: out.len(),
        rel_l2: 0.0,
        worst: None,
        mismatches: out.len().abs_diff(reference.len()),
        first_mismatches: Vec::new(),
        tolerance,
    };
    let (mut diff2, mut ref2) = (0.0f64, 0.0f64);
    let mut worst_ratio = -1.0f64;
    for (index, (&o, &want)) in out.iter().zip(reference).enumerate() {
        let got = o.to_f64();
        let ok = if want.is_nan() {
            got.is_nan()
        } else if want.is_infinite() {
            got == want
        } else if !got.is_finite() {
            false
        } else {
            let err = (got - want).abs();
            diff2 += err * err;
            ref2 += want * want;
            let allowed = tolerance.atol + tolerance.rtol * want.abs();
            let ratio = if allowed > 0.0 {
                err / allowed
            } else if err > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            if ratio > worst_ratio {
                worst_ratio = ratio;
                report.worst = Some(Element { index, got, want });
            }
            err <= allowed
        };
        if !ok {
            report.mismatches += 1;
            if report.first_mismatches.len() < SHOWN {
                report.first_mismatches.push(Element { index, got, want });
            }
        }
    }
    report.rel_l2 = if ref2 > 0.0 {
        (diff2 / ref2).sqrt()
    } else {
        diff2.sqrt()
    };
    report
}

/// `‖out − ref‖₂ / ‖ref‖₂` over the elements where the reference is finite.
pub fn rel_l2_error<T: ToF64>(out: &[T], reference: &[f64]) -> f64 {
    compare(out, reference, Tolerance::new(f64::INFINITY, 0.0)).rel_l2
}

/// Indices of `out` that still hold `poison` bit for bit: elements the call never wrote.
pub fn unwritten<T: bytemuck::Pod>(out: &[T], poison: T) -> Vec<usize> {
    let poison = bytemuck::bytes_of(&poison);
    out.iter()
        .enumerate()
        .filter(|(_, v)| bytemuck::bytes_of(*v) == poison)
        .map(|(i, _)| i)
        .collect()
}

/// Central finite differences of a scalar function `f` at `x`: `(f(x + h·eᵢ) − f(x − h·eᵢ)) / 2h`
/// for every i, with `h` scaled by `max(1, |xᵢ|)`.
pub fn numerical_gradient(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            let step = h * x[i].abs().max(1.0);
            probe[i] = x[i] + step;
            let up = f(&probe);
            probe[i] = x[i] - step;
            let down = f(&probe);
            probe[i] = x[i];
            (up - down) / (2.0 * step)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_within_tolerance_and_reports_the_worst() {
        let r = compare(
            &[1.0f32, 2.001, -3.0],
            &[1.0, 2.0, -3.0],
            Tolerance::new(0.0, 1e-3),
        );
        assert!(r.passed(), "{r}");
        assert_eq!(r.worst.unwrap().index, 1);
    }

    #[test]
    fn fails_outside_tolerance_and_lists_the_mismatch() {
        let r = compare(
            &[1.0f32, 2.1, -3.0],
            &[1.0, 2.0, -3.0],
            Tolerance::new(0.0, 1e-3),
        );
        assert!(!r.passed());
        assert_eq!(r.mismatches, 1);
        assert_eq!(r.first_mismatches[0].index, 1);
        assert!(r.to_string().contains("[1] got"), "{r}");
    }

    #[test]
    fn nan_fails_unless_expected_and_infinities_must_match() {
        let loose = Tolerance::new(1e9, 1e9).with_rel_l2(f64::INFINITY);
        assert!(!compare(&[f32::NAN], &[1.0], loose).passed());
        assert!(compare(&[f32::NAN], &[f64::NAN], loose).passed());
        assert!(!compare(&[1.0f32], &[f64::NAN], loose).passed());
        assert!(!compare(&[f32::INFINITY], &[f64::NEG_INFINITY], loose).passed());
        assert!(!compare(&[f32::INFINITY], &[1e30], loose).passed());
        assert!(compare(&[f16::INFINITY], &[f64::INFINITY], Tolerance::EXACT).passed());
    }

    #[test]
    fn rel_l2_bound_applies_on_its_own() {
        let r = compare(
            &[1.1f64, 1.1],
            &[1.0, 1.0],
            Tolerance::new(1.0, 0.0).with_rel_l2(0.05),
        );
        assert!(
            !r.passed() && r.mismatches == 0 && (r.rel_l2 - 0.1).abs() < 1e-12,
            "{r}"
        );
    }

    #[test]
    fn length_mismatch_fails() {
        assert!(!compare(&[1.0f32], &[1.0, 2.0], Tolerance::new(1.0, 1.0)).passed());
    }

    #[test]
    fn unwritten_finds_poisoned_elements() {
        let poison = f32::from_bits(0xDEAD_BEEF);
        assert_eq!(unwritten(&[1.0, poison, 0.0, poison], poison), vec![1, 3]);
    }

    #[test]
    fn numerical_gradient_of_a_cubic() {
        let g = numerical_gradient(|x| x[0].powi(3) + 2.0 * x[1], &[2.0, -1.0], 1e-5);
        assert!(
            (g[0] - 12.0).abs() < 1e-6 && (g[1] - 2.0).abs() < 1e-6,
            "{g:?}"
        );
    }
}
