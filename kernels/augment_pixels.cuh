// augment_pixels.cuh — a training sample's pixels as the batch stage reads them (augment.cu's
// gather, and fp8_train.cu's gather into FP8, which must produce the same values).
#pragma once

#include <stdint.h>

#include "common.cuh"

namespace augment_pixels {

// The dataset's pixels: f32 values, or one-byte codes into a palette of at most 256 f32 values
// (a dataset with that few distinct values, MNIST's k/255: a quarter of the bytes to read, the
// same values out).
struct F32Pixels {
    const float* __restrict__ values;
    __device__ __forceinline__ float at(size_t i) const { return values[i]; }
};
struct CodedPixels {
    const unsigned char* __restrict__ codes;
    const float* __restrict__ palette;
    __device__ __forceinline__ float at(size_t i) const { return __ldg(palette + codes[i]); }
};

// The same pixels rounded to bf16 and widened back to f32 (what a bf16 batch holds), for the
// FP8 input stage: a palette is rounded once into shared memory (rounded_to_bf16 stages it,
// one entry per thread of the first kPalette; the caller syncs before reading), f32 pixels on
// each read.
constexpr int kPalette = 256;
struct RoundedF32Pixels {
    const float* __restrict__ values;
    __device__ __forceinline__ float at(size_t i) const {
        return __uint_as_float(uint32_t(ampkit::f32_to_bf16_bits_exact(values[i])) << 16);
    }
};
struct RoundedCodedPixels {
    const unsigned char* __restrict__ codes;
    const float* palette;  // shared memory, rounded
    __device__ __forceinline__ float at(size_t i) const { return palette[codes[i]]; }
};
__device__ __forceinline__ RoundedF32Pixels rounded_to_bf16(const F32Pixels& px, float*) {
    return RoundedF32Pixels{px.values};
}
__device__ __forceinline__ RoundedCodedPixels rounded_to_bf16(const CodedPixels& px, float* staged) {
    for (int i = threadIdx.x; i < kPalette; i += blockDim.x)
        staged[i] = __uint_as_float(uint32_t(ampkit::f32_to_bf16_bits_exact(px.palette[i])) << 16);
    return RoundedCodedPixels{px.codes, staged};
}

// Pixel p of the image starting at pixel img, shifted by (dx, dy) on its side×side grid (side 0:
// no shift), the uncovered border `background`; a quiet NaN for a sample whose image index was
// not valid (the whole row).
template <typename Px>
__device__ __forceinline__ float shifted(const Px& images, bool valid, size_t img, unsigned p,
                                         unsigned side, int dx, int dy, float background) {
    if (!valid) return __int_as_float(0x7fc00000);
    if (side == 0) return images.at(img + p);
    const unsigned r0 = p / side;
    const int r = int(r0) - dy;
    const int c = int(p - r0 * side) - dx;
    const bool inside = r >= 0 && r < int(side) && c >= 0 && c < int(side);
    return inside ? images.at(img + unsigned(r) * side + unsigned(c)) : background;
}

}  // namespace augment_pixels
