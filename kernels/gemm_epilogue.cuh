// gemm_epilogue.cuh — the GEMM epilogue shared by kernels/gemm.cu (mma.sync) and
// kernels/gemm_sm90.cu (wgmma): the CPU reference's order of operations, so that every GEMM
// kernel rounds exactly once, at the same point.
#pragma once

#include <cuda_fp16.h>

namespace gemm_epilogue {

struct Epilogue {
    const float* bias;
    float alpha, beta;
    int relu;
};

// v = alpha·acc; v += bias[col]; v += beta·old (only if beta ≠ 0, so an unwritten C is never
// read); ReLU keeps NaN (like the reference's `relu`).
__device__ __forceinline__ float finish(float acc, int col, float old, const Epilogue& e) {
    float v = e.alpha * acc;
    if (e.bias) v += e.bias[col];
    if (e.beta != 0.f) v += e.beta * old;
    if (e.relu && !(v > 0.f || isnan(v))) v = 0.f;
    return v;
}

}  // namespace gemm_epilogue
