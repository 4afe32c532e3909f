//! The FP8 GEMM's stream-K tail at a deep K after many rounds of whole units: 8192³ (on an H100,
//! 14 rounds of whole 256×256 units, then 100 units whose 64 k-blocks each are split over the 66
//! clusters). The cooperative config that runs it (`p256s`) must agree on random codes with the
//! ping-pong config of the same 128-row tiles (`pp128s`), which walks whole units only: the same
//! k32 steps in the same order, so units that are not split come out the same, and split ones
//! differ only by where their two partial sums meet. A partial sum read before it was complete,
//! or an epilogue that stored a box before it was filled, shows as a 64-row slice far off.

mod common;

use ampkit::cpu::fp8::Fp8Format;
use ampkit::ops::gemm_fp8::{gemm_fp8_with, stream_k_units, Fp8Operand, FP8_CONFIGS};
use ampkit::shape::{GemmShape, Layout};
use common::{gpu, rng};
use rand::Rng;

#[test]
fn deep_stream_k_tails_agree_with_whole_units() {
    let Some(gpu) = gpu() else { return };
    if gpu.info().compute_capability != (9, 0) {
        eprintln!("skipped: the FP8 GEMM needs compute capability 9.0");
        return;
    }
    let (m, n, k) = (8192, 8192, 8192);
    let shape = GemmShape::new(Layout::Forward, m, n, k);
    let config = |name: &str| FP8_CONFIGS.into_iter().find(|c| c.name == name).unwrap();
    let (split, whole) = (config("p256s"), config("pp128s"));
    let sms = gpu.info().multiprocessors;
    assert!(stream_k_units(split, shape, sms) > 0, "no stream-K tail");
    assert_eq!(stream_k_units(whole, shape, sms), 0);

    let mut rng = rng("gpu gemm fp8 deep stream-k");
    let mut codes = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| Fp8Format::E4M3.encode(rng.gen_range(-2.0f32..2.0)))
            .collect()
    };
    let (a, b) = (
        gpu.upload(&codes(m * k)).unwrap(),
        gpu.upload(&codes(n * k)).unwrap(),
    );
    let one = gpu.upload(&[1f32]).unwrap();
    let operand = |data| Fp8Operand {
        data,
        format: Fp8Format::E4M3,
        scale_inv: &one,
    };
    let (a, b) = (operand(&a), operand(&b));
    let run = |cfg| {
        let mut out = gpu.upload(&vec![f32::NAN; m * n]).unwrap();
        // Twice: the second launch reuses the flags the first put back to zero.
        for _ in 0..2 {
            gemm_fp8_with(&gpu, cfg, shape, &a, &b, None, &mut out).unwrap();
        }
        gpu.download(&out).unwrap()
    };
    let (got, want) = (run(split), run(whole));

    // Relative L2 per 64-row × 256-column slice (a consumer's share of a 128×256 tile).
    let (mut worst, mut sum_d, mut sum_w) = ((0f64, 0, 0), 0f64, 0f64);
    for r0 in (0..m).step_by(64) {
        for c0 in (0..n).step_by(256) {
            let (mut d, mut w) = (0f64, 0f64);
            for r in r0..r0 + 64 {
                for c in c0..c0 + 256 {
                    let (g, x) = (got[r * n + c] as f64, want[r * n + c] as f64);
                    d += if g.is_nan() {
                        f64::INFINITY
                    } else {
                        (g - x) * (g - x)
                    };
                    w += x * x;
                }
            }
            sum_d += d;
            sum_w += w;
            let rel = (d / w).sqrt();
            // NaN (an unwritten or infinite error) counts as the worst.
            if rel.is_nan() || rel > worst.0 {
                worst = (rel, r0, c0);
            }
        }
    }
    let total = (sum_d / sum_w).sqrt();
    eprintln!(
        "relative L2 {total:.2e}; worst slice rows {}.., columns {}..: {:.2e}",
        worst.1, worst.2, worst.0
    );
    // FP8 accumulation differences where the sums were split: ~1e-4 of a slice; a slice that
    // read an unfinished partial sum or stored an unfilled box is off by 1e-1 or more.
    assert!(
        worst.0 <= 1e-2 && total <= 1e-3,
        "stream-K and whole units disagree: relative L2 {total:.2e}, slice at ({}, {}) {:.2e}",
        worst.1,
        worst.2,
        worst.0
    );
}
