//! [`gather_cast_transpose`]: the training step's input stage fused with the first FP8 layer's
//! input cast (`fp8_gather_cast_transpose_*` in `kernels/fp8_train.cu`). Its twin is the two
//! stages it replaces, [`crate::ops::augment::gather_batch`] into bf16 and then
//! [`super::cast_transpose`] (E4M3), bit for bit: the same codes, transpose, amax and labels,
//! without writing the bf16 batch and reading it back.

use super::{CT_THREADS, CT_TILE};
use crate::cpu::fp8::cast_transpose_sizes;
use crate::cuda::{DeviceBuffer, Gpu, KernelArgs, LaunchConfig};
use crate::error::{expect_len, Result};
use crate::kernels;
use crate::ops::augment::{check_batch, push_plan, push_source, EpochSource, Pixels};
use cudarc::driver::{DevicePtr, DevicePtrMut};

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
    let inputs = src.inputs;
    check_batch(OP, src, cursor, labels_out.len(), n, [("q", q.len())])?;
    let (_, ld, nt) = cast_transpose_sizes(OP, n, inputs)?;
    expect_len(
        OP,
        "qt",
        qt.len(),
        nt,
        &format!("inputs·ld = {inputs}·{ld}"),
    )?;
    expect_len(OP, "scale", scale.len(), 1, "one")?;
    expect_len(OP, "amax", amax.len(), 1, "one")?;
    if n == 0 || inputs == 0 {
        return Ok(());
    }
    let stream = gpu.stream();
    let (q_ptr, _gq) = q.device_ptr_mut(stream);
    let (qt_ptr, _gqt) = qt.device_ptr_mut(stream);
    let (sc, _gsc) = scale.device_ptr(stream);
    let (am, _gam) = amax.device_ptr_mut(stream);
    let (labels_out_ptr, _gl) = labels_out.device_ptr_mut(stream);
    let vector = inputs % 4 == 0 && q_ptr % 4 == 0 && qt_ptr % 4 == 0;
    let coded = matches!(src.images, Pixels::Coded { .. });
    let kernel = KERNELS[usize::from(coded)][usize::from(!vector)];
    let tiles = n.div_ceil(CT_TILE) * inputs.div_ceil(CT_TILE);
    let blocks = tiles.min(gpu.info().multiprocessors.max(1) * BLOCKS_PER_SM);
    let mut args = KernelArgs::new();
    let _source = push_source(&mut args, src, cursor, stream);
    args.push(labels_out_ptr).push(q_ptr).push(qt_ptr);
    push_plan(&mut args, src, n);
    args.push(ld).push(sc).push(am);
    // SAFETY: fp8_gather_cast_transpose_{f32,coded}_e4m3_{v4,v1}(pixels: const float* images or
    // const unsigned char* codes, const float* palette; const unsigned* labels, const unsigned*
    // order, const int* shifts, const unsigned* cursor, unsigned* labels_out, uint8_t* q, uint8_t*
    // qt, size_t n, size_t plan_len, unsigned inputs, unsigned side, unsigned count, float
    // background, size_t ld, const float* scale, unsigned int* amax) matches. check_batch proved
    // the source's buffers as long as augment_batch_* needs them (the same reads, given cursor[1]
    // + n <= plan_len, which the kernel checks, poisoning otherwise), labels_out n values and q
    // n·inputs; qt holds inputs·ld, scale and amax one (checked above). The kernel writes
    // q[r·inputs + c] for r < n, c < inputs and qt[c·ld + r] for r < ld, 4 bytes at a time only
    // when `vector` proved those accesses aligned. The guards outlive the launch.
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
mod tests {
    use super::{gather_cast_transpose, KERNELS};
    use crate::cpu::fp8::{transpose_ld, Fp8Format};
    use crate::cuda::{test_gpu, Gpu};
    use crate::ops::augment::{gather_batch, EpochSource, Pixels, TestEpoch, PALETTE};
    use half::bf16;

    /// The fused stage against the two it replaces (the bf16 batch, then its E4M3 cast and
    /// transpose) on the same device inputs: every byte of q and qt, the amax and the labels
    /// equal, for palette codes and f32 pixels, shifted and not, an odd batch from an odd
    /// cursor, more than one tile row, widths with and without 4-byte stores, an image index
    /// past the dataset (a NaN row) and a cursor past the plan (poison). Outputs start as
    /// garbage.
    fn matches_unfused(gpu: &Gpu, side: usize, n: usize) {
        let count = 41usize;
        let inputs = side * side;
        // Codes over a palette with −0.0, a NaN payload, an infinity, bf16's rounding ties,
        // subnormals and values the scale saturates.
        let mut palette: Vec<f32> = (0..PALETTE).map(|k| k as f32 / 255.0).collect();
        palette[3] = -0.0;
        palette[4] = f32::from_bits(0x7FC0_0ABC);
        palette[5] = f32::INFINITY;
        palette[6] = 70000.0;
        palette[7] = f32::from_bits(0x3F80_8000); // 1 + 2^-8: a bf16 tie
        palette[8] = 1e-41; // f32 subnormal
        palette[9] = -3.0;
        let plan_len = n + 20;
        let mut epoch = TestEpoch::new(palette, count, inputs, plan_len, 9);
        epoch.order[12] = count as u32 + 5; // past the dataset: that sample's row is NaN
        let device = epoch.upload(gpu);
        let scale = gpu.upload(&[300.0f32]).unwrap();
        let ld = transpose_ld(n).unwrap();
        for cursor_at in [9usize, plan_len - n + 1] {
            let cursor = gpu.upload(&[0u32, cursor_at as u32]).unwrap();
            for coded in [true, false] {
                for s in [side, 0] {
                    let src = device.source(coded, s);
                    let run = |fused: bool| {
                        let mut q = gpu.upload(&vec![0xABu8; n * inputs]).unwrap();
                        let mut qt = gpu.upload(&vec![0xCDu8; inputs * ld]).unwrap();
                        let mut amax = gpu.upload(&[0.25f32]).unwrap();
                        let mut lab = gpu.upload(&vec![7u32; n]).unwrap();
                        if fused {
                            gather_cast_transpose(
                                gpu, &src, &cursor, n, &scale, &mut q, &mut qt, &mut amax, &mut lab,
                            )
                            .unwrap();
                        } else {
                            let mut x = gpu.alloc_zeros::<bf16>(n * inputs).unwrap();
                            gather_batch(gpu, &src, &cursor, &mut x, &mut lab, n).unwrap();
                            crate::ops::fp8::cast_transpose(
                                gpu,
                                Fp8Format::E4M3,
                                &x,
                                n,
                                inputs,
                                &scale,
                                Some(&mut q),
                                &mut qt,
                                &mut amax,
                            )
                            .unwrap();
                        }
                        let amax = gpu.download(&amax).unwrap()[0].to_bits();
                        (
                            gpu.download(&q).unwrap(),
                            gpu.download(&qt).unwrap(),
                            amax,
                            gpu.download(&lab).unwrap(),
                        )
                    };
                    let (fused, unfused) = (run(true), run(false));
                    let what = format!("side {s}, coded {coded}, cursor {cursor_at}, n {n}");
                    assert_eq!(fused.0, unfused.0, "q: {what}");
                    assert_eq!(fused.1, unfused.1, "qt: {what}");
                    assert_eq!(fused.2, unfused.2, "amax bits: {what}");
                    assert_eq!(fused.3, unfused.3, "labels: {what}");
                    if cursor_at + n > plan_len {
                        assert!(fused.3.iter().all(|&l| l == u32::MAX), "poisoned labels");
                    } else {
                        // Something saturated, something NaN: the cases above were reached.
                        assert!(fused.0.contains(&0x7E) && fused.0.contains(&0x7F), "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn fused_input_stage_equals_gather_then_cast_bit_for_bit() {
        let Some(gpu) = test_gpu() else { return };
        matches_unfused(&gpu, 28, 71); // 784 inputs: 4-byte stores; two tile rows
        matches_unfused(&gpu, 7, 23); // 49 inputs: byte stores
    }

    #[test]
    fn every_kernel_name_exists_in_both_modules() {
        for module in [&crate::kernels::FP8_TRAIN, &crate::kernels::FP8_TRAIN_PDL] {
            for name in KERNELS.concat() {
                assert!(module.ptx.contains(&format!(".entry {name}(")), "{name}");
            }
        }
    }

    #[test]
    fn rejects_short_buffers_before_launching() {
        let Some(gpu) = test_gpu() else { return };
        let (codes, palette) = (
            gpu.alloc_zeros::<u8>(16).unwrap(),
            gpu.alloc_zeros(PALETTE).unwrap(),
        );
        let labels = gpu.alloc_zeros::<u32>(4).unwrap();
        let order = gpu.alloc_zeros::<u32>(4).unwrap();
        let shifts = gpu.alloc_zeros::<i32>(8).unwrap();
        let src = EpochSource {
            images: Pixels::Coded {
                codes: &codes,
                palette: &palette,
            },
            labels: &labels,
            order: &order,
            shifts: &shifts,
            plan_len: 4,
            inputs: 4,
            side: 2,
            background: 0.0,
        };
        let cursor = gpu.alloc_zeros::<u32>(2).unwrap();
        let scale = gpu.upload(&[1.0f32]).unwrap();
        let mut amax = gpu.alloc_zeros::<f32>(1).unwrap();
        let mut lab = gpu.alloc_zeros::<u32>(4).unwrap();
        let mut q = gpu.alloc_zeros::<u8>(16).unwrap();
        let mut qt_short = gpu.alloc_zeros::<u8>(4 * 15).unwrap();
        let err = gather_cast_transpose(
            &gpu,
            &src,
            &cursor,
            4,
            &scale,
            &mut q,
            &mut qt_short,
            &mut amax,
            &mut lab,
        )
        .unwrap_err();
        assert!(matches!(err, crate::Error::ShapeMismatch { .. }), "{err}");
        let mut q_short = gpu.alloc_zeros::<u8>(15).unwrap();
        let mut qt = gpu.alloc_zeros::<u8>(4 * 16).unwrap();
        let err = gather_cast_transpose(
            &gpu,
            &src,
            &cursor,
            4,
            &scale,
            &mut q_short,
            &mut qt,
            &mut amax,
            &mut lab,
        )
        .unwrap_err();
        assert!(matches!(err, crate::Error::ShapeMismatch { .. }), "{err}");
    }
}
