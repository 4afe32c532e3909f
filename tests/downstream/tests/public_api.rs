//! ampkit's public API from outside the crate: the CPU GEMM under the tolerance harness, the
//! loss scaler's state machine and update rule, a small training run on synthetic data, and GPU
//! ops (and a GPU on your own cudarc stream) that skip without a GPU.

use ampkit::amp::{LossScale, ScalerStages, Stage};
use ampkit::check::{compare, unwritten, Tolerance};
use ampkit::cpu::gemm::{gemm_f64, Epilogue};
use ampkit::cpu::scaler::{update_scale, ScalerConfig, ScalerState};
use ampkit::cuda::Gpu;
use ampkit::shape::{GemmShape, Layout};
use ampkit::train::data::Dataset;
use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{open_backend, Progress, TrainConfig};
use ampkit::{f16, Device, Error};
use std::io::Write;
use std::sync::Arc;

/// Deterministic values in [-1, 1), exactly representable in f16.
fn values(n: usize, seed: u32) -> Vec<f16> {
    (0..n as u32)
        .map(|i| f16::from_f32(((i.wrapping_mul(2654435761) ^ seed) % 2048) as f32 / 1024.0 - 1.0))
        .collect()
}

/// The GPU, or `None` after saying why the test skips.
fn gpu() -> Option<Arc<Gpu>> {
    let (device, note) = Device::auto();
    match device {
        Device::Cuda(gpu) => Some(gpu),
        Device::Cpu => {
            // Straight to stderr, past the test harness's capture, so a passing run shows it.
            let _ = writeln!(std::io::stderr(), "skipped: {note}");
            None
        }
    }
}

#[test]
fn cpu_gemm_is_within_tolerance_of_the_f64_reference() {
    let (m, n, k) = (33, 40, 96);
    let (x, w) = (values(m * k, 1), values(n * k, 2));
    let b: Vec<f32> = (0..n).map(|j| j as f32 / 64.0).collect();
    let y = downstream::linear(&Device::cpu(), (m, n, k), &x, &w, &b, true).unwrap();

    let wide = |v: &[f16]| v.iter().map(|h| h.to_f64()).collect::<Vec<f64>>();
    let mut want = vec![0f64; m * n];
    let shape = GemmShape::new(Layout::Forward, m, n, k);
    gemm_f64(
        shape,
        &wide(&x),
        &wide(&w),
        &Epilogue::bias(&b, true),
        &mut want,
    )
    .unwrap();
    let report = compare(&y, &want, Tolerance::new(1e-5 * (k as f64).sqrt(), 1e-5));
    assert!(report.passed(), "{report}");
    assert!(y.iter().all(|&v| v >= 0.0), "ReLU");
}

#[test]
fn a_wrong_shape_is_a_typed_error() {
    let shape = GemmShape::new(Layout::Forward, 2, 2, 2);
    let (a, b) = (vec![f16::ONE; 4], vec![f16::ONE; 3]);
    let err =
        ampkit::cpu::gemm::gemm(shape, &a, &b, &Epilogue::plain(), &mut [0f32; 4]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn the_harness_reports_nan_and_unwritten_outputs() {
    let report = compare(&[1.0f32, f32::NAN], &[1.0, 2.0], Tolerance::new(1e-3, 1e-3));
    assert!(!report.passed() && report.mismatches == 1, "{report}");
    let poison = f32::from_bits(0xDEAD_BEEF);
    assert_eq!(unwritten(&[0.0, poison], poison), vec![1]);
}

#[test]
fn scaler_state_machine_and_update_rule() {
    let mut stages = ScalerStages::new();
    assert!(stages.update().is_err(), "update before an inf check");
    stages.unscale().unwrap();
    assert!(stages.unscale().is_err(), "unscale twice");
    assert!(
        !stages.step().unwrap(),
        "step after unscale does not unscale again"
    );
    assert!(stages.step().is_err(), "step twice");
    stages.update().unwrap();
    assert_eq!(stages.stage(), Stage::Ready);

    let cfg = ScalerConfig {
        growth_interval: 2,
        ..ScalerConfig::default()
    };
    let mut state = ScalerState::new(&cfg).unwrap();
    assert_eq!(state.scale, 65536.0);
    update_scale(&mut state, true, &cfg); // overflow: back off
    assert_eq!(state.scale, 32768.0);
    update_scale(&mut state, false, &cfg);
    update_scale(&mut state, false, &cfg); // two clean steps: grow
    assert_eq!(state.scale, 65536.0);
    assert!(LossScale::Static(0.0).validate().is_err());
}

/// 4×4 images: class 0 is bright on top, class 1 bright at the bottom, with noise.
fn synthetic(n: usize, seed: u32) -> Dataset {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n as u32 {
        let class = (i ^ seed) % 2;
        for p in 0..16u32 {
            let top = p < 8;
            let noise = (i.wrapping_mul(31).wrapping_add(p * 17) ^ seed) % 60;
            let base = if top == (class == 0) { 180 } else { 20 };
            images.push((base + noise) as u8);
        }
        labels.push(class as u8);
    }
    Dataset::new(images, labels, 4, 4).unwrap()
}

#[test]
fn training_learns_a_synthetic_task() {
    let (train, test) = (synthetic(512, 0), synthetic(128, 1));
    let mut cfg = TrainConfig::mnist_default();
    cfg.model.layers = vec![16, 16, 2];
    cfg.epochs = 3;
    cfg.batch = 32;
    cfg.augment_shift = 0;
    cfg.normalize = false;
    let mut backend = open_backend(&Device::cpu(), &cfg).unwrap();
    let summary = trainer::run(
        backend.as_mut(),
        &cfg,
        &train,
        &test,
        Progress::default(),
        &Outputs::default(),
    )
    .unwrap();
    let last = summary.epochs.last().unwrap();
    assert_eq!(summary.epochs.len(), 3);
    assert!(
        last.test.accuracy() > 0.9,
        "test accuracy {}",
        last.test.accuracy()
    );
    assert_eq!(summary.progress.global_step, 3 * 512 / 32);
}

#[test]
fn gpu_gemm_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let (m, n, k) = (64, 48, 128);
    let (x, w) = (values(m * k, 3), values(n * k, 4));
    let b = vec![0.25f32; n];
    let cpu = downstream::linear(&Device::cpu(), (m, n, k), &x, &w, &b, false).unwrap();
    let got = downstream::linear(&Device::Cuda(gpu), (m, n, k), &x, &w, &b, false).unwrap();
    let reference: Vec<f64> = cpu.iter().map(|&v| f64::from(v)).collect();
    let report = compare(
        &got,
        &reference,
        Tolerance::new(1e-5 * (k as f64).sqrt(), 1e-5),
    );
    assert!(report.passed(), "{report}");
}

#[test]
fn ampkit_runs_on_your_own_cudarc_stream() {
    let Some(probe) = gpu() else { return };
    let ctx = ampkit::cudarc::driver::CudaContext::new(probe.info().ordinal).unwrap();
    let stream = ctx.new_stream().unwrap();
    let gpu = Gpu::from_stream(stream.clone()).unwrap();
    assert!(Arc::ptr_eq(gpu.stream(), &stream));
    let x = stream.clone_htod(&[-1.0f32, 2.0, -0.0, 3.5]).unwrap();
    let mut y = stream.alloc_zeros::<f32>(4).unwrap();
    ampkit::ops::relu::forward(&gpu, &x, &mut y).unwrap();
    assert_eq!(stream.clone_dtoh(&y).unwrap(), [0.0, 2.0, 0.0, 3.5]);
}
