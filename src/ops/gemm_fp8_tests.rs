//! Unit tests of the FP8 GEMM's planner and configurations (no GPU).

use super::*;

#[test]
fn the_planner_takes_p256s_or_p192s_for_large_products_and_pp128_for_small_ones() {
    let plan = |m, n, k| plan_fp8(GemmShape::new(Layout::Forward, m, n, k), 132).name;
    // 1376 units of 128×192 in 21 rounds of 66 clusters (98.5 % full) beat 1024 of 128×256
    // in 16 (97.0 %); at N = 4096, 192-wide tiles pad the last column and fill fewer rounds.
    assert_eq!(plan(8192, 8192, 8192), "p192s");
    assert_eq!(plan(4096, 4096, 8192), "p256s");
    assert_eq!(plan(8192, 4096, 4096), "p256s");
    let fill = |cfg: usize| {
        round_fill(
            FP8_CONFIGS[cfg],
            GemmShape::new(Layout::Forward, 8192, 8192, 8192),
            132,
        )
    };
    assert!((fill(3) - 1024.0 / 1056.0).abs() < 1e-12);
    assert!((fill(6) - 1376.0 / 1386.0 * 8192.0 / 8256.0).abs() < 1e-12);
    // Too few 128×256 units for two rounds of 66 clusters.
    assert_eq!(plan(1024, 1024, 8192), "pp128");
    assert_eq!(plan(4096, 512, 784), "pp128");
    for c in FP8_CONFIGS {
        // Every config has a TMA-store twin for the E4M3 output (pp64: pp128s).
        let stored = c.with_tma_store();
        assert!(stored.tma_store, "{}", c.name);
        if c.tma_store {
            assert_eq!(stored.name, c.name);
        }
        // A TMA-store config falls back to a plain one with the same tiles.
        let plain = c.plain();
        assert!(
            !plain.tma_store,
            "{}: no plain config with its tiles",
            c.name
        );
        assert_eq!((plain.bm, plain.bn), (c.bm, c.bn));
        assert!(
            c.shared_bytes() <= 227 * 1024,
            "{}: {}",
            c.name,
            c.shared_bytes()
        );
    }
}
