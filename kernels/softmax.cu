// softmax.cu — softmax over the last dimension (f32 forward and backward) and fused
// softmax-cross-entropy (f16 or f32 logits, u32 labels, f32 math) with the mean loss left on the
// device.
//
// What: src/cpu/softmax.rs's functions.
//   forward:  m = max_j x_j (fmaxf: NaN skipped), e_j = exp(x_j − m), s = Σ e_j, y_j = e_j / s.
//   backward: dx_j = y_j·(dy_j − Σ_k y_k·dy_k).
//   cross-entropy, per row: loss = (m − x_label) + ln s; dlogits_j = (e_j/s − [j = label])·scale
//     with scale = *grad_scale / rows read from device memory (AMP's loss scale), stored as f16 or
//     f32 (out_f16). e_j = 2^((x_j − m)·log2 e) through the SFU (exp_shifted: the subtraction
//     rounded first, so the max gives exactly 1), and dlogits_j = e_j·(scale/s) except at the label,
//     where (e/s − 1)·scale keeps the exact quotient. One launch: each block adds its rows' losses
//     in f64 in a fixed order and writes one partial; the block that takes the last ticket (an
//     acquire-release integer atomic) adds the partials in a fixed order and writes the mean as one
//     f32: no host synchronisation, no float atomics, no second kernel. A label ≥ classes (the CPU
//     reference's error, which the device cannot raise) makes that row's loss and all of its
//     dlogits NaN, so the mean loss is NaN. s is summed as c + r, c the number of entries equal to
//     a finite max (each e = 1 exactly) and r the rest, and ln s is taken as ln c + log1p(r / c):
//     in a nearly one-hot row (the end of training) s = 1 + r rounds most of r away, while the loss
//     is ≈ r, so ln s itself would lose the loss's relative precision.
//   Non-finite inputs follow the IEEE operations exactly as the reference's do: −inf masks to 0, a
//   row of all −inf or holding NaN/+inf is NaN throughout. Sums are trees rather than the CPU's
//   left-to-right folds (results agree to rounding), with a fixed shape per (rows, cols,
//   alignment): bit-identical run to run.
// Launch shapes (picked in src/ops/softmax.rs). VEC = 4 when cols % 4 == 0 and every row pointer is
//   aligned to 4 elements, else 1 (the loss with f16 logits: 8, one 16-byte access, when cols % 8
//   == 0 and both buffers are 16-byte aligned); a "pack" is VEC elements.
//   *_warp<VEC,P>   cols ≤ 32·P·VEC: a warp per row, 8 rows per 256-thread block, the row in
//                   registers (P packs per lane; exp computed once and kept), shuffle reductions.
//   *_block<VEC>    longer rows: a block per row; the input is read once into dynamic shared memory
//                   (as much as fits) and 8 more floats per thread into registers (a still longer
//                   tail is read again, from L2), and the later passes run over those copies. The
//                   forward and the loss overwrite the cached logits with e_j, so exp runs once per
//                   cached element.
//   ce_rows<L,VEC,P,PF>  the loss with the row in registers: a warp per row, or (rows longer than
//                   a warp holds) a block per row; blocks loop over rows past 2^18 threads. PF
//                   loads the next row ahead. ce_block<L,VEC>: the shared-memory loss.
// Roofline: forward 8 B/element, backward 12 B, cross-entropy 4 + 4 B (f32 → f32) or 2 + 2 B
//   (f16 → f16) plus 4 B per row. 4096×10 is ~330 KB: launch-bound; at ≥ 64 MB the floor is the
//   ~2.6 TB/s copy rate measured on the H100.
#include "common.cuh"

namespace softmax_detail {

using ampkit::Pack;

constexpr int WARP_ROWS = 8;  // rows per block in the warp kernels (256 threads)
constexpr int UNROLL = 4;     // packs per thread in flight in the block kernels' first pass

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

// This thread's packs (i = p·group + t) of a row as stored, for converting later.
template <typename L, int VEC, int P>
__device__ __forceinline__ void load_raw(const L* __restrict__ row, int group, int t, int packs,
                                         Pack<L, VEC> (&out)[P]) {
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int i = p * group + t;
        if (i < packs) out[p] = reinterpret_cast<const Pack<L, VEC>*>(row)[i];
    }
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
// cached x; returns the thread's (c, r) (see the header). Packs past `cached` are read again
// (fwd_block passes packs = cached and handles those itself).
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

// Floats per thread that the long-row kernels keep in registers past the shared-memory cache:
// packs [cached, cached + TAIL_FLOATS/VEC·T) live in registers (thread t holds cached + u·T + t),
// so a 65 536-float row is read once with 1024 threads on a 227 KB device.
constexpr int TAIL_FLOATS = 8;

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

// exp(x − m) for the loss: the subtraction rounded first (so x = m gives exactly 1), then the
// SFU's ex2.approx.f32 of (x − m)·log2(e): ≤ 2 ulp, subnormal results kept, 2^±0 = 1,
// 2^−inf = +0, NaN stays NaN. Three instructions where expf takes about ten.
__device__ __forceinline__ float exp_shifted(float x, float m) {
    float y;
    asm("ex2.approx.f32 %0, %1;" : "=f"(y) : "f"(__fmul_rn(__fsub_rn(x, m), 1.4426950408889634f)));
    return y;
}

// e = exp(x − m) (exp_shifted), added to c (as 1: x is a finite max) or to r.
__device__ __forceinline__ float exp_count_ce(float x, float m, bool finite_m, float& c, float& r) {
    const float e = exp_shifted(x, m);
    if (finite_m && x == m) {
        c += 1.f;
    } else {
        r += e;
    }
    return e;
}

// Per row of the loss: what the gradient pass needs besides e.
struct CeRow {
    float ps;        // scale / s: the gradient of a non-label element is e·ps (NaN: bad label)
    float s, scale;  // for the label's (e/s − 1)·scale
};

__device__ __forceinline__ CeRow ce_row(float scale, bool ok, float s) {
    CeRow c;
    c.scale = scale;
    c.s = s;
    c.ps = ok ? __fdiv_rn(c.scale, s) : quiet_nan();
    return c;
}

// Pack i of dlogits: e·(scale/s) everywhere (the label's element is rewritten by ce_label).
template <int VEC>
__device__ __forceinline__ void ce_out(void* dlogits, size_t off, int i, const float (&e)[VEC],
                                       float ps, int out_f16) {
    float o[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) o[k] = __fmul_rn(e[k], ps);
    store_out<VEC>(dlogits, off, i, o, out_f16);
}

// The label's gradient, (e/s − 1)·scale with the exact quotient (the one element where the
// subtraction cancels), written over what ce_out stored there. Called by the thread that stored
// the label's pack, after it, so program order makes this the value that stays. e is computed
// again from the logit, with the same operations as the pass that summed it: the same bits.
template <typename L>
__device__ __forceinline__ void ce_label(const L* __restrict__ row, void* dlogits, size_t off,
                                         unsigned label, float m, const CeRow& c, int out_f16) {
    const float e = exp_shifted(to_float(row[label]), m);
    const float g = __fmul_rn(__fsub_rn(__fdiv_rn(e, c.s), 1.f), c.scale);
    if (out_f16) {
        static_cast<__half*>(dlogits)[off + label] = __float2half_rn(g);
    } else {
        static_cast<float*>(dlogits)[off + label] = g;
    }
}

// (m − x_label) + ln s with ln s = ln c + log1p(r / c), or NaN for an out-of-range label. A
// non-finite max leaves c = 0 and r NaN, so the loss is NaN as in the reference.
template <typename L>
__device__ __forceinline__ float ce_loss(const L* __restrict__ row, unsigned label, bool ok,
                                         float m, float c, float r) {
    const float ln_s = __fadd_rn(logf(c), log1pf(__fdiv_rn(r, c)));
    return ok ? __fadd_rn(__fsub_rn(m, to_float(row[label])), ln_s) : quiet_nan();
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Blocks of the current loss launch that have taken their ticket. Zero when the module loads;
// the last block of each launch puts it back to zero, so every launch (and graph replay) starts
// from zero. One module instance per context, and its launches are ordered on one stream.
__device__ unsigned ce_blocks_done;

// Called by every thread of the block at its end (each row group's first thread holds the f64
// sum of its rows' losses, in row order; the others 0): the block adds them in group order,
// writes partial[blockIdx.x], and takes a ticket with a release-acquire atomic (no full fence:
// only that one store has to be visible first). Returns whether this block took the last
// ticket, for every thread of the block.
__device__ __forceinline__ bool ce_ticket(double* __restrict__ partial, double group_loss,
                                          int group) {
    __shared__ double part[32];
    __shared__ unsigned ticket;
    const int groups = blockDim.x / group;
    if (threadIdx.x % group == 0) part[threadIdx.x / group] = group_loss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double b = 0.0;
        for (int w = 0; w < groups; ++w) b += part[w];
        partial[blockIdx.x] = b;
        unsigned t;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(t)
                     : "l"(&ce_blocks_done)
                     : "memory");
        ticket = t;
    }
    __syncthreads();
    return ticket == gridDim.x - 1;
}

// The last block: adds the partials in a fixed order (strided per thread, then a fixed tree),
// writes the mean and resets the counter. Every other block has released its partial before its
// ticket, and this block's ticket acquired them (thread 0, then the barrier in ce_ticket). No
// float atomics; the order depends on the launch shape only.
__device__ __forceinline__ void ce_total(const double* __restrict__ partial,
                                         float* __restrict__ loss, int rows) {
    __shared__ double part[32];
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < gridDim.x; i += blockDim.x) s += __ldcg(partial + i);
    s = warp_sum_d(s);
    const int lane = threadIdx.x & 31;
    if (lane == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = warp_sum_d(lane < int(blockDim.x >> 5) ? part[lane] : 0.0);
        if (threadIdx.x == 0) {
            *loss = float(s / double(rows));
            ce_blocks_done = 0;  // the launch's last access to it: the kernel's end orders it
        }
    }
}

// The gradient scale: AMP's loss scale over the number of rows.
__device__ __forceinline__ float ce_scale(const float* __restrict__ grad_scale, int rows) {
    return __fdiv_rn(*grad_scale, float(rows));
}

// The loss with the row in registers: row groups of `group` threads, 32 (a warp per row,
// blockDim.x / 32 rows at a time) or blockDim.x (a block per row). Block b takes the row sets
// b, b + gridDim.x, ... (a row set is blockDim.x / group consecutive rows), so a launch has a
// bounded number of blocks, each paying ce_ticket's barrier and atomic once. With PF, each
// thread loads its packs (as stored) and the label of its next row before working on the current
// one, so memory stays busy while the rows' reductions and exps run. Requires packs ≤ P·group.
template <typename L, int VEC, int P, bool PF>
__device__ __forceinline__ void ce_rows(const L* __restrict__ logits,
                                        const unsigned* __restrict__ labels,
                                        const float* __restrict__ grad_scale, void* dlogits,
                                        int out_f16, double* __restrict__ partial,
                                        float* __restrict__ loss, int rows, int classes,
                                        int group) {
    const int groups = blockDim.x / group, my_group = int(threadIdx.x) / group;
    const int t = threadIdx.x % group;
    const int packs = classes / VEC;
    const float scale = ce_scale(grad_scale, rows);
    const int sets = (rows + groups - 1) / groups;
    double group_loss = 0.0;
    Pack<L, VEC> ahead[P];  // PF: the next row's packs, as loaded
    unsigned ahead_label = 0;
    if (PF) {
        const int row = blockIdx.x * groups + my_group;
        if (blockIdx.x < sets && row < rows) {
            load_raw<L, VEC, P>(logits + size_t(row) * classes, group, t, packs, ahead);
            ahead_label = labels[row];
        }
    }
    // Every thread of the block runs the same sets; in block mode (groups == 1) every row of a
    // set exists, so the barriers inside the block reductions are block-uniform. Warp mode has
    // none inside.
    for (int set = blockIdx.x; set < sets; set += gridDim.x) {
        const int row = set * groups + my_group;
        if (row >= rows) continue;
        const size_t off = size_t(row) * classes;
        float v[P][VEC];
        unsigned label;
        if (PF) {
            label = ahead_label;
#pragma unroll
            for (int p = 0; p < P; ++p) {
#pragma unroll
                for (int k = 0; k < VEC; ++k) v[p][k] = to_float(ahead[p].v[k]);
            }
            const int next = row + gridDim.x * groups;
            if (next < rows) {
                load_raw<L, VEC, P>(logits + size_t(next) * classes, group, t, packs, ahead);
                ahead_label = labels[next];
            }
        } else {
            label = labels[row];
#pragma unroll
            for (int p = 0; p < P; ++p) {
                if (p * group + t < packs) load<VEC>(logits + off, p * group + t, v[p]);
            }
        }
        const bool ok = label < unsigned(classes);
        float m = -INFINITY;
#pragma unroll
        for (int p = 0; p < P; ++p) {
            if (p * group + t < packs) {
#pragma unroll
                for (int k = 0; k < VEC; ++k) m = fmaxf(m, v[p][k]);
            }
        }
        m = group == 32 ? warp_max(m) : block_max(m);
        const bool finite_m = isfinite(m);
        float c = 0.f, r = 0.f;
#pragma unroll
        for (int p = 0; p < P; ++p) {
            if (p * group + t < packs) {
#pragma unroll
                for (int k = 0; k < VEC; ++k) v[p][k] = exp_count_ce(v[p][k], m, finite_m, c, r);
            }
        }
        const float2 cr = group == 32 ? make_float2(warp_sum(c), warp_sum(r))
                                      : block_sum2(make_float2(c, r));
        const CeRow cw = ce_row(scale, ok, cr.x + cr.y);
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int i = p * group + t;
            if (i < packs) ce_out<VEC>(dlogits, off, i, v[p], cw.ps, out_f16);
        }
        if (ok && int(label / VEC) % group == t) {
            ce_label(logits + off, dlogits, off, label, m, cw, out_f16);
        }
        if (t == 0) group_loss += double(ce_loss(logits + off, label, ok, m, cr.x, cr.y));
    }
    if (ce_ticket(partial, group_loss, group)) ce_total(partial, loss, rows);
}

// The loss with a block per row too long for registers: packs [0, cached) are read once into
// dynamic shared memory (as f32), the next TAIL_FLOATS·blockDim.x floats into registers (thread t
// holds packs cached + u·T + t), and any beyond are read again (from L2) in the later passes.
// The cached and register copies are overwritten with e = exp(x − m), so exp runs once for them.
// Block b takes rows b, b + gridDim.x, ...; each thread only reads back the cache entries it
// wrote itself, so rows need no barrier between them beyond the reductions'.
template <typename L, int VEC>
__device__ __forceinline__ void ce_block(const L* __restrict__ logits,
                                         const unsigned* __restrict__ labels,
                                         const float* __restrict__ grad_scale, void* dlogits,
                                         int out_f16, double* __restrict__ partial,
                                         float* __restrict__ loss, int rows, int classes,
                                         int cached) {
    constexpr int TP = TAIL_FLOATS / VEC;
    const int T = blockDim.x, t = threadIdx.x, packs = classes / VEC;
    const int rest = cached + TP * T;
    const float scale = ce_scale(grad_scale, rows);
    float* cache = dyn_smem;
    double row_losses = 0.0;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const size_t off = size_t(row) * classes;
        const L* __restrict__ xr = logits + off;
        const unsigned label = labels[row];
        const bool ok = label < unsigned(classes);
        float tail[TP][VEC];
        float m = -INFINITY;
#pragma unroll
        for (int u = 0; u < TP; ++u) {
            const int i = cached + u * T + t;
            if (i < packs) {
                load<VEC>(xr, i, tail[u]);
#pragma unroll
                for (int k = 0; k < VEC; ++k) m = fmaxf(m, tail[u][k]);
            }
        }
        m = fmaxf(m, load_cache_max<L, VEC>(xr, cached, cached, cache));
        for (int i = rest + t; i < packs; i += T) {
            float v[VEC];
            load<VEC>(xr, i, v);
#pragma unroll
            for (int k = 0; k < VEC; ++k) m = fmaxf(m, v[k]);
        }
        m = block_max(m);
        const bool finite_m = isfinite(m);
        float c = 0.f, r = 0.f;
#pragma unroll 4
        for (int i = t; i < cached; i += T) {
            float v[VEC];
            load<VEC>(cache, i, v);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = exp_count_ce(v[k], m, finite_m, c, r);
            store<VEC>(cache, i, v);
        }
#pragma unroll
        for (int u = 0; u < TP; ++u) {
            if (cached + u * T + t < packs) {
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    tail[u][k] = exp_count_ce(tail[u][k], m, finite_m, c, r);
                }
            }
        }
        for (int i = rest + t; i < packs; i += T) {
            float v[VEC];
            load<VEC>(xr, i, v);
#pragma unroll
            for (int k = 0; k < VEC; ++k) exp_count_ce(v[k], m, finite_m, c, r);
        }
        const float2 cr = block_sum2(make_float2(c, r));
        const CeRow cw = ce_row(scale, ok, cr.x + cr.y);
#pragma unroll 4
        for (int i = t; i < cached; i += T) {
            float e[VEC];
            load<VEC>(cache, i, e);
            ce_out<VEC>(dlogits, off, i, e, cw.ps, out_f16);
        }
#pragma unroll
        for (int u = 0; u < TP; ++u) {
            const int i = cached + u * T + t;
            if (i < packs) ce_out<VEC>(dlogits, off, i, tail[u], cw.ps, out_f16);
        }
        for (int i = rest + t; i < packs; i += T) {
            float e[VEC];
            load<VEC>(xr, i, e);
#pragma unroll
            for (int k = 0; k < VEC; ++k) e[k] = exp_shifted(e[k], m);
            ce_out<VEC>(dlogits, off, i, e, cw.ps, out_f16);
        }
        // The thread that stored the label's pack: packs below `cached` and from `rest` on go
        // to threads by index mod T, the register packs by (index − cached) mod T.
        const int lp = int(label / VEC);
        const int owner = lp < cached ? lp % T : lp < rest ? (lp - cached) % T : (lp - rest) % T;
        if (ok && owner == t) ce_label(xr, dlogits, off, label, m, cw, out_f16);
        if (t == 0) row_losses += double(ce_loss(xr, label, ok, m, cr.x, cr.y));
    }
    if (ce_ticket(partial, row_losses, T)) ce_total(partial, loss, rows);
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

// Threads a softmax_ce_rows instance may be launched with: it keeps VEC·P floats of the row per
// thread. Mirrored by src/ops/softmax.rs (checked there against the PTX's .maxntid).
constexpr int ce_rows_bound(int vec, int p) { return vec * p <= 16 ? 1024 : vec * p <= 32 ? 512 : 256; }
// Resident blocks asked of the compiler: 2 keeps the 32-float instances at 64 registers (four
// 256-thread blocks per SM in warp mode), which the grid-stride loop would otherwise push to ~94.
constexpr int ce_rows_min_blocks(int vec, int p) { return vec * p <= 16 ? 1 : 2; }

#define SOFTMAX_CE_ROWS(T, L, V, P)                                                               \
    extern "C" __global__ void __launch_bounds__(ce_rows_bound(V, P), ce_rows_min_blocks(V, P))   \
        softmax_ce_rows_##T##_v##V##_p##P(const L* logits, const unsigned* labels,                \
                                          const float* grad_scale, void* dlogits, int out_f16,    \
                                          double* partial, float* loss, int rows, int classes,    \
                                          int group) {                                            \
        ce_rows<L, V, P, false>(logits, labels, grad_scale, dlogits, out_f16, partial, loss,      \
                                rows, classes, group);                                            \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(ce_rows_bound(V, P))                             \
        softmax_ce_rows_pf_##T##_v##V##_p##P(const L* logits, const unsigned* labels,             \
                                             const float* grad_scale, void* dlogits,              \
                                             int out_f16, double* partial, float* loss,           \
                                             int rows, int classes, int group) {                  \
        ce_rows<L, V, P, true>(logits, labels, grad_scale, dlogits, out_f16, partial, loss, rows, \
                               classes, group);                                                   \
    }
#define SOFTMAX_CE(T, L, V)                                                                       \
    SOFTMAX_CE_ROWS(T, L, V, 1)                                                                   \
    SOFTMAX_CE_ROWS(T, L, V, 2)                                                                   \
    SOFTMAX_CE_ROWS(T, L, V, 4)                                                                   \
    SOFTMAX_CE_ROWS(T, L, V, 8)                                                                   \
    extern "C" __global__ void __launch_bounds__(1024) softmax_ce_block_##T##_v##V(               \
        const L* logits, const unsigned* labels, const float* grad_scale, void* dlogits,          \
        int out_f16, double* partial, float* loss, int rows, int classes, int cached) {           \
        ce_block<L, V>(logits, labels, grad_scale, dlogits, out_f16, partial, loss, rows,         \
                       classes, cached);                                                          \
    }
SOFTMAX_CE(f32, float, 4)
SOFTMAX_CE(f32, float, 1)
SOFTMAX_CE(f16, __half, 8)
SOFTMAX_CE(f16, __half, 4)
SOFTMAX_CE(f16, __half, 1)
