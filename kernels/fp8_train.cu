// fp8_train.cu — the rest of delayed-scaling FP8 training's casts (Transformer Engine's recipe),
// beside fp8.cu's quantize: cast + transpose with the amax, and the amax-history / scale update.
//
// What:
//   fp8_cast_transpose_{f32,bf16}_{e4m3,e5m2}_{v4,v1}(src, q, qt, rows, cols, ld, scale, amax):
//     src [rows, cols] row-major, f32 or bf16 (widened exactly: its bits shifted up 16).
//     q [rows, cols] row-major: q[r][c] = fp8(src[r][c]·scale[0]), rounded to nearest even,
//       saturating, NaN → 0x7F (fp8.cu's quantize, bit for bit); q may be null (not written).
//     qt [cols, ld]: qt[c][r] = q[r][c] for r < rows and 0x00 for rows ≤ r < ld, where ld is rows
//       rounded up to 16: the FP8 GEMM reads only K-major operands through TMA, whose row pitch
//       must be a multiple of 16 bytes, so a training step needs each tensor both ways.
//     amax[0] = max(amax[0], max |src|) on the bits, before scaling (a NaN makes it NaN).
//   fp8_cast_transpose_dbias{,_drelu}_bf16_{e4m3,e5m2}_{v4,v1}(src, relu_out, q, qt, rows, cols,
//       ld, scale, amax, partial): an output gradient's cast (Transformer Engine's
//     cast_transpose_dbias_dgelu, for ReLU): the source is src, or with _drelu src where
//     relu_out > 0 and +0 elsewhere (relu.cu's backward); q, qt and amax as above, and
//     partial[r0 / 64][c] = that tile's column sum of the source in f32 (a fixed order: each
//     thread's 4 consecutive rows in order, the lane pair sharing the columns, the 8 warps in
//     order),
//     which gemm.cu's bias_grad_finish adds tile row by tile row into the bias gradient.
//   fp8_cast_transpose_dbias_dmask_bf16_{e4m3,e5m2}_{v4,v1}(src, relu_mask, …): the _drelu
//     cast with the ReLU backward's test read from the forward's ReLU mask (gemm_fp8.cu's
//     relu_mask: bit c % 32 of word relu_mask[r·⌈cols/32⌉ + c/32] set where relu_out > 0).
//   fp8_transpose_{v4,v1}(q, qt, rows, cols, ld): qt as above from codes q cast elsewhere (the FP8
//     GEMM's E4M3 output of a hidden layer, gemm_fp8.cu), 1 byte read and 1 written per element.
//   fp8_bias_grad_finish_many(jobs): the dbias casts' second pass for up to 4 biases, gemm.cu's
//     bias_grad_finish (bias_grad_finish.cuh) in this module so that Hopper launches it as a
//     dependent of the kernel before it.
//   fp8_gather_cast_transpose_{f32,coded}_e4m3_{v4,v1}(pixels…, q, qt, …, scale, amax, weights):
//     the step's input stage (augment.cu's batch gather, rounded to bf16) cast straight into
//     the first FP8 layer's E4M3 input and transpose, plus up to 4 f32 master weights' casts
//     (`weights`, each as fp8_cast_transpose_f32_e4m3_v4) whose tiles interleave with the
//     batch's: the latency-bound gather and the bandwidth-bound casts share the SMs (each
//     block grid-strides over both kinds and interleaves its two lists in proportion).
//   fp8_update_scales(history, scale, scale_inv, fp8_max, len, most_recent, margin_factor):
//     one block per tensor t, Transformer Engine's amax_and_scale_update: amax = max over the
//     whole window history[t][0..len) (NaN ignored, as fmaxf does; at least 0), or history[t][0]
//     when most_recent; scale[t] = (fp8_max[t]·margin_factor) / amax if amax is finite and
//     positive, else kept; an infinite scale becomes FLT_MAX; scale_inv[t] = 1 / scale[t]; the
//     window rolls to [0, h2, …, h_last, h0]. margin_factor = 2^-margin, computed by the host as
//     the CPU twin computes it, so the f32 operations are the same ones in the same order.
// Numerics: bit-exact with src/cpu/fp8.rs (cast_transpose, cast_transpose_dbias,
//   ScalingState::update). This module is
//   compute_80 PTX, so __nv_cvt_float_to_fp8 takes its software path (the float8 crate's); its
//   twin fp8_train_pdl.cu (sm_90a, what Hopper launches) converts with cvt.rn.satfinite, one
//   instruction where the software path takes ~20 (to_fp8x4 pins NaN to 0x7F for both); the
//   divisions are IEEE (div.rn, no fast math). Maxima are order-independent.
// Launch, cast_transpose: 256 threads, 64×64 tiles, a grid-stride loop over tiles (row band
//   major), at most 6 blocks per SM (the register bound it is compiled for). A thread loads 4
//   consecutive elements of 4 consecutive rows (16 B of f32 or 8 B of bf16 per access in v4: a
//   warp reads 2 whole tile rows per access), converts each row's 4 values with two paired
//   conversions and writes them to q as one u32; it transposes its 4×4 codes in registers (8
//   byte permutes) and stages the 4 column words in shared memory ([column][row word],
//   XOR-swizzled by the column's group of 4: the word loads are bank-conflict free, the word
//   stores 2-way); after a barrier it writes 4 rows of one column to qt as one u32 (a warp
//   writes 2 whole 64-byte qt row segments). Bounds are 32-bit compares against the tile's
//   rows and columns inside the matrix. v1 is the same with element accesses (any alignment,
//   any cols). Before, each element was converted, bounds-checked (64-bit) and staged on its
//   own: 578 SASS instructions per tile and thread for the bf16 cast, issue-bound (ncu, H100:
//   66 % SM throughput at 52 % of DRAM bandwidth); now ~450 (about 370 of them on a
//   tile without NaN: the fix-ups are skipped; a static count, not a profile).
//   The block's |x| maximum goes to one atomicMax on the amax's bits.
//   update_scales: grid = tensors, 256 threads; the window is staged in 16 KB of shared memory
//   (len ≤ 4096), so the in-place roll reads every entry before any is overwritten.
// Roofline, cast_transpose: 4 B (f32) or 2 B (bf16) read and 2 B written per element (q and qt;
//   1 B without q). H100 at ~3 TB/s: 8192² f32 (402 MB) in ~0.13 ms, bf16 (268 MB) in ~0.09 ms.
//   The _drelu cast reads 2 B more (relu_out) and replaces the ReLU backward (6 B per element)
//   and the bias gradient's pass (2 B): 8192×4096 in ~0.06 ms instead of ~0.11 ms.
#include <cuda_fp8.h>
#include <float.h>
#include <stdint.h>

#include "augment_pixels.cuh"
#include "bias_grad_finish.cuh"
#include "common.cuh"
#include "pdl.cuh"

namespace fp8_train_detail {

constexpr int kTile = 64;                           // a tile is kTile × kTile elements
constexpr int kThreads = 256;
constexpr int kGroups = kTile / 4;                  // groups of 4 columns in a tile row
constexpr int kRowsPerPass = kThreads / kGroups;    // 16
constexpr int kPasses = kTile / kRowsPerPass;       // 4
// Resident blocks per SM the cast is compiled for: 40 registers, no spills (8 would force 32
// and spill; unbounded takes 60, 4 blocks). The host caps the grid at this many per SM.
constexpr int kBlocksPerSm = 6;
// The fused gather (gather_cast_transpose) needs 64 registers to run without spills.
constexpr int kBlocksPerSmGather = 4;

// Source element access: f32 as is, bf16 (stored as uint16_t) widened exactly.
__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }

// Where a tile sits: its first row and column, and how many of its 64 rows and columns (and of
// its transpose's ld-padded rows) are inside the matrix. In-tile indices are 32-bit, so the
// bounds checks are one compare each.
struct TileFrame {
    size_t r0, c0;
    int rows_left, cols_left, ld_left;
    __device__ __forceinline__ TileFrame(size_t r0_, size_t c0_, size_t rows, size_t cols, size_t ld)
        : r0(r0_), c0(c0_), rows_left(int(min(rows - r0_, size_t(kTile)))),
          cols_left(int(min(cols - c0_, size_t(kTile)))), ld_left(int(min(ld - r0_, size_t(kTile)))) {}
};

// The 4 elements at tile row tr, tile columns tc..tc+4 of the tile whose first element is
// tile_src (0 past the matrix); V: one aligned 16- or 8-byte access.
template <typename T, bool V>
__device__ __forceinline__ void load4(const T* __restrict__ tile_src, size_t cols, const TileFrame& f,
                                      int tr, int tc, float (&v)[4]) {
    const T* p = tile_src + size_t(tr) * cols + tc;
    if (V) {
        if (tr < f.rows_left && tc < f.cols_left) {
            if (sizeof(T) == 4) {
                const float4 x = *reinterpret_cast<const float4*>(p);
                v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
            } else {
                const uint2 x = *reinterpret_cast<const uint2*>(p);
                v[0] = widen(uint16_t(x.x)), v[1] = widen(uint16_t(x.x >> 16));
                v[2] = widen(uint16_t(x.y)), v[3] = widen(uint16_t(x.y >> 16));
            }
        } else {
            v[0] = v[1] = v[2] = v[3] = 0.f;
        }
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = (tr < f.rows_left && tc + k < f.cols_left) ? widen(p[k]) : 0.f;
    }
}

// Word w (rows 4w..4w+3) of tile column c in the staging buffer.
__device__ __forceinline__ int staged_word(int c, int w) { return c * (kTile / 4) + (w ^ ((c >> 2) & 15)); }

// The shared memory of one block's tiles: the transposed staging of the codes, the warps'
// maxima and (DBIAS) the warps' column sums.
template <bool DBIAS>
struct TileSmem {
    uint32_t staged[kTile * kTile / 4];
    unsigned int block_max[kThreads / 32];
    float col_sums[DBIAS ? kThreads / 32 : 1][kTile];
};

// The tile row of pass p for this thread: a thread holds 4 consecutive rows (4·rq + p) of its
// 4 columns, so the 4 codes of one column are one word for qt after an in-register transpose.
__device__ __forceinline__ int tile_row(int rq, int p) { return 4 * rq + p; }

// Four values (already scaled) to FP8 codes, value k in byte k (nearest even, saturating): two
// paired conversions. cuda_fp8.hpp converts in software for compute_80 (this module) and with
// the sm_89+ instruction cvt.rn.satfinite (the fp8_train_pdl twin, built for sm_90a); both round
// the f32 once and saturate alike. Any NaN becomes 0x7F (the CPU twin's code) whatever the
// instruction gives for it: a rare, divergent fix-up.
template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ uint32_t to_fp8x4(float a, float b, float c, float d) {
    const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, F);
    const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, F);
    uint32_t packed = lo | (hi << 16);
    if ((a != a) | (b != b) | (c != c) | (d != d)) {
        packed = a != a ? (packed & 0xFFFFFF00u) | 0x7Fu : packed;
        packed = b != b ? (packed & 0xFFFF00FFu) | 0x7F00u : packed;
        packed = c != c ? (packed & 0xFF00FFFFu) | 0x7F0000u : packed;
        packed = d != d ? (packed & 0x00FFFFFFu) | 0x7F000000u : packed;
    }
    return packed;
}

// This thread's 4×4 codes (word[p]: tile row 4rq + p, its 4 columns 4g.. one per byte)
// transposed into the staging buffer: column k's word holds rows 4rq .. 4rq + 3, one per byte.
template <bool DBIAS>
__device__ __forceinline__ void stage_codes(const uint32_t (&word)[kPasses], TileSmem<DBIAS>& sm) {
    const int tc = 4 * (threadIdx.x % kGroups), rq = threadIdx.x / kGroups;
    const uint32_t lo01 = __byte_perm(word[0], word[1], 0x5140), lo23 = __byte_perm(word[2], word[3], 0x5140);
    const uint32_t hi01 = __byte_perm(word[0], word[1], 0x7362), hi23 = __byte_perm(word[2], word[3], 0x7362);
    sm.staged[staged_word(tc + 0, rq)] = __byte_perm(lo01, lo23, 0x5410);
    sm.staged[staged_word(tc + 1, rq)] = __byte_perm(lo01, lo23, 0x7632);
    sm.staged[staged_word(tc + 2, rq)] = __byte_perm(hi01, hi23, 0x5410);
    sm.staged[staged_word(tc + 3, rq)] = __byte_perm(hi01, hi23, 0x7632);
}

// The staged tile (after a barrier) to qt: tile column lc is qt row c0 + lc; this thread writes
// its rows r0+4g .. r0+4g+3 (all below ld or all at or above it: ld is a multiple of 16).
template <bool V, bool DBIAS>
__device__ __forceinline__ void write_qt(const TileSmem<DBIAS>& sm, const TileFrame& f, size_t ld,
                                         uint8_t* __restrict__ qt) {
    const int g = threadIdx.x % kGroups, rq = threadIdx.x / kGroups, tc = 4 * g;
    uint8_t* qt_tile = qt + f.c0 * ld + f.r0;
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
        const int lc = rq + p * kRowsPerPass;
        if (lc < f.cols_left && tc < f.ld_left) {
            const uint32_t w = sm.staged[staged_word(lc, g)];
            uint8_t* out = qt_tile + size_t(lc) * ld + tc;
            if (V) {
                *reinterpret_cast<uint32_t*>(out) = w;
            } else {
#pragma unroll
                for (int k = 0; k < 4; ++k) out[k] = uint8_t(w >> (8 * k));
            }
        }
    }
}

// The transpose alone of codes already cast (the FP8 GEMM's E4M3 output, gemm_fp8.cu): q
// [rows, cols] to qt [cols, ld] as cast_transpose lays it out (0x00 past rows). V: 4-byte
// accesses (cols % 4 == 0, q and qt 4-byte aligned).
template <bool V>
__device__ __forceinline__ void transpose_codes(const uint8_t* __restrict__ q, uint8_t* __restrict__ qt,
                                                size_t rows, size_t cols, size_t ld) {
    __shared__ TileSmem<false> sm;
    const int g = threadIdx.x % kGroups, rq = threadIdx.x / kGroups, tc = 4 * g;
    const size_t col_tiles = (cols + kTile - 1) / kTile;
    const size_t tiles = (rows + kTile - 1) / kTile * col_tiles;
    for (size_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const TileFrame f(t / col_tiles * kTile, t % col_tiles * kTile, rows, cols, ld);
        const uint8_t* tile = q + f.r0 * cols + f.c0;
        uint32_t word[kPasses];
#pragma unroll
        for (int p = 0; p < kPasses; ++p) {
            const int tr = tile_row(rq, p);
            const uint8_t* in = tile + size_t(tr) * cols + tc;
            uint32_t w = 0;
            if (V) {
                if (tr < f.rows_left && tc < f.cols_left) w = *reinterpret_cast<const uint32_t*>(in);
            } else {
#pragma unroll
                for (int k = 0; k < 4; ++k)
                    if (tr < f.rows_left && tc + k < f.cols_left) w |= uint32_t(in[k]) << (8 * k);
            }
            word[p] = w;
        }
        stage_codes(word, sm);
        __syncthreads();
        write_qt<V>(sm, f, ld, qt);
        __syncthreads();
    }
}

// One tile's values v (this thread's 4 columns 4g.. of tile rows 4rq + p, 0 outside the
// matrix) to q, qt and (DBIAS) partial, folding |v| into m (amax bits). Ends with a barrier: the
// block may stage its next tile.
template <__nv_fp8_interpretation_t F, bool V, bool DBIAS>
__device__ __forceinline__ void convert_tile(const float (&v)[kPasses][4], TileSmem<DBIAS>& sm,
                                             const TileFrame& f, size_t cols, size_t ld, float s,
                                             uint8_t* __restrict__ q, uint8_t* __restrict__ qt,
                                             float* __restrict__ partial, unsigned int& m) {
    const int g = threadIdx.x % kGroups, rq = threadIdx.x / kGroups, tc = 4 * g;
    if (DBIAS) {
        // Column sums of the tile, in a fixed order: each thread's 4 rows in order, the two
        // threads of a warp that share columns (lanes l and l ^ 16, rows 4rq.. and 4rq + 4..:
        // a + b == b + a), then the 8 warps in order (cpu::fp8::cast_transpose_dbias).
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            float cs = 0.f;
#pragma unroll
            for (int p = 0; p < kPasses; ++p) cs += v[p][k];
            cs += __shfl_xor_sync(0xFFFFFFFFu, cs, 16);
            if (lane < 16) sm.col_sums[DBIAS ? warp : 0][tc + k] = cs;
        }
    }
    // Codes outside the matrix are 0 (qt's rows past `rows` are its zero padding).
    const int inside_cols = min(max(f.cols_left - tc, 0), 4);
    const uint32_t col_mask = inside_cols == 4 ? 0xFFFFFFFFu : (1u << (8 * inside_cols)) - 1u;
    uint8_t* q_tile = q == nullptr ? nullptr : q + f.r0 * cols + f.c0;
    uint32_t word[kPasses];
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
        const int tr = tile_row(rq, p);
#pragma unroll
        for (int k = 0; k < 4; ++k) m = max(m, __float_as_uint(v[p][k]) & 0x7FFFFFFFu);  // 0 outside
        const uint32_t packed = to_fp8x4<F>(v[p][0] * s, v[p][1] * s, v[p][2] * s, v[p][3] * s) &
                                (tr < f.rows_left ? col_mask : 0u);
        word[p] = packed;
        if (q_tile != nullptr && tr < f.rows_left && inside_cols > 0) {
            uint8_t* out = q_tile + size_t(tr) * cols + tc;
            if (V) {
                *reinterpret_cast<uint32_t*>(out) = packed;
            } else {
#pragma unroll
                for (int k = 0; k < 4; ++k)
                    if (k < inside_cols) out[k] = uint8_t(packed >> (8 * k));
            }
        }
    }
    stage_codes(word, sm);
    __syncthreads();
    if (DBIAS && int(threadIdx.x) < f.cols_left) {
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < kThreads / 32; ++w) sum += sm.col_sums[DBIAS ? w : 0][threadIdx.x];
        partial[(f.r0 / kTile) * cols + f.c0 + threadIdx.x] = sum;
    }
    write_qt<V>(sm, f, ld, qt);
    __syncthreads();
}

// The block's amax bits m into amax_bits: warps, then one atomicMax per block.
template <bool DBIAS>
__device__ __forceinline__ void fold_amax(unsigned int m, TileSmem<DBIAS>& sm, unsigned int* amax_bits) {
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sm.block_max[warp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < kThreads / 32; ++w) m = max(m, sm.block_max[w]);
        if (m != 0) atomicMax(amax_bits, m);
    }
}

// DRELU: the source is the ReLU backward of src on the forward output relu_out (src where
// relu_out > 0, else +0: relu.cu's backward, whose bit test on a bf16 is the widened value's
// `> 0`); with MASK, on the forward's ReLU mask instead (gemm_fp8.cu: bit c % 32 of word
// relu_mask[r·⌈cols/32⌉ + c/32] set where relu_out[r][c] > 0), 1 bit read per element instead
// of 2 bytes. DBIAS: also the source's column sums of each 64-row tile, into
// partial[tile row][col].
template <typename T, __nv_fp8_interpretation_t F, bool V, bool DRELU, bool DBIAS, bool MASK = false>
__device__ __forceinline__ void cast_transpose(const T* __restrict__ src,
                                               const T* __restrict__ relu_out,
                                               const unsigned* __restrict__ relu_mask,
                                               uint8_t* __restrict__ q, uint8_t* __restrict__ qt,
                                               size_t rows, size_t cols, size_t ld,
                                               const float* __restrict__ scale,
                                               unsigned int* __restrict__ amax_bits,
                                               float* __restrict__ partial) {
    __shared__ TileSmem<DBIAS> sm;
    const float s = *scale;
    const int g = threadIdx.x % kGroups, rq = threadIdx.x / kGroups;
    const size_t col_tiles = (cols + kTile - 1) / kTile;
    const size_t tiles = (rows + kTile - 1) / kTile * col_tiles;
    unsigned int m = 0;
    for (size_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const TileFrame f(t / col_tiles * kTile, t % col_tiles * kTile, rows, cols, ld);
        const size_t at = f.r0 * cols + f.c0;
        float v[kPasses][4];
#pragma unroll
        for (int p = 0; p < kPasses; ++p) load4<T, V>(src + at, cols, f, tile_row(rq, p), 4 * g, v[p]);
        if (DRELU && MASK) {
            // A thread's 4 columns sit in one word (tiles start on a multiple of 32 columns).
            const size_t words = (cols + 31) / 32;
            const int tc = 4 * g;
#pragma unroll
            for (int p = 0; p < kPasses; ++p) {
                const int tr = tile_row(rq, p);
                const uint32_t bits = tr < f.rows_left && tc < f.cols_left
                                          ? relu_mask[(f.r0 + tr) * words + (f.c0 + tc) / 32] >> (tc % 32)
                                          : 0u;
#pragma unroll
                for (int k = 0; k < 4; ++k) v[p][k] = (bits >> k) & 1u ? v[p][k] : 0.f;
            }
        } else if (DRELU) {
            float y[kPasses][4];
#pragma unroll
            for (int p = 0; p < kPasses; ++p) load4<T, V>(relu_out + at, cols, f, tile_row(rq, p), 4 * g, y[p]);
#pragma unroll
            for (int p = 0; p < kPasses; ++p)
#pragma unroll
                for (int k = 0; k < 4; ++k)  // y in (0, +inf]: its bits in [1, 0x7F800000]
                    v[p][k] = __float_as_uint(y[p][k]) - 1u < 0x7F800000u ? v[p][k] : 0.f;
        }
        convert_tile<F, V, DBIAS>(v, sm, f, cols, ld, s, q, qt, partial, m);
    }
    fold_amax<DBIAS>(m, sm, amax_bits);
}

// Weight casts that ride along with the input stage (gather_cast_transpose): up to
// kMaxWeightJobs f32 masters cast to E4M3 and transposed exactly as cast_transpose's v4 kernel
// does (the host sends only matrices whose accesses it proved aligned). They depend on nothing
// the batch does, and the stage is latency-bound (dependent per-sample loads, ~17 % of DRAM
// bandwidth) where they are bandwidth-bound, so tiles of both kinds share the SMs.
constexpr int kMaxWeightJobs = 4;
struct WeightJobs {
    const float* src[kMaxWeightJobs];
    uint8_t* q[kMaxWeightJobs];
    uint8_t* qt[kMaxWeightJobs];
    size_t rows[kMaxWeightJobs];
    size_t cols[kMaxWeightJobs];
    size_t ld[kMaxWeightJobs];
    const float* scale[kMaxWeightJobs];
    unsigned int* amax[kMaxWeightJobs];
    size_t count;
};

__device__ __forceinline__ size_t cast_tiles(size_t rows, size_t cols) {
    return (rows + kTile - 1) / kTile * ((cols + kTile - 1) / kTile);
}

// The training step's input stage fused with the first FP8 layer's input cast: augment.cu's
// batch gather (sample i of the epoch's plan from cursor[1], shifted, labels alongside, the
// whole batch poisoned when the cursor runs past the plan) with each pixel rounded to bf16 as
// augment_batch_*_bf16 stores it, then cast and transposed as cast_transpose does that bf16
// batch: the same codes, amax and labels, without the batch's 2 bytes per pixel written and read
// back. Loads are per element (a shifted row is not aligned); V picks the q/qt store width.
// The weights' tiles (jobs) are spread evenly among the batch's: unified tile u is the batch's
// tile floor(u·G/T) when that count steps at u (G batch tiles of T in all), else weight tile
// u − floor(u·G/T), so every block alternates the two kinds in proportion.
template <__nv_fp8_interpretation_t F, bool V, typename Px>
__device__ __forceinline__ void gather_cast_transpose(
    const Px images, const unsigned* __restrict__ labels, const unsigned* __restrict__ order,
    const int* __restrict__ shifts, const unsigned* cursor, unsigned* __restrict__ labels_out,
    uint8_t* __restrict__ q, uint8_t* __restrict__ qt, size_t n, size_t plan_len, unsigned inputs,
    unsigned side, unsigned count, float background, size_t ld, const float* __restrict__ scale,
    unsigned int* __restrict__ amax_bits, const WeightJobs& jobs) {
    __shared__ TileSmem<false> sm;
    __shared__ float job_scale[kMaxWeightJobs];
    __shared__ unsigned int job_amax[kMaxWeightJobs];
    if (threadIdx.x < jobs.count) {
        job_scale[threadIdx.x] = *jobs.scale[threadIdx.x];
        job_amax[threadIdx.x] = 0;
    }
    const float s = *scale;
    const size_t first = cursor[1];
    const bool poison = first + n > plan_len;  // the host's bookkeeping went wrong: never read past
    if (!poison) {
        order += first;
        shifts += 2 * first;
    }
    for (size_t i = ampkit::global_thread(); i < n; i += ampkit::grid_threads()) {
        const unsigned o = poison ? 0xFFFFFFFFu : order[i];
        labels_out[i] = !poison && o < count ? labels[o] : 0xFFFFFFFFu;
    }
    __shared__ float rounded_palette[augment_pixels::kPalette];
    const auto px = augment_pixels::rounded_to_bf16(images, rounded_palette);
    const float rounded_background = widen(ampkit::f32_to_bf16_bits_exact(background));
    __syncthreads();  // job_scale, job_amax, rounded_palette
    const int g = threadIdx.x % kGroups, rq = threadIdx.x / kGroups;
    const size_t col_tiles = (inputs + kTile - 1) / kTile;
    const size_t batch_tiles = (n + kTile - 1) / kTile * col_tiles;
    size_t weight_tiles = 0;
    for (size_t j = 0; j < jobs.count; ++j) weight_tiles += cast_tiles(jobs.rows[j], jobs.cols[j]);
    unsigned int m = 0;
    // Both kinds are grid-strided (block b takes batch tiles b, b + grid, … and weight tiles
    // likewise), so the blocks running at any moment read neighbouring tiles: whole image rows
    // and weight rows at once, as the casts alone do. Each block interleaves its two lists in
    // proportion (its iteration it is a batch tile when floor(it·nb/(nb + nw)) steps), so every block
    // mixes the kinds whatever the ratio and the grid.
    const size_t b = blockIdx.x, grid = gridDim.x;
    const size_t nb = b < batch_tiles ? (batch_tiles - 1 - b) / grid + 1 : 0;
    const size_t nw = b < weight_tiles ? (weight_tiles - 1 - b) / grid + 1 : 0;
    for (size_t it = 0; it < nb + nw; ++it) {
        const size_t kb = it * nb / (nb + nw);  // batch tiles before this iteration
        if ((it + 1) * nb / (nb + nw) == kb) {
            // Weight tile b + (it − kb)·grid: find its job.
            size_t w = b + (it - kb) * grid, j = 0;
            while (w >= cast_tiles(jobs.rows[j], jobs.cols[j])) w -= cast_tiles(jobs.rows[j], jobs.cols[j]), ++j;
            const size_t rows = jobs.rows[j], cols = jobs.cols[j];
            const size_t jcol_tiles = (cols + kTile - 1) / kTile;
            const TileFrame f(w / jcol_tiles * kTile, w % jcol_tiles * kTile, rows, cols, jobs.ld[j]);
            const float* tile_src = jobs.src[j] + f.r0 * cols + f.c0;
            float v[kPasses][4];
#pragma unroll
            for (int p = 0; p < kPasses; ++p) load4<float, true>(tile_src, cols, f, tile_row(rq, p), 4 * g, v[p]);
            unsigned int tm = 0;
            convert_tile<F, true, false>(v, sm, f, cols, jobs.ld[j], job_scale[j], jobs.q[j], jobs.qt[j],
                                         nullptr, tm);
            for (int o = 16; o > 0; o >>= 1) tm = max(tm, __shfl_xor_sync(0xFFFFFFFFu, tm, o));
            if ((threadIdx.x & 31) == 0 && tm != 0) atomicMax(&job_amax[j], tm);
            continue;
        }
        const size_t t = b + kb * grid;
        const TileFrame f(t / col_tiles * kTile, t % col_tiles * kTile, n, inputs, ld);
        // This thread's 4 pixel columns c + k on the image grid, from one division: the same
        // for its 4 rows.
        const unsigned c = unsigned(f.c0) + 4 * g;
        unsigned pr[4], pc[4];
        pr[0] = side != 0 ? c / side : 0;
        pc[0] = c - pr[0] * side;
#pragma unroll
        for (int k = 1; k < 4; ++k) {
            const bool wrap = side != 0 && pc[k - 1] + 1 == side;
            pr[k] = pr[k - 1] + (wrap ? 1 : 0);
            pc[k] = wrap ? 0 : pc[k - 1] + 1;
        }
        float v[kPasses][4];
#pragma unroll
        for (int p = 0; p < kPasses; ++p) {
            const size_t i = f.r0 + tile_row(rq, p);
            const unsigned o = poison || i >= n ? 0xFFFFFFFFu : order[i];
            const bool valid = !poison && o < count;
            const bool shift = side != 0 && !poison && i < n;
            const int dx = shift ? shifts[2 * i] : 0, dy = shift ? shifts[2 * i + 1] : 0;
            const size_t img = valid ? size_t(o) * inputs : 0;
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                // augment_pixels::shifted, rounded to bf16 as the bf16 batch stores it (the
                // palette and the background staged rounded). Only pixels of the batch are read
                // (past `inputs` an unshifted read would run into the next image, or past the
                // dataset's end).
                float x = 0.f;
                if (i < n && c + k < inputs) {
                    if (!valid) {
                        x = __int_as_float(0x7fc00000);  // bf16 keeps this NaN as it is
                    } else if (side == 0) {
                        x = px.at(img + c + k);
                    } else {
                        const unsigned r = unsigned(int(pr[k]) - dy), cc = unsigned(int(pc[k]) - dx);
                        x = r < side && cc < side ? px.at(img + r * side + cc) : rounded_background;
                    }
                }
                v[p][k] = x;
            }
        }
        convert_tile<F, V, false>(v, sm, f, inputs, ld, s, q, qt, nullptr, m);
    }
    fold_amax<false>(m, sm, amax_bits);
    __syncthreads();  // every warp's atomicMax on job_amax is done
    if (threadIdx.x < jobs.count && job_amax[threadIdx.x] != 0)
        atomicMax(jobs.amax[threadIdx.x], job_amax[threadIdx.x]);
}

constexpr int kMaxHistory = 4096;

}  // namespace fp8_train_detail

using namespace fp8_train_detail;

#define AMPKIT_CAST_T(TNAME, T, FNAME, F, VNAME, V)                                               \
    extern "C" __global__ void __launch_bounds__(kThreads, kBlocksPerSm)                         \
        fp8_cast_transpose_##TNAME##_##FNAME##_##VNAME(const T* src, uint8_t* q, uint8_t* qt,    \
                                                      size_t rows, size_t cols, size_t ld,       \
                                                      const float* scale, unsigned int* amax) {  \
        pdl_start();                                                                             \
        cast_transpose<T, F, V, false, false>(src, nullptr, nullptr, q, qt, rows, cols, ld, scale, \
                                              amax, nullptr);                                    \
    }
#define AMPKIT_CAST_T_V(TNAME, T, FNAME, F)        \
    AMPKIT_CAST_T(TNAME, T, FNAME, F, v4, true) \
    AMPKIT_CAST_T(TNAME, T, FNAME, F, v1, false)
AMPKIT_CAST_T_V(f32, float, e4m3, __NV_E4M3)
AMPKIT_CAST_T_V(f32, float, e5m2, __NV_E5M2)
AMPKIT_CAST_T_V(bf16, uint16_t, e4m3, __NV_E4M3)
AMPKIT_CAST_T_V(bf16, uint16_t, e5m2, __NV_E5M2)

// The transpose of codes cast elsewhere (the FP8 GEMM's E4M3 output).
#define AMPKIT_TRANSPOSE(VNAME, V)                                                              \
    extern "C" __global__ void __launch_bounds__(kThreads, kBlocksPerSm)                        \
        fp8_transpose_##VNAME(const uint8_t* q, uint8_t* qt, size_t rows, size_t cols, size_t ld) { \
        pdl_start();                                                                            \
        transpose_codes<V>(q, qt, rows, cols, ld);                                              \
    }
AMPKIT_TRANSPOSE(v4, true)
AMPKIT_TRANSPOSE(v1, false)

// The gradient's cast with the bias gradient's first pass (and the ReLU backward, drelu): bf16
// only, the dtype of FP8 training's activations.
// (The element-wise v1 of the plain dbias cast needs 41 registers: one block fewer per SM, as
// the host's grid cap knows, keeps it from spilling.)
#define AMPKIT_CAST_DBIAS(DNAME, DRELU, FNAME, F, VNAME, V)                                       \
    extern "C" __global__ void __launch_bounds__(kThreads, V ? kBlocksPerSm : kBlocksPerSm - 1)  \
        fp8_cast_transpose_dbias##DNAME##_bf16_##FNAME##_##VNAME(                                \
            const uint16_t* src, const uint16_t* relu_out, uint8_t* q, uint8_t* qt, size_t rows, \
            size_t cols, size_t ld, const float* scale, unsigned int* amax, float* partial) {    \
        pdl_start();                                                                             \
        cast_transpose<uint16_t, F, V, DRELU, true>(src, relu_out, nullptr, q, qt, rows, cols,   \
                                                    ld, scale, amax, partial);                   \
    }
#define AMPKIT_CAST_DBIAS_V(DNAME, DRELU, FNAME, F)        \
    AMPKIT_CAST_DBIAS(DNAME, DRELU, FNAME, F, v4, true) \
    AMPKIT_CAST_DBIAS(DNAME, DRELU, FNAME, F, v1, false)
AMPKIT_CAST_DBIAS_V(, false, e4m3, __NV_E4M3)
AMPKIT_CAST_DBIAS_V(, false, e5m2, __NV_E5M2)
AMPKIT_CAST_DBIAS_V(_drelu, true, e4m3, __NV_E4M3)
AMPKIT_CAST_DBIAS_V(_drelu, true, e5m2, __NV_E5M2)

// The drelu casts with the ReLU backward read from the forward's ReLU mask (gemm_fp8.cu's
// relu_mask) instead of its output.
#define AMPKIT_CAST_DMASK(FNAME, F, VNAME, V)                                                      \
    extern "C" __global__ void __launch_bounds__(kThreads, V ? kBlocksPerSm : kBlocksPerSm - 1)  \
        fp8_cast_transpose_dbias_dmask_bf16_##FNAME##_##VNAME(                                   \
            const uint16_t* src, const unsigned* relu_mask, uint8_t* q, uint8_t* qt, size_t rows, \
            size_t cols, size_t ld, const float* scale, unsigned int* amax, float* partial) {    \
        pdl_start();                                                                             \
        cast_transpose<uint16_t, F, V, true, true, true>(src, nullptr, relu_mask, q, qt, rows,   \
                                                         cols, ld, scale, amax, partial);        \
    }
AMPKIT_CAST_DMASK(e4m3, __NV_E4M3, v4, true)
AMPKIT_CAST_DMASK(e4m3, __NV_E4M3, v1, false)
AMPKIT_CAST_DMASK(e5m2, __NV_E5M2, v4, true)
AMPKIT_CAST_DMASK(e5m2, __NV_E5M2, v1, false)

// The batch stage into the first FP8 layer's input (E4M3, the forward format): over f32 pixels
// or palette codes (augment.cu's two datasets), v4 (q and qt 4-byte aligned, inputs % 4 == 0)
// or v1 stores.
#define AMPKIT_GATHER_CAST(PNAME, PX, PARAMS, MAKE, VNAME, V)                                     \
    extern "C" __global__ void __launch_bounds__(kThreads, kBlocksPerSmGather)                   \
        fp8_gather_cast_transpose_##PNAME##_e4m3_##VNAME(                                        \
            PARAMS, const unsigned* labels, const unsigned* order, const int* shifts,            \
            const unsigned* cursor, unsigned* labels_out, uint8_t* q, uint8_t* qt, size_t n,     \
            size_t plan_len, unsigned inputs, unsigned side, unsigned count, float background,   \
            size_t ld, const float* scale, unsigned int* amax,                                   \
            const __grid_constant__ WeightJobs weights) {                                        \
        pdl_start();                                                                             \
        gather_cast_transpose<__NV_E4M3, V, PX>(MAKE, labels, order, shifts, cursor, labels_out, \
                                                q, qt, n, plan_len, inputs, side, count,         \
                                                background, ld, scale, amax, weights);           \
    }
#define AMPKIT_COMMA ,
AMPKIT_GATHER_CAST(f32, augment_pixels::F32Pixels, const float* images,
                   augment_pixels::F32Pixels{images}, v4, true)
AMPKIT_GATHER_CAST(f32, augment_pixels::F32Pixels, const float* images,
                   augment_pixels::F32Pixels{images}, v1, false)
AMPKIT_GATHER_CAST(coded, augment_pixels::CodedPixels,
                   const unsigned char* codes AMPKIT_COMMA const float* palette,
                   (augment_pixels::CodedPixels{codes AMPKIT_COMMA palette}), v4, true)
AMPKIT_GATHER_CAST(coded, augment_pixels::CodedPixels,
                   const unsigned char* codes AMPKIT_COMMA const float* palette,
                   (augment_pixels::CodedPixels{codes AMPKIT_COMMA palette}), v1, false)
#undef AMPKIT_COMMA

// The dbias casts' second pass (bias_grad_finish.cuh, gemm.cu's bias_grad_finish bit for bit)
// for up to 4 biases in one launch, here so that on Hopper it is launched as a dependent of the
// kernel before it: one bias after cast_transpose_dbias, or every FP8 layer's together after the
// training step's backward. Job j takes ⌈cols_j / 32⌉ blocks, in job order.
constexpr int kMaxFinishJobs = 4;
struct FinishJobs {
    const float* partial[kMaxFinishJobs];
    float* db[kMaxFinishJobs];
    int splits[kMaxFinishJobs];
    int cols[kMaxFinishJobs];
    int count;
};
extern "C" __global__ void __launch_bounds__(bias_grad_finish_detail::kFinishThreads)
    fp8_bias_grad_finish_many(const __grid_constant__ FinishJobs jobs) {
    pdl_start();
    constexpr int kCols = bias_grad_finish_detail::kFinishCols;
    int block = blockIdx.x, j = 0;
    while (j < jobs.count && block >= (jobs.cols[j] + kCols - 1) / kCols) block -= (jobs.cols[j] + kCols - 1) / kCols, ++j;
    if (j >= jobs.count) return;  // uniform: the whole block
    bias_grad_finish_detail::finish(jobs.partial[j], jobs.splits[j], jobs.cols[j], jobs.db[j], block);
}

extern "C" __global__ void __launch_bounds__(kThreads)
    fp8_update_scales(float* history, float* scale, float* scale_inv, const float* fp8_max,
                      unsigned int len, int most_recent, float margin_factor) {
    pdl_start();
    __shared__ float window[kMaxHistory];
    __shared__ float warp_max[kThreads / 32];
    const unsigned int t = blockIdx.x;
    float* h = history + size_t(t) * len;
    float m = 0.f;
    for (unsigned int i = threadIdx.x; i < len; i += kThreads) {
        const float a = h[i];
        window[i] = a;
        m = fmaxf(m, a);
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
    __syncthreads();  // the whole window is staged: the roll may overwrite it
    for (unsigned int i = threadIdx.x; i < len; i += kThreads)
        h[i] = i == 0 ? 0.f : (i == len - 1 ? window[0] : window[i + 1]);
    if (threadIdx.x == 0) {
        for (int w = 1; w < kThreads / 32; ++w) m = fmaxf(m, warp_max[w]);
        const float amax = most_recent ? window[0] : m;
        float s = scale[t];
        if (isfinite(amax) && amax > 0.f) s = fp8_max[t] * margin_factor / amax;
        if (isinf(s)) s = FLT_MAX;
        scale[t] = s;
        scale_inv[t] = 1.0f / s;
    }
}
