//! Cross-entropy benchmark: GB/s (bytes read + written once) of `ops::cross_entropy`'s fused
//! softmax-cross-entropy forward + backward (f32 → f32: 8 B/element, f16 → f16: 4 B, plus labels
//! and the row losses) on the `softmax` list of `bench/cases.json` (rows × classes), which
//! `ampkit bench` runs too, beside a device-to-device copy of the same rows×cols floats (8 bytes
//! per element) measured in the same run. CUDA events, median of 50 after 10 warm-ups. Without a
//! GPU it prints `skipped: no CUDA device` and exits 0.
//!
//! The loss is one launch (its last block adds the per-block partial losses).
//!
//! With `AMPKIT_BENCH_SWEEP=1` it then times every launch shape of the loss (warp per row, block
//! per row with the row in registers, shared memory) for f32 → f32 and f16 → f16 on a range of
//! row lengths; the full table goes to `$OUT/cross_entropy-sweep.txt` when `OUT` is set.

mod common;

mod support;

use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer, Timing};
use ampkit::ops::cross_entropy::softmax_cross_entropy;
use ampkit::tuning::cross_entropy::{softmax_cross_entropy_forced, CeForce};
use ampkit::{f16, Error, Result};
use std::fmt::Write as _;
use support::{gbs, logits, write_out};

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    if let Err(e) = run(&gpu) {
        panic!("cross-entropy benchmark failed: {e}");
    }
    if std::env::var("AMPKIT_BENCH_SWEEP").is_ok_and(|v| v == "1") {
        if let Err(e) = sweep(&gpu) {
            panic!("cross-entropy sweep failed: {e}");
        }
    }
}

/// One loss case's device buffers (random logits as f32 and f16, labels, a loss scale, outputs)
/// and the time of a device copy of the f32 logits, its ceiling.
struct Bufs {
    x: DeviceBuffer<f32>,
    x16: DeviceBuffer<f16>,
    labels: DeviceBuffer<u32>,
    scale: DeviceBuffer<f32>,
    loss: DeviceBuffer<f32>,
    dx: DeviceBuffer<f32>,
    d16: DeviceBuffer<f16>,
    t_copy: Timing,
}

impl Bufs {
    fn new(gpu: &Gpu, timer: &GpuTimer<'_>, rows: usize, cols: usize) -> Result<Bufs> {
        let n = rows * cols;
        let host = logits(n, 1);
        let x = gpu.upload(&host)?;
        let x16 = gpu.upload(&host.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>())?;
        let labels: Vec<u32> = (0..rows as u32)
            .map(|r| r.wrapping_mul(2_654_435_761) % cols as u32)
            .collect();
        let mut copy_dst: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
        let t_copy = timer.measure(10, 50, || {
            gpu.stream()
                .memcpy_dtod(&x, &mut copy_dst)
                .map_err(Error::driver("copy"))
        })?;
        Ok(Bufs {
            x,
            x16,
            labels: gpu.upload(&labels)?,
            scale: gpu.upload(&[65536.0f32])?,
            loss: gpu.alloc_zeros(1)?,
            dx: gpu.alloc_zeros(n)?,
            d16: gpu.alloc_zeros(n)?,
            t_copy,
        })
    }
}

fn run(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    println!(
        "\ncross-entropy on {} (median of 50, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>9}",
        "case", "MB moved", "time (us)", "GB/s", "of copy"
    );
    for case in &common::cases().softmax {
        let (name, rows, cols) = (case.name.as_str(), case.rows, case.cols);
        let n = rows * cols;
        let Bufs {
            x,
            x16,
            labels,
            scale,
            mut loss,
            mut dx,
            mut d16,
            t_copy,
        } = Bufs::new(gpu, &timer, rows, cols)?;
        let t_ce32 = timer.measure(10, 50, || {
            softmax_cross_entropy(gpu, &x, &labels, rows, cols, &scale, &mut dx, &mut loss)
        })?;
        let t_ce16 = timer.measure(10, 50, || {
            softmax_cross_entropy(gpu, &x16, &labels, rows, cols, &scale, &mut d16, &mut loss)
        })?;
        let copy_gbs = gbs(8 * n, &t_copy);
        let per_row = 4 + 8; // label, one partial loss per row at most (written and read back)
        for (op, bytes, t) in [
            ("copy (ceiling)", 8 * n, t_copy),
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

/// Row lengths for the loss sweep (64+ MB of f32 logits, and the MLP's 4096×512 in L2).
const SWEEP: &[(usize, usize)] = &[
    (4096, 512),
    (32768, 512),
    (16384, 1024),
    (8192, 2048),
    (4096, 4096),
    (2048, 8192),
    (1024, 16384),
    (256, 65536),
];

/// Times every loss shape that fits each [`SWEEP`] size, f32 → f32 and f16 → f16; prints the
/// best three per size and type and the default, and writes the whole table to
/// `$OUT/cross_entropy-sweep.txt`.
fn sweep(gpu: &Gpu) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    let mut full = String::new();
    println!("\ncross-entropy shapes (best 3 per size and type, then the default):");
    for &(rows, cols) in SWEEP {
        let n = rows * cols;
        let Bufs {
            x,
            x16,
            labels,
            scale,
            mut loss,
            mut dx,
            mut d16,
            t_copy,
        } = Bufs::new(gpu, &timer, rows, cols)?;
        let copy_gbs = gbs(8 * n, &t_copy);
        let mut forces = Vec::new();
        for p in [1, 2, 4, 8] {
            for prefetch in [false, true] {
                forces.push(CeForce::Warp { p, prefetch });
                forces.push(CeForce::Block { p, prefetch });
            }
        }
        for threads in [256, 512, 1024] {
            forces.push(CeForce::Shared {
                threads,
                cached: usize::MAX,
            });
        }
        for f16_io in [false, true] {
            let bytes = if f16_io { 4 * n } else { 8 * n } + 12 * rows;
            let mut results = Vec::new();
            for force in &forces {
                let mut force = *force;
                // "All it can": the largest cache the row and the device allow.
                if let CeForce::Shared { threads, .. } = force {
                    let limit = 227 * 1024 - 1024;
                    let vec = if f16_io && cols % 8 == 0 { 8 } else { 4 };
                    force = CeForce::Shared {
                        threads,
                        cached: (cols / vec).min(limit / (vec * 4)),
                    };
                }
                let inputs = (&x, &labels, &scale);
                let inputs16 = (&x16, &labels, &scale);
                let mut one = || {
                    if f16_io {
                        softmax_cross_entropy_forced(
                            gpu, inputs16, rows, cols, &mut d16, &mut loss, force,
                        )
                    } else {
                        softmax_cross_entropy_forced(
                            gpu, inputs, rows, cols, &mut dx, &mut loss, force,
                        )
                    }
                };
                if one().is_err() {
                    continue; // the row does not fit this shape
                }
                let t = timer.measure(5, 30, one)?;
                results.push((format!("{force:?}"), t));
            }
            let t_default = timer.measure(5, 30, || {
                if f16_io {
                    softmax_cross_entropy(
                        gpu, &x16, &labels, rows, cols, &scale, &mut d16, &mut loss,
                    )
                } else {
                    softmax_cross_entropy(gpu, &x, &labels, rows, cols, &scale, &mut dx, &mut loss)
                }
            })?;
            results.sort_by(|a, b| a.1.median_ms.total_cmp(&b.1.median_ms));
            let ty = if f16_io { "f16" } else { "f32" };
            let line = |what: &str, t: &Timing| {
                let rate = gbs(bytes, t);
                format!(
                    "{:<12} {} {:<44} {:>8.1} us {:>6.0} GB/s {:>5.0}%",
                    format!("{rows}x{cols}"),
                    ty,
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
    }
    write_out("cross_entropy-sweep.txt", &full)
}
