// gemm.cu — FP16 (and, as gemm_bf16.cu, BF16) tensor-core GEMM with f32 accumulation for MLP
// training, plus its helpers.
//
// What: C[m,n] = epilogue(A·B) in the three layouts of src/cpu/gemm.rs, operands read in place:
//   fwd    C = A[m,k]·B[n,k]ᵀ   (Y = X·Wᵀ)    A K-major, B K-major
//   dgrad  C = A[m,k]·B[k,n]    (dX = dY·W)   A K-major, B N-major
//   wgrad  C = A[k,m]ᵀ·B[k,n]   (dW = dYᵀ·X)  A M-major, B N-major
// Epilogue (the CPU reference's order): v = alpha·acc; v += bias[col]; v += beta·C_old (only if
// beta ≠ 0); relu; one rounding to f16 or f32. out_kind 2 writes raw f32 partial sums of one
// K-split to a workspace instead; gemm_splitk_reduce adds the splits in order and applies the
// epilogue (deterministic: no atomics).
//
// Algorithm: mma.sync.m16n8k16 (f16 × f16 → f32) fed by ldmatrix (.trans for the M/N-major
// operands) from shared memory, which a STAGES-deep cp.async pipeline fills with 16-byte copies
// (zero-filled past the edges). Shared tiles are padded by 8 halves per row, which makes every
// ldmatrix phase and every 16-byte store conflict-free. Tiles are visited in groups of group_m
// tile-rows (4 by default) so neighbouring blocks share A and B in L2.
// Configs (block tile × stage depth, warps of warp tile, stages, smem), chosen by measurement
// (docs/kernels/gemm.md):
//   l64: 128×256×64, 8 warps (2×4) of 64×64, 3 stages, 150-166 KB — large problems
//   m:   128×128×32, 4 warps (2×2) of 64×64, 4 stages,  68-80 KB  — mid-size, 2 blocks/SM
//   m8:  128×128×32, 8 warps (2×4) of 64×32, 4 stages,  68-80 KB  — mid-size with few tiles
//   m8k64: the same with 64-deep stages, 3 of them, 104-110 KB
//   s:    64×64×32,  4 warps (2×2) of 32×32, 4 stages,  36-40 KB  — small problems, and the
//       unaligned path (leading dimension not a multiple of 8 halves, or a pointer not 16-byte
//       aligned), which loads element by element instead of cp.async
// The host picks the config and a K-split by shape (src/ops/gemm/) and states the fast path's
// alignment: each operand's contiguous dimension a multiple of 8 and its base 16-byte aligned.
// Launch: grid (tiles, 1, splits), block = 32·warps, dynamic smem as above.
// Roofline (H100 SXM: 989 TFLOP/s dense f16 peak, mma.sync reported to top out near 63-65% of
// it; 3.35 TB/s): 8192³ = 1.1 TFLOP → 1.1 ms at peak; the MLP's 4096×512×784 forward = 3.3 GFLOP,
// 11.4 MB → 3.3 µs of math against 3.8 µs of DRAM traffic, so it sits at the ridge point.
#include "common.cuh"
#include "gemm_element.cuh"
#include "gemm_epilogue.cuh"
#include "bias_grad_finish.cuh"

// A named namespace, not an anonymous one: nvcc names anonymous-namespace symbols (e.g. the
// extern shared array) after a hash of the source path, which would make the committed PTX
// depend on where the repository is checked out.
namespace gemm_detail {

using gemm_element::elem;

constexpr int PAD = 8;   // halves of padding per shared-memory row

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Shared-memory operands are 32-bit shared-window addresses (base + compile-time offsets), not
// generic pointers: a generic pointer per fragment costs two registers and a conversion each.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32." AMPKIT_GEMM_AB "." AMPKIT_GEMM_AB
        ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One operand's BK-deep slice of a tile, global → shared.
//   K-major: global [outer][K] (row stride K), tile rows o0..o0+ROWS, k0..k0+BK → smem [ROWS][BK+PAD]
//   MN-major: global [K][outer] (row stride outer), k0..k0+BK, o0..o0+ROWS → smem [BK][ROWS+PAD]
// VEC: one cp.async of 8 halves per chunk (contiguous dimension a multiple of 8, so a chunk is
// entirely inside or outside); otherwise element by element with bounds checks.
template <int BK, int ROWS, bool KMAJOR, bool VEC, int THREADS>
__device__ __forceinline__ void load_tile(uint32_t smem, const elem* __restrict__ g, int outer,
                                          int K, int o0, int k0, int tid) {
    constexpr int PER_ROW = KMAJOR ? BK / 8 : ROWS / 8;  // 8-half chunks per shared row
    constexpr int SROWS = KMAJOR ? ROWS : BK;            // shared rows
    constexpr int LD = (KMAJOR ? BK : ROWS) + PAD;       // shared row pitch, halves
    static_assert(THREADS % PER_ROW == 0 && SROWS % (THREADS / PER_ROW) == 0,
                  "every thread copies the same column of whole passes");
    // Each thread owns one chunk column and every (THREADS / PER_ROW)-th row, so one base
    // pointer and one stride address all of its chunks (a pointer per chunk would cost two
    // registers each, which the big tiles cannot spare).
    constexpr int ROWS_PER_PASS = THREADS / PER_ROW;
    const int r0 = tid / PER_ROW, col = (tid % PER_ROW) * 8;
    const int rows_total = KMAJOR ? outer : K;
    const int cols_total = KMAJOR ? K : outer;
    const int gr0 = (KMAJOR ? o0 : k0) + r0;
    const int gc = (KMAJOR ? k0 : o0) + col;
    const elem* src0 = g + size_t(gr0) * cols_total + gc;
    const size_t pass_stride = size_t(ROWS_PER_PASS) * cols_total;
    const uint32_t dst0 = smem + 2 * (r0 * LD + col);
#pragma unroll
    for (int i = 0; i < SROWS / ROWS_PER_PASS; ++i) {
        const int gr = gr0 + i * ROWS_PER_PASS;
        const elem* src = src0 + i * pass_stride;
        const uint32_t dst = dst0 + 2 * i * ROWS_PER_PASS * LD;
        if (VEC) {
            // Contiguous dimension a multiple of 8: a chunk is entirely inside or outside.
            const bool inside = gr < rows_total && gc < cols_total;
            cp_async16(dst, inside ? src : g, inside ? 16 : 0);
        } else {
            alignas(16) elem v[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                v[e] = (gr < rows_total && gc + e < cols_total) ? src[e] : gemm_element::from_float(0.f);
            }
            const uint4 w = *reinterpret_cast<const uint4*>(v);
            asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"r"(dst), "r"(w.x), "r"(w.y),
                         "r"(w.z), "r"(w.w));
        }
    }
}

// A fragment (16×16, row-major as mma wants it) for rows mb.., k kb.. of the stage's A tile.
template <int BK, bool KMAJOR, int ROWS>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], uint32_t tile, int mb, int kb,
                                            int lane) {
    const int j = lane >> 3, r = lane & 7;
    if (KMAJOR) {
        ldmatrix_x4(a, tile + 2 * ((mb + r + (j & 1) * 8) * (BK + PAD) + kb + (j >> 1) * 8));
    } else {
        ldmatrix_x4_trans(a, tile + 2 * ((kb + r + (j >> 1) * 8) * (ROWS + PAD) + mb + (j & 1) * 8));
    }
}

// B fragments of two n8 blocks (nb.. and nb+8..): b[0], b[1] for the first, b[2], b[3] for the
// second.
template <int BK, bool KMAJOR, int ROWS>
__device__ __forceinline__ void load_b_frags(uint32_t (&b)[4], uint32_t tile, int nb, int kb,
                                             int lane) {
    const int j = lane >> 3, r = lane & 7;
    if (KMAJOR) {
        ldmatrix_x4(b, tile + 2 * ((nb + r + (j >> 1) * 8) * (BK + PAD) + kb + (j & 1) * 8));
    } else {
        ldmatrix_x4_trans(b, tile + 2 * ((kb + r + (j & 1) * 8) * (ROWS + PAD) + nb + (j >> 1) * 8));
    }
}

using gemm_epilogue::Epilogue;
using gemm_epilogue::finish;

using gemm_epilogue::store4;

template <int BM, int BN, int BK, int WARPS_M, int WARPS_N, int STAGES, bool A_K, bool B_K,
          bool VEC>
__device__ __forceinline__ void gemm_tile(const elem* __restrict__ A,
                                          const elem* __restrict__ B, void* C, int M, int N,
                                          int K, const Epilogue& e, int out_kind,
                                          int k_tiles_per_split, int group_m) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    constexpr int MI = WM / 16, NI = WN / 8;
    constexpr int KK = BK / 16;  // m16n8k16 steps per stage
    static_assert(NI % 2 == 0, "B fragments load in pairs");
    static_assert(KK >= 2, "the pipeline waits one step before the end of a stage");
    constexpr int A_TILE = A_K ? BM * (BK + PAD) : BK * (BM + PAD);
    constexpr int B_TILE = B_K ? BN * (BK + PAD) : BK * (BN + PAD);

    extern __shared__ __align__(16) unsigned char smem_raw[];
    const uint32_t sA = smem_addr(smem_raw);
    const uint32_t sB = sA + 2 * STAGES * A_TILE;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;

    // Grouped tile order: group_m tile-rows sweep the tile-columns together, sharing B in L2.
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int GROUP = max(group_m, 1);
    const int pid = blockIdx.x;
    const int group = pid / (GROUP * tiles_n);
    const int first_m = group * GROUP;
    const int group_rows = min(tiles_m - first_m, GROUP);
    const int tm = first_m + (pid % (GROUP * tiles_n)) % group_rows;
    const int tn = (pid % (GROUP * tiles_n)) / group_rows;
    const int m0 = tm * BM, n0 = tn * BN;

    const int k_tiles = (K + BK - 1) / BK;
    const int kt0 = blockIdx.z * k_tiles_per_split;
    const int nt = max(min(k_tiles, kt0 + k_tiles_per_split) - kt0, 0);

    float acc[MI][NI][4];
    // The unaligned kernel's blocked summation (see the end of the K loop); unused otherwise.
    float total[VEC ? 1 : MI][VEC ? 1 : NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                acc[i][j][q] = 0.f;
                if (!VEC) total[i][j][q] = 0.f;
            }

    auto load_stage = [&](int stage, int kt) {
        const int k0 = (kt0 + kt) * BK;
        load_tile<BK, BM, A_K, VEC, THREADS>(sA + 2 * stage * A_TILE, A, M, K, m0, k0, tid);
        load_tile<BK, BN, B_K, VEC, THREADS>(sB + 2 * stage * B_TILE, B, N, K, n0, k0, tid);
    };
    // Fragments are double-buffered in registers: step kk's mma runs while step kk+1's
    // ldmatrix is in flight, so with only 4-8 warps per SM the shared-memory latency stays hidden.
    uint32_t af[2][MI][4];
    uint32_t bf[2][NI][2];
    auto load_frags = [&](int buf, int stage, int kk) {
        const uint32_t a_t = sA + 2 * stage * A_TILE;
        const uint32_t b_t = sB + 2 * stage * B_TILE;
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
            load_a_frag<BK, A_K, BM>(af[buf][mi], a_t, wm * WM + mi * 16, kk * 16, lane);
#pragma unroll
        for (int ni = 0; ni < NI; ni += 2) {
            uint32_t b4[4];
            load_b_frags<BK, B_K, BN>(b4, b_t, wn * WN + ni * 8, kk * 16, lane);
            bf[buf][ni][0] = b4[0];
            bf[buf][ni][1] = b4[1];
            bf[buf][ni + 1][0] = b4[2];
            bf[buf][ni + 1][1] = b4[3];
        }
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nt) load_stage(s, s);
        cp_async_commit();
    }
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    int read_stage = 0, write_stage = STAGES - 1;
    if (nt > 0) load_frags(0, 0, 0);

    for (int i = 0; i < nt; ++i) {
#pragma unroll
        for (int kk = 0; kk < KK; ++kk) {
            // Next step's fragments: from this stage, or at the last step from the next stage,
            // which the wait below (one step earlier) made complete and visible.
            if (kk == KK - 1) {
                load_frags((kk + 1) & 1, read_stage, 0);
            } else {
                load_frags((kk + 1) & 1, read_stage, kk + 1);
            }
            if (kk == 0) {
                // Refill the stage consumed one tile ago: every warp has passed the barrier after
                // its last reads of it.
                const int pf = i + STAGES - 1;
                if (pf < nt) load_stage(write_stage, pf);
            }
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni)
                    mma16816(acc[mi][ni], af[kk & 1][mi], bf[kk & 1][ni][0], bf[kk & 1][ni][1]);
            if (kk == KK - 2) {
                // Commit this tile's prefetch, then wait until tile i+1 has landed: after this
                // commit, at most STAGES-2 younger groups may still be in flight.
                cp_async_commit();
                cp_async_wait<STAGES - 2>();
                __syncthreads();
                read_stage = read_stage + 1 == STAGES ? 0 : read_stage + 1;
                write_stage = write_stage + 1 == STAGES ? 0 : write_stage + 1;
            }
        }
        if (!VEC) {
            // Blocked summation (the unaligned kernel only, whose narrow outputs run long K
            // loops): the tensor cores add each stage's 32 products into a zeroed accumulator,
            // which is then added to the total with one f32 rounding. With one running
            // accumulator the tensor cores' own additions carried the error across the whole K
            // (relative L2 4.8e-6 at K = 4097, 24× cuBLAS's); now they span one stage.
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        total[mi][ni][q] += acc[mi][ni][q];
                        acc[mi][ni][q] = 0.f;
                    }
        }
    }
    if (!VEC) {
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[mi][ni][q] = total[mi][ni][q];
    }
    // Epilogue through shared memory, one 16-row slab of the warp tile at a time: fragments go
    // to a per-warp staging area, then each lane stores 4 consecutive columns, so a warp writes
    // whole row segments (coalesced) and the epilogue code stays one small loop.
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the pipeline's shared memory
    constexpr int LD = WN + 8;  // floats; +8 keeps the half-warp float2 writes conflict-free
    static_assert(WARPS_M * WARPS_N * 16 * LD * 4 <= STAGES * (A_TILE + B_TILE) * 2,
                  "staging fits in the pipeline's shared memory");
    float* slab = reinterpret_cast<float*>(smem_raw) + warp * 16 * LD;
    void* out = out_kind == 2 ? static_cast<void*>(static_cast<float*>(C) + size_t(blockIdx.z) * M * N) : C;
    const size_t elem = out_kind == 0 ? 2 : 4;
    const bool vec = (N % 4 == 0) && (reinterpret_cast<uintptr_t>(out) % (4 * elem) == 0);
    const int g = lane >> 2, t = lane & 3;
    constexpr int LANES_PER_ROW = WN / 4;
    constexpr int ROWS_PER_PASS = 32 / LANES_PER_ROW;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            *reinterpret_cast<float2*>(&slab[g * LD + ni * 8 + 2 * t]) = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
            *reinterpret_cast<float2*>(&slab[(g + 8) * LD + ni * 8 + 2 * t]) = make_float2(acc[mi][ni][2], acc[mi][ni][3]);
        }
        __syncwarp();
        const int c = (lane % LANES_PER_ROW) * 4;
        for (int r = lane / LANES_PER_ROW; r < 16; r += ROWS_PER_PASS) {
            const float4 v = *reinterpret_cast<const float4*>(&slab[r * LD + c]);
            store4(out, out_kind, M, N, m0 + wm * WM + mi * 16 + r, n0 + wn * WN + c, v, vec, e);
        }
        __syncwarp();
    }
}

}  // namespace gemm_detail

using namespace gemm_detail;

// Entry points: gemm_<layout>_<config>, the same names in the f16 and the bf16 module. Arguments:
// A, B, C (or the split workspace), bias (may be null), M, N, K, alpha, beta, relu, out_kind (0 the
// module's 16-bit element, 1 f32, 2 f32 partials), K tiles per split, tile-rows per raster group,
// the non-finite flag (may be null: gemm_epilogue.cuh's Epilogue::nonfinite).
#define AMPKIT_GEMM(NAME, BM, BN, BKK, WM, WN, ST, AK, BK_, VEC, MINB)                           \
    extern "C" __global__ void __launch_bounds__(WM * WN * 32, MINB)                            \
        NAME(const elem* A, const elem* B, void* C, const float* bias, int M, int N, int K,     \
             float alpha, float beta, int relu, int out_kind, int k_tiles_per_split,            \
             int group_m, unsigned* nonfinite) {                                                \
        const Epilogue e{bias, alpha, beta, relu, nonfinite};                                   \
        gemm_tile<BM, BN, BKK, WM, WN, ST, AK, BK_, VEC>(A, B, C, M, N, K, e, out_kind,         \
                                                         k_tiles_per_split, group_m);           \
    }

#define AMPKIT_GEMM_LAYOUT(L, AK, BK_)                                    \
    AMPKIT_GEMM(gemm_##L##_l64, 128, 256, 64, 2, 4, 3, AK, BK_, true, 1)      \
    AMPKIT_GEMM(gemm_##L##_m, 128, 128, 32, 2, 2, 4, AK, BK_, true, 1)        \
    AMPKIT_GEMM(gemm_##L##_m8, 128, 128, 32, 2, 4, 4, AK, BK_, true, 1)       \
    AMPKIT_GEMM(gemm_##L##_m8k64, 128, 128, 64, 2, 4, 3, AK, BK_, true, 1)    \
    AMPKIT_GEMM(gemm_##L##_s, 64, 64, 32, 2, 2, 4, AK, BK_, true, 1)          \
    AMPKIT_GEMM(gemm_##L##_unaligned, 64, 64, 32, 2, 2, 2, AK, BK_, false, 1)

AMPKIT_GEMM_LAYOUT(fwd, true, true)
AMPKIT_GEMM_LAYOUT(dgrad, true, false)
AMPKIT_GEMM_LAYOUT(wgrad, false, false)

// Adds the K-split partials ws[s][M][N] in split order and applies the epilogue; out_kind 0 the
// module's 16-bit element, 1 f32. Grid-stride over M·N.
extern "C" __global__ void gemm_splitk_reduce(const float* __restrict__ ws, int splits, int M,
                                              int N, void* C, int out_kind, const float* bias,
                                              float alpha, float beta, int relu,
                                              unsigned* nonfinite) {
    const Epilogue e{bias, alpha, beta, relu, nonfinite};
    const size_t total = size_t(M) * N;
    bool bad = false;
    for (size_t i = ampkit::global_thread(); i < total; i += ampkit::grid_threads()) {
        float acc = 0.f;
        for (int s = 0; s < splits; ++s) acc += ws[size_t(s) * total + i];
        const int col = int(i % N);
        if (out_kind == 1) {
            float* p = static_cast<float*>(C) + i;
            *p = finish(acc, col, e.beta != 0.f ? *p : 0.f, e);
            bad |= !isfinite(*p);
        } else {
            gemm_element::elem* p = static_cast<gemm_element::elem*>(C) + i;
            const float old = e.beta != 0.f ? gemm_element::to_float(*p) : 0.f;
            *p = gemm_element::from_float(finish(acc, col, old, e));
            bad |= !isfinite(gemm_element::to_float(*p));
        }
    }
    if (nonfinite) gemm_epilogue::report_nonfinite(nonfinite, bad);
}

// The bias gradient lives in the f16 module only: it reads f16, bf16 or f32 gradients alike.
#if !defined(AMPKIT_GEMM_BF16)

// Bias gradient, pass 1: partial[split][col] = Σ dy[row][col] over this split's rows, in f32.
// Block: 32 column pairs × 8 row lanes; grid (ceil(cols/64), splits). The 8 lanes' sums are added
// in lane order, so the result does not depend on scheduling.
template <typename T>
__device__ __forceinline__ void bias_grad_partial(const T* __restrict__ dy, int rows, int cols,
                                                  int rows_per_split, float* __restrict__ partial) {
    __shared__ float sums[8][64];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const int c = blockIdx.x * 64 + 2 * tx;
    const int r0 = blockIdx.y * rows_per_split, r1 = min(rows, r0 + rows_per_split);
    float s0 = 0.f, s1 = 0.f;
    for (int r = r0 + ty; r < r1; r += 8) {
        const T* row = dy + size_t(r) * cols;
        if (c < cols) s0 += float(row[c]);
        if (c + 1 < cols) s1 += float(row[c + 1]);
    }
    sums[ty][2 * tx] = s0;
    sums[ty][2 * tx + 1] = s1;
    __syncthreads();
    if (ty == 0) {
        for (int h = 0; h < 2; ++h) {
            float s = 0.f;
            for (int l = 0; l < 8; ++l) s += sums[l][2 * tx + h];
            if (c + h < cols) partial[size_t(blockIdx.y) * cols + c + h] = s;
        }
    }
}

extern "C" __global__ void bias_grad_partial_f16(const __half* dy, int rows, int cols,
                                                 int rows_per_split, float* partial) {
    bias_grad_partial(dy, rows, cols, rows_per_split, partial);
}
extern "C" __global__ void bias_grad_partial_bf16(const __nv_bfloat16* dy, int rows, int cols,
                                                  int rows_per_split, float* partial) {
    bias_grad_partial(dy, rows, cols, rows_per_split, partial);
}
extern "C" __global__ void bias_grad_partial_f32(const float* dy, int rows, int cols,
                                                 int rows_per_split, float* partial) {
    bias_grad_partial(dy, rows, cols, rows_per_split, partial);
}

// Bias gradient, pass 2 (bias_grad_finish.cuh): db[col] = Σ_split partial[split][col], in
// split order. Launch: 256 threads, ceil(cols / 32) blocks.
extern "C" __global__ void __launch_bounds__(bias_grad_finish_detail::kFinishThreads)
    bias_grad_finish(const float* __restrict__ partial, int splits, int cols, float* __restrict__ db) {
    bias_grad_finish_detail::finish(partial, splits, cols, db, blockIdx.x);
}

#endif  // !AMPKIT_GEMM_BF16
