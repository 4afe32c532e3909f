//! A hand-written AMP training step for a linear classifier (64 features → 10 classes, batch 32):
//! f16 forward GEMM with f32 accumulation, softmax-cross-entropy whose gradient carries the loss
//! scale (in f16, where an overflow shows up), backward GEMM and bias gradient, then PyTorch's
//! `scaler.step(opt)` (unscale + inf check, Adam on f32 masters, skipped on inf) and
//! `scaler.update()` with `amp::GradScaler` and `optim::Adam`. The initial scale, 2²², is too
//! large on purpose: the first step overflows, is skipped and halves the scale; every 3 clean
//! steps the scale doubles and overflows again while the loss is still high.
//!
//! The CPU path uses `amp::CpuGradScaler` and an `optim::Adam` on the host over the
//! `ampkit::cpu::*` ops, the GPU path `amp::GradScaler` and an `optim::Adam` on the device over
//! the `ampkit::ops::*` twins, with the scale, the flag, the moments and the loss in device
//! memory. Without a GPU only the CPU path runs.
//!
//! cargo run --release --example 04_amp_step

use ampkit::amp::{CpuGradScaler, GradScaler, LossScale, ScalerConfig};
use ampkit::cpu;
use ampkit::cpu::gemm::Epilogue as CpuEpilogue;
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::{self, gemm::Epilogue};
use ampkit::optim::{Adam, AdamConfig, GpuParam, Optimizer, Param};
use ampkit::shape::{GemmShape, Layout};
use ampkit::{f16, Device, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

const BATCH: usize = 32;
const FEATURES: usize = 64;
const CLASSES: usize = 10;
const STEPS: usize = 10;

/// What one step did: loss, the scale it ran with, the scale after the update, skipped.
type Log = (f32, f32, f32, bool);

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let loss_scale = LossScale::Dynamic(ScalerConfig {
        init_scale: (1 << 22) as f32,
        growth_interval: 3,
        ..ScalerConfig::default()
    });
    let opt_cfg = AdamConfig {
        lr: 0.05,
        ..AdamConfig::default()
    };

    // Synthetic data: labels are the argmax of a fixed random projection of the inputs.
    let mut rng = StdRng::seed_from_u64(4);
    let x: Vec<f16> = (0..BATCH * FEATURES)
        .map(|_| f16::from_f32(rng.gen_range(-1.0..1.0)))
        .collect();
    let proj: Vec<f32> = (0..CLASSES * FEATURES)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let labels: Vec<u32> = (0..BATCH)
        .map(|i| {
            let score = |c: usize| {
                (0..FEATURES)
                    .map(|f| x[i * FEATURES + f].to_f32() * proj[c * FEATURES + f])
                    .sum::<f32>()
            };
            (0..CLASSES)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap() as u32
        })
        .collect();
    let bound = 1.0 / (FEATURES as f32).sqrt(); // nn.Linear's initialisation
    let w0: Vec<f32> = (0..CLASSES * FEATURES)
        .map(|_| rng.gen_range(-bound..bound))
        .collect();
    let b0: Vec<f32> = (0..CLASSES).map(|_| rng.gen_range(-bound..bound)).collect();

    println!("CPU path (amp::CpuGradScaler, optim::Adam on the host, ampkit::cpu ops):");
    let cpu_log = cpu_path(&x, &labels, &w0, &b0, loss_scale, opt_cfg)?;

    let (device, note) = Device::auto();
    println!("{note}");
    let Some(gpu) = device.gpu() else {
        println!("no GPU: ran the CPU path only");
        return Ok(());
    };
    println!("GPU path (amp::GradScaler, optim::Adam on the device, ampkit::ops):");
    let gpu_log = gpu_path(gpu, &x, &labels, &w0, &b0, loss_scale, opt_cfg)?;
    let same = |(a, b): (&Log, &Log)| {
        a.1 == b.1 && a.2 == b.2 && a.3 == b.3 && (a.0 - b.0).abs() <= 1e-3 * a.0
    };
    if !cpu_log.iter().zip(&gpu_log).all(same) {
        return Err("the GPU steps differ from the CPU steps".into());
    }
    println!("GPU and CPU agree: same scales and skipped steps, losses within 1e-3");
    Ok(())
}

fn print_step(step: usize, (loss, scale, next, skipped): Log) {
    let what = if skipped {
        "inf/NaN in the gradients: step skipped"
    } else {
        "stepped"
    };
    println!("  step {step}: loss {loss:.4}  scale {scale:>7} → {next:<7}  {what}");
}

fn cpu_path(
    x: &[f16],
    labels: &[u32],
    w0: &[f32],
    b0: &[f32],
    loss_scale: LossScale,
    opt_cfg: AdamConfig,
) -> Result<Vec<Log>> {
    let (mut w, mut b) = (w0.to_vec(), b0.to_vec()); // f32 masters
    let mut w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect(); // f16 working copy
    let mut b16 = vec![f16::ZERO; CLASSES]; // the bias enters the GEMM epilogue in f32
    let (mut dw, mut db) = (vec![0f32; w.len()], vec![0f32; CLASSES]);
    let mut opt = Adam::new(&Device::Cpu, opt_cfg, &[w.len(), b.len()])?;
    let mut scaler = CpuGradScaler::new(loss_scale)?;
    let mut log = Vec::new();
    for step in 0..STEPS {
        let scale = scaler.scale();
        // Forward: logits = X·Wᵀ + b, f16 operands, f32 accumulation and output.
        let mut logits = vec![0f32; BATCH * CLASSES];
        let fwd = GemmShape::new(Layout::Forward, BATCH, CLASSES, FEATURES);
        cpu::gemm::gemm(fwd, x, &w16, &CpuEpilogue::bias(&b, false), &mut logits)?;
        // 1. The loss, and its gradient times the loss scale, in f16.
        let mut dlogits = vec![f16::ZERO; BATCH * CLASSES];
        let loss = cpu::cross_entropy::softmax_cross_entropy(
            &logits,
            labels,
            BATCH,
            CLASSES,
            scale,
            &mut dlogits,
        )?;
        // Backward: dW = dlogitsᵀ·X and db = column sums, f32 (still scaled).
        let wgrad = GemmShape::new(Layout::Wgrad, CLASSES, FEATURES, BATCH);
        cpu::gemm::gemm(wgrad, &dlogits, x, &CpuEpilogue::plain(), &mut dw)?;
        cpu::gemm::bias_grad(&dlogits, BATCH, CLASSES, &mut db)?;
        // 2. Unscale, look for inf/NaN, and Adam, which skips itself on found_inf.
        let mut params = [
            Param {
                master: &mut w,
                grad: &mut dw,
                half: &mut w16,
            },
            Param {
                master: &mut b,
                grad: &mut db,
                half: &mut b16,
            },
        ];
        let outcome = scaler.step(&mut opt, &mut params)?;
        // 3. Back off on overflow, grow after `growth_interval` clean steps.
        scaler.update()?;
        log.push((loss, scale, scaler.scale(), outcome.skipped()));
        print_step(step, log[step]);
    }
    let misuse = scaler
        .update()
        .expect_err("update() without an inf check is refused");
    println!("  the scaler refuses misuse, like PyTorch: {misuse}");
    println!("  real optimizer steps: {} of {STEPS}", opt.step_count()?);
    Ok(log)
}

fn gpu_path(
    gpu: &std::sync::Arc<Gpu>,
    x: &[f16],
    labels: &[u32],
    w0: &[f32],
    b0: &[f32],
    loss_scale: LossScale,
    opt_cfg: AdamConfig,
) -> Result<Vec<Log>> {
    let (x, labels) = (gpu.upload(x)?, gpu.upload(labels)?);
    let (mut w, mut b) = (gpu.upload(w0)?, gpu.upload(b0)?);
    let w16_host: Vec<f16> = w0.iter().map(|&v| f16::from_f32(v)).collect();
    let (mut w16, mut b16) = (gpu.upload(&w16_host)?, gpu.alloc_zeros::<f16>(CLASSES)?);
    let (mut dw, mut db) = (
        gpu.alloc_zeros::<f32>(w0.len())?,
        gpu.alloc_zeros::<f32>(CLASSES)?,
    );
    let mut logits: DeviceBuffer<f32> = gpu.alloc_zeros(BATCH * CLASSES)?;
    let mut dlogits: DeviceBuffer<f16> = gpu.alloc_zeros(BATCH * CLASSES)?;
    // The scaler's state, the inf flag, the moments and the loss live on the device: a step
    // never syncs.
    let mut scaler = GradScaler::new(gpu, loss_scale)?;
    let mut opt = Adam::new(&Device::Cuda(gpu.clone()), opt_cfg, &[w0.len(), CLASSES])?;
    let mut loss = gpu.alloc_zeros::<f32>(1)?;
    let mut log = Vec::new();
    for step in 0..STEPS {
        let scale_before = scaler.get_scale()?; // for the log only (synchronises)
        let b_view = b.slice(..);
        let fwd = GemmShape::new(Layout::Forward, BATCH, CLASSES, FEATURES);
        ops::gemm::gemm(
            gpu,
            fwd,
            &x,
            &w16,
            &Epilogue::bias(&b_view, false),
            &mut logits,
        )?;
        // 1. The loss gradient at the scaler's device scale.
        ops::cross_entropy::softmax_cross_entropy(
            gpu,
            &logits,
            &labels,
            BATCH,
            CLASSES,
            scaler.scale(),
            &mut dlogits,
            &mut loss,
        )?;
        let wgrad = GemmShape::new(Layout::Wgrad, CLASSES, FEATURES, BATCH);
        ops::gemm::gemm(gpu, wgrad, &dlogits, &x, &Epilogue::plain(), &mut dw)?;
        ops::gemm::bias_grad(gpu, &dlogits, BATCH, CLASSES, &mut db)?;
        // 2. and 3.: queued on the device; the skip decision never leaves it.
        let mut params = [
            GpuParam {
                master: w.slice_mut(..),
                grad: dw.slice_mut(..),
                half: w16.slice_mut(..),
            },
            GpuParam {
                master: b.slice_mut(..),
                grad: db.slice_mut(..),
                half: b16.slice_mut(..),
            },
        ];
        scaler.step(&mut opt, &mut params)?;
        scaler.update()?;
        // A training loop reads these back every N steps; here every step, for the log.
        let entry = (
            gpu.download(&loss)?[0],
            scale_before,
            scaler.get_scale()?,
            gpu.download(scaler.found_inf())?[0] != 0.0,
        );
        log.push(entry);
        print_step(step, entry);
    }
    println!("  real optimizer steps: {} of {STEPS}", opt.step_count()?);
    Ok(log)
}
