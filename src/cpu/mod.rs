//! CPU reference implementations (rayon). Each module computes exactly the function of its GPU
//! twin in [`crate::ops`] (same name, same argument order); tests compare the two through
//! [`crate::check`], and the CPU backend trains with these when no GPU exists.
//!
//! Functions that matter for gradient checks are generic over [`Element`], so the same code also
//! runs in f64 as the high-precision reference.

pub mod cast;
pub mod gemm;
pub mod layernorm;
pub mod optim;
pub mod relu;
pub mod scaler;
pub mod softmax;
pub mod unscale;

use half::f16;

/// A storage type ops read and write: f16 and f32 in training, f64 for references.
pub trait Element: Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// Widens (or narrows, for f64) to f32; exact for f16 and f32.
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type, to nearest even.
    fn from_f32(x: f32) -> Self;
    /// Widens to f64; exact.
    fn to_f64(self) -> f64;
    /// Rounds an f64 to this type, to nearest even (once: no double rounding through f32).
    fn from_f64(x: f64) -> Self;
}

impl Element for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Element for f64 {
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f32(x: f32) -> Self {
        f64::from(x)
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}
