// gemm_fp8.cu — FP8 (E4M3/E5M2) GEMM with f32 accumulation and a scaled f32/f16/bf16 output on
// Hopper tensor cores (wgmma + TMA), sm_90a only.
//
// What: D[m,n] = scale · Σ_k A[m,k]·B[n,k] (+ bias[n]), A [M,K] and B [N,K] row-major FP8 codes
// (both K-major: FP8 wgmma reads no transposed operand), scale = a_scale_inv[0] · b_scale_inv[0]
// read from device memory (the delayed-scaling recipe's per-tensor inverse scales), one fma
// `acc·scale + bias` in f32, an optional ReLU (out_kind bit 2), then one rounding (nearest even)
// to the output type. With `nonfinite` not null, a warp that stores an inf or NaN (after that
// rounding: f16 from |v| ≥ 65520) or'es 1 into *nonfinite, which is never cleared here: the
// training step's weight gradients are checked where they are written, and the unscale need
// not read them again. With the ReLU and `relu_mask` not null, the epilogue also writes the
// ReLU mask the backward reads instead of D: bit c % 32 of word relu_mask[r·⌈N/32⌉ + c/32] is
// set where D[r][c], as stored, is in (0, +inf] (bits past N are 0): 1 bit per element where
// the backward's ReLU test read 2 bytes of D. Output E4M3 (the training step's hidden layers
// that feed another FP8 layer): D is the next layer's E4M3 input, each value rounded to bf16 and
// quantized as fp8_train.cu's cast of the bf16 output would (its amax too), so that the cast
// becomes a transpose of 1-byte codes. The format of each operand is chosen per launch: E4M3×E4M3 (forward), E5M2×E4M3 / E4M3×E5M2 (gradients in
// Transformer Engine's HYBRID recipe), and E5M2×E5M2. Host side: src/ops/gemm_fp8.rs; CPU twin:
// src/cpu/gemm_fp8.rs.
//
// Algorithm: the persistent, clustered, warp-specialised pipeline of gemm_sm90.cu (v12), for
// 1-byte operands:
//   - one block per SM walks a list of work units; blocks come in clusters of 2 that take
//     vertically adjacent tiles (rows m0 and m0 + BM) of one column strip, so each loads half of
//     the shared B tile with a TMA multicast into both blocks and its own A tile;
//   - warpgroup 0 (producer, one thread): cp.async.bulk.tensor loads of BK = 128 deep stages
//     (128 FP8 = one 128-byte swizzled row per operand row) into a ring of STAGES stages, each
//     completing on its "full" mbarrier; "empty" mbarriers count the consumer warps of both
//     blocks that must release a stage before it is refilled;
//   - warpgroups 1 and 2 (consumers): per stage 4 × wgmma.m64nNk32 (k32 = 32 bytes along the
//     swizzled row) per 64-row slice, one wgmma group kept in flight across stages;
//     cooperative (both consumers on one tile, 64 rows each) or ping-pong (each consumer whole
//     tiles in turn, so one's epilogue overlaps the other's main loop);
//   - epilogue per consumer warpgroup, 32 columns at a time through a private f32 staging buffer,
//     stored as row segments (16-byte f32 / 8-byte 16-bit stores); or, in the TMA-store configs
//     (suffix s), rounded from the accumulators into two swizzled 64-row × 128-byte boxes in turn,
//     each written out by one TMA store while the warps fill the other (half the shared-memory
//     traffic of the f32 staging for 16-bit output, no global store instructions, no tail code);
//     the tile's bias is loaded when its unit starts and staged in shared memory for the boxes.
// TMA zero-fills past M, N and K, so tails cost no code; K must be a multiple of 16 (the row
// pitch of a tensor map is a multiple of 16 bytes) and A, B 16-byte aligned: the host checks.
//
// Configs (tile BM×BN×BK, consumer shape, stages, dynamic shared memory):
//   pp128: 128×128×128, ping-pong (2 × m64n128 per consumer per k32), 6 × 32 KB, 213 KB
//   p256:  128×256×128, cooperative (1 × m64n256 per consumer),       4 × 48 KB, 213 KB
//   pp64:   64×256×128, ping-pong (1 × m64n256 per consumer),          5 × 40 KB, 221 KB
//   p192:  128×192×128, cooperative (1 × m64n192 per consumer),       4 × 40 KB, 181 KB
//   pp128s, p256s, p192s: pp128, p256 and p192 with the TMA-store epilogue (2 × 2 × 8 KB boxes
//   instead of 2 × 10 KB staging buffers): 225 KB (p192s 193 KB); the host takes them only when
//   D's base is 16-byte aligned and its row pitch a multiple of 16 bytes (TMA's rule), else the
//   plain config.
// Launch: grid (2·clusters, 1, 1), at most one block per SM, 384 threads, cluster dims (2,1,1)
// compiled in; dynamic shared memory as above (including 1 KB to align the tiles to the
// 128-byte swizzle's 1024-byte period).
// Roofline (H100 SXM): 8192³ is 1.10 TFLOP, 0.56 ms at the 1979 TFLOP/s dense FP8 peak; the
// operands are 128 MiB (each read once: 0.04 ms at 3.35 TB/s), so it is compute-bound. Per stage a
// p256 block takes 32 KB out of L2 (A 16 KB + half of B) for 8.4 MFLOP: 4.9 TB/s of L2 traffic
// at 1300 TFLOP/s; pp128 and pp64 take 24 KB per 4.2 MFLOP, 7.4 TB/s.
#include "common.cuh"
#include "wgmma.cuh"
#include "wgmma_fp8.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace gemm_fp8_detail {

using namespace wgmma;
using wgmma_fp8::Fp8Mma;
using wgmma_fp8::FP8_E4M3;
using wgmma_fp8::FP8_E5M2;

constexpr int BK = 128;  // elements = bytes: one swizzled 128-byte row per operand row
constexpr int THREADS = 384;
constexpr int CLUSTER = 2;
constexpr int SLICE_BYTES = 64 * BK;  // one 64-row slice of a stage's A tile
constexpr int EPI_COLS = 32, EPI_LD = EPI_COLS + 8;  // LD ≡ 8 (mod 32): conflict-free float2 writes
constexpr int EPI_BYTES = 64 * EPI_LD * 4;
constexpr int OUT_F32 = 0, OUT_F16 = 1, OUT_BF16 = 2;  // out_kind, as src/ops/gemm_fp8.rs passes it
// The next layer's E4M3 input (TMA-store configs, E4M3×E4M3 only): each value rounded to bf16,
// as OUT_BF16 stores it, then quantized as fp8_train.cu's bf16 cast does (·q_scale, nearest
// even, saturating, NaN → 0x7F), its |bf16| folded into *q_amax.
constexpr int OUT_E4M3 = 3;
constexpr int OUT_RELU = 4;  // or'ed into out_kind: relu(v) = v where v > 0 or NaN, else +0

// Four adjacent results of one row (columns col..col+3, already scaled and biased), rounded to
// the output type; one 16-byte (f32) or 8-byte (16-bit) store when all four are inside and `vec`
// says the row pitch and base allow it.
__device__ __forceinline__ void store4(void* C, int out_kind, int N, int row, int col, float4 v,
                                       bool vec) {
    const size_t idx = size_t(row) * N + col;
    const int n_here = min(4, N - col);
    const float r[4] = {v.x, v.y, v.z, v.w};
    if (out_kind == OUT_F32) {
        float* p = static_cast<float*>(C) + idx;
        if (vec && n_here == 4) {
            *reinterpret_cast<float4*>(p) = v;
        } else {
            for (int q = 0; q < n_here; ++q) p[q] = r[q];
        }
    } else if (out_kind == OUT_F16) {
        __half* p = static_cast<__half*>(C) + idx;
        if (vec && n_here == 4) {
            __half2 h[2] = {__floats2half2_rn(v.x, v.y), __floats2half2_rn(v.z, v.w)};
            *reinterpret_cast<uint2*>(p) = *reinterpret_cast<const uint2*>(h);
        } else {
            for (int q = 0; q < n_here; ++q) p[q] = __float2half_rn(r[q]);
        }
    } else {
        __nv_bfloat16* p = static_cast<__nv_bfloat16*>(C) + idx;
        if (vec && n_here == 4) {
            __nv_bfloat162 h[2] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
            *reinterpret_cast<uint2*>(p) = *reinterpret_cast<const uint2*>(h);
        } else {
            for (int q = 0; q < n_here; ++q) p[q] = __float2bfloat16_rn(r[q]);
        }
    }
}

// The smallest magnitude that is not finite once rounded (nearest even) to the output type: what
// the non-finite check compares |v| with (a NaN fails every comparison).
__device__ __forceinline__ float overflow_at(int out_kind) {
    return out_kind == OUT_F32 ? INFINITY
           : out_kind == OUT_F16 ? 65520.f                        // half-way past 65504
                                 : __uint_as_float(0x7F7F8000u);  // half-way past bf16's largest
}

constexpr int OUT_BOX_BYTES = 64 * 128;  // one TMA-store box: 64 rows × 128 bytes, 128-byte swizzle

// Whether a ReLU output, rounded to the output type, passed (is in (0, +inf]): the bit the ReLU
// mask keeps for the backward (relu.cu's test on the stored value), decided on the f32 value v
// (≥ +0 or NaN after the ReLU) before its rounding. v passes when its bits lie in
// (zero_below, 0x7F800000]: zero_below is the largest f32 that rounds to +0 in the output type
// (f32: +0 itself; bf16: 2^-134, a tie to even; f16: 2^-25, likewise); NaNs lie above +inf.
// One subtraction and one unsigned compare.
__device__ __forceinline__ uint32_t zero_below(int out_kind) {
    return out_kind == OUT_F32 ? 0u : out_kind == OUT_F16 ? 0x33000000u : 0x00008000u;  // E4M3: bf16's
}
__device__ __forceinline__ bool passed(float v, uint32_t zero_below) {
    return __float_as_uint(v) - (zero_below + 1u) < 0x7F800000u - zero_below;
}

// What one consumer's 64-row slice of output needs besides its accumulators.
struct SliceOut {
    int out_kind;
    bool relu;
    float scale;
    float q_scale;           // OUT_E4M3: the quantization scale
    const float* tile_bias;  // the tile's BN bias values staged in shared memory (0 past N), or null
    unsigned* relu_mask;     // the ReLU mask (bit c % 32 of word [row][c / 32]), or null
    int mask_words;          // words per mask row: ⌈N / 32⌉
    uint32_t zero_below;     // zero_below(out_kind), for passed()
    int row0, col0, M, N;
    bool check;
};

// Box `ch` of a consumer's 64-row slice (CW = 128 / ESZ columns from col0 + ch·CW): scaled,
// biased, ReLU'd and rounded from the accumulators into the swizzled staging box at `box`; with
// a ReLU mask, also the box's mask words (CW / 32 per row).
// wgmma m64nN accumulators: rows 16w + lane/4 (+8), columns 8q + 2·(lane%4) (+1) in d[4q..4q+3].
// Row r of a box starts at 128·r; its 16-byte unit u sits at u ^ (r % 8).
// OUTK is the output type (out_kind) as a template argument: the 16-bit conversion without a
// select between two, and fewer live predicates. OUT_E4M3 also folds the |bf16| of the values
// inside the matrix into amax (bits).
template <int OUTK, int BN>
__device__ __forceinline__ void fill_box(const float (&d)[BN / 2], uint32_t box, int ch, const SliceOut& o,
                                         int warp, int lane, bool& bad, uint32_t& amax) {
    constexpr int ESZ = OUTK == OUT_F32 ? 4 : OUTK == OUT_E4M3 ? 1 : 2;
    constexpr int CW = 128 / ESZ, SPANS = CW / 32;
    const int r = 16 * warp + lane / 4, c = 2 * (lane % 4);
    // Row r (+8) of the box: its base address with this lane's bytes and the row's swizzle
    // folded in, so that 16-byte unit u is one xor away (box + 128·row is a multiple of 128; the
    // lane's bytes and the swizzled unit occupy bits 2..6).
    uint32_t row_base[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int row = r + 8 * hf;
        row_base[hf] = box + row * 128 + ((row & 7) << 4) + (ESZ == 4 ? 8 * (lane & 1) : ESZ * 2 * (lane % 4));
    }
    // OUT_E4M3: which of this thread's values are inside the matrix (the amax must not see the
    // bias that rows past M hold); N is a multiple of 16, so a column pair is in or out whole.
    const bool row_in[2] = {o.row0 + r < o.M, o.row0 + r + 8 < o.M};
    const int cols_in = o.N - (o.col0 + ch * CW + c);
    // The box's bias values first, before the shared stores below (asm with a memory clobber,
    // which would keep each later load behind the store before it).
    float2 bv[CW / 8];
#pragma unroll
    for (int qq = 0; qq < CW / 8; ++qq) {
        bv[qq] = o.tile_bias ? *reinterpret_cast<const float2*>(o.tile_bias + ch * CW + 8 * qq + c)
                             : make_float2(0.f, 0.f);
    }
    // This thread's bits of the box's mask words: [span of 32 columns][row r, r + 8].
    uint32_t mw[SPANS][2] = {};
#pragma unroll
    for (int qq = 0; qq < CW / 8; ++qq) {
        const int q = ch * (CW / 8) + qq;
        const float b0 = bv[qq].x, b1 = bv[qq].y;
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            float v0 = fmaf(d[4 * q + 2 * hf], o.scale, b0), v1 = fmaf(d[4 * q + 2 * hf + 1], o.scale, b1);
            // As gemm_epilogue.cuh's ReLU: NaN kept (it is not ≤ 0), everything not above 0 →
            // +0; branch-free, one compare and one select per value.
            v0 = o.relu && v0 <= 0.f ? 0.f : v0;
            v1 = o.relu && v1 <= 0.f ? 0.f : v1;
            if (o.check) bad |= !(fabsf(v0) < overflow_at(OUTK) && fabsf(v1) < overflow_at(OUTK));
            if (passed(v0, o.zero_below)) mw[qq / 4][hf] |= 1u << (8 * (qq % 4) + c);
            if (passed(v1, o.zero_below)) mw[qq / 4][hf] |= 2u << (8 * (qq % 4) + c);
            if constexpr (ESZ == 4) {
                const uint32_t unit = 2 * qq + (lane % 4) / 2;
                const uint32_t addr = row_base[hf] ^ (unit << 4);
                asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(v0), "f"(v1) : "memory");
            } else if constexpr (ESZ == 1) {
                // As the bf16 output, widened back exactly, then fp8_train.cu's cast of it.
                const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
                const uint32_t hb = *reinterpret_cast<const uint32_t*>(&h);
                const float w0 = __uint_as_float(hb << 16), w1 = __uint_as_float(hb & 0xFFFF0000u);
                const uint32_t m = max(__float_as_uint(w0) & 0x7FFFFFFFu, __float_as_uint(w1) & 0x7FFFFFFFu);
                if (row_in[hf] && 8 * qq < cols_in) amax = max(amax, m);
                const float x0 = w0 * o.q_scale, x1 = w1 * o.q_scale;
                uint32_t code = __nv_cvt_float2_to_fp8x2(make_float2(x0, x1), __NV_SATFINITE, __NV_E4M3);
                if ((x0 != x0) | (x1 != x1)) {  // any NaN is 0x7F, the CPU twin's code
                    code = x0 != x0 ? (code & 0xFF00u) | 0x7Fu : code;
                    code = x1 != x1 ? (code & 0x00FFu) | 0x7F00u : code;
                }
                // Byte 8·qq + c of the row: 16-byte unit qq / 2, swizzled, byte 8·(qq % 2) + c.
                const uint32_t addr = row_base[hf] ^ (uint32_t(qq) << 3);
                asm volatile("st.shared.b16 [%0], %1;\n" ::"r"(addr), "h"(uint16_t(code)) : "memory");
            } else {
                uint32_t bits;
                if constexpr (OUTK == OUT_F16) {
                    const __half2 h = __floats2half2_rn(v0, v1);
                    bits = *reinterpret_cast<const uint32_t*>(&h);
                } else {
                    const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
                    bits = *reinterpret_cast<const uint32_t*>(&h);
                }
                const uint32_t addr = row_base[hf] ^ (uint32_t(qq) << 4);
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(bits) : "memory");
            }
        }
    }
    if (o.relu_mask) {  // uniform: every lane of the warp is here
        // The four lanes of a quad hold the same rows' other columns: or them together, then
        // lane j of the quad stores words j, j + 4, … (word i: span i / 2, row r + 8·(i % 2);
        // 2 words per span, up to 8 per box: E4M3 boxes span 128 columns).
        constexpr int WORDS = 2 * SPANS, PER_LANE = (WORDS + 3) / 4;
        uint32_t mine[PER_LANE] = {};
#pragma unroll
        for (int i = 0; i < WORDS; ++i) {
            uint32_t w = mw[i / 2][i % 2];
            w |= __shfl_xor_sync(0xFFFFFFFFu, w, 1);
            w |= __shfl_xor_sync(0xFFFFFFFFu, w, 2);
            if (lane % 4 == i % 4) mine[i / 4] = w;
        }
#pragma unroll
        for (int t = 0; t < PER_LANE; ++t) {
            const int i = lane % 4 + 4 * t, row = o.row0 + r + 8 * (i % 2), col = o.col0 + ch * CW + 32 * (i / 2);
            if (i < WORDS && row < o.M && col < o.N) o.relu_mask[size_t(row) * o.mask_words + col / 32] = mine[t];
        }
    }
}

// The TMA-store epilogue of one consumer's 64-row slice (rows o.row0.., columns
// o.col0..o.col0+BN-1), in boxes of 64 rows × 128 bytes (CW = 128 / ESZ columns), each written
// out by one TMA store (clipped to M and N) that one thread issues. The consumer never waits for
// a store to reach global memory.
// - A ring that holds the whole slice (RING·CW ≥ BN, e.g. pp128s's 128 columns of 16-bit
//   output): that thread first waits until the previous slice's stores have read their boxes
//   (with a barrier: the other threads then write); then every box is filled, one proxy fence
//   and one barrier, and all the stores go out at once.
// - A smaller ring: box after box, each store issued while the warps fill the next box; before
//   the barrier of box i that thread waits until the store of box i+1-RING has read its box, so
//   box i+1 may overwrite it (with two boxes, the store issued just before).
template <int OUTK, int BN, int RING>
__device__ __forceinline__ void store_slice_tma(const float (&d)[BN / 2], const TensorMap& tc,
                                                uint32_t s_out, uint32_t& nbox, const SliceOut& o,
                                                int warp, int lane, int bar_id, bool& bad, uint32_t& amax) {
    constexpr int CW = 128 / (OUTK == OUT_F32 ? 4 : OUTK == OUT_E4M3 ? 1 : 2);
    const bool leader = warp == 0 && lane == 0;
    if constexpr (RING * CW >= BN) {
        if (leader) bulk_wait_read();
        asm volatile("bar.sync %0, 128;\n" ::"r"(bar_id) : "memory");
#pragma unroll
        for (int ch = 0; ch < BN / CW; ++ch) {
            if (o.col0 + ch * CW >= o.N) break;  // uniform: the tile's last columns are past N
            fill_box<OUTK, BN>(d, s_out + ch * OUT_BOX_BYTES, ch, o, warp, lane, bad, amax);
        }
        fence_proxy_async();
        asm volatile("bar.sync %0, 128;\n" ::"r"(bar_id) : "memory");
        if (leader) {
            for (int ch = 0; ch < BN / CW && o.col0 + ch * CW < o.N; ++ch)
                tma_store(tc, o.col0 + ch * CW, o.row0, s_out + ch * OUT_BOX_BYTES);
            bulk_commit();
        }
    } else {
#pragma unroll
        for (int ch = 0; ch < BN / CW; ++ch) {
            if (o.col0 + ch * CW >= o.N) break;  // uniform: the tile's last columns are past N
            const uint32_t box = s_out + (nbox % RING) * OUT_BOX_BYTES;
            fill_box<OUTK, BN>(d, box, ch, o, warp, lane, bad, amax);
            fence_proxy_async();
            if (leader) bulk_wait_read<RING - 2>();
            asm volatile("bar.sync %0, 128;\n" ::"r"(bar_id) : "memory");
            if (leader) {
                tma_store(tc, o.col0 + ch * CW, o.row0, box);
                bulk_commit();
            }
            ++nbox;
        }
    }
}

// The output tile of work unit u for block `rank` of a cluster: units run over pairs of
// tile-rows × tile-columns, in raster groups of `group` pair-rows that sweep the tile-columns
// together (so the group's B strips stay in L2).
template <int BM, int BN>
__device__ __forceinline__ int2 unit_at(int u, int rank, int M, int N, int group) {
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int pair_rows = (tiles_m + 1) / 2;
    const int g = u / (group * tiles_n), first = g * group, rows = min(pair_rows - first, group);
    const int pr = first + (u % (group * tiles_n)) % rows, tn = (u % (group * tiles_n)) / rows;
    return make_int2((2 * pr + rank) * BM, tn * BN);
}

template <int BM, int BN, int STAGES, bool PINGPONG, bool TMA_STORE, int FA, int FB>
__device__ __forceinline__ void gemm_fp8(const TensorMap& ta, const TensorMap& tb, const TensorMap& tc, void* C,
                                         const float* bias, const float* a_scale_inv,
                                         const float* b_scale_inv, int M, int N, int K,
                                         int out_kind, int group_m, unsigned* nonfinite,
                                         unsigned* relu_mask, const float* q_scale, unsigned* q_amax) {
    // Bit 2 of out_kind asks for a ReLU after the bias (the training step's hidden layers).
    const bool relu = (out_kind & OUT_RELU) != 0;
    out_kind &= ~OUT_RELU;
    constexpr int A_BYTES = BM * BK, B_BYTES = BN * BK;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES, B_HALF = B_BYTES / CLUSTER;
    // 64-row slices of a tile per consumer: ping-pong consumers take whole tiles, cooperative
    // ones one slice each of a 128-row tile.
    constexpr int SLICES = PINGPONG ? BM / 64 : 1;
    static_assert(PINGPONG || BM == 128, "a cooperative tile is one 64-row slice per consumer");
    static_assert(SLICES * BN / 2 <= 128, "at most 128 accumulators per thread");
    static_assert(A_BYTES % 1024 == 0 && B_HALF % 1024 == 0, "tiles start on the swizzle period");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    // Same offsets in both blocks of a cluster (same kernel, same dynamic shared memory base):
    // the multicast loads and remote arrives rely on it.
    const uint32_t base = (smem_addr(smem_raw) + 1023) & ~1023u;
    const uint32_t sA = base, sB = base + STAGES * A_BYTES, sEpi = sB + STAGES * B_BYTES;
    // Per consumer: one f32 staging buffer, or a ring of two swizzled TMA-store boxes.
    constexpr int RING = 2;
    constexpr int EPI_REGION = TMA_STORE ? 2 * RING * OUT_BOX_BYTES : 2 * EPI_BYTES;
    const uint32_t bars = sEpi + EPI_REGION;  // full[STAGES], empty[STAGES], order[2]
    // The TMA-store epilogue's bias: the tile's BN values, one copy per consumer when each takes
    // its own tiles (ping-pong), one shared by both when they split a tile (cooperative).
    constexpr int BIAS_COPIES = PINGPONG ? 2 : 1;
    const uint32_t sBias = bars + 8 * (2 * STAGES + 2);
    auto full = [&](int s) { return bars + 8 * s; };
    auto empty = [&](int s) { return bars + 8 * (STAGES + s); };
    // Ping-pong turn barriers: order[w] completes a phase when the other consumer has passed all
    // its waits of a unit, so the two main loops alternate and neither waits on a stage two fills
    // ahead (a parity wait cannot tell that fill from the one before it).
    auto order = [&](int w) { return bars + 8 * (2 * STAGES + w); };

    const int tid = threadIdx.x, wg = tid / 128;
    const int rank = int(ampkit::cluster_rank());
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full(s), 1);  // own expect_tx arrive; both blocks' TMA bytes
            mbar_init(empty(s), (PINGPONG ? 4 : 8) * CLUSTER);  // consumer warps of both blocks
        }
        mbar_init(order(0), 4);
        mbar_init(order(1), 4);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    // The peer's multicast loads and remote arrives target these barriers.
    cluster_sync();

    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int units = (tiles_m + 1) / 2 * tiles_n;
    const int first_unit = int(ampkit::cluster_index()), stride = int(ampkit::cluster_count());
    const int group = max(group_m, 1);
    const int nt = (K + BK - 1) / BK;  // K stages per unit

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (tid == 0) {
            asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&ta)) : "memory");
            asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tb)) : "memory");
            if (TMA_STORE) asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tc)) : "memory");
            int s = 0, phase = 0;
            for (int u = first_unit; u < units; u += stride) {
                const int2 t = unit_at<BM, BN>(u, rank, M, N, group);
                for (int i = 0; i < nt; ++i) {
                    mbar_wait(empty(s), phase ^ 1);
                    mbar_expect_tx(full(s), STAGE_BYTES);
                    const int k0 = i * BK;
                    tma_load(sA + s * A_BYTES, ta, k0, t.x, full(s));
                    // This block's half of the B tile, into both blocks.
                    tma_load_multicast(sB + s * B_BYTES + rank * B_HALF, tb, k0, t.y + rank * (BN / CLUSTER),
                                       full(s), 0x3);
                    if (++s == STAGES) {
                        s = 0;
                        phase ^= 1;
                    }
                }
            }
        }
        __syncwarp();
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
        // The consumer index through a broadcast, so the compiler knows it is warp-uniform and
        // keeps the matrix descriptors below in uniform registers.
        const int ctid = tid - 128, cw = __shfl_sync(0xffffffffu, ctid / 128, 0);
        const int warp = (ctid / 32) % 4, lane = tid % 32;
        float* stage = reinterpret_cast<float*>(smem_raw + (sEpi - smem_addr(smem_raw))) + cw * (EPI_BYTES / 4);
        const float scale = a_scale_inv[0] * b_scale_inv[0];
        const float qs = q_scale ? q_scale[0] : 1.f;
        uint32_t amax = 0;  // OUT_E4M3: this thread's largest |bf16| bits
        const size_t elem = out_kind == OUT_F32 ? 4 : 2;
        const bool vec = (N % 4 == 0) && (reinterpret_cast<uintptr_t>(C) % (4 * elem) == 0);
        // Releases a stage in both blocks of the cluster: lane r of each warp arrives on block r.
        auto release = [&](int st) {
            __syncwarp();
            if (lane < CLUSTER) mbar_arrive_cluster(empty(st), lane);
        };
        // Matrix descriptors of stage 0 (this consumer's A slice, or slice 0 for ping-pong, and
        // the B tile); a stage, slice or k32 step (32 bytes) further adds its offset in 16-byte
        // units to the address field, which cannot carry (shared addresses stay below 2^18).
        const uint64_t da0 = descriptor(sA + (PINGPONG ? 0 : cw) * SLICE_BYTES, 16, 1024);
        const uint64_t db0 = descriptor(sB, 16, 1024);
        uint32_t nbox = 0;  // TMA-store boxes this consumer has filled (which box is next)
        // Whether this thread stored an inf or NaN (checked only when asked: `nonfinite` set).
        const bool check = nonfinite != nullptr;
        bool bad = false;
        // The ReLU mask (only with a ReLU): words per row.
        const int mask_words = (N + 31) / 32;
        if (!relu) relu_mask = nullptr;
        // The accumulators live across units: each unit's first k32 step overwrites them (scale-d
        // 0), so they are zeroed once, not per tile.
        float d[SLICES][BN / 2];
#pragma unroll
        for (int h = 0; h < SLICES; ++h)
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) d[h][i] = 0.f;
        int s = 0, phase = 0;
        for (int u = first_unit, j = 0; u < units; u += stride, ++j) {
            if (PINGPONG && j % 2 != cw) {
                // The other consumer's unit: skip its stages in the ring.
                s += nt;
                phase ^= (s / STAGES) & 1;
                s %= STAGES;
                continue;
            }
            const int2 t = unit_at<BM, BN>(u, rank, M, N, group);
            // This thread's column of the tile's bias, loaded now and staged in shared memory by
            // the epilogue: a box's values then come from shared memory, where loading them from
            // global memory box by box put an L2 round trip on each box's critical path (the
            // forward GEMM ~8 % slower than without a bias).
            const int bias_col = PINGPONG ? ctid % 128 : ctid;
            float my_bias = 0.f;
            if (TMA_STORE && bias && bias_col < BN && t.y + bias_col < N) my_bias = __ldg(bias + t.y + bias_col);
            // Ping-pong: this consumer's n-th unit starts after the other's unit before it.
            if (PINGPONG && j > 0) mbar_wait(order(cw), (j / 2 - (cw == 0 ? 1 : 0)) & 1);
            int prev = -1;
            for (int i = 0; i < nt; ++i) {
                mbar_wait(full(s), phase);
                wgmma_fence();
                const uint64_t da = da0 + uint64_t(s * (A_BYTES >> 4)), db = db0 + uint64_t(s * (B_BYTES >> 4));
#pragma unroll
                for (int h = 0; h < SLICES; ++h) {
#pragma unroll
                    for (int kk = 0; kk < BK / 32; ++kk) {
                        Fp8Mma<BN, FA, FB>::run(d[h], da + uint64_t(h * (SLICE_BYTES >> 4) + 2 * kk), db + 2 * kk,
                                                i > 0 || kk > 0);
                    }
                }
                wgmma_commit();
                // Keep this stage's group in flight; the one before it has finished reading its
                // stage, which goes back to the producers of both blocks.
                wgmma_wait<1>();
                if (prev >= 0) release(prev);
                prev = s;
                if (++s == STAGES) {
                    s = 0;
                    phase ^= 1;
                }
            }
            if (PINGPONG) {
                __syncwarp();
                if (lane == 0) mbar_arrive(order(1 - cw));
            }
            wgmma_wait<0>();
            if (prev >= 0) release(prev);

            if constexpr (TMA_STORE) {
                const uint32_t s_out = sEpi + cw * RING * OUT_BOX_BYTES;
                float* tile_bias = nullptr;
                if (bias) {
                    static_assert(BN <= (PINGPONG ? 128 : 256), "one bias column per consumer thread");
                    tile_bias = reinterpret_cast<float*>(smem_raw + (sBias - smem_addr(smem_raw))) +
                                (BIAS_COPIES == 2 ? cw * BN : 0);
                    // Cooperative: both consumers' reads of the previous tile's values are done
                    // (ping-pong: this consumer's are, before its last box's barrier).
                    if (!PINGPONG) asm volatile("bar.sync 1, 256;\n" ::: "memory");
                    if (bias_col < BN) tile_bias[bias_col] = my_bias;
                    if (PINGPONG) {
                        asm volatile("bar.sync %0, 128;\n" ::"r"(2 + cw) : "memory");
                    } else {
                        asm volatile("bar.sync 1, 256;\n" ::: "memory");
                    }
                }
#pragma unroll
                for (int h = 0; h < SLICES; ++h) {
                    const int row0 = t.x + 64 * (PINGPONG ? h : cw);
                    if (row0 >= M) continue;  // the pad block of an odd number of tile-rows
                    const SliceOut o{out_kind,   relu,       scale,                qs,   tile_bias, relu_mask,
                                     mask_words, zero_below(out_kind), row0, t.y,  M,         N,
                                     check};
                    if (out_kind == OUT_F32) {
                        store_slice_tma<OUT_F32, BN, RING>(d[h], tc, s_out, nbox, o, warp, lane, 2 + cw, bad, amax);
                    } else if (out_kind == OUT_F16) {
                        store_slice_tma<OUT_F16, BN, RING>(d[h], tc, s_out, nbox, o, warp, lane, 2 + cw, bad, amax);
                    } else if (out_kind == OUT_BF16) {
                        store_slice_tma<OUT_BF16, BN, RING>(d[h], tc, s_out, nbox, o, warp, lane, 2 + cw, bad, amax);
                    } else if constexpr (FA == FP8_E4M3 && FB == FP8_E4M3) {
                        // OUT_E4M3: the forward's entry points only (the host launches no other).
                        store_slice_tma<OUT_E4M3, BN, RING>(d[h], tc, s_out, nbox, o, warp, lane, 2 + cw, bad, amax);
                    }
                }
                continue;
            }
            // Epilogue, 32 columns at a time through this consumer's staging buffer. Accumulator
            // layout of wgmma m64nN: warp w holds rows 16w + lane/4 (+8) and, for each 8-column
            // block q, columns 8q + 2·(lane%4) (+1) in d[4q..4q+3].
            const int r = 16 * warp + lane / 4, c = 2 * (lane % 4);
            const int sc = (ctid % 128 % (EPI_COLS / 4)) * 4, sr = ctid % 128 / (EPI_COLS / 4);
            constexpr int ROWS_PER_PASS = 128 / (EPI_COLS / 4);
#pragma unroll
            for (int h = 0; h < SLICES; ++h) {
                const int row0 = t.x + 64 * (PINGPONG ? h : cw), rows = min(64, M - row0);
                if (rows <= 0) continue;  // past M, e.g. the pad block of an odd number of tile-rows
#pragma unroll
                for (int ch = 0; ch < BN / EPI_COLS; ++ch) {
                    const int col = t.y + ch * EPI_COLS + sc;
                    if (t.y + ch * EPI_COLS >= N) continue;
#pragma unroll
                    for (int jj = 0; jj < EPI_COLS / 8; ++jj) {
                        const int q = ch * (EPI_COLS / 8) + jj;
                        *reinterpret_cast<float2*>(&stage[r * EPI_LD + 8 * jj + c]) =
                            make_float2(d[h][4 * q], d[h][4 * q + 1]);
                        *reinterpret_cast<float2*>(&stage[(r + 8) * EPI_LD + 8 * jj + c]) =
                            make_float2(d[h][4 * q + 2], d[h][4 * q + 3]);
                    }
                    asm volatile("bar.sync %0, 128;\n" ::"r"(2 + cw) : "memory");
                    // The bias of this thread's 4 columns, once per chunk (0 past N or without one).
                    float bv[4] = {0.f, 0.f, 0.f, 0.f};
                    if (bias) {
#pragma unroll
                        for (int q = 0; q < 4; ++q) bv[q] = col + q < N ? bias[col + q] : 0.f;
                    }
                    // The 8 lanes of a row (4 columns each) run the loop together: rows is the
                    // same for them, and lanes past N take part in the mask's shuffles.
                    {
#pragma unroll 1
                        for (int rr = sr; rr < rows; rr += ROWS_PER_PASS) {
                            const float4 a = *reinterpret_cast<const float4*>(&stage[rr * EPI_LD + sc]);
                            float4 v = make_float4(fmaf(a.x, scale, bv[0]), fmaf(a.y, scale, bv[1]),
                                                   fmaf(a.z, scale, bv[2]), fmaf(a.w, scale, bv[3]));
                            if (relu) {
                                // As gemm_epilogue.cuh's ReLU: NaN kept, everything not above 0 → +0.
                                v.x = v.x <= 0.f ? 0.f : v.x;
                                v.y = v.y <= 0.f ? 0.f : v.y;
                                v.z = v.z <= 0.f ? 0.f : v.z;
                                v.w = v.w <= 0.f ? 0.f : v.w;
                            }
                            // Only the columns inside N: past it the staging holds padding.
                            const float cv[4] = {v.x, v.y, v.z, v.w};
                            if (check) {
#pragma unroll
                                for (int q = 0; q < 4; ++q) bad |= col + q < N && !(fabsf(cv[q]) < overflow_at(out_kind));
                            }
                            if (col < N) store4(C, out_kind, N, row0 + rr, col, v, vec);
                            if (relu_mask) {
                                // The row's 32 columns of this chunk: one word from its 8 lanes.
                                uint32_t w = 0;
#pragma unroll
                                for (int q = 0; q < 4; ++q)
                                    w |= uint32_t(col + q < N && passed(cv[q], zero_below(out_kind))) << (sc + q);
                                const unsigned row_lanes = 0xFFu << (lane & 24);
                                w |= __shfl_xor_sync(row_lanes, w, 1);
                                w |= __shfl_xor_sync(row_lanes, w, 2);
                                w |= __shfl_xor_sync(row_lanes, w, 4);
                                if (lane % 8 == 0)
                                    relu_mask[size_t(row0 + rr) * mask_words + (t.y + ch * EPI_COLS) / 32] = w;
                            }
                        }
                    }
                    asm volatile("bar.sync %0, 128;\n" ::"r"(2 + cw) : "memory");
                }
            }
        }
        // The staging boxes must outlive the stores that read them.
        if (TMA_STORE && warp == 0 && lane == 0) bulk_wait_all();
        // One atomic per warp that stored an inf or NaN; none on a clean product.
        if (check && __any_sync(0xffffffffu, bad) && lane == 0) atomicOr(nonfinite, 1u);
        // OUT_E4M3: the warp's largest |bf16| into the amax, one atomic per warp (0 adds nothing).
        if (q_amax) {
            for (int o = 16; o > 0; o >>= 1) amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            if (lane == 0 && amax != 0) atomicMax(q_amax, amax);
        }
    }
    // No block may exit while its peer can still arrive on its barriers or write its stages.
    cluster_sync();
}

}  // namespace gemm_fp8_detail

using namespace gemm_fp8_detail;

// Entry points: gemm_fp8_<config>_<A format><B format>, formats e4 (E4M3) and e5 (E5M2).
// Arguments: the tensor maps of A and B (src/ops/gemm_fp8.rs: UINT8, boxes of 128 K × BM rows for
// A and 128 K × BN/2 rows for B, 128-byte swizzle), the tensor map of D (TMA-store configs: boxes
// of 128 bytes × 64 rows, 128-byte swizzle; unread by the others), D, bias (may be null), the two
// inverse scales (one f32 each, device memory), M, N, K, out_kind (0 f32, 1 f16, 2 bf16, | 4 for
// the ReLU; 3 E4M3, TMA-store configs and e4e4 only), pair-rows per raster group, the non-finite
// flag word (may be null), the ReLU mask (M·⌈N/32⌉ words; may be null, ignored without the
// ReLU), and for out_kind 3 the quantization scale (one f32) and the amax (its f32 bits, folded
// with atomicMax; both may be null otherwise).
#define AMPKIT_GEMM_FP8(NAME, BM, BN, ST, PP, TS, FA, FB)                                            \
    extern "C" __global__ void __cluster_dims__(CLUSTER, 1, 1) __launch_bounds__(THREADS, 1)       \
        NAME(const __grid_constant__ TensorMap ta, const __grid_constant__ TensorMap tb,            \
             const __grid_constant__ TensorMap tc, void* C, const float* bias,                      \
             const float* a_scale_inv, const float* b_scale_inv, int M, int N, int K, int out_kind, \
             int group_m, unsigned* nonfinite, unsigned* relu_mask, const float* q_scale,         \
             unsigned* q_amax) {                                                                    \
        gemm_fp8<BM, BN, ST, PP, TS, FA, FB>(ta, tb, tc, C, bias, a_scale_inv, b_scale_inv, M, N,   \
                                             K, out_kind, group_m, nonfinite, relu_mask, q_scale,   \
                                             q_amax);                                               \
    }
#define AMPKIT_GEMM_FP8_FORMATS(CFG, BM, BN, ST, PP, TS)                             \
    AMPKIT_GEMM_FP8(gemm_fp8_##CFG##_e4e4, BM, BN, ST, PP, TS, FP8_E4M3, FP8_E4M3) \
    AMPKIT_GEMM_FP8(gemm_fp8_##CFG##_e4e5, BM, BN, ST, PP, TS, FP8_E4M3, FP8_E5M2) \
    AMPKIT_GEMM_FP8(gemm_fp8_##CFG##_e5e4, BM, BN, ST, PP, TS, FP8_E5M2, FP8_E4M3) \
    AMPKIT_GEMM_FP8(gemm_fp8_##CFG##_e5e5, BM, BN, ST, PP, TS, FP8_E5M2, FP8_E5M2)

// Register budget: 128·40 + 256·232 = 64512 of 65536 for the one block per SM.
AMPKIT_GEMM_FP8_FORMATS(pp128, 128, 128, 6, true, false)
AMPKIT_GEMM_FP8_FORMATS(p256, 128, 256, 4, false, false)
AMPKIT_GEMM_FP8_FORMATS(pp64, 64, 256, 5, true, false)
AMPKIT_GEMM_FP8_FORMATS(pp128s, 128, 128, 6, true, true)
AMPKIT_GEMM_FP8_FORMATS(p256s, 128, 256, 4, false, true)
// 192-wide tiles: more, smaller units, for products whose 256-wide units leave a last round of
// the clusters half empty (8192³: 21 rounds of 1376 units, 99 % full, instead of 16 of 1024, 97 %).
AMPKIT_GEMM_FP8_FORMATS(p192, 128, 192, 4, false, false)
AMPKIT_GEMM_FP8_FORMATS(p192s, 128, 192, 4, false, true)
