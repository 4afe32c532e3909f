// common.cuh — device helpers shared by every ampkit kernel family.
//
// Kept deliberately small: only what two or more families need. Everything here is header-only
// and `static __device__ __forceinline__`, so each .cu compiles to a self-contained PTX module.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

namespace ampkit {

// Widest access the memory system serves in one instruction per thread.
constexpr int kMaxAccessBytes = 16;

constexpr int min_int(int a, int b) { return a < b ? a : b; }

// V consecutive elements of T moved as one aligned unit. Aligning to min(16, sizeof(T)*V) makes nvcc
// emit ld/st.global.v2/.v4 (a 32-byte pack becomes two 16-byte accesses) instead of scalar traffic;
// the host guarantees that alignment before choosing V (see src/ops).
template <typename T, int V>
struct alignas(min_int(kMaxAccessBytes, int(sizeof(T)) * V)) Pack {
    T v[V];
};

// A 1-D problem of n elements split for a vectorised grid-stride kernel:
//   [0, head)                scalar: brings both pointers to pack alignment (head < V)
//   [head, head + packs*V)   packs of V, grid-stride
//   [head + packs*V, n)      scalar tail (< V elements)
// head is chosen by the host, which knows the pointer values; it is passed in so the device
// code never does address arithmetic on pointers it cannot see.
struct Split {
    size_t head, packs, tail_begin, n;
};

static __device__ __forceinline__ Split split_for_packs(size_t n, size_t head, int v) {
    size_t h = head < n ? head : n;
    size_t packs = (n - h) / size_t(v);
    return Split{h, packs, h + packs * size_t(v), n};
}

static __device__ __forceinline__ size_t global_thread() {
    return size_t(blockIdx.x) * blockDim.x + threadIdx.x;
}

static __device__ __forceinline__ size_t grid_threads() {
    return size_t(gridDim.x) * blockDim.x;
}

// f32 -> f16 rounded to nearest even, bit-exact with the host's `half::f16::from_f32`: a NaN keeps
// its sign and top payload bits with the quiet bit forced (sign | 0x7E00 | payload >> 13), which
// cvt.rn.f16.f32 does not promise (it may return the canonical 0x7FFF), so NaNs take their own path.
static __device__ __forceinline__ __half f32_to_f16_exact(float x) {
    const uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
        return __ushort_as_half(uint16_t(((bits >> 16) & 0x8000u) | 0x7E00u | ((bits >> 13) & 0x03FFu)));
    }
    return __float2half_rn(x);
}

// f32 -> bf16 bits rounded to nearest even, bit-exact with the host's `half::bf16::from_f32`
// (the same rule as cast.cu's f32_to_bf16, in integer operations): finite values and infinities
// round on their bits (a carry into the exponent gives the next binade or ±inf); a NaN keeps its
// sign and top 16 bits with the quiet bit (0x0040) forced.
static __device__ __forceinline__ uint16_t f32_to_bf16_bits_exact(float x) {
    const uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((bits >> 16) | 0x0040u);
    return uint16_t((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace ampkit
