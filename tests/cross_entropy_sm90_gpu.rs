//! The thread-block-cluster loss kernels for long rows (`softmax_ce_cluster_*` in
//! `kernels/softmax_sm90.cu`, a cluster of 2-8 blocks per row, compute capability 9.0 only)
//! against the f64 reference, with the limits of tests/cross_entropy_gpu.rs: every instance and
//! thread count on odd row counts, rows shorter than a cluster's blocks, and the default plan past
//! 8192 classes; for f32 and f16 and, in the `_bf16` twin, for bf16 logits and gradients.
//!
//! Without a GPU every test prints `skipped: no CUDA device`; on a GPU other than compute
//! capability 9.0, `skipped: the cluster kernels need compute capability 9.0`.

mod common;
mod cross_entropy_support;
mod softmax_support;

use ampkit::tuning::cross_entropy::CeForce;
use common::{gpu, rng};
use cross_entropy_support::*;
use softmax_support::*;

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

/// [`cross_entropy_clusters_match_the_f64_reference`] for bf16: bf16 → bf16, bf16 → f32 and
/// f32 → bf16 through every cluster instance (bf16 logits take f16's instance shapes).
#[test]
fn cross_entropy_bf16_clusters_match_the_f64_reference() {
    let Some(gpu) = gpu() else { return };
    if !hopper(&gpu) {
        return;
    }
    let mut rng = rng("gpu cross-entropy bf16 clusters");
    let mut checked = 0;
    for shape in [(3, 8200), (2, 16384), (5, 24576), (2, 65536), (1, 131072)] {
        for c in [2, 4, 8] {
            for p in [2, 4, 8] {
                for threads in [128, 256, 512, 1024] {
                    let f = CeForce::Cluster { c, p, threads };
                    bf16_types(&gpu, &mut rng, shape, Some(f), &mut checked);
                }
            }
        }
        bf16_types(&gpu, &mut rng, shape, None, &mut checked);
    }
    assert!(checked > 60, "only {checked} shape runs");
    let tiny = CeForce::Cluster {
        c: 8,
        p: 4,
        threads: 128,
    };
    bf16_types(&gpu, &mut rng, (4, 64), Some(tiny), &mut checked);
}
