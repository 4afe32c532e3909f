//! The GEMM's tile configurations and the cost-model planner that picks one (and a K-split) per
//! shape. Outside the crate these are reachable only as `ampkit::tuning::gemm`, for ampkit's tests
//! and benchmarks.

use crate::cuda::Gpu;
use crate::shape::{GemmShape, Layout};

/// A block-tile configuration of `kernels/gemm.cu` (must match its `AMPKIT_GEMM_LAYOUT`).
/// Tuning internals for tests and benchmarks; not part of the stable API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileConfig {
    /// Kernel-name suffix.
    pub name: &'static str,
    /// Block tile rows.
    pub bm: usize,
    /// Block tile columns.
    pub bn: usize,
    /// K depth of one pipeline stage.
    pub bk: usize,
    /// Threads per block.
    pub threads: u32,
    /// cp.async pipeline depth.
    pub stages: usize,
    /// Blocks that fit on one SM at once (registers and shared memory).
    pub blocks_per_sm: usize,
    /// Relative math throughput per SM (big warp tiles reuse fragments more).
    pub efficiency: f64,
    /// Entry points for the forward, dgrad and wgrad layouts.
    pub kernels: [&'static str; 3],
    /// Whether the kernels are the Hopper ones (`kernels/gemm_sm90.cu`: wgmma + TMA, compute
    /// capability 9.0 only) rather than the portable mma.sync ones of `kernels/gemm.cu`.
    pub hopper: bool,
    /// Whether the kernels are persistent (one block per SM walking the tiles, in clusters of 2
    /// blocks that take vertically adjacent tiles and share the B tile), launched with one block
    /// per SM at most instead of one per tile.
    pub persistent: bool,
    /// Whether a persistent configuration's two consumer warpgroups take whole tiles in turn
    /// (ping-pong) rather than sharing each tile (cooperative).
    pub pingpong: bool,
}

const PAD: usize = 8;
/// The tiles `kernels/gemm.cu` instantiates (its `AMPKIT_GEMM_LAYOUT`). Efficiencies are the
/// measured rates relative to `l64` (docs/kernels/gemm.md).
#[rustfmt::skip]
const LARGE64: TileConfig = TileConfig { name: "l64", bm: 128, bn: 256, bk: 64, threads: 256, stages: 3, blocks_per_sm: 1, efficiency: 1.0, kernels: ["gemm_fwd_l64", "gemm_dgrad_l64", "gemm_wgrad_l64"], hopper: false, persistent: false, pingpong: false };
#[rustfmt::skip]
const MEDIUM8: TileConfig = TileConfig { name: "m8", bm: 128, bn: 128, bk: 32, threads: 256, stages: 4, blocks_per_sm: 1, efficiency: 0.61, kernels: ["gemm_fwd_m8", "gemm_dgrad_m8", "gemm_wgrad_m8"], hopper: false, persistent: false, pingpong: false };
#[rustfmt::skip]
const MEDIUM8K64: TileConfig = TileConfig { name: "m8k64", bm: 128, bn: 128, bk: 64, threads: 256, stages: 3, blocks_per_sm: 1, efficiency: 0.84, kernels: ["gemm_fwd_m8k64", "gemm_dgrad_m8k64", "gemm_wgrad_m8k64"], hopper: false, persistent: false, pingpong: false };
#[rustfmt::skip]
const MEDIUM: TileConfig = TileConfig { name: "m", bm: 128, bn: 128, bk: 32, threads: 128, stages: 4, blocks_per_sm: 2, efficiency: 0.81, kernels: ["gemm_fwd_m", "gemm_dgrad_m", "gemm_wgrad_m"], hopper: false, persistent: false, pingpong: false };
#[rustfmt::skip]
const SMALL: TileConfig = TileConfig { name: "s", bm: 64, bn: 64, bk: 32, threads: 128, stages: 4, blocks_per_sm: 4, efficiency: 0.42, kernels: ["gemm_fwd_s", "gemm_dgrad_s", "gemm_wgrad_s"], hopper: false, persistent: false, pingpong: false };
/// The element-by-element configuration for operands off the fast path.
#[rustfmt::skip]
pub const UNALIGNED: TileConfig = TileConfig { name: "unaligned", bm: 64, bn: 64, bk: 32, threads: 128, stages: 2, blocks_per_sm: 4, efficiency: 0.2, kernels: ["gemm_fwd_unaligned", "gemm_dgrad_unaligned", "gemm_wgrad_unaligned"], hopper: false, persistent: false, pingpong: false };
/// The aligned configurations, largest first.
pub const CONFIGS: [TileConfig; 5] = [LARGE64, MEDIUM, MEDIUM8, MEDIUM8K64, SMALL];
/// The Hopper configurations (`kernels/gemm_sm90.cu`), used on compute capability 9.0 only: a
/// producer warpgroup issuing TMA loads and two consumer warpgroups issuing `wgmma`; `h*` one
/// block per tile, `p*` persistent clusters of two (v12) whose consumers share each tile
/// (cooperative), `pp128` the same with each consumer taking whole tiles in turn (ping-pong).
/// Efficiencies relative to `l64`, measured (docs/kernels/gemm.md). The cooperative persistent
/// kernels measured no faster than `h256`/`h128` in alternating rounds, so their efficiency keeps
/// them out of the default plans (forced plans and the bench still run them).
#[rustfmt::skip]
pub const HOPPER_CONFIGS: [TileConfig; 5] = [
    TileConfig { name: "h256", bm: 128, bn: 256, bk: 64, threads: 384, stages: 4, blocks_per_sm: 1, efficiency: 1.45, kernels: ["gemm_sm90_fwd_h256", "gemm_sm90_dgrad_h256", "gemm_sm90_wgrad_h256"], hopper: true, persistent: false, pingpong: false },
    TileConfig { name: "h128", bm: 128, bn: 128, bk: 64, threads: 384, stages: 4, blocks_per_sm: 1, efficiency: 1.42, kernels: ["gemm_sm90_fwd_h128", "gemm_sm90_dgrad_h128", "gemm_sm90_wgrad_h128"], hopper: true, persistent: false, pingpong: false },
    TileConfig { name: "p256", bm: 128, bn: 256, bk: 64, threads: 384, stages: 4, blocks_per_sm: 1, efficiency: 1.0, kernels: ["gemm_sm90_fwd_p256", "gemm_sm90_dgrad_p256", "gemm_sm90_wgrad_p256"], hopper: true, persistent: true, pingpong: false },
    TileConfig { name: "p128", bm: 128, bn: 128, bk: 64, threads: 384, stages: 6, blocks_per_sm: 1, efficiency: 1.0, kernels: ["gemm_sm90_fwd_p128", "gemm_sm90_dgrad_p128", "gemm_sm90_wgrad_p128"], hopper: true, persistent: true, pingpong: false },
    TileConfig { name: "pp128", bm: 128, bn: 128, bk: 64, threads: 384, stages: 6, blocks_per_sm: 1, efficiency: 1.53, kernels: ["gemm_sm90_fwd_pp128", "gemm_sm90_dgrad_pp128", "gemm_sm90_wgrad_pp128"], hopper: true, persistent: true, pingpong: true },
];

/// Blocks per cluster of the persistent configurations (`CLUSTER` in `kernels/gemm_sm90.cu`).
pub(crate) const PERSISTENT_CLUSTER: usize = 2;
/// Shared memory of the persistent kernels' two epilogue staging buffers (64 rows × 40 f32 each)
/// and their two ping-pong turn barriers.
const PERSISTENT_EXTRA_BYTES: usize = 2 * 64 * 40 * 4 + 16;

/// Every aligned configuration this GPU runs: [`CONFIGS`], plus [`HOPPER_CONFIGS`] on compute
/// capability 9.0.
pub fn configs_for(gpu: &Gpu) -> Vec<TileConfig> {
    let mut all = CONFIGS.to_vec();
    if gpu.info().compute_capability == (9, 0) {
        all.extend(HOPPER_CONFIGS);
    }
    all
}

impl TileConfig {
    /// Dynamic shared memory of one block for a layout, bytes (the kernel's A_TILE and B_TILE).
    pub fn shared_bytes(&self, layout: Layout) -> usize {
        if self.hopper {
            // Unpadded swizzled tiles, 1 KB to align them to the swizzle period, and a full and
            // an empty mbarrier per stage (+ the persistent kernels' staging and turn barriers).
            let epilogue = if self.persistent {
                PERSISTENT_EXTRA_BYTES
            } else {
                0
            };
            return self.stages * (self.bm + self.bn) * self.bk * 2
                + epilogue
                + 1024
                + self.stages * 16;
        }
        let (a_kmajor, b_kmajor) = kmajor(layout);
        let tile = |rows: usize, k_major: bool| {
            if k_major {
                rows * (self.bk + PAD)
            } else {
                self.bk * (rows + PAD)
            }
        };
        self.stages * (tile(self.bm, a_kmajor) + tile(self.bn, b_kmajor)) * 2
    }
}

/// Whether A and B are K-major (K contiguous) in a layout.
fn kmajor(layout: Layout) -> (bool, bool) {
    match layout {
        Layout::Forward => (true, true),
        Layout::Dgrad => (true, false),
        Layout::Wgrad => (false, false),
    }
}

/// How a GEMM is launched: tile configuration and K-split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// The tile configuration.
    pub config: TileConfig,
    /// K is cut into this many slices, one per grid layer, summed by a second kernel when > 1.
    pub splits: usize,
    /// Tile-rows per raster group (blocks of a group share operand strips in L2); pairs of
    /// tile-rows for the persistent configurations.
    pub group_m: usize,
    /// Blocks a persistent configuration launches (rounded down to whole clusters); 0 for one
    /// per SM. Ignored by the other configurations, which launch one block per tile.
    pub blocks: usize,
}

/// Tile-rows per raster group for the mma.sync configurations.
pub const GROUP_M: usize = 4;

/// Tile-rows per raster group the planner uses for a configuration: 4 for the mma.sync tiles;
/// 1 (plain row order) for `h256`, whose 132 resident blocks already span four 32-tile rows at
/// 8192³; 8 for `h128` (docs/kernels/gemm.md, v8).
pub(crate) fn group_m_for(config: &TileConfig) -> usize {
    match config.name {
        "h256" => 1,
        "h128" | "p256" | "p128" | "pp128" => 8,
        _ => GROUP_M,
    }
}

/// Sustained math per SM of the best configuration (FLOP/s): 410 TFLOP/s over 132 SMs measured
/// for `l64` at 8192³ on an H100 (docs/kernels/gemm.md). `TileConfig::efficiency` is relative to it.
const SM_FLOPS: f64 = 3.1e12;
/// Warps an SM needs resident to reach its full rate; fewer leave latency exposed.
const WARPS_FOR_FULL_RATE: f64 = 8.0;
/// Per-block fixed cost in the model (pipeline fill, epilogue), s.
const BLOCK_OVERHEAD_S: f64 = 4e-6;
/// Memory bandwidth assumed for the split-K reduction (bytes/s).
const DRAM_BYTES_PER_S: f64 = 2.5e12;
/// Cost of one extra kernel launch in the model (s).
const LAUNCH_S: f64 = 3e-6;

/// Picks the tile configuration and K-split for a shape on a GPU with `sms` SMs. `aligned` says
/// whether the operands allow the fast path (see the module doc); `hopper` whether the GPU runs
/// the `HOPPER_CONFIGS` (compute capability 9.0).
///
/// The model: an SM runs its share of blocks (`ceil(blocks / sms)`) at the configuration's
/// measured rate, scaled down when fewer than 8 warps are resident, plus a fixed cost per block
/// wave; a K-split adds a launch and the f32 partials' round trip through memory.
pub fn plan(shape: GemmShape, aligned: bool, sms: usize, hopper: bool) -> Plan {
    let GemmShape { m, n, .. } = shape;
    let config_only = |config: TileConfig| Plan {
        config,
        splits: 1,
        group_m: group_m_for(&config),
        blocks: 0,
    };
    let mut best = (f64::INFINITY, config_only(SMALL));
    if !aligned {
        // The unaligned kernel splits K only when its output tiles cannot fill a quarter of the
        // SMs: the 10-class layer's weight gradient (10×512 over the batch) is 8 tiles of 64×64,
        // which ran on 8 of 132 SMs for half of a 4096-sample step (issue 17). Wider outputs
        // keep one launch, as the split's extra launch would cost more than it gains.
        let tiles = m.div_ceil(UNALIGNED.bm) * n.div_ceil(UNALIGNED.bn);
        if tiles * 4 >= sms {
            return config_only(UNALIGNED);
        }
        best.1 = config_only(UNALIGNED);
        for splits in [1usize, 2, 3, 4, 6, 8, 12, 16] {
            match plan_cost(UNALIGNED, shape, splits, sms) {
                Some(cost) if cost < best.0 => best = (cost, Plan { splits, ..best.1 }),
                Some(_) => {}
                None => break,
            }
        }
        return best.1;
    }
    let hopper_configs: &[TileConfig] = if hopper { &HOPPER_CONFIGS } else { &[] };
    for &config in CONFIGS.iter().chain(hopper_configs) {
        for splits in [1usize, 2, 3, 4, 6, 8] {
            let Some(cost) = plan_cost(config, shape, splits, sms) else {
                break;
            };
            if cost < best.0 {
                best = (
                    cost,
                    Plan {
                        config,
                        splits,
                        group_m: group_m_for(&config),
                        blocks: 0,
                    },
                );
            }
        }
    }
    best.1
}

/// The model's time for `shape` in `config` with `splits` K-splits (see [`plan`]), or `None` when
/// a split would get fewer than 8 K-tiles (the pipeline needs something to overlap).
fn plan_cost(config: TileConfig, shape: GemmShape, splits: usize, sms: usize) -> Option<f64> {
    let GemmShape { m, n, k, .. } = shape;
    let k_tiles = k.div_ceil(config.bk).max(1);
    if splits > 1 && k_tiles / splits < 8 {
        return None;
    }
    // A persistent cluster computes tile-rows in pairs (an odd last one with an idle partner).
    let tile_rows = if config.persistent {
        m.div_ceil(config.bm).next_multiple_of(PERSISTENT_CLUSTER)
    } else {
        m.div_ceil(config.bm)
    };
    let tiles = tile_rows * n.div_ceil(config.bn);
    let per_sm = (tiles * splits).div_ceil(sms);
    let resident = per_sm.min(config.blocks_per_sm);
    let warps = (resident as u32 * config.threads / 32) as f64;
    // Ping-pong: a block with one unit computes it on one of its two consumer warpgroups, and one
    // warpgroup's epilogue hides behind the other's main loop only once a block has several units
    // (MLP dgrad, 2 units: 0.60× cuBLAS against h256's 0.63×; 8192³, 16 units: 0.99× against
    // 0.95×; H100, docs/kernels/gemm.md v12).
    let pingpong = match (config.pingpong, per_sm) {
        (false, _) => 1.0,
        (true, 0 | 1) => 0.5,
        (true, 2 | 3) => 0.75,
        (true, _) => 1.0,
    };
    let rate = SM_FLOPS * config.efficiency * pingpong * (warps / WARPS_FOR_FULL_RATE).min(1.0);
    let block_flops = 2.0 * (config.bm * config.bn * k_tiles.div_ceil(splits) * config.bk) as f64;
    // A persistent block fills its pipeline and launches once; the others once per block wave.
    let waves = if config.persistent {
        1.0
    } else {
        per_sm.div_ceil(config.blocks_per_sm) as f64
    };
    let mut cost = per_sm as f64 * block_flops / rate + waves * BLOCK_OVERHEAD_S;
    if splits > 1 {
        cost += LAUNCH_S + (m * n * 4 * (splits + 1)) as f64 / DRAM_BYTES_PER_S;
    }
    Some(cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_matches_the_kernel_header() {
        assert_eq!(LARGE64.shared_bytes(Layout::Forward), 165_888);
        assert_eq!(MEDIUM.shared_bytes(Layout::Wgrad), 69_632);
        assert_eq!(SMALL.shared_bytes(Layout::Dgrad), 38_912);
        // The persistent kernels: 4 stages of 128×256 or 6 of 128×128, two 64×40 f32 staging
        // buffers, alignment, stage and turn barriers.
        assert_eq!(HOPPER_CONFIGS[2].shared_bytes(Layout::Forward), 218_192);
        assert_eq!(HOPPER_CONFIGS[3].shared_bytes(Layout::Wgrad), 218_224);
        assert_eq!(HOPPER_CONFIGS[4].shared_bytes(Layout::Dgrad), 218_224);
        for c in CONFIGS.iter().chain(&HOPPER_CONFIGS) {
            for l in [Layout::Forward, Layout::Dgrad, Layout::Wgrad] {
                assert!(
                    c.shared_bytes(l) <= 227 * 1024 / c.blocks_per_sm,
                    "{c:?} {l:?}"
                );
            }
        }
    }

    #[test]
    fn plans_fit_the_shape() {
        let big = GemmShape::new(Layout::Forward, 8192, 8192, 8192);
        let p = plan(big, true, 132, false);
        assert_eq!((p.config.name, p.splits), ("l64", 1));
        let p = plan(big, true, 132, true);
        assert_eq!((p.config.name, p.splits), ("pp128", 1));
        // The default MLP's wgrad: 784×512 outputs over K = 4096 → a K-split.
        let wgrad = plan(
            GemmShape::new(Layout::Wgrad, 512, 784, 4096),
            true,
            132,
            false,
        );
        assert!(wgrad.splits > 1, "{wgrad:?}");
        for hopper in [false, true] {
            let tiny = plan(
                GemmShape::new(Layout::Dgrad, 4096, 512, 10),
                false,
                132,
                hopper,
            );
            assert_eq!(tiny.config.name, "unaligned");
            assert_eq!(tiny.splits, 1, "K = 10 has one K-tile");
        }
    }

    /// The plans on the H100 (132 SMs) for `ampkit bench`'s shapes: each the fastest of the
    /// forced plans timed against cuBLAS in alternating rounds (docs/kernels/gemm.md, v12).
    #[test]
    fn hopper_plans_are_the_measured_fastest() {
        for (layout, m, n, k, want) in [
            (Layout::Forward, 8192, 8192, 8192, ("pp128", 1)),
            (Layout::Forward, 4096, 4096, 4096, ("pp128", 1)),
            (Layout::Forward, 8192, 4096, 4096, ("pp128", 1)),
            (Layout::Dgrad, 8192, 4096, 4096, ("pp128", 1)),
            (Layout::Wgrad, 4096, 4096, 8192, ("pp128", 1)),
            (Layout::Forward, 4096, 512, 784, ("h128", 1)),
            (Layout::Dgrad, 4096, 784, 512, ("h256", 1)),
            (Layout::Wgrad, 512, 784, 4096, ("h128", 4)),
        ] {
            let p = plan(GemmShape::new(layout, m, n, k), true, 132, true);
            assert_eq!((p.config.name, p.splits), want, "{layout:?} {m}×{n}×{k}");
        }
    }

    #[test]
    fn a_narrow_unaligned_output_splits_k_and_a_wide_one_does_not() {
        // The 10-class layer's weight gradient: 8 output tiles for 132 SMs, K = the batch.
        for batch in [3904, 4096] {
            let p = plan(
                GemmShape::new(Layout::Wgrad, 10, 512, batch),
                false,
                132,
                true,
            );
            assert_eq!(p.config.name, "unaligned");
            assert!(p.splits >= 8, "{batch}: {p:?}");
            assert!(
                batch.div_ceil(UNALIGNED.bk) / p.splits >= 8,
                "{batch}: {p:?}"
            );
        }
        // Its forward (64 tiles of 4096×10) and a 784-wide dgrad fill enough SMs unsplit.
        for shape in [
            GemmShape::new(Layout::Forward, 4096, 10, 512),
            GemmShape::new(Layout::Dgrad, 4096, 784, 512),
        ] {
            assert_eq!(plan(shape, false, 132, true).splits, 1, "{shape:?}");
        }
        // Too little K to split.
        let short = plan(
            GemmShape::new(Layout::Wgrad, 10, 512, 200),
            false,
            132,
            true,
        );
        assert_eq!(short.splits, 1, "{short:?}");
    }
}
