// fp8.cu — FP8 (E4M3, E5M2) quantize with a per-tensor scale and the tensor's amax in the same
// pass, and dequantize: the casts of delayed-scaling FP8 training (Transformer Engine's recipe).
//
// What:
//   fp8_quantize_f32_{e4m3,e5m2}(x, q, n, scale, amax): q[i] = fp8(x[i] · scale[0]), rounded to
//     nearest even with saturation to the largest finite value (E4M3 ±448, E5M2 ±57344); NaN →
//     0x7F (cuda_fp8.hpp's canonical NaN, sign dropped). amax[0] = max(amax[0], max_i |x[i]|),
//     taken before scaling (what the amax history records); a NaN anywhere makes it NaN. The scale
//     and the amax live on the device, so a step never waits on the host.
//   fp8_dequantize_{e4m3,e5m2}_f32(q, y, n, scale_inv): y[i] = f32(q[i]) · scale_inv[0]; an FP8
//     NaN gives the f32 NaN 0x7FFFFFFF.
// Numerics: bit-exact with src/cpu/fp8.rs (the float8 crate, a port of cuda_fp8.hpp's
//   conversion): the module is compute_80 PTX, so __nv_cvt_float_to_fp8 takes its software path
//   (f32 → f64 exactly, then one rounding) on every GPU; the product x·scale is one f32 rounding.
//   The amax is a max: its atomics make it independent of scheduling.
// Launch: 1-D grid-stride, 256 threads; a block reduces its |x| maximum in shared memory and
//   issues one atomicMax on the amax's bits (non-negative floats order like their bit patterns;
//   NaN's bits exceed infinity's).
// Roofline: quantize reads 4 B and writes 1 B per element (H100: ~3 TB/s → 2^26 elements in
//   ~0.11 ms); dequantize 1 + 4 B.
#include "common.cuh"

#include <cuda_fp8.h>

namespace fp8_detail {

template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ void quantize(const float* __restrict__ x, uint8_t* __restrict__ q,
                                         size_t n, const float* __restrict__ scale,
                                         unsigned int* __restrict__ amax_bits) {
    __shared__ unsigned int block_max[8];
    const float s = *scale;
    unsigned int m = 0;
    for (size_t i = ampkit::global_thread(); i < n; i += ampkit::grid_threads()) {
        const float v = x[i];
        m = max(m, __float_as_uint(v) & 0x7FFFFFFFu);
        q[i] = __nv_cvt_float_to_fp8(v * s, __NV_SATFINITE, F);
    }
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) block_max[warp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < int(blockDim.x >> 5); ++w) m = max(m, block_max[w]);
        if (m != 0) atomicMax(amax_bits, m);
    }
}

template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ void dequantize(const uint8_t* __restrict__ q, float* __restrict__ y,
                                           size_t n, const float* __restrict__ scale_inv) {
    const float s = *scale_inv;
    for (size_t i = ampkit::global_thread(); i < n; i += ampkit::grid_threads()) {
        const __half_raw h = __nv_cvt_fp8_to_halfraw(q[i], F);
        // NaN comes back as f16 0x7FFF; its f32 widening's payload is not specified, so write
        // one canonical NaN (the CPU twin's).
        y[i] = (h.x & 0x7FFFu) > 0x7C00u ? __uint_as_float(0x7FFFFFFFu) : __half2float(__half(h)) * s;
    }
}

}  // namespace fp8_detail

using namespace fp8_detail;

#define AMPKIT_FP8(NAME, F)                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        fp8_quantize_f32_##NAME(const float* x, uint8_t* q, size_t n, const float* scale,       \
                                unsigned int* amax_bits) {                                      \
        quantize<F>(x, q, n, scale, amax_bits);                                                  \
    }                                                                                            \
    extern "C" __global__ void fp8_dequantize_##NAME##_f32(const uint8_t* q, float* y, size_t n, \
                                                           const float* scale_inv) {             \
        dequantize<F>(q, y, n, scale_inv);                                                       \
    }
AMPKIT_FP8(e4m3, __NV_E4M3)
AMPKIT_FP8(e5m2, __NV_E5M2)
