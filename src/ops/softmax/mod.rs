//! Softmax over the last dimension and fused softmax-cross-entropy on the GPU
//! (`kernels/softmax.cu`, `kernels/cross_entropy.cu`, and on compute capability 9.0
//! `kernels/softmax_sm90.cu`); CPU twin: [`crate::cpu::softmax`], which documents the functions,
//! their non-finite behaviour and the argument checks. Same argument order and errors, reported
//! before anything is launched; the loss differs in where its inputs and output live (below).
//!
//! Sums and maxima are trees rather than left-to-right folds, so results agree with the
//! reference to rounding; they are bit-identical run to run (fixed reduction shapes, no float
//! atomics). Softmax takes one warp per row while a row fits 32 lanes' registers (≤ 1024 columns
//! with 4-element accesses, ≤ 256 without), else one block per row with the row cached in shared
//! memory (as much as fits, 8 more floats per thread in registers; a longer tail is read again,
//! from L2); on compute capability 9.0, rows of ≥ 16 384 columns (4-element accesses) take a
//! thread-block cluster of up to 8 blocks per row instead, each block holding its slice in
//! registers. 4-element accesses need `cols % 4 == 0` and every row-major buffer aligned to 4
//! elements.
//!
//! The loss reads 16 bytes of logits at a time (8 f16 or 4 f32) when `classes` is a multiple and
//! both buffers are 16-byte aligned: then rows of up to 8192 classes take row groups of 1-8 warps
//! with the row in registers, and longer rows a cluster per row on 9.0 (elsewhere, and for other
//! widths, a warp or block per row up to 16 384 classes, then shared memory). Launch shapes are
//! measured choices: docs/kernels/softmax.md.
//!
//! # Cross-entropy on the device
//!
//! [`softmax_cross_entropy`] computes in f32 (the reference in f64) and never synchronises with
//! the host, so a training step can be captured in a CUDA graph:
//! - `grad_scale` is **one f32 in device memory**, read by the kernel: AMP's loss scale, updated
//!   on the device by [`crate::ops::scaler`], enters here and nowhere else. It multiplies the
//!   gradient only, never the loss, and is applied as given (a non-finite scale gives non-finite
//!   gradients, which the unscale step's inf check catches).
//! - The mean loss is written to **one f32 in device memory**, in the same launch: each block
//!   writes one f64 partial sum of its rows' losses to the device's scratch buffer, and the last
//!   block to finish (an integer ticket) adds the partials in a fixed order. No float atomics.
//! - exp(x − max) goes through the SFU's flush-to-zero `ex2`: values below 2^−126 are 0, so each
//!   gradient may differ from the reference's by `|grad_scale/rows|·2^−126` (they add nothing to
//!   the row sum in f32).
//! - **Labels out of range**: the reference returns [`Error::InvalidArgument`]; the labels here are
//!   in device memory, and checking them would cost a host synchronisation. Instead a row whose
//!   label is ≥ `classes` gets a NaN loss and NaN in every one of its `dlogits`, so the mean loss
//!   is NaN (visible when the host logs it) and the step's inf/NaN check flags the gradients.
//!   Other rows are computed normally.

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{expect_len, matrix_len, Error, Result};
use crate::kernels;
use cudarc::driver::{DevicePtr, DevicePtrMut};

#[cfg(test)]
use super::rows::ptx_maxntid;

use super::rows::{
    check_aligned, cluster_plan, cluster_threads, kernel_dims, p_index, row_shape, shared_limit,
    vec_width, ClusterKernel, ClusterShape, RowShape, WARP_ROWS, WARP_THREADS,
};

const FWD_WARP: [[&str; 4]; 2] = [
    [
        "softmax_fwd_warp_v4_p1",
        "softmax_fwd_warp_v4_p2",
        "softmax_fwd_warp_v4_p4",
        "softmax_fwd_warp_v4_p8",
    ],
    [
        "softmax_fwd_warp_v1_p1",
        "softmax_fwd_warp_v1_p2",
        "softmax_fwd_warp_v1_p4",
        "softmax_fwd_warp_v1_p8",
    ],
];
const FWD_BLOCK: [&str; 2] = ["softmax_fwd_block_v4", "softmax_fwd_block_v1"];
const BWD_WARP: [[&str; 4]; 2] = [
    [
        "softmax_bwd_warp_v4_p1",
        "softmax_bwd_warp_v4_p2",
        "softmax_bwd_warp_v4_p4",
        "softmax_bwd_warp_v4_p8",
    ],
    [
        "softmax_bwd_warp_v1_p1",
        "softmax_bwd_warp_v1_p2",
        "softmax_bwd_warp_v1_p4",
        "softmax_bwd_warp_v1_p8",
    ],
];
const BWD_BLOCK: [&str; 2] = ["softmax_bwd_block_v4", "softmax_bwd_block_v1"];

/// The six cluster instances of a softmax kernel: packs per thread `big` (launch bound 512) and
/// `small` (1024) for clusters of 2, 4 and 8.
macro_rules! softmax_clusters {
    ($prefix:literal, $big:literal, $small:literal) => {
        [
            ClusterKernel {
                c: 2,
                p: $big,
                bound: 512,
                name: concat!($prefix, "_c2_p", $big),
            },
            ClusterKernel {
                c: 2,
                p: $small,
                bound: 1024,
                name: concat!($prefix, "_c2_p", $small),
            },
            ClusterKernel {
                c: 4,
                p: $big,
                bound: 512,
                name: concat!($prefix, "_c4_p", $big),
            },
            ClusterKernel {
                c: 4,
                p: $small,
                bound: 1024,
                name: concat!($prefix, "_c4_p", $small),
            },
            ClusterKernel {
                c: 8,
                p: $big,
                bound: 512,
                name: concat!($prefix, "_c8_p", $big),
            },
            ClusterKernel {
                c: 8,
                p: $small,
                bound: 1024,
                name: concat!($prefix, "_c8_p", $small),
            },
        ]
    };
}

// The loss's old paths, kept only for the benchmark code (src/bench, benches/) until it moves to
// `crate::ops::cross_entropy`; not part of the API.
pub(crate) use crate::ops::cross_entropy::ce_force_fits;
#[doc(hidden)]
pub use crate::ops::cross_entropy::{
    softmax_cross_entropy, softmax_cross_entropy_forced, CeForce, Grad, GroupKernel, Logit,
};

/// Whether `force` fits rows of `cols` columns on `gpu` for the forward (`bwd`: the backward)
/// with 16-byte aligned buffers, without launching anything.
pub(crate) fn softmax_force_fits(gpu: &Gpu, cols: usize, bwd: bool, force: SoftmaxForce) -> bool {
    let vec = if cols % 4 == 0 { 4 } else { 1 };
    let kernels: &[ClusterKernel] = if bwd { &BWD_CLUSTER } else { &FWD_CLUSTER };
    cluster_shape("sweep", gpu, cols, vec, kernels, Some(force)).is_ok()
}

/// Cluster-per-row forward kernels (`kernels/softmax_sm90.cu`), smallest cluster first.
const FWD_CLUSTER: [ClusterKernel; 6] = softmax_clusters!("softmax_fwd_cluster", 8, 4);
/// Cluster-per-row backward kernels (two arrays per thread: half the packs of the forward).
const BWD_CLUSTER: [ClusterKernel; 6] = softmax_clusters!("softmax_bwd_cluster", 4, 2);
/// Rows of at least this many columns take a cluster per row on compute capability 9.0 (with
/// 4-element accesses); shorter rows a warp or a block per row.
const CLUSTER_MIN_COLS: usize = 16384;

fn vec_index(vec: usize) -> usize {
    usize::from(vec != 4)
}

/// The launch for a row-wise kernel over `rows` rows: warp kernels take 8 rows per block, block
/// kernels a block per row with `cached` packs of `arrays` f32 arrays in shared memory.
fn row_launch(rows: usize, shape: RowShape, vec: usize, arrays: usize) -> LaunchConfig {
    match shape {
        RowShape::Warp { .. } => {
            LaunchConfig::linear(rows.div_ceil(WARP_ROWS) as u32, WARP_THREADS)
        }
        RowShape::Block { threads, cached } => LaunchConfig {
            shared_bytes: (arrays * cached * vec * 4) as u32,
            ..LaunchConfig::linear(rows as u32, threads)
        },
    }
}

/// A launch shape of [`forward`] or [`backward`] forced by benchmarks and tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftmaxForce {
    /// The portable kernels (`kernels/softmax.cu`) even where a cluster would be used.
    Portable,
    /// A cluster of `c` blocks of `threads` per row, `p` packs per thread (compute capability
    /// 9.0, 4-element accesses; an instance must exist and hold the row).
    Cluster { c: usize, p: usize, threads: u32 },
}

/// The cluster shape for rows of `cols` columns of 4-element packs: the forced one, or by
/// default the first instance that holds a row of ≥ [`CLUSTER_MIN_COLS`] columns, on a 9.0 device.
fn cluster_shape(
    op: &'static str,
    gpu: &Gpu,
    cols: usize,
    vec: usize,
    kernels: &[ClusterKernel],
    force: Option<SoftmaxForce>,
) -> Result<Option<ClusterShape>> {
    let hopper = gpu.info().compute_capability == (9, 0);
    let packs = cols / 4;
    match force {
        None => Ok((hopper && vec == 4 && cols >= CLUSTER_MIN_COLS)
            .then(|| cluster_plan(packs, kernels))
            .flatten()),
        Some(SoftmaxForce::Portable) => Ok(None),
        Some(SoftmaxForce::Cluster { c, p, threads }) => {
            let shape = kernels
                .iter()
                .find(|k| k.c == c && k.p == p)
                .filter(|k| {
                    let least = cluster_threads(k, packs, k.bound);
                    hopper && vec == 4 && least.is_some_and(|l| threads >= l)
                })
                .filter(|k| threads <= k.bound && threads % 32 == 0)
                .map(|k| ClusterShape {
                    kernel: *k,
                    threads,
                });
            shape.map(Some).ok_or_else(|| Error::InvalidArgument {
                op,
                detail: format!("{force:?} does not fit rows of {cols} columns on this device"),
            })
        }
    }
}

/// The launch of a cluster kernel over `rows` rows: `c` blocks per row.
fn cluster_launch(op: &'static str, rows: usize, c: ClusterShape) -> Result<LaunchConfig> {
    let grid = u32::try_from(rows * c.kernel.c).map_err(|_| Error::InvalidArgument {
        op,
        detail: format!("{rows} rows need more than 2^32 blocks"),
    })?;
    Ok(LaunchConfig::linear(grid, c.threads))
}

/// Softmax of each row of `x` (`[rows, cols]`, row-major) into `y`. The GPU twin of
/// [`crate::cpu::softmax::forward`]: same arguments (after `gpu`), checks and errors.
pub fn forward<X, Y>(gpu: &Gpu, x: &X, rows: usize, cols: usize, y: &mut Y) -> Result<()>
where
    X: DevicePtr<f32>,
    Y: DevicePtrMut<f32>,
{
    forward_impl(gpu, x, rows, cols, y, None)
}

/// [`forward`] in a forced launch shape, for benchmarks and tests.
#[doc(hidden)]
pub fn forward_forced<X, Y>(
    gpu: &Gpu,
    x: &X,
    rows: usize,
    cols: usize,
    y: &mut Y,
    force: SoftmaxForce,
) -> Result<()>
where
    X: DevicePtr<f32>,
    Y: DevicePtrMut<f32>,
{
    forward_impl(gpu, x, rows, cols, y, Some(force))
}

fn forward_impl<X, Y>(
    gpu: &Gpu,
    x: &X,
    rows: usize,
    cols: usize,
    y: &mut Y,
    force: Option<SoftmaxForce>,
) -> Result<()>
where
    X: DevicePtr<f32>,
    Y: DevicePtrMut<f32>,
{
    const OP: &str = "ops::softmax::forward";
    let len = matrix_len(OP, rows, cols, "cols")?;
    let by_rows = format!("rows·cols = {rows}·{cols} = {len}");
    expect_len(OP, "x", x.len(), len, &by_rows)?;
    expect_len(OP, "y", y.len(), len, &by_rows)?;
    let (ri, ci) = kernel_dims(OP, rows, cols)?;
    if rows == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (xp, _gx) = x.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    check_aligned(OP, &[("x", xp, 4), ("y", yp, 4)])?;
    let vec = vec_width(cols, &[(xp, 4), (yp, 4)]);
    let mut args = KernelArgs::new();
    args.push(xp).push(yp);
    if let Some(c) = cluster_shape(OP, gpu, cols, vec, &FWD_CLUSTER, force)? {
        args.push(ci);
        let cfg = cluster_launch(OP, rows, c)?;
        // SAFETY: softmax_fwd_cluster_c*_p*(const float* x, float* y, int cols) matches; x and
        // y hold rows·cols f32 (checked above), cols % 4 == 0 with 16-byte aligned rows (vec);
        // the grid is rows clusters of the kernel's compile-time size, every row within
        // c·p·threads packs, threads within the launch bound, on a 9.0 device.
        return unsafe { gpu.launch(&kernels::SOFTMAX_SM90, c.kernel.name, cfg, &args) };
    }
    let shape = row_shape(cols / vec, vec, 1, shared_limit(gpu)?);
    let kernel = match shape {
        RowShape::Warp { p } => {
            args.push(ri).push(ci);
            FWD_WARP[vec_index(vec)][p_index(p)]
        }
        RowShape::Block { cached, .. } => {
            args.push(ci).push(cached as i32);
            FWD_BLOCK[vec_index(vec)]
        }
    };
    // SAFETY: softmax_fwd_warp_v*(const float* x, float* y, int rows, int cols) and
    // softmax_fwd_block_v*(x, y, int cols, int cached) match the arguments pushed for each shape;
    // x and y hold rows·cols f32 (checked above); warp kernels skip rows ≥ rows and the block
    // grid is exactly rows; 4-wide accesses only when cols % 4 == 0 and both are 16-byte aligned;
    // `cached` packs fit the shared memory requested. The guards outlive the launch.
    unsafe {
        gpu.launch(
            &kernels::SOFTMAX,
            kernel,
            row_launch(rows, shape, vec, 1),
            &args,
        )
    }
}

/// Gradient of [`forward`]: `dxⱼ = yⱼ · (dyⱼ − Σₖ dyₖ · yₖ)` per row, from the softmax output
/// `y` and the upstream gradient `dy` (all `[rows, cols]`). The GPU twin of
/// [`crate::cpu::softmax::backward`]: same arguments (after `gpu`), checks and errors.
pub fn backward<Y, DY, DX>(
    gpu: &Gpu,
    y: &Y,
    dy: &DY,
    rows: usize,
    cols: usize,
    dx: &mut DX,
) -> Result<()>
where
    Y: DevicePtr<f32>,
    DY: DevicePtr<f32>,
    DX: DevicePtrMut<f32>,
{
    backward_impl(gpu, (y, dy), rows, cols, dx, None)
}

/// [`backward`] in a forced launch shape, for benchmarks and tests.
#[doc(hidden)]
pub fn backward_forced<Y, DY, DX>(
    gpu: &Gpu,
    (y, dy): (&Y, &DY),
    rows: usize,
    cols: usize,
    dx: &mut DX,
    force: SoftmaxForce,
) -> Result<()>
where
    Y: DevicePtr<f32>,
    DY: DevicePtr<f32>,
    DX: DevicePtrMut<f32>,
{
    backward_impl(gpu, (y, dy), rows, cols, dx, Some(force))
}

fn backward_impl<Y, DY, DX>(
    gpu: &Gpu,
    (y, dy): (&Y, &DY),
    rows: usize,
    cols: usize,
    dx: &mut DX,
    force: Option<SoftmaxForce>,
) -> Result<()>
where
    Y: DevicePtr<f32>,
    DY: DevicePtr<f32>,
    DX: DevicePtrMut<f32>,
{
    const OP: &str = "ops::softmax::backward";
    let len = matrix_len(OP, rows, cols, "cols")?;
    let by_rows = format!("rows·cols = {rows}·{cols} = {len}");
    expect_len(OP, "y", y.len(), len, &by_rows)?;
    expect_len(OP, "dy", dy.len(), len, &by_rows)?;
    expect_len(OP, "dx", dx.len(), len, &by_rows)?;
    let (ri, ci) = kernel_dims(OP, rows, cols)?;
    if rows == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (yp, _g1) = y.device_ptr(stream);
    let (dyp, _g2) = dy.device_ptr(stream);
    let (dxp, _g3) = dx.device_ptr_mut(stream);
    check_aligned(OP, &[("y", yp, 4), ("dy", dyp, 4), ("dx", dxp, 4)])?;
    let vec = vec_width(cols, &[(yp, 4), (dyp, 4), (dxp, 4)]);
    let mut args = KernelArgs::new();
    args.push(yp).push(dyp).push(dxp);
    if let Some(c) = cluster_shape(OP, gpu, cols, vec, &BWD_CLUSTER, force)? {
        args.push(ci);
        let cfg = cluster_launch(OP, rows, c)?;
        // SAFETY: softmax_bwd_cluster_c*_p*(const float* y, const float* dy, float* dx, int
        // cols) matches; the buffers hold rows·cols f32 (checked above), cols % 4 == 0 with
        // 16-byte aligned rows (vec); the grid is rows clusters of the kernel's compile-time
        // size, every row within c·p·threads packs, threads within the launch bound, on 9.0.
        return unsafe { gpu.launch(&kernels::SOFTMAX_SM90, c.kernel.name, cfg, &args) };
    }
    let shape = row_shape(cols / vec, vec, 2, shared_limit(gpu)?);
    let kernel = match shape {
        RowShape::Warp { p } => {
            args.push(ri).push(ci);
            BWD_WARP[vec_index(vec)][p_index(p)]
        }
        RowShape::Block { cached, .. } => {
            args.push(ci).push(cached as i32);
            BWD_BLOCK[vec_index(vec)]
        }
    };
    // SAFETY: softmax_bwd_warp_v*(const float* y, const float* dy, float* dx, int rows, int cols)
    // and softmax_bwd_block_v*(y, dy, dx, int cols, int cached) match the arguments pushed for
    // each shape; the three buffers hold rows·cols f32 (checked above); the block kernel caches
    // `cached` packs of y and of dy, which is the shared memory requested.
    unsafe {
        gpu.launch(
            &kernels::SOFTMAX,
            kernel,
            row_launch(rows, shape, vec, 2),
            &args,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::ops::rows::*;

    #[test]
    fn every_kernel_name_exists_with_the_host_launch_bound() {
        let sm90 = kernels::SOFTMAX_SM90.ptx;
        for k in FWD_CLUSTER.iter().chain(&BWD_CLUSTER) {
            assert_eq!(ptx_maxntid(sm90, k.name), Some(k.bound), "{}", k.name);
            assert!(
                sm90.contains(&format!(".entry {}(", k.name))
                    && k.name.contains(&format!("_c{}_p{}", k.c, k.p)),
                "{}",
                k.name
            );
        }
        let ptx = kernels::SOFTMAX.ptx;
        let warp: Vec<&str> = [FWD_WARP, BWD_WARP]
            .iter()
            .flatten()
            .flatten()
            .copied()
            .collect();
        for name in warp {
            assert_eq!(ptx_maxntid(ptx, name), Some(WARP_THREADS), "{name}");
        }
        for name in [FWD_BLOCK, BWD_BLOCK].concat() {
            assert_eq!(ptx_maxntid(ptx, name), Some(1024), "{name}");
        }
    }

    #[test]
    fn launches_cover_every_row() {
        let warp = row_launch(4097, RowShape::Warp { p: 1 }, 1, 1);
        assert_eq!(warp.grid.0 as usize * WARP_ROWS, 4104);
        let block = row_launch(
            3,
            RowShape::Block {
                threads: 256,
                cached: 100,
            },
            4,
            2,
        );
        assert_eq!((block.grid.0, block.shared_bytes), (3, 3200));
    }

    #[test]
    fn warp_rows_up_to_1024_floats_then_blocks() {
        assert_eq!(warp_packs(1), Some(1));
        assert_eq!(warp_packs(33), Some(2));
        assert_eq!(warp_packs(256), Some(8));
        assert_eq!(warp_packs(257), None);
        assert_eq!(vec_width(512, &[(0x1000, 4), (0x2010, 4)]), 4);
        assert_eq!(vec_width(512, &[(0x1000, 4), (0x2004, 4)]), 1);
        assert_eq!(vec_width(10, &[(0x1000, 4)]), 1);
        // 65536 floats on a 227 KB device: 58 112 cached, the tail read again.
        let shape = row_shape(65536 / 4, 4, 1, 227 * 1024 - STATIC_SHARED_RESERVE);
        assert_eq!(
            shape,
            RowShape::Block {
                threads: 1024,
                cached: 14464
            }
        );
        assert_eq!(
            row_shape(300, 1, 1, 1 << 20),
            RowShape::Block {
                threads: 128,
                cached: 300
            }
        );
    }

    #[test]
    fn shapes_past_the_kernels_index_range_are_invalid() {
        assert!(matches!(kernel_dims("t", 7, MAX_COLS), Ok((7, c)) if c == 1 << 30));
        for (rows, cols) in [(1usize << 31, 1), (1, MAX_COLS + 1)] {
            let e = kernel_dims("t", rows, cols).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        }
    }
}
