//! [`gather_cast_transpose`]: the training step's input stage fused with the first FP8 layer's
//! input cast (`fp8_gather_cast_transpose_*` in `kernels/fp8_train.cu`). Its twin is the two
//! stages it replaces, [`crate::ops::augment::gather_batch`] into bf16 and then
//! [`super::cast_transpose`] (E4M3), bit for bit: the same codes, transpose, amax and labels,
//! without writing the bf16 batch and reading it back.

use super::{Fp8Scales, CT_THREADS, CT_TILE};
use crate::cpu::fp8::{cast_transpose_sizes, Fp8Format};
use crate::cuda::{DeviceBuffer, Gpu, KernelArgs, LaunchConfig};
use crate::error::{expect_len, Error, Result};
use crate::kernels;
use crate::ops::augment::{check_batch, push_plan, push_source, EpochSource, Pixels};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut};

/// Kernels by pixels (f32, palette codes), then stores (4 bytes, single bytes).
const KERNELS: [[&str; 2]; 2] = [
    [
        "fp8_gather_cast_transpose_f32_e4m3_v4",
        "fp8_gather_cast_transpose_f32_e4m3_v1",
    ],
    [
        "fp8_gather_cast_transpose_coded_e4m3_v4",
        "fp8_gather_cast_transpose_coded_e4m3_v1",
    ],
];

/// Resident blocks per SM the kernels are compiled for (`kBlocksPerSmGather`).
const BLOCKS_PER_SM: usize = 4;

/// Weight casts one input-stage launch takes along (`kMaxWeightJobs`).
pub(crate) const MAX_WEIGHT_CASTS: usize = 4;

/// The kernel's `WeightJobs`: per job the f32 source, `q`, `qt`, rows, cols, `ld`, the scale
/// and the amax (addresses and sizes as 8-byte words), then the number of jobs.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct WeightJobs {
    src: [u64; MAX_WEIGHT_CASTS],
    q: [u64; MAX_WEIGHT_CASTS],
    qt: [u64; MAX_WEIGHT_CASTS],
    rows: [u64; MAX_WEIGHT_CASTS],
    cols: [u64; MAX_WEIGHT_CASTS],
    ld: [u64; MAX_WEIGHT_CASTS],
    scale: [u64; MAX_WEIGHT_CASTS],
    amax: [u64; MAX_WEIGHT_CASTS],
    count: u64,
}

// SAFETY: plain 8-byte words, laid out as the kernel's struct of pointers and size_t's.
unsafe impl cudarc::driver::DeviceRepr for WeightJobs {}

/// One f32 master weight `[rows, cols]` cast to E4M3 along with the input stage
/// ([`gather_cast_transpose_with_weights`]): as [`super::cast_transpose`] at its tensor's scale,
/// into `q` and its transpose `qt`, its `max |w|` folded into the tensor's amax.
pub(crate) struct WeightCast<'a> {
    /// The weight's tensor in the [`Fp8Scales`].
    pub(crate) tensor: usize,
    pub(crate) src: CudaView<'a, f32>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) q: CudaViewMut<'a, u8>,
    pub(crate) qt: CudaViewMut<'a, u8>,
}

/// `n` samples of `src`'s epoch from sample `cursor[1]` (as
/// [`gather_batch`](crate::ops::augment::gather_batch): shifted, labels into `labels_out`, a
/// cursor past `plan_len − n` poisoning the batch), each pixel rounded to bf16, then cast to
/// E4M3 at `scale[0]` into `q` (`[n, inputs]`) and its transpose `qt` (`[inputs, ld]`, `ld` =
/// [`transpose_ld`](crate::cpu::fp8::transpose_ld)`(n)`, zeros past `n`), with the bf16 batch's
/// `max |x|` folded into `amax[0]`.
///
/// Errors, before any launch: [`crate::Error::ShapeMismatch`] when a buffer is shorter than the
/// shapes say (`q` must hold `n·inputs`, `qt` `inputs·ld`, `scale` and `amax` one) or `n`
/// exceeds the plan; [`crate::Error::InvalidArgument`] when a size overflows.
/// (The engine uses [`gather_cast_transpose_with_weights`]; this form with its own scale and
/// amax is what the tests hold the kernel to.)
#[cfg(test)]
#[allow(clippy::too_many_arguments)] // the source, its cursor, the outputs and the recipe's buffers
pub(crate) fn gather_cast_transpose(
    gpu: &Gpu,
    src: &EpochSource<'_>,
    cursor: &DeviceBuffer<u32>,
    n: usize,
    scale: &impl DevicePtr<f32>,
    q: &mut impl DevicePtrMut<u8>,
    qt: &mut impl DevicePtrMut<u8>,
    amax: &mut impl DevicePtrMut<f32>,
    labels_out: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    const OP: &str = "fp8::gather_cast_transpose";
    expect_len(OP, "scale", scale.len(), 1, "one")?;
    expect_len(OP, "amax", amax.len(), 1, "one")?;
    let stream = gpu.stream();
    let (sc, _gsc) = scale.device_ptr(stream);
    let (am, _gam) = amax.device_ptr_mut(stream);
    let stage = Stage {
        src,
        cursor,
        n,
        scale: sc,
        amax: am,
    };
    launch(gpu, OP, &stage, q, qt, labels_out, &WeightJobs::default())
}

/// [`gather_cast_transpose`] at tensor `input`'s scale and amax in `scales`, with `weights`
/// cast in the same launch (each as [`super::cast_transpose`] would, bit for bit): their tiles
/// interleave with the batch's, so the bandwidth-bound casts run beside the latency-bound
/// gather. Weights the launch cannot take (more than [`MAX_WEIGHT_CASTS`], or accesses not
/// 4-element aligned) are cast by [`super::cast_transpose`] first.
///
/// Errors, before any launch: as [`gather_cast_transpose`] and [`super::cast_transpose`];
/// [`crate::Error::InvalidArgument`] when a tensor is not in `scales`.
#[allow(clippy::too_many_arguments)] // the source, its cursor, the outputs and the recipe's state
pub(crate) fn gather_cast_transpose_with_weights(
    gpu: &Gpu,
    src: &EpochSource<'_>,
    cursor: &DeviceBuffer<u32>,
    n: usize,
    scales: &mut Fp8Scales,
    input: usize,
    q: &mut impl DevicePtrMut<u8>,
    qt: &mut impl DevicePtrMut<u8>,
    labels_out: &mut impl DevicePtrMut<u32>,
    weights: &mut [WeightCast<'_>],
) -> Result<()> {
    const OP: &str = "fp8::gather_cast_transpose_with_weights";
    let stream = gpu.stream();
    let mut riding = Vec::with_capacity(MAX_WEIGHT_CASTS);
    for (k, w) in weights.iter_mut().enumerate() {
        let (count, ld, nt) = cast_transpose_sizes(OP, w.rows, w.cols)?;
        let how = format!("rows·cols = {}·{}", w.rows, w.cols);
        expect_len(OP, "weight", w.src.len(), count, &how)?;
        expect_len(OP, "weight q", w.q.len(), count, &how)?;
        let how_t = format!("cols·ld = {}·{ld}", w.cols);
        expect_len(OP, "weight qt", w.qt.len(), nt, &how_t)?;
        let aligned = w.cols % 4 == 0
            && w.src.device_ptr(stream).0 % 16 == 0
            && w.q.device_ptr(stream).0 % 4 == 0
            && w.qt.device_ptr(stream).0 % 4 == 0;
        if count > 0 && aligned && riding.len() < MAX_WEIGHT_CASTS {
            riding.push((k, ld));
            continue;
        }
        let (scale, mut amax) = scales.scale_and_amax(w.tensor)?;
        let q: &mut dyn DevicePtrMut<u8> = &mut w.q;
        super::cast_transpose(
            gpu,
            Fp8Format::E4M3,
            &w.src,
            w.rows,
            w.cols,
            &scale,
            Some(q),
            &mut w.qt,
            &mut amax,
        )?;
    }
    let mut guards = Vec::with_capacity(2 + 3 * riding.len());
    let address = scales.addresses(stream, &mut guards);
    let (scale, amax) = address(OP, input)?;
    let mut jobs = WeightJobs {
        count: riding.len() as u64,
        ..WeightJobs::default()
    };
    let weights = &*weights;
    for (j, &(k, ld)) in riding.iter().enumerate() {
        let w = &weights[k];
        let (s, a) = address(OP, w.tensor)?;
        let (src_ptr, g_src) = w.src.device_ptr(stream);
        let (q_ptr, g_q) = w.q.device_ptr(stream);
        let (qt_ptr, g_qt) = w.qt.device_ptr(stream);
        guards.extend([g_src, g_q, g_qt]);
        jobs.src[j] = src_ptr;
        jobs.q[j] = q_ptr;
        jobs.qt[j] = qt_ptr;
        (jobs.rows[j], jobs.cols[j], jobs.ld[j]) = (w.rows as u64, w.cols as u64, ld as u64);
        (jobs.scale[j], jobs.amax[j]) = (s, a);
    }
    let stage = Stage {
        src,
        cursor,
        n,
        scale,
        amax,
    };
    launch(gpu, OP, &stage, q, qt, labels_out, &jobs)
}

/// The batch side of one input-stage launch: its source and the input's scale and amax
/// addresses.
struct Stage<'a, 's> {
    src: &'a EpochSource<'s>,
    cursor: &'a DeviceBuffer<u32>,
    n: usize,
    scale: u64,
    amax: u64,
}

/// Checks the batch's outputs and launches the stage with `jobs` riding along.
fn launch(
    gpu: &Gpu,
    op: &'static str,
    stage: &Stage<'_, '_>,
    q: &mut impl DevicePtrMut<u8>,
    qt: &mut impl DevicePtrMut<u8>,
    labels_out: &mut impl DevicePtrMut<u32>,
    jobs: &WeightJobs,
) -> Result<()> {
    let (src, cursor, n) = (stage.src, stage.cursor, stage.n);
    let inputs = src.inputs;
    check_batch(op, src, cursor, labels_out.len(), n, [("q", q.len())])?;
    let (_, ld, nt) = cast_transpose_sizes(op, n, inputs)?;
    expect_len(
        op,
        "qt",
        qt.len(),
        nt,
        &format!("inputs·ld = {inputs}·{ld}"),
    )?;
    let batch_tiles = n.div_ceil(CT_TILE) * inputs.div_ceil(CT_TILE);
    let weight_tiles: usize = (0..jobs.count as usize)
        .map(|j| {
            (jobs.rows[j] as usize).div_ceil(CT_TILE) * (jobs.cols[j] as usize).div_ceil(CT_TILE)
        })
        .sum();
    let tiles = batch_tiles + weight_tiles;
    if (tiles as u64).checked_mul(batch_tiles as u64 + 1).is_none() {
        return Err(Error::InvalidArgument {
            op,
            detail: format!("{tiles} tiles overflow the kernel's tile arithmetic: cast fewer weights with the batch"),
        });
    }
    if tiles == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (q_ptr, _gq) = q.device_ptr_mut(stream);
    let (qt_ptr, _gqt) = qt.device_ptr_mut(stream);
    let (labels_out_ptr, _gl) = labels_out.device_ptr_mut(stream);
    let vector = inputs % 4 == 0 && q_ptr % 4 == 0 && qt_ptr % 4 == 0;
    let coded = matches!(src.images, Pixels::Coded { .. });
    let kernel = KERNELS[usize::from(coded)][usize::from(!vector)];
    let blocks = tiles.min(gpu.info().multiprocessors.max(1) * BLOCKS_PER_SM);
    let mut args = KernelArgs::new();
    let _source = push_source(&mut args, src, cursor, stream);
    args.push(labels_out_ptr).push(q_ptr).push(qt_ptr);
    push_plan(&mut args, src, n);
    args.push(ld).push(stage.scale).push(stage.amax).push(*jobs);
    // SAFETY: fp8_gather_cast_transpose_{f32,coded}_e4m3_{v4,v1}(pixels: const float* images or
    // const unsigned char* codes, const float* palette; const unsigned* labels, const unsigned*
    // order, const int* shifts, const unsigned* cursor, unsigned* labels_out, uint8_t* q, uint8_t*
    // qt, size_t n, size_t plan_len, unsigned inputs, unsigned side, unsigned count, float
    // background, size_t ld, const float* scale, unsigned int* amax, WeightJobs weights) matches
    // (WeightJobs: the same 8-byte words). check_batch proved the source's buffers as long as
    // augment_batch_* needs them (the same reads, given cursor[1] + n <= plan_len, which the
    // kernel checks, poisoning otherwise), labels_out n values and q n·inputs; qt holds
    // inputs·ld; scale and amax address one f32 each (the callers checked them). The kernel
    // writes q[r·inputs + c] for r < n, c < inputs and qt[c·ld + r] for r < ld, 4 bytes at a
    // time only when `vector` proved those accesses aligned; each job's buffers were checked as
    // cast_transpose checks them and proved 16/4-byte aligned with cols % 4 == 0 (its v4 path),
    // and the tile arithmetic fits (checked above). The guards outlive the launch.
    unsafe {
        gpu.launch(
            &kernels::FP8_TRAIN,
            kernel,
            LaunchConfig::linear(blocks as u32, CT_THREADS),
            &args,
        )
    }
}

#[cfg(test)]
#[path = "gather_tests.rs"]
mod tests;
