// unscale.cu — multi-tensor unscale + inf/NaN check of AMP gradients, one launch for a model.
//
// What: for every element v of every gradient tensor: found_inf = 1.0f if v is inf or NaN;
//   out = v if inv == 1.0f, else v · inv (one f32 multiply), where inv = f32(1.0 / f64(*scale))
//   is computed on the device from the loss scale in device memory (PyTorch's
//   `scale.double().reciprocal().float()`). Every element is written back, except in place at
//   inv == 1.0f where out is v already (only read: 4 bytes per element); nothing stops early;
//   found_inf is never cleared here (the caller zeroes it once per step). When `mask` is not
//   null, a block that saw an inf/NaN also sets its tensor's bit (the table's `bit`: the
//   tensor's index in the caller's list) in the two-word mask: which gradients overflowed, in
//   the same pass (the overflow locator; a clean step never touches it). A tensor checked by
//   the kernel that wrote it (the GEMMs' weight gradients at scale 1) is not read: block 0
//   folds that kernel's flag word in (fold_checked). Bit-exact with
//   src/cpu/unscale.rs except NaN payloads under a multiply (the GPU returns the canonical NaN).
//   unscale_f32: in place on f32 gradients. unscale_f16_to_f32: reads f16 gradients and writes
//   f32 master gradients in the same pass. A tensor of the f32 table may come as K-split GEMM
//   partials (splits > 1): they are summed in slice order first, as the GEMM's own reduce would,
//   which saves the training step that reduce's launch. unscale_f32_record: unscale_f32, then the block that
//   takes the last ticket (an acquire-release atomic on a counter the host keeps zero between
//   launches; the block resets it) runs a training step's record and scale update
//   (step_record.cuh, as scaler.cu's record_step): every block read the scale at its start and
//   stored its flag before its ticket, so the record sees the step's final found_inf and the
//   scale it ran with, and the update never races a reader. The optimizer that follows reads only
//   found_inf. One launch instead of two.
// Launch: an argument table (by value, ≤ 4 KB of kernel parameters) of up to 96 tensors, their
//   lengths and a prefix sum of `chunk`-element chunks; one 256-thread block per chunk, which
//   finds its tensor by binary search. More tensors take more launches (src/ops/unscale.rs). The
//   host picks chunk (a power of two, 1024 to 8192) for about four blocks per SM: with a fixed
//   8192 the MLP's 407 k gradients made 50 blocks of eight dependent round trips per thread
//   (~8 µs); at 1024, 400 blocks of one 16-byte access per thread.
// Roofline: f32 in place moves 8 bytes per element (4 at scale 1), f16 → f32 6 bytes; at
//   ~2.9 TB/s (device copy on the H100) the 784→512→10 MLP's 407 k gradients take ~1.1 µs, so
//   launch overhead dominates there; at 64 M elements the floor is ~180 µs (~90 at scale 1).
#include "common.cuh"
#include "pdl.cuh"
#include "step_record.cuh"

namespace unscale_detail {

constexpr int MAX_TENSORS = 96;
constexpr int THREADS = 256;

// Mirrors src/ops/unscale.rs's TensorTable (#[repr(C)]).
struct TensorTable {
    unsigned long long src[MAX_TENSORS];
    unsigned long long dst[MAX_TENSORS];
    long long len[MAX_TENSORS];
    int chunk_start[MAX_TENSORS + 1];  // chunk_start[t] = chunks of tensors before t
    int count;
    // K-split partials summed on the way (f32 sources only): src holds splits[t] slices of len
    // elements, added in slice order from 0, as gemm.cu's gemm_splitk_reduce adds them, so the
    // result is that reduce's followed by this unscale, bit for bit. 1: src is the gradient.
    // 0: checked by the kernel that wrote it; src is its flag word (fold_checked), no chunks.
    int splits[MAX_TENSORS];
    // The tensor's bit in the caller's non-finite mask (its index in the caller's list, 63 for
    // index 63 and later).
    int bit[MAX_TENSORS];
    // This launch's first block's slot in the norm partials (the blocks of earlier launches of
    // the same list come first).
    int block_base;
    int unused;  // no tail padding: the host copies the struct byte for byte
};

// A Neumaier-compensated f64 sum (src/cpu/clip.rs's SquareSum, operation for operation).
struct SquareSum {
    double hi, lo;
};

__device__ __forceinline__ void sq_add(SquareSum& s, double v) {
    const double t = __dadd_rn(s.hi, v);
    const double e = fabs(s.hi) >= fabs(v) ? __dadd_rn(__dsub_rn(s.hi, t), v)
                                           : __dadd_rn(__dsub_rn(v, t), s.hi);
    s.lo = __dadd_rn(s.lo, e);
    s.hi = t;
}

__device__ __forceinline__ void sq_merge(SquareSum& a, const SquareSum& b) {
    sq_add(a, b.hi);
    a.lo = __dadd_rn(a.lo, b.lo);
}

// The block's sum in thread 0 (a fixed tree: deterministic). Every thread must call it.
__device__ __forceinline__ SquareSum block_sum(SquareSum s) {
    __shared__ SquareSum warps[THREADS / 32];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const SquareSum o{__shfl_down_sync(0xffffffffu, s.hi, off),
                          __shfl_down_sync(0xffffffffu, s.lo, off)};
        sq_merge(s, o);
    }
    if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < THREADS / 32; ++w) sq_merge(s, warps[w]);
    }
    __syncthreads();
    return s;
}

// clip_grad_norm_'s factor from the partial sums of every block of the list, in slot order
// (all threads of the finishing block): clip[0] = min(f32(f32(1 / (n + 1e-6)) · max_norm), 1),
// clip[1] = n = f32(sqrt(Σ)), as src/cpu/clip.rs. The partials were written by other blocks
// before their ticket: read through L2.
__device__ __forceinline__ void finish_norm(const SquareSum* partials, int count, float max_norm,
                                            float* clip) {
    SquareSum s{0.0, 0.0};
    for (int i = threadIdx.x; i < count; i += THREADS) {
        const SquareSum p{__ldcg(&partials[i].hi), __ldcg(&partials[i].lo)};
        sq_merge(s, p);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) {
        const float n = __double2float_rn(__dsqrt_rn(__dadd_rn(s.hi, s.lo)));
        const float coef = __fmul_rn(__frcp_rn(__fadd_rn(n, 1e-6f)), max_norm);
        clip[0] = fminf(coef, 1.f);
        clip[1] = n;
    }
}

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, long long i) { return __half2float(p[i]); }

__device__ __forceinline__ float apply(float v, float inv, bool& found) {
    found |= !isfinite(v);
    return inv == 1.f ? v : v * inv;
}

// The tensors of the table checked by the kernels that wrote them (splits 0; the host passes
// them only at scale 1 without a norm, where the unscale would only have read them): src is that
// kernel's flag word, non-zero when it stored an inf or NaN. Block 0 folds each word into
// found_inf and the mask, as reading the tensor would have, and zeroes it for the next step
// (its writer runs again only after this launch).
__device__ __forceinline__ void fold_checked(const TensorTable& t, float* found_inf, unsigned* mask) {
    for (int i = threadIdx.x; i < t.count; i += THREADS) {
        if (t.splits[i] != 0) continue;
        unsigned* word = reinterpret_cast<unsigned*>(t.src[i]);
        if (*word != 0) {
            *found_inf = 1.f;
            if (mask) atomicOr(mask + (t.bit[i] >> 5), 1u << (t.bit[i] & 31));
            *word = 0;
        }
    }
}

template <typename Src>
__device__ __forceinline__ void unscale(const TensorTable& t, const float* scale, float* found_inf,
                                        unsigned* mask, SquareSum* norm, long long chunk) {
    if (blockIdx.x == 0) fold_checked(t, found_inf, mask);
    // A launch whose tensors were all checked already has one block and no chunk.
    if (int(blockIdx.x) >= t.chunk_start[t.count]) return;
    // The tensor this block's chunk belongs to: the last t with chunk_start[t] <= blockIdx.x
    // (a checked tensor has no chunks: its chunk_start is the next tensor's).
    int lo = 0, hi = t.count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (t.chunk_start[mid] <= int(blockIdx.x)) lo = mid; else hi = mid - 1;
    }
    const Src* src = reinterpret_cast<const Src*>(t.src[lo]);
    float* dst = reinterpret_cast<float*>(t.dst[lo]);
    const long long begin = (long long)(blockIdx.x - t.chunk_start[lo]) * chunk;
    const long long end = min(t.len[lo], begin + chunk);
    const float inv = float(1.0 / double(*scale));
    bool found = false;
    // The sum of squares of the unscaled values for clip_grad_norm_ (norm not null).
    SquareSum sq{0.0, 0.0};
    // Four elements per thread per step (16-byte f32 / 8-byte f16 accesses) when both tensors
    // are aligned; chunks start at multiples of 8192 elements, so alignment carries over. The
    // last (len mod 4) elements, or every element of an unaligned tensor, go one by one.
    const int splits = t.splits[lo];
    const long long len = t.len[lo];
    const bool vec = (t.src[lo] % (4 * sizeof(Src)) == 0) && (t.dst[lo] % 16 == 0) &&
                     (splits == 1 || len % 4 == 0);
    const long long full = vec ? begin + ((end - begin) & ~3LL) : begin;
    // In place at scale 1 (a static scale of 1: bf16 and FP8 training) the values are unchanged:
    // only the check reads them, and the half of the traffic the stores were is saved.
    const bool store = !(inv == 1.f && splits == 1 && t.src[lo] == t.dst[lo]);
    for (long long i = begin + 4 * threadIdx.x; i < full; i += 4 * THREADS) {
        float v[4];
        if (splits > 1) {
            // f32 partials (the host passes splits > 1 only for f32 sources).
            const float* p = reinterpret_cast<const float*>(src);
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int s = 0; s < splits; ++s) {
                const float4 x = *reinterpret_cast<const float4*>(p + s * len + i);
                a.x += x.x;
                a.y += x.y;
                a.z += x.z;
                a.w += x.w;
            }
            v[0] = a.x;
            v[1] = a.y;
            v[2] = a.z;
            v[3] = a.w;
        } else if (sizeof(Src) == 4) {
            const float4 x = *reinterpret_cast<const float4*>(src + i);
            v[0] = x.x;
            v[1] = x.y;
            v[2] = x.z;
            v[3] = x.w;
        } else {
            const uint2 raw = *reinterpret_cast<const uint2*>(src + i);
            const __half2* h = reinterpret_cast<const __half2*>(&raw);
            const float2 a = __half22float2(h[0]), b = __half22float2(h[1]);
            v[0] = a.x;
            v[1] = a.y;
            v[2] = b.x;
            v[3] = b.y;
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) v[q] = apply(v[q], inv, found);
        if (store) *reinterpret_cast<float4*>(dst + i) = make_float4(v[0], v[1], v[2], v[3]);
        if (norm) {
#pragma unroll
            for (int q = 0; q < 4; ++q) sq_add(sq, double(v[q]) * double(v[q]));
        }
    }
    for (long long j = full + threadIdx.x; j < end; j += THREADS) {
        float v = 0.f;
        if (splits > 1) {
            for (int s = 0; s < splits; ++s) v += load(src, s * len + j);
        } else {
            v = load(src, j);
        }
        const float u = apply(v, inv, found);
        if (store) dst[j] = u;
        if (norm) sq_add(sq, double(u) * double(u));
    }
    if (norm) {
        sq = block_sum(sq);
        if (threadIdx.x == 0) norm[t.block_base + blockIdx.x] = sq;
    }
    // Racy but benign: every writer stores the same 1.0f (PyTorch's kernel does the same). The
    // tensor's bit in the mask (null: not wanted) costs nothing on a clean step.
    if (__syncthreads_or(found) && threadIdx.x == 0) {
        *found_inf = 1.f;
        if (mask) atomicOr(mask + (t.bit[lo] >> 5), 1u << (t.bit[lo] & 31));
    }
}

// The ticket round of a list's last launch: true in every thread of the block that arrives last
// (its blocks' stores, fenced before their tickets, are then visible to it); that block resets
// the ticket.
__device__ __forceinline__ bool last_block(unsigned* ticket) {
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned t;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(t)
                     : "l"(ticket)
                     : "memory");
        last = t == gridDim.x - 1;
        if (last) *ticket = 0;
    }
    __syncthreads();
    return last;
}

}  // namespace unscale_detail

using namespace unscale_detail;

// norm: null, or the list's partial sums of squares (one slot per block of all its launches),
// for clip_grad_norm_.
extern "C" __global__ void __launch_bounds__(THREADS)
    unscale_f32(TensorTable table, const float* scale, float* found_inf, unsigned* mask,
                SquareSum* norm, long long chunk) {
    pdl_start();
    unscale<float>(table, scale, found_inf, mask, norm, chunk);
}

extern "C" __global__ void __launch_bounds__(THREADS)
    unscale_f16_to_f32(TensorTable table, const float* scale, float* found_inf, unsigned* mask,
                       SquareSum* norm, long long chunk) {
    pdl_start();
    unscale<__half>(table, scale, found_inf, mask, norm, chunk);
}

// unscale_f32 as a list's last launch with clip_grad_norm_: the last block adds the `count`
// partials and writes the clip factor and the norm to clip[0..2] (finish_norm).
extern "C" __global__ void __launch_bounds__(THREADS)
    unscale_f32_norm(TensorTable table, const float* scale, float* found_inf, unsigned* mask,
                     SquareSum* norm, long long chunk, unsigned* ticket, int count,
                     float max_norm, float* clip) {
    pdl_start();
    unscale<float>(table, scale, found_inf, mask, norm, chunk);
    if (!last_block(ticket)) return;
    finish_norm(norm, count, max_norm, clip);
}

// The training step's last unscale launch: the last block finishes the norm (when `norm` is not
// null, as unscale_f32_norm), then records the step and updates the scale (step_record.cuh),
// the record holding the norm (clip[1]; NaN without clipping).
extern "C" __global__ void __launch_bounds__(THREADS)
    unscale_f32_record(TensorTable table, float* scale, float* found_inf, unsigned* mask,
                       SquareSum* norm, long long chunk, unsigned* ticket, int count,
                       float max_norm, float* clip, const float* loss, float* records,
                       unsigned* cursor, unsigned capacity, unsigned advance, int dynamic,
                       int* tracker, double growth, double backoff, int interval, int has_min,
                       float min_scale, int has_max, float max_scale) {
    pdl_start();
    unscale<float>(table, scale, found_inf, mask, norm, chunk);
    if (!last_block(ticket)) return;
    if (norm) finish_norm(norm, count, max_norm, clip);
    if (threadIdx.x != 0) return;
    step_record::record(loss, scale, found_inf, mask, norm ? clip + 1 : nullptr, records, cursor,
                        capacity, advance, dynamic, tracker, growth, backoff, interval, has_min,
                        min_scale, has_max, max_scale);
}
