// cross_entropy.cu — fused softmax-cross-entropy: f32, f16 or bf16 logits, u32 labels, f32 math,
// f32, f16 or bf16 dlogits, and the mean loss left on the device, in one launch.
//
// Entry points (T = f32, f16, bf16: the logit type; each writes any gradient type):
//   softmax_ce_groups[_pf]_T_p{P}_w{W}, softmax_ce_rows[_pf]_T_v{VEC}_p{1,2,4,8},
//   softmax_ce_block_T_v{VEC} (VEC = 4, 1 for f32; 8, 4, 1 for f16 and bf16), and in
//   softmax_sm90.cu softmax_ce_cluster_T_c{2,4,8}_p{P}. bf16 logits take f16's instances (the
//   same widths: 8 elements per 16-byte pack).
// What: src/cpu/cross_entropy.rs's softmax_cross_entropy. Per row: loss = (m − x_label) + ln s;
//   dlogits_j = (e_j/s − [j = label])·scale with scale = *grad_scale / rows read from device memory
//   (AMP's loss scale), stored as f32, f16 or bf16 by the output-kind code out_kind (0, 1, 2:
//   softmax_common.cuh's store_one; bf16 rounds to nearest even as half's bf16::from_f32).
//   Logits of any type are widened exactly to f32. e_j = 2^((x_j − m)·log2 e) through the SFU
//   (exp_shifted: the subtraction rounded first, so the max gives exactly 1; flush-to-zero, so an
//   e below 2^−126 is 0 — it adds nothing to s ≥ 1 in f32, and its gradient e·scale/s < 2^−110
//   is 0 in f16 and negligible in f32), and dlogits_j = e_j·(scale/s) except at the label, where
//   (e/s − 1)·scale keeps the exact quotient. s is summed as c + r, c the number of entries equal
//   to a finite max (each e = 1 exactly) and r the rest, and ln s = ln c + log1p(r / c): in a
//   nearly one-hot row (the end of training) s = 1 + r rounds most of r away, while the loss is
//   ≈ r. A label ≥ classes (the CPU reference's error, which the device cannot raise) makes that
//   row's loss and all of its dlogits NaN, so the mean loss is NaN. One launch: each block adds
//   its rows' losses in f64 in a fixed order and writes one partial; the block that takes the last
//   ticket (an acquire-release integer atomic on the counter at the head of `partial`, a buffer
//   of the launching Gpu handle's own: softmax_common.cuh) adds the partials in a fixed order and
//   writes the mean as one f32: no host synchronisation, no float atomics, no second kernel.
//   Bit-identical run to run (every order depends on the launch shape only).
// Launch shapes (picked in src/ops/cross_entropy/plan.rs); a "pack" is VEC elements, VEC = 16
//   bytes of logits (8 f16 or bf16 / 4 f32) when classes allow it and both buffers are 16-byte
//   aligned.
//   ce_groups<L,P,W,PF>  the default for 16-byte packs: row groups of W warps (1, 2, 4, 8; 256-
//                   thread blocks hold 8/W groups), the row in registers (P packs per thread),
//                   reductions by shuffles and, for W > 1, through shared memory with one named
//                   barrier per reduction. A group loops over rows g, g + groups, … and defers each
//                   row's scalar work (the label's gradient and the row loss: ~100 instructions,
//                   one thread's) to one thread per row, run for up to 32·W rows at once, so that
//                   work costs the group ~1/(32·W) of what it costs inline. PF loads the next row
//                   while the current one is reduced.
//   ce_rows<L,VEC,P,PF>  any access width: a warp or a block per row, the row in registers,
//                   per-row work inline; blocks loop over rows past 2^18 threads.
//   ce_block<L,VEC>  rows too long for registers: a block per row through shared memory.
//   On compute capability 9.0, rows of 16-byte packs past 8192 classes (too long for any ce_groups
//   instance) take softmax_sm90.cu's cluster kernels instead, where an instance holds them.
// Roofline: 4 + 4 B/element (f32 → f32) or 2 + 2 B (f16 → f16, bf16 → bf16) plus 4 B per row.
//   The f16 loss needs ~2.5 elements per clock per SM at the H100's ~3.0 TB/s copy rate, so its
//   instruction count per element (ce_groups: ~7 in the exp pass, 18 in all by ncu; ce_rows: 32)
//   matters as much as its bytes in flight.
#include "softmax_common.cuh"

namespace softmax_detail {

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
                                        int out_kind, double* __restrict__ partial,
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
            load_packs<L, VEC, P>(logits + off, group, t, packs, v);
        }
        const bool ok = label < unsigned(classes);
        float m = packs_max<VEC, P>(v, group, t, packs);
        m = group == 32 ? warp_max(m) : block_max(m);
        float c = 0.f, r = 0.f;
        packs_exp_count<VEC, P>(v, group, t, packs, m, c, r);
        const float2 cr = group == 32 ? make_float2(warp_sum(c), warp_sum(r))
                                      : block_sum2(make_float2(c, r));
        const CeRow cw = ce_row(scale, ok, cr.x + cr.y);
        packs_out<VEC, P>(dlogits, off, v, group, t, packs, cw.ps, out_kind);
        if (ok && int(label / VEC) % group == t) {
            ce_label(logits + off, dlogits, off, label, m, cw, out_kind);
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
                                         int out_kind, double* __restrict__ partial,
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
            ce_out<VEC>(dlogits, off, i, e, cw.ps, out_kind);
        }
#pragma unroll
        for (int u = 0; u < TP; ++u) {
            const int i = cached + u * T + t;
            if (i < packs) ce_out<VEC>(dlogits, off, i, tail[u], cw.ps, out_kind);
        }
        for (int i = rest + t; i < packs; i += T) {
            float e[VEC];
            load<VEC>(xr, i, e);
#pragma unroll
            for (int k = 0; k < VEC; ++k) e[k] = exp_shifted(e[k], m);
            ce_out<VEC>(dlogits, off, i, e, cw.ps, out_kind);
        }
        // The thread that stored the label's pack: packs below `cached` and from `rest` on go
        // to threads by index mod T, the register packs by (index − cached) mod T.
        const int lp = int(label / VEC);
        const int owner = lp < cached ? lp % T : lp < rest ? (lp - cached) % T : (lp - rest) % T;
        if (ok && owner == t) ce_label(xr, dlogits, off, label, m, cw, out_kind);
        if (t == 0) row_losses += double(ce_loss(xr, label, ok, m, cr.x, cr.y));
    }
    if (ce_ticket(partial, row_losses, T)) ce_total(partial, loss, rows);
}


// Threads per block of ce_groups: 8 warps, so 8/W row groups of W warps.
constexpr int GROUP_BLOCK = 256;

// Named barrier over the `threads` threads of row group `gid` (ids 1-8; 0 is __syncthreads). It
// also orders the group's memory accesses before it against those after it.
__device__ __forceinline__ void group_bar(int gid, int threads) {
    asm volatile("bar.sync %0, %1;" ::"r"(gid + 1), "r"(threads) : "memory");
}

// A row group's max: warp butterflies, then (W > 1) the group's W warp results through `red`
// (one slot per warp of the block) after one named barrier, combined in warp order. `red` may be
// written again once every thread of the group has passed the group's next barrier, which each
// thread reaches only after its reads here; a row's two reductions use different arrays, so one
// barrier per reduction suffices.
template <int W>
__device__ __forceinline__ float group_max(float v, float* red, int gid) {
    v = warp_max(v);
    if (W == 1) return v;
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    group_bar(gid, 32 * W);
    float a = red[gid * W];
#pragma unroll
    for (int w = 1; w < W; ++w) a = fmaxf(a, red[gid * W + w]);
    return a;
}

// The same for a pair of sums.
template <int W>
__device__ __forceinline__ float2 group_sum2(float2 v, float2* red, int gid) {
    v = make_float2(warp_sum(v.x), warp_sum(v.y));
    if (W == 1) return v;
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    group_bar(gid, 32 * W);
    float2 a = red[gid * W];
#pragma unroll
    for (int w = 1; w < W; ++w) {
        const float2 b = red[gid * W + w];
        a = make_float2(a.x + b.x, a.y + b.y);
    }
    return a;
}

// The deferred per-row work of ce_groups for one row: the label's gradient (ce_label, written
// over what the row's pass stored there) and the row loss, from the row's max and its c, r sums.
template <typename L>
__device__ __forceinline__ double ce_finish_row(const L* __restrict__ logits,
                                                const unsigned* __restrict__ labels,
                                                void* dlogits, int out_kind, int row, int classes,
                                                float scale, float m, float c, float r) {
    const unsigned label = labels[row];
    const bool ok = label < unsigned(classes);
    const size_t off = size_t(row) * classes;
    const CeRow cw = ce_row(scale, ok, c + r);
    if (ok) ce_label(logits + off, dlogits, off, label, m, cw, out_kind);
    return double(ce_loss(logits + off, label, ok, m, c, r));
}

// The loss for 16-byte packs with the row in registers, a row group of W warps per row (see the
// header). Group g of the grid takes rows g, g + groups, ...; its j-th row's scalar work is
// deferred to thread j mod 32·W of the group, which runs it when the group has done 32·W rows or
// at its end, after a barrier that orders the group's dlogits stores before the label's rewrite.
// Requires classes ≤ 32·W·P·VEC. The row loss sums are per thread in row order, then warp
// butterflies, then warps in order, then blocks in order: fixed by the launch shape.
template <typename L, int P, int W, bool PF>
__device__ __forceinline__ void ce_groups(const L* __restrict__ logits,
                                          const unsigned* __restrict__ labels,
                                          const float* __restrict__ grad_scale, void* dlogits,
                                          int out_kind, double* __restrict__ partial,
                                          float* __restrict__ loss, int rows, int classes) {
    constexpr int VEC = 16 / int(sizeof(L));
    constexpr int G = 32 * W;
    constexpr int GROUPS = GROUP_BLOCK / G;
    __shared__ float red_max[GROUP_BLOCK / 32];
    __shared__ float2 red_cr[GROUP_BLOCK / 32];
    const int gid = threadIdx.x / G, t = threadIdx.x % G;
    const int stride = gridDim.x * GROUPS;
    const int packs = classes / VEC;
    const float scale = ce_scale(grad_scale, rows);
    int d_row = -1;  // the deferred row this thread finishes, and its statistics
    float d_m = 0.f, d_c = 0.f, d_r = 0.f;
    double my_loss = 0.0;
    Pack<L, VEC> ahead[P];
    unsigned ahead_label = 0;
    int row = blockIdx.x * GROUPS + gid;
    if (PF && row < rows) {
        load_raw<L, VEC, P>(logits + size_t(row) * classes, G, t, packs, ahead);
        ahead_label = labels[row];
    }
    for (int j = 0; row < rows; row += stride, ++j) {
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
            const int next = row + stride;
            if (next < rows) {
                load_raw<L, VEC, P>(logits + size_t(next) * classes, G, t, packs, ahead);
                ahead_label = labels[next];
            }
        } else {
            label = labels[row];
            load_packs<L, VEC, P>(logits + off, G, t, packs, v);
        }
        const bool ok = label < unsigned(classes);
        const float m = group_max<W>(packs_max<VEC, P>(v, G, t, packs), red_max, gid);
        float c = 0.f, r = 0.f;
        packs_exp_count<VEC, P>(v, G, t, packs, m, c, r);
        const float2 cr = group_sum2<W>(make_float2(c, r), red_cr, gid);
        c = cr.x;
        r = cr.y;
        const CeRow cw = ce_row(scale, ok, c + r);
        packs_out<VEC, P>(dlogits, off, v, G, t, packs, cw.ps, out_kind);
        if (t == j % G) {
            d_row = row;
            d_m = m;
            d_c = c;
            d_r = r;
        }
        if (j % G == G - 1 || row + stride >= rows) {
            if (W == 1) {
                __syncwarp();
            } else {
                group_bar(gid, G);
            }
            if (d_row >= 0) {
                my_loss += ce_finish_row(logits, labels, dlogits, out_kind, d_row, classes, scale,
                                         d_m, d_c, d_r);
                d_row = -1;
            }
        }
    }
    if (ce_ticket(partial, warp_sum_d(my_loss), 32)) ce_total(partial, loss, rows);
}

}  // namespace softmax_detail

using namespace softmax_detail;

// Threads a softmax_ce_rows instance may be launched with: it keeps VEC·P floats of the row per
// thread. Mirrored by src/ops/cross_entropy/plan.rs (checked against the PTX's .maxntid in
// src/ops/cross_entropy/mod.rs).
constexpr int ce_rows_bound(int vec, int p) { return vec * p <= 16 ? 1024 : vec * p <= 32 ? 512 : 256; }
// Resident blocks asked of the compiler: 2 keeps the 32-float instances at 64 registers (four
// 256-thread blocks per SM in warp mode), which the grid-stride loop would otherwise push to ~94.
constexpr int ce_rows_min_blocks(int vec, int p) { return vec * p <= 16 ? 1 : 2; }

#define SOFTMAX_CE_ROWS(T, L, V, P)                                                               \
    extern "C" __global__ void __launch_bounds__(ce_rows_bound(V, P), ce_rows_min_blocks(V, P))   \
        softmax_ce_rows_##T##_v##V##_p##P(const L* logits, const unsigned* labels,                \
                                          const float* grad_scale, void* dlogits, int out_kind,    \
                                          double* partial, float* loss, int rows, int classes,    \
                                          int group) {                                            \
        ce_rows<L, V, P, false>(logits, labels, grad_scale, dlogits, out_kind, partial, loss,      \
                                rows, classes, group);                                            \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(ce_rows_bound(V, P))                             \
        softmax_ce_rows_pf_##T##_v##V##_p##P(const L* logits, const unsigned* labels,             \
                                             const float* grad_scale, void* dlogits,              \
                                             int out_kind, double* partial, float* loss,           \
                                             int rows, int classes, int group) {                  \
        ce_rows<L, V, P, true>(logits, labels, grad_scale, dlogits, out_kind, partial, loss, rows, \
                               classes, group);                                                   \
    }
#define SOFTMAX_CE(T, L, V)                                                                       \
    SOFTMAX_CE_ROWS(T, L, V, 1)                                                                   \
    SOFTMAX_CE_ROWS(T, L, V, 2)                                                                   \
    SOFTMAX_CE_ROWS(T, L, V, 4)                                                                   \
    SOFTMAX_CE_ROWS(T, L, V, 8)                                                                   \
    extern "C" __global__ void __launch_bounds__(1024) softmax_ce_block_##T##_v##V(               \
        const L* logits, const unsigned* labels, const float* grad_scale, void* dlogits,          \
        int out_kind, double* partial, float* loss, int rows, int classes, int cached) {           \
        ce_block<L, V>(logits, labels, grad_scale, dlogits, out_kind, partial, loss, rows,         \
                       classes, cached);                                                          \
    }
SOFTMAX_CE(f32, float, 4)
SOFTMAX_CE(f32, float, 1)
SOFTMAX_CE(f16, __half, 8)
SOFTMAX_CE(f16, __half, 4)
SOFTMAX_CE(f16, __half, 1)
SOFTMAX_CE(bf16, __nv_bfloat16, 8)
SOFTMAX_CE(bf16, __nv_bfloat16, 4)
SOFTMAX_CE(bf16, __nv_bfloat16, 1)

#define SOFTMAX_CE_GROUPS(T, L, P, W, MIN_BLOCKS, MIN_BLOCKS_PF)                                \
    extern "C" __global__ void __launch_bounds__(GROUP_BLOCK, MIN_BLOCKS)                       \
        softmax_ce_groups_##T##_p##P##_w##W(const L* logits, const unsigned* labels,            \
                                            const float* grad_scale, void* dlogits,             \
                                            int out_kind, double* partial, float* loss,          \
                                            int rows, int classes) {                            \
        ce_groups<L, P, W, false>(logits, labels, grad_scale, dlogits, out_kind, partial, loss,  \
                                  rows, classes);                                               \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(GROUP_BLOCK, MIN_BLOCKS_PF)                    \
        softmax_ce_groups_pf_##T##_p##P##_w##W(const L* logits, const unsigned* labels,         \
                                               const float* grad_scale, void* dlogits,          \
                                               int out_kind, double* partial, float* loss,       \
                                               int rows, int classes) {                         \
        ce_groups<L, P, W, true>(logits, labels, grad_scale, dlogits, out_kind, partial, loss,   \
                                 rows, classes);                                                \
    }
// Resident 256-thread blocks asked of the compiler: 4 (64 registers) for up to 16 floats per
// thread, 3 (85) with the prefetched row or 32 f16-converted floats, 2 (128) for 32 f32 floats
// with the prefetched row. f16: 8, 16, 32 floats per thread with one warp per row (up to 1024
// classes), then 32 floats per thread with 2, 4, 8 warps per row (up to 8192). f32: 4, 8, 16
// floats with one warp (up to 512), 16 with 2 and 4 warps, 32 with 4 and 8 warps (up to 8192).
// bf16: f16's instances.
SOFTMAX_CE_GROUPS(f16, __half, 1, 1, 4, 4)
SOFTMAX_CE_GROUPS(f16, __half, 2, 1, 4, 4)
SOFTMAX_CE_GROUPS(f16, __half, 4, 1, 4, 3)
SOFTMAX_CE_GROUPS(f16, __half, 4, 2, 3, 3)
SOFTMAX_CE_GROUPS(f16, __half, 4, 4, 3, 3)
SOFTMAX_CE_GROUPS(f16, __half, 4, 8, 3, 3)
SOFTMAX_CE_GROUPS(f32, float, 1, 1, 4, 4)
SOFTMAX_CE_GROUPS(f32, float, 2, 1, 4, 4)
SOFTMAX_CE_GROUPS(f32, float, 4, 1, 4, 3)
SOFTMAX_CE_GROUPS(f32, float, 4, 2, 4, 3)
SOFTMAX_CE_GROUPS(f32, float, 4, 4, 4, 3)
SOFTMAX_CE_GROUPS(f32, float, 8, 4, 3, 2)
SOFTMAX_CE_GROUPS(f32, float, 8, 8, 3, 2)
SOFTMAX_CE_GROUPS(bf16, __nv_bfloat16, 1, 1, 4, 4)
SOFTMAX_CE_GROUPS(bf16, __nv_bfloat16, 2, 1, 4, 4)
SOFTMAX_CE_GROUPS(bf16, __nv_bfloat16, 4, 1, 4, 3)
SOFTMAX_CE_GROUPS(bf16, __nv_bfloat16, 4, 2, 3, 3)
SOFTMAX_CE_GROUPS(bf16, __nv_bfloat16, 4, 4, 3, 3)
SOFTMAX_CE_GROUPS(bf16, __nv_bfloat16, 4, 8, 3, 3)
