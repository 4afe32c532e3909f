// softmax_common.cuh — device code shared by the softmax, cross-entropy and cluster (sm_90)
// modules: packed loads and stores, warp and block reductions, the loss's per-row arithmetic
// (exp_shifted, the c + r split, the label's gradient, the row loss) and the one-launch loss
// total (per-block f64 partials, an acquire-release ticket, the last block's fixed-order sum).
// The functions and their numerics are documented in softmax.cu's and cross_entropy.cu's headers.
// Logits are f32, f16 or bf16 (widened exactly); the loss's gradients are written as f32, f16 or
// bf16 by an output-kind code (OUT_F32, OUT_F16, OUT_BF16).
#pragma once

#include "common.cuh"

#include <cuda_bf16.h>

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

template <int VEC>
__device__ __forceinline__ void load(const __nv_bfloat16* __restrict__ row, int i,
                                     float (&v)[VEC]) {
    const Pack<__nv_bfloat16, VEC> pk = reinterpret_cast<const Pack<__nv_bfloat16, VEC>*>(row)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = __bfloat162float(pk.v[k]);
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
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <int VEC>
__device__ __forceinline__ void store(float* row, int i, const float (&v)[VEC]) {
    Pack<float, VEC> pk;
#pragma unroll
    for (int k = 0; k < VEC; ++k) pk.v[k] = v[k];
    reinterpret_cast<Pack<float, VEC>*>(row)[i] = pk;
}

// The loss's output-kind codes (`Grad::OUT_KIND` in src/ops/cross_entropy/mod.rs): the type the
// gradients are stored in.
constexpr int OUT_F32 = 0;
constexpr int OUT_F16 = 1;
constexpr int OUT_BF16 = 2;

// One gradient as stored for an out_kind: f16 (round to nearest even, overflow to ±inf), bf16
// (round to nearest even, `half`'s bf16::from_f32 bit for bit, NaN included) or f32.
__device__ __forceinline__ void store_one(void* out, size_t i, float g, int out_kind) {
    if (out_kind == OUT_F16) {
        static_cast<__half*>(out)[i] = __float2half_rn(g);
    } else if (out_kind == OUT_BF16) {
        static_cast<uint16_t*>(out)[i] = ampkit::f32_to_bf16_bits_exact(g);
    } else {
        static_cast<float*>(out)[i] = g;
    }
}

// dlogits row `off`, pack i, as store_one stores each element.
template <int VEC>
__device__ __forceinline__ void store_out(void* out, size_t off, int i, const float (&v)[VEC],
                                          int out_kind) {
    if (out_kind == OUT_F16) {
        Pack<__half, VEC> pk;
#pragma unroll
        for (int k = 0; k < VEC; ++k) pk.v[k] = __float2half_rn(v[k]);
        reinterpret_cast<Pack<__half, VEC>*>(static_cast<__half*>(out) + off)[i] = pk;
    } else if (out_kind == OUT_BF16) {
        Pack<uint16_t, VEC> pk;
#pragma unroll
        for (int k = 0; k < VEC; ++k) pk.v[k] = ampkit::f32_to_bf16_bits_exact(v[k]);
        reinterpret_cast<Pack<uint16_t, VEC>*>(static_cast<uint16_t*>(out) + off)[i] = pk;
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

// Floats per thread that the long-row kernels keep in registers past the shared-memory cache:
// packs [cached, cached + TAIL_FLOATS/VEC·T) live in registers (thread t holds cached + u·T + t),
// so a 65 536-float row is read once with 1024 threads on a 227 KB device.
constexpr int TAIL_FLOATS = 8;

// y_j·(dy_j − dot), rounded at each step.
__device__ __forceinline__ float softmax_dx(float y, float dy, float dot) {
    return __fmul_rn(y, __fsub_rn(dy, dot));
}

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

// exp(x − m) for the loss: the subtraction rounded first (so x = m gives exactly 1), then the
// SFU's ex2.approx.ftz.f32 of (x − m)·log2(e): ≤ 2 ulp, 2^±0 = 1, 2^−inf = +0, NaN stays NaN.
// Results below 2^−126 flush to 0 (see cross_entropy.cu's header for why that is harmless); the
// flush saves the three instructions that keep subnormal results, leaving three in all where
// expf takes about ten.
__device__ __forceinline__ float exp_shifted(float x, float m) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(__fmul_rn(__fsub_rn(x, m), 1.4426950408889634f)));
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
                                       float ps, int out_kind) {
    float o[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) o[k] = __fmul_rn(e[k], ps);
    store_out<VEC>(dlogits, off, i, o, out_kind);
}

// The label's gradient, (e/s − 1)·scale with the exact quotient (the one element where the
// subtraction cancels), written over what ce_out stored there. Called by the thread that stored
// the label's pack, after it, so program order makes this the value that stays. e is computed
// again from the logit, with the same operations as the pass that summed it: the same bits.
template <typename L>
__device__ __forceinline__ void ce_label(const L* __restrict__ row, void* dlogits, size_t off,
                                         unsigned label, float m, const CeRow& c, int out_kind) {
    const float e = exp_shifted(to_float(row[label]), m);
    const float g = __fmul_rn(__fsub_rn(__fdiv_rn(e, c.s), 1.f), c.scale);
    store_one(dlogits, off + label, g, out_kind);
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

// The loss kernels' `partial` buffer: its first 8 bytes are the ticket counter (the blocks of the
// current launch that have taken their ticket), the partial sums follow. The buffer belongs to one
// ampkit Gpu handle (one stream), whose loss launches therefore run one after another: the host
// allocates it zeroed, and the last block of each launch puts the counter back to zero, so every
// launch (and graph replay) starts from zero. (A module-wide __device__ counter would be shared by
// launches on every stream of the context, and two concurrent launches would take each other's
// tickets.)
__device__ __forceinline__ unsigned* ce_counter(double* partial) {
    return reinterpret_cast<unsigned*>(partial);
}

// Called by every thread of the block at its end (each row group's first thread holds the f64
// sum of its rows' losses, in row order; the others 0): the block adds them in group order,
// writes its partial (slot index, after the counter), and takes a ticket with a release-acquire
// atomic (no full fence: only that one store has to be visible first). Returns whether this block
// took the last of `count` tickets, for every thread of the block. index and count default to the
// grid's (one partial per block); the cluster kernels pass one per cluster.
__device__ __forceinline__ bool ce_ticket(double* __restrict__ partial, double group_loss,
                                          int group, unsigned index = blockIdx.x,
                                          unsigned count = gridDim.x) {
    __shared__ double part[32];
    const int groups = blockDim.x / group;
    if (threadIdx.x % group == 0) part[threadIdx.x / group] = group_loss;
    __syncthreads();
    int last = 0;
    if (threadIdx.x == 0) {
        double b = 0.0;
        for (int w = 0; w < groups; ++w) b += part[w];
        partial[1 + index] = b;
        unsigned t;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(t)
                     : "l"(ce_counter(partial))
                     : "memory");
        last = t == count - 1;
    }
    // The verdict goes to every thread through the barrier's own reduction, not a shared
    // variable, so nothing in shared memory is written between this block's two barriers.
    return __syncthreads_or(last);
}

// The last block: adds the partials in a fixed order (strided per thread, then a fixed tree),
// writes the mean and resets the counter. Every other block has released its partial before its
// ticket, and this block's ticket acquired them (thread 0, then the barrier in ce_ticket). No
// float atomics; the order depends on the launch shape only.
__device__ __forceinline__ void ce_total(double* __restrict__ partial, float* __restrict__ loss,
                                         int rows, unsigned count = gridDim.x) {
    __shared__ double part[32];
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < count; i += blockDim.x) s += __ldcg(partial + 1 + i);
    s = warp_sum_d(s);
    const int lane = threadIdx.x & 31;
    if (lane == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = warp_sum_d(lane < int(blockDim.x >> 5) ? part[lane] : 0.0);
        if (threadIdx.x == 0) {
            *loss = float(s / double(rows));
            *ce_counter(partial) = 0;  // the launch's last access to it: the kernel's end orders it
        }
    }
}

// A row held in registers: this thread's packs i = p·stride + t for p < P, those with i < packs
// present (the row-in-registers loss kernels: stride = the row group's or block's threads).
template <typename L, int VEC, int P>
__device__ __forceinline__ void load_packs(const L* __restrict__ row, int stride, int t, int packs,
                                           float (&v)[P][VEC]) {
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * stride + t < packs) load<VEC>(row, p * stride + t, v[p]);
    }
}

// The maximum of the present packs (−inf if none).
template <int VEC, int P>
__device__ __forceinline__ float packs_max(const float (&v)[P][VEC], int stride, int t,
                                           int packs) {
    float m = -INFINITY;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * stride + t < packs) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) m = fmaxf(m, v[p][k]);
        }
    }
    return m;
}

// e = exp(x − m) in place for the present packs, added to c (a finite max) or r (the rest).
template <int VEC, int P>
__device__ __forceinline__ void packs_exp_count(float (&v)[P][VEC], int stride, int t, int packs,
                                                float m, float& c, float& r) {
    const bool finite_m = isfinite(m);
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * stride + t < packs) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[p][k] = exp_count_ce(v[p][k], m, finite_m, c, r);
        }
    }
}

// dlogits of the present packs: e·ps (the row at element `off` of dlogits).
template <int VEC, int P>
__device__ __forceinline__ void packs_out(void* dlogits, size_t off, const float (&v)[P][VEC],
                                          int stride, int t, int packs, float ps, int out_kind) {
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int i = p * stride + t;
        if (i < packs) ce_out<VEC>(dlogits, off, i, v[p], ps, out_kind);
    }
}

// The gradient scale: AMP's loss scale over the number of rows.
__device__ __forceinline__ float ce_scale(const float* __restrict__ grad_scale, int rows) {
    return __fdiv_rn(*grad_scale, float(rows));
}

}  // namespace softmax_detail
