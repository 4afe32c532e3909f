//! Gradient clipping, PyTorch's `clip_grad_norm_` and `clip_grad_value_`, on the CPU: the
//! reference of the fused GPU path (the unscale pass computes the norm, the optimizer applies
//! the factor).
//!
//! **Norm.** The global L2 norm of every gradient, `sqrt(Σ g²)`, summed in f64 with Neumaier
//! compensation (each `f64(g)²` is exact, so the only rounding is the compensated sum's,
//! ~2⁻¹⁰⁶ relative): the result does not depend on the order the GPU's blocks add in, and its
//! f32 rounding is the correctly rounded norm (PyTorch's f32 `_foreach_norm` is within a few f32
//! ulps of it). An inf/NaN gradient gives a non-finite norm; such a step is skipped by the scaler
//! and never clipped.
//!
//! **Factor.** As `torch.nn.utils.clip_grad_norm_` forms it from the f32 total norm `n`:
//! `clip_coef = max_norm / (n + 1e-6)` — in PyTorch `python_float / tensor` is
//! `tensor.reciprocal() * python_float`, so `f32(f32(1 / f32(n + f32(1e-6))) · f32(max_norm))`
//! — then clamped to at most 1.0, and every gradient multiplied by it in f32 (also when it is 1,
//! which changes no bit).
//!
//! **Value.** `clip_grad_value_(v)`: every gradient clamped to `[−v, v]`.

/// Neumaier-compensated f64 accumulator of squares: `hi + lo` is the sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SquareSum {
    /// The running sum.
    pub hi: f64,
    /// The compensation (rounding errors of `hi` so far).
    pub lo: f64,
}

impl SquareSum {
    /// Adds `x²` (exact in f64 for an f32 `x`).
    pub fn add(&mut self, x: f32) {
        let sq = f64::from(x) * f64::from(x);
        self.add_f64(sq);
    }

    fn add_f64(&mut self, v: f64) {
        let t = self.hi + v;
        self.lo += if self.hi.abs() >= v.abs() {
            (self.hi - t) + v
        } else {
            (v - t) + self.hi
        };
        self.hi = t;
    }

    /// Merges another partial sum (as the GPU's blocks merge theirs).
    pub fn merge(&mut self, other: SquareSum) {
        self.add_f64(other.hi);
        self.lo += other.lo;
    }

    /// `sqrt(hi + lo)` in f64.
    pub fn norm(&self) -> f64 {
        (self.hi + self.lo).sqrt()
    }
}

/// The global L2 norm of all `grads`, in f64 (see the module doc).
pub fn grad_norm(grads: &[&[f32]]) -> f64 {
    let mut total = SquareSum::default();
    for g in grads {
        let mut s = SquareSum::default();
        g.iter().for_each(|&x| s.add(x));
        total.merge(s);
    }
    total.norm()
}

/// PyTorch's clip factor for an f32 total norm `norm` and `max_norm` (see the module doc):
/// `min(f32(f32(1 / (norm + 1e-6)) · max_norm), 1)`.
pub fn clip_coefficient(norm: f32, max_norm: f32) -> f32 {
    let reciprocal = 1.0f32 / (norm + 1e-6f32);
    (reciprocal * max_norm).min(1.0)
}

/// `clip_grad_norm_(grads, max_norm)`: scales every gradient in place by
/// [`clip_coefficient`] of their [`grad_norm`] and returns the total norm (f32, as PyTorch's
/// return value).
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let views: Vec<&[f32]> = grads.iter().map(|g| &**g).collect();
    let norm = grad_norm(&views) as f32;
    let coef = clip_coefficient(norm, max_norm);
    grads
        .iter_mut()
        .for_each(|g| g.iter_mut().for_each(|x| *x *= coef));
    norm
}

/// `clip_grad_value_(grads, value)`: every gradient clamped to `[−value, value]` (NaN stays
/// NaN, as `clamp_` keeps it).
pub fn clip_grad_value(grads: &mut [&mut [f32]], value: f32) {
    for g in grads.iter_mut() {
        for x in g.iter_mut() {
            if !x.is_nan() {
                *x = x.clamp(-value, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_norm_is_the_exact_one_rounded() {
        // 3-4-5 across tensors, and values whose f32 squares overflow f32 but not f64.
        assert_eq!(grad_norm(&[&[3.0], &[], &[4.0]]), 5.0);
        let big = [3e30f32, 4e30];
        let want = f64::from(big[0]).hypot(f64::from(big[1]));
        assert!((grad_norm(&[&big]) / want - 1.0).abs() < 1e-15);
        assert!((big[0] * big[0]).is_infinite(), "the f32 square overflows");
        // A sum that plain f64 addition gets wrong: 1 + many tiny squares.
        let tiny = vec![1e-9f32; 1_000_000];
        let want = (1.0f64 + 1e6 * f64::from(1e-9f32).powi(2)).sqrt();
        let got = grad_norm(&[&[1.0], &tiny]);
        assert!(((got - want) / want).abs() < 1e-15, "{got} {want}");
        assert!(!grad_norm(&[&[f32::INFINITY]]).is_finite());
        assert!(!grad_norm(&[&[f32::NAN, 1.0]]).is_finite());
        // Merging partial sums in another grouping gives the same f32 norm.
        let g: Vec<f32> = (0..10_001)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let (a, b) = g.split_at(3333);
        let mut left = SquareSum::default();
        a.iter().for_each(|&x| left.add(x));
        let mut right = SquareSum::default();
        b.iter().for_each(|&x| right.add(x));
        left.merge(right);
        assert_eq!(left.norm() as f32, grad_norm(&[&g]) as f32);
    }

    #[test]
    fn the_factor_follows_pytorch() {
        // Below max_norm: clamped to 1, and multiplying by it changes no bit.
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
        // 1 / (2 + 1e-6) rounded to f32, times 1, rounded.
        let c = clip_coefficient(2.0, 1.0);
        assert_eq!(c, 1.0f32 / (2.0f32 + 1e-6f32));
        assert!((f64::from(c) - 0.5).abs() < 1e-6);
        let mut g = vec![vec![3.0f32], vec![4.0]];
        let mut views: Vec<&mut [f32]> = g.iter_mut().map(|v| &mut v[..]).collect();
        let n = clip_grad_norm(&mut views, 1.0);
        assert_eq!(n, 5.0);
        let coef = clip_coefficient(5.0, 1.0);
        assert_eq!(g, [[3.0 * coef], [4.0 * coef]]);
        let mut g = [vec![-3.0f32, 0.5, f32::NAN, 2.0]];
        let mut views: Vec<&mut [f32]> = g.iter_mut().map(|v| &mut v[..]).collect();
        clip_grad_value(&mut views, 1.0);
        assert_eq!(g[0][..2], [-1.0, 0.5]);
        assert!(g[0][2].is_nan());
        assert_eq!(g[0][3], 1.0);
    }
}
