//! Softmax benchmark: GB/s (bytes read + written once) of `ops::softmax`'s forward
//! (8 B/element) and backward (12 B) on the `softmax` list of `bench/cases.json`, which
//! `ampkit bench` runs too: MNIST's 4096×10, the MLP's 4096×512, 64+ MB of traffic in each
//! launch shape (warp per row at 1024 columns, block per row at 2048 and 65 536, the last past the
//! shared-memory cache) and 0.5-1.6 GB (1024 and 2048 × 65 536), beside a device-to-device copy of
//! the same rows×cols floats (8 bytes per element) measured in the same run. CUDA events, median
//! of 50 after 10 warm-ups. Without a GPU it prints `skipped: no CUDA device` and exits 0. The
//! fused loss on the same rows is `benches/cross_entropy.rs`.

mod common;

#[allow(dead_code)] // write_out: softmax has no sweep
mod support;

use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer};
use ampkit::ops::softmax::{backward, forward};
use ampkit::{Error, Result};
use support::{gbs, logits};

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    if let Err(e) = run(&gpu) {
        panic!("softmax benchmark failed: {e}");
    }
}

fn run(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    println!(
        "\nsoftmax on {} (median of 50, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>9}",
        "case", "MB moved", "time (us)", "GB/s", "of copy"
    );
    for case in &common::cases().softmax {
        let (name, rows, cols) = (case.name.as_str(), case.rows, case.cols);
        let n = rows * cols;
        let host = logits(n, 1);
        let x = gpu.upload(&host)?;
        let dy = gpu.upload(&logits(n, 2))?;
        let mut y: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let mut dx: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let mut copy_dst: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let t_copy = timer.measure(10, 50, || {
            gpu.stream()
                .memcpy_dtod(&x, &mut copy_dst)
                .map_err(Error::driver("copy"))
        })?;
        let t_fwd = timer.measure(10, 50, || forward(gpu, &x, rows, cols, &mut y))?;
        let t_bwd = timer.measure(10, 50, || backward(gpu, &y, &dy, rows, cols, &mut dx))?;
        let copy_gbs = gbs(8 * n, &t_copy);
        for (op, bytes, t) in [
            ("copy (ceiling)", 8 * n, t_copy),
            ("softmax forward", 8 * n, t_fwd),
            ("softmax backward", 12 * n, t_bwd),
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
