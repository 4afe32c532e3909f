//! LayerNorm benchmark: GB/s (bytes read + written once: forward x, y and the per-row/per-column
//! vectors; backward dy, x, dx and the vectors) of `ops::layernorm` on the `layernorm` list of
//! `bench/cases.json`, which `ampkit bench` runs too: the default MLP's sizes (4096×512,
//! 4096×10), 64+ MB of traffic in each launch shape (warp per row at 1024 columns, block per row
//! at 2048 and 4096, the two-pass backward and the shared-memory tail at 65 536) and 537 MB
//! (1024×65 536, near the copy's asymptote), beside a device-to-device copy of the same rows×cols floats measured in the same run
//! (counted as 8 bytes per element). Where the backward takes a warp per row with 2+ packs per
//! lane (512 and 1024 columns), it is also timed in block mode (a block per row, fewer registers
//! per thread), to choose between the two. CUDA events, median of 50 after 10 warm-ups. Without
//! a GPU it prints `skipped: no CUDA device` and exits 0.
//!
//! MLP-sized buffers stay in the 50 MB L2 between repetitions, for the kernels and the copy
//! alike, as they would behind the GEMM that produced them.
//!
//! Rows longer than 8192 columns are also timed on the portable paths (`forward, portable`,
//! `backward, two-pass`), beside the default, which on compute capability 9.0 runs the
//! thread-block-cluster kernels (`kernels/layernorm_sm90.cu`).
//!
//! With `AMPKIT_BENCH_SWEEP=1` it then times every backward launch shape (warp or block per row,
//! packs per thread, prefetch, rows per block) on a range of row lengths, to place the default
//! plan's crossovers, and every cluster instance (forward and backward, blocks per cluster, packs
//! per thread, backward cluster counts) on long rows; the full tables go to
//! `$OUT/layernorm-sweep.txt` and `$OUT/layernorm-cluster-sweep.txt` when `OUT` is set.
//! `AMPKIT_BENCH_SWEEP=clusters` runs the cluster sweep only.

mod common;

#[allow(dead_code)] // logits: the loss benches' inputs
mod support;

use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer, Timing};
use ampkit::ops::layernorm::{backward, forward};
use ampkit::tuning::layernorm::{
    backward_forced, backward_with_warp_limit, forward_forced, BwdForce, FwdForce,
};
use ampkit::{Error, Result};
use std::fmt::Write as _;
use support::{gbs, write_out};

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    if let Err(e) = run(&gpu) {
        panic!("layernorm benchmark failed: {e}");
    }
    let sweep_mode = std::env::var("AMPKIT_BENCH_SWEEP").unwrap_or_default();
    if sweep_mode == "1" {
        if let Err(e) = sweep(&gpu) {
            panic!("layernorm sweep failed: {e}");
        }
    }
    if sweep_mode == "1" || sweep_mode == "clusters" {
        if let Err(e) = sweep_clusters(&gpu) {
            panic!("layernorm cluster sweep failed: {e}");
        }
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

/// Every buffer of one LayerNorm case: random x, dy, gamma, beta; zeroed outputs.
struct Bufs {
    x: DeviceBuffer<f32>,
    dy: DeviceBuffer<f32>,
    gamma: DeviceBuffer<f32>,
    beta: DeviceBuffer<f32>,
    y: DeviceBuffer<f32>,
    dx: DeviceBuffer<f32>,
    mean: DeviceBuffer<f32>,
    rstd: DeviceBuffer<f32>,
    dgamma: DeviceBuffer<f32>,
    dbeta: DeviceBuffer<f32>,
}

impl Bufs {
    fn new(gpu: &Gpu, rows: usize, cols: usize) -> Result<Bufs> {
        let n = rows * cols;
        Ok(Bufs {
            x: gpu.upload(&fill(n, 1))?,
            dy: gpu.upload(&fill(n, 2))?,
            gamma: gpu.upload(&fill(cols, 3))?,
            beta: gpu.upload(&fill(cols, 4))?,
            y: gpu.alloc_zeros(n)?,
            dx: gpu.alloc_zeros(n)?,
            mean: gpu.alloc_zeros(rows)?,
            rstd: gpu.alloc_zeros(rows)?,
            dgamma: gpu.alloc_zeros(cols)?,
            dbeta: gpu.alloc_zeros(cols)?,
        })
    }
}

/// The device copy of `x` (the ceiling the rows are compared with), timed like them.
fn copy_time(gpu: &Gpu, timer: &GpuTimer, x: &DeviceBuffer<f32>) -> Result<Timing> {
    let mut dst: DeviceBuffer<f32> = gpu.alloc_zeros(x.len())?;
    timer.measure(10, 50, || {
        gpu.stream()
            .memcpy_dtod(x, &mut dst)
            .map_err(Error::driver("copy"))
    })
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
    for case in &common::cases().layernorm {
        let (name, rows, cols) = (case.name.as_str(), case.rows, case.cols);
        let n = rows * cols;
        let Bufs {
            x,
            dy,
            gamma,
            beta,
            mut y,
            mut dx,
            mut mean,
            mut rstd,
            mut dgamma,
            mut dbeta,
        } = Bufs::new(gpu, rows, cols)?;
        let t_copy = copy_time(gpu, &timer, &x)?;
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
        if cols > 8192 {
            let t_portable = timer.measure(10, 50, || {
                forward_forced(
                    gpu,
                    &x,
                    rows,
                    cols,
                    &gamma,
                    &beta,
                    1e-5,
                    &mut y,
                    &mut mean,
                    &mut rstd,
                    FwdForce::Portable,
                )
            })?;
            let t_two_pass = timer.measure(10, 50, || {
                let inputs = (&dy, &x, &mean, &rstd, &gamma);
                let two_pass = BwdForce::TwoPass { min_rows: 16 };
                backward_forced(
                    gpu,
                    inputs,
                    rows,
                    cols,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                    two_pass,
                )
            })?;
            rows_out.push(("forward, portable", 8 * n + 8 * cols + 8 * rows, t_portable));
            rows_out.push((
                "backward, two-pass",
                12 * n + 8 * rows + 12 * cols,
                t_two_pass,
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

/// Row lengths for the backward sweep, each at 64+ MB of traffic (4096×512 as the MLP's, in L2).
const SWEEP: &[(usize, usize)] = &[
    (131072, 128),
    (65536, 256),
    (4096, 512),
    (32768, 512),
    (16384, 1024),
    (8192, 2048),
    (4096, 4096),
    (2048, 8192),
];

/// Times every backward shape that fits each [`SWEEP`] size; prints the best three per size and
/// the default, and writes the whole table to `$OUT/layernorm-sweep.txt`.
fn sweep(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    let mut full = String::new();
    println!("\nlayernorm backward shapes (best 3 per size, then the default):");
    for &(rows, cols) in SWEEP {
        let n = rows * cols;
        let Bufs {
            x,
            dy,
            gamma,
            beta,
            mut y,
            mut dx,
            mut mean,
            mut rstd,
            mut dgamma,
            mut dbeta,
        } = Bufs::new(gpu, rows, cols)?;
        forward(
            gpu, &x, rows, cols, &gamma, &beta, 1e-5, &mut y, &mut mean, &mut rstd,
        )?;
        let t_copy = copy_time(gpu, &timer, &x)?;
        let copy_gbs = gbs(8 * n, &t_copy);
        let bytes = 12 * n + 8 * rows + 12 * cols;
        let mut forces = Vec::new();
        for p in [1, 2, 4, 8] {
            for prefetch in [false, true] {
                forces.push(BwdForce::Warp {
                    p,
                    prefetch,
                    min_rows: 16,
                });
                for min_rows in [8, 16, 32] {
                    forces.push(BwdForce::Block {
                        p,
                        prefetch,
                        min_rows,
                    });
                }
            }
        }
        let mut results = Vec::new();
        for force in forces {
            let inputs = (&dy, &x, &mean, &rstd, &gamma);
            let mut one = || {
                backward_forced(
                    gpu,
                    inputs,
                    rows,
                    cols,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                    force,
                )
            };
            if one().is_err() {
                continue; // the row does not fit this shape
            }
            let t = timer.measure(5, 30, one)?;
            results.push((format!("{force:?}"), t));
        }
        let t_default = timer.measure(5, 30, || {
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
        results.sort_by(|a, b| a.1.median_ms.total_cmp(&b.1.median_ms));
        let line = |what: &str, t: &Timing| {
            let rate = gbs(bytes, t);
            format!(
                "{:<12} {:<58} {:>8.1} us {:>6.0} GB/s {:>5.0}%",
                format!("{rows}x{cols}"),
                what,
                t.median_ms * 1e3,
                rate,
                100.0 * rate / copy_gbs
            )
        };
        for (i, (what, t)) in results.iter().enumerate() {
            let l = line(what, t);
            if i < 3 {
                println!("{l}");
            }
            let _ = writeln!(full, "{l}");
        }
        let l = line("default", &t_default);
        println!("{l}");
        let _ = writeln!(full, "{l}");
    }
    write_out("layernorm-sweep.txt", &full)
}

/// Long rows for the cluster sweep, 64 MB per array each.
const CLUSTER_SWEEP: &[(usize, usize)] = &[(256, 65536), (512, 32768), (1024, 16384), (2048, 8196)];

/// Times every forward and backward cluster instance that fits each [`CLUSTER_SWEEP`] size (the
/// backward with 8 to 64 clusters), beside the portable paths and the default; prints the best
/// three per direction and size and the default, and writes everything to
/// `$OUT/layernorm-cluster-sweep.txt`. Forced cluster paths are errors off compute capability
/// 9.0, so there only the portable paths and the default are timed.
fn sweep_clusters(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    let mut full = String::new();
    println!("\nlayernorm cluster shapes (best 3 per size and direction, then the default):");
    for &(rows, cols) in CLUSTER_SWEEP {
        let n = rows * cols;
        let Bufs {
            x,
            dy,
            gamma,
            beta,
            mut y,
            mut dx,
            mut mean,
            mut rstd,
            mut dgamma,
            mut dbeta,
        } = Bufs::new(gpu, rows, cols)?;
        let t_copy = copy_time(gpu, &timer, &x)?;
        let copy_gbs = gbs(8 * n, &t_copy);
        let line = |what: &str, bytes: usize, t: &Timing| {
            let rate = gbs(bytes, t);
            format!(
                "{:<12} {:<48} {:>8.1} us {:>6.0} GB/s {:>5.0}%",
                format!("{rows}x{cols}"),
                what,
                t.median_ms * 1e3,
                rate,
                100.0 * rate / copy_gbs
            )
        };
        // Forward: None is the default plan.
        let mut fwd = vec![Some(FwdForce::Portable), None];
        for c in [2, 4, 8] {
            for p in [2, 4, 8] {
                fwd.push(Some(FwdForce::Cluster { c, p }));
            }
        }
        let mut results = Vec::new();
        for force in fwd {
            let mut one = || match force {
                None => forward(
                    gpu, &x, rows, cols, &gamma, &beta, 1e-5, &mut y, &mut mean, &mut rstd,
                ),
                Some(f) => forward_forced(
                    gpu, &x, rows, cols, &gamma, &beta, 1e-5, &mut y, &mut mean, &mut rstd, f,
                ),
            };
            if one().is_err() {
                continue; // the row or the device does not fit this instance
            }
            let t = timer.measure(5, 30, one)?;
            let what = force.map_or("forward default".into(), |f| format!("forward {f:?}"));
            results.push((what, t));
        }
        // Backward: None is the default plan.
        let mut bwd = vec![Some(BwdForce::TwoPass { min_rows: 16 }), None];
        for c in [2, 4, 8] {
            for p in [2, 4, 8] {
                for clusters in [8, 12, 16, 24, 32, 48, 64] {
                    bwd.push(Some(BwdForce::Cluster { c, p, clusters }));
                }
            }
        }

        let mut bwd_results = Vec::new();
        for force in bwd {
            let inputs = (&dy, &x, &mean, &rstd, &gamma);
            let mut one = || match force {
                None => backward(
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
                ),
                Some(f) => {
                    backward_forced(gpu, inputs, rows, cols, &mut dx, &mut dgamma, &mut dbeta, f)
                }
            };
            if one().is_err() {
                continue;
            }
            let t = timer.measure(5, 30, one)?;
            let what = force.map_or("backward default".into(), |f| format!("backward {f:?}"));
            bwd_results.push((what, t));
        }
        for (list, bytes) in [
            (&mut results, 8 * n + 8 * cols + 8 * rows),
            (&mut bwd_results, 12 * n + 8 * rows + 12 * cols),
        ] {
            list.sort_by(|a, b| a.1.median_ms.total_cmp(&b.1.median_ms));
            for (i, (what, t)) in list.iter().enumerate() {
                let l = line(what, bytes, t);
                if i < 3 || what.ends_with("default") {
                    println!("{l}");
                }
                let _ = writeln!(full, "{l}");
            }
        }
    }
    write_out("layernorm-cluster-sweep.txt", &full)
}
