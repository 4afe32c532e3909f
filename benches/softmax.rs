//! Softmax and cross-entropy benchmark: GB/s (bytes read + written once) of `ops::softmax`'s
//! forward (8 B/element), backward (12 B) and fused softmax-cross-entropy (f32 → f32: 8 B,
//! f16 → f16: 4 B, plus labels and the row losses) at MNIST's 4096×10, the MLP's 4096×512 and at
//! 64+ MB of traffic in each launch shape (warp per row at 1024 columns, block per row at 2048 and
//! 65 536, the last past the shared-memory cache), beside a device-to-device copy of the same
//! rows×cols floats (8 bytes per element) measured in the same run. CUDA events, median of 50
//! after 10 warm-ups. Without a GPU it prints `skipped: no CUDA device` and exits 0.
//!
//! The loss is two launches (the rows, then the mean), both inside the timed region.

mod common;

use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer, Timing};
use ampkit::ops::softmax::{backward, forward, softmax_cross_entropy};
use ampkit::{f16, Error, Result};

const CASES: &[(&str, usize, usize)] = &[
    ("MNIST 4096x10", 4096, 10),
    ("MLP 4096x512", 4096, 512),
    ("16384x1024", 16384, 1024),
    ("8192x2048", 8192, 2048),
    ("256x65536", 256, 65536),
];

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    if let Err(e) = run(&gpu) {
        panic!("softmax benchmark failed: {e}");
    }
}

/// Random-looking logits (never all equal): a hash of the index, in [-4, 4).
fn fill(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x85EB_CA6B)).wrapping_mul(0x9E37_79B9) >> 8;
            h as f32 / 2_097_152.0 - 4.0
        })
        .collect()
}

fn gbs(bytes: usize, t: &Timing) -> f64 {
    bytes as f64 / (t.median_ms * 1e-3) / 1e9
}

fn run(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    println!(
        "\nsoftmax / cross-entropy on {} (median of 50, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>9}",
        "case", "MB moved", "time (us)", "GB/s", "of copy"
    );
    for &(name, rows, cols) in CASES {
        let n = rows * cols;
        let host = fill(n, 1);
        let x = gpu.upload(&host)?;
        let x16 = gpu.upload(&host.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>())?;
        let dy = gpu.upload(&fill(n, 2))?;
        let labels: Vec<u32> = (0..rows as u32)
            .map(|r| r.wrapping_mul(2_654_435_761) % cols as u32)
            .collect();
        let labels = gpu.upload(&labels)?;
        let scale = gpu.upload(&[65536.0f32])?;
        let mut loss: DeviceBuffer<f32> = gpu.alloc_zeros(1)?;
        let mut y: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let mut dx: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let mut d16: DeviceBuffer<f16> = gpu.alloc_zeros(n)?;
        let mut copy_dst: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let t_copy = timer.measure(10, 50, || {
            gpu.stream()
                .memcpy_dtod(&x, &mut copy_dst)
                .map_err(Error::driver("copy"))
        })?;
        let t_fwd = timer.measure(10, 50, || forward(gpu, &x, rows, cols, &mut y))?;
        let t_bwd = timer.measure(10, 50, || backward(gpu, &y, &dy, rows, cols, &mut dx))?;
        let t_ce32 = timer.measure(10, 50, || {
            softmax_cross_entropy(gpu, &x, &labels, rows, cols, &scale, &mut dx, &mut loss)
        })?;
        let t_ce16 = timer.measure(10, 50, || {
            softmax_cross_entropy(gpu, &x16, &labels, rows, cols, &scale, &mut d16, &mut loss)
        })?;
        let copy_gbs = gbs(8 * n, &t_copy);
        let per_row = 4 + 8; // label, row loss written and read back
        for (op, bytes, t) in [
            ("copy (ceiling)", 8 * n, t_copy),
            ("softmax forward", 8 * n, t_fwd),
            ("softmax backward", 12 * n, t_bwd),
            ("xent f32->f32", 8 * n + per_row * rows, t_ce32),
            ("xent f16->f16", 4 * n + per_row * rows, t_ce16),
        ] {
            let rate = gbs(bytes, &t);
            println!(
                "{:<34} {:>10.1} {:>10.1} {:>10.0} {:>8.0}%",
                format!("{name}: {op}"),
                bytes as f64 / 1e6,
                t.median_ms * 1e3,
                rate,
                100.0 * rate / copy_gbs
            );
        }
    }
    Ok(())
}
