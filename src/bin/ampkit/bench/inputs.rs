//! The data rows run on: random values from a hash (the same on every run and device), how many
//! distinct input sets a row cycles through to keep its reads out of the L2, and the training
//! configuration and data of the training-step rows.

use ampkit::amp::{LossScale, Precision};
use ampkit::nn::MlpConfig;
use ampkit::train::TrainConfig;

/// Bytes a pass over one input set must exceed: four times the H100's 50 MB L2.
pub const ROTATE_BYTES: f64 = 200e6;
/// Most distinct input sets one row allocates.
pub const MAX_SETS: usize = 2048;

/// Distinct input sets a row cycles through: `ceil(200 MB / bytes_per_call)`, at least 1, at
/// most [`MAX_SETS`] and at most `calls` (the warm-up and timed calls of the row: more sets
/// than calls would never be touched).
pub fn n_sets(bytes_per_call: f64, calls: usize) -> usize {
    if bytes_per_call.is_nan() || bytes_per_call <= 0.0 {
        return 1;
    }
    let want = (ROTATE_BYTES / bytes_per_call).ceil().min(MAX_SETS as f64) as usize;
    want.min(calls).max(1)
}

/// The training configuration every benchmarked step uses: the `ampkit train` defaults (Adam
/// at 1e-3; PyTorch's dynamic loss scaling under mixed precision, none under bf16 and fp8) with
/// these widths, batch and precision.
pub fn train_config(dims: &[usize], batch: usize, precision: Precision) -> TrainConfig {
    TrainConfig {
        model: MlpConfig {
            layers: dims.to_vec(),
            precision,
            ..MlpConfig::mnist_default()
        },
        batch,
        loss_scale: if precision.scales_loss() {
            LossScale::Dynamic(Default::default())
        } else {
            LossScale::Off
        },
        ..TrainConfig::mnist_default()
    }
}

/// `n` random samples for a model of these widths: inputs random 8-bit pixels scaled to [0, 1]
/// (`k / 255`, as the MNIST loader scales them, so the GPU keeps them palette-coded as it does
/// MNIST), labels below the last width.
pub fn train_data(dims: &[usize], n: usize, seed: u32) -> (Vec<f32>, Vec<u32>) {
    let inputs = dims.first().copied().unwrap_or(1);
    let classes = dims.last().copied().unwrap_or(1);
    let pixels = random_f32(n * inputs, seed, 0.0, 1.0)
        .into_iter()
        .map(|u| (u * 256.0).floor().min(255.0) / 255.0)
        .collect();
    (pixels, random_labels(n, classes, seed ^ 0x5EED))
}

/// A well-mixed 32-bit hash (murmur3's finaliser): the random data of every row.
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 13;
    x = x.wrapping_mul(0xC2B2_AE35);
    x ^ (x >> 16)
}

/// Uniform in [0, 1) from index `i` of stream `seed`.
fn unit(i: usize, seed: u32) -> f32 {
    let h = hash32((i as u32) ^ hash32(seed.wrapping_add((i as u64 >> 32) as u32)));
    (h >> 8) as f32 / (1u32 << 24) as f32
}

/// `len` random values in `[lo, hi)` (never all equal, never all zero), filled in parallel.
pub fn random_f32(len: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v = vec![0f32; len];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = lo + (hi - lo) * unit((c << 16) + j, seed);
            }
        });
    v
}

/// `n` random labels below `classes`.
pub fn random_labels(n: usize, classes: usize, seed: u32) -> Vec<u32> {
    (0..n)
        .map(|i| hash32(i as u32 ^ hash32(seed)) % classes.max(1) as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_sets_cover_the_rotation_bytes() {
        assert_eq!(n_sets(128.0 * (1 << 20) as f64, 60), 2);
        assert_eq!(n_sets(8.0 * 4096.0 * 10.0, 10_000), 611);
        assert_eq!(n_sets(8.0 * 4096.0 * 10.0, 60), 60);
        assert_eq!(n_sets(1.0, 100_000), MAX_SETS);
        assert_eq!(n_sets(0.0, 60), 1);
        assert_eq!(n_sets(1e12, 60), 1);
    }

    #[test]
    fn random_data_is_spread_and_never_constant() {
        let v = random_f32(100_000, 7, -2.0, 2.0);
        assert!(v.iter().all(|x| (-2.0..2.0).contains(x)));
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!(v.iter().filter(|&&x| x == 0.0).count() < 10);
        assert_ne!(random_f32(16, 1, 0.0, 1.0), random_f32(16, 2, 0.0, 1.0));
        let labels = random_labels(1000, 10, 3);
        assert!(labels.iter().all(|&l| l < 10));
        assert!((0..10).all(|c| labels.contains(&c)));
    }
}
