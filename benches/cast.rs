//! Cast-family benchmark: f32 → f16, f16 → f32 and fill on the `cast` list of `bench/cases.json`,
//! which `ampkit bench` runs too (2^26 elements, far past the 50 MB L2, and the MLP's 4096×512),
//! timed with CUDA events, against the device-to-device copy ceiling measured in the same run.
//!
//! Criterion reports each kernel's time and throughput (bytes read + written); a table at the end
//! gives each kernel's median bandwidth as a fraction of the copy's. Without a GPU it prints
//! `skipped: no CUDA device` and exits 0.

mod common;

use ampkit::cuda::{Gpu, GpuTimer};
use ampkit::{ops, Error, Result};
use criterion::{Criterion, Throughput};
use half::f16;
use std::time::Duration;

struct Buffers {
    f32_a: ampkit::cuda::DeviceBuffer<f32>,
    f32_b: ampkit::cuda::DeviceBuffer<f32>,
    f16_a: ampkit::cuda::DeviceBuffer<f16>,
}

/// One benchmarked operation: its name, bytes moved per element, and how to queue it.
type Op = (&'static str, usize, fn(&Gpu, &mut Buffers) -> Result<()>);

const OPS: &[Op] = &[
    ("copy_f32 (ceiling)", 8, |gpu, b| {
        gpu.stream()
            .memcpy_dtod(&b.f32_a, &mut b.f32_b)
            .map_err(Error::driver("device copy"))
    }),
    ("f32_to_f16", 6, |gpu, b| {
        ops::cast::f32_to_f16(gpu, &b.f32_a, &mut b.f16_a)
    }),
    ("f16_to_f32", 6, |gpu, b| {
        ops::cast::f16_to_f32(gpu, &b.f16_a, &mut b.f32_b)
    }),
    ("fill_f32", 4, |gpu, b| {
        ops::cast::fill_f32(gpu, &mut b.f32_b, 0.5)
    }),
    ("fill_f16", 2, |gpu, b| {
        ops::cast::fill_f16(gpu, &mut b.f16_a, f16::ONE)
    }),
];

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    for size in &common::cases().cast {
        if let Err(e) = run(&gpu, &size.name, size.n) {
            panic!("cast benchmark failed: {e}");
        }
    }
}

/// Every op of [`OPS`] on `n` elements, then the vector-width sweep.
fn run(gpu: &Gpu, label: &str, n: usize) -> Result<()> {
    // Random-looking data (never zeros): a cheap hash of the index, spread over many exponents.
    let host: Vec<f32> = (0..n as u32)
        .map(|i| {
            let h = i.wrapping_mul(0x9E37_79B9).rotate_left(13);
            (h as f32 / u32::MAX as f32 - 0.5) * 2f32.powi((h % 24) as i32 - 12)
        })
        .collect();
    let mut b = Buffers {
        f32_a: gpu.upload(&host)?,
        f32_b: gpu.alloc_zeros(n)?,
        f16_a: gpu.alloc_zeros(n)?,
    };
    ops::cast::f32_to_f16(gpu, &b.f32_a, &mut b.f16_a)?;
    gpu.synchronize()?;

    let timer = GpuTimer::new(gpu)?;
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    let mut group = c.benchmark_group(format!("cast/{}/{label}", gpu.info().name));
    for &(name, per_element, f) in OPS {
        group.throughput(Throughput::Bytes((per_element * n) as u64));
        group.bench_function(name, |bencher| {
            bencher.iter_custom(|iters| {
                let ms = timer
                    .time(|| (0..iters).try_for_each(|_| f(gpu, &mut b)))
                    .expect("timed launches");
                Duration::from_secs_f64(ms / 1e3)
            })
        });
    }
    group.finish();

    println!(
        "\ncast kernels, N = {label}, {} (median of 50, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<20} {:>10} {:>10} {:>9}",
        "kernel", "time (us)", "GB/s", "of copy"
    );
    let mut copy_gbs = f64::NAN;
    for &(name, per_element, f) in OPS {
        let t = timer.measure(10, 50, || f(gpu, &mut b))?;
        let gbs = (per_element * n) as f64 / (t.median_ms * 1e-3) / 1e9;
        if copy_gbs.is_nan() {
            copy_gbs = gbs;
        }
        println!(
            "{name:<20} {:>10.1} {gbs:>10.0} {:>8.0}%",
            t.median_ms * 1e3,
            100.0 * gbs / copy_gbs
        );
    }

    println!("\nvector width sweep (elements per access), GB/s:");
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>8}",
        "kernel", "8", "4", "2", "1"
    );
    type Sweep = fn(&Gpu, &mut Buffers, usize) -> Result<()>;
    let sweeps: [(&str, Sweep); 2] = [
        ("f32_to_f16", |gpu, b, w| {
            ampkit::tuning::cast::f32_to_f16_max_width(gpu, &b.f32_a, &mut b.f16_a, w)
        }),
        ("f16_to_f32", |gpu, b, w| {
            ampkit::tuning::cast::f16_to_f32_max_width(gpu, &b.f16_a, &mut b.f32_b, w)
        }),
    ];
    for (name, f) in sweeps {
        let mut row = format!("{name:<12}");
        for w in [8, 4, 2, 1] {
            let t = timer.measure(10, 50, || f(gpu, &mut b, w))?;
            row += &format!(" {:>8.0}", 6.0 * n as f64 / (t.median_ms * 1e-3) / 1e9);
        }
        println!("{row}");
    }
    Ok(())
}
