//! The row-group loss kernels (`softmax_ce_groups`: 1-8 warps per row, deferred per-row work)
//! and the thread-block-cluster kernels for long rows (`kernels/softmax_sm90.cu`: softmax
//! forward/backward and the loss, a cluster of 2-8 blocks per row, compute capability 9.0 only)
//! against the f64 reference, with the limits of tests/softmax_gpu.rs: every instance and forced
//! shape on odd row counts, the deferred work flushed mid-loop and at the end, rows shorter than a
//! cluster's blocks, poisoned outputs, and bit-identical reruns.
//!
//! Under `AMPKIT_TEST_SANITIZE=1` (compute-sanitizer) each row-group instance runs with one of
//! the three block bounds per shape (in turn) instead of all three, plus one block on the 300-row
//! shape (its groups flush mid-loop), and the reproducibility shapes shrink to about 1 M logits;
//! every instance, cluster size and thread count still runs.

mod common;
mod softmax_support;

use ampkit::tuning::cross_entropy::CeForce;
use ampkit::tuning::softmax::SoftmaxForce;
use ampkit::{f16, Error};
use common::{assert_all_written, gpu, rng, sanitizing, sized};
use softmax_support::*;

/// Runs `check` for f32 → f32 and f16 → f16 under `force`, counting the shapes that fit; a shape
/// the row does not fit must be refused with "does not fit" before any launch.
fn both_types(
    gpu: &ampkit::cuda::Gpu,
    rng: &mut rand::rngs::StdRng,
    (rows, classes): (usize, usize),
    force: Option<CeForce>,
    checked: &mut usize,
) {
    let x = logits(rng, rows, classes, 20.0, 6.0);
    let l = labels(rng, rows, classes);
    let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let what = format!("{rows}x{classes} {force:?}");
    let mut ran = |r: Result<f32, Error>| match r {
        Ok(_) => *checked += 1,
        Err(e) => assert!(e.to_string().contains("does not fit"), "{what}: {e}"),
    };
    let w = format!("{what} f32→f32");
    ran(try_check_ce(gpu, &x, &l, classes, 8.0, poison(), &w, 0, force).map(|r| r.0));
    let w = format!("{what} f16→f16");
    ran(try_check_ce(gpu, &x16, &l, classes, 8.0, poison16(), &w, 0, force).map(|r| r.0));
    let w = format!("{what} f16→f32");
    ran(try_check_ce(gpu, &x16, &l, classes, 65536.0, poison(), &w, 0, force).map(|r| r.0));
}

/// Every row-group instance (warps × packs per thread, with and without prefetch), with the
/// default block bound and with 1 or 3 blocks, so that groups loop over many rows and flush
/// their deferred label gradients and losses both mid-loop (after 32·W rows) and at the end.
#[test]
fn cross_entropy_row_groups_match_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu cross-entropy row groups");
    let mut checked = 0;
    const BLOCKS: [usize; 3] = [0, 1, 3];
    for (i, shape) in [
        (300, 8),
        (37, 96),
        (45, 256),
        (9, 1000),
        (70, 1024),
        (5, 2048),
        (3, 4096),
        (2, 8192),
    ]
    .into_iter()
    .enumerate()
    {
        for (w, warps) in [1, 2, 4, 8].into_iter().enumerate() {
            for (j, p) in [1, 2, 4, 8].into_iter().enumerate() {
                for prefetch in [false, true] {
                    // Sanitizing: one bound per instance, in turn, and on the first shape also
                    // one block (300 rows: its groups flush mid-loop).
                    let k = i + w + j + usize::from(prefetch);
                    let blocks: &[usize] = match (sanitizing(), i) {
                        (false, _) => &BLOCKS,
                        (true, 0) => [&[1, 0], &[1, 3]][k % 2],
                        (true, _) => &BLOCKS[k % 3..k % 3 + 1],
                    };
                    for &blocks in blocks {
                        let f = CeForce::Groups {
                            warps,
                            p,
                            prefetch,
                            blocks,
                        };
                        both_types(&gpu, &mut rng, shape, Some(f), &mut checked);
                    }
                }
            }
        }
        both_types(&gpu, &mut rng, shape, None, &mut checked);
    }
    assert!(checked > 300, "only {checked} shape runs");
    // Many rows per group: 2000 rows in one block of 8 one-warp groups (250 rows each).
    for prefetch in [false, true] {
        let f = CeForce::Groups {
            warps: 1,
            p: 4,
            prefetch,
            blocks: 1,
        };
        both_types(&gpu, &mut rng, (2000, 32), Some(f), &mut checked);
    }
}

fn hopper(gpu: &ampkit::cuda::Gpu) -> bool {
    if gpu.info().compute_capability == (9, 0) {
        true
    } else {
        eprintln!("skipped: the cluster kernels need compute capability 9.0");
        false
    }
}

/// Every cluster instance (2, 4, 8 blocks; both packs-per-thread variants; 128-1024 threads) of
/// the loss, on rows from 8200 to 131 072 classes, and the default plan past 8192 classes.
#[test]
fn cross_entropy_clusters_match_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    if !hopper(&gpu) {
        return;
    }
    let mut rng = rng("gpu cross-entropy clusters");
    let mut checked = 0;
    for shape in [(3, 8200), (2, 16384), (5, 24576), (2, 65536), (1, 131072)] {
        for c in [2, 4, 8] {
            for p in [2, 4, 8] {
                for threads in [128, 256, 512, 1024] {
                    let f = CeForce::Cluster { c, p, threads };
                    both_types(&gpu, &mut rng, shape, Some(f), &mut checked);
                }
            }
        }
        both_types(&gpu, &mut rng, shape, None, &mut checked);
    }
    assert!(checked > 60, "only {checked} shape runs");
    // Rows shorter than the cluster's blocks: 8 blocks over 16 packs leave some with nothing.
    let tiny = CeForce::Cluster {
        c: 8,
        p: 4,
        threads: 128,
    };
    both_types(&gpu, &mut rng, (4, 64), Some(tiny), &mut checked);
}

/// Softmax forward and backward in every cluster instance, and by default past 16 384 columns.
#[test]
fn softmax_clusters_match_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    if !hopper(&gpu) {
        return;
    }
    let mut rng = rng("gpu softmax clusters");
    let mut checked = 0;
    for (rows, cols) in [
        (3, 8200),
        (2, 16384),
        (5, 20000),
        (2, 65536),
        (1, 131072),
        (3, 64),
    ] {
        for c in [2, 4, 8] {
            for p in [2, 4, 8] {
                for threads in [128, 256, 512, 1024] {
                    let f = SoftmaxForce::Cluster { c, p, threads };
                    match check_softmax_with(&gpu, &mut rng, rows, cols, 0, Some(f)) {
                        Ok(()) => checked += 1,
                        Err(e) => assert!(e.to_string().contains("does not fit"), "{f:?}: {e}"),
                    }
                }
            }
        }
        check_softmax(&gpu, &mut rng, rows, cols, 0);
        check_softmax_with(&gpu, &mut rng, rows, cols, 0, Some(SoftmaxForce::Portable)).unwrap();
    }
    assert!(checked > 20, "only {checked} shape runs");
}

/// The row-group and cluster losses and the cluster softmax give the same bits on a second run.
#[test]
fn groups_and_clusters_are_bitwise_reproducible() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu groups clusters reproducible");
    let mut shapes = vec![
        sized((4096, 1024), (1024, 1024)),
        sized((1000, 4096), (250, 4096)),
    ];
    if gpu.info().compute_capability == (9, 0) {
        shapes.push((5, 65536));
    }
    for (rows, classes) in shapes {
        let x: Vec<f16> = logits(&mut rng, rows, classes, 5.0, 5.0)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let l = labels(&mut rng, rows, classes);
        let first = run_ce(&gpu, &x, &l, classes, 1024.0, poison(), 0);
        let again = run_ce(&gpu, &x, &l, classes, 1024.0, poison(), 0);
        let bits = |(loss, d): &(f32, Vec<f32>)| {
            let mut b = vec![loss.to_bits()];
            b.extend(d.iter().map(|v| v.to_bits()));
            b
        };
        // Both runs start from poisoned outputs: equal bits alone would not show a gap.
        assert_all_written(&format!("{rows}x{classes} dlogits"), &first.1, poison());
        assert!(bits(&first) == bits(&again), "{rows}x{classes}: other bits");
    }
}
