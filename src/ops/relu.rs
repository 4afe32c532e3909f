//! ReLU forward and backward on the GPU (`kernels/relu.cu`); CPU twins: [`crate::cpu::relu`].
//! (In an MLP the forward is usually the GEMM epilogue's ReLU, [`crate::ops::gemm`]; [`forward`]
//! serves activations the GEMM does not produce, such as LayerNorm outputs.)
//!
//! Forward: `y[i] = x[i]` where `x[i] > 0` or NaN, else `+0.0` (bit-exact with
//! [`crate::cpu::relu::forward`]).
//! `dx[i] = dy[i]` where the forward output `y[i] > 0`, else `+0.0`; bit-exact with the CPU for
//! every input: the kernel tests and copies bit patterns, so `dy`'s NaN payloads, `-0.0`,
//! subnormals and infinities pass through unchanged, and a NaN, `±0` or negative `y` gives
//! `+0.0`. f16, bf16 and f32, views at any offset and of any length; vector accesses of up to 16
//! bytes where the three pointers' alignment allows. Work is queued on [`Gpu::stream`]; nothing
//! synchronises.

use crate::cuda::{Gpu, KernelArgs};
use crate::error::Result;
use crate::kernels;
use crate::ops::plan::{elementwise_launch, vector_plan, Operand};
use crate::validate;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// An element type [`forward`] and [`backward`] run on: f16, bf16 or f32.
pub trait ReluElement: DeviceRepr + sealed::Sealed {
    /// The backward kernels per vector width, widest first (elements per access).
    #[doc(hidden)]
    const KERNELS: &'static [(usize, &'static str)];
    /// The forward kernels, in the same order.
    #[doc(hidden)]
    const FORWARD: &'static [(usize, &'static str)];
}

impl ReluElement for f16 {
    const KERNELS: &'static [(usize, &'static str)] = &[
        (8, "relu_backward_f16_v8"),
        (4, "relu_backward_f16_v4"),
        (2, "relu_backward_f16_v2"),
        (1, "relu_backward_f16_v1"),
    ];
    const FORWARD: &'static [(usize, &'static str)] = &[
        (8, "relu_forward_f16_v8"),
        (4, "relu_forward_f16_v4"),
        (2, "relu_forward_f16_v2"),
        (1, "relu_forward_f16_v1"),
    ];
}

/// bf16: the same bit tests as f16 with bf16's +inf (0x7F80).
impl ReluElement for bf16 {
    const KERNELS: &'static [(usize, &'static str)] = &[
        (8, "relu_backward_bf16_v8"),
        (4, "relu_backward_bf16_v4"),
        (2, "relu_backward_bf16_v2"),
        (1, "relu_backward_bf16_v1"),
    ];
    const FORWARD: &'static [(usize, &'static str)] = &[
        (8, "relu_forward_bf16_v8"),
        (4, "relu_forward_bf16_v4"),
        (2, "relu_forward_bf16_v2"),
        (1, "relu_forward_bf16_v1"),
    ];
}

impl ReluElement for f32 {
    const KERNELS: &'static [(usize, &'static str)] = &[
        (4, "relu_backward_f32_v4"),
        (2, "relu_backward_f32_v2"),
        (1, "relu_backward_f32_v1"),
    ];
    const FORWARD: &'static [(usize, &'static str)] = &[
        (4, "relu_forward_f32_v4"),
        (2, "relu_forward_f32_v2"),
        (1, "relu_forward_f32_v1"),
    ];
}

/// `y[i] = relu(x[i])`: `x[i]` where it is > 0 or NaN, else `+0.0`; bit-exact with
/// [`crate::cpu::relu::forward`].
///
/// Errors, before any launch: [`Error::ShapeMismatch`] unless the lengths agree;
/// [`Error::InvalidArgument`] for a view not aligned to its element size.
///
/// ```no_run
/// # fn main() -> ampkit::Result<()> {
/// let gpu = ampkit::cuda::Gpu::new(0)?;
/// let x = gpu.upload(&[-1.0f32, 0.5, f32::NAN])?;
/// let mut y = gpu.alloc_zeros::<f32>(3)?;
/// ampkit::ops::relu::forward(&gpu, &x, &mut y)?;
/// let y = gpu.download(&y)?;
/// assert_eq!(&y[..2], &[0.0, 0.5]);
/// assert!(y[2].is_nan());
/// # Ok(()) }
/// ```
///
/// [`Error::InvalidArgument`]: crate::Error::InvalidArgument
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn forward<T: ReluElement>(
    gpu: &Gpu,
    x: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    const OP: &str = "ops::relu::forward";
    let n = x.len();
    validate::relu::same_len(OP, &[("x", n), ("y", y.len())])?;
    let stream = gpu.stream();
    let (x_ptr, _g1) = x.device_ptr(stream);
    let (y_ptr, _g2) = y.device_ptr_mut(stream);
    let operands = [x_ptr, y_ptr].map(|addr| Operand {
        addr,
        elem_bytes: std::mem::size_of::<T>(),
    });
    let widths: Vec<usize> = T::FORWARD.iter().map(|&(w, _)| w).collect();
    let plan = vector_plan(OP, &operands, &widths)?;
    if n == 0 {
        return Ok(());
    }
    let kernel = T::FORWARD
        .iter()
        .find(|&&(w, _)| w == plan.width)
        .map_or(T::FORWARD[T::FORWARD.len() - 1].1, |&(_, k)| k);
    let mut args = KernelArgs::new();
    args.push(x_ptr).push(y_ptr).push(n).push(plan.head);
    let cfg = elementwise_launch(gpu, n, plan);
    // SAFETY: relu_forward_{f16,bf16,f32}_v*(const T* x, T* y, size_t n, size_t head) matches
    // (the instance of T's format, T::FORWARD); both
    // pointers hold n elements (checked above), are element-aligned and vector-aligned after
    // `head` (vector_plan), and their guards outlive the launch.
    unsafe { gpu.launch(&kernels::RELU, kernel, cfg, &args) }
}

/// `dx[i] = dy[i]` where the forward output `y[i] > 0`, else `+0.0` (the module doc gives the
/// treatment of special values); bit-exact with [`crate::cpu::relu::backward`].
///
/// Errors, before any launch: [`Error::ShapeMismatch`] naming the operand unless the three
/// lengths agree; [`Error::InvalidArgument`] for a view not aligned to its element size.
///
/// [`Error::InvalidArgument`]: crate::Error::InvalidArgument
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
pub fn backward<T: ReluElement>(
    gpu: &Gpu,
    dy: &impl DevicePtr<T>,
    y: &impl DevicePtr<T>,
    dx: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    const OP: &str = "ops::relu::backward";
    let n = dy.len();
    validate::relu::same_len(OP, &[("dy", n), ("y", y.len()), ("dx", dx.len())])?;
    let stream = gpu.stream();
    let (dy_ptr, _g1) = dy.device_ptr(stream);
    let (y_ptr, _g2) = y.device_ptr(stream);
    let (dx_ptr, _g3) = dx.device_ptr_mut(stream);
    let bytes = std::mem::size_of::<T>();
    let operands = [dy_ptr, y_ptr, dx_ptr].map(|addr| Operand {
        addr,
        elem_bytes: bytes,
    });
    let widths: Vec<usize> = T::KERNELS.iter().map(|&(w, _)| w).collect();
    let plan = vector_plan(OP, &operands, &widths)?;
    if n == 0 {
        return Ok(());
    }
    let kernel = T::KERNELS
        .iter()
        .find(|&&(w, _)| w == plan.width)
        .map_or(T::KERNELS[T::KERNELS.len() - 1].1, |&(_, k)| k);
    let mut args = KernelArgs::new();
    args.push(dy_ptr)
        .push(y_ptr)
        .push(dx_ptr)
        .push(n)
        .push(plan.head);
    let cfg = elementwise_launch(gpu, n, plan);
    // SAFETY: relu_backward_{f16,bf16,f32}_v*(const T* dy, const T* y, T* dx, size_t n,
    // size_t head) matches, with T the kernel's format and storage width (T::KERNELS); the three pointers hold n
    // elements (checked above), are element-aligned and vector-aligned after `head`
    // (vector_plan), and their guards outlive the launch.
    unsafe { gpu.launch(&kernels::RELU, kernel, cfg, &args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_name_exists() {
        let ptx = kernels::RELU.ptx;
        let tables = [
            (f16::KERNELS, f16::FORWARD),
            (bf16::KERNELS, bf16::FORWARD),
            (f32::KERNELS, f32::FORWARD),
        ];
        for (backward, forward) in tables {
            assert_eq!(backward.len(), forward.len());
            for (&(w, b), &(v, f)) in backward.iter().zip(forward) {
                assert_eq!(w, v);
                for name in [b, f] {
                    assert!(name.ends_with(&format!("_v{w}")), "{name}");
                    assert!(ptx.contains(&format!(".entry {name}(")), "{name}");
                }
            }
        }
        assert!(bf16::KERNELS.iter().all(|(_, n)| n.contains("_bf16_")));
    }
}
