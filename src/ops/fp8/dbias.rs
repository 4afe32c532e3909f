//! [`cast_transpose_dbias`]: an FP8 layer's output-gradient cast with its bias gradient and
//! ReLU backward in the same pass (`fp8_cast_transpose_dbias*` in `kernels/fp8_train.cu`, then
//! the bias gradient's second pass, `fp8_bias_grad_finish`, `kernels/bias_grad_finish.cuh`).
//! CPU twin: [`crate::cpu::fp8::cast_transpose_dbias`], bit for bit.

use super::{CT_BLOCKS_PER_SM, CT_THREADS, CT_TILE};
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
    let (n, ld, nt) = cast_transpose_sizes(OP, rows, cols)?;
    let how = format!("rows·cols = {rows}·{cols}");
    expect_len(OP, "grad", grad.len(), n, &how)?;
    match relu {
        Some(ReluSource::Output(y)) => expect_len(OP, "relu_out", y.len(), n, &how)?,
        Some(ReluSource::Mask(m)) => {
            let words = rows * cols.div_ceil(32); // ≤ rows·cols, which did not overflow
            expect_len(OP, "relu_mask", m.len(), words, "rows·⌈cols/32⌉ words")?;
        }
        None => {}
    }
    if let Some(q) = &q {
        expect_len(OP, "q", q.len(), n, &how)?;
    }
    expect_len(OP, "qt", qt.len(), nt, &format!("cols·ld = {cols}·{ld}"))?;
    expect_len(OP, "scale", scale.len(), 1, "one")?;
    expect_len(OP, "amax", amax.len(), 1, "one")?;
    expect_len(OP, "dbias", dbias.len(), cols, "cols")?;
    let ci = i32::try_from(cols).map_err(|_| Error::InvalidArgument {
        op: OP,
        detail: format!("cols = {cols} exceeds i32::MAX (the bias gradient's second pass)"),
    })?;
    if cols == 0 {
        return Ok(());
    }
    let row_tiles = rows.div_ceil(CT_TILE);
    let splits = i32::try_from(row_tiles).map_err(|_| Error::InvalidArgument {
        op: OP,
        detail: format!("rows = {rows} makes more than i32::MAX tiles of 64 rows"),
    })?;
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
    let (db, _gdb) = dbias.device_ptr_mut(stream);
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
    let tiles = row_tiles * cols.div_ceil(CT_TILE);
    let blocks = tiles.min(gpu.info().multiprocessors.max(1) * per_sm);
    gpu.with_scratch(row_tiles.max(1) * cols * 4, |partial| {
        if n > 0 {
            let mut args = KernelArgs::new();
            args.push(g).push(y).push(q_ptr).push(qt_ptr);
            args.push(rows)
                .push(cols)
                .push(ld)
                .push(sc)
                .push(am)
                .push(partial);
            // SAFETY: fp8_cast_transpose_dbias*_bf16_*(const uint16_t* src, const uint16_t*
            // relu_out (the dmask kernels: const unsigned* relu_mask), uint8_t* q, uint8_t* qt,
            // size_t rows, size_t cols, size_t ld, const float* scale, unsigned int* amax,
            // float* partial) matches (bf16 is its u16 bits); grad, relu_out (read only by the
            // drelu kernels, which get it) and q (or null, skipped) hold rows·cols elements, the
            // mask (read only by the dmask kernels) rows·⌈cols/32⌉ words, of which they read
            // word [r][c / 32] for r < rows, c < cols, qt cols·ld, scale and amax one (checked above);
            // the scratch holds row_tiles·cols f32, of which the kernel writes
            // partial[r / 64][c] for r < rows, c < cols. The v4 kernels' accesses are aligned
            // (`vector`). The guards outlive the launch.
            unsafe {
                gpu.launch(
                    &kernels::FP8_TRAIN,
                    kernel,
                    LaunchConfig::linear(blocks as u32, CT_THREADS),
                    &args,
                )?
            };
        }
        // SAFETY: the scratch holds row_tiles·cols f32, written above for every tile (none when
        // rows = 0, and then splits = 0 and none is read); db holds cols f32 (checked above).
        unsafe {
            let finish = (&kernels::FP8_TRAIN, "fp8_bias_grad_finish");
            crate::ops::gemm::bias_grad_finish_with(gpu, finish, partial, splits, ci, db)
        }
    })
}
