//! LayerNorm benchmark: GB/s (bytes read + written once: forward x, y and the per-row/per-column
//! vectors; backward dy, x, dx and the vectors) of `ops::layernorm` at the default MLP's sizes
//! (4096×512, 4096×10) and at 64+ MB of traffic in each launch shape (warp per row at 1024
//! columns, block per row at 2048 and 4096, the two-pass backward and the shared-memory tail at
//! 65 536), beside a device-to-device copy of the same rows×cols floats measured in the same run
//! (counted as 8 bytes per element). Where the backward takes a warp per row with 2+ packs per
//! lane (512 and 1024 columns), it is also timed in block mode (a block per row, fewer registers
//! per thread), to choose between the two. CUDA events, median of 50 after 10 warm-ups. Without
//! a GPU it prints `skipped: no CUDA device` and exits 0.
//!
//! MLP-sized buffers stay in the 50 MB L2 between repetitions, for the kernels and the copy
//! alike, as they would behind the GEMM that produced them.

mod common;

use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer, Timing};
use ampkit::ops::layernorm::{backward, backward_with_warp_limit, forward};
use ampkit::{Error, Result};

const CASES: &[(&str, usize, usize)] = &[
    ("MLP 4096x512", 4096, 512),
    ("MLP 4096x10", 4096, 10),
    ("16384x1024", 16384, 1024),
    ("8192x2048", 8192, 2048),
    ("4096x4096", 4096, 4096),
    ("256x65536", 256, 65536),
];

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    if let Err(e) = run(&gpu) {
        panic!("layernorm benchmark failed: {e}");
    }
}

/// Random-looking values (never zeros): a hash of the index, in [-2, 2) plus a per-row offset.
fn fill(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x85EB_CA6B)).wrapping_mul(0x9E37_79B9) >> 8;
            h as f32 / 4_194_304.0 - 2.0 + (i % 7) as f32 * 0.1
        })
        .collect()
}

fn gbs(bytes: usize, t: &Timing) -> f64 {
    bytes as f64 / (t.median_ms * 1e-3) / 1e9
}

fn run(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    println!(
        "\nlayernorm on {} (median of 50, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>9}",
        "case", "MB moved", "time (us)", "GB/s", "of copy"
    );
    for &(name, rows, cols) in CASES {
        let n = rows * cols;
        let x = gpu.upload(&fill(n, 1))?;
        let dy = gpu.upload(&fill(n, 2))?;
        let gamma = gpu.upload(&fill(cols, 3))?;
        let beta = gpu.upload(&fill(cols, 4))?;
        let mut y: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let mut dx: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let mut mean: DeviceBuffer<f32> = gpu.alloc_zeros(rows)?;
        let mut rstd: DeviceBuffer<f32> = gpu.alloc_zeros(rows)?;
        let mut dgamma: DeviceBuffer<f32> = gpu.alloc_zeros(cols)?;
        let mut dbeta: DeviceBuffer<f32> = gpu.alloc_zeros(cols)?;
        let mut copy_dst: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let t_copy = timer.measure(10, 50, || {
            gpu.stream()
                .memcpy_dtod(&x, &mut copy_dst)
                .map_err(Error::driver("copy"))
        })?;
        let t_fwd = timer.measure(10, 50, || {
            forward(
                gpu, &x, rows, cols, &gamma, &beta, 1e-5, &mut y, &mut mean, &mut rstd,
            )
        })?;
        let t_bwd = timer.measure(10, 50, || {
            backward(
                gpu,
                &dy,
                &x,
                &mean,
                &rstd,
                &gamma,
                rows,
                cols,
                &mut dx,
                &mut dgamma,
                &mut dbeta,
            )
        })?;
        let mut rows_out = vec![
            ("copy (ceiling)", 8 * n, t_copy),
            ("forward", 8 * n + 8 * cols + 8 * rows, t_fwd),
            ("backward", 12 * n + 8 * rows + 12 * cols, t_bwd),
        ];
        if cols % 4 == 0 && cols > 256 && cols <= 1024 {
            let t_block = timer.measure(10, 50, || {
                let inputs = (&dy, &x, &mean, &rstd, &gamma);
                backward_with_warp_limit(
                    gpu,
                    inputs,
                    rows,
                    cols,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                    1,
                )
            })?;
            rows_out.push((
                "backward, block mode",
                12 * n + 8 * rows + 12 * cols,
                t_block,
            ));
        }
        let copy_gbs = gbs(8 * n, &t_copy);
        for (op, bytes, t) in rows_out {
            let rate = gbs(bytes, &t);
            println!(
                "{:<28} {:>10.1} {:>10.1} {:>10.0} {:>8.0}%",
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
