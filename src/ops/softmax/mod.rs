//! Softmax over the last dimension on the GPU (`kernels/softmax.cu`, and on compute capability 9.0
//! `kernels/softmax_sm90.cu` for long rows); CPU twin: [`crate::cpu::softmax`], which documents
//! the functions, their non-finite behaviour and the argument checks. Same argument order and
//! errors, reported before anything is launched. The fused softmax-cross-entropy is
//! [`crate::ops::cross_entropy`].
//!
//! Sums and maxima are trees rather than left-to-right folds, so results agree with the
//! reference to rounding; they are bit-identical run to run (fixed reduction shapes, no float
//! atomics). Rows take 4-element accesses when `cols % 4 == 0` and every row-major buffer is
//! aligned to 4 elements. The launch shapes (a warp, a block or a thread-block cluster per row)
//! and the row lengths that choose between them are stated in the kernels' headers,
//! `kernels/softmax.cu` and `kernels/softmax_sm90.cu`; the measurements behind them are in
//! `docs/kernels/softmax.md`.

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::Result;
use crate::kernels;
use crate::validate;
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::rows::{
    check_aligned, kernel_dims, p_index, row_shape, shared_limit, vec_width, RowShape, WARP_ROWS,
    WARP_THREADS,
};

mod sm90;
pub(crate) mod tuning;

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

pub(crate) use tuning::SoftmaxForce;

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

/// Softmax of each row of `x` (`[rows, cols]`, row-major) into `y`. The GPU twin of
/// [`crate::cpu::softmax::forward`]: same arguments (after `gpu`), checks and errors.
pub fn forward(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    rows: usize,
    cols: usize,
    y: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    forward_impl(gpu, x, rows, cols, y, None)
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
    validate::softmax::forward(OP, rows, cols, [x.len(), y.len()])?;
    let (ri, ci) = kernel_dims(OP, rows, cols)?;
    if rows == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (xp, _gx) = x.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    check_aligned(OP, &[("x", xp, 4), ("y", yp, 4)])?;
    let vec = vec_width(cols, &[(xp, 4), (yp, 4)]);
    if let Some(c) = sm90::cluster_shape(OP, gpu, cols, vec, &sm90::FWD_CLUSTER, force)? {
        return sm90::launch_fwd(OP, gpu, rows, c, [xp, yp], ci);
    }
    let mut args = KernelArgs::new();
    args.push(xp).push(yp);
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
pub fn backward(
    gpu: &Gpu,
    y: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    rows: usize,
    cols: usize,
    dx: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    backward_impl(gpu, (y, dy), rows, cols, dx, None)
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
    validate::softmax::backward(OP, rows, cols, [y.len(), dy.len(), dx.len()])?;
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
    if let Some(c) = sm90::cluster_shape(OP, gpu, cols, vec, &sm90::BWD_CLUSTER, force)? {
        return sm90::launch_bwd(OP, gpu, rows, c, [yp, dyp, dxp], ci);
    }
    let mut args = KernelArgs::new();
    args.push(yp).push(dyp).push(dxp);
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
