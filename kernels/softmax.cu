// softmax.cu — softmax over the last dimension in f32, forward and backward. (The fused
// softmax-cross-entropy is cross_entropy.cu; the thread-block-cluster kernels for very long rows on
// sm_90 are softmax_sm90.cu; shared device code is softmax_common.cuh.)
//
// What: src/cpu/softmax.rs's functions.
//   forward:  m = max_j x_j (fmaxf: NaN skipped), e_j = exp(x_j − m), s = Σ e_j, y_j = e_j / s.
//   backward: dx_j = y_j·(dy_j − Σ_k y_k·dy_k).
//   Non-finite inputs follow the IEEE operations exactly as the reference's do: −inf masks to 0, a
//   row of all −inf or holding NaN/+inf is NaN throughout. Sums are f32 trees rather than the
//   CPU's left-to-right f64 folds (results agree to rounding), with a fixed shape per (rows,
//   cols, alignment): bit-identical run to run.
// Launch shapes (picked in src/ops/softmax/mod.rs). VEC = 4 when cols % 4 == 0 and every row
//   pointer is aligned to 4 elements, else 1; a "pack" is VEC elements.
//   *_warp<VEC,P>   cols ≤ 32·P·VEC: a warp per row, 8 rows per 256-thread block, the row in
//                   registers (P packs per lane; exp computed once and kept), shuffle reductions.
//   *_block<VEC>    longer rows: a block per row; the input is read once into dynamic shared memory
//                   (as much as fits) and 8 more floats per thread into registers (a still longer
//                   tail is read again, from L2), and the later passes run over those copies. The
//                   forward overwrites the cached x with e_j, so exp runs once per cached element.
//   On compute capability 9.0, rows of 16 384 columns or more with VEC = 4 take softmax_sm90.cu's
//   cluster kernels instead, where an instance holds them.
// Roofline: forward 8 B/element, backward 12 B. 4096×10 is ~330 KB: launch-bound; at ≥ 64 MB the
//   floor is bytes over the ~3.0 TB/s device copy measured on the H100.
#include "softmax_common.cuh"

namespace softmax_detail {

template <int VEC, int P>
__device__ __forceinline__ void fwd_warp(const float* __restrict__ x, float* __restrict__ y,
                                         int rows, int cols) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * WARP_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;  // whole warps only: nothing here synchronises the block
    const int packs = cols / VEC;
    const size_t off = size_t(row) * cols;
    float v[P][VEC];
    float m = -INFINITY;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * 32 + lane < packs) {
            load<VEC>(x + off, p * 32 + lane, v[p]);
#pragma unroll
            for (int k = 0; k < VEC; ++k) m = fmaxf(m, v[p][k]);
        }
    }
    m = warp_max(m);
    float s = 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * 32 + lane < packs) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                v[p][k] = expf(v[p][k] - m);
                s += v[p][k];
            }
        }
    }
    s = warp_sum(s);
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * 32 + lane < packs) {
            float o[VEC];
#pragma unroll
            for (int k = 0; k < VEC; ++k) o[k] = __fdiv_rn(v[p][k], s);
            store<VEC>(y + off, p * 32 + lane, o);
        }
    }
}

template <int VEC>
__device__ __forceinline__ void fwd_block(const float* __restrict__ x, float* __restrict__ y,
                                          int cols, int cached) {
    constexpr int TP = TAIL_FLOATS / VEC;
    const int packs = cols / VEC, T = blockDim.x, t = threadIdx.x;
    const size_t off = size_t(blockIdx.x) * cols;
    const int rest = cached + TP * T;  // packs from here on are read again in each pass
    float* cache = dyn_smem;
    float tail[TP][VEC];
    float m = -INFINITY;
#pragma unroll
    for (int u = 0; u < TP; ++u) {
        const int i = cached + u * T + t;
        if (i < packs) {
            load<VEC>(x + off, i, tail[u]);
#pragma unroll
            for (int k = 0; k < VEC; ++k) m = fmaxf(m, tail[u][k]);
        }
    }
    m = fmaxf(m, load_cache_max<float, VEC>(x + off, cached, cached, cache));
    for (int i = rest + t; i < packs; i += T) {
        float v[VEC];
        load<VEC>(x + off, i, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) m = fmaxf(m, v[k]);
    }
    m = block_max(m);
    float2 cr = exp_pass<float, VEC>(x + off, cached, cached, cache, m);
    const bool finite_m = isfinite(m);
#pragma unroll
    for (int u = 0; u < TP; ++u) {
        if (cached + u * T + t < packs) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) tail[u][k] = exp_count(tail[u][k], m, finite_m, cr.x, cr.y);
        }
    }
    for (int i = rest + t; i < packs; i += T) {
        float v[VEC];
        load<VEC>(x + off, i, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) exp_count(v[k], m, finite_m, cr.x, cr.y);
    }
    cr = block_sum2(cr);
    const float s = cr.x + cr.y;
#pragma unroll 4
    for (int i = t; i < cached; i += T) {
        float e[VEC];
        load<VEC>(cache, i, e);
#pragma unroll
        for (int k = 0; k < VEC; ++k) e[k] = __fdiv_rn(e[k], s);
        store<VEC>(y + off, i, e);
    }
#pragma unroll
    for (int u = 0; u < TP; ++u) {
        const int i = cached + u * T + t;
        if (i < packs) {
            float e[VEC];
#pragma unroll
            for (int k = 0; k < VEC; ++k) e[k] = __fdiv_rn(tail[u][k], s);
            store<VEC>(y + off, i, e);
        }
    }
    for (int i = rest + t; i < packs; i += T) {
        float e[VEC];
        load<VEC>(x + off, i, e);
#pragma unroll
        for (int k = 0; k < VEC; ++k) e[k] = __fdiv_rn(expf(e[k] - m), s);
        store<VEC>(y + off, i, e);
    }
}

template <int VEC, int P>
__device__ __forceinline__ void bwd_warp(const float* __restrict__ y, const float* __restrict__ dy,
                                         float* __restrict__ dx, int rows, int cols) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * WARP_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int packs = cols / VEC;
    const size_t off = size_t(row) * cols;
    float yv[P][VEC], dv[P][VEC];
    float dot = 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * 32 + lane < packs) {
            load<VEC>(y + off, p * 32 + lane, yv[p]);
            load<VEC>(dy + off, p * 32 + lane, dv[p]);
#pragma unroll
            for (int k = 0; k < VEC; ++k) dot += yv[p][k] * dv[p][k];
        }
    }
    dot = warp_sum(dot);
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * 32 + lane < packs) {
            float o[VEC];
#pragma unroll
            for (int k = 0; k < VEC; ++k) o[k] = softmax_dx(yv[p][k], dv[p][k], dot);
            store<VEC>(dx + off, p * 32 + lane, o);
        }
    }
}

// Caches y in dyn_smem[0, cached·VEC) and dy right after it.
template <int VEC>
__device__ __forceinline__ void bwd_block(const float* __restrict__ y, const float* __restrict__ dy,
                                          float* __restrict__ dx, int cols, int cached) {
    const int packs = cols / VEC, T = blockDim.x;
    const size_t off = size_t(blockIdx.x) * cols;
    float* cy = dyn_smem;
    float* cd = dyn_smem + size_t(cached) * VEC;
    float dot = 0.f;
    for (int base = threadIdx.x; base < packs; base += UNROLL * T) {
        float a[UNROLL][VEC], b[UNROLL][VEC];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (base + u * T < packs) {
                load<VEC>(y + off, base + u * T, a[u]);
                load<VEC>(dy + off, base + u * T, b[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * T;
            if (i < packs) {
                if (i < cached) {
                    store<VEC>(cy, i, a[u]);
                    store<VEC>(cd, i, b[u]);
                }
#pragma unroll
                for (int k = 0; k < VEC; ++k) dot += a[u][k] * b[u][k];
            }
        }
    }
    dot = block_sum(dot);
#pragma unroll 4
    for (int i = threadIdx.x; i < packs; i += T) {
        float a[VEC], b[VEC], o[VEC];
        cached_or_load<VEC>(cy, y + off, i, cached, a);
        cached_or_load<VEC>(cd, dy + off, i, cached, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = softmax_dx(a[k], b[k], dot);
        store<VEC>(dx + off, i, o);
    }
}

}  // namespace softmax_detail

using namespace softmax_detail;

#define SOFTMAX_WARP(V, P)                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * WARP_ROWS) softmax_fwd_warp_v##V##_p##P(   \
        const float* x, float* y, int rows, int cols) {                                          \
        fwd_warp<V, P>(x, y, rows, cols);                                                        \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * WARP_ROWS) softmax_bwd_warp_v##V##_p##P(   \
        const float* y, const float* dy, float* dx, int rows, int cols) {                        \
        bwd_warp<V, P>(y, dy, dx, rows, cols);                                                   \
    }
SOFTMAX_WARP(4, 1)
SOFTMAX_WARP(4, 2)
SOFTMAX_WARP(4, 4)
SOFTMAX_WARP(4, 8)
SOFTMAX_WARP(1, 1)
SOFTMAX_WARP(1, 2)
SOFTMAX_WARP(1, 4)
SOFTMAX_WARP(1, 8)

#define SOFTMAX_BLOCK(V)                                                                        \
    extern "C" __global__ void __launch_bounds__(1024) softmax_fwd_block_v##V(                  \
        const float* x, float* y, int cols, int cached) {                                       \
        fwd_block<V>(x, y, cols, cached);                                                       \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(1024) softmax_bwd_block_v##V(                  \
        const float* y, const float* dy, float* dx, int cols, int cached) {                     \
        bwd_block<V>(y, dy, dx, cols, cached);                                                  \
    }
SOFTMAX_BLOCK(4)
SOFTMAX_BLOCK(1)
