// cast.cu — f32 <-> f16 and f32 <-> bf16 conversion and fill, the elementwise plumbing of AMP
// training.
//
// What: cast_f32_to_f16_v{1,2,4,8}, cast_f16_to_f32_v{1,2,4,8}, the same for bf16,
//   fill_u32_v{1,2,4}, fill_u16_v{1,2,4,8}.
//   Each kernel is one instantiation of a vector width V (elements per access); the host picks the
//   widest V that the two pointers' alignment allows at some head offset (src/ops/cast.rs).
// Numerics (bit-exact with src/cpu/cast.rs, which is the `half` crate's conversion):
//   f32 -> f16 rounds to nearest even; |x| >= 65520 becomes ±inf; results below 2^-14 become f16
//   subnormals (rounded) or ±0. NaN -> sign | 0x7E00 | top 9 payload bits: the quiet bit is forced
//   and the payload kept, which cvt.rn.f16.f32 does not promise (it may return a canonical NaN),
//   so NaNs take an explicit path.
//   f16 -> f32 is exact; NaN -> sign | 0x7FC00000 | payload << 13 (quiet bit forced).
//   f32 -> bf16 rounds to nearest even (|x| >= 0x7F7F8000, half a bf16 ulp above the largest
//   bf16, becomes ±inf), subnormals kept; NaN -> its top 16 bits with the
//   quiet bit (0x0040) set. bf16 -> f32 is exact (the bits shifted up); NaN gets the quiet bit.
//   fill writes a bit pattern (u32 for f32, u16 for f16), so any value, NaN payloads included,
//   lands exactly.
// Launch: 1-D grid-stride, 256 threads, grid capped by the host at a few waves of the SMs.
//   Thread t also handles head element t (t < head < V) and tail element t (t < V).
// Roofline (H100 SXM, 3.35 TB/s HBM3; copy measured at ~2.95 TB/s): cast moves 6 bytes per
//   element (4 read + 2 written), so 2^28 elements = 1.61 GB -> ~0.55 ms at copy speed. Fill moves
//   only the written bytes. Arithmetic is a few instructions per element: bandwidth is the floor.
#include "common.cuh"

#include <cuda_bf16.h>

using ampkit::Pack;
using ampkit::Split;

// A named namespace, not an anonymous one: nvcc names anonymous-namespace symbols (e.g. the
// extern shared array) after a hash of the source path, which would make the committed PTX
// depend on where the repository is checked out.
namespace cast_detail {

__device__ __forceinline__ float f16_to_f32(__half h) {
    uint32_t bits = __half_as_ushort(h);
    if ((bits & 0x7FFFu) > 0x7C00u) {  // NaN
        return __uint_as_float(((bits & 0x8000u) << 16) | 0x7FC00000u | ((bits & 0x03FFu) << 13));
    }
    return __half2float(h);
}

// cvt.rn.bf16.f32 rounds like half's bf16::from_f32 but may return a canonical NaN.
__device__ __forceinline__ __nv_bfloat16 f32_to_bf16(float x) {
    const uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
        return __ushort_as_bfloat16(uint16_t((bits >> 16) | 0x0040u));
    }
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float bf16_to_f32(__nv_bfloat16 h) {
    uint32_t bits = __bfloat16_as_ushort(h);
    if ((bits & 0x7FFFu) > 0x7F80u) bits |= 0x0040u;  // NaN: quiet bit forced
    return __uint_as_float(bits << 16);
}

template <typename Src, typename Dst>
__device__ __forceinline__ Dst convert(Src x);
template <>
__device__ __forceinline__ __half convert<float, __half>(float x) { return ampkit::f32_to_f16_exact(x); }
template <>
__device__ __forceinline__ float convert<__half, float>(__half x) { return f16_to_f32(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 convert<float, __nv_bfloat16>(float x) { return f32_to_bf16(x); }
template <>
__device__ __forceinline__ float convert<__nv_bfloat16, float>(__nv_bfloat16 x) { return bf16_to_f32(x); }

template <int V, typename Src, typename Dst>
__device__ __forceinline__ void cast(const Src* __restrict__ in, Dst* __restrict__ out, size_t n,
                                     size_t head) {
    const Split s = ampkit::split_for_packs(n, head, V);
    const size_t t = ampkit::global_thread();
    if (t < s.head) out[t] = convert<Src, Dst>(in[t]);
    if (t < s.n - s.tail_begin) out[s.tail_begin + t] = convert<Src, Dst>(in[s.tail_begin + t]);

    const auto* in_packs = reinterpret_cast<const Pack<Src, V>*>(in + s.head);
    auto* out_packs = reinterpret_cast<Pack<Dst, V>*>(out + s.head);
    for (size_t p = t; p < s.packs; p += ampkit::grid_threads()) {
        const Pack<Src, V> a = in_packs[p];
        Pack<Dst, V> b;
#pragma unroll
        for (int i = 0; i < V; ++i) b.v[i] = convert<Src, Dst>(a.v[i]);
        out_packs[p] = b;
    }
}

template <int V, typename T>
__device__ __forceinline__ void fill(T* __restrict__ out, size_t n, size_t head, T value) {
    const Split s = ampkit::split_for_packs(n, head, V);
    const size_t t = ampkit::global_thread();
    if (t < s.head) out[t] = value;
    if (t < s.n - s.tail_begin) out[s.tail_begin + t] = value;

    Pack<T, V> b;
#pragma unroll
    for (int i = 0; i < V; ++i) b.v[i] = value;
    auto* out_packs = reinterpret_cast<Pack<T, V>*>(out + s.head);
    for (size_t p = t; p < s.packs; p += ampkit::grid_threads()) out_packs[p] = b;
}

}  // namespace cast_detail

using namespace cast_detail;

// One extern "C" entry point per (kernel, V): stable, unmangled names for the host's module table.
#define AMPKIT_CAST(V)                                                                           \
    extern "C" __global__ void cast_f32_to_f16_v##V(const float* in, __half* out, size_t n,     \
                                                    size_t head) {                               \
        cast<V>(in, out, n, head);                                                               \
    }                                                                                            \
    extern "C" __global__ void cast_f16_to_f32_v##V(const __half* in, float* out, size_t n,     \
                                                    size_t head) {                               \
        cast<V>(in, out, n, head);                                                               \
    }                                                                                            \
    extern "C" __global__ void cast_f32_to_bf16_v##V(const float* in, __nv_bfloat16* out,       \
                                                     size_t n, size_t head) {                    \
        cast<V>(in, out, n, head);                                                               \
    }                                                                                            \
    extern "C" __global__ void cast_bf16_to_f32_v##V(const __nv_bfloat16* in, float* out,       \
                                                     size_t n, size_t head) {                    \
        cast<V>(in, out, n, head);                                                               \
    }
AMPKIT_CAST(1)
AMPKIT_CAST(2)
AMPKIT_CAST(4)
AMPKIT_CAST(8)

#define AMPKIT_FILL(BITS, T, V)                                                                   \
    extern "C" __global__ void fill_u##BITS##_v##V(T* out, size_t n, size_t head, T value) {     \
        fill<V>(out, n, head, value);                                                            \
    }
AMPKIT_FILL(32, uint32_t, 1)
AMPKIT_FILL(32, uint32_t, 2)
AMPKIT_FILL(32, uint32_t, 4)
AMPKIT_FILL(16, uint16_t, 1)
AMPKIT_FILL(16, uint16_t, 2)
AMPKIT_FILL(16, uint16_t, 4)
AMPKIT_FILL(16, uint16_t, 8)
