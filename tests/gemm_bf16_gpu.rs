//! The BF16 GEMM (`kernels/gemm_bf16.cu`, `kernels/gemm_sm90_bf16.cu`) against the f64 CPU
//! reference: every layout, every tile configuration this GPU runs (and the unaligned one) at
//! K-split 1 and 3, bf16 and f32 outputs, every epilogue, odd shapes and K = 1, poisoned outputs;
//! the output's rounding bit for bit; bf16's f32-sized range; the bias gradient of a bf16
//! gradient. The f16 GEMM's own tests are in `tests/gemm_gpu.rs`.

mod common;
mod gemm_case;

use ampkit::check::Tolerance;
use ampkit::cpu::gemm::bias_grad as cpu_bias_grad;
use ampkit::ops::gemm::{bias_grad, gemm, Epilogue};
use ampkit::shape::{GemmShape, Layout};
use ampkit::tuning::gemm::{configs_for, Plan, GROUP_M, UNALIGNED};
use common::{assert_close, gpu, rng, sized};
use gemm_case::Operand;
use half::bf16;
use rand::Rng;

const LAYOUTS: [Layout; 3] = [Layout::Forward, Layout::Dgrad, Layout::Wgrad];

type Case = gemm_case::Case<bf16>;

#[test]
fn every_tile_config_layout_and_output_matches_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm bf16 configs");
    // Partial tiles on every edge; K off every stage depth. K = 8 and K = 1 (the weight gradient
    // with m, n multiples of 8 takes the aligned kernels even there): at K-split 3 two splits
    // have no K-tile and must still write zero partials.
    let (m, n, k) = sized((300, 520, 1000), (72, 136, 264));
    let mut shapes: Vec<GemmShape> = LAYOUTS
        .iter()
        .map(|&l| GemmShape::new(l, m, n, k))
        .collect();
    shapes.push(GemmShape::new(Layout::Wgrad, 136, 264, 1));
    shapes.push(GemmShape::new(Layout::Forward, 300, 136, 8));
    for shape in shapes {
        let case = Case::random(&mut rng, shape);
        for config in configs_for(&gpu).into_iter().chain([UNALIGNED]) {
            for splits in [1, 3] {
                let plan = Plan {
                    config,
                    splits,
                    group_m: GROUP_M,
                    blocks: 0,
                };
                let what = format!("{}/{splits}", config.name);
                case.check::<f32>(&gpu, &mut rng, Some(plan), &what);
                case.check::<bf16>(&gpu, &mut rng, Some(plan), &what);
            }
        }
    }
}

#[test]
fn planned_shapes_match_including_odd_ones_and_the_mlp() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm bf16 shapes");
    let batch = sized(4096, 512);
    let mut worst = 0f64;
    for (m, n, k) in [
        (1, 1, 1),
        (7, 10, 784),
        (10, 784, 7),
        (65, 129, 33),
        (batch, 512, 784),
        (batch, 10, 512),
    ] {
        for layout in LAYOUTS {
            let case = Case::random(&mut rng, GemmShape::new(layout, m, n, k));
            worst = worst.max(case.check::<f32>(&gpu, &mut rng, None, "auto"));
            worst = worst.max(case.check::<bf16>(&gpu, &mut rng, None, "auto"));
        }
    }
    eprintln!("worst relative L2 error: {worst:.2e}");
}

/// With products and sums exact in f32 (operands of few significant bits, short K), the bf16
/// output is the f32 result `alpha·acc + bias` rounded once to nearest even: bit for bit what
/// `half::bf16::from_f32` gives, ties included.
#[test]
fn the_bf16_output_rounds_to_nearest_even() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm bf16 rounding");
    let (m, n, k) = (64, 136, 8);
    // Multiples of 1/8 in [-2, 2]: every product and partial sum is exact in f32.
    let mut small = |len| -> Vec<bf16> {
        (0..len)
            .map(|_| bf16::from_f32(rng.gen_range(-16i32..=16) as f32 / 8.0))
            .collect()
    };
    let (a, b) = (small(m * k), small(n * k));
    let bias: Vec<f32> = (0..n).map(|j| j as f32 / 1024.0).collect();
    // Odd multipliers put results on and next to bf16 ties.
    for alpha in [1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 0.1, -7.0 / 3.0] {
        let (da, db, dbias) = (
            gpu.upload(&a).unwrap(),
            gpu.upload(&b).unwrap(),
            gpu.upload(&bias).unwrap(),
        );
        let bias_view = dbias.slice(..);
        let mut c = gpu.upload(&vec![bf16::NAN; m * n]).unwrap();
        let epilogue = Epilogue {
            alpha,
            beta: 0.0,
            bias: Some(&bias_view),
            relu: false,
        };
        let shape = GemmShape::new(Layout::Forward, m, n, k);
        gemm(&gpu, shape, &da, &db, &epilogue, &mut c).unwrap();
        let got = gpu.download(&c).unwrap();
        for i in 0..m {
            for j in 0..n {
                let acc: f32 = (0..k)
                    .map(|p| a[i * k + p].to_f32() * b[j * k + p].to_f32())
                    .sum();
                let want = bf16::from_f32(alpha * acc + bias[j]);
                assert_eq!(
                    got[i * n + j].to_bits(),
                    want.to_bits(),
                    "alpha {alpha} at ({i}, {j}): acc {acc}"
                );
            }
        }
    }
}

/// bf16 has f32's exponent range: 2^60 · 2^60 summed 16 times is 2^124, exact in f32 and bf16
/// (f16 cannot even hold the operands).
#[test]
fn bf16_keeps_the_f32_range() {
    let Some(gpu) = gpu() else { return };
    let k = 16;
    let big = bf16::from_f32(2f32.powi(60));
    let a = gpu.upload(&vec![big; 8 * k]).unwrap();
    let b = gpu.upload(&vec![big; 8 * k]).unwrap();
    let shape = GemmShape::new(Layout::Forward, 8, 8, k);
    let mut c32 = gpu.upload(&[0f32; 64]).unwrap();
    gemm(&gpu, shape, &a, &b, &Epilogue::plain(), &mut c32).unwrap();
    assert!(gpu
        .download(&c32)
        .unwrap()
        .iter()
        .all(|&v| v == 2f32.powi(124)));
    let mut c16 = gpu.upload(&[bf16::ZERO; 64]).unwrap();
    gemm(&gpu, shape, &a, &b, &Epilogue::plain(), &mut c16).unwrap();
    let want = bf16::from_f32(2f32.powi(124));
    assert!(gpu.download(&c16).unwrap().iter().all(|&v| v == want));
}

#[test]
fn bias_grad_of_a_bf16_gradient_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu bias_grad bf16");
    for (rows, cols) in [(1, 1), (4096, 512), (333, 10), (1000, 777)] {
        let dy = bf16::random(&mut rng, rows * cols);
        let mut want = vec![0f64; cols];
        cpu_bias_grad(&dy, rows, cols, &mut want).unwrap();
        let mut db = gpu.alloc_zeros::<f32>(cols).unwrap();
        bias_grad(&gpu, &gpu.upload(&dy).unwrap(), rows, cols, &mut db).unwrap();
        let got = gpu.download(&db).unwrap();
        let tol = Tolerance::new(4e-6 * (rows as f64).sqrt(), 1e-5);
        assert_close(&format!("bias_grad bf16 {rows}×{cols}"), &got, &want, tol);
    }
}
