//! ReLU backward benchmark: GB/s (dy and y read, dx written) in f16 and f32 on the `relu` list of
//! `bench/cases.json`, which `ampkit bench` runs too: 2^26 elements and the default MLP's hidden
//! gradient (4096 × 512), beside the device-to-device copy of the
//! same byte count measured in the same run. CUDA events, median of 50 after 10 warm-ups.

mod common;

use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer, Timing};
use ampkit::ops::relu::{backward, ReluElement};
use ampkit::{f16, Error, Result};
use cudarc::driver::ValidAsZeroBits;

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    if let Err(e) = run(&gpu) {
        panic!("relu benchmark failed: {e}");
    }
}

fn run(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    println!(
        "\nrelu backward on {} (median of 50, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>9}",
        "case", "elements", "time (us)", "GB/s", "of copy"
    );
    for size in &common::cases().relu {
        let (name, n) = (size.name.as_str(), size.n);
        case::<f16>(gpu, &timer, &format!("{name} f16"), n, f16::from_f32)?;
        case::<f32>(gpu, &timer, &format!("{name} f32"), n, |x| x)?;
    }
    Ok(())
}

fn case<T: ReluElement + ValidAsZeroBits>(
    gpu: &Gpu,
    timer: &GpuTimer<'_>,
    name: &str,
    n: usize,
    from: impl Fn(f32) -> T,
) -> Result<()> {
    // Half the outputs positive, half not: the select is data-dependent, so no constant input.
    let host: Vec<T> = (0..n as u32)
        .map(|i| from((i.wrapping_mul(0x9E37_79B9) >> 8) as f32 / 16_777_216.0 - 0.5))
        .collect();
    let dy = gpu.upload(&host)?;
    let y = gpu.upload(&host)?;
    let mut dx: DeviceBuffer<T> = gpu.alloc_zeros(n)?;
    let bytes = 3 * n * std::mem::size_of::<T>();
    let copy_src: DeviceBuffer<u8> = gpu.alloc_zeros(bytes / 2)?;
    let mut copy_dst: DeviceBuffer<u8> = gpu.alloc_zeros(bytes / 2)?;
    let t_copy = timer.measure(10, 50, || {
        gpu.stream()
            .memcpy_dtod(&copy_src, &mut copy_dst)
            .map_err(Error::driver("copy"))
    })?;
    let t_relu = timer.measure(10, 50, || backward(gpu, &dy, &y, &mut dx))?;
    let gbs = |t: Timing| bytes as f64 / (t.median_ms * 1e-3) / 1e9;
    for (label, t) in [("copy (ceiling)", t_copy), ("backward", t_relu)] {
        println!(
            "{:<30} {:>10} {:>10.1} {:>10.0} {:>8.0}%",
            format!("{name}: {label}"),
            n,
            t.median_ms * 1e3,
            gbs(t),
            100.0 * gbs(t) / gbs(t_copy)
        );
    }
    Ok(())
}
