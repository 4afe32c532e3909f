//! `AMPKIT_BENCH_MEM_SWEEP=1`: every launch shape of softmax and the fused loss on the
//! benchmark's softmax cases, as extra rows named `… [shape]` beside the defaults, timed like
//! them (GPU time, L2-cold input sets) — the data behind the planners' choices
//! (docs/kernels/softmax.md). Shapes a case does not fit are left out.

use super::bytes::{self, flops_per_element};
use super::collect::Collector;
use super::gpu_mem::{mem_row, xent_row};
use super::harness::Harness;
use super::report::Kind;
use super::same_bytes;
use ampkit::cuda::DeviceBuffer;
use ampkit::tuning::cross_entropy::{self as ce_tuning, CeForce};
use ampkit::tuning::softmax::{self, SoftmaxForce};
use ampkit::Error;

/// Cluster shapes tried: (blocks per cluster, packs per thread, threads).
fn cluster_shapes(ps: [usize; 2]) -> Vec<(usize, usize, u32)> {
    let mut v = vec![];
    for c in [2, 4, 8] {
        for p in ps {
            for threads in [128, 256, 512, 1024] {
                v.push((c, p, threads));
            }
        }
    }
    v
}

fn does_not_fit(e: &Error) -> bool {
    e.to_string().contains("does not fit")
}

/// The sweep rows of one softmax case.
pub fn softmax_sweep(h: &mut Harness, c: &mut Collector, label: &str, rows: usize, cols: usize) {
    let mut forces = vec![];
    for warps in [1, 2, 4, 8] {
        for p in [1, 2, 4, 8] {
            for prefetch in [false, true] {
                for blocks in [0, 264] {
                    forces.push(CeForce::Groups {
                        warps,
                        p,
                        prefetch,
                        blocks,
                    });
                }
            }
        }
    }
    for p in [1, 2, 4, 8] {
        for prefetch in [false, true] {
            forces.push(CeForce::Warp { p, prefetch });
            forces.push(CeForce::Block { p, prefetch });
        }
    }
    if cols >= 8192 {
        for (cl, p, threads) in cluster_shapes([2, 8])
            .into_iter()
            .chain(cluster_shapes([4, 4]))
        {
            forces.push(CeForce::Cluster { c: cl, p, threads });
        }
    }
    forces.dedup();
    // The copy of the same bytes as each loss (f32 → f32: 8·n, f16 → f16: 4·n, plus the
    // labels and row losses), timed like the kernels: the ceiling at this size, launch ramp and
    // tail included — the same measurement as the loss rows' `% copy same bytes`.
    let n = rows * cols;
    for bytes_per in [4usize, 2] {
        let name = format!(
            "copy d2d [{} B/element, same bytes as the loss]",
            2 * bytes_per
        );
        c.row(Kind::Mem, &name, label, false, |ceil| {
            let bytes = bytes::xent(rows, cols, bytes_per, bytes_per);
            same_bytes::device_copy_row(h, (&name, label), bytes, ceil)
        });
    }
    for half in [false, true] {
        let base = if half {
            "xent fwd+bwd f16"
        } else {
            "xent fwd+bwd"
        };
        for f in &forces {
            let fits = if half {
                ce_tuning::ce_force_fits::<ampkit::f16>(&h.gpu, cols, *f)
            } else {
                ce_tuning::ce_force_fits::<f32>(&h.gpu, cols, *f)
            };
            if !fits.unwrap_or(false) {
                continue;
            }
            let name = format!("{base} [{f:?}]");
            let mut skipped = false;
            c.row(Kind::Mem, &name, label, false, |ceil| {
                let r = xent_row(h, &name, label, rows, cols, half, ceil, Some(*f));
                if let Err(e) = &r {
                    skipped = does_not_fit(e);
                }
                r
            });
            if skipped {
                c.rows.pop();
            }
        }
    }
    let mut forces = vec![SoftmaxForce::Portable];
    if cols >= 8192 {
        for (cl, p, threads) in cluster_shapes([2, 4])
            .into_iter()
            .chain(cluster_shapes([8, 8]))
        {
            forces.push(SoftmaxForce::Cluster { c: cl, p, threads });
        }
    }
    for f in forces {
        if !softmax::softmax_force_fits(&h.gpu, cols, false, f) {
            continue;
        }
        let name = format!("softmax fwd [{f:?}]");
        let mut skipped = false;
        c.row(Kind::Mem, &name, label, false, |ceil| {
            let gpu = h.gpu.clone();
            let mut y: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
            let work = (
                bytes::softmax_fwd(rows, cols),
                flops_per_element("softmax fwd") * n as f64,
            );
            let r = mem_row(
                h,
                (&name, label),
                work,
                ceil,
                |h, s| h.f32_buf(n, s),
                |x, _| softmax::forward_forced(&gpu, &*x, rows, cols, &mut y, f),
            );
            if let Err(e) = &r {
                skipped = does_not_fit(e);
            }
            r
        });
        if skipped {
            c.rows.pop();
        }
        if !softmax::softmax_force_fits(&h.gpu, cols, true, f) {
            continue;
        }
        let name = format!("softmax bwd [{f:?}]");
        let mut skipped = false;
        c.row(Kind::Mem, &name, label, false, |ceil| {
            let gpu = h.gpu.clone();
            let mut dx: DeviceBuffer<f32> = gpu.alloc_zeros(n)?;
            let work = (
                bytes::softmax_bwd(rows, cols),
                flops_per_element("softmax bwd") * n as f64,
            );
            let r = mem_row(
                h,
                (&name, label),
                work,
                ceil,
                |h, s| Ok((h.f32_buf(n, s)?, h.f32_buf(n, s + 5000)?)),
                |s: &mut (DeviceBuffer<f32>, DeviceBuffer<f32>), _| {
                    softmax::backward_forced(&gpu, (&s.0, &s.1), rows, cols, &mut dx, f)
                },
            );
            if let Err(e) = &r {
                skipped = does_not_fit(e);
            }
            r
        });
        if skipped {
            c.rows.pop();
        }
    }
}
