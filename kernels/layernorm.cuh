// layernorm.cuh — the per-element pieces of LayerNorm shared by layernorm.cu (portable) and
// layernorm_sm90.cu (thread-block clusters): pack loads and stores, and the two formulas the CPU
// reference fixes (y and dx), each step rounded through an _rn intrinsic so nothing is contracted
// into an FMA and every kernel family gives the reference's per-element rounding.
#pragma once

#include "common.cuh"

namespace layernorm_detail {

using ampkit::Pack;

template <int VEC>
__device__ __forceinline__ void load(const float* __restrict__ row, int i, float (&v)[VEC]) {
    const Pack<float, VEC> pk = reinterpret_cast<const Pack<float, VEC>*>(row)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = pk.v[k];
}

template <int VEC>
__device__ __forceinline__ void store(float* row, int i, const float (&v)[VEC]) {
    Pack<float, VEC> pk;
#pragma unroll
    for (int k = 0; k < VEC; ++k) pk.v[k] = v[k];
    reinterpret_cast<Pack<float, VEC>*>(row)[i] = pk;
}

// ((x − mean)·rstd)·gamma + beta, in that order, each step rounded.
__device__ __forceinline__ float normalise(float x, float mu, float rs, float g, float b) {
    return __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x, mu), rs), g), b);
}

// rstd·((g − mean_g) − x̂·mean_gx), each step rounded (the CPU reference's order).
__device__ __forceinline__ float dx_of(float g, float xh, float rs, float mg, float mgx) {
    return __fmul_rn(rs, __fsub_rn(__fsub_rn(g, mg), __fmul_rn(xh, mgx)));
}

}  // namespace layernorm_detail
