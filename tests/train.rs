//! Training end to end on the bundled MNIST split: the loss falls, overflowing scales are
//! skipped and backed off, a resumed run ends bit-identical to an uninterrupted one (CPU, and GPU
//! where present), the CPU and GPU loss curves agree, checkpoints hold PyTorch's names, and the
//! metrics and plot files are written (checkpoint damage and crashes: tests/checkpoint.rs).
//!
//! Under `AMPKIT_TEST_SANITIZE=1` (compute-sanitizer) most runs are shorter: fewer samples, epochs
//! and steps, a 500-image test set for the per-epoch evaluations, a 2^40 initial scale for the
//! overflow test (about 20 skipped steps instead of 80); the assertions follow the sizes.

mod common;

use ampkit::amp::{LossScale, Precision};
use ampkit::cpu::scaler::ScalerConfig;
use ampkit::train::data::{Dataset, MnistSplit};
use ampkit::train::gpu_backend::GpuBackend;
use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{checkpoint, open_backend, Backend, Progress, TrainConfig};
use ampkit::Device;
use common::sized;

/// The test set the per-epoch evaluations run on: all of it, or the first 500 images under
/// `AMPKIT_TEST_SANITIZE=1` (an evaluation is one forward pass per 64 images).
fn eval_set(split: &MnistSplit) -> Dataset {
    common::subset(&split.test, sized(split.test.len(), 500))
}

fn quiet() -> Outputs {
    Outputs::default()
}

fn small_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 64,
        ..TrainConfig::mnist_default()
    }
}

/// Every bit of a backend state, for bit-identity checks.
/// Programmatic dependent launch (on by default on compute capability 9.0) changes when kernels
/// start, never what they compute: runs with it on and off end bit-identical, eager and in graph
/// mode, at a batch whose weight gradient the fused head computes (64) and at one it leaves to
/// the GEMM (300), with skipped steps from an overflowing scale. It also runs the portable
/// modules on a Hopper GPU, whose kernels the dependent launches replace by their sm_90a twins.
/// (Elsewhere both runs take the same path and agree trivially.)
#[test]
fn dependent_launch_is_bit_identical() {
    let Some(shared) = common::gpu() else { return };
    let split = common::bundled_mnist();
    let train = common::subset(&split.train, sized(700, 400));
    let test = eval_set(split);
    for (batch, graph) in [(64, true), (300, false)] {
        let cfg = TrainConfig {
            batch,
            cuda_graph: graph,
            loss_scale: LossScale::Dynamic(ScalerConfig {
                init_scale: 1e8,
                growth_interval: 5,
                ..ScalerConfig::default()
            }),
            ..small_config(1)
        };
        let mut finals = Vec::new();
        for pdl in [true, false] {
            // A handle of its own: the flag is per handle, and the tests beside this one share
            // theirs.
            let gpu = shared.fork().unwrap();
            gpu.set_sync_launches(false);
            gpu.set_dependent_launch(pdl);
            let mut b = GpuBackend::new(gpu, &cfg).unwrap();
            let (state, losses, skipped) = run_bits(&mut b, &cfg, &train, &test);
            assert!(skipped, "1e8 skips steps");
            finals.push((state, losses));
        }
        assert!(
            finals[0].1 == finals[1].1,
            "batch {batch}: per-step losses differ"
        );
        assert!(
            finals[0].0 == finals[1].0,
            "batch {batch}: final states differ"
        );
    }
}

/// Trains `b` with `cfg` and returns the final state's bits, each step's loss bits, and whether
/// any step was skipped.
fn run_bits(
    b: &mut GpuBackend,
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
) -> (Vec<u32>, Vec<u32>, bool) {
    let s = trainer::run(b, cfg, train, test, Progress::default(), &quiet()).unwrap();
    let losses = s.steps.iter().map(|(_, r)| r.loss.to_bits()).collect();
    let skipped = s.steps.iter().any(|(_, r)| r.skipped);
    (common::state_bits(&b.export().unwrap()), losses, skipped)
}

#[test]
fn training_lowers_the_loss_and_learns() {
    let split = common::bundled_mnist();
    // Sanitizing too: fewer steps leave too little margin on the loss and accuracy limits.
    let (samples, epochs) = (2000, 3);
    let (train, test) = (common::subset(&split.train, samples), &eval_set(split));
    for device in common::devices() {
        let cfg = small_config(epochs);
        let mut backend = open_backend(&device, &cfg).unwrap();
        let s = trainer::run(
            backend.as_mut(),
            &cfg,
            &train,
            test,
            Progress::default(),
            &quiet(),
        )
        .unwrap();
        let first: f32 = s.steps[..5].iter().map(|(_, r)| r.loss).sum::<f32>() / 5.0;
        let last = s.epochs.last().unwrap();
        let last_loss = last.train_loss.expect("the epoch ran steps");
        eprintln!(
            "{}: first loss {first:.3}, last epoch {last_loss:.3}, test {:.2}%",
            backend.device(),
            100.0 * last.test.accuracy()
        );
        assert!(
            first > 1.5,
            "an untrained 10-class model starts near ln 10: {first}"
        );
        assert!(last_loss < 0.8, "{last_loss}");
        assert!(last.test.accuracy() > 0.8, "{}", last.test.accuracy());
        assert_eq!(s.steps.len(), epochs * samples.div_ceil(64));
        assert!(s
            .steps
            .iter()
            .all(|(_, r)| !r.skipped && r.scale == 65536.0));
    }
}

#[test]
fn an_overflowing_scale_skips_steps_and_backs_off() {
    let split = common::bundled_mnist();
    // Sanitizing: 2^40 = 1.1e12 takes about 60 fewer halvings than 1e30 (log2(1e30) ≈ 99.7),
    // over 96 steps instead of 189.
    let (samples, epochs, init_scale, halvings) =
        sized((4000, 3, 1e30, 60..100), (2000, 3, 2f32.powi(40), 10..40));
    let (train, test) = (common::subset(&split.train, samples), eval_set(split));
    for device in common::devices() {
        let cfg = TrainConfig {
            loss_scale: LossScale::Dynamic(ScalerConfig {
                init_scale,
                ..ScalerConfig::default()
            }),
            ..small_config(epochs)
        };
        let mut backend = open_backend(&device, &cfg).unwrap();
        let before = backend.export().unwrap();
        let s = trainer::run(
            backend.as_mut(),
            &cfg,
            &train,
            &test,
            Progress::default(),
            &quiet(),
        )
        .unwrap();
        let skipped: Vec<u64> = s
            .steps
            .iter()
            .filter(|(_, r)| r.skipped)
            .map(|(i, _)| *i)
            .collect();
        let last_loss = s.epochs.last().unwrap().train_loss.expect("steps ran");
        eprintln!(
            "{}: skipped steps {skipped:?}, last epoch loss {last_loss:.3}",
            backend.device()
        );
        // f16 gradients overflow until the scale is small enough (1e30 / 2^k below ~1e5: about
        // 80 halvings); each skip halves it. A scale near the edge may overflow once more later.
        let run = skipped
            .iter()
            .enumerate()
            .take_while(|&(i, &s)| s == i as u64)
            .count();
        assert!(halvings.contains(&run), "{skipped:?}");
        assert!(skipped.len() - run < 5, "{skipped:?}");
        for w in s.steps.windows(2) {
            let (a, b) = (w[0].1, w[1].1);
            if a.skipped {
                assert_eq!(b.scale, a.scale / 2.0, "a skipped step halves the scale");
            }
        }
        let after = backend.export().unwrap();
        assert_eq!(after.optimizer_step as usize, s.steps.len() - skipped.len());
        assert_ne!(common::state_bits(&before), common::state_bits(&after));
        assert!(last_loss < 1.0, "{last_loss}");
    }
}

#[test]
fn a_skipped_step_changes_nothing() {
    let split = common::bundled_mnist();
    let train = common::subset(&split.train, 256);
    for device in common::devices() {
        let cfg = TrainConfig {
            loss_scale: LossScale::Static(1e30),
            max_steps: Some(1),
            ..small_config(1)
        };
        let mut backend = open_backend(&device, &cfg).unwrap();
        let before = backend.export().unwrap();
        let s = trainer::run(
            backend.as_mut(),
            &cfg,
            &train,
            &split.test,
            Progress::default(),
            &quiet(),
        )
        .unwrap();
        assert!(
            s.steps[0].1.skipped,
            "{}: a static 1e30 scale overflows",
            backend.device()
        );
        assert_eq!(
            common::state_bits(&before),
            common::state_bits(&backend.export().unwrap()),
            "{}",
            backend.device()
        );
    }
}

#[test]
fn resuming_is_bit_identical_to_an_uninterrupted_run() {
    let split = common::bundled_mnist();
    // 16 steps per epoch (sanitizing: 8); the first run stops 5 steps into epoch 2.
    let train = common::subset(&split.train, sized(1000, 500));
    let test = eval_set(split);
    let per_epoch = train.len().div_ceil(64) as u64;
    let stop = per_epoch + 5;
    for device in common::devices() {
        let cfg = TrainConfig {
            loss_scale: LossScale::Dynamic(ScalerConfig {
                init_scale: 1e8, // a few skips early, so the scaler state matters
                growth_interval: 5,
                ..ScalerConfig::default()
            }),
            ..small_config(3)
        };
        let mut straight = open_backend(&device, &cfg).unwrap();
        let full = trainer::run(
            straight.as_mut(),
            &cfg,
            &train,
            &test,
            Progress::default(),
            &quiet(),
        )
        .unwrap();
        let want = straight.export().unwrap();

        let dir = common::temp_dir(&format!("train-resume-{}", device.gpu().is_some()));
        let first = TrainConfig {
            max_steps: Some(stop),
            ..cfg.clone()
        }; // mid-epoch 2
        let mut a = open_backend(&device, &first).unwrap();
        let out = Outputs {
            save: Some(dir.clone()),
            ..quiet()
        };
        let part =
            trainer::run(a.as_mut(), &first, &train, &test, Progress::default(), &out).unwrap();
        assert_eq!(part.progress.global_step, stop);
        drop(a);

        let checkpoint::Checkpoint {
            config: saved_cfg,
            progress,
            state,
            ..
        } = checkpoint::load(&dir).unwrap();
        assert_eq!(
            progress,
            Progress {
                epoch: 1,
                step_in_epoch: 5,
                global_step: stop,
                skipped: progress.skipped
            }
        );
        let resumed_cfg = TrainConfig {
            max_steps: None,
            ..saved_cfg
        };
        assert_eq!(resumed_cfg, cfg);
        let mut b = open_backend(&device, &resumed_cfg).unwrap();
        b.import(&state).unwrap();
        let rest =
            trainer::run(b.as_mut(), &resumed_cfg, &train, &test, progress, &quiet()).unwrap();
        let got = b.export().unwrap();
        eprintln!(
            "{}: {} + {} steps vs {}",
            b.device(),
            part.steps.len(),
            rest.steps.len(),
            full.steps.len()
        );
        assert_eq!(part.steps.len() + rest.steps.len(), full.steps.len());
        let losses = |v: &[(u64, ampkit::train::StepRecord)]| {
            v.iter().map(|(_, r)| r.loss.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(
            [losses(&part.steps), losses(&rest.steps)].concat(),
            losses(&full.steps)
        );
        assert!(
            common::state_bits(&got) == common::state_bits(&want),
            "{}: the resumed state differs",
            b.device()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The same 300 steps (sanitizing: 40) on the CPU reference and on the GPU from the same seed: the
/// loss curves agree step by step within 2 % (relative, plus 0.01 absolute), which is what f16
/// GEMMs with differently ordered f32 accumulation allow once the weights have drifted apart by
/// rounding.
#[test]
fn cpu_and_gpu_loss_curves_agree() {
    let Some(gpu) = common::gpu() else { return };
    let split = common::bundled_mnist();
    let steps = sized(300, 40);
    let cfg = TrainConfig {
        max_steps: Some(steps as u64),
        ..small_config(3)
    };
    let run = |device: Device| {
        let mut b = open_backend(&device, &cfg).unwrap();
        trainer::run(
            b.as_mut(),
            &cfg,
            &split.train,
            &split.test,
            Progress::default(),
            &quiet(),
        )
        .unwrap()
    };
    let (cpu, dev) = (run(Device::cpu()), run(Device::Cuda(gpu)));
    assert_eq!(cpu.steps.len(), steps);
    assert_eq!(dev.steps.len(), steps);
    let mut worst: f32 = 0.0;
    for ((i, c), (_, g)) in cpu.steps.iter().zip(&dev.steps) {
        let diff = (c.loss - g.loss).abs();
        worst = worst.max(diff / (0.01 + c.loss));
        assert!(
            diff <= 0.01 + 0.02 * c.loss,
            "step {i}: cpu {} gpu {}",
            c.loss,
            g.loss
        );
        assert_eq!(c.skipped, g.skipped, "step {i}");
        assert_eq!(c.scale, g.scale, "step {i}");
    }
    // The first step runs on identical weights: only accumulation order differs.
    let (c0, g0) = (cpu.steps[0].1.loss, dev.steps[0].1.loss);
    assert!(
        (c0 - g0).abs() <= 1e-3 * c0,
        "first step: cpu {c0} gpu {g0}"
    );
    eprintln!("worst relative loss difference over {steps} steps: {worst:.2e}");
}

/// LayerNorm, f32 precision and layers forced to f32 (alone and next to f16 layers, which
/// exercises every dtype conversion between layers): 60 steps (sanitizing: 30) on the CPU and the
/// GPU from the same seed. The first 10 steps agree within `tol` (relative loss); afterwards
/// rounding differences of the f16 GEMMs (summation order) let the weights drift apart
/// chaotically, so each step is held to 5 % and the mean of the last third to 2 %. The all-f32
/// model differs only in f32 summation order and is held to `tol` throughout.
#[test]
fn gpu_matches_cpu_with_layernorm_and_f32_layers() {
    let Some(gpu) = common::gpu() else { return };
    let split = common::bundled_mnist();
    let train = common::subset(&split.train, 2000);
    let steps = sized(60, 30);
    type Tweak = Box<dyn Fn(&mut TrainConfig)>;
    let variants: Vec<(&str, Tweak, f32)> = vec![
        ("layernorm", Box::new(|c| c.model.layernorm = true), 0.005),
        (
            "fp32",
            Box::new(|c| c.model.precision = Precision::Fp32),
            1e-4,
        ),
        (
            "fp32 layer 1",
            Box::new(|c| c.model.fp32_layers = vec![1]),
            0.005,
        ),
        (
            "3 layers, fp32 layer 0, layernorm",
            Box::new(|c| {
                c.model.layers = vec![784, 256, 128, 10];
                c.model.fp32_layers = vec![0];
                c.model.layernorm = true;
            }),
            0.005,
        ),
    ];
    for (name, tweak, tol) in variants {
        let mut cfg = TrainConfig {
            max_steps: Some(steps as u64),
            ..small_config(2)
        };
        tweak(&mut cfg);
        let run = |device: Device| {
            let mut b = open_backend(&device, &cfg).unwrap();
            trainer::run(
                b.as_mut(),
                &cfg,
                &train,
                &split.test,
                Progress::default(),
                &quiet(),
            )
            .unwrap()
        };
        let (cpu, dev) = (run(Device::cpu()), run(Device::Cuda(gpu.clone())));
        assert_eq!(dev.steps.len(), steps, "{name}");
        let rel: Vec<f32> = cpu
            .steps
            .iter()
            .zip(&dev.steps)
            .map(|((_, c), (_, g))| (c.loss - g.loss).abs() / (0.01 + c.loss))
            .collect();
        let all_f32 = cfg.model.precision == Precision::Fp32;
        for (i, &r) in rel.iter().enumerate() {
            let limit = if i < 10 || all_f32 { tol } else { 0.05 };
            assert!(
                r <= limit,
                "{name}, step {i}: cpu {} gpu {} (relative {r:.2e})",
                cpu.steps[i].1.loss,
                dev.steps[i].1.loss
            );
        }
        let tail = steps / 3;
        let mean = |s: &[(u64, ampkit::train::StepRecord)]| {
            s[steps - tail..].iter().map(|(_, r)| r.loss).sum::<f32>() / tail as f32
        };
        let (mc, mg) = (mean(&cpu.steps), mean(&dev.steps));
        assert!(
            (mc - mg).abs() <= 0.02 * mc,
            "{name}: last-{tail} mean cpu {mc} gpu {mg}"
        );
        let worst = rel.iter().copied().fold(0f32, f32::max);
        let last = dev.steps.last().unwrap().1.loss;
        assert!(
            last < 0.8 * dev.steps[0].1.loss,
            "{name}: the GPU run learns ({last})"
        );
        eprintln!("{name}: worst relative loss difference {worst:.2e}");
    }
}

/// CUDA-graph mode replays the captured step: the same kernels with the same arguments, so a
/// run with graphs ends bit-identical to one without (including a partial last batch, which runs
/// eagerly, and skipped steps from an overflowing scale).
#[test]
fn cuda_graph_steps_are_bit_identical_to_eager_steps() {
    let Some(shared) = common::gpu() else { return };
    // Capture needs a stream that does not synchronise after each launch: a handle of its own,
    // so the tests running beside this one keep theirs.
    let gpu = shared.fork().unwrap();
    gpu.set_sync_launches(false);
    let split = common::bundled_mnist();
    // 15 full batches of 64 and one of 40 (sanitizing: 7 and one of 52).
    let train = common::subset(&split.train, sized(1000, 500));
    let test = eval_set(split);
    let cfg = TrainConfig {
        loss_scale: LossScale::Dynamic(ScalerConfig {
            init_scale: 1e8,
            growth_interval: 7,
            ..ScalerConfig::default()
        }),
        ..small_config(2)
    };
    let mut finals = Vec::new();
    for graph in [false, true] {
        let mut b = GpuBackend::new(
            gpu.clone(),
            &TrainConfig {
                cuda_graph: graph,
                ..cfg.clone()
            },
        )
        .unwrap();
        let (state, losses, _) = run_bits(&mut b, &cfg, &train, &test);
        assert_eq!(b.graph_active(), graph, "graph mode engaged");
        finals.push((state, losses));
    }
    assert!(finals[0].1 == finals[1].1, "per-step losses differ");
    assert!(finals[0].0 == finals[1].0, "final states differ");
}

#[test]
fn checkpoint_files_have_pytorch_names_and_shapes() {
    let split = common::bundled_mnist();
    let dir = common::temp_dir("train-names");
    let cfg = TrainConfig {
        max_steps: Some(2),
        ..small_config(1)
    };
    let mut b = open_backend(&Device::cpu(), &cfg).unwrap();
    let out = Outputs {
        save: Some(dir.clone()),
        metrics: Some(dir.join("metrics.jsonl")),
        plot: Some(dir.join("plot.png")),
        ..quiet()
    };
    trainer::run(
        b.as_mut(),
        &cfg,
        &common::subset(&split.train, 500),
        &split.test,
        Progress::default(),
        &out,
    )
    .unwrap();
    let bytes = std::fs::read(dir.join("latest/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("0.bias".to_string(), vec![512]),
            ("0.weight".to_string(), vec![512, 784]),
            ("2.bias".to_string(), vec![10]),
            ("2.weight".to_string(), vec![10, 512]),
        ]
    );
    let state = std::fs::read(dir.join("latest/train_state.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&state).unwrap();
    assert!(st.names().contains(&"exp_avg_sq.0.weight"));
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for key in ["step", "loss", "scale", "skipped", "lr"] {
        assert!(first.get(key).is_some(), "{key} in {first}");
    }
    let png = std::fs::read(dir.join("plot.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fused classifier head against the unfused step on the GPU, from the same seed, with an
/// overflowing initial scale (the first steps skip, inf/NaN gradients come out of the head) and
/// an odd last batch: the same skipped steps and scales, the first step's loss within 1e-4 (same
/// weights, only f32 summation order differs), the loss curves within 2 % afterwards.
#[test]
fn fused_head_steps_match_unfused_steps() {
    let Some(gpu) = common::gpu() else { return };
    let split = common::bundled_mnist();
    let train = common::subset(&split.train, sized(1000, 500));
    let cfg = TrainConfig {
        loss_scale: LossScale::Dynamic(ScalerConfig {
            init_scale: 1e12,
            growth_interval: 7,
            ..ScalerConfig::default()
        }),
        ..small_config(2)
    };
    let mut runs = Vec::new();
    for fused in [true, false] {
        let mut b = GpuBackend::new(gpu.clone(), &cfg).unwrap();
        b.set_fusion(fused);
        let s = trainer::run(
            &mut b,
            &cfg,
            &train,
            &split.test,
            Progress::default(),
            &quiet(),
        )
        .unwrap();
        runs.push(s);
    }
    let (f, u) = (&runs[0], &runs[1]);
    assert_eq!(f.steps.len(), u.steps.len());
    assert!(
        f.steps.iter().any(|(_, r)| r.skipped),
        "the 1e12 scale skips steps"
    );
    for ((i, a), (_, b)) in f.steps.iter().zip(&u.steps) {
        assert_eq!(a.skipped, b.skipped, "step {i}");
        assert_eq!(a.scale, b.scale, "step {i}");
        assert!(
            (a.loss - b.loss).abs() <= 0.01 + 0.02 * b.loss,
            "step {i}: fused {} unfused {}",
            a.loss,
            b.loss
        );
    }
    let (a, b) = (f.steps[0].1.loss, u.steps[0].1.loss);
    assert!(
        (a - b).abs() <= 1e-4 * b,
        "first step: fused {a} unfused {b}"
    );
}
