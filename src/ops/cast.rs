//! f32 ↔ f16 and f32 ↔ bf16 conversion and fill on the GPU (`kernels/cast.cu`); CPU twin:
//! [`crate::cpu::cast`].
//!
//! Every function takes buffers or views at any element offset and of any length, and is
//! bit-exact with its CPU twin: f32 → f16 and f32 → bf16 round to nearest even, overflow goes to
//! ±inf, subnormals are produced and consumed, NaN keeps its sign and top payload bits with the
//! quiet bit set. Work is queued on [`Gpu::stream`]; nothing here synchronises.
//!
//! Errors, before any launch: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when source
//! and destination lengths differ; [`Error::InvalidArgument`](crate::Error::InvalidArgument) when
//! a view's device address is not aligned to its element size. Empty buffers are accepted and
//! launch nothing.
//!
//! ```no_run
//! # fn main() -> ampkit::Result<()> {
//! let gpu = ampkit::cuda::Gpu::new(0)?;
//! let x = gpu.upload(&[1.0f32, 65520.0, 1e-8])?;
//! let mut h = gpu.alloc_zeros::<ampkit::f16>(3)?;
//! ampkit::ops::cast::f32_to_f16(&gpu, &x, &mut h)?;
//! let mut want = [ampkit::f16::ZERO; 3];
//! ampkit::cpu::cast::f32_to_f16(&[1.0, 65520.0, 1e-8], &mut want)?;
//! assert_eq!(gpu.download(&h)?, want); // bit-exact: [1, inf, 0]
//! # Ok(()) }
//! ```

use crate::cuda::{Gpu, KernelArgs};
use crate::error::{same_len, Result};
use crate::kernels;
use crate::ops::plan::{elementwise_launch, vector_plan, Operand, VectorPlan};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::{bf16, f16};

const CAST_WIDTHS: &[usize] = &[8, 4, 2, 1];
/// Widest access per direction, measured (docs/kernels/cast.md): f32 → f16 reads 2×16 B and
/// writes 16 B per thread at width 8; f16 → f32 is 13% faster at width 4 than at 8, where each
/// thread's 32-byte store leaves every store instruction of a warp half-covering its sectors.
const F32_TO_F16_MAX_WIDTH: usize = 8;
const F16_TO_F32_MAX_WIDTH: usize = 4;
const FILL32_WIDTHS: &[usize] = &[4, 2, 1];
const FILL16_WIDTHS: &[usize] = &[8, 4, 2, 1];

/// `dst[i] = f16(src[i])`, round to nearest even (overflow to ±inf). Bit-exact with
/// [`crate::cpu::cast::f32_to_f16`]; errors as in the [module doc](self).
pub fn f32_to_f16(
    gpu: &Gpu,
    src: &impl DevicePtr<f32>,
    dst: &mut impl DevicePtrMut<f16>,
) -> Result<()> {
    tuning::f32_to_f16_max_width(gpu, src, dst, F32_TO_F16_MAX_WIDTH)
}

/// `dst[i] = f32(src[i])`, exact. Bit-exact with [`crate::cpu::cast::f16_to_f32`]; errors as in
/// the [module doc](self).
pub fn f16_to_f32(
    gpu: &Gpu,
    src: &impl DevicePtr<f16>,
    dst: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    tuning::f16_to_f32_max_width(gpu, src, dst, F16_TO_F32_MAX_WIDTH)
}

/// `dst[i] = bf16(src[i])`, round to nearest even (overflow to ±inf). Bit-exact with
/// [`crate::cpu::cast::f32_to_bf16`]; errors as in the [module doc](self). Vector widths as for
/// f32 → f16 (the same bytes move).
pub fn f32_to_bf16(
    gpu: &Gpu,
    src: &impl DevicePtr<f32>,
    dst: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    const OP: &str = "cast::f32_to_bf16";
    same_len(OP, src.len(), dst.len())?;
    let stream = gpu.stream();
    let (src_ptr, _src_guard) = src.device_ptr(stream);
    let (dst_ptr, _dst_guard) = dst.device_ptr_mut(stream);
    let kernel = |w| match w {
        8 => "cast_f32_to_bf16_v8",
        4 => "cast_f32_to_bf16_v4",
        2 => "cast_f32_to_bf16_v2",
        _ => "cast_f32_to_bf16_v1",
    };
    let n = src.len();
    launch_cast(
        gpu,
        OP,
        (src_ptr, 4),
        (dst_ptr, 2),
        n,
        F32_TO_F16_MAX_WIDTH,
        kernel,
    )
}

/// `dst[i] = f32(src[i])`, exact. Bit-exact with [`crate::cpu::cast::bf16_to_f32`]; errors as in
/// the [module doc](self).
pub fn bf16_to_f32(
    gpu: &Gpu,
    src: &impl DevicePtr<bf16>,
    dst: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    const OP: &str = "cast::bf16_to_f32";
    same_len(OP, src.len(), dst.len())?;
    let stream = gpu.stream();
    let (src_ptr, _src_guard) = src.device_ptr(stream);
    let (dst_ptr, _dst_guard) = dst.device_ptr_mut(stream);
    let kernel = |w| match w {
        8 => "cast_bf16_to_f32_v8",
        4 => "cast_bf16_to_f32_v4",
        2 => "cast_bf16_to_f32_v2",
        _ => "cast_bf16_to_f32_v1",
    };
    let n = src.len();
    launch_cast(
        gpu,
        OP,
        (src_ptr, 2),
        (dst_ptr, 4),
        n,
        F16_TO_F32_MAX_WIDTH,
        kernel,
    )
}

/// Sets every element of `dst` to `value` (bit pattern preserved, NaN payloads included).
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a misaligned view.
pub fn fill_f32<D: DevicePtrMut<f32>>(gpu: &Gpu, dst: &mut D, value: f32) -> Result<()> {
    let n = dst.len();
    let (dst_ptr, _guard) = dst.device_ptr_mut(gpu.stream());
    let kernel = |w| match w {
        4 => "fill_u32_v4",
        2 => "fill_u32_v2",
        _ => "fill_u32_v1",
    };
    let plan = plan_fill("cast::fill_f32", dst_ptr, 4, FILL32_WIDTHS)?;
    launch_fill(gpu, dst_ptr, n, plan, kernel(plan.width), value.to_bits())
}

/// Sets every element of `dst` to `value` (bit pattern preserved, NaN payloads included).
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a misaligned view.
pub fn fill_f16<D: DevicePtrMut<f16>>(gpu: &Gpu, dst: &mut D, value: f16) -> Result<()> {
    let n = dst.len();
    let (dst_ptr, _guard) = dst.device_ptr_mut(gpu.stream());
    let kernel = |w| match w {
        8 => "fill_u16_v8",
        4 => "fill_u16_v4",
        2 => "fill_u16_v2",
        _ => "fill_u16_v1",
    };
    let plan = plan_fill("cast::fill_f16", dst_ptr, 2, FILL16_WIDTHS)?;
    launch_fill(gpu, dst_ptr, n, plan, kernel(plan.width), value.to_bits())
}

/// The cast's tuning variants, for benchmarks and tests; public only as `ampkit::tuning::cast`.
pub(crate) mod tuning {
    use super::*;

    /// [`f32_to_f16`](super::f32_to_f16) with vector accesses of at most `max_width` elements
    /// (8, 4, 2 or 1); for benchmarks comparing kernel variants.
    pub fn f32_to_f16_max_width<S, D>(
        gpu: &Gpu,
        src: &S,
        dst: &mut D,
        max_width: usize,
    ) -> Result<()>
    where
        S: DevicePtr<f32>,
        D: DevicePtrMut<f16>,
    {
        const OP: &str = "cast::f32_to_f16";
        same_len(OP, src.len(), dst.len())?;
        let stream = gpu.stream();
        let (src_ptr, _src_guard) = src.device_ptr(stream);
        let (dst_ptr, _dst_guard) = dst.device_ptr_mut(stream);
        let kernel = |w| match w {
            8 => "cast_f32_to_f16_v8",
            4 => "cast_f32_to_f16_v4",
            2 => "cast_f32_to_f16_v2",
            _ => "cast_f32_to_f16_v1",
        };
        launch_cast(
            gpu,
            OP,
            (src_ptr, 4),
            (dst_ptr, 2),
            src.len(),
            max_width,
            kernel,
        )
    }

    /// [`f16_to_f32`](super::f16_to_f32) with vector accesses of at most `max_width` elements
    /// (8, 4, 2 or 1); for benchmarks comparing kernel variants.
    pub fn f16_to_f32_max_width<S, D>(
        gpu: &Gpu,
        src: &S,
        dst: &mut D,
        max_width: usize,
    ) -> Result<()>
    where
        S: DevicePtr<f16>,
        D: DevicePtrMut<f32>,
    {
        const OP: &str = "cast::f16_to_f32";
        same_len(OP, src.len(), dst.len())?;
        let stream = gpu.stream();
        let (src_ptr, _src_guard) = src.device_ptr(stream);
        let (dst_ptr, _dst_guard) = dst.device_ptr_mut(stream);
        let kernel = |w| match w {
            8 => "cast_f16_to_f32_v8",
            4 => "cast_f16_to_f32_v4",
            2 => "cast_f16_to_f32_v2",
            _ => "cast_f16_to_f32_v1",
        };
        launch_cast(
            gpu,
            OP,
            (src_ptr, 2),
            (dst_ptr, 4),
            src.len(),
            max_width,
            kernel,
        )
    }
}

fn launch_cast(
    gpu: &Gpu,
    op: &'static str,
    (src, src_bytes): (u64, usize),
    (dst, dst_bytes): (u64, usize),
    n: usize,
    max_width: usize,
    kernel: impl Fn(usize) -> &'static str,
) -> Result<()> {
    let operands = [
        Operand {
            addr: src,
            elem_bytes: src_bytes,
        },
        Operand {
            addr: dst,
            elem_bytes: dst_bytes,
        },
    ];
    let widths: Vec<usize> = CAST_WIDTHS
        .iter()
        .copied()
        .filter(|&w| w <= max_width)
        .collect();
    let plan = vector_plan(op, &operands, &widths)?;
    if n == 0 {
        return Ok(());
    }
    let mut args = KernelArgs::new();
    args.push(src).push(dst).push(n).push(plan.head);
    let cfg = elementwise_launch(gpu, n, plan);
    // SAFETY: cast_*(const Src*, Dst*, size_t n, size_t head) matches the four arguments; both
    // pointers cover n elements (same_len), are element-aligned and vector-aligned after `head`
    // (vector_plan), and their guards outlive the launch in the caller.
    unsafe { gpu.launch(&kernels::CAST, kernel(plan.width), cfg, &args) }
}

fn plan_fill(
    op: &'static str,
    dst: u64,
    elem_bytes: usize,
    widths: &[usize],
) -> Result<VectorPlan> {
    vector_plan(
        op,
        &[Operand {
            addr: dst,
            elem_bytes,
        }],
        widths,
    )
}

fn launch_fill<T: cudarc::driver::DeviceRepr + Copy>(
    gpu: &Gpu,
    dst: u64,
    n: usize,
    plan: VectorPlan,
    kernel: &'static str,
    bits: T,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let mut args = KernelArgs::new();
    args.push(dst).push(n).push(plan.head).push(bits);
    let cfg = elementwise_launch(gpu, n, plan);
    // SAFETY: fill_u{32,16}_v*(T* out, size_t n, size_t head, T value) matches the arguments (T is
    // u32 or u16 as the kernel name says); dst covers n elements, aligned per vector_plan.
    unsafe { gpu.launch(&kernels::CAST, kernel, cfg, &args) }
}
