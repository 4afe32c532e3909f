//! Which gradient tensors of a step held an inf or NaN: the overflow locator's per-tensor flags.

use std::fmt;

/// The set of gradient tensors (by position in the list the unscale was given, which for the
/// training loop is [`crate::nn::MlpConfig::parameter_specs`] order) in which the fused unscale +
/// inf check found an inf or NaN. The unscale kernel sets a tensor's bit in the same pass that
/// sets `found_inf`, so a clean step pays nothing for it.
///
/// Tensors 0 to 62 have a bit each; tensors 63 and later share bit 63
/// ([`NonFinite::past_last_bit`]): a model with more than 63 parameter tensors still learns
/// that one of them overflowed, not which.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NonFinite(pub u64);

impl NonFinite {
    /// The shared bit of tensors 63 and later.
    pub const LAST_BIT: usize = 63;

    /// No tensor flagged.
    pub const NONE: NonFinite = NonFinite(0);

    /// The set with tensor `t` added (tensors past [`NonFinite::LAST_BIT`] set that bit).
    pub fn with(self, t: usize) -> NonFinite {
        NonFinite(self.0 | 1 << t.min(Self::LAST_BIT))
    }

    /// The set of the tensors whose flag is true, in order.
    pub fn from_flags(flags: impl IntoIterator<Item = bool>) -> NonFinite {
        (flags.into_iter().enumerate())
            .filter(|(_, f)| *f)
            .fold(NonFinite::NONE, |s, (t, _)| s.with(t))
    }

    /// The set from the two mask words the GPU keeps (bit `t` of `lo | hi << 32`).
    pub fn from_words(lo: u32, hi: u32) -> NonFinite {
        NonFinite(u64::from(lo) | u64::from(hi) << 32)
    }

    /// Whether no tensor was flagged (a clean step).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether tensor `t` was flagged (for `t` ≥ 63: whether any tensor from 63 on was).
    pub fn contains(self, t: usize) -> bool {
        self.0 >> t.min(Self::LAST_BIT) & 1 == 1
    }

    /// Whether bit 63 is set, i.e. some tensor at position 63 or later overflowed.
    pub fn past_last_bit(self) -> bool {
        self.contains(Self::LAST_BIT)
    }

    /// The flagged positions, ascending (63 standing for "63 or later").
    pub fn indices(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |&t| self.0 >> t & 1 == 1)
    }

    /// The flagged tensors' names, from `names` in the same order (PyTorch `state_dict` keys
    /// for the training loop: `0.weight`, `2.bias`, ...). Bit 63 of a list longer than 63
    /// reads `"<names[63]> or a later tensor"`; a position past `names` reads `tensor <t>`.
    pub fn names<S: AsRef<str>>(self, names: &[S]) -> Vec<String> {
        self.indices()
            .map(|t| match names.get(t) {
                Some(n) if t == Self::LAST_BIT && names.len() > t + 1 => {
                    format!("{} or a later tensor", n.as_ref())
                }
                Some(n) => n.as_ref().to_string(),
                None => format!("tensor {t}"),
            })
            .collect()
    }
}

impl fmt::Display for NonFinite {
    /// The positions as `{0, 1}` (`{}` when empty).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.indices().map(|t| t.to_string()).collect();
        write!(f, "{{{}}}", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_name_their_tensors() {
        let s = NonFinite::from_flags([true, false, false, true]);
        assert_eq!(s.indices().collect::<Vec<_>>(), [0, 3]);
        assert!(s.contains(3) && !s.contains(1) && !s.is_empty());
        assert_eq!(s.to_string(), "{0, 3}");
        let names = ["0.weight", "0.bias", "2.weight", "2.bias"];
        assert_eq!(s.names(&names), ["0.weight", "2.bias"]);
        assert_eq!(NonFinite::NONE.with(5).names(&names), ["tensor 5"]);
        assert_eq!(NonFinite::from_words(1, 1 << 31), NonFinite(1 | 1 << 63));
        assert!(NonFinite::default().is_empty());
        let many: Vec<String> = (0..70).map(|t| format!("p{t}")).collect();
        let late = NonFinite::NONE.with(66);
        assert!(late.past_last_bit() && late.contains(64));
        assert_eq!(late.names(&many), ["p63 or a later tensor"]);
        assert_eq!(NonFinite::NONE.with(63).names(&many[..64]), ["p63"]);
    }
}
