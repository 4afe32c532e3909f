//! The Hopper path of [`crate::ops::gemm`] (`kernels/gemm_sm90.cu`, `wgmma` + TMA, sm_90a): the
//! tensor maps its TMA loads read, and its launch. The planner (`super::plan`) chooses it on
//! compute capability 9.0 for aligned operands; results match the mma.sync kernels' contract
//! (f32 accumulation, one rounding in the shared epilogue). Launch shapes are stated in the
//! kernel's header.

use crate::cuda::{Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels::KernelModule;
use crate::shape::Layout;
use cudarc::driver::sys::{
    cuTensorMapEncodeTiled, CUresult, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill,
    CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{DeviceRepr, DriverError};

/// K depth of one TMA box (64 halves = the 128-byte swizzle's row).
const BOX_K: u32 = 64;
/// Rows of an M/N-major box (one 128-byte row of 64 halves per K index).
const BOX_MN: u32 = 64;

/// A CUDA tensor map (128 opaque bytes, 64-byte aligned) passed to the kernel by value.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct TensorMap(CUtensorMap);

// SAFETY: 128 bytes of plain data that the kernel declares as a 128-byte, 64-byte aligned
// `__grid_constant__` struct.
unsafe impl DeviceRepr for TensorMap {}

/// The element type a tensor map describes: the GEMM's 16-bit operand type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmaElement {
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

/// One 16-bit operand in global memory: `outer` rows of `inner` contiguous elements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand {
    /// Device address, 16-byte aligned.
    pub ptr: u64,
    /// Contiguous dimension (elements), a multiple of 8.
    pub inner: usize,
    /// Rows.
    pub outer: usize,
    /// Whether K is the contiguous dimension.
    pub k_major: bool,
    /// Rows of one TMA box of a K-major operand: the block tile's rows along M or N, or half of
    /// them for the B tile a persistent cluster's two blocks load half each.
    pub tile_rows: usize,
}

/// Encodes the tensor map of one operand: 128-byte swizzle, zero fill past the edges. A K-major
/// operand is read as boxes of `tile_rows` rows × 64 K, an M/N-major one as 64 K rows × 64.
fn tensor_map(op: &Operand, element: TmaElement) -> Result<TensorMap> {
    let boxes = if op.k_major {
        [BOX_K, op.tile_rows as u32]
    } else {
        [BOX_MN, BOX_K]
    };
    let dtype = match element {
        TmaElement::F16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        TmaElement::Bf16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    };
    tensor_map_2d(op.ptr, dtype, 2, [op.inner, op.outer], boxes).map_err(|source| Error::Driver {
        context: format!(
            "encoding a TMA tensor map for the Hopper GEMM ({} × {} elements, box {:?}); the \
             operand must be 16-byte aligned with a contiguous dimension that is a multiple of 8",
            op.outer, op.inner, boxes
        ),
        source,
    })
}

/// Encodes a 2-D tensor map over `dims = [inner, outer]` elements of `elem_bytes` bytes each
/// (row pitch `inner·elem_bytes`) read as boxes of `boxes = [inner, outer]` elements, with the
/// 128-byte swizzle and zero fill past the edges (also used by the FP8 GEMM, `super::fp8`).
pub(crate) fn tensor_map_2d(
    ptr: u64,
    dtype: CUtensorMapDataType,
    elem_bytes: usize,
    dims: [usize; 2],
    boxes: [u32; 2],
) -> std::result::Result<TensorMap, DriverError> {
    let dims = [dims[0] as u64, dims[1] as u64];
    let strides = [dims[0] * elem_bytes as u64];
    let element_strides = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<CUtensorMap>::zeroed();
    // SAFETY: every pointer refers to a live local array of the length the rank (2) implies;
    // `map` is written by the call and read only when it succeeds. The global address is only
    // recorded, not dereferenced, here.
    let rc = unsafe {
        cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if rc != CUresult::CUDA_SUCCESS {
        return Err(DriverError(rc));
    }
    // SAFETY: the call succeeded and filled all 128 bytes.
    Ok(TensorMap(unsafe { map.assume_init() }))
}

/// Everything one launch of a `gemm_sm90_*` kernel needs besides the operands.
pub(crate) struct Launch {
    /// Entry point, e.g. `gemm_sm90_fwd_h256`.
    pub kernel: &'static str,
    /// Grid and block shape, dynamic shared memory.
    pub cfg: LaunchConfig,
    /// C, or the K-split workspace when `out_kind` is 2.
    pub out: u64,
    /// Bias (0 for none).
    pub bias: u64,
    /// M, N, K.
    pub dims: (i32, i32, i32),
    /// alpha, beta, relu.
    pub epilogue: (f32, f32, i32),
    /// 0 the operands' 16-bit type, 1 f32, 2 f32 partials.
    pub out_kind: i32,
    /// K tiles per split, splits, tile-rows per raster group.
    pub schedule: (i32, i32, i32),
    /// The non-finite flag word (0 for none; `Epilogue::nonfinite` in
    /// `kernels/gemm_epilogue.cuh`).
    pub nonfinite: u64,
}

/// Whether A and B are M/N-major in a layout (the kernel's transpose bits).
pub(crate) fn mn_major(layout: Layout) -> (bool, bool) {
    match layout {
        Layout::Forward => (false, false),
        Layout::Dgrad => (false, true),
        Layout::Wgrad => (true, true),
    }
}

/// Launches one `gemm_sm90_*` kernel of `module` (the f16 or the bf16 build) on operands A and B
/// of type `element`.
pub(crate) fn launch(
    gpu: &Gpu,
    module: &KernelModule,
    element: TmaElement,
    a: &Operand,
    b: &Operand,
    l: &Launch,
) -> Result<()> {
    if gpu.info().compute_capability != (9, 0) {
        return Err(Error::InvalidArgument {
            op: "ops::gemm::gemm",
            detail: format!(
                "the Hopper GEMM kernels (sm_90a) need compute capability 9.0; this GPU has {}.{}: \
                 use a plan from the portable configurations",
                gpu.info().compute_capability.0,
                gpu.info().compute_capability.1
            ),
        });
    }
    let (ta, tb) = (tensor_map(a, element)?, tensor_map(b, element)?);
    let mut args = KernelArgs::new();
    args.push(ta).push(tb).push(l.out).push(l.bias);
    args.push(l.dims.0).push(l.dims.1).push(l.dims.2);
    args.push(l.epilogue.0)
        .push(l.epilogue.1)
        .push(l.epilogue.2);
    args.push(l.out_kind)
        .push(l.schedule.0)
        .push(l.schedule.1)
        .push(l.schedule.2)
        .push(l.nonfinite);
    // SAFETY: gemm_sm90_<layout>_<config>(TensorMap ta, TensorMap tb, void* C, const float* bias,
    // int M, int N, int K, float alpha, float beta, int relu, int out_kind,
    // int k_tiles_per_split, int splits, int group_m, unsigned* nonfinite) matches the
    // arguments; nonfinite is null or one u32 (the caller's check). The tensor maps
    // describe exactly the operands the caller's shape check proved in bounds (TMA clips every box
    // to them); C holds M·N elements of the out_kind type, or splits·M·N f32 for out_kind 2; the
    // kernel bounds-checks each store. A persistent kernel's grid is a multiple of its compile-time
    // cluster size (2).
    unsafe { gpu.launch(module, l.kernel, l.cfg, &args) }
}
