//! Fused optimizer benchmark: GB/s (bytes read + written) of one `GpuOptimizer::step` for Adam,
//! AdamW, SGD with momentum and plain SGD, on the `adam` list of `bench/cases.json` (which
//! `ampkit bench` runs Adam on): 4 × 2^23 parameters (128 MB of f32 masters; Adam moves 1 GB) and
//! the default MLP's list (784·512 + 512 + 512·10 + 10), beside the
//! device-to-device copy of the same byte count measured in the same run, and a skipped step
//! (found_inf set: the cost of a launch that returns at once). CUDA events, median of 50 after
//! 10 warm-ups.

mod common;

use ampkit::cpu::optim::{OptimizerConfig, SgdConfig};
use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer, Timing};
use ampkit::ops::optim::{GpuOptimizer, GpuParamTensor};
use ampkit::{f16, Error, Result};

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    if let Err(e) = run(&gpu) {
        panic!("optim benchmark failed: {e}");
    }
}

/// Bytes one step moves per parameter: reads of master, grad and state; writes of master,
/// state and the f16 copy.
fn bytes_per_param(cfg: &OptimizerConfig) -> usize {
    match cfg {
        OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => 16 + 14,
        OptimizerConfig::Sgd(c) if c.momentum != 0.0 => 12 + 10,
        OptimizerConfig::Sgd(_) => 8 + 6,
    }
}

fn run(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    println!(
        "\nfused optimizer step on {} (median of 50, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>9}",
        "case", "params", "time (us)", "GB/s", "of copy"
    );
    let configs = [
        ("Adam", OptimizerConfig::adam(1e-3)),
        ("AdamW", OptimizerConfig::adamw(1e-3)),
        ("SGD momentum", OptimizerConfig::sgd_momentum(1e-2, 0.9)),
        (
            "SGD",
            OptimizerConfig::Sgd(SgdConfig {
                lr: 1e-2,
                ..SgdConfig::default()
            }),
        ),
    ];
    for case in &common::cases().adam {
        let (name, sizes) = (case.name.as_str(), &case.tensors);
        let total: usize = sizes.iter().sum();
        let fill = |n: usize, seed: u32, scale: f32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| {
                    let u = ((i ^ seed).wrapping_mul(0x9E37_79B9) >> 8) as f32 / 16_777_216.0;
                    (u - 0.5) * scale
                })
                .collect()
        };
        let mut masters: Vec<DeviceBuffer<f32>> = (sizes.iter().enumerate())
            .map(|(t, &n)| gpu.upload(&fill(n, t as u32, 0.2)))
            .collect::<Result<_>>()?;
        let grads: Vec<DeviceBuffer<f32>> = (sizes.iter().enumerate())
            .map(|(t, &n)| gpu.upload(&fill(n, 77 + t as u32, 1e-2)))
            .collect::<Result<_>>()?;
        let mut halves: Vec<DeviceBuffer<f16>> = sizes
            .iter()
            .map(|&n| gpu.alloc_zeros(n))
            .collect::<Result<_>>()?;
        let clean = gpu.upload(&[0.0f32])?;
        let overflow = gpu.upload(&[1.0f32])?;
        for (opt_name, cfg) in &configs {
            let bytes = bytes_per_param(cfg) * total;
            // The same traffic as a copy: half the bytes read, half written.
            let copy_src: DeviceBuffer<u8> = gpu.alloc_zeros(bytes / 2)?;
            let mut copy_dst: DeviceBuffer<u8> = gpu.alloc_zeros(bytes / 2)?;
            let t_copy = timer.measure(10, 50, || {
                gpu.stream()
                    .memcpy_dtod(&copy_src, &mut copy_dst)
                    .map_err(Error::driver("copy"))
            })?;
            drop((copy_src, copy_dst));
            let mut opt = GpuOptimizer::new(gpu, cfg, sizes)?;
            let mut params: Vec<GpuParamTensor<'_>> = (masters.iter_mut())
                .zip(&grads)
                .zip(halves.iter_mut())
                .map(|((m, g), h)| GpuParamTensor {
                    master: m.as_view_mut(),
                    grad: g.as_view(),
                    half: h.as_view_mut(),
                })
                .collect();
            let t_step = timer.measure(10, 50, || opt.step(gpu, cfg, &mut params, &clean))?;
            let t_skip = timer.measure(10, 50, || opt.step(gpu, cfg, &mut params, &overflow))?;
            let gbs = |b: usize, t: Timing| b as f64 / (t.median_ms * 1e-3) / 1e9;
            let copy_gbs = gbs(bytes, t_copy);
            for (case, t, moved) in [
                ("copy (ceiling)", t_copy, bytes),
                ("step", t_step, bytes),
                ("skipped step", t_skip, 0),
            ] {
                let (rate, share) = if moved > 0 {
                    let r = gbs(moved, t);
                    (format!("{r:.0}"), format!("{:.0}%", 100.0 * r / copy_gbs))
                } else {
                    ("-".into(), "-".into())
                };
                println!(
                    "{:<34} {:>10} {:>10.1} {:>10} {:>9}",
                    format!("{name}: {opt_name} {case}"),
                    total,
                    t.median_ms * 1e3,
                    rate,
                    share
                );
            }
        }
    }
    Ok(())
}
