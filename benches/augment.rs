//! Shifted-gather benchmark: GB/s of `ops::augment::gather_shifted` assembling training inputs from
//! MNIST-sized images resident on the GPU (28×28, shifts of up to 2 pixels): a whole bundled epoch
//! (8,000 samples) as f32, a 4096-sample batch as f16 and a 60,000-sample epoch as f16, beside a
//! device-to-device copy of the bytes the kernel writes, measured in the same run. Bytes counted:
//! the output written plus as much read (the shifted loads mostly hit the same image's lines).
//! CUDA events, median of 50 after 10 warm-ups. Without a GPU it prints `skipped: no CUDA device`
//! and exits 0.

mod common;

use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer, Timing};
use ampkit::ops::augment::{gather_shifted, AugmentOutput};
use ampkit::{f16, Error, Result};
use cudarc::driver::ValidAsZeroBits;

const SIDE: usize = 28;
const IMAGES: usize = 10_000;

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    if let Err(e) = run(&gpu) {
        panic!("augment benchmark failed: {e}");
    }
}

fn run(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    println!(
        "\naugment gather on {} (median of 50, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>9}",
        "case", "MB moved", "time (us)", "GB/s", "of copy"
    );
    let inputs = SIDE * SIDE;
    // Random-looking pixels (never all equal): a hash of the index, in [0, 1).
    let host: Vec<f32> = (0..(IMAGES * inputs) as u32)
        .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 8) as f32 / 16_777_216.0)
        .collect();
    let images = gpu.upload(&host)?;
    case::<f32>(gpu, &timer, &images, "epoch 8000 f32", 8000)?;
    case::<f16>(gpu, &timer, &images, "batch 4096 f16", 4096)?;
    case::<f16>(gpu, &timer, &images, "epoch 60000 f16", 60_000)?;
    Ok(())
}

fn case<T: AugmentOutput + ValidAsZeroBits>(
    gpu: &Gpu,
    timer: &GpuTimer<'_>,
    images: &DeviceBuffer<f32>,
    name: &str,
    samples: usize,
) -> Result<()> {
    let inputs = SIDE * SIDE;
    let order: Vec<u32> = (0..samples as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % IMAGES as u32)
        .collect();
    let shifts: Vec<i32> = (0..2 * samples as u32)
        .map(|i| (i.wrapping_mul(0x85EB_CA6B) >> 29) as i32 % 5 - 2)
        .collect();
    let (order, shifts) = (gpu.upload(&order)?, gpu.upload(&shifts)?);
    let mut out: DeviceBuffer<T> = gpu.alloc_zeros(samples * inputs)?;
    let written = samples * inputs * std::mem::size_of::<T>();
    let bytes = written + samples * inputs * 4;
    let copy_src: DeviceBuffer<u8> = gpu.alloc_zeros(bytes / 2)?;
    let mut copy_dst: DeviceBuffer<u8> = gpu.alloc_zeros(bytes / 2)?;
    let t_copy = timer.measure(10, 50, || {
        gpu.stream()
            .memcpy_dtod(&copy_src, &mut copy_dst)
            .map_err(Error::driver("copy"))
    })?;
    let t = timer.measure(10, 50, || {
        gather_shifted(gpu, images, inputs, SIDE, &order, &shifts, 0.0, &mut out)
    })?;
    let gbs = |t: Timing| bytes as f64 / (t.median_ms * 1e-3) / 1e9;
    for (label, t) in [("copy (ceiling)", t_copy), ("gather", t)] {
        println!(
            "{:<30} {:>10.1} {:>10.1} {:>10.0} {:>8.0}%",
            format!("{name}: {label}"),
            bytes as f64 / 1e6,
            t.median_ms * 1e3,
            gbs(t),
            100.0 * gbs(t) / gbs(t_copy)
        );
    }
    Ok(())
}
