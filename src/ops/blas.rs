//! cuBLAS GEMMs on ampkit's buffers, in the three layouts of [`crate::shape::Layout`]: the f32 GEMM
//! of the full-precision paths (`--precision fp32`, layers forced to f32), which ampkit does not
//! hand-write, and the f16 reference that benchmarks compare [`crate::ops::gemm`] with; and
//! [`BlasLt`], cuBLASLt's FP8 GEMM, the reference of [`crate::ops::gemm_fp8`].
//!
//! Row-major `C = A·B` is column-major `Cᵀ = Bᵀ·Aᵀ`, so every call passes B first. Compute type
//! is `CUBLAS_COMPUTE_32F` (true f32: no TF32), default algorithm, on the GPU's stream.
//!
//! Numerics: f32 accumulation in cuBLAS's order, so results match [`crate::cpu::gemm::gemm`] to
//! summation order (about `√k·2⁻²⁴` of the terms' size), not bit for bit. cuBLAS is loaded at
//! run time, like the driver.
//!
//! Errors: [`Error::ShapeMismatch`] for a buffer whose length does not match the shape (before
//! any call), [`Error::InvalidArgument`] for a dimension past `i32::MAX`, an unsupported
//! argument combination, or a cuBLAS failure (named in the message).

use crate::cuda::Gpu;
use crate::error::{Error, Result};
use crate::ops::gemm::{GemmOperand, GemmOutput, TmaElement};
use crate::shape::{GemmShape, Layout};
use crate::validate;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaView, DevicePtr, DevicePtrMut};
use std::ffi::c_void;

mod lt;
pub use lt::BlasLt;

/// A cuBLAS handle bound to a [`Gpu`]'s stream.
///
/// Threads: cuBLAS synchronises the whole context when a handle is destroyed and loads its
/// kernels on first launch, which crashed the driver while other threads captured CUDA graphs on
/// the same context. So creating and dropping a `Blas`, and each GEMM on a thread that is not
/// itself capturing, wait until no capture is in progress on the context (see
/// [`Gpu::capture`]); a GEMM inside your own capture runs at once (warm it up eagerly first).
pub struct Blas {
    /// `None` only while dropping.
    handle: Option<CudaBlas>,
    gate: std::sync::Arc<crate::cuda::modules::ContextModules>,
    /// `ones[i] = 1`, grown on demand: the left factor of the rank-1 update that broadcasts a
    /// bias into C.
    ones: Option<cudarc::driver::CudaSlice<f32>>,
}

impl Drop for Blas {
    fn drop(&mut self) {
        // cublasDestroy synchronises the context: not while another thread captures. If the
        // captures do not end within the wait, the handle is leaked rather than destroyed.
        let mut handle = self.handle.take();
        let destroyed = (self.gate).outside_captures("destroying a cuBLAS handle", || {
            drop(handle.take());
        });
        if destroyed.is_err() {
            std::mem::forget(handle.take());
        }
    }
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas").finish_non_exhaustive()
    }
}

/// cuBLAS's view of one operand: data type and pointer.
struct Operand {
    ptr: u64,
    dtype: cudaDataType,
}

impl Blas {
    /// A handle on `gpu`'s stream (loads the cuBLAS library on first use). Pass the same `gpu`
    /// to the GEMM calls. Errors: [`Error::InvalidArgument`] when cuBLAS cannot be loaded or the
    /// handle cannot be created.
    pub fn new(gpu: &Gpu) -> Result<Blas> {
        let created = gpu.outside_captures("creating a cuBLAS handle", || {
            CudaBlas::new(gpu.stream().clone())
        })?;
        let handle = created.map_err(|e| Error::InvalidArgument {
            op: "ops::blas::Blas::new",
            detail: format!("creating a cuBLAS handle failed ({e}); is libcublas installed with the driver's CUDA version?"),
        })?;
        Ok(Blas {
            handle: Some(handle),
            gate: gpu.context_gate(),
            ones: None,
        })
    }

    fn handle(&self) -> cudarc::cublas::sys::cublasHandle_t {
        *self.handle.as_ref().expect("present until drop").handle()
    }

    /// The raw call: `C = alpha·op(A)·op(B) + beta·C` for a row-major shape.
    #[allow(clippy::too_many_arguments)]
    fn raw(
        &self,
        shape: GemmShape,
        a: Operand,
        b: Operand,
        c: Operand,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        use cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
        let GemmShape { layout, m, n, k } = shape;
        let (op_b, op_a, ldb, lda) = match layout {
            Layout::Forward => (T, N, k, k),
            Layout::Dgrad => (N, N, n, k),
            Layout::Wgrad => (N, T, n, m),
        };
        let dim = |v: usize| {
            i32::try_from(v).map_err(|_| Error::InvalidArgument {
                op: "ops::blas",
                detail: format!("dimension {v} exceeds cuBLAS's i32 range"),
            })
        };
        let (ldb, lda, ldc) = (dim(ldb.max(1))?, dim(lda.max(1))?, dim(n.max(1))?);
        let (n, m, k) = (dim(n)?, dim(m)?, dim(k)?);
        let handle = self.handle();
        // SAFETY: the callers proved with validate::gemm::gemm that A, B and C hold what the shape
        // addresses with these leading dimensions; alpha and beta are host f32, as
        // CUBLAS_COMPUTE_32F expects in host pointer mode.
        let call = || unsafe {
            cudarc::cublas::result::gemm_ex(
                handle,
                op_b,
                op_a,
                n,
                m,
                k,
                &alpha as *const f32 as *const c_void,
                b.ptr as *const c_void,
                b.dtype,
                ldb,
                a.ptr as *const c_void,
                a.dtype,
                lda,
                &beta as *const f32 as *const c_void,
                c.ptr as *mut c_void,
                c.dtype,
                ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        self.gate
            .outside_captures("a cuBLAS GEMM", call)?
            .map_err(|e| Error::InvalidArgument {
                op: "ops::blas",
                detail: format!("cuBLAS gemm_ex failed: {e}"),
            })
    }

    /// 16-bit operands (f16 or bf16), f32 accumulation, output of the operands' type or f32:
    /// `C = A·B + beta·C` (no bias or ReLU), in the layouts of [`crate::shape::Layout`]. The
    /// cuBLAS reference of [`crate::ops::gemm::gemm`]. Errors as in the [module doc](self).
    pub fn gemm_half<C, T, A, B, O>(
        &self,
        gpu: &Gpu,
        shape: GemmShape,
        a: &A,
        b: &B,
        beta: f32,
        c: &mut O,
    ) -> Result<()>
    where
        C: GemmOutput<T>,
        T: GemmOperand,
        A: DevicePtr<T>,
        B: DevicePtr<T>,
        O: DevicePtrMut<C>,
    {
        validate::gemm::gemm(
            "ops::blas::gemm_half",
            shape,
            [a.len(), b.len(), c.len()],
            None,
        )?;
        if shape.m == 0 || shape.n == 0 {
            return Ok(());
        }
        let stream = gpu.stream();
        let (pa, _ga) = a.device_ptr(stream);
        let (pb, _gb) = b.device_ptr(stream);
        let (pc, _gc) = c.device_ptr_mut(stream);
        let operand_type = match T::TMA {
            TmaElement::F16 => cudaDataType::CUDA_R_16F,
            TmaElement::Bf16 => cudaDataType::CUDA_R_16BF,
        };
        let c_type = if C::KIND == 0 {
            operand_type
        } else {
            cudaDataType::CUDA_R_32F
        };
        let half = |ptr| Operand {
            ptr,
            dtype: operand_type,
        };
        self.raw(
            shape,
            half(pa),
            half(pb),
            Operand {
                ptr: pc,
                dtype: c_type,
            },
            1.0,
            beta,
        )
    }

    /// All-f32 GEMM: `C = A·B (+ bias broadcast over rows) + beta·C`, in true f32. A bias is
    /// added by a rank-1 cuBLAS update before the product (`beta` must then be 0). CPU twin:
    /// [`crate::cpu::gemm::gemm`] with f32 operands (up to summation order).
    ///
    /// Errors as in the [module doc](self), plus [`Error::InvalidArgument`] for a bias with
    /// `beta ≠ 0`, and [`Error::Driver`] if the bias broadcast's buffer cannot be allocated.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_f32<A, B, O>(
        &mut self,
        gpu: &Gpu,
        shape: GemmShape,
        a: &A,
        b: &B,
        bias: Option<&CudaView<'_, f32>>,
        beta: f32,
        c: &mut O,
    ) -> Result<()>
    where
        A: DevicePtr<f32>,
        B: DevicePtr<f32>,
        O: DevicePtrMut<f32>,
    {
        const OP: &str = "ops::blas::gemm_f32";
        validate::gemm::gemm(
            OP,
            shape,
            [a.len(), b.len(), c.len()],
            bias.map(|b| b.len()),
        )?;
        if bias.is_some() && beta != 0.0 {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: "a bias and beta ≠ 0 together are not supported; add C separately".into(),
            });
        }
        let GemmShape { m, n, k, .. } = shape;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let f32op = |ptr| Operand {
            ptr,
            dtype: cudaDataType::CUDA_R_32F,
        };
        let stream = gpu.stream().clone();
        let (pc, _gc) = c.device_ptr_mut(&stream);
        let mut beta = beta;
        if let Some(bias) = bias {
            if self.ones.as_ref().is_none_or(|o| o.len() < m) {
                self.ones = Some(gpu.upload(&vec![1f32; m.max(64)])?);
            }
            let ones = self.ones.as_ref().expect("allocated above");
            let (po, _go) = ones.device_ptr(&stream);
            let (pbias, _gb) = bias.device_ptr(&stream);
            // C[m, n] = ones[m, 1] · bias[1, n]: a forward-layout GEMM with K = 1 (B = bias as
            // [n, 1]).
            self.raw(
                GemmShape::new(Layout::Forward, m, n, 1),
                f32op(po),
                f32op(pbias),
                f32op(pc),
                1.0,
                0.0,
            )?;
            beta = 1.0;
        }
        if k == 0 && bias.is_some() {
            return Ok(()); // C = bias already; the product is empty
        }
        let (pa, _ga) = a.device_ptr(&stream);
        let (pb, _gb) = b.device_ptr(&stream);
        self.raw(shape, f32op(pa), f32op(pb), f32op(pc), 1.0, beta)
    }
}
