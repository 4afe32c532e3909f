//! Multi-tensor unscale + inf/NaN check on the GPU (`kernels/unscale.cu`); CPU twin:
//! [`crate::cpu::unscale`].
//!
//! One launch covers up to 96 gradient tensors (more take more launches): each element is
//! multiplied by `inv = f32(1 / f64(scale))` (skipped when `inv` is exactly 1), with `scale` read
//! from device memory, and the device flag `found_inf` is set to 1.0 if any input element is inf
//! or NaN. The flag is never cleared here: zero it once per step, before the first call. Nothing
//! synchronises or copies to the host, so a step can be captured in a CUDA graph.
//!
//! Bit-exact with [`crate::cpu::unscale`] (same multiplier, one f32 multiply per element, no
//! flush to zero), except that a NaN input's output is *a* NaN whose payload may differ.
//!
//! Errors, before any launch: [`Error::ShapeMismatch`] when `scale` or `found_inf` is not one
//! element, or (f16 → f32) the source and destination lists or a pair's lengths differ;
//! [`Error::InvalidArgument`] when a tensor is not aligned to its element size or one list
//! needs more than `i32::MAX` chunks of 8192 elements. Empty lists and tensors are accepted.
//!
//! ```no_run
//! # fn main() -> ampkit::Result<()> {
//! let gpu = ampkit::cuda::Gpu::new(0)?;
//! let mut g = gpu.upload(&[1024.0f32, -2048.0])?;
//! let scale = gpu.upload(&[1024.0f32])?;
//! let mut found_inf = gpu.alloc_zeros::<f32>(1)?; // zero once per step
//! ampkit::ops::unscale::unscale_and_check(&gpu, &mut [g.slice_mut(..)], &scale, &mut found_inf)?;
//! assert_eq!(gpu.download(&g)?, [1.0, -2.0]);
//! assert_eq!(gpu.download(&found_inf)?, [0.0]);
//! # Ok(()) }
//! ```

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{expect_len, Error, Result};
use crate::kernels;
use crate::validate;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr};
use half::f16;

/// Tensors per launch: the argument table must fit the 4 KB kernel-parameter limit.
const MAX_TENSORS: usize = 96;
/// Bounds of the elements per block (`chunk` in the kernel): powers of two, multiples of the
/// 1024 elements one 16-byte pass of a block covers.
const MIN_CHUNK: usize = 1024;
const MAX_CHUNK: usize = 8192;
/// Blocks per SM a launch aims for before chunks grow past [`MIN_CHUNK`].
const BLOCKS_PER_SM: usize = 4;
const THREADS: u32 = 256;

/// The kernel's argument table, passed by value (`TensorTable` in `kernels/unscale.cu`).
#[repr(C)]
#[derive(Clone, Copy)]
struct TensorTable {
    src: [u64; MAX_TENSORS],
    dst: [u64; MAX_TENSORS],
    len: [i64; MAX_TENSORS],
    chunk_start: [i32; MAX_TENSORS + 1],
    count: i32,
    splits: [i32; MAX_TENSORS],
    bit: [i32; MAX_TENSORS],
    block_base: i32,
    unused: i32,
}

// SAFETY: plain old data with the kernel's C layout (u64/i64 arrays, then i32s), no padding
// inside and none the kernel reads.
unsafe impl DeviceRepr for TensorTable {}

/// One tensor of a list: source and destination addresses, element count, and the K-split
/// slices the source holds (1: the source is the tensor itself; 0: the source is the flag word
/// of the kernel that wrote and checked the tensor, which is not read).
struct Entry {
    src: u64,
    dst: u64,
    len: usize,
    splits: usize,
}

/// Where the training step's unscale ([`unscale_and_record`]) finds a gradient tensor's values.
pub(crate) enum GradSource<'a> {
    /// In the tensor itself.
    Whole,
    /// In `.1` K-split GEMM slices of the tensor's length, back to back in `.0`.
    Partials(CudaView<'a, f32>, usize),
    /// In the tensor, already checked by the kernel that wrote it: the word is non-zero when that
    /// kernel stored an inf or NaN ([`crate::ops::gemm::gemm_checked`],
    /// [`crate::ops::gemm_fp8::gemm_fp8_checked`]). Only where the
    /// unscale would only read the tensor (scale 1, no norm; the caller's promise): the word is
    /// folded into `found_inf` and the mask and zeroed, and the tensor is not read.
    Checked(CudaViewMut<'a, u32>),
}

/// Unscales f32 gradients in place: `g = g · inv` (unless `inv == 1`), and sets `found_inf`
/// (one f32 on the device) to 1.0 if any element was inf or NaN. `scale` is one f32 on the
/// device. CPU twin: [`crate::cpu::unscale::unscale_and_check`]; errors in the
/// [module doc](self).
pub fn unscale_and_check<D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    grads: &mut [D],
    scale: &impl DevicePtr<f32>,
    found_inf: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    const OP: &str = "ops::unscale::unscale_and_check";
    in_place(gpu, OP, grads, scale, found_inf, 0, None)
}

/// [`unscale_and_check`] that also sets, in `mask` (two u32 words on the device), bit `t` of
/// each tensor `t` of `grads` that held an inf or NaN (bit 63 for tensor 63 and later; read it
/// with [`crate::amp::NonFinite::from_words`]). Bits are only ever set: zero `mask` with
/// `found_inf`. A clean step costs the same as `unscale_and_check`: only a block that finds an
/// inf/NaN touches the mask. CPU twin: [`crate::cpu::unscale::unscale_and_locate`].
///
/// Errors: as [`unscale_and_check`], and [`Error::ShapeMismatch`] unless `mask` holds two words.
pub fn unscale_and_locate<D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    grads: &mut [D],
    scale: &impl DevicePtr<f32>,
    found_inf: &mut impl DevicePtrMut<f32>,
    mask: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    unscale_locate_norm(gpu, grads, scale, found_inf, mask, None)
}

/// [`unscale_and_locate`], with `norm` also the pass of `clip_grad_norm_`
/// ([`crate::cpu::clip`]): each block adds the squares of its unscaled values (f64,
/// compensated) into its slot of `norm.partials`, and the list's last block adds the slots in
/// order and writes the clip factor and the norm to `norm.clip` (`[factor, norm]`, f32), where
/// the optimizer reads the factor. Errors: as [`unscale_and_locate`], and
/// [`Error::ShapeMismatch`] when the partials hold fewer than [`norm_slots`] slots or the clip
/// buffer is not two f32.
pub(crate) fn unscale_locate_norm<D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    grads: &mut [D],
    scale: &impl DevicePtr<f32>,
    found_inf: &mut impl DevicePtrMut<f32>,
    mask: &mut impl DevicePtrMut<u32>,
    norm: Option<&mut NormTarget<'_>>,
) -> Result<()> {
    const OP: &str = "ops::unscale::unscale_and_locate";
    let mask_ptr = mask_ptr(OP, gpu, mask)?;
    let norm = norm.map(|n| n.args(OP, gpu)).transpose()?;
    in_place(gpu, OP, grads, scale, found_inf, mask_ptr, norm)
}

/// The in-place f32 unscale of `grads` behind [`unscale_and_check`] and
/// [`unscale_locate_norm`]: `mask` a checked mask address (0: none), `norm` checked norm
/// arguments.
fn in_place<D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    op: &'static str,
    grads: &mut [D],
    scale: &impl DevicePtr<f32>,
    found_inf: &mut impl DevicePtrMut<f32>,
    mask: u64,
    norm: Option<NormArgs>,
) -> Result<()> {
    let stream = gpu.stream();
    let mut guards = Vec::with_capacity(grads.len());
    let mut entries = Vec::with_capacity(grads.len());
    for g in grads.iter_mut() {
        let len = g.len();
        let (ptr, guard) = g.device_ptr_mut(stream);
        guards.push(guard);
        entries.push(Entry {
            src: ptr,
            dst: ptr,
            len,
            splits: 1,
        });
    }
    let mut run = |finish| {
        launch_all(
            gpu,
            op,
            "unscale_f32",
            4,
            &entries,
            scale,
            found_inf,
            mask,
            finish,
        )
    };
    match norm {
        None => run(Finish::None),
        Some(args) => gpu.with_counters(4, |ticket| run(Finish::Norm { ticket, args })),
    }
}

/// Where the `clip_grad_norm_` pass of an unscale writes: one slot of two f64 per block of the
/// list's launches ([`norm_slots`]), and `[factor, norm]` (two f32).
pub(crate) struct NormTarget<'a> {
    pub partials: &'a mut crate::cuda::DeviceBuffer<f64>,
    pub clip: &'a mut crate::cuda::DeviceBuffer<f32>,
    pub max_norm: f32,
}

impl NormTarget<'_> {
    fn args(&mut self, op: &'static str, gpu: &Gpu) -> Result<NormArgs> {
        if self.clip.len() != 2 {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!("the clip buffer must be two f32, got {}", self.clip.len()),
            });
        }
        let stream = gpu.stream();
        let slots = self.partials.len() / 2;
        // Plain addresses, as in mask_ptr.
        let partials = self.partials.device_ptr_mut(stream).0;
        let clip = self.clip.device_ptr_mut(stream).0;
        Ok(NormArgs {
            partials,
            slots,
            clip,
            max_norm: self.max_norm,
        })
    }
}

/// A [`NormTarget`]'s addresses and sizes.
#[derive(Clone, Copy)]
struct NormArgs {
    partials: u64,
    slots: usize,
    clip: u64,
    max_norm: f32,
}

/// The norm partial slots (pairs of f64) an unscale of tensors of lengths `lens` needs on
/// `gpu`: one per block of its launches.
pub(crate) fn norm_slots(gpu: &Gpu, lens: &[usize]) -> usize {
    let chunk = chunk_for(gpu, lens.iter().sum());
    lens.iter().map(|&n| n.div_ceil(chunk)).sum()
}

/// Elements per block for a list of `total` elements: about [`BLOCKS_PER_SM`] blocks per SM.
fn chunk_for(gpu: &Gpu, total: usize) -> usize {
    (total / (BLOCKS_PER_SM * gpu.info().multiprocessors.max(1)))
        .clamp(MIN_CHUNK, MAX_CHUNK)
        .next_power_of_two()
}

/// The address of a two-word non-finite mask. Errors: [`Error::ShapeMismatch`] for another
/// length.
fn mask_ptr(op: &'static str, gpu: &Gpu, mask: &mut impl DevicePtrMut<u32>) -> Result<u64> {
    if mask.len() != 2 {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!(
                "the non-finite mask must be two u32 words on the device, got {} elements",
                mask.len()
            ),
        });
    }
    // Plain addresses: ampkit's contexts run with cudarc's event tracking off (cuda::gpu), so
    // the guard orders nothing and may end here.
    Ok(mask.device_ptr_mut(gpu.stream()).0)
}

/// Widens f16 gradients into f32 master gradients and unscales them in the same pass:
/// `dst = f32(src) · inv` (unless `inv == 1`), setting `found_inf` if any source element was inf
/// or NaN. `src` and `dst` pair up by position and must have equal counts and lengths. CPU
/// twin: [`crate::cpu::unscale::unscale_f16_to_f32`]; errors in the [module doc](self).
pub fn unscale_f16_to_f32<S: DevicePtr<f16>, D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    src: &[S],
    dst: &mut [D],
    scale: &impl DevicePtr<f32>,
    found_inf: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    const OP: &str = "ops::unscale::unscale_f16_to_f32";
    validate::unscale::pairs(OP, src.iter().map(|s| s.len()), dst.iter().map(|d| d.len()))?;
    let stream = gpu.stream();
    let mut guards = Vec::with_capacity(2 * src.len());
    let mut entries = Vec::with_capacity(src.len());
    for (s, d) in src.iter().zip(dst.iter_mut()) {
        let len = s.len();
        let (sp, sg) = s.device_ptr(stream);
        let (dp, dg) = d.device_ptr_mut(stream);
        guards.push(sg);
        guards.push(dg);
        entries.push(Entry {
            src: sp,
            dst: dp,
            len,
            splits: 1,
        });
    }
    launch_all(
        gpu,
        OP,
        "unscale_f16_to_f32",
        2,
        &entries,
        scale,
        found_inf,
        0,
        Finish::None,
    )
}

/// [`unscale_and_check`] on a training step's gradients, with the step's record and scale
/// update (`record_step` in `kernels/scaler.cu`, its arguments from
/// [`crate::ops::scaler::record_args`]) run by the last block of the (last) unscale launch
/// instead of a launch of its own: the record sees the step's final `found_inf` and the scale
/// it ran with. The optimizer that follows reads only `found_inf`. `mask` collects the step's
/// non-finite tensors as in [`unscale_and_locate`]; the record copies it and clears it for the
/// next step. Errors: as [`unscale_and_locate`] and [`crate::ops::scaler::record_args`], before
/// any launch.
///
/// `sources[t]` (missing: [`GradSource::Whole`]) says where tensor `t`'s values are: K-split
/// GEMM slices ([`crate::ops::gemm`]'s deferred reduce) are summed in slice order, exactly as the
/// GEMM's reduce would have, and the sum is unscaled into `grads[t]`; a tensor checked by the
/// kernel that wrote it is not read, its flag word is folded in and zeroed. Errors also
/// [`Error::ShapeMismatch`] when a partial buffer is shorter than `splits` slices of its tensor
/// or a flag is not one word, [`Error::InvalidArgument`] for a checked tensor with `norm` (the
/// norm needs every value).
#[allow(clippy::too_many_arguments)] // the step's buffers, each a kernel argument
pub(crate) fn unscale_and_record<D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    grads: &mut [D],
    sources: &mut [GradSource<'_>],
    scale: &mut crate::cuda::DeviceBuffer<f32>,
    found_inf: &mut crate::cuda::DeviceBuffer<f32>,
    mask: &mut crate::cuda::DeviceBuffer<u32>,
    norm: Option<&mut NormTarget<'_>>,
    target: &mut crate::ops::scaler::RecordTarget<'_>,
    update: Option<(
        &mut crate::cuda::DeviceBuffer<i32>,
        &crate::cpu::scaler::ScalerConfig,
    )>,
) -> Result<()> {
    const OP: &str = "ops::unscale::unscale_and_record";
    for (name, len) in [("scale", scale.len()), ("found_inf", found_inf.len())] {
        if len != 1 {
            return Err(Error::ShapeMismatch {
                op: OP,
                detail: format!("{name} must be one f32 on the device, got {len} elements"),
            });
        }
    }
    if norm.is_some() && sources.iter().any(|s| matches!(s, GradSource::Checked(_))) {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: "a gradient checked where it was written cannot join a clipping norm: pass \
                     it as GradSource::Whole"
                .into(),
        });
    }
    let mask_ptr = mask_ptr(OP, gpu, mask)?;
    let norm = norm.map(|n| n.args(OP, gpu)).transpose()?;
    let tail = crate::ops::scaler::record_args(gpu, OP, target, update)?;
    let stream = gpu.stream();
    let mut guards = Vec::with_capacity(grads.len());
    let mut entries = Vec::with_capacity(grads.len());
    let mut sources = sources.iter_mut();
    for (t, g) in grads.iter_mut().enumerate() {
        let len = g.len();
        let (ptr, guard) = g.device_ptr_mut(stream);
        guards.push(guard);
        let (src, splits) = match sources.next() {
            Some(GradSource::Partials(view, splits)) if *splits > 1 => {
                if view.len() < *splits * len {
                    return Err(Error::ShapeMismatch {
                        op: OP,
                        detail: format!(
                            "tensor {t}'s partials hold {} elements, {splits} slices of {len} \
                             expected",
                            view.len()
                        ),
                    });
                }
                let (p, guard) = view.device_ptr(stream);
                guards.push(guard);
                (p, *splits)
            }
            Some(GradSource::Checked(word)) => {
                expect_len(OP, "a checked tensor's flag", word.len(), 1, "one word")?;
                let (p, guard) = word.device_ptr_mut(stream);
                guards.push(guard);
                (p, 0)
            }
            _ => (ptr, 1),
        };
        entries.push(Entry {
            src,
            dst: ptr,
            len,
            splits,
        });
    }
    if entries.iter().all(|e| e.len == 0 && e.splits != 0) {
        // Nothing to unscale or fold: the record takes its own launch.
        drop(guards);
        let (s, _g1) = scale.device_ptr_mut(stream);
        let (f, _g2) = found_inf.device_ptr(stream);
        let mut args = KernelArgs::new();
        args.push(s).push(f).push(mask_ptr).extend(&tail);
        // SAFETY: kernels/scaler.cu's record_step(float* scale, const float* found_inf,
        // unsigned* mask, then the arguments ops::scaler::record_args pushed and checked)
        // matches; scale and found_inf are single f32s, the mask two words (checked above).
        return unsafe {
            gpu.launch(
                &kernels::SCALER,
                "record_step",
                LaunchConfig::linear(1, 1),
                &args,
            )
        };
    }
    gpu.with_counters(4, |ticket| {
        let finish = Finish::Record {
            ticket,
            tail: &tail,
            norm,
        };
        launch_all(
            gpu,
            OP,
            "unscale_f32",
            4,
            &entries,
            &*scale,
            found_inf,
            mask_ptr,
            finish,
        )
    })
}

/// What the list's last launch also does in its last block.
enum Finish<'a> {
    /// Nothing.
    None,
    /// `clip_grad_norm_`'s factor (`unscale_f32_norm`), with the ticket counter.
    Norm { ticket: u64, args: NormArgs },
    /// The training step's record (and the norm's factor, when given): the ticket counter and
    /// `record_step`'s trailing arguments (`unscale_f32_record`).
    Record {
        ticket: u64,
        tail: &'a KernelArgs,
        norm: Option<NormArgs>,
    },
}

#[allow(clippy::too_many_arguments)] // the launches' shared arguments
fn launch_all<S, F>(
    gpu: &Gpu,
    op: &'static str,
    kernel: &'static str,
    src_bytes: u64,
    entries: &[Entry],
    scale: &S,
    found_inf: &mut F,
    mask: u64,
    finish: Finish<'_>,
) -> Result<()>
where
    S: DevicePtr<f32>,
    F: DevicePtrMut<f32>,
{
    for (name, len) in [("scale", scale.len()), ("found_inf", found_inf.len())] {
        if len != 1 {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!("{name} must be one f32 on the device, got {len} elements"),
            });
        }
    }
    for (t, e) in entries.iter().enumerate() {
        if e.src % src_bytes != 0 || e.dst % 4 != 0 {
            return Err(Error::InvalidArgument {
                op,
                detail: format!("tensor {t} is not aligned to its element size"),
            });
        }
    }
    let stream = gpu.stream();
    let (scale_ptr, _g1) = scale.device_ptr(stream);
    let (flag_ptr, _g2) = found_inf.device_ptr_mut(stream);
    // (position in the caller's list, entry): the position is the tensor's bit in the mask.
    // A checked tensor (splits 0) stays for its flag word, even when empty; it has no chunks.
    let nonempty: Vec<(usize, &Entry)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.len > 0 || e.splits == 0)
        .collect();
    let chunks_of = |e: &Entry, chunk: usize| {
        if e.splits == 0 {
            0
        } else {
            e.len.div_ceil(chunk)
        }
    };
    let batches = nonempty.len().div_ceil(MAX_TENSORS);
    let total: usize = (nonempty.iter())
        .filter(|(_, e)| e.splits != 0)
        .map(|(_, e)| e.len)
        .sum();
    let chunk = chunk_for(gpu, total);
    let blocks: usize = nonempty.iter().map(|(_, e)| chunks_of(e, chunk)).sum();
    let norm = match &finish {
        Finish::Norm { args, .. }
        | Finish::Record {
            norm: Some(args), ..
        } => Some(*args),
        _ => None,
    };
    if let Some(n) = &norm {
        if n.slots < blocks {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!(
                    "the norm partials hold {} slots, the unscale needs {blocks}",
                    n.slots
                ),
            });
        }
    }
    let norm_ptr = norm.map_or(0, |n| n.partials);
    let mut block_base = 0usize;
    for (b, batch) in nonempty.chunks(MAX_TENSORS).enumerate() {
        let mut table = TensorTable {
            src: [0; MAX_TENSORS],
            dst: [0; MAX_TENSORS],
            len: [0; MAX_TENSORS],
            chunk_start: [0; MAX_TENSORS + 1],
            count: batch.len() as i32,
            splits: [1; MAX_TENSORS],
            bit: [0; MAX_TENSORS],
            block_base: block_base as i32,
            unused: 0,
        };
        let mut chunks = 0usize;
        for (i, &(position, e)) in batch.iter().enumerate() {
            table.bit[i] = position.min(crate::amp::NonFinite::LAST_BIT) as i32;
            table.src[i] = e.src;
            table.dst[i] = e.dst;
            table.len[i] = e.len as i64;
            table.splits[i] = i32::try_from(e.splits).map_err(|_| Error::InvalidArgument {
                op,
                detail: format!("{} K-split slices", e.splits),
            })?;
            table.chunk_start[i] = chunks as i32;
            chunks += chunks_of(e, chunk);
        }
        if chunks > i32::MAX as usize {
            return Err(Error::InvalidArgument {
                op,
                detail: format!(
                    "{chunks} chunks of {chunk} elements exceed one launch; split the list"
                ),
            });
        }
        table.chunk_start[batch.len()] = chunks as i32;
        block_base += chunks;
        let mut args = KernelArgs::new();
        args.push(table)
            .push(scale_ptr)
            .push(flag_ptr)
            .push(mask)
            .push(norm_ptr)
            .push(chunk as i64);
        let mut kernel = kernel;
        if b + 1 == batches {
            // The list's last launch: its last block finishes the norm and/or the record.
            let norm_tail = |args: &mut KernelArgs, ticket: u64, n: Option<NormArgs>| {
                let n = n.unwrap_or(NormArgs {
                    partials: 0,
                    slots: 0,
                    clip: 0,
                    max_norm: 0.0,
                });
                args.push(ticket)
                    .push(blocks as i32)
                    .push(n.max_norm)
                    .push(n.clip);
            };
            match &finish {
                Finish::None => {}
                Finish::Norm { ticket, args: n } => {
                    norm_tail(&mut args, *ticket, Some(*n));
                    kernel = "unscale_f32_norm";
                }
                Finish::Record { ticket, tail, norm } => {
                    norm_tail(&mut args, *ticket, *norm);
                    args.extend(tail);
                    kernel = "unscale_f32_record";
                }
            }
        }
        // SAFETY: unscale_{f32,f16_to_f32}(TensorTable table, const float* scale,
        // float* found_inf, unsigned* mask, long long chunk) matches: the table has the kernel's
        // layout with chunk_start counting chunks of `chunk` and bits below 64, each entry's
        // source and destination hold `len` elements of the kernel's types (checked by the
        // callers), the scale and flag are single f32s, the mask null or two words (mask_ptr),
        // and the guards above outlive the launch. unscale_f32_record(TensorTable, float*
        // scale, float* found_inf, unsigned* mask, long long chunk, unsigned* ticket, then
        // record_step's arguments after the mask) takes the same plus the ticket (one u32 of the handle's
        // counters, zero between launches, reset by the kernel) and the tail
        // ops::scaler::record_args checked; its last block writes the scale, which the caller
        // holds mutably.
        unsafe {
            gpu.launch(
                &kernels::UNSCALE,
                kernel,
                // One block at least: block 0 folds the checked tensors' flags.
                LaunchConfig::linear(chunks.max(1) as u32, THREADS),
                &args,
            )?
        };
    }
    Ok(())
}

#[cfg(test)]
#[path = "deferred_tests.rs"]
mod deferred_tests;
