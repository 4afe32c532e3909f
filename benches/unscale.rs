//! Unscale + inf-check benchmark: GB/s (bytes read + written) of the f32 in-place and f16 → f32
//! kernels on the `unscale` list of `bench/cases.json`, which `ampkit bench` runs too: 2^24-element
//! tensors ×4 (256 MB of f32 traffic in place) and the default MLP's gradient list (784·512 +
//! 512 + 512·10 + 10 elements), beside the device-to-device copy of
//! the same byte count measured in the same run. CUDA events, median of 50 after 10 warm-ups.

mod common;

use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer};
use ampkit::ops::unscale::{unscale_and_check, unscale_f16_to_f32};
use ampkit::{Error, Result};
use half::f16;

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    if let Err(e) = run(&gpu) {
        panic!("unscale benchmark failed: {e}");
    }
}

fn run(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    println!(
        "\nunscale + inf check on {} (median of 50, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>9}",
        "case", "elements", "time (us)", "GB/s", "of copy"
    );
    for case in &common::cases().unscale {
        let (name, sizes) = (case.name.as_str(), &case.tensors);
        let total: usize = sizes.iter().sum();
        let fill = |n: usize, seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B9) >> 8) as f32 / 16_777_216.0 - 0.5)
                .collect()
        };
        let mut grads: Vec<DeviceBuffer<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(t, &n)| gpu.upload(&fill(n, t as u32)))
            .collect::<Result<_>>()?;
        let halves: Vec<DeviceBuffer<f16>> = sizes
            .iter()
            .enumerate()
            .map(|(t, &n)| {
                gpu.upload(
                    &fill(n, t as u32)
                        .iter()
                        .map(|&v| f16::from_f32(v))
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Result<_>>()?;
        // Repeated in-place runs shrink the values by 2^-16 each time, toward subnormals and zero;
        // GPUs handle both at full speed, and the kernel is memory-bound either way.
        let scale = gpu.upload(&[65536.0f32])?;
        let mut found = gpu.upload(&[0f32])?;
        let mut copy_dst: DeviceBuffer<f32> = gpu.alloc_zeros(total)?;
        let copy_src: DeviceBuffer<f32> = gpu.alloc_zeros(total)?;
        let t_copy = timer.measure(10, 50, || {
            gpu.stream()
                .memcpy_dtod(&copy_src, &mut copy_dst)
                .map_err(Error::driver("copy"))
        })?;
        let t_f32 = timer.measure(10, 50, || {
            unscale_and_check(gpu, &mut grads, &scale, &mut found)
        })?;
        let mut dst: Vec<DeviceBuffer<f32>> = sizes
            .iter()
            .map(|&n| gpu.alloc_zeros(n))
            .collect::<Result<_>>()?;
        let t_f16 = timer.measure(10, 50, || {
            unscale_f16_to_f32(gpu, &halves, &mut dst, &scale, &mut found)
        })?;
        let copy_gbs = (8 * total) as f64 / (t_copy.median_ms * 1e-3) / 1e9;
        for (case, bytes, t) in [
            ("copy f32 (ceiling)", 8 * total, t_copy),
            ("f32 in place", 8 * total, t_f32),
            ("f16 -> f32", 6 * total, t_f16),
        ] {
            let gbs = bytes as f64 / (t.median_ms * 1e-3) / 1e9;
            println!(
                "{:<26} {:>10} {:>10.1} {:>10.0} {:>8.0}%",
                format!("{name}: {case}"),
                total,
                t.median_ms * 1e3,
                gbs,
                100.0 * gbs / copy_gbs
            );
        }
    }
    Ok(())
}
