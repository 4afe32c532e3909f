//! Training inputs gathered on the GPU from a dataset resident there, with a shift per sample
//! (`kernels/augment.cu`); CPU twin: [`crate::cpu::augment`], bit for bit.
//!
//! Sample `i` is image `order[i]` shifted by `(shifts[2i], shifts[2i + 1])` pixels (columns,
//! rows) on its `side × side` grid, the uncovered border `background`; `side = 0` gathers without
//! shifting. The output is f32, f16 or bf16 (rounded to nearest even, as `half` rounds). One
//! launch; work is queued on
//! [`Gpu::stream`] and nothing synchronises. With the images uploaded once, a training step (or an
//! epoch) needs only its indices and shifts from the host.

use crate::cuda::LaunchConfig;
use crate::cuda::{DeviceBuffer, Gpu, KernelArgs};
use crate::error::{Error, Result};
use crate::kernels;
use crate::ops::plan::{vector_plan, Operand};
use crate::validate;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// An output type [`gather_shifted`] writes: f32, f16 or bf16.
pub trait AugmentOutput: DeviceRepr + sealed::Sealed {
    /// The kernel that writes this type.
    #[doc(hidden)]
    const KERNEL: &'static str;
    /// Its batch-mode twin (the training step's input stage).
    #[doc(hidden)]
    const BATCH_KERNEL: &'static str;
    /// The batch-mode twin over palette-coded images.
    #[doc(hidden)]
    const CODED_BATCH_KERNEL: &'static str;
}

impl AugmentOutput for f32 {
    const KERNEL: &'static str = "augment_gather_f32";
    const BATCH_KERNEL: &'static str = "augment_batch_f32";
    const CODED_BATCH_KERNEL: &'static str = "augment_batch_coded_f32";
}

impl AugmentOutput for f16 {
    const KERNEL: &'static str = "augment_gather_f16";
    const BATCH_KERNEL: &'static str = "augment_batch_f16";
    const CODED_BATCH_KERNEL: &'static str = "augment_batch_coded_f16";
}

impl AugmentOutput for bf16 {
    const KERNEL: &'static str = "augment_gather_bf16";
    const BATCH_KERNEL: &'static str = "augment_batch_bf16";
    const CODED_BATCH_KERNEL: &'static str = "augment_batch_coded_bf16";
}

/// Writes `out[i] =` image `order[i]` of `images` shifted by `(shifts[2i], shifts[2i + 1])`, the
/// GPU twin of [`crate::cpu::augment::gather_shifted`] (same arguments after `gpu`, same checks
/// and errors), bit-exact with it.
///
/// `images` holds whole images of `inputs` f32 values; `order` one image index per sample;
/// `shifts` an i32 (dx, dy) pair per sample; `out` `samples·inputs` values. An index past the last
/// image cannot be checked without a host synchronisation: that sample's row is NaN.
///
/// Errors, before any launch: [`Error::ShapeMismatch`] for a wrong length,
/// [`Error::InvalidArgument`] for `inputs = 0`, a `side` with `side² ≠ inputs` (other than 0) or
/// a view not aligned to its element size.
///
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
/// [`Error::InvalidArgument`]: crate::Error::InvalidArgument
#[allow(clippy::too_many_arguments)] // the CPU twin's arguments, after `gpu`
pub fn gather_shifted<T: AugmentOutput>(
    gpu: &Gpu,
    images: &impl DevicePtr<f32>,
    inputs: usize,
    side: usize,
    order: &impl DevicePtr<u32>,
    shifts: &impl DevicePtr<i32>,
    background: f32,
    out: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    const OP: &str = "ops::augment::gather_shifted";
    let lens = [images.len(), order.len(), shifts.len(), out.len()];
    let (samples, count) = validate::augment::check(OP, inputs, side, lens)?;
    let stream = gpu.stream();
    let (images_ptr, _g1) = images.device_ptr(stream);
    let (order_ptr, _g2) = order.device_ptr(stream);
    let (shifts_ptr, _g3) = shifts.device_ptr(stream);
    let (out_ptr, _g4) = out.device_ptr_mut(stream);
    let operand = |addr, elem_bytes| Operand { addr, elem_bytes };
    let operands = [
        operand(images_ptr, 4),
        operand(order_ptr, 4),
        operand(shifts_ptr, 4),
        operand(out_ptr, std::mem::size_of::<T>()),
    ];
    vector_plan(OP, &operands, &[1])?;
    if samples * inputs == 0 {
        return Ok(());
    }
    let (cfg, pairs) = launch_shape::<T>(gpu, samples, inputs, out_ptr);
    let mut args = KernelArgs::new();
    args.push(images_ptr)
        .push(order_ptr)
        .push(shifts_ptr)
        .push(out_ptr);
    args.push(samples)
        .push(inputs as u32)
        .push(side as u32)
        .push(count as u32)
        .push(background)
        .push(pairs);
    // SAFETY: augment_gather_{f32,f16,bf16}(const float* images, const unsigned* order, const int*
    // shifts, T* out, size_t n, unsigned inputs, unsigned side, unsigned count, float background,
    // unsigned pairs) matches, T being the kernel's output type (T::KERNEL); pairs only when
    // launch_shape found `out` aligned to two elements and `inputs` even. validate::augment::check proved
    // images = count·inputs, shifts = 2·samples, out = samples·inputs values, that inputs, side
    // and count fit u32, and side is 0 or side² = inputs; the kernel reads an image only for an
    // index below count, and only pixels inside its grid. Every pointer is element-aligned
    // (vector_plan) and its guard outlives the launch.
    unsafe { gpu.launch(&kernels::AUGMENT, T::KERNEL, cfg, &args) }
}

/// Threads per block of the gather kernels: a sample's pixels are spread over one block.
const THREADS: u32 = 128;
/// Resident blocks per SM at [`THREADS`] (2048 threads, the SM's limit).
const BLOCKS_PER_SM: usize = 16;

/// One block per sample up to a wave of resident blocks (the kernel grid-strides past it), and
/// whether each thread may store two neighbouring outputs at once: `inputs` even (so every
/// sample's row starts on a pair) and `out` aligned to two elements.
fn launch_shape<T>(gpu: &Gpu, samples: usize, inputs: usize, out_ptr: u64) -> (LaunchConfig, u32) {
    let wave = gpu.info().multiprocessors.max(1) * BLOCKS_PER_SM;
    let blocks = samples.clamp(1, wave) as u32;
    let pairs = inputs % 2 == 0 && out_ptr % (2 * std::mem::size_of::<T>() as u64) == 0;
    (LaunchConfig::linear(blocks, THREADS), u32::from(pairs))
}

/// Entries of a palette ([`Pixels::Coded`]).
pub(crate) const PALETTE: usize = 256;

/// A resident dataset's pixels as the input stage reads them.
pub(crate) enum Pixels<'a> {
    /// `count·inputs` f32 values.
    F32(&'a DeviceBuffer<f32>),
    /// `count·inputs` one-byte codes into `palette` ([`PALETTE`] f32 values): a quarter of the
    /// bytes to read for a dataset of at most 256 distinct values, the same values out.
    Coded {
        codes: &'a DeviceBuffer<u8>,
        palette: &'a DeviceBuffer<f32>,
    },
}

impl Pixels<'_> {
    /// Pixels held (values or codes).
    pub fn len(&self) -> usize {
        match self {
            Pixels::F32(v) => v.len(),
            Pixels::Coded { codes, .. } => codes.len(),
        }
    }
}

/// An epoch's plan over a dataset resident on the GPU: what the training step's input stage
/// ([`gather_batch`]) reads.
pub(crate) struct EpochSource<'a> {
    /// `count·inputs` pixels: the whole training set.
    pub images: Pixels<'a>,
    /// `count` labels.
    pub labels: &'a DeviceBuffer<u32>,
    /// At least `plan_len` image indices, in the epoch's order (each below `count`).
    pub order: &'a DeviceBuffer<u32>,
    /// At least `2·plan_len` shifts when `side ≠ 0` (not read otherwise).
    pub shifts: &'a DeviceBuffer<i32>,
    /// Samples in the epoch.
    pub plan_len: usize,
    /// Values per image.
    pub inputs: usize,
    /// The image side to shift on, or 0.
    pub side: usize,
    /// The uncovered border's value.
    pub background: f32,
}

/// The training step's input stage: `n` samples of `src`'s epoch from sample `cursor[1]` (a
/// device value, advanced by the step's bookkeeping kernel, [`crate::ops::unscale::unscale_and_record`],
/// so a CUDA graph replays it unchanged), gathered and shifted like [`gather_shifted`] into `out`
/// and their labels into `labels_out`. A cursor past `plan_len − n` poisons the batch (NaN
/// inputs, labels `u32::MAX`) instead of reading past the plan.
///
/// Errors, before any launch: [`crate::Error::ShapeMismatch`] when a buffer is shorter than the
/// shapes say or `n` exceeds `plan_len`.
pub(crate) fn gather_batch<T: AugmentOutput>(
    gpu: &Gpu,
    src: &EpochSource<'_>,
    cursor: &DeviceBuffer<u32>,
    out: &mut impl DevicePtrMut<T>,
    labels_out: &mut impl DevicePtrMut<u32>,
    n: usize,
) -> Result<()> {
    const OP: &str = "ops::augment::gather_batch";
    check_batch(OP, src, cursor, labels_out.len(), n, [("out", out.len())])?;
    let inputs = src.inputs;
    if n == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (out_ptr, _g1) = out.device_ptr_mut(stream);
    let (labels_out_ptr, _g2) = labels_out.device_ptr_mut(stream);
    vector_plan(
        OP,
        &[
            Operand {
                addr: out_ptr,
                elem_bytes: std::mem::size_of::<T>(),
            },
            Operand {
                addr: labels_out_ptr,
                elem_bytes: 4,
            },
        ],
        &[1],
    )?;
    let kernel = match &src.images {
        Pixels::F32(_) => T::BATCH_KERNEL,
        Pixels::Coded { .. } => T::CODED_BATCH_KERNEL,
    };
    let (cfg, pairs) = launch_shape::<T>(gpu, n, inputs, out_ptr);
    let mut args = KernelArgs::new();
    let _source = push_source(&mut args, src, cursor, stream);
    args.push(out_ptr).push(labels_out_ptr);
    push_plan(&mut args, src, n);
    args.push(pairs);
    // SAFETY: augment_batch_{f32,f16,bf16}(const float* images, const unsigned* labels, const
    // unsigned* order, const int* shifts, const unsigned* cursor, T* out, unsigned* labels_out,
    // size_t n, size_t plan_len, unsigned inputs, unsigned side, unsigned count, float background,
    // unsigned pairs) matches, T being the kernel's output type, and so does augment_batch_coded_*
    // with (const unsigned char* codes, const float* palette) in place of images; pairs as in
    // gather_shifted. The checks above proved every buffer at least as long as the kernel reads
    // or writes given cursor[1] + n <= plan_len, which the kernel itself checks (poisoning the
    // batch otherwise); images (or codes) are read only below count, a code indexes the
    // palette's 256 entries, shifts only when side is not 0. The buffers are whole allocations
    // (element-aligned) or were checked by vector_plan, and their guards live past the launch.
    unsafe { gpu.launch(&kernels::AUGMENT, kernel, cfg, &args) }
}

/// The checks of a batch stage over `src` (`n` samples from the device cursor, labels into
/// `labels_out_len` values) before any launch, with the stage's own outputs' lengths (each must
/// hold `n·inputs`): shapes the kernels validate, buffers at least as long as the shapes say
/// (the palette [`PALETTE`] values), `n` within the plan.
pub(crate) fn check_batch<const K: usize>(
    op: &'static str,
    src: &EpochSource<'_>,
    cursor: &DeviceBuffer<u32>,
    labels_out_len: usize,
    n: usize,
    outputs: [(&str, usize); K],
) -> Result<()> {
    let count = src.labels.len();
    let shifts_needed = if src.side == 0 { 0 } else { 2 * src.plan_len };
    let (inputs, side) = (src.inputs, src.side);
    validate::augment::check(op, inputs, side, [src.images.len(), n, 2 * n, n * inputs])?;
    let palette = match &src.images {
        Pixels::Coded { palette, .. } => palette.len(),
        Pixels::F32(_) => PALETTE,
    };
    let needs = [
        ("images", src.images.len(), count * inputs),
        ("palette", palette, PALETTE),
        ("order", src.order.len(), src.plan_len),
        ("shifts", src.shifts.len(), shifts_needed),
        ("cursor", cursor.len(), 2),
        ("labels_out", labels_out_len, n),
        ("plan", src.plan_len, n),
    ];
    let outs = outputs.map(|(what, have)| (what, have, n * inputs));
    for (what, have, need) in needs.into_iter().chain(outs) {
        if have < need {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!("{what} holds {have} values where {need} are needed"),
            });
        }
    }
    Ok(())
}

/// Pushes the batch kernels' leading arguments, the source and the cursor: `images` (or `codes,
/// palette`), `labels, order, shifts, cursor`. The guards it returns must outlive the launch.
pub(crate) fn push_source<'a>(
    args: &mut KernelArgs,
    src: &'a EpochSource<'_>,
    cursor: &'a DeviceBuffer<u32>,
    stream: &'a std::sync::Arc<cudarc::driver::CudaStream>,
) -> Vec<cudarc::driver::SyncOnDrop<'a>> {
    let mut guards = Vec::with_capacity(6);
    match &src.images {
        Pixels::F32(v) => {
            let (p, g) = v.device_ptr(stream);
            args.push(p);
            guards.push(g);
        }
        Pixels::Coded { codes, palette } => {
            let (p, g) = codes.device_ptr(stream);
            let (q, h) = palette.device_ptr(stream);
            args.push(p).push(q);
            guards.extend([g, h]);
        }
    }
    let (labels, g1) = src.labels.device_ptr(stream);
    let (order, g2) = src.order.device_ptr(stream);
    let (shifts, g3) = src.shifts.device_ptr(stream);
    let (cursor, g4) = cursor.device_ptr(stream);
    args.push(labels).push(order).push(shifts).push(cursor);
    guards.extend([g1, g2, g3, g4]);
    guards
}

/// Pushes the batch kernels' plan arguments, after their outputs: `n, plan_len, inputs, side,
/// count, background` (`size_t, size_t, unsigned, unsigned, unsigned, float`).
pub(crate) fn push_plan(args: &mut KernelArgs, src: &EpochSource<'_>, n: usize) {
    args.push(n)
        .push(src.plan_len)
        .push(src.inputs as u32)
        .push(src.side as u32)
        .push(src.labels.len() as u32)
        .push(src.background);
}

/// A dataset and an epoch plan for the batch stages' tests (here and `ops::fp8`'s fused stage):
/// `count` images of `inputs` pixels as one-byte codes into a palette and decoded to f32,
/// labels `i % 10`, a plan of `plan_len` samples `(7i + 3) mod count` shifted by
/// `((3i) mod 5) − 2` pixels. Tests may edit the fields before [`TestEpoch::upload`].
#[cfg(test)]
pub(crate) struct TestEpoch {
    pub palette: Vec<f32>,
    pub codes: Vec<u8>,
    pub labels: Vec<u32>,
    pub order: Vec<u32>,
    pub shifts: Vec<i32>,
    pub inputs: usize,
}

#[cfg(test)]
impl TestEpoch {
    /// Codes from a multiplicative hash of the pixel index, shifted right by `hash_shift`.
    pub fn new(
        palette: Vec<f32>,
        count: usize,
        inputs: usize,
        plan_len: usize,
        hash_shift: u32,
    ) -> Self {
        TestEpoch {
            codes: (0..count * inputs)
                .map(|i| ((i * 2654435761usize) >> hash_shift) as u8)
                .collect(),
            palette,
            labels: (0..count as u32).map(|i| i % 10).collect(),
            order: (0..plan_len as u32)
                .map(|i| (i * 7 + 3) % count as u32)
                .collect(),
            shifts: (0..2 * plan_len as i32).map(|i| (i * 3) % 5 - 2).collect(),
            inputs,
        }
    }

    /// The decoded images.
    pub fn images(&self) -> Vec<f32> {
        self.codes
            .iter()
            .map(|&c| self.palette[c as usize])
            .collect()
    }

    pub fn upload(&self, gpu: &Gpu) -> DeviceEpoch {
        DeviceEpoch {
            codes: gpu.upload(&self.codes).unwrap(),
            palette: gpu.upload(&self.palette).unwrap(),
            images: gpu.upload(&self.images()).unwrap(),
            labels: gpu.upload(&self.labels).unwrap(),
            order: gpu.upload(&self.order).unwrap(),
            shifts: gpu.upload(&self.shifts).unwrap(),
            plan_len: self.order.len(),
            inputs: self.inputs,
        }
    }
}

/// A [`TestEpoch`] on the device.
#[cfg(test)]
pub(crate) struct DeviceEpoch {
    codes: DeviceBuffer<u8>,
    palette: DeviceBuffer<f32>,
    images: DeviceBuffer<f32>,
    labels: DeviceBuffer<u32>,
    order: DeviceBuffer<u32>,
    shifts: DeviceBuffer<i32>,
    plan_len: usize,
    inputs: usize,
}

#[cfg(test)]
impl DeviceEpoch {
    /// The epoch as a batch stage reads it: palette codes or f32 pixels, shifted on a
    /// `side`×`side` grid (0: not shifted), background −1.5.
    pub fn source(&self, coded: bool, side: usize) -> EpochSource<'_> {
        EpochSource {
            images: if coded {
                Pixels::Coded {
                    codes: &self.codes,
                    palette: &self.palette,
                }
            } else {
                Pixels::F32(&self.images)
            },
            labels: &self.labels,
            order: &self.order,
            shifts: &self.shifts,
            plan_len: self.plan_len,
            inputs: self.inputs,
            side,
            background: -1.5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{gather_batch, AugmentOutput, TestEpoch, PALETTE};
    use crate::cpu::augment::gather_shifted;
    use crate::cuda::{test_gpu, Gpu};
    use crate::kernels;
    use half::{bf16, f16};

    /// The batch stage over palette-coded images against the CPU reference on the decoded f32
    /// images and against the f32 stage: every output bit and label equal, shifted and not, for
    /// f16, bf16 and f32 outputs, an odd batch from an odd cursor; a cursor past the plan poisons.
    fn coded_matches<
        T: AugmentOutput + crate::cpu::Element + Default + cudarc::driver::ValidAsZeroBits,
    >(
        gpu: &Gpu,
        bits: impl Fn(&T) -> u32,
    ) {
        let (count, side) = (37usize, 28usize);
        let inputs = side * side;
        // Codes 0..=255 over a palette with −0.0, a NaN payload, an infinity and 8-bit steps.
        let mut palette: Vec<f32> = (0..PALETTE).map(|k| k as f32 / 255.0).collect();
        palette[3] = -0.0;
        palette[4] = f32::from_bits(0x7FC0_0ABC);
        palette[5] = f32::INFINITY;
        palette[6] = 70000.0; // past f16's range
        let plan_len = 50usize;
        let epoch = TestEpoch::new(palette, count, inputs, plan_len, 7);
        let (images, labels, order, shifts) =
            (epoch.images(), &epoch.labels, &epoch.order, &epoch.shifts);
        let (first, n) = (9usize, 23usize);
        let device = epoch.upload(gpu);
        for (cursor_at, s) in [(first, side), (first, 0), (plan_len - n + 1, side)] {
            let cursor = gpu.upload(&[0u32, cursor_at as u32]).unwrap();
            let mut got = Vec::new();
            for coded in [true, false] {
                let src = device.source(coded, s);
                let mut out = gpu.alloc_zeros::<T>(n * inputs).unwrap();
                let mut labels_out = gpu.alloc_zeros::<u32>(n).unwrap();
                gather_batch(gpu, &src, &cursor, &mut out, &mut labels_out, n).unwrap();
                let out = gpu.download(&out).unwrap();
                let lab = gpu.download(&labels_out).unwrap();
                got.push((out.iter().map(&bits).collect::<Vec<u32>>(), lab));
            }
            assert_eq!(got[0], got[1], "coded vs f32, cursor {cursor_at}, side {s}");
            if cursor_at + n > plan_len {
                assert!(got[0].1.iter().all(|&l| l == u32::MAX), "poisoned labels");
                continue;
            }
            let mut want = vec![T::default(); n * inputs];
            let range = cursor_at..cursor_at + n;
            let shift_range = 2 * cursor_at..2 * (cursor_at + n);
            gather_shifted(
                &images,
                inputs,
                s,
                &order[range.clone()],
                &shifts[shift_range],
                -1.5,
                &mut want,
            )
            .unwrap();
            let want_bits: Vec<u32> = want.iter().map(&bits).collect();
            assert_eq!(
                got[0].0, want_bits,
                "coded vs CPU, cursor {cursor_at}, side {s}"
            );
            let want_labels: Vec<u32> = order[range].iter().map(|&i| labels[i as usize]).collect();
            assert_eq!(got[0].1, want_labels);
        }
    }

    #[test]
    fn coded_batches_equal_f32_batches_bit_for_bit() {
        let Some(gpu) = test_gpu() else { return };
        coded_matches::<f16>(&gpu, |v| u32::from(v.to_bits()));
        coded_matches::<bf16>(&gpu, |v| u32::from(v.to_bits()));
        coded_matches::<f32>(&gpu, |v| v.to_bits());
    }

    #[test]
    fn every_kernel_name_exists_in_both_modules() {
        fn names<T: AugmentOutput>() -> [&'static str; 3] {
            [T::KERNEL, T::BATCH_KERNEL, T::CODED_BATCH_KERNEL]
        }
        for module in [&kernels::AUGMENT, &kernels::AUGMENT_PDL] {
            for name in [names::<f32>(), names::<f16>(), names::<bf16>()].concat() {
                assert!(module.ptx.contains(&format!(".entry {name}(")), "{name}");
            }
        }
    }
}
