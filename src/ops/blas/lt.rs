//! cuBLASLt's FP8 GEMM on ampkit's buffers: the baseline that `ampkit bench` times
//! [`crate::ops::gemm_fp8`] against, with the same operands, formats, scales and output type.
//!
//! The call is the row-major `D[m, n] = scale·A[m, k]·B[n, k]ᵀ` as the column-major
//! `Dᵀ = op(B)·A` that cuBLASLt computes: its "A" is our B read transposed and its "B" our A —
//! the "TN" layout cuBLASLt requires for FP8. Compute type `CUBLAS_COMPUTE_32F`, scale type f32,
//! `alpha = 1`, `beta = 0`, the inverse scales through `CUBLASLT_MATMUL_DESC_{A,B}_SCALE_POINTER`
//! (device memory), and `CUBLASLT_MATMUL_DESC_FAST_ACCUM = 1`: the tensor core's own accumulation,
//! as [`crate::ops::gemm_fp8`] does (without it cuBLASLt adds partial sums in f32 separately, a
//! different numerical contract). The algorithm is cuBLASLt's first heuristic pick with a 32 MiB
//! workspace (NVIDIA's recommendation for Hopper), looked up once per problem.

use crate::cpu::fp8::Fp8Format;
use crate::cuda::modules::ContextModules;
use crate::cuda::{DeviceBuffer, Gpu};
use crate::error::{expect_len, Error, Result};
use crate::ops::gemm_fp8::{Fp8Operand, Fp8Output};
use crate::shape::{GemmShape, Layout};
use crate::validate;
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::DevicePtrMut;
use std::ffi::c_void;
use std::sync::Arc;

const OP: &str = "ops::blas::BlasLt::gemm_fp8";
const WORKSPACE_BYTES: usize = 32 << 20;

/// The problem a cached plan was made for: m, n, k, the two formats and the output kind.
type Key = (usize, usize, usize, Fp8Format, Fp8Format, i32);

/// Descriptors and the chosen algorithm of one problem; destroyed with it.
struct Plan {
    key: Key,
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by this module, destroyed once, here. Errors cannot be reported from a
        // drop; the descriptors are host objects.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

/// A cuBLASLt handle with its workspace, for [`BlasLt::gemm_fp8`]. Create and use it on one
/// [`Gpu`]; like [`super::Blas`], creating it and each call from a thread that is not itself
/// capturing wait until no CUDA-graph capture is in progress on the context.
pub struct BlasLt {
    handle: sys::cublasLtHandle_t,
    workspace: DeviceBuffer<u8>,
    gate: Arc<ContextModules>,
    plan: Option<Plan>,
}

impl std::fmt::Debug for BlasLt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlasLt").finish_non_exhaustive()
    }
}

impl Drop for BlasLt {
    fn drop(&mut self) {
        self.plan = None;
        // SAFETY: the handle was created in `new` and is destroyed once, here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

fn failed(what: &str, e: lt::CublasError) -> Error {
    Error::InvalidArgument {
        op: OP,
        detail: format!("cuBLASLt {what} failed: {e}"),
    }
}

fn data_type(f: Fp8Format) -> sys::cudaDataType {
    match f {
        Fp8Format::E4M3 => sys::cudaDataType::CUDA_R_8F_E4M3,
        Fp8Format::E5M2 => sys::cudaDataType::CUDA_R_8F_E5M2,
    }
}

impl BlasLt {
    /// A handle on `gpu` (loads the cuBLASLt library on first use) and its 32 MiB workspace.
    /// Errors: [`Error::InvalidArgument`] when cuBLASLt cannot be loaded or the handle created;
    /// [`Error::Driver`] when the workspace cannot be allocated.
    pub fn new(gpu: &Gpu) -> Result<BlasLt> {
        let handle = gpu
            .outside_captures("creating a cuBLASLt handle", lt::create_handle)?
            .map_err(|e| Error::InvalidArgument {
                op: "ops::blas::BlasLt::new",
                detail: format!(
                    "creating a cuBLASLt handle failed ({e}); is libcublasLt installed?"
                ),
            })?;
        Ok(BlasLt {
            handle,
            workspace: gpu.alloc_zeros(WORKSPACE_BYTES)?,
            gate: gpu.context_gate(),
            plan: None,
        })
    }

    /// Descriptors and algorithm for `key`, made now unless the last call's problem was the
    /// same.
    fn plan(&mut self, key: Key) -> Result<&Plan> {
        if self.plan.as_ref().is_some_and(|p| p.key == key) {
            return Ok(self.plan.as_ref().expect("checked"));
        }
        self.plan = None;
        let (m, n, k, fa, fb, kind) = key;
        let out = match kind {
            0 => sys::cudaDataType::CUDA_R_32F,
            1 => sys::cudaDataType::CUDA_R_16F,
            _ => sys::cudaDataType::CUDA_R_16BF,
        };
        let layout = |t, rows: usize, cols: usize| {
            lt::create_matrix_layout(t, rows as u64, cols as u64, rows as i64)
                .map_err(|e| failed("matrix layout", e))
        };
        // cuBLASLt's A: our B as a column-major k×n (read transposed); its B: our A, k×m; D: n×m.
        let layouts = [
            layout(data_type(fb), k, n)?,
            layout(data_type(fa), k, m)?,
            layout(out, n, m)?,
        ];
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| failed("matmul descriptor", e))?;
        let mut plan = Plan {
            key,
            desc,
            layouts,
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        let set = |attr, value: &i32| {
            // SAFETY: `desc` is live; the attribute is a 4-byte integer read during the call.
            unsafe {
                lt::set_matmul_desc_attribute(desc, attr, value as *const i32 as *const c_void, 4)
            }
            .map_err(|e| failed("setting a matmul attribute", e))
        };
        use sys::cublasLtMatmulDescAttributes_t as A;
        set(A::CUBLASLT_MATMUL_DESC_TRANSA, &1)?; // CUBLAS_OP_T
        set(A::CUBLASLT_MATMUL_DESC_TRANSB, &0)?; // CUBLAS_OP_N
        let fast: i8 = 1;
        // SAFETY: as above; FAST_ACCUM is an int8_t.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                A::CUBLASLT_MATMUL_DESC_FAST_ACCUM,
                &fast as *const i8 as *const c_void,
                1,
            )
        }
        .map_err(|e| failed("setting fast accumulation", e))?;
        let pref = lt::create_matmul_pref().map_err(|e| failed("preference", e))?;
        let bytes = WORKSPACE_BYTES as u64;
        // SAFETY: `pref` is live; the attribute is a u64 read during the call; every descriptor
        // is live and describes this problem; `pref` is destroyed once after the query.
        let heuristic = unsafe {
            let r = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &bytes as *const u64 as *const c_void,
                8,
            )
            .and_then(|()| {
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    desc,
                    layouts[0],
                    layouts[1],
                    layouts[2],
                    layouts[2],
                    pref,
                )
            });
            let _ = lt::destroy_matmul_pref(pref);
            r
        }
        .map_err(|e| {
            failed(
                "algorithm heuristic (no FP8 algorithm for this problem?)",
                e,
            )
        })?;
        plan.algo = heuristic.algo;
        Ok(self.plan.insert(plan))
    }

    /// `C[m, n] = a.scale_inv·b.scale_inv · A·Bᵀ` by cuBLASLt, FP8 operands as
    /// [`crate::ops::gemm_fp8::gemm_fp8`] takes them (no bias), output f32, f16 or bf16. Queued
    /// on [`Gpu::stream`].
    ///
    /// Errors: as [`crate::ops::gemm_fp8::gemm_fp8`] for the layout, lengths and `k`;
    /// [`Error::InvalidArgument`] for E5M2×E5M2 (cuBLASLt has no such kernel) or any cuBLASLt
    /// failure (e.g. no FP8 algorithm for the problem).
    pub fn gemm_fp8<C: Fp8Output>(
        &mut self,
        gpu: &Gpu,
        shape: GemmShape,
        a: &Fp8Operand<'_>,
        b: &Fp8Operand<'_>,
        c: &mut impl DevicePtrMut<C>,
    ) -> Result<()> {
        if shape.layout != Layout::Forward {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: "cuBLASLt's FP8 GEMM takes the TN (Layout::Forward) problem only".into(),
            });
        }
        validate::gemm::gemm(OP, shape, [a.data.len(), b.data.len(), c.len()], None)?;
        expect_len(OP, "A's scale_inv", a.scale_inv.len(), 1, "one")?;
        expect_len(OP, "B's scale_inv", b.scale_inv.len(), 1, "one")?;
        let GemmShape { m, n, k, .. } = shape;
        if (a.format, b.format) == (Fp8Format::E5M2, Fp8Format::E5M2) || k % 16 != 0 || k == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "cuBLASLt's FP8 GEMM needs k a positive multiple of 16 (k = {k}) and not both \
                     operands E5M2"
                ),
            });
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (desc, layouts, algo) = {
            let plan = self.plan((m, n, k, a.format, b.format, C::KIND))?;
            (plan.desc, plan.layouts, plan.algo)
        };
        let handle = self.handle;
        let stream = gpu.stream().clone();
        let (pa, _ga) = a.data.device_ptr(&stream);
        let (pb, _gb) = b.data.device_ptr(&stream);
        let (sa, _gsa) = a.scale_inv.device_ptr(&stream);
        let (sb, _gsb) = b.scale_inv.device_ptr(&stream);
        let (pc, _gc) = c.device_ptr_mut(&stream);
        let (pw, _gw) = self.workspace.device_ptr_mut(&stream);
        let (alpha, beta) = (1f32, 0f32);
        let call = || -> std::result::Result<(), lt::CublasError> {
            use sys::cublasLtMatmulDescAttributes_t as A;
            // SAFETY: every descriptor is live and describes this problem; the scale pointers
            // (device addresses, 8 bytes each) are read when set; A, B and C hold what the
            // layouts address (validate::gemm above); the workspace holds WORKSPACE_BYTES; alpha
            // and beta are host f32 as the f32 scale type expects; the stream is the GPU's.
            unsafe {
                // cuBLASLt's A is our B, its B our A.
                lt::set_matmul_desc_attribute(
                    desc,
                    A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                    &sb as *const u64 as *const c_void,
                    8,
                )?;
                lt::set_matmul_desc_attribute(
                    desc,
                    A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                    &sa as *const u64 as *const c_void,
                    8,
                )?;
                lt::matmul(
                    handle,
                    desc,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    pb as *const c_void,
                    layouts[0],
                    pa as *const c_void,
                    layouts[1],
                    pc as *const c_void,
                    layouts[2],
                    pc as *mut c_void,
                    layouts[2],
                    &algo,
                    pw as *mut c_void,
                    WORKSPACE_BYTES,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
        };
        self.gate
            .outside_captures("a cuBLASLt FP8 GEMM", call)?
            .map_err(|e| failed("matmul", e))
    }
}
