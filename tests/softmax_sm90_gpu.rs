//! The thread-block-cluster softmax kernels for long rows (`kernels/softmax_sm90.cu`: forward and
//! backward, a cluster of 2-8 blocks per row, compute capability 9.0 only) against the f64
//! reference, with the limits of tests/softmax_gpu.rs: every instance and thread count on odd row
//! counts, rows shorter than a cluster's blocks, and the default plan past 16 384 columns.
//!
//! Without a GPU every test prints `skipped: no CUDA device`; on a GPU other than compute
//! capability 9.0, `skipped: the cluster kernels need compute capability 9.0`.

mod common;
mod softmax_support;

use ampkit::tuning::softmax::SoftmaxForce;
use common::{gpu, rng};
use softmax_support::*;

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
