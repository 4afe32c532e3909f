//! GPU GEMM vs the f64 CPU reference through the tolerance harness: every layout, every tile
//! configuration and K-split, every epilogue, f16 and f32 outputs, shapes of 1, 7, 10, 784, 4096
//! and non-multiples of every tile, unaligned operands, poisoned outputs, and products beyond the
//! f16 range. Then the bias gradient, and argument errors.
//!
//! Under `AMPKIT_TEST_SANITIZE=1` (compute-sanitizer) the shapes shrink to a few million MACs per
//! GEMM; every layout, tile configuration, K-split, epilogue and output type still runs, on sizes
//! with partial tiles on every edge.

mod common;
mod gemm_case;

use ampkit::check::Tolerance;
use ampkit::cpu::gemm::{bias_grad as cpu_bias_grad, gemm_f64, Epilogue as CpuEpilogue};
use ampkit::cuda::Gpu;
use ampkit::ops::gemm::{bias_grad, gemm, Epilogue};
use ampkit::shape::{GemmShape, Layout};
use ampkit::tuning::gemm::{configs_for, gemm_with_plan, Plan, CONFIGS, GROUP_M, UNALIGNED};
use ampkit::Error;
use common::{assert_close, gpu, rng, sanitizing, sized};
use gemm_case::{operand_lens, Operand, Out, POISON_F32};
use half::f16;
use rand::rngs::StdRng;
use rand::Rng;

const LAYOUTS: [Layout; 3] = [Layout::Forward, Layout::Dgrad, Layout::Wgrad];

type Case = gemm_case::Case<f16>;

#[test]
fn every_layout_and_output_matches_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm shapes");
    let mut worst = 0f64;
    // 1, 7, 10, 784, 4096 and sizes off every tile multiple (64, 128, 256, 32 for K). Sanitizing:
    // the same kinds of shape at ≤ 5 M MACs.
    let dims = if sanitizing() {
        [
            (1, 1, 1),
            (7, 10, 784),
            (10, 784, 7),
            (65, 129, 33),
            (150, 257, 40),
            (4096, 10, 32),
            (784, 64, 96),
        ]
    } else {
        [
            (1, 1, 1),
            (7, 10, 784),
            (10, 784, 7),
            (65, 129, 33),
            (300, 257, 200),
            (4096, 10, 512),
            (784, 512, 96),
        ]
    };
    for (m, n, k) in dims {
        for layout in LAYOUTS {
            let case = Case::random(&mut rng, GemmShape::new(layout, m, n, k));
            worst = worst.max(case.check::<f32>(&gpu, &mut rng, None, "auto"));
            worst = worst.max(case.check::<f16>(&gpu, &mut rng, None, "auto"));
        }
    }
    eprintln!("worst relative L2 error over all shapes: {worst:.2e}");
}

#[test]
fn every_tile_config_and_k_split_matches() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm configs");
    // Odd sizes: partial tiles on every edge, K not a multiple of the 32-deep stage. Sanitizing:
    // 72×136×264, 2.6 M MACs: still a partial tile along M (64 and 128 rows) and N (64, 128 and
    // 256 columns) for every configuration, and K = 264 (5 K-tiles of 64, 9 of 32) still wraps
    // every 3-4 stage pipeline at 1 split and leaves each of 3 splits at least one K-tile. There
    // m and n are multiples of 8, so Wgrad runs the aligned configurations too (m = 300 sends it
    // to the unaligned kernel whatever the forced configuration).
    let (m, n, k) = sized((300, 520, 1000), (72, 136, 264));
    for layout in LAYOUTS {
        let case = Case::random(&mut rng, GemmShape::new(layout, m, n, k));
        check_every_config(&gpu, &mut rng, &case);
    }
}

/// `case` in every tile configuration this GPU runs (and the unaligned one), at K-split 1 and 3,
/// with f32 and f16 output.
fn check_every_config(gpu: &Gpu, rng: &mut StdRng, case: &Case) {
    for config in configs_for(gpu).into_iter().chain([UNALIGNED]) {
        for splits in [1, 3] {
            let plan = Plan {
                config,
                splits,
                group_m: GROUP_M,
                blocks: 0,
            };
            let what = format!("{}/{splits}", config.name);
            case.check::<f32>(gpu, rng, Some(plan), &what);
            case.check::<f16>(gpu, rng, Some(plan), &what);
        }
    }
}

/// K = 1 and K = 8 (one partial K-tile) in every configuration, K-split 1 and 3: with K = 1 the
/// second and third splits have no K-tile at all and must still write their zero partials. The
/// weight-gradient layout with m and n multiples of 8 takes the aligned (and Hopper) kernels even
/// at K = 1.
#[test]
fn every_tile_config_handles_k_of_1_and_8() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm tiny k");
    for shape in [
        GemmShape::new(Layout::Wgrad, 136, 264, 1),
        GemmShape::new(Layout::Wgrad, 264, 392, 8),
        GemmShape::new(Layout::Forward, 300, 136, 8),
        GemmShape::new(Layout::Dgrad, 136, 264, 8),
    ] {
        let case = Case::random(&mut rng, shape);
        check_every_config(&gpu, &mut rng, &case);
    }
}

/// The MLP's GEMMs at batch 4096 through the default plans. Sanitizing: a 32→64→10 MLP at
/// batch 1024, whose 64×32 weight gradient over K = 1024 still plans a K-split.
#[test]
fn mlp_shapes_at_batch_4096() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm mlp");
    let (batch, inputs, hidden) = sized((4096, 784, 512), (1024, 32, 64));
    // Forward 784→512 and 512→10, dgrad of both, wgrad of both (the K-split case).
    for (layout, m, n, k) in [
        (Layout::Forward, batch, hidden, inputs),
        (Layout::Forward, batch, 10, hidden),
        (Layout::Dgrad, batch, inputs, hidden),
        (Layout::Dgrad, batch, hidden, 10),
        (Layout::Wgrad, hidden, inputs, batch),
        (Layout::Wgrad, 10, hidden, batch),
    ] {
        let case = Case::random(&mut rng, GemmShape::new(layout, m, n, k));
        let rel = case.check::<f32>(&gpu, &mut rng, None, "mlp");
        eprintln!("{layout:?} {m}×{n}×{k}: rel L2 {rel:.2e}");
    }
}

#[test]
fn products_beyond_f16_range_accumulate_in_f32() {
    let Some(gpu) = gpu() else { return };
    // 60000² = 3.6e9 overflows f16 but not f32: 16 such products sum to 5.76e10 exactly.
    let k = 16;
    let a = gpu.upload(&vec![f16::from_f32(60000.0); 8 * k]).unwrap();
    let b = gpu.upload(&vec![f16::from_f32(60000.0); 8 * k]).unwrap();
    let shape = GemmShape::new(Layout::Forward, 8, 8, k);
    let mut c32 = gpu.upload(&vec![0f32; 64]).unwrap();
    gemm(&gpu, shape, &a, &b, &Epilogue::plain(), &mut c32).unwrap();
    assert!(gpu.download(&c32).unwrap().iter().all(|&v| v == 5.76e10));
    let mut c16 = gpu.upload(&[f16::ZERO; 64]).unwrap();
    gemm(&gpu, shape, &a, &b, &Epilogue::plain(), &mut c16).unwrap();
    assert!(gpu
        .download(&c16)
        .unwrap()
        .iter()
        .all(|&v| v == f16::INFINITY));
}

#[test]
fn views_at_odd_offsets_take_the_slow_path_correctly() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm offsets");
    let (m, n, k) = (37, 41, 64);
    let a = f16::random(&mut rng, m * k + 1);
    let b = f16::random(&mut rng, n * k + 3);
    let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
    let mut c = gpu
        .upload(&vec![f32::from_bits(POISON_F32); m * n])
        .unwrap();
    let shape = GemmShape::new(Layout::Forward, m, n, k);
    gemm(
        &gpu,
        shape,
        &da.slice(1..),
        &db.slice(3..),
        &Epilogue::plain(),
        &mut c,
    )
    .unwrap();
    let wide = |v: &[f16]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
    let mut want = vec![0.0; m * n];
    gemm_f64(
        shape,
        &wide(&a[1..]),
        &wide(&b[3..]),
        &CpuEpilogue::plain(),
        &mut want,
    )
    .unwrap();
    assert_close(
        "offset views",
        &gpu.download(&c).unwrap(),
        &want,
        <f32 as Out<f16>>::tolerance(k, 1.0),
    );
}

/// A long, narrow product on the unaligned path (K = 4097 is not a multiple of 8) keeps its f32
/// accumulation error at cuBLAS's level: relative L2 against the f64 reference ≤ 5e-7 in every
/// layout. The single running accumulator it replaced measured 4.8e-6 for the forward on an
/// H100, where cuBLAS measured 2.0e-7.
#[test]
fn a_long_unaligned_k_loop_stays_accurate() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm long k");
    let (n, k) = sized((1000, 4097), (200, 2049));
    for layout in LAYOUTS {
        let shape = GemmShape::new(layout, 1, n, k);
        let (la, lb) = operand_lens(shape);
        let (a, b) = (f16::random(&mut rng, la), f16::random(&mut rng, lb));
        let mut c = gpu.upload(&vec![f32::from_bits(POISON_F32); n]).unwrap();
        let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
        gemm(&gpu, shape, &da, &db, &Epilogue::plain(), &mut c).unwrap();
        let wide = |v: &[f16]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
        let mut want = vec![0.0; n];
        gemm_f64(
            shape,
            &wide(&a),
            &wide(&b),
            &CpuEpilogue::plain(),
            &mut want,
        )
        .unwrap();
        let got = gpu.download(&c).unwrap();
        let (err, norm) = got
            .iter()
            .zip(&want)
            .fold((0f64, 0f64), |(e, s), (&g, &w)| {
                (e + (f64::from(g) - w).powi(2), s + w * w)
            });
        let rel = (err / norm).sqrt();
        eprintln!("{layout:?} 1×{n}×{k}: relative L2 error {rel:.2e}");
        assert!(
            rel <= 5e-7,
            "{layout:?} 1×{n}×{k}: relative L2 error {rel:.2e} > 5e-7"
        );
    }
}

#[test]
fn bias_grad_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu bias_grad");
    let (big, odd) = sized(((4096, 512), (4097, 513)), ((1024, 512), (1025, 513)));
    for (rows, cols) in [(1, 1), (7, 10), big, odd, (33, 784)] {
        let dy: Vec<f16> = (0..rows * cols)
            .map(|_| f16::from_f32(rng.gen_range(-4.0..4.0)))
            .collect();
        let mut want = vec![0f64; cols];
        cpu_bias_grad(&dy, rows, cols, &mut want).unwrap();
        let mut db = gpu.upload(&vec![f32::from_bits(POISON_F32); cols]).unwrap();
        bias_grad(&gpu, &gpu.upload(&dy).unwrap(), rows, cols, &mut db).unwrap();
        let got = gpu.download(&db).unwrap();
        // f32 sums of `rows` terms of size ≤ 4: absolute slack ~ sqrt(rows)·4·2^-24, generously.
        let tol = Tolerance::new(1e-6 * (rows as f64).sqrt() * 4.0, 1e-5).with_rel_l2(1e-5);
        assert_close(&format!("bias_grad f16 {rows}×{cols}"), &got, &want, tol);

        let dy32: Vec<f32> = dy.iter().map(|v| v.to_f32()).collect();
        let mut db32 = gpu.upload(&vec![f32::from_bits(POISON_F32); cols]).unwrap();
        bias_grad(&gpu, &gpu.upload(&dy32).unwrap(), rows, cols, &mut db32).unwrap();
        let again = gpu.download(&db32).unwrap();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            again.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "f16 and f32 inputs of equal value sum identically (fixed order)"
        );
    }
}

#[test]
fn bad_arguments_are_errors_before_any_launch() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.upload(&[f16::ONE; 12]).unwrap();
    let b = gpu.upload(&[f16::ONE; 12]).unwrap();
    let mut c = gpu.upload(&[0f32; 9]).unwrap();
    // n = 4 needs a 16-element B.
    let e = gemm(
        &gpu,
        GemmShape::new(Layout::Forward, 3, 4, 4),
        &a,
        &b,
        &Epilogue::plain(),
        &mut c,
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains("B has 12"),
        "{e}"
    );
    let bias = gpu.upload(&[0f32; 2]).unwrap();
    let bias_view = bias.slice(..);
    let mut c = gpu.upload(&[0f32; 12]).unwrap();
    let e = gemm(
        &gpu,
        GemmShape::new(Layout::Forward, 3, 4, 4),
        &a,
        &gpu.upload(&[f16::ONE; 16]).unwrap(),
        &Epilogue::bias(&bias_view, false),
        &mut c,
    )
    .unwrap_err();
    assert!(e.to_string().contains("bias"), "{e}");
    // An f16 operand starting one byte into a buffer cannot be read as f16 at all.
    let bytes = gpu.alloc_zeros::<u8>(64).unwrap();
    // SAFETY: any bit pattern is a valid f16; only the alignment is wrong, which gemm rejects.
    let odd = unsafe { bytes.slice(1..).transmute::<f16>(12) }.unwrap();
    let mut c = gpu.upload(&[0f32; 9]).unwrap();
    let e = gemm(
        &gpu,
        GemmShape::new(Layout::Forward, 3, 3, 4),
        &odd,
        &odd,
        &Epilogue::plain(),
        &mut c,
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
}

/// Six-way K-splits give the same bits run to run. Sanitizing: 72×136 over K = 328, where each
/// of the 6 splits still gets K-tiles (1 of 64, or 2 of 32 and 1 in the last).
#[test]
fn k_splits_are_deterministic() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu gemm determinism");
    let (m, n, k) = sized((512, 784, 4096), (72, 136, 328));
    let shape = GemmShape::new(Layout::Wgrad, m, n, k);
    let (la, lb) = operand_lens(shape);
    let a = gpu.upload(&f16::random(&mut rng, la)).unwrap();
    let b = gpu.upload(&f16::random(&mut rng, lb)).unwrap();
    for config in [CONFIGS[0], CONFIGS[1]]
        .into_iter()
        .chain(configs_for(&gpu).into_iter().filter(|c| c.hopper))
    {
        let plan = Some(Plan {
            config,
            splits: 6,
            group_m: GROUP_M,
            blocks: 0,
        });
        let run32 = || {
            let mut c = gpu.upload(&vec![0f32; m * n]).unwrap();
            gemm_with_plan(&gpu, shape, plan, &a, &b, &Epilogue::plain(), &mut c).unwrap();
            gpu.download(&c)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        let run16 = || {
            let mut c = gpu.upload(&vec![f16::ZERO; m * n]).unwrap();
            gemm_with_plan(&gpu, shape, plan, &a, &b, &Epilogue::plain(), &mut c).unwrap();
            gpu.download(&c)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            run32(),
            run32(),
            "{}: serial split (f32 out) run to run",
            config.name
        );
        assert_eq!(
            run16(),
            run16(),
            "{}: workspace split (f16 out) run to run",
            config.name
        );
    }
}
