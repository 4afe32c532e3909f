//! LayerNorm over the last dimension on the GPU, f32 (`kernels/layernorm.cu`, and
//! `kernels/layernorm_sm90.cu` for long rows on compute capability 9.0); CPU twin:
//! [`crate::cpu::layernorm`], which documents the function, its non-finite behaviour and the
//! argument checks. Same argument order, same errors, reported before anything is launched.
//!
//! The GPU sums in trees instead of left to right, so results agree with the reference to
//! rounding, not bit for bit. They are bit-identical from run to run: every reduction, the
//! `dgamma`/`dbeta` column sums included, has a fixed shape that depends only on `rows`, `cols`,
//! whether the buffers allow 16-byte accesses and whether the device has compute capability 9.0
//! (never on its SM count); no float atomics are used. The column sums go through per-block (or
//! per-cluster) partial rows in the device's scratch buffer and a second small kernel that adds
//! them in order.
//!
//! The launch shapes (a warp, a block or a thread-block cluster per row, the backward's two-pass
//! path for the longest rows) and the row lengths that choose between them are stated in the
//! kernels' headers, `kernels/layernorm.cu` and `kernels/layernorm_sm90.cu`; the measurements
//! behind them are in `docs/kernels/layernorm.md`.
//!
//! float4 accesses need `cols % 4 == 0` and 16-byte aligned `x`, `y`, `gamma`, `beta` (forward)
//! or `dy`, `x`, `gamma`, `dx` (backward); anything else takes the scalar kernels. Limits:
//! `rows ≤ i32::MAX`, `cols ≤ 2^30`.
//!
//! Work is queued on [`Gpu::stream`]; nothing here synchronises with the host.

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::ops::rows::{
    by_width_and_p, check_aligned, kernel_dims, p_index, row_shape, shared_limit, vec_width,
    RowShape, WARP_ROWS, WARP_THREADS,
};
use crate::validate;
use cudarc::driver::{DevicePtr, DevicePtrMut};

mod backward;
mod sm90;
pub(crate) mod tuning;
pub use backward::backward;
use tuning::FwdForce;

const FWD_WARP: [[&str; 4]; 2] = by_width_and_p!("layernorm_fwd_warp");
const FWD_BLOCK: [&str; 2] = ["layernorm_fwd_block_v4", "layernorm_fwd_block_v1"];

/// Row of the kernel-name tables for an access width.
fn vec_index(vec: usize) -> usize {
    usize::from(vec != 4)
}

/// Normalises each row of `x` (`[rows, cols]`, row-major) and applies `gamma`/`beta`; saves the
/// row `mean` and `rstd = 1/sqrt(var + eps)` for [`backward`]. The GPU twin of
/// [`crate::cpu::layernorm::forward`]: same arguments (after `gpu`), same checks and errors, all
/// before any launch.
#[allow(clippy::too_many_arguments)] // mirrors the CPU reference's argument list one for one
pub fn forward(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    rows: usize,
    cols: usize,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    eps: f32,
    y: &mut impl DevicePtrMut<f32>,
    mean: &mut impl DevicePtrMut<f32>,
    rstd: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    forward_impl(gpu, x, rows, cols, gamma, beta, eps, y, mean, rstd, None)
}

#[allow(clippy::too_many_arguments)]
fn forward_impl<X, G, B, Y, M, R>(
    gpu: &Gpu,
    x: &X,
    rows: usize,
    cols: usize,
    gamma: &G,
    beta: &B,
    eps: f32,
    y: &mut Y,
    mean: &mut M,
    rstd: &mut R,
    force: Option<FwdForce>,
) -> Result<()>
where
    X: DevicePtr<f32>,
    G: DevicePtr<f32>,
    B: DevicePtr<f32>,
    Y: DevicePtrMut<f32>,
    M: DevicePtrMut<f32>,
    R: DevicePtrMut<f32>,
{
    const OP: &str = "ops::layernorm::forward";
    let lens = [
        x.len(),
        y.len(),
        gamma.len(),
        beta.len(),
        mean.len(),
        rstd.len(),
    ];
    validate::layernorm::forward(OP, rows, cols, f64::from(eps), lens)?;
    let (ri, ci) = kernel_dims(OP, rows, cols)?;
    if let Some(FwdForce::Cluster { c, p }) = force {
        let fits =
            sm90::fwd_shape(cols / 4, c, p).filter(|_| cols % 4 == 0 && sm90::grid_fits(rows, c));
        if fits.is_none() {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!("{force:?} does not fit {rows} rows of {cols} columns"),
            });
        }
        sm90::require(OP, gpu)?;
    }
    if rows == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (xp, _gx) = x.device_ptr(stream);
    let (gp, _gg) = gamma.device_ptr(stream);
    let (bp, _gb) = beta.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    let (mp, _gm) = mean.device_ptr_mut(stream);
    let (rp, _gr) = rstd.device_ptr_mut(stream);
    let named = [("x", xp), ("gamma", gp), ("beta", bp), ("y", yp)];
    check_aligned(OP, &named.map(|(n, a)| (n, a, 4)))?;
    check_aligned(OP, &[("mean", mp, 4), ("rstd", rp, 4)])?;
    let vec = vec_width(cols, &named.map(|(_, a)| (a, 4)));
    let shape = match force {
        None if sm90::available(gpu) => sm90::fwd_plan(rows, cols, vec),
        None | Some(FwdForce::Portable) => None,
        Some(FwdForce::Cluster { c, p }) => {
            if vec != 4 {
                return Err(Error::InvalidArgument {
                    op: OP,
                    detail: format!("{force:?} needs 16-byte aligned x, gamma, beta and y"),
                });
            }
            sm90::fwd_shape(cols / 4, c, p)
        }
    };
    if let Some(shape) = shape {
        let ptrs = [xp, gp, bp, yp, mp, rp];
        return sm90::launch_fwd(gpu, shape, rows, ci, eps, ptrs);
    }
    let mut args = KernelArgs::new();
    args.push(xp).push(gp).push(bp).push(yp).push(mp).push(rp);
    let (kernel, cfg) = match row_shape(cols / vec, vec, 1, shared_limit(gpu)?) {
        RowShape::Warp { p } => {
            args.push(ri).push(ci).push(eps);
            let blocks = rows.div_ceil(WARP_ROWS) as u32;
            (
                FWD_WARP[vec_index(vec)][p_index(p)],
                LaunchConfig::linear(blocks, WARP_THREADS),
            )
        }
        RowShape::Block { threads, cached } => {
            args.push(ci).push(eps).push(cached as i32);
            let cfg = LaunchConfig {
                shared_bytes: (cached * vec * 4) as u32,
                ..LaunchConfig::linear(ri as u32, threads)
            };
            (FWD_BLOCK[vec_index(vec)], cfg)
        }
    };
    // SAFETY: layernorm_fwd_warp_v*(x, gamma, beta, y, mean, rstd, int rows, int cols, float eps)
    // and layernorm_fwd_block_v*(x, gamma, beta, y, mean, rstd, int cols, float eps, int cached)
    // match the arguments pushed for each shape. x and y hold rows·cols f32, gamma and beta cols,
    // mean and rstd rows (checked above); the warp kernel skips rows ≥ rows, the block grid is
    // exactly rows; float4 accesses only when cols % 4 == 0 and the four row-major pointers are
    // 16-byte aligned; `cached` packs fit the dynamic shared memory requested. The guards outlive
    // the launch.
    unsafe { gpu.launch(&kernels::LAYERNORM, kernel, cfg, &args) }
}

#[cfg(test)]
mod tests {
    use super::backward::*;
    use super::*;
    use crate::ops::rows::{ptx_maxntid, PACKS_PER_LANE};

    #[test]
    fn every_kernel_name_exists_with_the_host_launch_bound() {
        let ptx = kernels::LAYERNORM.ptx;
        for (v, vec) in [(0, 4), (1, 1)] {
            for (i, p) in PACKS_PER_LANE.into_iter().enumerate() {
                assert_eq!(ptx_maxntid(ptx, FWD_WARP[v][i]), Some(WARP_THREADS));
                for (table, pf) in [(BWD_ROWS, false), (BWD_ROWS_PF, true)] {
                    assert_eq!(
                        ptx_maxntid(ptx, table[v][i]),
                        Some(bwd_bound(vec, p, pf)),
                        "{}",
                        table[v][i]
                    );
                }
            }
            assert_eq!(ptx_maxntid(ptx, FWD_BLOCK[v]), Some(1024));
            assert_eq!(ptx_maxntid(ptx, BWD_STATS[v]), Some(1024));
            assert_eq!(ptx_maxntid(ptx, BWD_COLS[v]), Some(COLS_THREADS));
        }
        assert_eq!(
            ptx_maxntid(ptx, "layernorm_bwd_finish"),
            Some(FINISH_THREADS)
        );
    }
}
