// softmax.cu — softmax over the last dimension (f32 forward and backward) and fused
// softmax-cross-entropy (f16 or f32 logits, u32 labels, f32 math) with the mean loss left on the
// device.
//
// What: src/cpu/softmax.rs's functions.
//   forward:  m = max_j x_j (fmaxf: NaN skipped), e_j = exp(x_j − m), s = Σ e_j, y_j = e_j / s.
//   backward: dx_j = y_j·(dy_j − Σ_k y_k·dy_k).
//   cross-entropy, per row: loss = (m − x_label) + ln s; dlogits_j = (e_j/s − [j = label])·scale
//     with scale = *grad_scale / rows read from device memory (AMP's loss scale), stored as f16 or
//     f32 (out_f16). The row losses go to a scratch array; ce_finish adds them in f64 in a fixed
//     order and writes the mean as one f32: no host synchronisation and no float atomics. A label
//     ≥ classes (the CPU reference's error, which the device cannot raise) makes that row's loss
//     and all of its dlogits NaN, so the mean loss is NaN. s is summed as c + r, c the number of
//     entries equal to a finite max (each e = 1 exactly) and r the rest, and ln s is taken as
//     ln c + log1p(r / c): in a nearly one-hot row (the end of training) s = 1 + r rounds most of
//     r away, while the loss is ≈ r, so ln s itself would lose the loss's relative precision.
//   Non-finite inputs follow the IEEE operations exactly as the reference's do: −inf masks to 0, a
//   row of all −inf or holding NaN/+inf is NaN throughout. Sums are trees rather than the CPU's
//   left-to-right folds (results agree to rounding), with a fixed shape per (rows, cols,
//   alignment): bit-identical run to run.
// Launch shapes (picked in src/ops/softmax.rs). VEC = 4 when cols % 4 == 0 and every row pointer is
//   aligned to 4 elements, else 1; a "pack" is VEC elements.
//   *_warp<VEC,P>   cols ≤ 32·P·VEC: a warp per row, 8 rows per 256-thread block, the row in
//                   registers (P packs per lane; exp computed once and kept), shuffle reductions.
//   *_block<VEC>    longer rows: a block per row; the input is read once into dynamic shared memory
//                   (as much as fits; a longer tail is read again, from L2) and the later passes
//                   run over that copy. The forward and the loss overwrite the cached logits with
//                   e_j, so exp runs once per cached element.
// Roofline: forward 8 B/element, backward 12 B, cross-entropy 4 + 4 B (f32 → f32) or 2 + 2 B
//   (f16 → f16) plus 4 B per row. 4096×10 is ~330 KB: launch-bound (two launches for the loss);
//   at ≥ 64 MB the floor is the ~2.9 TB/s copy rate.
#include "common.cuh"

namespace softmax_detail {

using ampkit::Pack;

constexpr int WARP_ROWS = 8;  // rows per block in the warp kernels (256 threads)
constexpr int UNROLL = 4;     // packs per thread in flight in the block kernels' first pass
constexpr int FINISH_THREADS = 1024;

template <int VEC>
__device__ __forceinline__ void load(const float* __restrict__ row, int i, float (&v)[VEC]) {
    const Pack<float, VEC> pk = reinterpret_cast<const Pack<float, VEC>*>(row)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = pk.v[k];
}

template <int VEC>
__device__ __forceinline__ void load(const __half* __restrict__ row, int i, float (&v)[VEC]) {
    const Pack<__half, VEC> pk = reinterpret_cast<const Pack<__half, VEC>*>(row)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = __half2float(pk.v[k]);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <int VEC>
__device__ __forceinline__ void store(float* row, int i, const float (&v)[VEC]) {
    Pack<float, VEC> pk;
#pragma unroll
    for (int k = 0; k < VEC; ++k) pk.v[k] = v[k];
    reinterpret_cast<Pack<float, VEC>*>(row)[i] = pk;
}

// dlogits row `off`, pack i, as f16 (round to nearest even, overflow to ±inf) or f32.
template <int VEC>
__device__ __forceinline__ void store_out(void* out, size_t off, int i, const float (&v)[VEC],
                                          int out_f16) {
    if (out_f16) {
        Pack<__half, VEC> pk;
#pragma unroll
        for (int k = 0; k < VEC; ++k) pk.v[k] = __float2half_rn(v[k]);
        reinterpret_cast<Pack<__half, VEC>*>(static_cast<__half*>(out) + off)[i] = pk;
    } else {
        store<VEC>(static_cast<float*>(out) + off, i, v);
    }
}

// Butterflies: lanes i and i^o combine the same two operands (both operations commute), so every
// lane ends with the same value.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum / max returned to every thread; blockDim.x is a multiple of 32.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    v = warp_sum(v);
    const int lane = threadIdx.x & 31;
    if (lane == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = warp_sum(lane < int(blockDim.x >> 5) ? part[lane] : 0.f);
    __syncthreads();  // `part` is reused by the next call
    return v;
}

__device__ __forceinline__ float2 block_sum2(float2 v) {
    __shared__ float2 part[32];
    v = make_float2(warp_sum(v.x), warp_sum(v.y));
    const int lane = threadIdx.x & 31;
    if (lane == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    const float2 t = lane < int(blockDim.x >> 5) ? part[lane] : make_float2(0.f, 0.f);
    v = make_float2(warp_sum(t.x), warp_sum(t.y));
    __syncthreads();
    return v;
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float part[32];
    v = warp_max(v);
    const int lane = threadIdx.x & 31;
    if (lane == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = warp_max(lane < int(blockDim.x >> 5) ? part[lane] : -INFINITY);
    __syncthreads();
    return v;
}

extern __shared__ __align__(16) float dyn_smem[];

template <int VEC>
__device__ __forceinline__ void cached_or_load(const float* cache, const float* __restrict__ row,
                                               int i, int cached, float (&v)[VEC]) {
    if (i < cached) {
        load<VEC>(cache, i, v);
    } else {
        load<VEC>(row, i, v);
    }
}

// The block kernels' first pass: reads packs tid, tid + T, ... of `row` (UNROLL in flight),
// converts them to f32, caches those below `cached` and returns this thread's max. Every later
// pass visits the same packs, so a thread only reads back what it cached itself.
template <typename L, int VEC>
__device__ __forceinline__ float load_cache_max(const L* __restrict__ row, int packs, int cached,
                                                float* cache) {
    const int T = blockDim.x;
    float m = -INFINITY;
    for (int base = threadIdx.x; base < packs; base += UNROLL * T) {
        float v[UNROLL][VEC];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (base + u * T < packs) load<VEC>(row, base + u * T, v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * T;
            if (i < packs) {
                if (i < cached) store<VEC>(cache, i, v[u]);
#pragma unroll
                for (int k = 0; k < VEC; ++k) m = fmaxf(m, v[u][k]);
            }
        }
    }
    return m;
}

// e = exp(x − m), added to c (as 1: x is a finite max) or to r.
__device__ __forceinline__ float exp_count(float x, float m, bool finite_m, float& c, float& r) {
    const float e = expf(x - m);
    if (finite_m && x == m) {
        c += 1.f;
    } else {
        r += e;
    }
    return e;
}

// Second pass of the block kernels: e = exp(x − m) for this thread's packs, written over the
// cached x; returns the thread's (c, r) (see the header). Uncached packs are read again and their
// e recomputed in the last pass.
template <typename L, int VEC>
__device__ __forceinline__ float2 exp_pass(const L* __restrict__ row, int packs, int cached,
                                           float* cache, float m) {
    const bool finite_m = isfinite(m);
    float c = 0.f, r = 0.f;
#pragma unroll 4
    for (int i = threadIdx.x; i < packs; i += blockDim.x) {
        float v[VEC];
        if (i < cached) {
            load<VEC>(cache, i, v);
        } else {
            load<VEC>(row, i, v);
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = exp_count(v[k], m, finite_m, c, r);
        if (i < cached) store<VEC>(cache, i, v);
    }
    return make_float2(c, r);
}

// e for pack i in the last pass: the cached value, or recomputed from memory.
template <typename L, int VEC>
__device__ __forceinline__ void exp_of(const L* __restrict__ row, const float* cache, int i,
                                       int cached, float m, float (&e)[VEC]) {
    if (i < cached) {
        load<VEC>(cache, i, e);
    } else {
        load<VEC>(row, i, e);
#pragma unroll
        for (int k = 0; k < VEC; ++k) e[k] = expf(e[k] - m);
    }
}

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
    const int packs = cols / VEC;
    const size_t off = size_t(blockIdx.x) * cols;
    float* cache = dyn_smem;
    const float m = block_max(load_cache_max<float, VEC>(x + off, packs, cached, cache));
    const float2 cr = block_sum2(exp_pass<float, VEC>(x + off, packs, cached, cache, m));
    const float s = cr.x + cr.y;
#pragma unroll 4
    for (int i = threadIdx.x; i < packs; i += blockDim.x) {
        float e[VEC];
        exp_of<float, VEC>(x + off, cache, i, cached, m, e);
#pragma unroll
        for (int k = 0; k < VEC; ++k) e[k] = __fdiv_rn(e[k], s);
        store<VEC>(y + off, i, e);
    }
}

// y_j·(dy_j − dot), rounded at each step.
__device__ __forceinline__ float softmax_dx(float y, float dy, float dot) {
    return __fmul_rn(y, __fsub_rn(dy, dot));
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

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

// (p − [j = label])·scale for element j, or NaN for the whole row when the label is out of range.
__device__ __forceinline__ float ce_grad(float e, float s, int j, unsigned label, bool ok,
                                         float scale) {
    const float p = __fdiv_rn(e, s);
    const float g = unsigned(j) == label ? __fsub_rn(p, 1.f) : p;
    return ok ? __fmul_rn(g, scale) : quiet_nan();
}

// (m − x_label) + ln s with ln s = ln c + log1p(r / c), or NaN for an out-of-range label. A
// non-finite max leaves c = 0 and r NaN, so the loss is NaN as in the reference.
template <typename L>
__device__ __forceinline__ float ce_loss(const L* __restrict__ row, unsigned label, bool ok,
                                         float m, float c, float r) {
    const float ln_s = __fadd_rn(logf(c), log1pf(__fdiv_rn(r, c)));
    return ok ? __fadd_rn(__fsub_rn(m, to_float(row[label])), ln_s) : quiet_nan();
}

template <typename L, int VEC, int P>
__device__ __forceinline__ void ce_warp(const L* __restrict__ logits,
                                        const unsigned* __restrict__ labels,
                                        const float* __restrict__ grad_scale, void* dlogits,
                                        int out_f16, float* __restrict__ row_loss, int rows,
                                        int classes) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * WARP_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int packs = classes / VEC;
    const size_t off = size_t(row) * classes;
    const unsigned label = labels[row];
    const bool ok = label < unsigned(classes);
    float v[P][VEC];
    float m = -INFINITY;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * 32 + lane < packs) {
            load<VEC>(logits + off, p * 32 + lane, v[p]);
#pragma unroll
            for (int k = 0; k < VEC; ++k) m = fmaxf(m, v[p][k]);
        }
    }
    m = warp_max(m);
    const bool finite_m = isfinite(m);
    float c = 0.f, r = 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * 32 + lane < packs) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[p][k] = exp_count(v[p][k], m, finite_m, c, r);
        }
    }
    c = warp_sum(c);
    r = warp_sum(r);
    const float s = c + r;
    const float scale = __fdiv_rn(*grad_scale, float(rows));
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int i = p * 32 + lane;
        if (i < packs) {
            float o[VEC];
#pragma unroll
            for (int k = 0; k < VEC; ++k) o[k] = ce_grad(v[p][k], s, i * VEC + k, label, ok, scale);
            store_out<VEC>(dlogits, off, i, o, out_f16);
        }
    }
    if (lane == 0) row_loss[row] = ce_loss(logits + off, label, ok, m, c, r);
}

template <typename L, int VEC>
__device__ __forceinline__ void ce_block(const L* __restrict__ logits,
                                         const unsigned* __restrict__ labels,
                                         const float* __restrict__ grad_scale, void* dlogits,
                                         int out_f16, float* __restrict__ row_loss, int rows,
                                         int classes, int cached) {
    const int row = blockIdx.x, packs = classes / VEC;
    const size_t off = size_t(row) * classes;
    const unsigned label = labels[row];
    const bool ok = label < unsigned(classes);
    float* cache = dyn_smem;
    const float m = block_max(load_cache_max<L, VEC>(logits + off, packs, cached, cache));
    const float2 cr = block_sum2(exp_pass<L, VEC>(logits + off, packs, cached, cache, m));
    const float s = cr.x + cr.y;
    const float scale = __fdiv_rn(*grad_scale, float(rows));
#pragma unroll 4
    for (int i = threadIdx.x; i < packs; i += blockDim.x) {
        float e[VEC];
        exp_of<L, VEC>(logits + off, cache, i, cached, m, e);
#pragma unroll
        for (int k = 0; k < VEC; ++k) e[k] = ce_grad(e[k], s, i * VEC + k, label, ok, scale);
        store_out<VEC>(dlogits, off, i, e, out_f16);
    }
    if (threadIdx.x == 0) row_loss[row] = ce_loss(logits + off, label, ok, m, cr.x, cr.y);
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
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * WARP_ROWS) softmax_ce_warp_f32_v##V##_p##P( \
        const float* logits, const unsigned* labels, const float* grad_scale, void* dlogits,     \
        int out_f16, float* row_loss, int rows, int classes) {                                   \
        ce_warp<float, V, P>(logits, labels, grad_scale, dlogits, out_f16, row_loss, rows,      \
                             classes);                                                           \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * WARP_ROWS) softmax_ce_warp_f16_v##V##_p##P( \
        const __half* logits, const unsigned* labels, const float* grad_scale, void* dlogits,    \
        int out_f16, float* row_loss, int rows, int classes) {                                   \
        ce_warp<__half, V, P>(logits, labels, grad_scale, dlogits, out_f16, row_loss, rows,     \
                              classes);                                                          \
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
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(1024) softmax_ce_block_f32_v##V(               \
        const float* logits, const unsigned* labels, const float* grad_scale, void* dlogits,    \
        int out_f16, float* row_loss, int rows, int classes, int cached) {                      \
        ce_block<float, V>(logits, labels, grad_scale, dlogits, out_f16, row_loss, rows,       \
                           classes, cached);                                                    \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(1024) softmax_ce_block_f16_v##V(               \
        const __half* logits, const unsigned* labels, const float* grad_scale, void* dlogits,   \
        int out_f16, float* row_loss, int rows, int classes, int cached) {                      \
        ce_block<__half, V>(logits, labels, grad_scale, dlogits, out_f16, row_loss, rows,      \
                            classes, cached);                                                   \
    }
SOFTMAX_BLOCK(4)
SOFTMAX_BLOCK(1)

// The mean of the row losses: one block; each thread adds rows tid, tid + T, ... in f64, then a
// fixed tree. NaN and inf rows carry into the mean as in the reference's f64 sum.
extern "C" __global__ void __launch_bounds__(FINISH_THREADS)
    softmax_ce_finish(const float* __restrict__ row_loss, int rows, float* __restrict__ loss) {
    __shared__ double part[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) s += double(row_loss[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const int lane = threadIdx.x & 31;
    if (lane == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = lane < int(blockDim.x >> 5) ? part[lane] : 0.0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) *loss = float(s / double(rows));
    }
}
