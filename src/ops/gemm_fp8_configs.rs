//! The FP8 GEMM's tile configurations (one per entry-point family of `kernels/gemm_fp8.cu`), their
//! shared memory, and the planner that picks one per shape.

use super::{BK, CLUSTER};
use crate::shape::GemmShape;

/// One tile configuration of `kernels/gemm_fp8.cu` (its header states each one's launch shape).
/// For ampkit's tests and benchmarks; not part of the stable API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Config {
    /// The config's name in the kernel's entry points, e.g. `"p256"`.
    pub name: &'static str,
    /// Tile rows.
    pub bm: usize,
    /// Tile columns.
    pub bn: usize,
    /// Pipeline stages.
    pub stages: usize,
    /// Whether the two consumer warpgroups take whole tiles in turn (ping-pong) rather than one
    /// 64-row slice each of the same tile (cooperative).
    pub pingpong: bool,
    /// Whether the epilogue writes D with TMA stores (D 16-byte aligned with a row pitch that is a
    /// multiple of 16 bytes; otherwise the launch takes the same tiles' plain config).
    pub tma_store: bool,
    /// Entry points for A×B formats E4M3×E4M3, E4M3×E5M2, E5M2×E4M3, E5M2×E5M2.
    pub kernels: [&'static str; 4],
}

impl Fp8Config {
    /// Dynamic shared memory: the stages, two consumers' epilogue buffers (64×40 f32 each, or
    /// two 64-row × 128-byte TMA-store boxes each), the mbarriers, the TMA-store configs' staged
    /// bias (a tile's columns, per consumer when ping-pong), and 1 KB to align the tiles to the
    /// swizzle's period.
    pub fn shared_bytes(&self) -> usize {
        let epilogue = if self.tma_store {
            2 * 2 * 64 * 128
        } else {
            2 * 64 * 40 * 4
        };
        let bias = if self.tma_store {
            4 * self.bn * if self.pingpong { 2 } else { 1 }
        } else {
            0
        };
        1024 + self.stages * (self.bm + self.bn) * BK + epilogue + 8 * (2 * self.stages + 2) + bias
    }

    /// The config with the same tiles and the TMA-store epilogue (itself when it has it), or
    /// `pp128s` for tiles that have none: the E4M3 output goes out through TMA stores only.
    pub(super) fn with_tma_store(self) -> Fp8Config {
        FP8_CONFIGS
            .into_iter()
            .find(|c| c.tma_store && (c.bm, c.bn) == (self.bm, self.bn))
            .or_else(|| FP8_CONFIGS.into_iter().find(|c| c.name == "pp128s"))
            .unwrap_or(self)
    }

    /// The config with the same tiles and the plain epilogue (itself when it has it).
    pub(super) fn plain(self) -> Fp8Config {
        FP8_CONFIGS
            .into_iter()
            .find(|c| !c.tma_store && (c.bm, c.bn) == (self.bm, self.bn))
            .unwrap_or(self)
    }
}

/// Every configuration: `p256`, `pp128` (the planner's for small products), `pp64`, then `p256s`
/// (the planner's for large ones) and `pp128s`: `p256` and `pp128` with the TMA-store epilogue;
/// `p192` and `p192s`: 128×192 tiles, plain and TMA-store (the planner's where 256-wide units
/// leave the last round of clusters half empty and 192-wide ones do not).
#[doc(hidden)]
pub const FP8_CONFIGS: [Fp8Config; 7] = [
    Fp8Config {
        name: "p256",
        pingpong: false,
        tma_store: false,
        bm: 128,
        bn: 256,
        stages: 4,
        kernels: [
            "gemm_fp8_p256_e4e4",
            "gemm_fp8_p256_e4e5",
            "gemm_fp8_p256_e5e4",
            "gemm_fp8_p256_e5e5",
        ],
    },
    Fp8Config {
        name: "pp128",
        pingpong: true,
        tma_store: false,
        bm: 128,
        bn: 128,
        stages: 6,
        kernels: [
            "gemm_fp8_pp128_e4e4",
            "gemm_fp8_pp128_e4e5",
            "gemm_fp8_pp128_e5e4",
            "gemm_fp8_pp128_e5e5",
        ],
    },
    Fp8Config {
        name: "pp64",
        pingpong: true,
        tma_store: false,
        bm: 64,
        bn: 256,
        stages: 5,
        kernels: [
            "gemm_fp8_pp64_e4e4",
            "gemm_fp8_pp64_e4e5",
            "gemm_fp8_pp64_e5e4",
            "gemm_fp8_pp64_e5e5",
        ],
    },
    Fp8Config {
        name: "p256s",
        pingpong: false,
        tma_store: true,
        bm: 128,
        bn: 256,
        stages: 4,
        kernels: [
            "gemm_fp8_p256s_e4e4",
            "gemm_fp8_p256s_e4e5",
            "gemm_fp8_p256s_e5e4",
            "gemm_fp8_p256s_e5e5",
        ],
    },
    Fp8Config {
        name: "pp128s",
        pingpong: true,
        tma_store: true,
        bm: 128,
        bn: 128,
        stages: 6,
        kernels: [
            "gemm_fp8_pp128s_e4e4",
            "gemm_fp8_pp128s_e4e5",
            "gemm_fp8_pp128s_e5e4",
            "gemm_fp8_pp128s_e5e5",
        ],
    },
    Fp8Config {
        name: "p192",
        pingpong: false,
        tma_store: false,
        bm: 128,
        bn: 192,
        stages: 4,
        kernels: [
            "gemm_fp8_p192_e4e4",
            "gemm_fp8_p192_e4e5",
            "gemm_fp8_p192_e5e4",
            "gemm_fp8_p192_e5e5",
        ],
    },
    Fp8Config {
        name: "p192s",
        pingpong: false,
        tma_store: true,
        bm: 128,
        bn: 192,
        stages: 4,
        kernels: [
            "gemm_fp8_p192s_e4e4",
            "gemm_fp8_p192s_e4e5",
            "gemm_fp8_p192s_e5e4",
            "gemm_fp8_p192s_e5e5",
        ],
    },
];

/// The configuration [`gemm_fp8`] runs for `shape` on `sms` multiprocessors. Measured on an H100
/// (docs/kernels/gemm_fp8.md, v2): `p256s` (128×256 tiles, TMA-store epilogue) led or tied every
/// large shape, deep and shallow K (8192³, 8192×4096×4096, 4096×4096×8192), so it runs wherever its
/// tiles give every cluster at least two work units; below that `pp128`, whose 128×128 tiles
/// spread a small product over more clusters (small shapes: a rule, not measured). Where
/// 128×192 tiles keep the clusters busier than 128×256 ones by more than 1 % ([`round_fill`]:
/// 8192³ on 132 SMs, 98.5 % against 97.0 %), `p192s` instead (v5). The launch takes the plain
/// twin (`p256`, `p192`) when the output cannot be written by TMA.
#[doc(hidden)]
pub fn plan_fp8(shape: GemmShape, sms: usize) -> Fp8Config {
    let (p256s, pp128, p192s) = (FP8_CONFIGS[3], FP8_CONFIGS[1], FP8_CONFIGS[6]);
    let units = shape.m.div_ceil(p256s.bm).div_ceil(CLUSTER) * shape.n.div_ceil(p256s.bn);
    let clusters = (sms / CLUSTER).max(1);
    if units < 2 * clusters {
        pp128
    } else if round_fill(p192s, shape, sms) > 1.01 * round_fill(p256s, shape, sms) {
        p192s
    } else {
        p256s
    }
}

/// The share of the clusters' tile slots that `config`'s tiles fill with useful columns on `sms`
/// multiprocessors: units over rounds × clusters (the last round's idle clusters), times N over
/// the tile columns (the last tile column's padding). For ampkit's tests and benchmarks; not
/// part of the stable API.
#[doc(hidden)]
pub fn round_fill(config: Fp8Config, shape: GemmShape, sms: usize) -> f64 {
    let tiles_n = shape.n.div_ceil(config.bn);
    let units = shape.m.div_ceil(config.bm).div_ceil(CLUSTER) * tiles_n;
    let clusters = (sms / CLUSTER).max(1);
    let rounds = units.div_ceil(clusters);
    units as f64 / (rounds * clusters) as f64 * shape.n as f64 / (tiles_n * config.bn) as f64
}
