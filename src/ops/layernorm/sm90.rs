//! The Hopper path of [`crate::ops::layernorm`]: thread-block-cluster LayerNorm for long rows on
//! compute capability 9.0 (`kernels/layernorm_sm90.cu`, sm_90a): the launch plans (pure, so they
//! are testable without a GPU) and the launches. The cluster shapes (`c` blocks per row, `p`
//! float4 packs per thread, `G` backward clusters) are stated in the kernel's header.

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;

/// Cluster sizes (blocks per row) the kernels are instantiated for.
pub(crate) const CLUSTER_SIZES: [usize; 3] = [2, 4, 8];
/// Packs of 4 floats per thread the kernels are instantiated for.
pub(crate) const CLUSTER_PACKS: [usize; 3] = [2, 4, 8];
/// The default plans take the cluster kernels for rows longer than this (where the backward's
/// portable plan turns two-pass, and the forward's block per row needs 32+ KB of shared memory).
pub(crate) const MIN_COLS: usize = 8192;
/// Most packs one block of a default plan holds: 2048 float4 (32 KB of the row), the slice that
/// layernorm.cu's block-per-row backward ran at ~86 % of copy (2048×8192, p8, 256 threads).
const SLICE_PACKS: usize = 2048;
/// Most blocks of a backward plan, a constant so that the column sums' shape never depends on the
/// device. The backward instances need 126-255 registers per thread: one block per SM, so every
/// cluster of `c` blocks needs `c` free SMs of one GPC, and a cluster that does not fit waits for a
/// second wave (the whole backward then takes twice as long: the clusters' rows are fixed). An
/// H100 has 132 SMs in 8 GPCs of 14-18, so 16 clusters of 8 fit only where at least 8 GPCs hold
/// 16+; 96 blocks (12 clusters of 8, 24 of 4, 48 of 2) fit any H100 layout, and 12 clusters' 64 KB
/// of loads in flight per SM (x and dy of the next row) are ~6 MB, more than HBM needs.
const TARGET_BLOCKS: usize = 96;
/// Fewest rows per backward cluster while rows allow `TARGET_BLOCKS`: each cluster writes a
/// partial row of 2·cols floats, 1.33/(rows per cluster) of the 12 B/element traffic.
const MIN_ROWS_PER_CLUSTER: usize = 4;

/// One cluster instance and its block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClusterShape {
    /// Blocks per cluster (2, 4 or 8).
    pub c: usize,
    /// Packs per thread (2, 4 or 8).
    pub p: usize,
    /// Threads per block: the slice's packs over `p`, rounded up to whole warps.
    pub threads: u32,
}

/// The launch bound of `layernorm_fwd_cluster_c*_p{p}` (`fwd_cluster_bound` in the kernel).
pub(crate) fn fwd_bound(p: usize) -> u32 {
    if p <= 4 {
        1024
    } else {
        512
    }
}

/// The launch bound of `layernorm_bwd_cluster_c*_p{p}` (`bwd_cluster_bound`): 6·p·4 floats of
/// state per thread; p = 4 fits 128 registers (measured: 128, no spills), so 512 threads, one
/// block per SM with 16 warps, hold a 65 536-column row in 8 blocks.
pub(crate) fn bwd_bound(p: usize) -> u32 {
    match p {
        0..=1 => 1024,
        2..=4 => 512,
        _ => 256,
    }
}

fn shape(packs: usize, c: usize, p: usize, bound: fn(usize) -> u32) -> Option<ClusterShape> {
    if !CLUSTER_SIZES.contains(&c) || !CLUSTER_PACKS.contains(&p) {
        return None;
    }
    let threads = packs.div_ceil(c).div_ceil(p).next_multiple_of(32).max(32);
    let threads = u32::try_from(threads).ok().filter(|&t| t <= bound(p))?;
    Some(ClusterShape { c, p, threads })
}

/// The forward instance `(c, p)` for rows of `packs` float4 packs, if the row fits it.
pub(crate) fn fwd_shape(packs: usize, c: usize, p: usize) -> Option<ClusterShape> {
    shape(packs, c, p, fwd_bound)
}

/// The backward instance `(c, p)` for rows of `packs` float4 packs, if the row fits it.
pub(crate) fn bwd_shape(packs: usize, c: usize, p: usize) -> Option<ClusterShape> {
    shape(packs, c, p, bwd_bound)
}

/// The smallest cluster whose blocks hold at most [`SLICE_PACKS`] packs each.
fn smallest_cluster(packs: usize) -> Option<usize> {
    CLUSTER_SIZES
        .into_iter()
        .find(|&c| packs.div_ceil(c) <= SLICE_PACKS)
}

/// Whether a forward grid of `rows·c` blocks fits the kernels' int indices and grid.x.
pub(crate) fn grid_fits(rows: usize, c: usize) -> bool {
    rows.checked_mul(c).is_some_and(|b| b <= i32::MAX as usize)
}

/// The default forward plan on a compute capability 9.0 device, or `None` for the portable
/// kernels: float4 rows longer than [`MIN_COLS`]; the smallest cluster with ≤ 2048 packs per block
/// at 4 packs per thread (≤ 512 threads), else 8 blocks of 8 packs per thread (≤ 131 072 columns).
pub(crate) fn fwd_plan(rows: usize, cols: usize, vec: usize) -> Option<ClusterShape> {
    if vec != 4 || cols <= MIN_COLS {
        return None;
    }
    let packs = cols / 4;
    let shape = match smallest_cluster(packs) {
        Some(c) => fwd_shape(packs, c, 4),
        None => fwd_shape(packs, 8, 8),
    }?;
    grid_fits(rows, shape.c).then_some(shape)
}

/// Clusters of a default backward plan: `TARGET_BLOCKS / c`, but at least
/// `MIN_ROWS_PER_CLUSTER` rows each while rows allow, and at least one. From `rows` and `c` only.
pub(crate) fn clusters_for(rows: usize, c: usize) -> usize {
    (TARGET_BLOCKS / c)
        .min(rows.div_ceil(MIN_ROWS_PER_CLUSTER))
        .max(1)
}

/// The default backward plan on a compute capability 9.0 device (instance and clusters `G`), or
/// `None` for the portable kernels: float4 rows longer than [`MIN_COLS`]; the smallest cluster
/// with ≤ 2048 packs per block, the fewest packs per thread within the launch bound (≤ 65 536
/// columns).
pub(crate) fn bwd_plan(rows: usize, cols: usize, vec: usize) -> Option<(ClusterShape, usize)> {
    if vec != 4 || cols <= MIN_COLS {
        return None;
    }
    let packs = cols / 4;
    let c = smallest_cluster(packs)?;
    let shape = CLUSTER_PACKS
        .into_iter()
        .find_map(|p| bwd_shape(packs, c, p))?;
    Some((shape, clusters_for(rows, c)))
}

/// Whether this device runs the cluster kernels (compute capability 9.0: the module is built for
/// `compute_90a`).
pub(crate) fn available(gpu: &Gpu) -> bool {
    gpu.info().compute_capability == (9, 0)
}

/// [`Error::InvalidArgument`] unless [`available`].
pub(crate) fn require(op: &'static str, gpu: &Gpu) -> Result<()> {
    if available(gpu) {
        return Ok(());
    }
    let (major, minor) = gpu.info().compute_capability;
    Err(Error::InvalidArgument {
        op,
        detail: format!(
            "the cluster kernels need compute capability 9.0; this GPU is {major}.{minor}"
        ),
    })
}

/// `[c2 p2, c2 p4, c2 p8, c4 p2, …, c8 p8]` entry points of one kernel family.
macro_rules! by_c_and_p {
    ($prefix:literal) => {
        [
            [
                concat!($prefix, "_c2_p2"),
                concat!($prefix, "_c2_p4"),
                concat!($prefix, "_c2_p8"),
            ],
            [
                concat!($prefix, "_c4_p2"),
                concat!($prefix, "_c4_p4"),
                concat!($prefix, "_c4_p8"),
            ],
            [
                concat!($prefix, "_c8_p2"),
                concat!($prefix, "_c8_p4"),
                concat!($prefix, "_c8_p8"),
            ],
        ]
    };
}

pub(crate) const FWD_CLUSTER: [[&str; 3]; 3] = by_c_and_p!("layernorm_fwd_cluster");
pub(crate) const BWD_CLUSTER: [[&str; 3]; 3] = by_c_and_p!("layernorm_bwd_cluster");

/// Index of 2, 4 or 8 in [`CLUSTER_SIZES`] / [`CLUSTER_PACKS`].
fn index(v: usize) -> usize {
    v.trailing_zeros() as usize - 1
}

/// Launches `layernorm_fwd_cluster` over `rows` rows: `ptrs` are x, gamma, beta, y, mean, rstd.
/// The caller has checked the buffers' lengths and alignment, that `shape` came from
/// [`fwd_shape`] for these rows (float4, `rows·c` within an int) and that the device is
/// [`available`].
pub(super) fn launch_fwd(
    gpu: &Gpu,
    shape: ClusterShape,
    rows: usize,
    cols: i32,
    eps: f32,
    ptrs: [u64; 6],
) -> Result<()> {
    let mut args = KernelArgs::new();
    for p in ptrs {
        args.push(p);
    }
    args.push(cols).push(eps);
    let kernel = FWD_CLUSTER[index(shape.c)][index(shape.p)];
    let cfg = LaunchConfig::linear((rows * shape.c) as u32, shape.threads);
    // SAFETY: layernorm_fwd_cluster_c*_p*(x, gamma, beta, y, mean, rstd, int cols, float eps)
    // matches the arguments pushed. x and y hold rows·cols f32, gamma and beta cols, mean and rstd
    // rows (checked by the caller); the grid is exactly rows clusters of c blocks (a multiple of
    // the kernel's compile-time cluster size, ≤ i32::MAX blocks), each block's slice of
    // ceil(cols/4 / c) packs fits its p·threads, threads are whole warps within the launch bound;
    // float4 accesses only when cols % 4 == 0 and the four row-major pointers are 16-byte
    // aligned; the module is compute_90a and the device 9.0. The guards outlive the launch.
    unsafe { gpu.launch(&kernels::LAYERNORM_SM90, kernel, cfg, &args) }
}

/// Launches `layernorm_bwd_cluster` with `clusters` clusters: `ptrs` are dy, x, mean, rstd,
/// gamma, dx and the partial rows (`clusters` rows of 2·cols f32). Same caller duties as
/// [`launch_fwd`], with `shape` from [`bwd_shape`].
pub(super) fn launch_bwd(
    gpu: &Gpu,
    shape: ClusterShape,
    clusters: usize,
    rows: i32,
    cols: i32,
    ptrs: [u64; 7],
) -> Result<()> {
    let mut args = KernelArgs::new();
    for p in ptrs {
        args.push(p);
    }
    args.push(rows).push(cols);
    let kernel = BWD_CLUSTER[index(shape.c)][index(shape.p)];
    let cfg = LaunchConfig::linear((clusters * shape.c) as u32, shape.threads);
    // SAFETY: layernorm_bwd_cluster_c*_p*(dy, x, mean, rstd, gamma, dx, float* partial, int rows,
    // int cols) matches. Buffers hold what (rows, cols) address (checked by the caller); the
    // scratch holds clusters·2·cols f32 and cluster g writes only partial row g; the grid is
    // clusters·c blocks (a multiple of the compile-time cluster size, clusters ≤ 512); each
    // block's slice fits p·threads, threads whole warps within the launch bound; float4 accesses
    // only when cols % 4 == 0 and dy, x, gamma, dx are 16-byte aligned (the scratch is 256-byte
    // aligned); the module is compute_90a and the device 9.0.
    unsafe { gpu.launch(&kernels::LAYERNORM_SM90, kernel, cfg, &args) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rows::ptx_maxntid;

    /// The `.reqnctapercluster` x of an entry point.
    fn ptx_cluster(ptx: &str, entry: &str) -> Option<usize> {
        let rest = &ptx[ptx.find(&format!(".entry {entry}("))?..];
        let line = rest
            .lines()
            .find(|l| l.trim_start().starts_with(".reqnctapercluster"))?;
        let dims = line.trim_start().trim_start_matches(".reqnctapercluster");
        dims.split(',').next()?.trim().parse().ok()
    }

    #[test]
    fn every_instance_exists_with_the_host_launch_bound_and_cluster_size() {
        let ptx = kernels::LAYERNORM_SM90.ptx;
        assert_eq!(kernels::LAYERNORM_SM90.arch, "compute_90a");
        for c in CLUSTER_SIZES {
            for p in CLUSTER_PACKS {
                let (f, b) = (
                    FWD_CLUSTER[index(c)][index(p)],
                    BWD_CLUSTER[index(c)][index(p)],
                );
                assert!(f.ends_with(&format!("_c{c}_p{p}")) && b.ends_with(&format!("_c{c}_p{p}")));
                assert_eq!(ptx_maxntid(ptx, f), Some(fwd_bound(p)), "{f}");
                assert_eq!(ptx_maxntid(ptx, b), Some(bwd_bound(p)), "{b}");
                assert_eq!(ptx_cluster(ptx, f), Some(c), "{f}");
                assert_eq!(ptx_cluster(ptx, b), Some(c), "{b}");
            }
        }
    }

    /// Every pack of a row belongs to exactly one (rank, thread, pack index) of the shape.
    fn assert_covers(packs: usize, s: ClusterShape) {
        let per = packs.div_ceil(s.c);
        let t = s.threads as usize;
        assert!(s.threads % 32 == 0 && s.threads >= 32, "{s:?}");
        let mut seen = vec![0u8; packs];
        for rank in 0..s.c {
            let (lo, hi) = (rank * per, ((rank + 1) * per).min(packs));
            for j in 0..s.p {
                for tid in 0..t {
                    let i = lo + j * t + tid;
                    if i < hi {
                        seen[i] += 1;
                    }
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{packs} packs, {s:?}");
    }

    #[test]
    fn plans_cover_every_column_and_row() {
        let colss = [
            8196, 8200, 12288, 16384, 16388, 32768, 32772, 65536, 65540, 131072,
        ];
        for cols in colss {
            let packs = cols / 4;
            let fwd = fwd_plan(256, cols, 4).unwrap();
            assert_covers(packs, fwd);
            assert!(fwd.threads <= fwd_bound(fwd.p));
            match bwd_plan(256, cols, 4) {
                Some((s, _)) => {
                    assert_covers(packs, s);
                    assert!(s.threads <= bwd_bound(s.p));
                }
                None => assert!(cols > 65536, "{cols}"),
            }
            for c in CLUSTER_SIZES {
                for p in CLUSTER_PACKS {
                    for s in [fwd_shape(packs, c, p), bwd_shape(packs, c, p)]
                        .into_iter()
                        .flatten()
                    {
                        assert_covers(packs, s);
                    }
                }
            }
        }
        for packs in [1, 3, 31, 33, 100] {
            assert_covers(packs, bwd_shape(packs, 8, 2).unwrap());
            assert_covers(packs, fwd_shape(packs, 2, 8).unwrap());
        }
        // Rows: cluster g takes g, g + G, …: every row exactly once, for any rows ≥ 1.
        for rows in [1, 2, 3, 4, 5, 37, 63, 64, 65, 256, 257, 100_000] {
            for c in CLUSTER_SIZES {
                let g = clusters_for(rows, c);
                assert!(
                    (1..=TARGET_BLOCKS / c).contains(&g) && g <= rows,
                    "{rows} {c}: {g}"
                );
                let mut seen = vec![0u8; rows];
                for first in 0..g {
                    for r in (first..rows).step_by(g) {
                        seen[r] += 1;
                    }
                }
                assert!(seen.iter().all(|&n| n == 1), "{rows} rows, G {g}");
            }
        }
    }

    #[test]
    fn default_plans_are_fixed_by_the_shape() {
        // The benchmark case: 8 blocks per row; forward and backward 4 packs × 512 threads, the
        // backward in 12 clusters (96 blocks, 21-22 rows each).
        let s = |c, p, threads| ClusterShape { c, p, threads };
        assert_eq!(fwd_plan(256, 65536, 4), Some(s(8, 4, 512)));
        assert_eq!(bwd_plan(256, 65536, 4), Some((s(8, 4, 512), 12)));
        assert_eq!(fwd_plan(256, 16384, 4), Some(s(2, 4, 512)));
        assert_eq!(bwd_plan(1024, 16384, 4), Some((s(2, 4, 512), 48)));
        assert_eq!(bwd_plan(37, 32768, 4), Some((s(4, 4, 512), 10)));
        assert_eq!(bwd_plan(1, 8196, 4), Some((s(2, 4, 288), 1)));
        assert_eq!(fwd_plan(3, 65540, 4), Some(s(8, 8, 288)));
        assert_eq!(fwd_plan(3, 131072, 4), Some(s(8, 8, 512)));
        // Past the instances, at or below MIN_COLS, unaligned: the portable kernels.
        assert_eq!(bwd_plan(256, 65540, 4), None);
        assert_eq!(fwd_plan(3, 131076, 4), None);
        assert_eq!(fwd_plan(3, 8192, 4), None);
        assert_eq!(bwd_plan(3, 8192, 4), None);
        assert_eq!(fwd_plan(3, 65536, 1), None);
        assert_eq!(bwd_plan(3, 65536, 1), None);
        // G depends on rows and c only: the same for any number of columns with that cluster.
        for cols in [8196, 12000, 16384] {
            assert_eq!(bwd_plan(1000, cols, 4).map(|(_, g)| g), Some(48));
        }
        assert_eq!(clusters_for(0, 8), 1);
        assert_eq!(clusters_for(256, 8), 12);
        assert_eq!(clusters_for(5, 8), 2);
        assert_eq!(fwd_shape(16384, 8, 2), Some(s(8, 2, 1024)));
        assert_eq!(bwd_shape(16384, 8, 4), Some(s(8, 4, 512)));
        assert_eq!(bwd_shape(16384, 8, 2), None);
        assert_eq!(fwd_shape(16384, 3, 4), None);
    }
}
