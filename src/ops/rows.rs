//! Row-wise launch planning shared by the row kernels of [`crate::ops::layernorm`],
//! [`crate::ops::softmax`] and [`crate::ops::cross_entropy`]: warp-per-row or block-per-row
//! shapes, access widths, the device's shared-memory limit, and argument checks.

use crate::cuda::Gpu;
use crate::error::{Error, Result};
use cudarc::driver::sys::CUdevice_attribute;

/// Rows per block of the warp-per-row kernels (`WARP_ROWS` in the kernels): 256 threads.
pub(crate) const WARP_ROWS: usize = 8;
/// Threads per block of the warp-per-row kernels.
pub(crate) const WARP_THREADS: u32 = 32 * WARP_ROWS as u32;
/// Packs per lane the warp kernels are instantiated for (`p1` … `p8`).
pub(crate) const PACKS_PER_LANE: [usize; 4] = [1, 2, 4, 8];
/// Shared memory kept back from the opt-in limit for the kernels' static reduction buffers.
pub(crate) const STATIC_SHARED_RESERVE: usize = 1024;
/// Largest `cols`: the kernels index a row's elements with 32-bit ints, with headroom.
pub(crate) const MAX_COLS: usize = 1 << 30;

/// How a row-wise kernel covers a row of `packs` packs of `vec` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowShape {
    /// A warp per row with `p` packs per lane, 8 rows per 256-thread block.
    Warp {
        /// Packs per lane (1, 2, 4 or 8).
        p: usize,
    },
    /// A block of `threads` per row, the first `cached` packs kept in shared memory.
    Block {
        /// Threads per block.
        threads: u32,
        /// Packs of the row cached in shared memory (the rest is read again).
        cached: usize,
    },
}

/// 4 when `cols` is a multiple of 4 and every `(address, element bytes)` allows 4-element
/// accesses, else 1.
pub(crate) fn vec_width(cols: usize, ptrs: &[(u64, usize)]) -> usize {
    let aligned = ptrs.iter().all(|&(a, b)| a % (4 * b as u64) == 0);
    if cols % 4 == 0 && aligned {
        4
    } else {
        1
    }
}

/// The fewest packs per lane (1, 2, 4, 8) that let one warp hold `packs` packs, if any does.
pub(crate) fn warp_packs(packs: usize) -> Option<usize> {
    PACKS_PER_LANE.into_iter().find(|&p| 32 * p >= packs)
}

/// Index of `p` in [`PACKS_PER_LANE`], for the kernel-name tables.
pub(crate) fn p_index(p: usize) -> usize {
    p.trailing_zeros() as usize
}

/// Threads for a block-per-row kernel: about 4 packs each, 128 to 1024, a power of two.
pub(crate) fn block_threads(packs: usize) -> u32 {
    packs.div_ceil(4).next_power_of_two().clamp(128, 1024) as u32
}

/// Warp or block shape for a streaming row kernel that caches `arrays` f32 arrays per row in
/// shared memory, with `shared_limit` bytes available per block.
pub(crate) fn row_shape(packs: usize, vec: usize, arrays: usize, shared_limit: usize) -> RowShape {
    match warp_packs(packs) {
        Some(p) => RowShape::Warp { p },
        None => RowShape::Block {
            threads: block_threads(packs),
            cached: packs.min(shared_limit / (arrays * vec * 4)),
        },
    }
}

/// Dynamic shared memory a block may use on this device (the opt-in limit, less what the kernels
/// declare statically).
pub(crate) fn shared_limit(gpu: &Gpu) -> Result<usize> {
    let optin = gpu
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(Error::driver("reading the shared-memory limit"))?;
    Ok((optin.max(0) as usize).saturating_sub(STATIC_SHARED_RESERVE))
}

/// `rows` and `cols` as the kernels' ints: [`Error::InvalidArgument`] past `i32::MAX` rows or
/// [`MAX_COLS`] columns.
pub(crate) fn kernel_dims(op: &'static str, rows: usize, cols: usize) -> Result<(i32, i32)> {
    let rows_i = i32::try_from(rows).map_err(|_| Error::InvalidArgument {
        op,
        detail: format!("rows = {rows} exceeds i32::MAX, the kernels' row range"),
    })?;
    if cols > MAX_COLS {
        return Err(Error::InvalidArgument {
            op,
            detail: format!("{cols} columns exceed the kernels' limit of 2^30"),
        });
    }
    Ok((rows_i, cols as i32))
}

/// [`Error::InvalidArgument`] unless every `(name, address, element bytes)` is element-aligned.
pub(crate) fn check_aligned(op: &'static str, ptrs: &[(&str, u64, usize)]) -> Result<()> {
    for &(name, addr, bytes) in ptrs {
        if addr % bytes as u64 != 0 {
            return Err(Error::InvalidArgument {
                op,
                detail: format!("{name} at {addr:#x} is not aligned to its {bytes}-byte elements"),
            });
        }
    }
    Ok(())
}

/// `[["<prefix>_v4_p1", … "_v4_p8"], ["<prefix>_v1_p1", … "_v1_p8"]]`: a row-kernel family's
/// entry points by access width (4, 1) and packs per lane (1, 2, 4, 8).
macro_rules! by_width_and_p {
    ($prefix:literal) => {
        [
            [
                concat!($prefix, "_v4_p1"),
                concat!($prefix, "_v4_p2"),
                concat!($prefix, "_v4_p4"),
                concat!($prefix, "_v4_p8"),
            ],
            [
                concat!($prefix, "_v1_p1"),
                concat!($prefix, "_v1_p2"),
                concat!($prefix, "_v1_p4"),
                concat!($prefix, "_v1_p8"),
            ],
        ]
    };
}
pub(crate) use by_width_and_p;

/// The `.maxntid` (launch bound) of kernel `entry` in a PTX module, for tests that check the host's
/// tables against the kernels.
#[cfg(test)]
pub(crate) fn ptx_maxntid(ptx: &str, entry: &str) -> Option<u32> {
    let start = ptx.find(&format!(".entry {entry}("))?;
    let rest = &ptx[start..];
    let line = rest
        .lines()
        .find(|l| l.trim_start().starts_with(".maxntid"))?;
    line.trim_start()
        .trim_start_matches(".maxntid")
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One thread-block-cluster row kernel (sm_90 modules): `c` blocks per row, `p` packs per
/// thread, launch bound `bound`, entry point `name`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterKernel {
    /// Blocks per cluster (one cluster per row).
    pub c: usize,
    /// Packs per thread.
    pub p: usize,
    /// The kernel's launch bound (`.maxntid`).
    pub bound: u32,
    /// Entry point.
    pub name: &'static str,
}

/// A cluster launch: the kernel and its threads per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClusterShape {
    /// The kernel.
    pub kernel: ClusterKernel,
    /// Threads per block.
    pub threads: u32,
}

/// Threads a block of `kernel` needs for rows of `packs` packs, if within its launch bound and
/// `most`: the next power of two (≥ 128) of the slice over `p`.
pub(crate) fn cluster_threads(kernel: &ClusterKernel, packs: usize, most: u32) -> Option<u32> {
    let span = packs.div_ceil(kernel.c);
    let threads = span.div_ceil(kernel.p).next_power_of_two().max(128) as u32;
    (threads <= kernel.bound.min(most)).then_some(threads)
}

/// The default cluster shape for rows of `packs` packs: the first of `kernels` (listed smallest
/// cluster first, most packs per thread first within a cluster size) whose blocks need at most
/// 256 threads, else the first that fits its launch bound at all; `None` when no instance holds
/// the row.
pub(crate) fn cluster_plan(packs: usize, kernels: &[ClusterKernel]) -> Option<ClusterShape> {
    [256, 1024].into_iter().find_map(|most| {
        kernels.iter().find_map(|k| {
            cluster_threads(k, packs, most).map(|threads| ClusterShape {
                kernel: *k,
                threads,
            })
        })
    })
}
