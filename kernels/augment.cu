// augment.cu — a batch (or a whole epoch) of training inputs gathered from the dataset resident on
// the GPU: sample i is image order[i], shifted by (dx, dy) = shifts[2i], shifts[2i+1] pixels on its
// side×side grid, the uncovered border filled with `background`, stored as f32, f16 or bf16.
//
// What: augment_gather_{f32,f16,bf16}, augment_batch_{f32,f16,bf16},
//   augment_batch_coded_{f32,f16,bf16} (augment_pdl.cu: the same entry points with programmatic
//   dependent launch). Output element (i, p) with p = r·side + c takes
//   src[(r − dy)·side + (c − dx)] of image order[i] when that pixel lies on the grid, else
//   `background`; side = 0 means no shift (a plain gather, for inputs that are not square images).
//   An image index ≥ `count` (not checkable on the host without a synchronisation) makes the
//   sample's row NaN.
// Numerics (bit-exact with src/cpu/augment.rs): every value is copied, never computed; the f16
//   output rounds the f32 to nearest even and keeps NaN payloads, as half's f16::from_f32 does
//   (ampkit::f32_to_f16_exact: plain __float2half_rn returns a canonical NaN); the bf16 output
//   likewise as half's bf16::from_f32 (ampkit::f32_to_bf16_bits_exact).
// Pixels: f32 values, or (augment_batch_coded_*) one-byte codes into a 256-entry f32
//   palette, for a dataset of at most 256 distinct values (8-bit images scaled to k/255): the
//   same values come out, from a quarter of the bytes.
// Batch mode (augment_batch_*, the training step's own input stage): the same gather for
//   `n` samples starting at sample cursor[1] of the epoch's plan, which the step's bookkeeping
//   kernel (scaler.cu: record_step) advances on the device, so a captured CUDA graph stages each
//   replay's batch with no host call; labels_out[i] = labels[order[first + i]]. A cursor that
//   would read past the plan's plan_len samples (bookkeeping gone wrong) poisons the batch: NaN
//   inputs, labels 0xFFFFFFFF.
// Launch: 128-thread blocks, samples grid-strided over at most a wave of resident blocks
//   (host: ops/augment.rs), a sample's pixels over the block's threads; consecutive threads write
//   consecutive pixels (pairs of them when `pairs`), so the stores coalesce, and the shifted
//   loads read the same image lines (L1/L2 hits). v1 was one thread per element with a 64-bit
//   division each, at 49-64 % of a copy (docs/kernels/augment.md).
// Roofline: writes 4 (f32) or 2 (f16, bf16) bytes per element and reads at most 4; MNIST's
//   8,000-sample epoch (6.3 M elements) is 50 MB as f32 → ~17 µs at the device copy rate
//   (~2.9 TB/s, H100), a 4096-sample f16 batch (3.2 M elements, 19 MB) ~7 µs; from palette codes
//   9.6 MB, ~3.5 µs.
#include "augment_pixels.cuh"
#include "common.cuh"
#include "pdl.cuh"

#include <cuda_bf16.h>

namespace augment_detail {

__device__ __forceinline__ void store(float* out, size_t i, float v) { out[i] = v; }
__device__ __forceinline__ void store(__half* out, size_t i, float v) {
    out[i] = ampkit::f32_to_f16_exact(v);
}
__device__ __forceinline__ void store(__nv_bfloat16* out, size_t i, float v) {
    reinterpret_cast<uint16_t*>(out)[i] = ampkit::f32_to_bf16_bits_exact(v);
}

// Two neighbouring outputs stored as one 4-byte (f16, bf16) or 8-byte (f32) access.
template <typename T>
struct Pair;
template <>
struct Pair<float> {
    using type = float2;
    static __device__ __forceinline__ float2 make(float a, float b) { return make_float2(a, b); }
};
template <>
struct Pair<__half> {
    using type = __half2;
    static __device__ __forceinline__ __half2 make(float a, float b) {
        return __halves2half2(ampkit::f32_to_f16_exact(a), ampkit::f32_to_f16_exact(b));
    }
};
template <>
struct Pair<__nv_bfloat16> {
    using type = uint32_t;  // the first element in the low half (little-endian)
    static __device__ __forceinline__ uint32_t make(float a, float b) {
        return uint32_t(ampkit::f32_to_bf16_bits_exact(a)) |
               (uint32_t(ampkit::f32_to_bf16_bits_exact(b)) << 16);
    }
};

// Samples are grid-strided over blocks, a sample's pixels over the block's threads: the image
// index and shift are read once per sample (broadcast loads), the pixel's row and column need
// one 32-bit division, and with `pairs` (inputs even, output aligned to two elements) each
// thread stores two neighbouring pixels at once.
using augment_pixels::CodedPixels;
using augment_pixels::F32Pixels;

template <typename T, typename Px>
__device__ __forceinline__ void gather(const Px images, const unsigned* __restrict__ order,
                                       const int* __restrict__ shifts, T* __restrict__ out,
                                       size_t n, unsigned inputs, unsigned side, unsigned count,
                                       float background, unsigned pairs) {
    for (size_t i = blockIdx.x; i < n; i += gridDim.x) {
        const unsigned s = order[i];
        const bool valid = s < count;
        const int dx = side != 0 ? shifts[2 * i] : 0;
        const int dy = side != 0 ? shifts[2 * i + 1] : 0;
        const size_t img = valid ? size_t(s) * inputs : 0;
        T* row = out + i * inputs;
        auto value = [&](unsigned p) -> float {
            return augment_pixels::shifted(images, valid, img, p, side, dx, dy, background);
        };
        if (pairs) {
            auto* row2 = reinterpret_cast<typename Pair<T>::type*>(row);
            for (unsigned q = threadIdx.x; q < inputs / 2; q += blockDim.x) {
                row2[q] = Pair<T>::make(value(2 * q), value(2 * q + 1));
            }
        } else {
            for (unsigned p = threadIdx.x; p < inputs; p += blockDim.x) store(row, p, value(p));
        }
    }
}

template <typename T, typename Px>
__device__ __forceinline__ void batch(const Px images,
                                      const unsigned* __restrict__ labels,
                                      const unsigned* __restrict__ order,
                                      const int* __restrict__ shifts, const unsigned* cursor,
                                      T* __restrict__ out, unsigned* __restrict__ labels_out,
                                      size_t n, size_t plan_len, unsigned inputs, unsigned side,
                                      unsigned count, float background, unsigned pairs) {
    const size_t first = cursor[1];
    if (first + n > plan_len) {  // the host's bookkeeping went wrong: poison, never read past
        for (size_t e = ampkit::global_thread(); e < n * inputs; e += ampkit::grid_threads()) {
            store(out, e, __int_as_float(0x7fc00000));
            if (e < n) labels_out[e] = 0xFFFFFFFFu;
        }
        return;
    }
    order += first;
    shifts += 2 * first;
    for (size_t i = ampkit::global_thread(); i < n; i += ampkit::grid_threads()) {
        const unsigned s = order[i];
        labels_out[i] = s < count ? labels[s] : 0xFFFFFFFFu;
    }
    gather<T, Px>(images, order, shifts, out, n, inputs, side, count, background, pairs);
}

}  // namespace augment_detail

#define AUGMENT_GATHER(NAME, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                            \
        NAME(const float* images, const unsigned* order, const int* shifts, T* out, size_t n,  \
             unsigned inputs, unsigned side, unsigned count, float background, unsigned pairs) { \
        pdl_start();                                                                             \
        augment_detail::gather<T>(augment_detail::F32Pixels{images}, order, shifts, out, n,      \
                                  inputs, side, count, background, pairs);                       \
    }

AUGMENT_GATHER(augment_gather_f32, float)
AUGMENT_GATHER(augment_gather_f16, __half)
AUGMENT_GATHER(augment_gather_bf16, __nv_bfloat16)

#define AUGMENT_BATCH(NAME, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                            \
        NAME(const float* images, const unsigned* labels, const unsigned* order,                 \
             const int* shifts, const unsigned* cursor, T* out, unsigned* labels_out, size_t n,  \
             size_t plan_len, unsigned inputs, unsigned side, unsigned count,                    \
             float background, unsigned pairs) {                                                 \
        pdl_start();                                                                             \
        augment_detail::batch<T>(augment_detail::F32Pixels{images}, labels, order, shifts,       \
                                 cursor, out, labels_out, n, plan_len, inputs, side, count,      \
                                 background, pairs);                                             \
    }

AUGMENT_BATCH(augment_batch_f32, float)
AUGMENT_BATCH(augment_batch_f16, __half)
AUGMENT_BATCH(augment_batch_bf16, __nv_bfloat16)

// The batch stage over a palette-coded dataset: codes (one byte per pixel) and a palette of 256
// f32 values (entries past the dataset's distinct values are never indexed).
#define AUGMENT_BATCH_CODED(NAME, T)                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                            \
        NAME(const unsigned char* codes, const float* palette, const unsigned* labels,           \
             const unsigned* order, const int* shifts, const unsigned* cursor, T* out,           \
             unsigned* labels_out, size_t n, size_t plan_len, unsigned inputs, unsigned side,    \
             unsigned count, float background, unsigned pairs) {                                 \
        pdl_start();                                                                             \
        augment_detail::batch<T>(augment_detail::CodedPixels{codes, palette}, labels, order,     \
                                 shifts, cursor, out, labels_out, n, plan_len, inputs, side,     \
                                 count, background, pairs);                                      \
    }

AUGMENT_BATCH_CODED(augment_batch_coded_f32, float)
AUGMENT_BATCH_CODED(augment_batch_coded_f16, __half)
AUGMENT_BATCH_CODED(augment_batch_coded_bf16, __nv_bfloat16)
