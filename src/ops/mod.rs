//! Safe launch wrappers: each checks shapes and alignment, picks a launch configuration and
//! launches a kernel from `kernels/`. `unsafe` in ampkit lives here, in `cuda`, and in the CPU
//! GEMM's calls into matrixmultiply, nowhere else.
//!
//! Each module here has a CPU twin of the same name in [`crate::cpu`] computing the same function;
//! the tests compare the two with [`crate::check`] on random inputs with inf, NaN, subnormals,
//! values near 65504, odd sizes and unaligned views.
//!
//! | module | dtypes | arithmetic | agreement with [`crate::cpu`] |
//! |---|---|---|---|
//! | [`cast`] | f32 ↔ f16, f32 ↔ bf16, fill | round to nearest even | bit-exact |
//! | [`fp8`] | f32 ↔ E4M3/E5M2, per-tensor scale, amax | one f32 multiply, round to nearest even, saturate | bit-exact |
//! | [`relu`] | f16, f32 | bit tests and copies | bit-exact |
//! | [`unscale`] | f32 in place; f16 → f32 | one f32 multiply by `f32(1/f64(scale))` | bit-exact (a NaN stays a NaN; payload may differ) |
//! | [`scaler`] | f32 scale, i32 tracker | f64 products rounded once | bit-exact |
//! | [`optim`] | f32 masters and moments, f16 copies | f32, no FMA; scalars in f64 | bit-exact (NaN payloads aside) |
//! | [`gemm`] | f16 or bf16 in, the same or f32 out | f32 accumulation (tensor cores) | `1e-5·√k + 1e-5·\|ref\|` per element, rel. L2 ≤ 1e-3 (16-bit out: + half an ulp) |
//! | [`gemm_fp8`] | E4M3/E5M2 in (Hopper), f32/f16/bf16 out | tensor-core FP8 accumulation, `fma(acc, scale, bias)` | `⌈k/32⌉·2⁻¹³·scale·Σ\|A·B\|` per element, rel. L2 ≤ 1e-2 |
//! | [`blas`] | f32 (and the f16/bf16 reference) | cuBLAS, true f32 (no TF32) | to summation order |
//! | [`layernorm`] | f32 | f32 tree sums | 1e-5 of each element's scale |
//! | [`softmax`] | f32 | f32 (reference in f64) | 1e-5 relative |
//! | [`cross_entropy`] | f16/f32 logits into f16/f32 dlogits | f32 (reference in f64) | 1e-5 relative (f16 dlogits: + half an ulp) |
//!
//! # Conventions
//!
//! - **Buffers**: device memory is any cudarc `DevicePtr<T>` / `DevicePtrMut<T>` — a
//!   [`CudaSlice`](cudarc::driver::CudaSlice) ([`crate::cuda::DeviceBuffer`]) or a view of one at
//!   any element offset, whether ampkit or your own code allocated it (in the [`Gpu`]'s context).
//! - **Ordering**: every op queues its kernels on [`Gpu::stream`] and returns without
//!   synchronising; read results with [`Gpu::download`] (which waits) or keep working on the
//!   stream.
//! - **Errors**: argument errors ([`Error::ShapeMismatch`] for lengths, [`Error::InvalidArgument`]
//!   for sizes, alignment and configs) are raised before anything is launched, and leave every
//!   output untouched. [`Error::ModuleLoad`] comes on the first use of a module that the driver
//!   rejects. A fault while a kernel runs surfaces at the next synchronisation as
//!   [`Error::Driver`], or at once as [`Error::Launch`] naming the kernel when
//!   [`Gpu::set_sync_launches`] is on (or `AMPKIT_SYNC_LAUNCHES=1`).
//! - **Determinism**: ampkit's kernels use no float atomics and fixed reduction shapes; the same
//!   inputs give the same bits on every run on one GPU model.
//!
//! [`Gpu`]: crate::cuda::Gpu
//! [`Gpu::stream`]: crate::cuda::Gpu::stream
//! [`Gpu::download`]: crate::cuda::Gpu::download
//! [`Gpu::set_sync_launches`]: crate::cuda::Gpu::set_sync_launches
//! [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
//! [`Error::InvalidArgument`]: crate::Error::InvalidArgument
//! [`Error::ModuleLoad`]: crate::Error::ModuleLoad
//! [`Error::Driver`]: crate::Error::Driver
//! [`Error::Launch`]: crate::Error::Launch

pub mod augment;
pub mod blas;
pub mod cast;
pub mod cross_entropy;
pub mod fp8;
pub mod gemm;
pub mod gemm_fp8;
pub(crate) mod head;
pub mod layernorm;
pub mod optim;
mod plan;
pub mod relu;
mod rows;
pub mod scaler;
pub mod softmax;
pub mod unscale;
