//! LayerNorm forward over a `[256, 768]` activation and fused softmax-cross-entropy over
//! `[256, 10]` logits (loss scale 1024, f16 gradients as under AMP), on the GPU against the CPU
//! references. Without a GPU: the f32 CPU references against their f64 selves.
//!
//! cargo run --release --example 03_layernorm_softmax_ce

use ampkit::check::{compare, Tolerance};
use ampkit::cpu::{cross_entropy as cpu_ce, layernorm as cpu_ln};
use ampkit::ops::{cross_entropy, layernorm};
use ampkit::{f16, Device};
use rand::{rngs::StdRng, Rng, SeedableRng};

const EPS: f32 = 1e-5;

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols, classes) = (256, 768, 10);
    // Rows with their own offset and spread, so the mean subtraction matters.
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| (i / cols) as f32 * 0.01 + rng.gen_range(-2.0..2.0f32))
        .collect();
    let gamma: Vec<f32> = (0..cols).map(|_| rng.gen_range(0.5..1.5)).collect();
    let beta: Vec<f32> = (0..cols).map(|_| rng.gen_range(-0.5..0.5)).collect();
    let logits: Vec<f32> = (0..rows * classes)
        .map(|_| rng.gen_range(-4.0..4.0))
        .collect();
    let labels: Vec<u32> = (0..rows as u32).map(|r| r * 7 % classes as u32).collect();
    let scale = 1024.0f32;

    // CPU references: f32 (what a kernel is compared with) and f64 (the exact-ish truth).
    let (mut y, mut mean, mut rstd) = (vec![0f32; rows * cols], vec![0f32; rows], vec![0f32; rows]);
    cpu_ln::forward(
        &x, rows, cols, &gamma, &beta, EPS, &mut y, &mut mean, &mut rstd,
    )?;
    let (mut y64, mut mean64, mut rstd64) =
        (vec![0f64; rows * cols], vec![0f64; rows], vec![0f64; rows]);
    let (g64, b64) = (wide(&gamma), wide(&beta));
    cpu_ln::forward(
        &wide(&x),
        rows,
        cols,
        &g64,
        &b64,
        f64::from(EPS),
        &mut y64,
        &mut mean64,
        &mut rstd64,
    )?;
    let ln_tol = Tolerance::new(1e-5, 1e-5);
    println!("layernorm y, cpu f32 vs f64: {}", compare(&y, &y64, ln_tol));

    // Cross-entropy: the reference computes in f64; with D = f64 its dlogits are unrounded.
    let mut d64 = vec![0f64; rows * classes];
    let loss64 = cpu_ce::softmax_cross_entropy(&logits, &labels, rows, classes, scale, &mut d64)?;
    let mut d16 = vec![f16::ZERO; rows * classes];
    cpu_ce::softmax_cross_entropy(&logits, &labels, rows, classes, scale, &mut d16)?;
    // An f16 gradient is within half an ulp (2⁻¹¹ relative) of the exact one, plus f32 error.
    let g = f64::from(scale) / rows as f64;
    let ce_tol = Tolerance::new(1e-5 * g + 6e-8, 4.9e-4 + 1e-5).with_rel_l2(1e-3);
    println!(
        "mean loss {loss64:.6} (f64); dlogits ×{scale}/{rows} in f16 vs f64: {}",
        compare(&d16, &d64, ce_tol)
    );

    let (device, note) = Device::auto();
    println!("{note}");
    let Some(gpu) = device.gpu() else {
        println!("no GPU: ran the CPU part only");
        return Ok(());
    };

    // LayerNorm on the GPU: f32 in and out, mean and rstd saved for the backward.
    let (dx, dg, db) = (gpu.upload(&x)?, gpu.upload(&gamma)?, gpu.upload(&beta)?);
    let mut dy = gpu.alloc_zeros::<f32>(rows * cols)?;
    let (mut dmean, mut drstd) = (gpu.alloc_zeros::<f32>(rows)?, gpu.alloc_zeros::<f32>(rows)?);
    layernorm::forward(
        gpu, &dx, rows, cols, &dg, &db, EPS, &mut dy, &mut dmean, &mut drstd,
    )?;
    let mut ok = true;
    for (what, got, want) in [
        ("y", gpu.download(&dy)?, &y),
        ("mean", gpu.download(&dmean)?, &mean),
        ("rstd", gpu.download(&drstd)?, &rstd),
    ] {
        let r = compare(&got, &wide(want), ln_tol);
        println!("layernorm {what}, gpu vs cpu: {r}");
        ok &= r.passed();
    }

    // Cross-entropy on the GPU: the loss scale is read from device memory and the mean loss is
    // written there, so a training step never waits for the host.
    let (dlogits_in, dlabels) = (gpu.upload(&logits)?, gpu.upload(&labels)?);
    let dscale = gpu.upload(&[scale])?;
    let mut ddlogits = gpu.alloc_zeros::<f16>(rows * classes)?;
    let mut dloss = gpu.alloc_zeros::<f32>(1)?;
    cross_entropy::softmax_cross_entropy(
        gpu,
        &dlogits_in,
        &dlabels,
        rows,
        classes,
        &dscale,
        &mut ddlogits,
        &mut dloss,
    )?;
    let loss = gpu.download(&dloss)?[0];
    let r = compare(&gpu.download(&ddlogits)?, &d64, ce_tol);
    println!("mean loss {loss:.6} (gpu); dlogits gpu vs cpu f64: {r}");
    ok &= r.passed() && (f64::from(loss) - loss64).abs() <= 1e-5 * loss64.abs();
    if !ok {
        return Err("a GPU result is outside its tolerance".into());
    }
    Ok(())
}
