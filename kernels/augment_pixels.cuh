// augment_pixels.cuh — a training sample's pixels as the batch stage reads them (augment.cu's
// gather, and fp8_train.cu's gather into FP8, which must produce the same values).
#pragma once

#include <stdint.h>

namespace augment_pixels {

// The dataset's pixels: f32 values, or one-byte codes into a palette of at most 256 f32 values
// (a dataset with that few distinct values, MNIST's k/255: a quarter of the bytes to read, the
// same values out).
// four(i, out): pixels i..i+3, for a caller that knows they lie in one image row of the dataset.
struct F32Pixels {
    const float* __restrict__ values;
    __device__ __forceinline__ float at(size_t i) const { return values[i]; }
    __device__ __forceinline__ bool words_ok() const { return true; }
    __device__ __forceinline__ void four(size_t i, float (&out)[4]) const {
#pragma unroll
        for (int k = 0; k < 4; ++k) out[k] = values[i + k];
    }
};
struct CodedPixels {
    const unsigned char* __restrict__ codes;
    const float* __restrict__ palette;
    __device__ __forceinline__ float at(size_t i) const { return __ldg(palette + codes[i]); }
    // Whether four() may read whole words: the codes start on a 4-byte boundary (the caller also
    // needs the dataset's length to be a multiple of 4, so that no word runs past it).
    __device__ __forceinline__ bool words_ok() const {
        return (reinterpret_cast<uintptr_t>(codes) & 3) == 0;
    }
    // The four codes in one aligned word, or two and a funnel shift: one or two loads where
    // at() takes four.
    __device__ __forceinline__ void four(size_t i, float (&out)[4]) const {
        const unsigned* w = reinterpret_cast<const unsigned*>(codes + (i & ~size_t(3)));
        const unsigned sh = unsigned(i & 3) * 8;
        unsigned word = w[0];
        if (sh != 0) word = __funnelshift_r(word, w[1], sh);
#pragma unroll
        for (int k = 0; k < 4; ++k) out[k] = __ldg(palette + ((word >> (8 * k)) & 0xFFu));
    }
};

// Pixel p of the image starting at pixel img, shifted by (dx, dy) on its side×side grid (side 0:
// no shift), the uncovered border `background`; a quiet NaN for a sample whose image index was
// not valid (the whole row).
// The pixel at grid row `row`, column `col` of a valid image shifted by (dx, dy) (side > 0).
template <typename Px>
__device__ __forceinline__ float shifted_at(const Px& images, size_t img, unsigned row,
                                            unsigned col, unsigned side, int dx, int dy,
                                            float background) {
    const int r = int(row) - dy;
    const int c = int(col) - dx;
    const bool inside = r >= 0 && r < int(side) && c >= 0 && c < int(side);
    return inside ? images.at(img + unsigned(r) * side + unsigned(c)) : background;
}

template <typename Px>
__device__ __forceinline__ float shifted(const Px& images, bool valid, size_t img, unsigned p,
                                         unsigned side, int dx, int dy, float background) {
    if (!valid) return __int_as_float(0x7fc00000);
    if (side == 0) return images.at(img + p);
    const unsigned r0 = p / side;
    return shifted_at(images, img, r0, p - r0 * side, side, dx, dy, background);
}

}  // namespace augment_pixels
