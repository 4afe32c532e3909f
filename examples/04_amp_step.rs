//! A hand-written AMP training step for a linear classifier (64 features → 10 classes, batch 32):
//! f16 forward GEMM with f32 accumulation, softmax-cross-entropy whose gradient carries the loss
//! scale (in f16, where an overflow shows up), backward GEMM and bias gradient, unscale + inf
//! check, Adam on f32 masters (skipped on inf), and PyTorch's dynamic scale update — the call
//! order enforced by `amp::ScalerStages`. The initial scale, 2²², is too large on purpose: the
//! first step overflows, is skipped and halves the scale; every 3 clean steps the scale doubles
//! and overflows again while the loss is still high.
//!
//! The CPU path uses `ampkit::cpu::*`, the GPU path the `ampkit::ops::*` twins with the scale, the
//! flag and the loss in device memory. Without a GPU only the CPU path runs.
//!
//! cargo run --release --example 04_amp_step

use ampkit::amp::ScalerStages;
use ampkit::cpu::gemm::Epilogue as CpuEpilogue;
use ampkit::cpu::optim::{OptimizerConfig, OptimizerState, ParamTensor};
use ampkit::cpu::scaler::{ScalerConfig, ScalerState};
use ampkit::cpu::{self, optim, unscale};
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::{self, gemm::Epilogue, optim::GpuOptimizer, optim::GpuParamTensor};
use ampkit::shape::{GemmShape, Layout};
use ampkit::{f16, Device, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

const BATCH: usize = 32;
const FEATURES: usize = 64;
const CLASSES: usize = 10;
const STEPS: usize = 10;

/// What one step did: loss, the scale it ran with, the scale after the update, skipped.
type Log = (f64, f32, f32, bool);

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let scaler_cfg = ScalerConfig {
        init_scale: (1 << 22) as f32,
        growth_interval: 3,
        ..ScalerConfig::default()
    };
    let opt_cfg = OptimizerConfig::adam(0.05);

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

    println!("CPU path (ampkit::cpu):");
    let cpu_log = cpu_path(&x, &labels, &w0, &b0, &scaler_cfg, &opt_cfg)?;

    let (device, note) = Device::auto();
    println!("{note}");
    let Some(gpu) = device.gpu() else {
        println!("no GPU: ran the CPU path only");
        return Ok(());
    };
    println!("GPU path (ampkit::ops):");
    let gpu_log = gpu_path(gpu, &x, &labels, &w0, &b0, &scaler_cfg, &opt_cfg)?;
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
    scaler_cfg: &ScalerConfig,
    opt_cfg: &OptimizerConfig,
) -> Result<Vec<Log>> {
    let (mut w, mut b) = (w0.to_vec(), b0.to_vec()); // f32 masters
    let mut w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect(); // f16 working copy
    let mut b16 = vec![f16::ZERO; CLASSES]; // the bias enters the GEMM epilogue in f32
    let (mut dw, mut db) = (vec![0f32; w.len()], vec![0f32; CLASSES]);
    let mut opt = OptimizerState::new(opt_cfg, &[w.len(), b.len()])?;
    let mut scaler = ScalerState::new(scaler_cfg)?;
    let mut stages = ScalerStages::new();
    let mut log = Vec::new();
    for step in 0..STEPS {
        let scale = scaler.scale;
        // Forward: logits = X·Wᵀ + b, f16 operands, f32 accumulation and output.
        let mut logits = vec![0f32; BATCH * CLASSES];
        let fwd = GemmShape::new(Layout::Forward, BATCH, CLASSES, FEATURES);
        cpu::gemm::gemm(fwd, x, &w16, &CpuEpilogue::bias(&b, false), &mut logits)?;
        // Loss, and its gradient times the loss scale, in f16.
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
        // Unscale and look for inf/NaN, then the optimizer, which skips itself on found_inf.
        stages.unscale()?;
        let found_inf =
            unscale::unscale_and_check(&mut [&mut dw[..], &mut db[..]], unscale::inv_scale(scale));
        stages.step()?;
        let mut params = [
            ParamTensor {
                master: &mut w,
                grad: &dw,
                half: &mut w16,
            },
            ParamTensor {
                master: &mut b,
                grad: &db,
                half: &mut b16,
            },
        ];
        let outcome = optim::step(opt_cfg, &mut opt, &mut params, found_inf)?;
        // Back off on overflow, grow after `growth_interval` clean steps.
        cpu::scaler::update_scale(&mut scaler, found_inf, scaler_cfg);
        stages.update()?;
        log.push((loss, scale, scaler.scale, outcome.skipped()));
        print_step(step, log[step]);
    }
    let misuse = stages
        .update()
        .expect_err("update() without an inf check is refused");
    println!("  ScalerStages refuses misuse, like PyTorch: {misuse}");
    println!("  real optimizer steps: {} of {STEPS}", opt.step_count());
    Ok(log)
}

fn gpu_path(
    gpu: &Gpu,
    x: &[f16],
    labels: &[u32],
    w0: &[f32],
    b0: &[f32],
    scaler_cfg: &ScalerConfig,
    opt_cfg: &OptimizerConfig,
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
    // The scaler's state, the inf flag and the loss live on the device: a step never syncs.
    let mut scale = gpu.upload(&[scaler_cfg.init_scale])?;
    let mut tracker = gpu.alloc_zeros::<i32>(1)?;
    let mut found_inf = gpu.alloc_zeros::<f32>(1)?;
    let mut loss = gpu.alloc_zeros::<f32>(1)?;
    let mut opt = GpuOptimizer::new(gpu, opt_cfg, &[w0.len(), CLASSES])?;
    let mut stages = ScalerStages::new();
    let mut log = Vec::new();
    for step in 0..STEPS {
        let scale_before = gpu.download(&scale)?[0]; // for the log only (synchronises)
        ops::cast::fill_f32(gpu, &mut found_inf, 0.0)?; // reset once per step
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
        ops::cross_entropy::softmax_cross_entropy(
            gpu,
            &logits,
            &labels,
            BATCH,
            CLASSES,
            &scale,
            &mut dlogits,
            &mut loss,
        )?;
        let wgrad = GemmShape::new(Layout::Wgrad, CLASSES, FEATURES, BATCH);
        ops::gemm::gemm(gpu, wgrad, &dlogits, &x, &Epilogue::plain(), &mut dw)?;
        ops::gemm::bias_grad(gpu, &dlogits, BATCH, CLASSES, &mut db)?;
        stages.unscale()?;
        ops::unscale::unscale_and_check(
            gpu,
            &mut [dw.slice_mut(..), db.slice_mut(..)],
            &scale,
            &mut found_inf,
        )?;
        stages.step()?;
        let mut params = [
            GpuParamTensor {
                master: w.slice_mut(..),
                grad: dw.slice(..),
                half: w16.slice_mut(..),
            },
            GpuParamTensor {
                master: b.slice_mut(..),
                grad: db.slice(..),
                half: b16.slice_mut(..),
            },
        ];
        opt.step(gpu, opt_cfg, &mut params, &found_inf)?; // skips itself when found_inf ≠ 0
        ops::scaler::update_scale(gpu, &mut scale, &mut tracker, &found_inf, scaler_cfg)?;
        stages.update()?;
        // A training loop reads these back every N steps; here every step, for the log.
        let entry = (
            f64::from(gpu.download(&loss)?[0]),
            scale_before,
            gpu.download(&scale)?[0],
            gpu.download(&found_inf)?[0] != 0.0,
        );
        log.push(entry);
        print_step(step, entry);
    }
    println!(
        "  real optimizer steps: {} of {STEPS}",
        opt.step_count(gpu)?
    );
    Ok(log)
}
