//! [`cast_transpose_dbias`]: an FP8 layer's output-gradient cast with its bias gradient and
//! ReLU backward in the same pass (`fp8_cast_transpose_dbias*` in `kernels/fp8_train.cu`, then
//! the bias gradient's second pass, `fp8_bias_grad_finish_many`, `kernels/bias_grad_finish.cuh`).
//! CPU twin: [`crate::cpu::fp8::cast_transpose_dbias`], bit for bit.

use super::{cast_grid, CT_BLOCKS_PER_SM, CT_TILE};
use crate::cpu::fp8::{cast_transpose_sizes, Fp8Format};
use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{expect_len, Error, Result};
use crate::kernels;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

/// Where [`cast_transpose_dbias`]'s ReLU backward finds which elements the forward's ReLU
/// passed.
#[derive(Clone, Copy)]
pub enum ReluSource<'a> {
    /// The layer's forward output after its ReLU (`[rows, cols]`): an element passed where it
    /// is in (0, +inf].
    Output(&'a dyn DevicePtr<bf16>),
    /// That output's ReLU mask (`rows·⌈cols/32⌉` words, [`crate::cpu::relu::mask`]'s layout), as
    /// [`gemm_fp8_relu_masked`](crate::ops::gemm_fp8::gemm_fp8_relu_masked) writes it: 1 bit
    /// read per element instead of 2 bytes.
    Mask(&'a dyn DevicePtr<u32>),
}

impl std::fmt::Debug for ReluSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReluSource::Output(y) => write!(f, "ReluSource::Output({} elements)", y.len()),
            ReluSource::Mask(m) => write!(f, "ReluSource::Mask({} words)", m.len()),
        }
    }
}

/// Kernels by ReLU backward (without, from the output, from the mask), format (E4M3, E5M2),
/// then access (4-element vectors, single elements).
const KERNELS: [[[&str; 2]; 2]; 3] = [
    [
        [
            "fp8_cast_transpose_dbias_bf16_e4m3_v4",
            "fp8_cast_transpose_dbias_bf16_e4m3_v1",
        ],
        [
            "fp8_cast_transpose_dbias_bf16_e5m2_v4",
            "fp8_cast_transpose_dbias_bf16_e5m2_v1",
        ],
    ],
    [
        [
            "fp8_cast_transpose_dbias_drelu_bf16_e4m3_v4",
            "fp8_cast_transpose_dbias_drelu_bf16_e4m3_v1",
        ],
        [
            "fp8_cast_transpose_dbias_drelu_bf16_e5m2_v4",
            "fp8_cast_transpose_dbias_drelu_bf16_e5m2_v1",
        ],
    ],
    [
        [
            "fp8_cast_transpose_dbias_dmask_bf16_e4m3_v4",
            "fp8_cast_transpose_dbias_dmask_bf16_e4m3_v1",
        ],
        [
            "fp8_cast_transpose_dbias_dmask_bf16_e5m2_v4",
            "fp8_cast_transpose_dbias_dmask_bf16_e5m2_v1",
        ],
    ],
];

/// The output gradient's cast of an FP8 layer's backward in one pass over it, with the bias
/// gradient and, given `relu` (the layer's forward output after its ReLU, or that output's
/// mask), the ReLU backward: Transformer Engine's `cast_transpose_dbias_dgelu`, for ReLU. Saves
/// the two passes of [`relu::backward`](crate::ops::relu::backward) and
/// [`bias_grad`](crate::ops::gemm::bias_grad) over the gradient, and the write of its
/// ReLU-masked copy.
///
/// With `dz = grad` where the ReLU output is in (0, +inf], +0 elsewhere (`dz = grad` without
/// `relu`): `q`, `qt` and the amax are [`cast_transpose`](super::cast_transpose)'s of `dz`
/// (`amax[0] = max(amax[0], max |dz|)`), and `dbias[c] = Σ_r dz[r][c]` in f32, in the fixed
/// order [`crate::cpu::fp8::cast_transpose_dbias`] states (deterministic, bit-exact with it).
/// `dbias` is overwritten, not accumulated. With `cols` a multiple of 4, 8-byte-aligned `grad`
/// and ReLU output, and 4-byte-aligned `q` and `qt`, the kernel moves 4 elements per access.
///
/// Errors: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) unless `grad`, the ReLU output
/// and `q` hold `rows·cols` elements (a mask `rows·⌈cols/32⌉` words), `qt` `cols·ld`
/// ([`transpose_ld`](crate::cpu::fp8::transpose_ld)), `dbias` `cols`, `scale` and `amax` one;
/// [`Error::InvalidArgument`] when a size overflows. With `rows = 0` only `dbias` is written
/// (zeros).
#[allow(clippy::too_many_arguments)] // the gradient, the ReLU output, the shape, the outputs
pub fn cast_transpose_dbias(
    gpu: &Gpu,
    format: Fp8Format,
    grad: &impl DevicePtr<bf16>,
    relu: Option<ReluSource<'_>>,
    (rows, cols): (usize, usize),
    scale: &impl DevicePtr<f32>,
    q: Option<&mut dyn DevicePtrMut<u8>>,
    qt: &mut impl DevicePtrMut<u8>,
    amax: &mut impl DevicePtrMut<f32>,
    dbias: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    const OP: &str = "fp8::cast_transpose_dbias";
    expect_len(OP, "dbias", dbias.len(), cols, "cols")?;
    let (n, _, _) = cast_transpose_sizes(OP, rows, cols)?;
    if cols == 0 {
        return check_cast(OP, format, grad, relu, (rows, cols), scale, &q, qt, amax).map(drop);
    }
    let row_tiles = rows.div_ceil(CT_TILE);
    gpu.with_scratch(row_tiles.max(1) * cols * 4, |partial| {
        let cast = check_cast(OP, format, grad, relu, (rows, cols), scale, &q, qt, amax)?;
        if n > 0 {
            // SAFETY: the scratch holds row_tiles·cols f32.
            unsafe { launch_cast(gpu, cast, grad, relu, q, qt, scale, amax, partial)? };
        }
        let (db, _gdb) = dbias.device_ptr_mut(gpu.stream());
        let mut job = FinishJobs {
            count: 1,
            ..FinishJobs::default()
        };
        (job.partial[0], job.db[0], job.splits[0], job.cols[0]) =
            (partial, db, cast.splits, cast.ci);
        // SAFETY: the scratch holds row_tiles·cols f32, written above for every tile (none when
        // rows = 0, and then splits = 0 and none is read); db holds cols f32 (checked above).
        unsafe { launch_finish(gpu, &job) }
    })
}

/// [`cast_transpose_dbias`] without its second pass: the bias gradient's tile sums go to
/// `partial` (`⌈rows/64⌉·cols` f32: `partial[t][c] = Σ` of `dz[r][c]` over the 64 rows of tile
/// row `t`, in the fixed order of [`crate::cpu::fp8::cast_transpose_dbias`]), which
/// [`bias_grad_finish_many`] adds later, several biases in one launch (the training step finishes
/// every FP8 layer's bias gradient together). Errors: as [`cast_transpose_dbias`], with
/// `partial` in place of `dbias`.
#[allow(clippy::too_many_arguments)] // cast_transpose_dbias's arguments
pub fn cast_transpose_dbias_partial(
    gpu: &Gpu,
    format: Fp8Format,
    grad: &impl DevicePtr<bf16>,
    relu: Option<ReluSource<'_>>,
    (rows, cols): (usize, usize),
    scale: &impl DevicePtr<f32>,
    q: Option<&mut dyn DevicePtrMut<u8>>,
    qt: &mut impl DevicePtrMut<u8>,
    amax: &mut impl DevicePtrMut<f32>,
    partial: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    const OP: &str = "fp8::cast_transpose_dbias_partial";
    let cast = check_cast(OP, format, grad, relu, (rows, cols), scale, &q, qt, amax)?;
    let want = rows.div_ceil(CT_TILE) * cols; // ≤ rows·cols + cols: no overflow past the check
    expect_len(OP, "partial", partial.len(), want, "⌈rows/64⌉·cols")?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (p, _gp) = partial.device_ptr_mut(gpu.stream());
    // SAFETY: partial holds ⌈rows/64⌉·cols f32 (checked above).
    unsafe { launch_cast(gpu, cast, grad, relu, q, qt, scale, amax, p) }
}

/// One bias gradient for [`bias_grad_finish_many`]: the tile sums of a
/// [`cast_transpose_dbias_partial`] over `rows` rows, and where their sum goes (`dbias`, one f32
/// per column, overwritten).
pub struct BiasFinish<'a> {
    /// `⌈rows/64⌉·cols` tile sums.
    pub partial: &'a dyn DevicePtr<f32>,
    /// The rows the cast summed.
    pub rows: usize,
    /// The bias gradient, `cols` f32.
    pub dbias: &'a mut dyn DevicePtrMut<f32>,
}

/// Up to this many biases per launch of [`bias_grad_finish_many`] (the kernel's `FinishJobs`).
const MAX_FINISH_JOBS: usize = 4;

/// The kernel's `FinishJobs`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FinishJobs {
    partial: [u64; MAX_FINISH_JOBS],
    db: [u64; MAX_FINISH_JOBS],
    splits: [i32; MAX_FINISH_JOBS],
    cols: [i32; MAX_FINISH_JOBS],
    count: i32,
}

// SAFETY: pointers and ints laid out as the kernel's struct (8-byte pointers first, then 4-byte
// ints; repr(C) pads the same way).
unsafe impl cudarc::driver::DeviceRepr for FinishJobs {}

/// The second pass of several [`cast_transpose_dbias_partial`]s in one launch per 4 biases:
/// `dbias[c] = Σ_t partial[t][c]` in tile-row order, bit for bit what [`cast_transpose_dbias`]
/// writes. Errors: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) unless each `partial`
/// holds `⌈rows/64⌉·cols` f32 (`cols` = its `dbias`'s length);
/// [`Error::InvalidArgument`] when a size exceeds the kernel's `i32` range. Nothing is launched
/// unless every job is valid.
pub fn bias_grad_finish_many(gpu: &Gpu, jobs: &mut [BiasFinish<'_>]) -> Result<()> {
    const OP: &str = "fp8::bias_grad_finish_many";
    let mut shapes = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let cols = job.dbias.len();
        let tiles = job.rows.div_ceil(CT_TILE);
        let want = tiles
            .checked_mul(cols)
            .ok_or_else(|| Error::InvalidArgument {
                op: OP,
                detail: format!("job {i}: ⌈{}/64⌉·{cols} tile sums overflow", job.rows),
            })?;
        expect_len(
            OP,
            "partial",
            job.partial.len(),
            want,
            &format!("job {i}: ⌈rows/64⌉·cols"),
        )?;
        let (Ok(splits), Ok(ci)) = (i32::try_from(tiles), i32::try_from(cols)) else {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "job {i}: {} rows × {cols} columns exceed i32::MAX",
                    job.rows
                ),
            });
        };
        shapes.push((splits, ci));
    }
    let stream = gpu.stream();
    for (chunk, shapes) in jobs
        .chunks_mut(MAX_FINISH_JOBS)
        .zip(shapes.chunks(MAX_FINISH_JOBS))
    {
        let mut k = FinishJobs::default();
        let mut guards = Vec::with_capacity(2 * chunk.len());
        for (job, &(splits, cols)) in chunk.iter_mut().zip(shapes) {
            if cols == 0 {
                continue;
            }
            let slot = k.count as usize;
            let (p, gp) = job.partial.device_ptr(stream);
            let (d, gd) = job.dbias.device_ptr_mut(stream);
            (k.partial[slot], k.db[slot], k.splits[slot], k.cols[slot]) = (p, d, splits, cols);
            k.count += 1;
            guards.push((gp, gd));
        }
        if k.count == 0 {
            continue;
        }
        // SAFETY: each job's partial holds splits·cols f32 and its db cols f32 (checked
        // above); the guards outlive the launch.
        unsafe { launch_finish(gpu, &k)? };
        drop(guards);
    }
    Ok(())
}

/// Launches `fp8_bias_grad_finish_many` on `jobs`, one block per 32 columns of every job.
///
/// # Safety
/// Each of the first `jobs.count` jobs' `partial` points at `splits·cols` f32 written before
/// this launch on the stream and its `db` at `cols` f32, both live until the launch completes.
unsafe fn launch_finish(gpu: &Gpu, jobs: &FinishJobs) -> Result<()> {
    let blocks: u32 = (0..jobs.count as usize)
        .map(|j| (jobs.cols[j] as u32).div_ceil(32)) // kFinishCols columns per block
        .sum();
    let mut args = KernelArgs::new();
    args.push(*jobs);
    // SAFETY: fp8_bias_grad_finish_many(const FinishJobs jobs) takes the struct by value; the
    // grid has one block per 32 columns of every job; the caller vouches for the buffers.
    unsafe {
        gpu.launch(
            &kernels::FP8_TRAIN,
            "fp8_bias_grad_finish_many",
            LaunchConfig::linear(blocks, 256),
            &args,
        )
    }
}

/// What [`check_cast`] proved about a gradient cast: its shape, the bias finish's `i32`s, and
/// its transpose's pitch.
#[derive(Clone, Copy)]
struct CheckedCast {
    format: Fp8Format,
    rows: usize,
    cols: usize,
    ld: usize,
    splits: i32,
    ci: i32,
}

/// The argument checks of the gradient casts that need no device.
#[allow(clippy::too_many_arguments)] // the cast's arguments
fn check_cast(
    op: &'static str,
    format: Fp8Format,
    grad: &impl DevicePtr<bf16>,
    relu: Option<ReluSource<'_>>,
    (rows, cols): (usize, usize),
    scale: &impl DevicePtr<f32>,
    q: &Option<&mut dyn DevicePtrMut<u8>>,
    qt: &impl DevicePtrMut<u8>,
    amax: &impl DevicePtrMut<f32>,
) -> Result<CheckedCast> {
    let (n, ld, nt) = cast_transpose_sizes(op, rows, cols)?;
    let how = format!("rows·cols = {rows}·{cols}");
    expect_len(op, "grad", grad.len(), n, &how)?;
    match relu {
        Some(ReluSource::Output(y)) => expect_len(op, "relu_out", y.len(), n, &how)?,
        Some(ReluSource::Mask(m)) => {
            let words = rows * cols.div_ceil(32); // ≤ rows·cols, which did not overflow
            expect_len(op, "relu_mask", m.len(), words, "rows·⌈cols/32⌉ words")?;
        }
        None => {}
    }
    if let Some(q) = q {
        expect_len(op, "q", q.len(), n, &how)?;
    }
    expect_len(op, "qt", qt.len(), nt, &format!("cols·ld = {cols}·{ld}"))?;
    expect_len(op, "scale", scale.len(), 1, "one")?;
    expect_len(op, "amax", amax.len(), 1, "one")?;
    let ci = i32::try_from(cols).map_err(|_| Error::InvalidArgument {
        op,
        detail: format!("cols = {cols} exceeds i32::MAX (the bias gradient's second pass)"),
    })?;
    let splits = i32::try_from(rows.div_ceil(CT_TILE)).map_err(|_| Error::InvalidArgument {
        op,
        detail: format!("rows = {rows} makes more than i32::MAX tiles of 64 rows"),
    })?;
    Ok(CheckedCast {
        format,
        rows,
        cols,
        ld,
        splits,
        ci,
    })
}

/// The gradient cast's launch into the tile sums at `partial`.
///
/// # Safety
/// `cast` is [`check_cast`]'s verdict on these buffers, with `rows`, `cols` > 0, and `partial`
/// points to at least `⌈rows/64⌉·cols` f32 of device memory.
#[allow(clippy::too_many_arguments)] // the cast's buffers
unsafe fn launch_cast(
    gpu: &Gpu,
    cast: CheckedCast,
    grad: &impl DevicePtr<bf16>,
    relu: Option<ReluSource<'_>>,
    q: Option<&mut dyn DevicePtrMut<u8>>,
    qt: &mut impl DevicePtrMut<u8>,
    scale: &impl DevicePtr<f32>,
    amax: &mut impl DevicePtrMut<f32>,
    partial: u64,
) -> Result<()> {
    let CheckedCast {
        format,
        rows,
        cols,
        ld,
        ..
    } = cast;
    let stream = gpu.stream();
    let (g, _gg) = grad.device_ptr(stream);
    let (y, _gy, _gm) = match relu {
        Some(ReluSource::Output(y)) => {
            let (p, guard) = y.device_ptr(stream);
            (p, Some(guard), None)
        }
        Some(ReluSource::Mask(m)) => {
            let (p, guard) = m.device_ptr(stream);
            (p, None, Some(guard))
        }
        None => (0, None, None),
    };
    let (q_ptr, _gq) = super::optional_ptr_mut(q, stream);
    let (qt_ptr, _gqt) = qt.device_ptr_mut(stream);
    let (sc, _gsc) = scale.device_ptr(stream);
    let (am, _gam) = amax.device_ptr_mut(stream);
    let vector = cols % 4 == 0 && g % 8 == 0 && y % 8 == 0 && q_ptr % 4 == 0 && qt_ptr % 4 == 0;
    let source = match relu {
        None => 0,
        Some(ReluSource::Output(_)) => 1,
        Some(ReluSource::Mask(_)) => 2,
    };
    let kernel = KERNELS[source][match format {
        Fp8Format::E4M3 => 0,
        Fp8Format::E5M2 => 1,
    }][usize::from(!vector)];
    // The element-wise kernels are compiled for one resident block fewer (see the kernel file).
    let per_sm = if vector {
        CT_BLOCKS_PER_SM
    } else {
        CT_BLOCKS_PER_SM - 1
    };
    let mut args = KernelArgs::new();
    args.push(g).push(y).push(q_ptr).push(qt_ptr);
    args.push(rows)
        .push(cols)
        .push(ld)
        .push(sc)
        .push(am)
        .push(partial);
    // SAFETY: fp8_cast_transpose_dbias*_bf16_*(const uint16_t* src, const uint16_t* relu_out
    // (the dmask kernels: const unsigned* relu_mask), uint8_t* q, uint8_t* qt, size_t rows,
    // size_t cols, size_t ld, const float* scale, unsigned int* amax, float* partial) matches
    // (bf16 is its u16 bits); check_cast proved grad, relu_out (read only by the drelu
    // kernels, which get it) and q (or null, skipped) hold rows·cols elements, the mask (read
    // only by the dmask kernels) rows·⌈cols/32⌉ words, of which they read word [r][c / 32] for
    // r < rows, c < cols, qt cols·ld, scale and amax one; the caller vouches for partial's
    // ⌈rows/64⌉·cols f32, of which the kernel writes partial[r / 64][c] for r < rows, c < cols.
    // The v4 kernels' accesses are aligned (`vector`). The guards outlive the launch.
    unsafe {
        gpu.launch(
            &kernels::FP8_TRAIN,
            kernel,
            cast_grid(gpu, rows, cols, per_sm),
            &args,
        )
    }
}
