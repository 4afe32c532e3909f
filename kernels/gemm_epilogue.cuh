// gemm_epilogue.cuh — the GEMM epilogue shared by kernels/gemm.cu (mma.sync) and
// kernels/gemm_sm90.cu (wgmma): the CPU reference's order of operations, so that every GEMM
// kernel rounds exactly once, at the same point.
#pragma once

#include <cuda_fp16.h>
#include "gemm_element.cuh"

namespace gemm_epilogue {

struct Epilogue {
    const float* bias;
    float alpha, beta;
    int relu;
    // Not null: a store of an inf or NaN (judged on the stored value, after any rounding) or'es 1
    // into it (the training step's weight gradients, checked where they are written). Raw
    // K-split partials (out_kind 2) are not checked: their sum is.
    unsigned* nonfinite = nullptr;
};

// One atomic per warp whose active lanes stored an inf or NaN (store4 runs under divergent bounds
// checks, so the vote is among the lanes that got here).
__device__ __forceinline__ void report_nonfinite(unsigned* flag, bool bad) {
    const unsigned lanes = __ballot_sync(__activemask(), bad);
    if (lanes != 0 && int(threadIdx.x & 31) == __ffs(lanes) - 1) atomicOr(flag, 1u);
}

// v = alpha·acc; v += bias[col]; v += beta·old (only if beta ≠ 0, so an unwritten C is never
// read); ReLU keeps NaN (like the reference's `relu`).
__device__ __forceinline__ float finish(float acc, int col, float old, const Epilogue& e) {
    float v = e.alpha * acc;
    if (e.bias) v += e.bias[col];
    if (e.beta != 0.f) v += e.beta * old;
    if (e.relu && !(v > 0.f || isnan(v))) v = 0.f;
    return v;
}

// Stores four horizontally adjacent results (col..col+3) of row `row`; out_kind 0 the module's
// 16-bit element (gemm_element.cuh: f16 or bf16), 1 f32, 2 raw f32 partials (no epilogue). One 16-byte (f32) or 8-byte (16-bit) store when all four are
// inside and `vec` says the row pitch and base allow it.
__device__ __forceinline__ void store4(void* c, int out_kind, int M, int N, int row, int col,
                                       float4 v, bool vec, const Epilogue& e) {
    if (row >= M || col >= N) return;
    const size_t idx = size_t(row) * N + col;
    const int n_here = min(4, N - col);
    float r[4] = {v.x, v.y, v.z, v.w};
    if (out_kind == 2) {
        float* p = static_cast<float*>(c) + idx;
        if (vec && n_here == 4) {
            *reinterpret_cast<float4*>(p) = v;
        } else {
            for (int q = 0; q < n_here; ++q) p[q] = r[q];
        }
    } else if (out_kind == 1) {
        float* p = static_cast<float*>(c) + idx;
        if (vec && n_here == 4) {
            const float4 o = e.beta != 0.f ? *reinterpret_cast<const float4*>(p) : make_float4(0, 0, 0, 0);
            const float old[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
            for (int q = 0; q < 4; ++q) r[q] = finish(r[q], col + q, old[q], e);
            *reinterpret_cast<float4*>(p) = make_float4(r[0], r[1], r[2], r[3]);
            if (e.nonfinite)
                report_nonfinite(e.nonfinite, !(isfinite(r[0]) && isfinite(r[1]) && isfinite(r[2]) && isfinite(r[3])));
        } else {
            bool bad = false;
            for (int q = 0; q < n_here; ++q) {
                p[q] = finish(r[q], col + q, e.beta != 0.f ? p[q] : 0.f, e);
                bad |= !isfinite(p[q]);
            }
            if (e.nonfinite) report_nonfinite(e.nonfinite, bad);
        }
    } else {
        using gemm_element::elem;
        using gemm_element::elem2;
        elem* p = static_cast<elem*>(c) + idx;
        if (vec && n_here == 4) {
            uint2 raw = e.beta != 0.f ? *reinterpret_cast<const uint2*>(p) : make_uint2(0, 0);
            elem2* h = reinterpret_cast<elem2*>(&raw);
            const float2 o01 = gemm_element::to_float2(h[0]), o23 = gemm_element::to_float2(h[1]);
            h[0] = gemm_element::pack2(finish(r[0], col, o01.x, e), finish(r[1], col + 1, o01.y, e));
            h[1] = gemm_element::pack2(finish(r[2], col + 2, o23.x, e), finish(r[3], col + 3, o23.y, e));
            *reinterpret_cast<uint2*>(p) = raw;
            if (e.nonfinite) {
                const float2 a = gemm_element::to_float2(h[0]), b = gemm_element::to_float2(h[1]);
                report_nonfinite(e.nonfinite, !(isfinite(a.x) && isfinite(a.y) && isfinite(b.x) && isfinite(b.y)));
            }
        } else {
            bool bad = false;
            for (int q = 0; q < n_here; ++q) {
                const float old = e.beta != 0.f ? gemm_element::to_float(p[q]) : 0.f;
                p[q] = gemm_element::from_float(finish(r[q], col + q, old, e));
                bad |= !isfinite(gemm_element::to_float(p[q]));
            }
            if (e.nonfinite) report_nonfinite(e.nonfinite, bad);
        }
    }
}

}  // namespace gemm_epilogue
