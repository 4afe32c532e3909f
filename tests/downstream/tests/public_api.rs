//! ampkit's public API from outside the crate: the CPU GEMM under the tolerance harness, the
//! loss scaler's update rule, one AMP step with `amp::CpuGradScaler` / `amp::GradScaler` and the
//! `optim` objects (misuse refused, state dicts resumed), a small training run on synthetic data,
//! and GPU ops (and a GPU on your own cudarc stream) that skip without a GPU.

use ampkit::amp::{CpuGradScaler, GradScaler, LossScale, ScalerConfig, Stage};
use ampkit::check::{compare, unwritten, Tolerance};
use ampkit::cpu::gemm::{gemm_f64, Epilogue};
use ampkit::cpu::scaler::{update_scale, ScalerState};
use ampkit::cuda::Gpu;
use ampkit::optim::{GpuParam, Moment, Optimizer, Param, Sgd, SgdConfig};
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
fn scaler_update_rule() {
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

/// The gradients of a step at `scale`: fixed values times the scale, an inf at step 1.
fn scaled_grads(step: usize, scale: f32) -> Vec<Vec<f32>> {
    let g = |n: usize, seed: u32| -> Vec<f32> {
        let v = values(n, seed ^ step as u32);
        v.iter().map(|h| h.to_f32() * scale).collect()
    };
    let mut grads = vec![g(6, 7), g(1030, 9)];
    if step == 1 {
        grads[1][1029] = f32::INFINITY;
    }
    grads
}

fn scale_cfg() -> LossScale {
    LossScale::Dynamic(ScalerConfig {
        growth_interval: 2,
        ..ScalerConfig::default()
    })
}

fn sgd() -> SgdConfig {
    SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..SgdConfig::default()
    }
}

/// Master weights, f16 copies and gradients of a two-tensor model, on the host.
struct HostModel {
    master: Vec<Vec<f32>>,
    half: Vec<Vec<f16>>,
}

impl HostModel {
    fn new() -> HostModel {
        let master: Vec<Vec<f32>> = [(6, 1), (1030, 2)]
            .iter()
            .map(|&(n, s)| values(n, s).iter().map(|h| h.to_f32()).collect())
            .collect();
        let half = master
            .iter()
            .map(|m| m.iter().map(|&x| f16::from_f32(x)).collect())
            .collect();
        HostModel { master, half }
    }

    /// One AMP step after backward: `scaler.step(&mut opt, &mut params)`, `scaler.update()`.
    fn step(&mut self, scaler: &mut CpuGradScaler, opt: &mut Sgd, step: usize) -> bool {
        let mut grads = scaled_grads(step, scaler.scale());
        let mut params: Vec<Param<'_>> = (self.master.iter_mut())
            .zip(grads.iter_mut())
            .zip(self.half.iter_mut())
            .map(|((master, grad), half)| Param { master, grad, half })
            .collect();
        let skipped = scaler.step(opt, &mut params).unwrap().skipped();
        scaler.update().unwrap();
        skipped
    }
}

#[test]
fn amp_step_on_the_cpu_skips_overflows_refuses_misuse_and_resumes() {
    let mut scaler = CpuGradScaler::new(scale_cfg()).unwrap();
    let mut opt = Sgd::new(&Device::Cpu, sgd(), &[6, 1030]).unwrap();
    let mut model = HostModel::new();
    let mut scales = Vec::new();
    for step in 0..3 {
        assert_eq!(model.step(&mut scaler, &mut opt, step), step == 1);
        scales.push(scaler.scale());
    }
    // Clean, overflow (×0.5, skipped), clean: 2 clean steps in a row only after the overflow.
    assert_eq!(scales, [65536.0, 32768.0, 32768.0]);
    assert_eq!(opt.step_count().unwrap(), 2);
    assert_eq!(opt.moment(Moment::MomentumBuffer, 0).unwrap().len(), 6);

    // Misuse is an ampkit::Error, not a panic, and changes nothing.
    assert!(matches!(
        scaler.update(),
        Err(Error::InvalidArgument { .. })
    ));
    let mut g = scaled_grads(3, scaler.scale());
    let mut views: Vec<&mut [f32]> = g.iter_mut().map(|v| &mut v[..]).collect();
    scaler.unscale(&mut views).unwrap();
    assert!(scaler.unscale(&mut views).is_err(), "unscale twice");
    assert_eq!(scaler.stage(), Stage::Unscaled);
    let mut fresh = CpuGradScaler::new(scale_cfg()).unwrap();
    fresh.load_state_dict(&scaler.state_dict()).unwrap();
    assert_eq!(fresh.stage(), Stage::Ready);

    // The state dicts resume bit for bit.
    let (opt_dict, scaler_dict) = (opt.state_dict().unwrap(), fresh.state_dict());
    let mut opt2 = Sgd::new(&Device::Cpu, SgdConfig::default(), &[6, 1030]).unwrap();
    opt2.load_state_dict(&opt_dict).unwrap();
    let mut scaler2 = CpuGradScaler::new(LossScale::Off).unwrap();
    scaler2.load_state_dict(&scaler_dict).unwrap();
    let mut model2 = HostModel {
        master: model.master.clone(),
        half: model.half.clone(),
    };
    let mut scales = Vec::new();
    for step in 3..6 {
        model.step(&mut fresh, &mut opt, step);
        model2.step(&mut scaler2, &mut opt2, step);
        assert_eq!(model.master, model2.master);
        assert_eq!(fresh.scale(), scaler2.scale());
        scales.push(fresh.scale());
    }
    // The tracker (1 after step 2) came along: a growth after every second clean step.
    assert_eq!(scales, [65536.0, 65536.0, 131072.0]);
    assert_eq!(
        opt2.config(),
        opt.config(),
        "the config came with the state dict"
    );
}

#[test]
fn amp_step_on_the_gpu_matches_the_cpu_twin_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let device = Device::Cuda(gpu.clone());
    let mut scaler = GradScaler::new(&gpu, scale_cfg()).unwrap();
    let mut opt = ampkit::optim::Sgd::new(&device, sgd(), &[6, 1030]).unwrap();
    let (mut cpu_scaler, mut cpu_opt, mut cpu) = (
        CpuGradScaler::new(scale_cfg()).unwrap(),
        Sgd::new(&Device::Cpu, sgd(), &[6, 1030]).unwrap(),
        HostModel::new(),
    );
    let mut master: Vec<_> = cpu.master.iter().map(|m| gpu.upload(m).unwrap()).collect();
    let mut half: Vec<_> = cpu.half.iter().map(|h| gpu.upload(h).unwrap()).collect();
    for step in 0..5 {
        let scale = scaler.get_scale().unwrap(); // for the test; a training loop never syncs
        let mut grads: Vec<_> = scaled_grads(step, scale)
            .iter()
            .map(|g| gpu.upload(g).unwrap())
            .collect();
        let mut params: Vec<GpuParam<'_>> = (master.iter_mut())
            .zip(grads.iter_mut())
            .zip(half.iter_mut())
            .map(|((m, g), h)| GpuParam {
                master: m.slice_mut(..),
                grad: g.slice_mut(..),
                half: h.slice_mut(..),
            })
            .collect();
        scaler.step(&mut opt, &mut params).unwrap();
        drop(params);
        scaler.update().unwrap();
        let skipped = cpu.step(&mut cpu_scaler, &mut cpu_opt, step);
        assert_eq!(gpu.download(scaler.found_inf()).unwrap()[0] != 0.0, skipped);
        assert_eq!(scaler.get_scale().unwrap(), cpu_scaler.scale());
        for (d, h) in master.iter().zip(&cpu.master) {
            let got: Vec<u32> = gpu
                .download(d)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let want: Vec<u32> = h.iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want, "step {step}");
        }
    }
    assert_eq!(opt.state_dict().unwrap(), cpu_opt.state_dict().unwrap());
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

/// `upload_into` refreshes an existing buffer (or a view of one) in place, and refuses a length
/// mismatch without copying.
#[test]
fn upload_into_refreshes_a_buffer_in_place() {
    let Some(gpu) = gpu() else { return };
    let mut x = gpu.upload(&[f32::NAN; 6]).unwrap();
    gpu.upload_into(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &mut x)
        .unwrap();
    let mut tail = x.slice_mut(4..);
    gpu.upload_into(&[-5.0f32, -6.0], &mut tail).unwrap();
    let err = gpu.upload_into(&[0.0f32; 5], &mut x).unwrap_err();
    assert!(matches!(err, ampkit::Error::ShapeMismatch { .. }), "{err}");
    assert_eq!(gpu.download(&x).unwrap(), [1.0, 2.0, 3.0, 4.0, -5.0, -6.0]);
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
