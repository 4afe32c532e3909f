//! The GEMM parity tests' shared case: random operands of either 16-bit type, a random epilogue,
//! a poisoned or random old C, and the check of one GPU GEMM (forced plan or the model's) against
//! the f64 reference with the output type's tolerance. Used by `tests/gemm_gpu.rs` (f16) and
//! `tests/gemm_bf16_gpu.rs` (bf16).
#![allow(dead_code)]

use crate::common::assert_all_written;
use ampkit::check::{compare, ToF64, Tolerance};
use ampkit::cpu::gemm::{gemm_f64, Epilogue as CpuEpilogue};
use ampkit::cuda::Gpu;
use ampkit::ops::gemm::{Epilogue, GemmOperand, GemmOutput};
use ampkit::shape::{GemmShape, Layout};
use ampkit::tuning::gemm::{gemm_with_plan, Plan};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::Rng;

/// A NaN: an unwritten (or read-before-write) f16 shows.
pub const POISON_F16: u16 = 0x7E5A;
/// A NaN: an unwritten bf16 shows.
pub const POISON_BF16: u16 = 0x7FDA;
/// A NaN: an unwritten f32 shows.
pub const POISON_F32: u32 = 0x7FC0_5A5A;

/// Stored sizes of A and B for a shape.
pub fn operand_lens(s: GemmShape) -> (usize, usize) {
    match s.layout {
        Layout::Forward => (s.m * s.k, s.n * s.k),
        Layout::Dgrad => (s.m * s.k, s.k * s.n),
        Layout::Wgrad => (s.k * s.m, s.k * s.n),
    }
}

/// An operand type: uniform random values in (-1, 1), rounded to it.
pub trait Operand: GemmOperand + ToF64 + bytemuck::Pod {
    fn random(rng: &mut StdRng, len: usize) -> Vec<Self>;
}
impl Operand for f16 {
    fn random(rng: &mut StdRng, len: usize) -> Vec<f16> {
        (0..len)
            .map(|_| f16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect()
    }
}
impl Operand for bf16 {
    fn random(rng: &mut StdRng, len: usize) -> Vec<bf16> {
        (0..len)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect()
    }
}

/// An output type for operands of type `T`, with its poison and tolerance.
pub trait Out<T: GemmOperand>: GemmOutput<T> + ToF64 + bytemuck::Pod {
    const POISON: Self;
    fn from_f64(v: f64) -> Self;
    /// Elementwise tolerance for results of a length-k dot product of O(1) terms scaled by alpha.
    fn tolerance(k: usize, alpha: f32) -> Tolerance;
}

/// `sqrt(k)·max(1, |alpha|)`: f32 sums err by about sqrt(k)·2^-24 of the terms' size.
fn sum_scale(k: usize, alpha: f32) -> f64 {
    (k as f64).sqrt().max(1.0) * f64::from(alpha.abs()).max(1.0)
}

impl<T: GemmOperand> Out<T> for f32 {
    const POISON: f32 = f32::from_bits(POISON_F32);
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn tolerance(k: usize, alpha: f32) -> Tolerance {
        // Products of 16-bit values are exact in f32; only the sums round.
        Tolerance::new(1e-5 * sum_scale(k, alpha), 1e-5).with_rel_l2(1e-3)
    }
}
impl Out<f16> for f16 {
    const POISON: f16 = f16::from_bits(POISON_F16);
    fn from_f64(v: f64) -> f16 {
        f16::from_f64(v)
    }
    fn tolerance(k: usize, alpha: f32) -> Tolerance {
        // One more rounding: half an f16 ulp (2^-11 relative), 2^-24 absolute on the subnormal grid.
        Tolerance::new(1e-5 * sum_scale(k, alpha) + 6e-8, 4.9e-4 + 1e-5).with_rel_l2(1e-3)
    }
}
impl Out<bf16> for bf16 {
    const POISON: bf16 = bf16::from_bits(POISON_BF16);
    fn from_f64(v: f64) -> bf16 {
        bf16::from_f64(v)
    }
    fn tolerance(k: usize, alpha: f32) -> Tolerance {
        // One more rounding: half a bf16 ulp (2^-8 relative); bf16 shares f32's subnormal grid.
        Tolerance::new(1e-5 * sum_scale(k, alpha) + 1e-38, 3.91e-3 + 1e-5).with_rel_l2(4e-3)
    }
}

/// One random GEMM problem with operands of type `T`.
pub struct Case<T> {
    pub shape: GemmShape,
    pub a: Vec<T>,
    pub b: Vec<T>,
    pub bias: Vec<f32>,
    pub use_bias: bool,
    pub relu: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl<T: Operand> Case<T> {
    pub fn random(rng: &mut StdRng, shape: GemmShape) -> Case<T> {
        let (la, lb) = operand_lens(shape);
        Case {
            shape,
            a: T::random(rng, la),
            b: T::random(rng, lb),
            bias: (0..shape.n).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            use_bias: rng.gen_bool(0.5),
            relu: rng.gen_bool(0.5),
            alpha: [1.0, 0.5, -2.0][rng.gen_range(0..3)],
            beta: [0.0, 0.0, 1.0, -0.5][rng.gen_range(0..4)],
        }
    }

    /// Runs the GPU GEMM (forced plan or the model's) and checks it against the f64 reference;
    /// returns the relative L2 error.
    pub fn check<O: Out<T>>(
        &self,
        gpu: &Gpu,
        rng: &mut StdRng,
        forced: Option<Plan>,
        what: &str,
    ) -> f64 {
        let GemmShape { m, n, k, .. } = self.shape;
        let wide = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
        // beta = 0: C starts poisoned and must be fully overwritten; otherwise random old values.
        let old: Vec<O> = if self.beta == 0.0 {
            vec![O::POISON; m * n]
        } else {
            (0..m * n)
                .map(|_| O::from_f64(rng.gen_range(-1.0..1.0)))
                .collect()
        };
        let epi_cpu = CpuEpilogue {
            alpha: self.alpha,
            beta: self.beta,
            bias: self.use_bias.then_some(&self.bias[..]),
            relu: self.relu,
        };
        let mut want: Vec<f64> = old.iter().map(|v| v.to_f64()).collect();
        gemm_f64(
            self.shape,
            &wide(&self.a),
            &wide(&self.b),
            &epi_cpu,
            &mut want,
        )
        .unwrap();

        let a = gpu.upload(&self.a).unwrap();
        let b = gpu.upload(&self.b).unwrap();
        let bias = gpu.upload(&self.bias).unwrap();
        let bias_view = bias.slice(..);
        let mut c = gpu.upload(&old).unwrap();
        let epi = Epilogue {
            alpha: self.alpha,
            beta: self.beta,
            bias: self.use_bias.then_some(&bias_view),
            relu: self.relu,
        };
        gemm_with_plan(gpu, self.shape, forced, &a, &b, &epi, &mut c).unwrap();
        let got: Vec<O> = gpu.download(&c).unwrap();
        let what = format!(
            "{what} {:?} m={m} n={n} k={k} {} × {} alpha={} beta={} bias={} relu={}",
            self.shape.layout,
            std::any::type_name::<T>(),
            std::any::type_name::<O>(),
            self.alpha,
            self.beta,
            self.use_bias,
            self.relu
        );
        if self.beta == 0.0 {
            assert_all_written(&what, &got, O::POISON);
        }
        let report = compare(&got, &want, O::tolerance(k, self.alpha));
        assert!(report.passed(), "{what}: {report}");
        report.rel_l2
    }
}
