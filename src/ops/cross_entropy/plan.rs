//! Launch plans of the fused softmax-cross-entropy ([`super::softmax_cross_entropy`]): which
//! kernel covers rows of a given length, with how many threads and blocks. Pure functions of the
//! row length, the access width, the instance tables and (for rows too long for registers) the
//! device's shared memory and compute capability; measured choices are in docs/kernels/softmax.md.

use crate::ops::rows::{
    block_threads, cluster_plan, cluster_threads, ClusterKernel, ClusterShape, PACKS_PER_LANE,
    WARP_THREADS,
};

/// One `softmax_ce_groups` instance: row groups of `warps` warps, `p` packs per thread.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupKernel {
    /// Packs per thread.
    pub p: usize,
    /// Warps per row.
    pub warps: usize,
    /// Entry point.
    pub name: &'static str,
    /// Entry point of the variant that prefetches the next row.
    pub name_pf: &'static str,
}

/// Threads per block of `softmax_ce_groups` (`GROUP_BLOCK` in the kernel).
pub(crate) const GROUP_BLOCK: u32 = 256;

/// Blocks a `softmax_ce_groups` launch has at most by default: its row groups loop over the rows
/// past this, so the per-block ticket of the one-launch mean is paid a bounded number of times
/// and each group's deferred per-row work covers several rows. A constant, so the number of
/// partial sums (and their order) does not depend on the device.
pub(crate) const GROUP_BLOCKS: usize = 1024;

/// A launch shape of the loss, forced by benchmarks and tests instead of the default plan.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeForce {
    /// A warp per row, `p` packs per lane (the row must fit: `packs ≤ 32·p`), 8 rows per block;
    /// `prefetch` loads each lane's next row before working on the current one.
    Warp { p: usize, prefetch: bool },
    /// A block per row, `p` packs per thread in registers, as many threads as the next power
    /// of two of `packs / p` (32 or more, within the kernel's launch bound).
    Block { p: usize, prefetch: bool },
    /// A block of `threads` per row; the first `cached` packs (at most what the device's shared
    /// memory holds) in shared memory, the next 8 floats per thread in registers, the rest read
    /// again.
    Shared { threads: u32, cached: usize },
    /// `softmax_ce_groups` (16-byte packs only): `warps` warps per row, `p` packs per thread,
    /// at most `blocks` blocks (0: the default bound).
    Groups {
        warps: usize,
        p: usize,
        prefetch: bool,
        blocks: usize,
    },
    /// `softmax_ce_cluster` (16-byte packs, compute capability 9.0 only): a cluster of `c`
    /// blocks of `threads` per row, `p` packs per thread.
    Cluster { c: usize, p: usize, threads: u32 },
}

/// How the loss covers its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CeShape {
    /// `softmax_ce_rows[_pf]`: row groups of `group` threads (32: a warp per row) in blocks of
    /// `threads`, `p` packs per thread.
    Rows {
        p: usize,
        threads: u32,
        group: u32,
        prefetch: bool,
    },
    /// `softmax_ce_block`: a block per row with `cached` packs in shared memory.
    Shared { threads: u32, cached: usize },
    /// `softmax_ce_groups[_pf]`: 256-thread blocks of row groups, at most `max_blocks` blocks.
    Groups {
        kernel: GroupKernel,
        prefetch: bool,
        max_blocks: usize,
    },
    /// `softmax_ce_cluster`: one cluster per row.
    Cluster(ClusterShape),
}

/// Threads in a `softmax_ce_rows` / `softmax_ce_block` launch at most: their blocks loop over
/// the row sets past this. 2^18 is about one wave of the H100's 132 SMs × 2048 threads; a
/// constant, so the number of partial sums (and their order) does not depend on the device.
const CE_GRID_THREADS: usize = 1 << 18;

impl CeShape {
    /// Blocks in the launch over `rows` rows.
    pub(crate) fn blocks(self, rows: usize) -> usize {
        let (sets, cap) = match self {
            CeShape::Rows { threads, group, .. } => (
                rows.div_ceil((threads / group) as usize),
                CE_GRID_THREADS / threads as usize,
            ),
            CeShape::Shared { threads, .. } => (rows, CE_GRID_THREADS / threads as usize),
            CeShape::Groups {
                kernel, max_blocks, ..
            } => (rows.div_ceil(8 / kernel.warps), max_blocks),
            CeShape::Cluster(c) => return rows * c.kernel.c,
        };
        sets.min(cap).max(1)
    }

    /// Partial loss sums the launch writes: one per block, or one per cluster (row).
    pub(crate) fn partials(self, rows: usize) -> usize {
        match self {
            CeShape::Cluster(_) => rows,
            _ => self.blocks(rows),
        }
    }
}

/// Launch bound of `softmax_ce_rows_*_v{vec}_p{p}` (`ce_rows_bound` in the kernel): it keeps
/// vec·p floats of the row per thread.
pub(crate) fn ce_rows_bound(vec: usize, p: usize) -> u32 {
    match vec * p {
        0..=16 => 1024,
        17..=32 => 512,
        _ => 256,
    }
}

/// Rows of up to this many floats per lane take a warp each in `softmax_ce_rows`; longer rows a
/// block each, with at least 2 packs per thread and at most `CE_BLOCK_THREADS` threads where the
/// row allows (measured: docs/kernels/softmax.md).
const CE_WARP_FLOATS: usize = 32;
const CE_BLOCK_THREADS: u32 = 256;

/// What a logit type offers the planner: its widest access, the row-group and cluster
/// instances (the latter only on compute capability 9.0), and whether row groups prefetch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CeKernels {
    /// Elements per 16-byte pack.
    pub widest: usize,
    /// `softmax_ce_groups` instances, the preferred first for a row that fits several.
    pub groups: &'static [GroupKernel],
    /// Whether the default row-group launch prefetches the next row.
    pub groups_prefetch: bool,
    /// `softmax_ce_cluster` instances, if the device runs them.
    pub cluster: Option<&'static [ClusterKernel]>,
}

/// The loss's default shape for rows of `packs` packs of `vec` elements, with `shared_limit`
/// bytes of shared memory per block: with 16-byte packs, row groups while an instance holds the
/// row, then (compute capability 9.0) a cluster per row; otherwise `softmax_ce_rows` in
/// registers (`prefetch`: the variant that loads the next row ahead), else shared memory.
pub(crate) fn ce_plan(
    packs: usize,
    vec: usize,
    shared_limit: usize,
    prefetch: bool,
    k: &CeKernels,
) -> CeShape {
    if vec == k.widest {
        if let Some(g) = k.groups.iter().find(|g| packs <= 32 * g.warps * g.p) {
            return CeShape::Groups {
                kernel: *g,
                prefetch: k.groups_prefetch,
                max_blocks: GROUP_BLOCKS,
            };
        }
        if let Some(shape) = k.cluster.and_then(|c| cluster_plan(packs, c)) {
            return CeShape::Cluster(shape);
        }
    }
    rows_plan(packs, vec, shared_limit, prefetch)
}

/// `softmax_ce_rows` / `softmax_ce_block` for any access width.
fn rows_plan(packs: usize, vec: usize, shared_limit: usize, prefetch: bool) -> CeShape {
    let warp = PACKS_PER_LANE
        .into_iter()
        .find(|&p| 32 * p >= packs && vec * p <= CE_WARP_FLOATS);
    if let Some(p) = warp {
        return CeShape::Rows {
            p,
            threads: WARP_THREADS,
            group: 32,
            prefetch,
        };
    }
    let fits = |p: usize, most: u32| {
        let threads = packs.div_ceil(p).next_power_of_two().max(32) as u32;
        (threads <= most.min(ce_rows_bound(vec, p))).then_some(CeShape::Rows {
            p,
            threads,
            group: threads,
            prefetch,
        })
    };
    let block = [2, 4, 8]
        .into_iter()
        .find_map(|p| fits(p, CE_BLOCK_THREADS))
        .or_else(|| PACKS_PER_LANE.into_iter().find_map(|p| fits(p, 1024)));
    block.unwrap_or(CeShape::Shared {
        threads: block_threads(packs),
        cached: packs.min(shared_limit / (vec * 4)),
    })
}

/// The shape for a forced choice, or `None` if the row (or the device) does not fit it.
pub(crate) fn ce_forced(
    packs: usize,
    vec: usize,
    shared_limit: usize,
    force: CeForce,
    k: &CeKernels,
) -> Option<CeShape> {
    match force {
        CeForce::Warp { p, prefetch } => (PACKS_PER_LANE.contains(&p) && packs <= 32 * p)
            .then_some(CeShape::Rows {
                p,
                threads: WARP_THREADS,
                group: 32,
                prefetch,
            }),
        CeForce::Block { p, prefetch } => {
            let threads = packs.div_ceil(p).next_power_of_two().max(32) as u32;
            (PACKS_PER_LANE.contains(&p) && threads <= ce_rows_bound(vec, p)).then_some(
                CeShape::Rows {
                    p,
                    threads,
                    group: threads,
                    prefetch,
                },
            )
        }
        CeForce::Shared { threads, cached } => {
            let ok = threads.is_power_of_two()
                && (32..=1024).contains(&threads)
                && cached <= packs
                && cached * vec * 4 <= shared_limit;
            ok.then_some(CeShape::Shared { threads, cached })
        }
        CeForce::Groups {
            warps,
            p,
            prefetch,
            blocks,
        } => {
            let g = k.groups.iter().find(|g| g.warps == warps && g.p == p)?;
            (vec == k.widest && packs <= 32 * warps * p).then_some(CeShape::Groups {
                kernel: *g,
                prefetch,
                max_blocks: if blocks == 0 { GROUP_BLOCKS } else { blocks },
            })
        }
        CeForce::Cluster { c, p, threads } => {
            let kernel = k.cluster?.iter().find(|x| x.c == c && x.p == p)?;
            let least = cluster_threads(kernel, packs, kernel.bound)?;
            (vec == k.widest && threads >= least && threads <= kernel.bound && threads % 32 == 0)
                .then_some(CeShape::Cluster(ClusterShape {
                    kernel: *kernel,
                    threads,
                }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cross_entropy::Logit;
    use crate::ops::rows::STATIC_SHARED_RESERVE;
    use half::f16;

    fn kernels<L: Logit>(cluster: bool) -> CeKernels {
        CeKernels {
            widest: L::VECS[0],
            groups: L::GROUPS,
            groups_prefetch: false,
            cluster: cluster.then_some(L::CLUSTER),
        }
    }

    fn check(packs: usize, vec: usize, shape: CeShape, h100: usize) {
        match shape {
            CeShape::Rows {
                p, threads, group, ..
            } => {
                assert!(packs <= p * group as usize, "{packs}: {shape:?}");
                assert!(threads <= ce_rows_bound(vec, p), "{shape:?}");
                assert!(group == 32 || group == threads, "{shape:?}");
                assert!(threads % 32 == 0, "{shape:?}");
            }
            CeShape::Shared { threads, cached } => {
                assert!(cached <= packs && cached * vec * 4 <= h100, "{shape:?}");
                assert!(threads.is_power_of_two() && threads <= 1024, "{shape:?}");
            }
            CeShape::Groups { kernel, .. } => {
                assert!(packs <= 32 * kernel.warps * kernel.p, "{packs}: {shape:?}");
                assert!(8 % kernel.warps == 0, "{shape:?}");
            }
            CeShape::Cluster(c) => {
                let k = c.kernel;
                assert!(
                    packs <= k.c * k.p * c.threads as usize,
                    "{packs}: {shape:?}"
                );
                assert!(c.threads <= k.bound && c.threads % 32 == 0, "{shape:?}");
            }
        }
    }

    fn all_shapes<L: Logit>() {
        let h100 = 227 * 1024 - STATIC_SHARED_RESERVE;
        for cluster in [false, true] {
            let k = kernels::<L>(cluster);
            for vec in L::VECS.iter().copied() {
                for classes in [
                    1usize, 10, 256, 1000, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 70000,
                    131072, 300000,
                ] {
                    let packs = classes.div_ceil(vec);
                    for prefetch in [false, true] {
                        check(packs, vec, ce_plan(packs, vec, h100, prefetch, &k), h100);
                    }
                    for p in [1, 2, 4, 8] {
                        for prefetch in [false, true] {
                            let mut forced = vec![
                                CeForce::Warp { p, prefetch },
                                CeForce::Block { p, prefetch },
                            ];
                            for warps in [1, 2, 4, 8] {
                                let blocks = 0;
                                forced.push(CeForce::Groups {
                                    warps,
                                    p,
                                    prefetch,
                                    blocks,
                                });
                            }
                            for c in [2, 4, 8] {
                                for threads in [128, 256, 512, 1024] {
                                    forced.push(CeForce::Cluster { c, p, threads });
                                }
                            }
                            for f in forced {
                                if let Some(shape) = ce_forced(packs, vec, h100, f, &k) {
                                    check(packs, vec, shape, h100);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn loss_shapes_fit_their_kernels() {
        all_shapes::<f32>();
        all_shapes::<f16>();
        all_shapes::<half::bf16>();
    }

    #[test]
    fn default_loss_shapes() {
        let h100 = 227 * 1024 - STATIC_SHARED_RESERVE;
        let (k16, k32) = (kernels::<f16>(true), kernels::<f32>(true));
        let groups = |shape: CeShape| match shape {
            CeShape::Groups { kernel, .. } => (kernel.warps, kernel.p),
            other => panic!("{other:?}"),
        };
        // 16-byte packs: row groups up to 8192 classes, the fewest warps that hold the row.
        assert_eq!(groups(ce_plan(2, 8, h100, false, &k16)), (1, 1));
        assert_eq!(groups(ce_plan(128, 8, h100, false, &k16)), (1, 4));
        assert_eq!(groups(ce_plan(256, 8, h100, false, &k16)), (2, 4));
        assert_eq!(groups(ce_plan(1024, 8, h100, false, &k16)), (8, 4));
        assert_eq!(groups(ce_plan(256, 4, h100, true, &k32)), (2, 4));
        assert_eq!(groups(ce_plan(1024, 4, h100, true, &k32)), (4, 8));
        assert_eq!(groups(ce_plan(2048, 4, h100, true, &k32)), (8, 8));
        // Past 8192 classes: a cluster per row on compute capability 9.0 ...
        match ce_plan(8192, 8, h100, false, &k16) {
            CeShape::Cluster(c) => assert_eq!((c.kernel.c, c.kernel.p, c.threads), (8, 4, 256)),
            other => panic!("{other:?}"),
        }
        match ce_plan(16384, 4, h100, true, &k32) {
            CeShape::Cluster(c) => assert_eq!((c.kernel.c, c.kernel.p, c.threads), (8, 8, 256)),
            other => panic!("{other:?}"),
        }
        // ... elsewhere a block per row in registers up to 16384, then shared memory.
        let k16_80 = kernels::<f16>(false);
        assert_eq!(
            ce_plan(2048, 8, h100, false, &k16_80),
            CeShape::Rows {
                p: 8,
                threads: 256,
                group: 256,
                prefetch: false
            }
        );
        match ce_plan(8192, 8, h100, false, &k16_80) {
            CeShape::Shared { threads, cached } => {
                assert_eq!(threads, 1024);
                assert!(cached + 1024 >= 8192);
            }
            other => panic!("{other:?}"),
        }
        // Other access widths keep softmax_ce_rows.
        assert_eq!(
            ce_plan(10, 1, h100, false, &k16),
            CeShape::Rows {
                p: 1,
                threads: 256,
                group: 32,
                prefetch: false
            }
        );
        // Launches loop over their rows past their block bounds.
        let warp = CeShape::Rows {
            p: 4,
            threads: 256,
            group: 32,
            prefetch: true,
        };
        assert_eq!((warp.blocks(16384), warp.blocks(100)), (1024, 13));
        let g = ce_plan(128, 8, h100, false, &k16);
        assert_eq!((g.blocks(16384), g.blocks(100)), (GROUP_BLOCKS, 13));
        let c = ce_plan(8192, 8, h100, false, &k16);
        assert_eq!((c.blocks(256), c.partials(256)), (2048, 256));
        let shared = CeShape::Shared {
            threads: 1024,
            cached: 10,
        };
        assert_eq!((shared.blocks(256), shared.blocks(1000)), (256, 256));
        let warp1 = CeForce::Warp {
            p: 1,
            prefetch: false,
        };
        assert_eq!(ce_forced(40, 1, h100, warp1, &k16), None);
        let bad = CeForce::Shared {
            threads: 100,
            cached: 0,
        };
        assert_eq!(ce_forced(40, 1, h100, bad, &k16), None);
        let no_cluster = CeForce::Cluster {
            c: 8,
            p: 4,
            threads: 256,
        };
        assert_eq!(ce_forced(8192, 8, h100, no_cluster, &k16_80), None);
    }
}
