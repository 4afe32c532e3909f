// optim.cu — fused, skip-aware optimizer step on f32 master weights: Adam, AdamW, SGD.
//
// What: one launch updates every parameter tensor of a model (up to 74 per launch; more take
//   more launches, src/ops/optim/). Per element, exactly src/cpu/optim/'s f32 formulas, every
//   operation an explicit round-to-nearest intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn,
//   __fsqrt_rn) so nvcc cannot contract a multiply-add the reference does not: bit-exact with
//   it (NaN payloads aside), writing the master, the moments and the 16-bit working copy (none
//   where its pointer is null: a tensor whose users read the master), f16 or
//   bf16 by the table's copy_kind (round to nearest even; NaN keeps sign and top payload bits, as
//   the `half` crate's f16::from_f32 / bf16::from_f32 do).
// Entry points: optim_adam, optim_sgd (one step; Adam/AdamW or SGD), optim_adam_bias_terms (the
//   device's bias corrections, for tests). The copy type is a per-launch code, not a separate
//   entry: each kernel branches once, uniformly, into an instantiation for f16 or bf16 copies.
// Device-resident state (so a step needs no host synchronisation and a CUDA graph can replay it):
//   counters[STEP] real steps taken, counters[MOMENTUM_STARTED] SGD's "buffer filled" flag,
//   counters[BLOCKS_DONE] scratch for the end-of-step handshake; found_inf is the f32 flag
//   ops::unscale sets. If *found_inf != 0 every block returns before writing anything: masters,
//   moments, halves and counters keep their bits.
// Bias correction on the device: t = counters[STEP] + 1; bc = 1 − β^t in f64, where β^t comes
//   from binary powering in double-double (≈2^-100 relative), so the f64 value is the correctly
//   rounded one in all but near-tie cases — what the host's libm pow returns — and the final
//   f32 roundings f32(lr / bc1), f32(sqrt(bc2)) equal AdamCoefficients::new's (checked on the CPU
//   over millions of (β, t) pairs, and on the GPU by tests/optim_gpu.rs).
// The step advance: every block's thread 0 reads the counters, then (in the last launch of a
//   step, after its block's updates) bumps BLOCKS_DONE; the block that brings it to gridDim.x has seen every other block's
//   read, so it alone writes STEP + 1 (and MOMENTUM_STARTED), and resets BLOCKS_DONE. Fences on
//   both sides order the reads before the writes. Earlier launches of the same step finished
//   before the last one started (one stream), so every block of the step saw the same t.
// Launch: argument table by value (74 tensors and the copy kind: 3864 B, + 140 B of other
//   arguments = 4004 B of the 4 KB parameter limit); one 256-thread block per `chunk` elements
//   (a multiple of 1024 the host picks from the step's size); the block finds its tensor by
//   binary search; 16-byte accesses when every pointer of the tensor is aligned. Each thread
//   loads its first vector before the counters arrive, so the f64 prologue (~1 µs) overlaps the
//   first memory round trip.
// Roofline: Adam reads p, g, m, v and writes p, m, v, half: 30 B per element; SGD with momentum
//   22 B; plain SGD 14 B (either copy type: both are 2 bytes). At ~2.9 TB/s (device copy, H100)
//   2^25 Adam parameters take ~350 µs; the default MLP's 407 k take ~4 µs, under the launch
//   overhead.
#include "common.cuh"
#include "pdl.cuh"

namespace optim_detail {

constexpr int MAX_TENSORS = 74;
constexpr int THREADS = 256;

// Indices into the device counters (COUNTER_* in src/ops/optim/mod.rs).
constexpr int STEP = 0;
constexpr int MOMENTUM_STARTED = 1;
constexpr int BLOCKS_DONE = 2;

// Mirrors src/ops/optim/args.rs's TensorTable (#[repr(C)]). exp_avg: Adam's m or SGD's momentum
// buffer, exp_avg_sq: Adam's v; 0 where unused.
struct TensorTable {
    unsigned long long master[MAX_TENSORS];
    unsigned long long grad[MAX_TENSORS];
    unsigned long long half[MAX_TENSORS];
    unsigned long long exp_avg[MAX_TENSORS];
    unsigned long long exp_avg_sq[MAX_TENSORS];
    long long len[MAX_TENSORS];
    int chunk_start[MAX_TENSORS + 1];  // chunk_start[t] = chunks of tensors before t
    int count;
    int copy_kind;  // the working copies' type, for every tensor of the launch: COPY_F16, COPY_BF16
    int unused;
};

// TensorTable::copy_kind (HalfCopy's device code in src/cpu/optim/half_copy.rs).
constexpr int COPY_F16 = 0;
constexpr int COPY_BF16 = 1;
static_assert(COPY_F16 == 0 && COPY_BF16 == 1, "the device codes of HalfCopy (Rust)");

// Mirrors AdamHyper: the f64 scalars the bias correction needs, and the step-independent f32
// coefficients the host takes from AdamCoefficients::new.
struct AdamHyper {
    double lr, beta1, beta2;
    float beta1_f, one_minus_beta1, beta2_f, one_minus_beta2, eps, l2, decay, unused;
};

// Mirrors SgdHyper (SgdCoefficients::new without first_step, which lives on the device).
struct SgdHyper {
    float lr, momentum, one_minus_dampening, weight_decay;
    int nesterov, unused;
};

// Mirrors GradClip in src/ops/optim/args.rs: gradient clipping applied to each gradient as it is
// loaded (src/cpu/clip.rs): g · *coef when coef is not null (clip_grad_norm_'s factor, written by
// the unscale pass), then clamped to [−value, value] when value > 0 (clip_grad_value_). The
// gradient buffers themselves are not changed.
struct GradClip {
    const float* coef;
    float value;
    int unused;
};

// Mirrors Schedule in src/ops/optim/args.rs: the learning-rate schedule of src/cpu/schedule.rs,
// evaluated here from the device step counter so that a skipped step does not advance it.
// kind 0: constant (the hyperparameters' own lr, bit for bit as without a schedule);
// 1: cosine from base_lr to min_lr over `total` real steps. `decoupled_wd` is AdamW's weight
// decay (0 otherwise): its decay factor f32(1 − lr·wd) follows the scheduled lr.
struct Schedule {
    double base_lr, min_lr, decoupled_wd;
    unsigned long long total;
    int kind, unused;
};

// LrSchedule::lr_at(base, t) in IEEE f64 operations (no contraction), as the host computes it.
__device__ __forceinline__ double scheduled_lr(const Schedule& s, unsigned long long t) {
    if (s.kind == 0) return s.base_lr;
    const unsigned long long total = s.total > 0 ? s.total : 1;
    const double frac = __ddiv_rn(double(t < s.total ? t : s.total), double(total));
    const double c = cos(__dmul_rn(3.141592653589793, frac));
    return __dadd_rn(s.min_lr,
                     __ddiv_rn(__dmul_rn(__dsub_rn(s.base_lr, s.min_lr), __dadd_rn(1.0, c)), 2.0));
}

// ---- f64 bias correction -------------------------------------------------------------------

struct DD {
    double hi, lo;
};

// Double-double product (Dekker/FMA); explicit intrinsics so nothing is re-associated or fused.
__device__ __forceinline__ DD dd_mul(DD a, DD b) {
    const double p = __dmul_rn(a.hi, b.hi);
    const double err = __fma_rn(a.hi, b.hi, -p);
    const double e = __dadd_rn(err, __dadd_rn(__dmul_rn(a.hi, b.lo), __dmul_rn(a.lo, b.hi)));
    const double s = __dadd_rn(p, e);
    return DD{s, __dsub_rn(e, __dsub_rn(s, p))};
}

// b^t for integer t ≥ 0 by binary powering in double-double, rounded once to f64.
__device__ __forceinline__ double pow_int(double b, unsigned long long t) {
    DD r{1.0, 0.0}, x{b, 0.0};
    while (t != 0) {
        if (t & 1) r = dd_mul(r, x);
        t >>= 1;
        if (t != 0) x = dd_mul(x, x);
    }
    return __dadd_rn(r.hi, r.lo);
}

// f32(lr / (1 − β1^t)) and f32(sqrt(1 − β2^t)), formed in f64 as AdamCoefficients::new does.
__device__ __forceinline__ float2 adam_bias_terms(const AdamHyper& h, double lr,
                                                 unsigned long long t) {
    const double bc1 = __dsub_rn(1.0, pow_int(h.beta1, t));
    const double bc2 = __dsub_rn(1.0, pow_int(h.beta2, t));
    return make_float2(__double2float_rn(__ddiv_rn(lr, bc1)),
                       __double2float_rn(__dsqrt_rn(bc2)));
}

// ---- per-element math (src/cpu/optim/update.rs, operation for operation) -------------------

// The working copy's bits from an f32, by copy type. F16: like half::f16::from_f32, round to
// nearest even; NaN keeps sign and top payload bits with the quiet bit set (cvt.rn.f16.f32 may
// return a canonical NaN instead). Bf16: like half::bf16::from_f32 (common.cuh).
struct CopyF16 {
    static __device__ __forceinline__ uint16_t bits(float x) {
        const uint32_t b = __float_as_uint(x);
        if ((b & 0x7FFFFFFFu) > 0x7F800000u) {
            return uint16_t(((b >> 16) & 0x8000u) | 0x7E00u | ((b >> 13) & 0x03FFu));
        }
        return __half_as_ushort(__float2half_rn(x));
    }
};
struct CopyBf16 {
    static __device__ __forceinline__ uint16_t bits(float x) {
        return ampkit::f32_to_bf16_bits_exact(x);
    }
};

// Registers for W consecutive elements of one tensor.
template <int W>
struct Regs {
    float p[W], g[W], m[W], v[W];
};

// The pointers of the tensor a block works on.
struct Ptrs {
    float* master;
    const float* grad;
    uint16_t* half;  // the working copy's bits (f16 or bf16: the Copy type of the instantiation)
    float* m;
    float* v;
};

template <int W>
__device__ __forceinline__ void load_f32(const float* src, long long i, float (&dst)[W]) {
    if constexpr (W == 4) {
        const float4 x = *reinterpret_cast<const float4*>(src + i);
        dst[0] = x.x;
        dst[1] = x.y;
        dst[2] = x.z;
        dst[3] = x.w;
    } else {
        dst[0] = src[i];
    }
}

template <int W>
__device__ __forceinline__ void store_f32(float* dst, long long i, const float (&src)[W]) {
    if constexpr (W == 4) {
        *reinterpret_cast<float4*>(dst + i) = make_float4(src[0], src[1], src[2], src[3]);
    } else {
        dst[i] = src[0];
    }
}

// dst is null for a tensor without a working copy (uniform per tensor).
template <class Copy, int W>
__device__ __forceinline__ void store_half(uint16_t* dst, long long i, const float (&src)[W]) {
    if (dst == nullptr) return;
    if constexpr (W == 4) {
        uint16_t h[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) h[q] = Copy::bits(src[q]);
        uint2 raw;
        raw.x = uint32_t(h[0]) | (uint32_t(h[1]) << 16);
        raw.y = uint32_t(h[2]) | (uint32_t(h[3]) << 16);
        *reinterpret_cast<uint2*>(dst + i) = raw;
    } else {
        dst[i] = Copy::bits(src[0]);
    }
}

struct Adam {
    using Hyper = AdamHyper;
    struct Coef {
        float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2, decay, step_size, bc2_sqrt;
    };

    static __device__ __forceinline__ Coef coefficients(const Hyper& h, const Schedule& s,
                                                        unsigned long long step,
                                                        bool /*momentum_started*/) {
        const double lr = s.kind == 0 ? h.lr : scheduled_lr(s, step);
        const float2 bias = adam_bias_terms(h, lr, step + 1);
        const float decay = s.kind != 0 && s.decoupled_wd != 0.0
                                ? __double2float_rn(__dsub_rn(1.0, __dmul_rn(lr, s.decoupled_wd)))
                                : h.decay;
        return Coef{h.beta1_f, h.one_minus_beta1, h.beta2_f, h.one_minus_beta2, h.eps,
                    h.l2,      decay,             bias.x,    bias.y};
    }
    static __device__ __forceinline__ bool starts_momentum(const Hyper&) { return false; }

    template <int W>
    static __device__ __forceinline__ void load(const Ptrs& t, long long i, Regs<W>& r,
                                                const Hyper&) {
        load_f32<W>(t.master, i, r.p);
        load_f32<W>(t.grad, i, r.g);
        load_f32<W>(t.m, i, r.m);
        load_f32<W>(t.v, i, r.v);
    }

    template <class Copy, int W>
    static __device__ __forceinline__ void update_store(const Ptrs& t, long long i, Regs<W>& r,
                                                        const Coef& k, const Hyper&) {
#pragma unroll
        for (int q = 0; q < W; ++q) {
            float p = r.p[q], g = r.g[q], m = r.m[q], v = r.v[q];
            if (k.l2 != 0.f) g = __fadd_rn(g, __fmul_rn(k.l2, p));
            if (k.decay != 1.f) p = __fmul_rn(p, k.decay);
            m = __fadd_rn(__fmul_rn(k.beta1, m), __fmul_rn(k.one_minus_beta1, g));
            v = __fadd_rn(__fmul_rn(k.beta2, v), __fmul_rn(__fmul_rn(k.one_minus_beta2, g), g));
            const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), k.bc2_sqrt), k.eps);
            p = __fsub_rn(p, __fdiv_rn(__fmul_rn(k.step_size, m), denom));
            r.p[q] = p;
            r.m[q] = m;
            r.v[q] = v;
        }
        store_f32<W>(t.master, i, r.p);
        store_f32<W>(t.m, i, r.m);
        store_f32<W>(t.v, i, r.v);
        store_half<Copy, W>(t.half, i, r.p);
    }
};

struct Sgd {
    using Hyper = SgdHyper;
    struct Coef {
        bool first;  // no real step with momentum yet: the buffer takes the gradient as is
        float lr;    // f32(lr) of this step (SgdCoefficients::new)
    };

    static __device__ __forceinline__ Coef coefficients(const Hyper& h, const Schedule& s,
                                                        unsigned long long step,
                                                        bool momentum_started) {
        return Coef{!momentum_started,
                    s.kind == 0 ? h.lr : __double2float_rn(scheduled_lr(s, step))};
    }
    // The reference's `momentum_started |= f32(momentum) != 0` after a real step.
    static __device__ __forceinline__ bool starts_momentum(const Hyper& h) {
        return h.momentum != 0.f;
    }

    template <int W>
    static __device__ __forceinline__ void load(const Ptrs& t, long long i, Regs<W>& r,
                                                const Hyper& h) {
        load_f32<W>(t.master, i, r.p);
        load_f32<W>(t.grad, i, r.g);
        // The buffer is read even on the first step (it is zero then, and ignored): the load is
        // issued before the device's first-step flag is known.
        if (h.momentum != 0.f) load_f32<W>(t.m, i, r.m);
    }

    template <class Copy, int W>
    static __device__ __forceinline__ void update_store(const Ptrs& t, long long i, Regs<W>& r,
                                                        const Coef& k, const Hyper& h) {
        const bool momentum = h.momentum != 0.f;
#pragma unroll
        for (int q = 0; q < W; ++q) {
            const float p = r.p[q];
            float d = h.weight_decay != 0.f ? __fadd_rn(r.g[q], __fmul_rn(h.weight_decay, p))
                                            : r.g[q];
            if (momentum) {
                const float b = k.first ? d
                                        : __fadd_rn(__fmul_rn(h.momentum, r.m[q]),
                                                    __fmul_rn(h.one_minus_dampening, d));
                r.m[q] = b;
                d = h.nesterov ? __fadd_rn(d, __fmul_rn(h.momentum, b)) : b;
            }
            r.p[q] = __fsub_rn(p, __fmul_rn(k.lr, d));
        }
        store_f32<W>(t.master, i, r.p);
        if (momentum) store_f32<W>(t.m, i, r.m);
        store_half<Copy, W>(t.half, i, r.p);
    }
};

// Thread 0, last launch of a step: the handshake described in the header.
__device__ __forceinline__ void finish_step(unsigned long long* counters, unsigned long long step,
                                            bool start_momentum) {
    __threadfence();  // this block's reads of the counters happen before its arrival
    const unsigned long long arrived = atomicAdd(counters + BLOCKS_DONE, 1ULL);
    if (arrived == gridDim.x - 1) {
        __threadfence();  // every other block's arrival (and so its reads) before these writes
        counters[STEP] = step + 1;
        if (start_momentum) counters[MOMENTUM_STARTED] = 1;
        counters[BLOCKS_DONE] = 0;
    }
}

// The clipping of GradClip on W loaded gradients (coef: 1 when clip.coef is null).
template <int W>
__device__ __forceinline__ void clip_grads(float (&g)[W], const GradClip& clip, float coef) {
#pragma unroll
    for (int q = 0; q < W; ++q) {
        if (clip.coef) g[q] = __fmul_rn(g[q], coef);
        if (clip.value > 0.f && !isnan(g[q])) g[q] = fminf(fmaxf(g[q], -clip.value), clip.value);
    }
}

template <class Op, class Copy>
__device__ __forceinline__ void step_block(const TensorTable& t, const typename Op::Hyper& h,
                                           const Schedule& sched, unsigned long long* counters,
                                           const float* found_inf, const GradClip& clip,
                                           long long chunk, int final_launch) {
    __shared__ typename Op::Coef shared_coef;
    __shared__ int shared_skip;
    __shared__ float shared_clip;

    // The tensor this block's chunk belongs to: the last t with chunk_start[t] <= blockIdx.x.
    // An empty table (a step over no elements, launched only to advance the counter) has none.
    Ptrs ptr{nullptr, nullptr, nullptr, nullptr, nullptr};
    long long begin = 0, end = 0;
    bool vec = false;
    if (t.count > 0) {
        int lo = 0, hi = t.count - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (t.chunk_start[mid] <= int(blockIdx.x)) lo = mid; else hi = mid - 1;
        }
        ptr = Ptrs{reinterpret_cast<float*>(t.master[lo]),
                   reinterpret_cast<const float*>(t.grad[lo]),
                   reinterpret_cast<uint16_t*>(t.half[lo]), reinterpret_cast<float*>(t.exp_avg[lo]),
                   reinterpret_cast<float*>(t.exp_avg_sq[lo])};
        begin = (long long)(blockIdx.x - t.chunk_start[lo]) * chunk;
        end = min(t.len[lo], begin + chunk);
        // Chunks start at multiples of 1024 elements, so a tensor's alignment holds in each.
        vec = t.master[lo] % 16 == 0 && t.grad[lo] % 16 == 0 && t.half[lo] % 8 == 0 &&
              t.exp_avg[lo] % 16 == 0 && t.exp_avg_sq[lo] % 16 == 0;
    }
    const long long full = vec ? begin + ((end - begin) & ~3LL) : begin;
    const long long first = begin + 4 * threadIdx.x;

    // Reads only: harmless if the step turns out to be skipped.
    Regs<4> pre;
    if (first < full) Op::template load<4>(ptr, first, pre, h);

    unsigned long long step = 0;  // thread 0
    if (threadIdx.x == 0) {
        // L2 loads: the counters were written by an earlier kernel, never through this SM's L1.
        // All three at once (one round trip); the counters are only used on a real step.
        const float inf = __ldcg(found_inf);
        step = __ldcg(counters + STEP);
        const bool started = __ldcg(counters + MOMENTUM_STARTED) != 0;
        const bool skip = inf != 0.f;
        shared_skip = skip;
        shared_clip = clip.coef ? __ldcg(clip.coef) : 1.f;
        if (!skip) shared_coef = Op::coefficients(h, sched, step, started);
    }
    __syncthreads();
    if (shared_skip) return;
    const typename Op::Coef k = shared_coef;
    const float coef = shared_clip;

    if (first < full) {
        clip_grads<4>(pre.g, clip, coef);
        Op::template update_store<Copy, 4>(ptr, first, pre, k, h);
    }
    for (long long i = first + 4 * THREADS; i < full; i += 4 * THREADS) {
        Regs<4> r;
        Op::template load<4>(ptr, i, r, h);
        clip_grads<4>(r.g, clip, coef);
        Op::template update_store<Copy, 4>(ptr, i, r, k, h);
    }
    // The last (len mod 4) elements, or every element of an unaligned tensor.
    for (long long j = full + threadIdx.x; j < end; j += THREADS) {
        Regs<1> r;
        Op::template load<1>(ptr, j, r, h);
        clip_grads<1>(r.g, clip, coef);
        Op::template update_store<Copy, 1>(ptr, j, r, k, h);
    }
    // The block's arrival comes last, off the path to its first store.
    if (threadIdx.x == 0 && final_launch) finish_step(counters, step, Op::starts_momentum(h));
}

// One step's block for the table's copy type: a uniform branch, once per block.
template <class Op>
__device__ __forceinline__ void step_block_for_copy(const TensorTable& t,
                                                    const typename Op::Hyper& h,
                                                    const Schedule& sched,
                                                    unsigned long long* counters,
                                                    const float* found_inf, const GradClip& clip,
                                                    long long chunk, int final_launch) {
    if (t.copy_kind == COPY_BF16) {
        step_block<Op, CopyBf16>(t, h, sched, counters, found_inf, clip, chunk, final_launch);
    } else {
        step_block<Op, CopyF16>(t, h, sched, counters, found_inf, clip, chunk, final_launch);
    }
}

}  // namespace optim_detail

using namespace optim_detail;

extern "C" __global__ void __launch_bounds__(THREADS)
    optim_adam(TensorTable table, AdamHyper hyper, Schedule sched, unsigned long long* counters,
               const float* found_inf, GradClip clip, long long chunk, int final_launch) {
    pdl_start();
    step_block_for_copy<Adam>(table, hyper, sched, counters, found_inf, clip, chunk, final_launch);
}

extern "C" __global__ void __launch_bounds__(THREADS)
    optim_sgd(TensorTable table, SgdHyper hyper, Schedule sched, unsigned long long* counters,
              const float* found_inf, GradClip clip, long long chunk, int final_launch) {
    pdl_start();
    step_block_for_copy<Sgd>(table, hyper, sched, counters, found_inf, clip, chunk, final_launch);
}

// The device's bias-correction terms for steps ts[0..n): out[2i] = f32(lr / (1 − β1^t)),
// out[2i+1] = f32(sqrt(1 − β2^t)). For tests comparing them with AdamCoefficients::new.
extern "C" __global__ void optim_adam_bias_terms(AdamHyper hyper, const unsigned long long* ts,
                                                 int n, float* out) {
    pdl_start();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float2 b = adam_bias_terms(hyper, hyper.lr, ts[i]);
        out[2 * i] = b.x;
        out[2 * i + 1] = b.y;
    }
}
