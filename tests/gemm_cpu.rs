//! GEMM CPU reference: against an independent naive f64 product and against finite differences.

mod common;

use ampkit::check::{compare, numerical_gradient, Tolerance};
use ampkit::cpu::gemm::{bias_grad, gemm, gemm_f64, Epilogue};
use ampkit::cpu::relu;
use ampkit::shape::{GemmShape, Layout};
use common::{assert_all_written, assert_close, rng};
use half::f16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

const LAYOUTS: [Layout; 3] = [Layout::Forward, Layout::Dgrad, Layout::Wgrad];

/// Element (row, col) of the logical A[m,k] and B[k,n] for a layout, read from the stored
/// operands by plain index arithmetic (written independently of the library's strides).
fn naive(layout: Layout, m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let a_at = |i: usize, p: usize| match layout {
        Layout::Forward | Layout::Dgrad => a[i * k + p],
        Layout::Wgrad => a[p * m + i],
    };
    let b_at = |p: usize, j: usize| match layout {
        Layout::Forward => b[j * k + p],
        Layout::Dgrad | Layout::Wgrad => b[p * n + j],
    };
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a_at(i, p) * b_at(p, j)).sum();
        }
    }
    c
}

fn naive_epilogue(
    acc: &[f64],
    n: usize,
    alpha: f64,
    beta: f64,
    bias: Option<&[f32]>,
    relu: bool,
    old: &[f64],
) -> Vec<f64> {
    acc.iter()
        .enumerate()
        .map(|(idx, &v)| {
            let mut v = alpha * v + bias.map_or(0.0, |b| f64::from(b[idx % n]));
            if beta != 0.0 {
                v += beta * old[idx];
            }
            if relu && v <= 0.0 {
                0.0
            } else {
                v
            }
        })
        .collect()
}

fn random_f16(rng: &mut StdRng, len: usize, scale: f32) -> Vec<f16> {
    (0..len)
        .map(|_| f16::from_f32(rng.gen_range(-scale..scale)))
        .collect()
}

fn widen(x: &[f16]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

/// One random case: every layout and output type against the naive f64 product.
fn check_case(rng: &mut StdRng, m: usize, n: usize, k: usize) {
    for layout in LAYOUTS {
        let a = random_f16(rng, m * k, 1.0);
        let b = random_f16(rng, k * n, 1.0);
        let bias: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let old: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let (alpha, beta, use_bias, relu) = (
            [1.0f32, 0.5, -2.0][rng.gen_range(0..3)],
            [0.0f32, 1.0, 0.25][rng.gen_range(0..3)],
            rng.gen_bool(0.5),
            rng.gen_bool(0.5),
        );
        let epi = Epilogue {
            alpha,
            beta,
            bias: use_bias.then_some(&bias[..]),
            relu,
        };
        let old64: Vec<f64> = old.iter().map(|&v| f64::from(v)).collect();
        let want = naive_epilogue(
            &naive(layout, m, n, k, &widen(&a), &widen(&b)),
            n,
            alpha.into(),
            beta.into(),
            epi.bias,
            relu,
            &old64,
        );
        let what = format!(
            "{layout:?} m={m} n={n} k={k} alpha={alpha} beta={beta} bias={use_bias} relu={relu}"
        );

        // f32 output: products are exact, only f32 sums round: about sqrt(k)·2^-24 times the size
        // of the terms, which with cancellation can be far above 2^-24·|C|. So the elementwise
        // bound scales with sqrt(k)·|alpha| (the terms are O(1)), and the relative L2 bound (against ‖C‖) is looser than 1e-6.
        let mut c32 = old.clone();
        gemm(GemmShape::new(layout, m, n, k), &a, &b, &epi, &mut c32).unwrap();
        let scale = (k as f64).sqrt().max(1.0) * f64::from(alpha.abs()).max(1.0);
        let r = compare(
            &c32,
            &want,
            Tolerance::new(1e-5 * scale, 1e-5).with_rel_l2(1e-4),
        );
        assert!(r.passed(), "{what} f32 out: {r}");

        // f16 output: one more rounding, half an f16 ulp (2^-11 relative) at most, plus the
        // f32 error; results under 2^-14 land on the subnormal grid (2^-24 absolute).
        let mut c16: Vec<f16> = old.iter().map(|&v| f16::from_f32(v)).collect();
        let old16: Vec<f64> = c16.iter().map(|v| v.to_f64()).collect();
        let want16 = naive_epilogue(
            &naive(layout, m, n, k, &widen(&a), &widen(&b)),
            n,
            alpha.into(),
            beta.into(),
            epi.bias,
            relu,
            &old16,
        );
        gemm(GemmShape::new(layout, m, n, k), &a, &b, &epi, &mut c16).unwrap();
        let r = compare(
            &c16,
            &want16,
            Tolerance::new(1e-5 * scale + 6e-8, 4.9e-4 + 1e-5).with_rel_l2(1e-3),
        );
        assert!(r.passed(), "{what} f16 out: {r}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_shapes_match_the_naive_product(
        m in prop::sample::select(vec![1usize, 2, 7, 10, 13, 31, 64, 97]),
        n in prop::sample::select(vec![1usize, 3, 10, 17, 128, 131]),
        k in prop::sample::select(vec![1usize, 5, 10, 16, 101, 784]),
        seed in any::<u64>(),
    ) {
        use rand::SeedableRng;
        check_case(&mut StdRng::seed_from_u64(seed), m, n, k);
    }
}

#[test]
fn mlp_sized_shapes_match_the_naive_product() {
    let mut rng = rng("gemm mlp shapes");
    // The default MLP at a small batch: 784→512 forward, its dgrad and wgrad, and 512→10.
    for (m, n, k) in [(64, 512, 784), (64, 10, 512), (67, 784, 512), (10, 512, 67)] {
        check_case(&mut rng, m, n, k);
    }
}

#[test]
fn products_beyond_f16_range_accumulate_in_f32() {
    // 60000² = 3.6e9 overflows f16 (max 65504) but is exact in f32, and so is their sum.
    let a = vec![f16::from_f32(60000.0); 3];
    let b = vec![f16::from_f32(60000.0); 3];
    let mut c32 = [0f32];
    gemm(
        GemmShape::new(Layout::Forward, 1, 1, 3),
        &a,
        &b,
        &Epilogue::plain(),
        &mut c32,
    )
    .unwrap();
    assert_eq!(c32[0], 1.08e10);
    // A large positive and a large negative product cancel exactly before the f16 rounding.
    let a = [
        f16::from_f32(60000.0),
        f16::from_f32(60000.0),
        f16::from_f32(0.5),
    ];
    let b = [
        f16::from_f32(60000.0),
        f16::from_f32(-60000.0),
        f16::from_f32(3.0),
    ];
    let mut c16 = [f16::ZERO];
    gemm(
        GemmShape::new(Layout::Forward, 1, 1, 3),
        &a,
        &b,
        &Epilogue::plain(),
        &mut c16,
    )
    .unwrap();
    assert_eq!(c16[0].to_f32(), 1.5);
    // And an f16 output that does not fit becomes inf.
    gemm(
        GemmShape::new(Layout::Forward, 1, 1, 1),
        &a[..1],
        &b[..1],
        &Epilogue::plain(),
        &mut c16,
    )
    .unwrap();
    assert_eq!(c16[0], f16::INFINITY);
}

#[test]
fn beta_zero_never_reads_the_output_and_every_element_is_written() {
    let mut rng = rng("gemm poison");
    let (m, n, k) = (33, 19, 40);
    for layout in LAYOUTS {
        let a = random_f16(&mut rng, m * k, 2.0);
        let b = random_f16(&mut rng, k * n, 2.0);
        let poison = f32::from_bits(0x7FC0_DEAD); // a NaN: any read of it would show
        let mut c = vec![poison; m * n];
        gemm(
            GemmShape::new(layout, m, n, k),
            &a,
            &b,
            &Epilogue::plain(),
            &mut c,
        )
        .unwrap();
        assert_all_written(&format!("{layout:?}"), &c, poison);
        assert!(
            c.iter().all(|v| v.is_finite()),
            "{layout:?}: NaN leaked from the old C"
        );
    }
}

#[test]
fn non_finite_operands_propagate() {
    let a = [f16::INFINITY, f16::ONE];
    let b = [f16::ZERO, f16::ONE]; // inf·0 = NaN
    let mut c = [0f32];
    gemm(
        GemmShape::new(Layout::Forward, 1, 1, 2),
        &a,
        &b,
        &Epilogue::plain(),
        &mut c,
    )
    .unwrap();
    assert!(c[0].is_nan());
    let mut c = [0f32];
    gemm(
        GemmShape::new(Layout::Forward, 1, 1, 2),
        &a,
        &[f16::ONE, f16::ONE],
        &Epilogue::bias(&[1.0], true),
        &mut c,
    )
    .unwrap();
    assert_eq!(c[0], f32::INFINITY);
}

#[test]
fn zero_sized_dimensions() {
    let bias = [1.5f32, -2.0];
    let mut c = [9.0f32; 2];
    gemm::<f16, f32>(
        GemmShape::new(Layout::Forward, 1, 2, 0),
        &[],
        &[],
        &Epilogue::bias(&bias, true),
        &mut c,
    )
    .unwrap();
    assert_eq!(c, [1.5, 0.0], "k = 0: the epilogue of an empty sum");
    gemm::<f16, f32>(
        GemmShape::new(Layout::Wgrad, 0, 2, 3),
        &[],
        &[f16::ONE; 6],
        &Epilogue::plain(),
        &mut [],
    )
    .unwrap();
}

/// L = Σ G∘relu?(X·Wᵀ + b) and its gradients through the library's backward layouts.
#[derive(Clone)]
struct LinearCheck {
    m: usize,
    n: usize,
    k: usize,
    x: Vec<f64>,
    w: Vec<f64>,
    b: Vec<f32>,
    g: Vec<f64>,
    relu: bool,
}

impl LinearCheck {
    fn new(rng: &mut StdRng, m: usize, n: usize, k: usize, relu: bool) -> Self {
        let mut r = |len: usize| {
            (0..len)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect::<Vec<f64>>()
        };
        let (x, w, g) = (r(m * k), r(n * k), r(m * n));
        let mut check = LinearCheck {
            m,
            n,
            k,
            x,
            w,
            b: vec![],
            g,
            relu,
        };
        // Redraw the bias until no pre-activation sits within 1e-3 of ReLU's kink, where a finite
        // difference would straddle it.
        loop {
            check.b = r(n).iter().map(|&v| v as f32).collect();
            let linear = LinearCheck {
                relu: false,
                ..check.clone()
            };
            let z = linear.forward(&check.x, &check.w, &check.b);
            if z.iter().all(|v| v.abs() > 1e-3) {
                return check;
            }
        }
    }

    fn forward(&self, x: &[f64], w: &[f64], b: &[f32]) -> Vec<f64> {
        let mut y = vec![0.0; self.m * self.n];
        gemm_f64(
            GemmShape::new(Layout::Forward, self.m, self.n, self.k),
            x,
            w,
            &Epilogue::bias(b, self.relu),
            &mut y,
        )
        .unwrap();
        y
    }

    fn loss(&self, y: &[f64]) -> f64 {
        y.iter().zip(&self.g).map(|(y, g)| y * g).sum()
    }

    fn run(&self) {
        let (m, n, k) = (self.m, self.n, self.k);
        let y = self.forward(&self.x, &self.w, &self.b);
        let mut dz = vec![0.0; m * n];
        if self.relu {
            relu::backward(&self.g, &y, &mut dz).unwrap();
        } else {
            dz.copy_from_slice(&self.g);
        }
        let mut dx = vec![0.0; m * k];
        gemm_f64(
            GemmShape::new(Layout::Dgrad, m, k, n),
            &dz,
            &self.w,
            &Epilogue::plain(),
            &mut dx,
        )
        .unwrap();
        let mut dw = vec![0.0; n * k];
        gemm_f64(
            GemmShape::new(Layout::Wgrad, n, k, m),
            &dz,
            &self.x,
            &Epilogue::plain(),
            &mut dw,
        )
        .unwrap();
        let mut db = vec![0.0f64; n];
        bias_grad(&dz, m, n, &mut db).unwrap();

        // Finite differences in f64: truncation O(h²) and rounding O(ε/h) both near 1e-9 here.
        let tol = Tolerance::new(1e-7, 1e-6);
        let what = format!("m={m} n={n} k={k} relu={}", self.relu);
        let num_dx = numerical_gradient(
            |x| self.loss(&self.forward(x, &self.w, &self.b)),
            &self.x,
            1e-5,
        );
        assert_close(&format!("dX {what}"), &dx, &num_dx, tol);
        let num_dw = numerical_gradient(
            |w| self.loss(&self.forward(&self.x, w, &self.b)),
            &self.w,
            1e-5,
        );
        assert_close(&format!("dW {what}"), &dw, &num_dw, tol);
        // The bias is f32 in the epilogue, so differentiate it as an extra input column of ones
        // whose weights are the bias: X' = [X | 1], W' = [W | b] gives X'·W'ᵀ = X·Wᵀ + b.
        let x1: Vec<f64> = self
            .x
            .chunks(k)
            .flat_map(|r| r.iter().copied().chain([1.0]))
            .collect();
        let wb: Vec<f64> = self
            .w
            .chunks(k)
            .zip(&self.b)
            .flat_map(|(r, &b)| r.iter().copied().chain([f64::from(b)]))
            .collect();
        let folded = |w1: &[f64]| {
            let mut y = vec![0.0; m * n];
            gemm_f64(
                GemmShape::new(Layout::Forward, m, n, k + 1),
                &x1,
                w1,
                &Epilogue {
                    relu: self.relu,
                    ..Epilogue::plain()
                },
                &mut y,
            )
            .unwrap();
            self.loss(&y)
        };
        assert_close(
            &format!("folded forward {what}"),
            &[folded(&wb)],
            &[self.loss(&y)],
            Tolerance::new(1e-12, 1e-12),
        );
        let num_wb = numerical_gradient(folded, &wb, 1e-5);
        let num_db: Vec<f64> = num_wb.chunks(k + 1).map(|r| r[k]).collect();
        assert_close(&format!("db {what}"), &db, &num_db, tol);
    }
}

#[test]
fn backward_layouts_match_finite_differences() {
    let mut rng = rng("gemm gradcheck");
    for (m, n, k) in [(1, 1, 1), (3, 4, 5), (7, 2, 10), (10, 13, 3)] {
        for relu in [false, true] {
            LinearCheck::new(&mut rng, m, n, k, relu).run();
        }
    }
}

#[test]
fn bias_grad_is_the_same_on_any_thread_count() {
    let mut rng = rng("bias_grad threads");
    let (rows, cols) = (4099, 515);
    let dy = random_f16(&mut rng, rows * cols, 8.0);
    let mut many = vec![0f32; cols];
    bias_grad(&dy, rows, cols, &mut many).unwrap();
    let mut one = vec![0f32; cols];
    common::on_threads(1, || bias_grad(&dy, rows, cols, &mut one).unwrap());
    assert_eq!(
        many.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        one.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    let want: Vec<f64> = (0..cols)
        .map(|j| (0..rows).map(|i| dy[i * cols + j].to_f64()).sum())
        .collect();
    assert_close("bias_grad", &many, &want, Tolerance::new(0.0, 6e-8));
}
