//! The LayerNorm backward: launch plans (warp or block per row, prefetch, clusters or two-pass
//! for long rows) and the entry points; see the parent module's docs.

use super::sm90::{self, ClusterShape};
use super::vec_index;
use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::ops::rows::{
    block_threads, by_width_and_p, check_aligned, kernel_dims, p_index, vec_width, warp_packs,
    PACKS_PER_LANE, WARP_THREADS,
};
use crate::validate;
use cudarc::driver::{DevicePtr, DevicePtrMut};

/// Threads per block of `layernorm_bwd_cols` and `layernorm_bwd_finish`.
pub(super) const COLS_THREADS: u32 = 256;
pub(super) const FINISH_THREADS: u32 = 512;
/// Partial rows for `dgamma`/`dbeta`: at most this many blocks, each over at least
/// `MIN_ROWS_PER_BLOCK` rows in warp mode and the two-pass path (block mode: `block_mode_rows`).
/// A partial row is 2·cols floats written and read once, so over r rows it adds 1.33/r to the
/// backward's 12 B/element (≤ 1/12 at 16 rows).
const MAX_PARTS: usize = 512;
const MIN_ROWS_PER_BLOCK: usize = 16;

pub(super) const BWD_ROWS: [[&str; 4]; 2] = by_width_and_p!("layernorm_bwd_rows");
pub(super) const BWD_ROWS_PF: [[&str; 4]; 2] = by_width_and_p!("layernorm_bwd_rows_pf");
pub(super) const BWD_STATS: [&str; 2] = ["layernorm_bwd_stats_v4", "layernorm_bwd_stats_v1"];
pub(super) const BWD_COLS: [&str; 2] = ["layernorm_bwd_cols_v4", "layernorm_bwd_cols_v1"];

/// The launch bound of `layernorm_bwd_rows[_pf]_v{vec}_p{p}` (`bwd_bound` in the kernel): its
/// state is 4·p·vec floats per thread, 6·p·vec with prefetch.
pub(super) fn bwd_bound(vec: usize, p: usize, prefetch: bool) -> u32 {
    match (prefetch, vec * p) {
        (false, 0..=8) | (true, 0..=4) => 1024,
        (false, 9..=16) | (true, 5..=8) => 512,
        _ => 256,
    }
}

/// The backward's launch plan (pure, so the choice is testable without a GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BwdShape {
    /// `layernorm_bwd_rows[_pf]`: row groups of `group` threads (32: warp mode) in blocks of
    /// `threads`; `prefetch` loads the next row before this row's reduction.
    Rows {
        p: usize,
        threads: u32,
        group: u32,
        prefetch: bool,
    },
    /// `layernorm_bwd_stats` then `layernorm_bwd_cols`.
    TwoPass,
    /// `layernorm_bwd_cluster` (compute capability 9.0), `parts` clusters.
    Cluster(ClusterShape),
}

/// Backward shape, rows per block and the number of partial rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BwdPlan {
    pub shape: BwdShape,
    pub rows_per_block: usize,
    pub parts: usize,
}

/// A backward launch shape chosen by the caller instead of [`bwd_plan`]: for benchmarks that
/// compare shapes on one size, and tests that cover every shape on odd sizes. `min_rows` is the
/// fewest rows per block (each block writes one partial row of the column sums; there are at
/// most 512).
// Hidden like the rest of the tuning surface: its variants' fields are described in prose.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BwdForce {
    /// A warp per row, `p` packs (of 4 floats, or 1 when unaligned) per lane, 8 rows at a time
    /// per block; the row must fit (`packs ≤ 32·p`).
    Warp {
        p: usize,
        prefetch: bool,
        min_rows: usize,
    },
    /// A block per row, `p` packs per thread, as many threads as the next power of two of
    /// `packs / p` (32 or more, within the kernel's launch bound).
    Block {
        p: usize,
        prefetch: bool,
        min_rows: usize,
    },
    /// The two-pass path (any row length).
    TwoPass { min_rows: usize },
    /// `clusters` thread-block clusters of `c` blocks (2, 4, 8), each block its slice of the row
    /// with `p` packs per thread (2, 4, 8); cluster g takes rows g, g + clusters, … (1 to 512
    /// clusters, more than rows allowed). Compute capability 9.0 and float4 rows only.
    Cluster { c: usize, p: usize, clusters: usize },
}

/// Warp mode takes rows of up to `32·WARP_MAX_P` packs by default (256 floats): past that, a
/// block per row with prefetch measured faster (docs/kernels/layernorm.md).
const WARP_MAX_P: usize = 2;

/// Rows per block in block mode: enough that the partial row (2·cols floats written and read
/// once) stays a few percent of the block's traffic, `cols / 64` clamped to 8..=32 (1.33/rows of
/// it), but no fewer than 128 blocks while rows allow (one per SM or so); and at most 512 blocks.
fn block_mode_rows(rows: usize, cols: usize) -> usize {
    let wanted = (cols / 64).clamp(8, 32).min((rows / 128).max(1));
    rows.div_ceil(MAX_PARTS).max(wanted)
}

/// The default plan. Depends on `rows`, `cols`, `vec`, `max_warp_p` and whether the device runs
/// the cluster kernels (`clusters`: compute capability 9.0) only, never on the SM count, so the
/// column sums round the same way on every GPU of a kind. Warp mode takes rows of up to
/// `32·min(max_warp_p, WARP_MAX_P)` packs; longer rows take a block per row with prefetch (or
/// without, where only that fits the launch bound) up to 8192 columns, then clusters where they
/// fit ([`sm90::bwd_plan`]), else the two-pass path.
pub(crate) fn bwd_plan(
    rows: usize,
    cols: usize,
    vec: usize,
    max_warp_p: usize,
    clusters: bool,
) -> BwdPlan {
    let packs = cols / vec;
    let cluster = || {
        let (s, g) = sm90::bwd_plan(rows, cols, vec).filter(|_| clusters)?;
        Some(BwdForce::Cluster {
            c: s.c,
            p: s.p,
            clusters: g,
        })
    };
    let warp_limit = max_warp_p.min(WARP_MAX_P);
    let block = |prefetch: bool| {
        PACKS_PER_LANE
            .into_iter()
            .find(|&p| block_threads_for(packs, p) <= bwd_bound(vec, p, prefetch))
            .map(|p| BwdForce::Block {
                p,
                prefetch,
                min_rows: block_mode_rows(rows, cols),
            })
    };
    let force = match warp_packs(packs).filter(|&p| p <= warp_limit) {
        Some(p) => BwdForce::Warp {
            p,
            prefetch: false,
            min_rows: MIN_ROWS_PER_BLOCK,
        },
        None => block(true)
            .or_else(|| block(false))
            .or_else(cluster)
            .unwrap_or(BwdForce::TwoPass {
                min_rows: MIN_ROWS_PER_BLOCK,
            }),
    };
    forced_plan(rows, cols, vec, force).expect("the default plan fits its kernels")
}

/// Threads of a block-mode row group holding `packs` packs, `p` per thread.
fn block_threads_for(packs: usize, p: usize) -> u32 {
    packs.div_ceil(p).next_power_of_two().max(32) as u32
}

/// The plan for a forced shape, or `None` if the row does not fit it.
pub(crate) fn forced_plan(
    rows: usize,
    cols: usize,
    vec: usize,
    force: BwdForce,
) -> Option<BwdPlan> {
    let packs = cols / vec;
    let (shape, min_rows) = match force {
        BwdForce::Warp {
            p,
            prefetch,
            min_rows,
        } => {
            if !PACKS_PER_LANE.contains(&p) || packs > 32 * p {
                return None;
            }
            let shape = BwdShape::Rows {
                p,
                threads: WARP_THREADS,
                group: 32,
                prefetch,
            };
            (shape, min_rows)
        }
        BwdForce::Block {
            p,
            prefetch,
            min_rows,
        } => {
            let threads = block_threads_for(packs, p);
            if !PACKS_PER_LANE.contains(&p) || threads > bwd_bound(vec, p, prefetch) {
                return None;
            }
            let shape = BwdShape::Rows {
                p,
                threads,
                group: threads,
                prefetch,
            };
            (shape, min_rows)
        }
        BwdForce::TwoPass { min_rows } => (BwdShape::TwoPass, min_rows),
        BwdForce::Cluster { c, p, clusters } => {
            let shape = sm90::bwd_shape(packs, c, p).filter(|_| vec == 4)?;
            if !(1..=MAX_PARTS).contains(&clusters) {
                return None;
            }
            return Some(BwdPlan {
                shape: BwdShape::Cluster(shape),
                rows_per_block: rows.div_ceil(clusters),
                parts: if rows == 0 { 0 } else { clusters },
            });
        }
    };
    let rows_per_block = rows.div_ceil(MAX_PARTS).max(min_rows).max(1);
    Some(BwdPlan {
        shape,
        rows_per_block,
        parts: rows.div_ceil(rows_per_block),
    })
}

/// Gradients of [`forward`](super::forward): writes `dx` (`[rows, cols]`) and **overwrites** `dgamma` and
/// `dbeta` (`cols` each) with the sums over all rows, from the upstream gradient `dy` and the
/// `mean` and `rstd` that [`forward`](super::forward) saved for this `x`. The GPU twin of
/// [`crate::cpu::layernorm::backward`]: same arguments (after `gpu`), same checks and errors, all
/// before any launch. `rows = 0` writes zeros to `dgamma` and `dbeta`.
///
/// Uses the device's scratch buffer for the partial column sums (`2·cols` floats per block of
/// 8+ rows, at most 512 blocks).
#[allow(clippy::too_many_arguments)] // mirrors the CPU reference's argument list one for one
pub fn backward(
    gpu: &Gpu,
    dy: &impl DevicePtr<f32>,
    x: &impl DevicePtr<f32>,
    mean: &impl DevicePtr<f32>,
    rstd: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    rows: usize,
    cols: usize,
    dx: &mut impl DevicePtrMut<f32>,
    dgamma: &mut impl DevicePtrMut<f32>,
    dbeta: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let inputs = (dy, x, mean, rstd, gamma);
    backward_impl(
        gpu,
        inputs,
        rows,
        cols,
        dx,
        dgamma,
        dbeta,
        Choice::WarpLimit(8),
    )
}

/// How [`backward_impl`] picks its plan: the default with warp mode limited to rows of
/// `32·max_warp_p` packs, or a forced shape.
#[derive(Clone, Copy)]
pub(super) enum Choice {
    WarpLimit(usize),
    Forced(BwdForce),
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward_impl<DY, X, M, R, G, DX, DG, DB>(
    gpu: &Gpu,
    (dy, x, mean, rstd, gamma): (&DY, &X, &M, &R, &G),
    rows: usize,
    cols: usize,
    dx: &mut DX,
    dgamma: &mut DG,
    dbeta: &mut DB,
    choice: Choice,
) -> Result<()>
where
    DY: DevicePtr<f32>,
    X: DevicePtr<f32>,
    M: DevicePtr<f32>,
    R: DevicePtr<f32>,
    G: DevicePtr<f32>,
    DX: DevicePtrMut<f32>,
    DG: DevicePtrMut<f32>,
    DB: DevicePtrMut<f32>,
{
    const OP: &str = "ops::layernorm::backward";
    let lens = [
        dy.len(),
        x.len(),
        dx.len(),
        mean.len(),
        rstd.len(),
        gamma.len(),
        dgamma.len(),
        dbeta.len(),
    ];
    validate::layernorm::backward(OP, rows, cols, lens)?;
    let (ri, ci) = kernel_dims(OP, rows, cols)?;
    let stream = gpu.stream();
    let (dyp, _g1) = dy.device_ptr(stream);
    let (xp, _g2) = x.device_ptr(stream);
    let (mp, _g3) = mean.device_ptr(stream);
    let (rp, _g4) = rstd.device_ptr(stream);
    let (gp, _g5) = gamma.device_ptr(stream);
    let (dxp, _g6) = dx.device_ptr_mut(stream);
    let (dgp, _g7) = dgamma.device_ptr_mut(stream);
    let (dbp, _g8) = dbeta.device_ptr_mut(stream);
    let named = [("dy", dyp), ("x", xp), ("gamma", gp), ("dx", dxp)];
    check_aligned(OP, &named.map(|(n, a)| (n, a, 4)))?;
    let others = [("mean", mp), ("rstd", rp), ("dgamma", dgp), ("dbeta", dbp)];
    check_aligned(OP, &others.map(|(n, a)| (n, a, 4)))?;
    let vec = vec_width(cols, &named.map(|(_, a)| (a, 4)));
    let plan = match choice {
        Choice::WarpLimit(p) => bwd_plan(rows, cols, vec, p, sm90::available(gpu)),
        Choice::Forced(force) => {
            forced_plan(rows, cols, vec, force).ok_or_else(|| Error::InvalidArgument {
                op: OP,
                detail: format!("{force:?} does not fit rows of {cols} columns (vec {vec})"),
            })?
        }
    };
    if let BwdShape::Cluster(_) = plan.shape {
        sm90::require(OP, gpu)?;
    }
    let partial_bytes = (plan.parts * 2 * cols * 4).next_multiple_of(256);
    let stats_bytes = match plan.shape {
        BwdShape::TwoPass => rows * 2 * 4,
        BwdShape::Rows { .. } | BwdShape::Cluster(_) => 0,
    };
    let rpb = plan.rows_per_block as i32;
    gpu.with_scratch((partial_bytes + stats_bytes).max(256), |scratch| {
        let partial = scratch;
        if rows > 0 {
            match plan.shape {
                BwdShape::Rows {
                    p,
                    threads,
                    group,
                    prefetch,
                } => {
                    let mut args = KernelArgs::new();
                    args.push(dyp).push(xp).push(mp).push(rp).push(gp).push(dxp);
                    args.push(partial)
                        .push(ri)
                        .push(ci)
                        .push(rpb)
                        .push(group as i32);
                    let shared = if group < threads { 2 * cols * 4 } else { 0 };
                    let cfg = LaunchConfig {
                        shared_bytes: shared as u32,
                        ..LaunchConfig::linear(plan.parts as u32, threads)
                    };
                    let table = if prefetch { BWD_ROWS_PF } else { BWD_ROWS };
                    let kernel = table[vec_index(vec)][p_index(p)];
                    // SAFETY: layernorm_bwd_rows_v*(dy, x, mean, rstd, gamma, dx, float* partial,
                    // int rows, int cols, int rows_per_block, int group) matches. Buffers hold
                    // what (rows, cols) address (checked above); the scratch holds parts·2·cols
                    // f32; the plan keeps cols/vec ≤ p·group and threads within the kernel's
                    // launch bound; warp mode (group 32) gets 2·cols floats of shared memory.
                    unsafe { gpu.launch(&kernels::LAYERNORM, kernel, cfg, &args)? };
                }
                BwdShape::TwoPass => {
                    let stats = partial + partial_bytes as u64;
                    let packs = cols / vec;
                    let mut args = KernelArgs::new();
                    args.push(dyp)
                        .push(xp)
                        .push(mp)
                        .push(rp)
                        .push(gp)
                        .push(stats)
                        .push(ci);
                    let cfg = LaunchConfig::linear(ri as u32, block_threads(packs));
                    // SAFETY: layernorm_bwd_stats_v*(dy, x, mean, rstd, gamma, float* stats,
                    // int cols) matches; a block per row; stats holds 2·rows f32 of scratch.
                    unsafe {
                        gpu.launch(&kernels::LAYERNORM, BWD_STATS[vec_index(vec)], cfg, &args)?
                    };
                    let mut args = KernelArgs::new();
                    args.push(dyp)
                        .push(xp)
                        .push(mp)
                        .push(rp)
                        .push(gp)
                        .push(stats);
                    args.push(dxp).push(partial).push(ri).push(ci).push(rpb);
                    let cfg = LaunchConfig {
                        grid: (
                            packs.div_ceil(COLS_THREADS as usize) as u32,
                            plan.parts as u32,
                            1,
                        ),
                        block: (COLS_THREADS, 1, 1),
                        shared_bytes: 0,
                    };
                    // SAFETY: layernorm_bwd_cols_v*(dy, x, mean, rstd, gamma, const float* stats,
                    // dx, float* partial, int rows, int cols, int rows_per_block) matches; threads
                    // past cols/vec return; grid.y = parts ≤ 512 blocks of rows_per_block rows.
                    unsafe {
                        gpu.launch(&kernels::LAYERNORM, BWD_COLS[vec_index(vec)], cfg, &args)?
                    };
                }
                BwdShape::Cluster(shape) => {
                    let ptrs = [dyp, xp, mp, rp, gp, dxp, partial];
                    sm90::launch_bwd(gpu, shape, plan.parts, ri, ci, ptrs)?;
                }
            }
        }
        let mut args = KernelArgs::new();
        args.push(partial)
            .push(plan.parts as i32)
            .push(ci)
            .push(dgp)
            .push(dbp);
        let blocks = (2 * cols).div_ceil(32) as u32;
        // SAFETY: layernorm_bwd_finish(const float* partial, int parts, int cols, float* dgamma,
        // float* dbeta) matches; the scratch holds parts partial rows of 2·cols f32 written above
        // (none when rows = 0), dgamma and dbeta hold cols f32; columns past 2·cols are skipped.
        unsafe {
            gpu.launch(
                &kernels::LAYERNORM,
                "layernorm_bwd_finish",
                LaunchConfig::linear(blocks, FINISH_THREADS),
                &args,
            )
        }
    })
}

#[cfg(test)]
mod tests;
