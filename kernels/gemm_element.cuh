// gemm_element.cuh — the GEMM's 16-bit operand type, chosen per module.
//
// gemm.cu and gemm_sm90.cu are written once for a 16-bit element `elem`: f16 by default, bf16
// where the including module defines AMPKIT_GEMM_BF16 first (gemm_bf16.cu, gemm_sm90_bf16.cu).
// Both have 2-byte storage, the same ldmatrix/TMA/swizzle layouts and f32 accumulation; only the
// tensor-core instruction's operand type and the conversions differ. out_kind 0 (the 16-bit
// output) is the module's element: an f16 module writes f16, a bf16 module bf16.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace gemm_element {

#if defined(AMPKIT_GEMM_BF16)
using elem = __nv_bfloat16;
using elem2 = __nv_bfloat162;
// The operand type in mma.sync / wgmma instruction names.
#define AMPKIT_GEMM_AB "bf16"
__device__ __forceinline__ elem from_float(float x) { return __float2bfloat16_rn(x); }
__device__ __forceinline__ float to_float(elem x) { return __bfloat162float(x); }
__device__ __forceinline__ float2 to_float2(elem2 x) { return __bfloat1622float2(x); }
__device__ __forceinline__ elem2 pack2(float a, float b) {
    return __halves2bfloat162(__float2bfloat16_rn(a), __float2bfloat16_rn(b));
}
#else
using elem = __half;
using elem2 = __half2;
#define AMPKIT_GEMM_AB "f16"
__device__ __forceinline__ elem from_float(float x) { return __float2half_rn(x); }
__device__ __forceinline__ float to_float(elem x) { return __half2float(x); }
__device__ __forceinline__ float2 to_float2(elem2 x) { return __half22float2(x); }
__device__ __forceinline__ elem2 pack2(float a, float b) {
    return __halves2half2(__float2half_rn(a), __float2half_rn(b));
}
#endif

}  // namespace gemm_element
