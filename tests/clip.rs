//! Fused gradient clipping (`amp::GradClip`): the GPU scaler (norm in the unscale pass, factor
//! or clamp in the optimizer's) against its CPU twin over many steps of a model of more tensors
//! than one launch holds, with skipped steps; the norm against an f64 reference and the factor
//! against PyTorch's formula; training with `--clip-grad-norm` on the CPU and the GPU (graph and
//! eager bit-identical, the norm in the records and the metrics). With a GPU, the gradients and
//! results of one step are also written to `target/clip-check/` for
//! `scripts/torch-check-clip`, which recomputes them with PyTorch's `clip_grad_norm_`.

mod common;

use ampkit::amp::{CpuGradScaler, GradClip, GradScaler, LossScale, ScalerConfig};
use ampkit::optim::{Adam, AdamConfig, GpuParam, Optimizer, Param};
use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{open_backend, Progress, TrainConfig};
use ampkit::{f16, Device};
use rand::Rng;

/// Scaled gradients of a model: most small, some large enough that clipping engages.
fn grads(rng: &mut impl Rng, lens: &[usize], scale: f32, poison: bool) -> Vec<Vec<f32>> {
    let mut g: Vec<Vec<f32>> = lens
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| rng.gen_range(-1.0f32..1.0) * scale * 2f32.powi(rng.gen_range(-12..2)))
                .collect()
        })
        .collect();
    if poison {
        let t = rng.gen_range(0..lens.len());
        if !g[t].is_empty() {
            g[t][0] = f32::INFINITY;
        }
    }
    g
}

/// f64 reference of the global 2-norm.
fn norm64(g: &[Vec<f32>]) -> f64 {
    g.iter()
        .flatten()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn gpu_clipping_matches_the_cpu_twin() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("gpu grad clip");
    // 100 tensors (two unscale launches), odd sizes, an empty one, one large.
    let mut lens: Vec<usize> = (0..100).map(|_| rng.gen_range(1..3000)).collect();
    lens[7] = 0;
    lens[50] = common::sized(300_001, 40_001);
    let cfg = AdamConfig {
        lr: 1e-2,
        ..AdamConfig::default()
    };
    let dynamic = LossScale::Dynamic(ScalerConfig {
        init_scale: 1024.0,
        growth_interval: 3,
        ..ScalerConfig::default()
    });
    for clip in [
        GradClip::Norm { max_norm: 0.5 },
        GradClip::Norm { max_norm: 1e6 },
        GradClip::Value { value: 1e-3 },
    ] {
        let master: Vec<Vec<f32>> = (lens.iter())
            .map(|&n| (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
            .collect();
        let half = |m: &[Vec<f32>]| -> Vec<Vec<f16>> {
            m.iter()
                .map(|t| t.iter().map(|&v| f16::from_f32(v)).collect())
                .collect()
        };
        // The CPU twin.
        let mut cpu_scaler = CpuGradScaler::new(dynamic).unwrap();
        cpu_scaler.set_grad_clip(clip).unwrap();
        let mut cpu_opt = Adam::new(&Device::Cpu, cfg, &lens).unwrap();
        let (mut cm, mut ch) = (master.clone(), half(&master));
        // The GPU.
        let mut scaler = GradScaler::new(&gpu, dynamic).unwrap();
        scaler.set_grad_clip(clip).unwrap();
        assert_eq!(scaler.grad_clip(), clip);
        let mut opt = Adam::new(&Device::Cuda(gpu.clone()), cfg, &lens).unwrap();
        let mut gm: Vec<_> = master.iter().map(|t| gpu.upload(t).unwrap()).collect();
        let mut gh: Vec<_> = half(&master)
            .iter()
            .map(|t| gpu.upload(t).unwrap())
            .collect();
        let mut clipped_steps = 0;
        for step in 0..8 {
            let what = format!("{clip:?} step {step}");
            let g = grads(&mut rng, &lens, cpu_scaler.scale(), step == 2 || step == 5);
            let mut cg = g.clone();
            let mut params: Vec<Param<'_>> = (cm.iter_mut())
                .zip(&mut cg)
                .zip(&mut ch)
                .map(|((m, g), h)| Param {
                    master: m,
                    grad: g,
                    half: h,
                })
                .collect();
            let outcome = cpu_scaler.step(&mut cpu_opt, &mut params).unwrap();
            cpu_scaler.update().unwrap();
            let mut gg: Vec<_> = g.iter().map(|t| gpu.upload(t).unwrap()).collect();
            let mut gparams: Vec<GpuParam<'_>> = (gm.iter_mut())
                .zip(&mut gg)
                .zip(&mut gh)
                .map(|((m, g), h)| GpuParam {
                    master: m.slice_mut(..),
                    grad: g.slice_mut(..),
                    half: h.slice_mut(..),
                })
                .collect();
            scaler.step(&mut opt, &mut gparams).unwrap();
            drop(gparams);
            scaler.update().unwrap();
            // Same flag, same unscaled (unclipped) gradients, same norm, same weights.
            let flag = gpu.download(scaler.found_inf()).unwrap()[0];
            assert_eq!(flag != 0.0, outcome.skipped(), "{what}");
            let got_grads: Vec<Vec<f32>> = gg.iter().map(|t| gpu.download(t).unwrap()).collect();
            for (t, (a, b)) in got_grads.iter().zip(&cg).enumerate() {
                let same = a
                    .iter()
                    .zip(b)
                    .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
                assert!(same, "{what}: tensor {t}'s gradient");
            }
            let (gpu_norm, cpu_norm) = (
                scaler.last_grad_norm().unwrap(),
                cpu_scaler.last_grad_norm(),
            );
            if let GradClip::Norm { max_norm } = clip {
                let (n, c) = (gpu_norm.unwrap(), cpu_norm.unwrap());
                if outcome.skipped() {
                    assert!(!n.is_finite() && !c.is_finite(), "{what}: {n} {c}");
                } else {
                    assert_eq!(n.to_bits(), c.to_bits(), "{what}: norm {n} vs {c}");
                    let want = norm64(&cg);
                    assert!(
                        (f64::from(n) / want - 1.0).abs() < 1e-6,
                        "{what}: {n} {want}"
                    );
                    clipped_steps += usize::from(n > max_norm);
                }
            } else {
                assert_eq!((gpu_norm, cpu_norm), (None, None));
            }
            let got: Vec<Vec<f32>> = gm.iter().map(|t| gpu.download(t).unwrap()).collect();
            for (t, (a, b)) in got.iter().zip(&cm).enumerate() {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(b), "{what}: tensor {t}'s weights");
            }
        }
        if clip == (GradClip::Norm { max_norm: 0.5 }) {
            assert!(
                clipped_steps >= 4,
                "clipping engaged on {clipped_steps} steps"
            );
        }
        assert_eq!(opt.step_count().unwrap(), cpu_opt.step_count().unwrap());
    }
    assert!(GradScaler::new(&gpu, dynamic)
        .unwrap()
        .set_grad_clip(GradClip::Norm { max_norm: -1.0 })
        .is_err());
}

#[test]
fn training_with_clipping_on_the_cpu_and_the_gpu() {
    let split = common::bundled_mnist();
    let (train, test) = (
        common::subset(&split.train, 1280),
        common::subset(&split.test, 200),
    );
    let base = TrainConfig {
        epochs: 1,
        batch: 64,
        ..TrainConfig::mnist_default()
    };
    let clipped = TrainConfig {
        clip: GradClip::Norm { max_norm: 0.25 },
        ..base.clone()
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |device: &Device, cfg: &TrainConfig, graph: bool| {
        let cfg = TrainConfig {
            cuda_graph: graph,
            ..cfg.clone()
        };
        let mut backend = open_backend(device, &cfg).unwrap();
        let metrics = dir.path().join("m.jsonl");
        let out = Outputs {
            metrics: Some(metrics.clone()),
            ..Outputs::default()
        };
        let s = trainer::run(
            backend.as_mut(),
            &cfg,
            &train,
            &test,
            Progress::default(),
            &out,
        )
        .unwrap();
        let text = std::fs::read_to_string(&metrics).unwrap();
        (s, backend.export().unwrap(), text)
    };
    let (plain, plain_state, _) = run(&Device::cpu(), &base, false);
    let (cpu, cpu_state, text) = run(&Device::cpu(), &clipped, false);
    // The norm is recorded; clipping engaged (norms above 0.25) and changed the weights.
    let norms: Vec<f32> = cpu
        .steps
        .iter()
        .map(|(_, r)| r.grad_norm.unwrap())
        .collect();
    assert!(norms.iter().filter(|&&n| n > 0.25).count() > 5, "{norms:?}");
    assert!(plain.steps.iter().all(|(_, r)| r.grad_norm.is_none()));
    assert_ne!(plain_state.params[0].data, cpu_state.params[0].data);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["grad_norm"].as_f64().unwrap() as f32, norms[0]);
    let Some(gpu) = common::gpu() else { return };
    let device = Device::Cuda(gpu);
    let (graph, graph_state, _) = run(&device, &clipped, true);
    let (eager, eager_state, _) = run(&device, &clipped, false);
    let bits = |s: &ampkit::train::BackendState| -> Vec<u32> {
        s.params
            .iter()
            .flat_map(|p| p.data.iter().map(|v| v.to_bits()))
            .collect()
    };
    assert_eq!(
        bits(&graph_state),
        bits(&eager_state),
        "graph and eager differ"
    );
    for ((_, g), (_, e)) in graph.steps.iter().zip(&eager.steps) {
        assert_eq!(g.grad_norm.map(f32::to_bits), e.grad_norm.map(f32::to_bits));
    }
    // The GPU's norms follow the CPU's (the same model up to f32 summation order).
    for (i, ((_, g), (_, c))) in graph.steps.iter().zip(&cpu.steps).enumerate().take(10) {
        let (g, c) = (g.grad_norm.unwrap(), c.grad_norm.unwrap());
        assert!((g / c - 1.0).abs() < 2e-2, "step {i}: gpu {g} cpu {c}");
    }
}

/// One clipped step's unscaled gradients and the GPU's norm and factor, written for
/// `scripts/torch-check-clip` (which recomputes both with `torch.nn.utils.clip_grad_norm_` on
/// the same gradients and fails above 1e-6 relative error): `target/clip-check/grads.bin`
/// (every gradient, f32 little-endian, in order) and `meta.json`.
#[test]
fn a_clipped_step_is_written_for_pytorch() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("gpu grad clip for pytorch");
    let lens = [784 * 512, 512, 5120, 10, 3, 1001];
    let g = grads(&mut rng, &lens, 1.0, false);
    let max_norm = 1.0f32;
    let mut scaler = GradScaler::new(&gpu, LossScale::Off).unwrap();
    scaler.set_grad_clip(GradClip::Norm { max_norm }).unwrap();
    let mut opt = Adam::new(&Device::Cuda(gpu.clone()), AdamConfig::default(), &lens).unwrap();
    let mut m: Vec<_> = lens
        .iter()
        .map(|&n| gpu.upload(&vec![0.5f32; n]).unwrap())
        .collect();
    let mut h: Vec<_> = (lens.iter())
        .map(|&n| gpu.upload(&vec![f16::from_f32(0.5); n]).unwrap())
        .collect();
    let mut gg: Vec<_> = g.iter().map(|t| gpu.upload(t).unwrap()).collect();
    let mut params: Vec<GpuParam<'_>> = (m.iter_mut())
        .zip(&mut gg)
        .zip(&mut h)
        .map(|((m, g), h)| GpuParam {
            master: m.slice_mut(..),
            grad: g.slice_mut(..),
            half: h.slice_mut(..),
        })
        .collect();
    scaler.step(&mut opt, &mut params).unwrap();
    drop(params);
    scaler.update().unwrap();
    let norm = scaler.last_grad_norm().unwrap().unwrap();
    let coef = ampkit::cpu::clip::clip_coefficient(norm, max_norm);
    assert!(norm > max_norm && coef < 1.0, "{norm} {coef}");
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap());
    let dir = root.join("target").join("clip-check");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = g.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("grads.bin"), bytes).unwrap();
    let meta = serde_json::json!({
        "lens": lens, "max_norm": max_norm, "norm": norm, "coef": coef,
    });
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
}
