// gemm_sm90.cu — FP16 GEMM with f32 accumulation on Hopper tensor cores (wgmma + TMA), sm_90a.
//
// What: the same function as kernels/gemm.cu (C[m,n] = epilogue(A·B) in the forward, dgrad and
// wgrad layouts of src/cpu/gemm.rs, operands read in place, out_kind 0 f16 / 1 f32 / 2 raw f32
// K-split partials for gemm_splitk_reduce), for H100/H200 only. The mma.sync kernels in gemm.cu
// stay the portable path and the one for shapes this kernel does not fit (unaligned operands,
// N ≤ 64).
//
// Algorithm: warp-specialised producer/consumer pipeline.
//   - Warpgroup 0 (producer): one thread issues TMA loads (cp.async.bulk.tensor.2d) of each
//     BK = 64 deep stage of the A and B tiles into shared memory with the 128-byte swizzle, and
//     completes them on the stage's "full" mbarrier (expect_tx). It gives its registers away
//     (setmaxnreg.dec 40).
//   - Warpgroups 1 and 2 (consumers): each owns 64 rows of the 128-row block tile and the full
//     BN columns: per stage four wgmma.m64nBNk16 (A and B from shared memory through matrix
//     descriptors, f32 accumulators in registers: BN/2 per thread). One wgmma group stays in
//     flight across stages: once a stage's group has been issued, the previous group is waited
//     for and its stage released (one arrive per warp on its "empty" mbarrier).
//   - K-major operands (forward A and B, dgrad A) are boxes of 64 K × rows; M/N-major ones
//     (dgrad B, wgrad A and B) are boxes of 64 rows × 64 K, 8 KB each, read by wgmma with its
//     transpose bit. TMA zero-fills everything past M, N and K, so tails need no code.
//   - Epilogue through shared memory (the drained stages): accumulators → padded f32 staging →
//     coalesced row segments, with the shared epilogue of gemm_epilogue.cuh.
// Configs (block tile BM×BN×BK, stages, shared memory, blocks per SM):
//   h256: 128×256×64, 4 stages, 193 KB, 1 block/SM  — large problems
//   h128: 128×128×64, 4 stages, 129 KB, 1 block/SM  — MLP-sized problems (twice the tiles)
// Launch: grid (tiles, 1, splits), 384 threads, dynamic shared memory as above + 1 KB so the
// tiles can be aligned to the swizzle's 1024-byte period.
// Alignment (the host checks): each operand's contiguous dimension a multiple of 8 halves and
// its base 16-byte aligned (TMA's global-stride and address rules).
// Roofline: 8192³ = 1.1 TFLOP, 1.1 ms at the 989 TFLOP/s dense peak; per stage a block moves
// 48 KB into shared memory for 4.2 MFLOP (h256), 85 FLOP/B out of L2.
// Launched with programmatic dependent launch (pdl.cuh): every entry point starts with pdl_start().
#define AMPKIT_PDL 1
#include "common.cuh"
#include "gemm_epilogue.cuh"
#include "pdl.cuh"

namespace gemm_sm90_detail {

using gemm_epilogue::Epilogue;
using gemm_epilogue::store4;

constexpr int BM = 128, BK = 64;
constexpr int THREADS = 384;
constexpr int BOX_BYTES = 64 * 64 * 2;  // one 64×64 M/N-major box, and one 64-row K-major slab

// The driver's CUtensorMap: 128 opaque bytes, 64-byte aligned, passed by value as a
// __grid_constant__ parameter so TMA can read it from parameter space.
struct alignas(64) TensorMap {
    uint64_t opaque[16];
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase with this parity has completed. A fresh barrier counts its (virtual)
// previous phase, parity 1, as completed, which lets the producer start on empty stages.
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
    uint32_t done = 0;
    while (!done) {
        asm volatile(
            "{\n.reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    }
}

__device__ __forceinline__ void tma_load(uint32_t dst, const TensorMap& map, int c0, int c1,
                                         uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// wgmma shared-memory matrix descriptor, 128-byte swizzle: start address, leading-dimension
// byte offset (M/N-major: the distance between 64-element M/N blocks; unused for swizzled
// K-major), stride byte offset (the distance between 8-row groups), all in 16-byte units.
__device__ __forceinline__ uint64_t descriptor(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    auto enc = [](uint32_t x) { return uint64_t((x & 0x3FFFF) >> 4); };
    return enc(addr) | enc(lbo) << 16 | enc(sbo) << 32 | 1ull << 62;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// D(64×N, f32) += A(64×16) · B(16×N), both from shared memory; TA/TB = 1 for M/N-major operands.
// Generated: one "+f" operand per accumulator register.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t da, uint64_t db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
}

template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
}


template <int BN, int TA, int TB>
__device__ __forceinline__ void wgmma_tile(float (&d)[BN / 2], uint64_t da, uint64_t db) {
    if constexpr (BN == 256) {
        wgmma_m64n256k16<TA, TB>(d, da, db);
    } else {
        static_assert(BN == 128, "h256 and h128 only");
        wgmma_m64n128k16<TA, TB>(d, da, db);
    }
}

template <int BN, int STAGES, int REGS_CONSUMER, bool A_MN, bool B_MN>
__device__ __forceinline__ void gemm_tile(const TensorMap& ta, const TensorMap& tb, void* C, int M,
                                          int N, int K, const Epilogue& e, int out_kind,
                                          int k_tiles_per_split, int group_m) {
    constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    // The 128-byte swizzle repeats every 1024 bytes, and TMA and wgmma both apply it to address
    // bits, so every tile must start on a 1024-byte boundary.
    const uint32_t base = (smem_addr(smem_raw) + 1023) & ~1023u;
    const uint32_t sA = base, sB = base + STAGES * A_BYTES;
    const uint32_t bars = sB + STAGES * B_BYTES;  // full[STAGES], then empty[STAGES]
    auto full = [&](int s) { return bars + 8 * s; };
    auto empty = [&](int s) { return bars + 8 * (STAGES + s); };

    const int tid = threadIdx.x, wg = tid / 128;
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full(s), 1);     // the producer's expect_tx arrive; TMA completes the bytes
            mbar_init(empty(s), 8);    // one arrive per consumer warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

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

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (tid == 0) {
            asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&ta)) : "memory");
            asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tb)) : "memory");
            for (int i = 0, s = 0, phase = 0; i < nt; ++i) {
                mbar_wait(empty(s), phase ^ 1);
                mbar_expect_tx(full(s), STAGE_BYTES);
                const int k0 = (kt0 + i) * BK;
                const uint32_t a = sA + s * A_BYTES, b = sB + s * B_BYTES;
                if (A_MN) {
#pragma unroll
                    for (int j = 0; j < BM / 64; ++j) tma_load(a + j * BOX_BYTES, ta, m0 + 64 * j, k0, full(s));
                } else {
                    tma_load(a, ta, k0, m0, full(s));
                }
                if (B_MN) {
#pragma unroll
                    for (int j = 0; j < BN / 64; ++j) tma_load(b + j * BOX_BYTES, tb, n0 + 64 * j, k0, full(s));
                } else {
                    tma_load(b, tb, k0, n0, full(s));
                }
                if (++s == STAGES) {
                    s = 0;
                    phase ^= 1;
                }
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS_CONSUMER));
    const int ctid = tid - 128, cw = ctid / 128;  // consumer warpgroup: rows 64·cw .. 64·cw+63
    const int warp = (ctid / 32) % 4, lane = tid % 32;
    float d[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) d[i] = 0.f;

    // Both operands' shared-memory layouts (see the header): a k16 step moves 32 bytes along a
    // K-major row, or 16 rows of 128 bytes down an M/N-major box.
    constexpr uint32_t A_STEP = A_MN ? 16 * 128 : 32, B_STEP = B_MN ? 16 * 128 : 32;
    constexpr uint32_t A_LBO = A_MN ? BOX_BYTES : 16, B_LBO = B_MN ? BOX_BYTES : 16;
    for (int i = 0, s = 0, phase = 0; i < nt; ++i) {
        mbar_wait(full(s), phase);
        const uint32_t a = sA + s * A_BYTES + cw * BOX_BYTES, b = sB + s * B_BYTES;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            wgmma_tile<BN, A_MN, B_MN>(d, descriptor(a + kk * A_STEP, A_LBO, 1024),
                                       descriptor(b + kk * B_STEP, B_LBO, 1024));
        }
        wgmma_commit();
        // Keep this stage's wgmma group in flight while waiting for the next stage; the group
        // before it has finished reading its stage, which goes back to the producer.
        wgmma_wait<1>();
        __syncwarp();
        if (i > 0 && lane == 0) mbar_arrive(empty(s == 0 ? STAGES - 1 : s - 1));
        if (++s == STAGES) {
            s = 0;
            phase ^= 1;
        }
    }
    wgmma_wait<0>();

    // Epilogue through shared memory, so that global stores are whole row segments (16-byte f32
    // or 8-byte f16 per thread, a warp covering 128 consecutive columns) instead of the
    // accumulators' scattered 2-column pieces. The pipeline's stages are free once both consumer
    // warpgroups are past their last wgmma (named barrier 1: the 256 consumer threads; the
    // producer has exited).
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    constexpr int LD = BN + 8;  // floats; ≡ 8 (mod 32) keeps the float2 writes conflict-free
    static_assert(2 * 64 * LD * 4 <= STAGES * STAGE_BYTES, "staging fits in the stages");
    float* stage = reinterpret_cast<float*>(smem_raw + (base - smem_addr(smem_raw))) + cw * 64 * LD;
    // Accumulator layout of wgmma m64nN: warp w of the warpgroup holds rows 16w + lane/4 (+8),
    // and for each 8-column block j, columns 8j + 2·(lane%4) (+1) in d[4j..4j+3].
    {
        const int r = 16 * warp + lane / 4, c = 2 * (lane % 4);
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            *reinterpret_cast<float2*>(&stage[r * LD + 8 * j + c]) = make_float2(d[4 * j], d[4 * j + 1]);
            *reinterpret_cast<float2*>(&stage[(r + 8) * LD + 8 * j + c]) = make_float2(d[4 * j + 2], d[4 * j + 3]);
        }
    }
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    void* out = out_kind == 2 ? static_cast<void*>(static_cast<float*>(C) + size_t(blockIdx.z) * M * N) : C;
    const size_t elem = out_kind == 0 ? 2 : 4;
    const bool vec = (N % 4 == 0) && (reinterpret_cast<uintptr_t>(out) % (4 * elem) == 0);
    constexpr int THREADS_PER_ROW = BN / 4, ROWS_PER_PASS = 128 / THREADS_PER_ROW;
    const int t = ctid % 128, c = (t % THREADS_PER_ROW) * 4;
    // Columns past N (a narrow layer in a wide tile) and rows past M have nothing to store.
    const int rows = min(64, M - m0 - 64 * cw);
    if (n0 + c < N) {
#pragma unroll 4
        for (int r = t / THREADS_PER_ROW; r < rows; r += ROWS_PER_PASS) {
            const float4 v = *reinterpret_cast<const float4*>(&stage[r * LD + c]);
            store4(out, out_kind, M, N, m0 + 64 * cw + r, n0 + c, v, vec, e);
        }
    }
}

}  // namespace gemm_sm90_detail

using namespace gemm_sm90_detail;

// Entry points: gemm_sm90_<layout>_<config>. Arguments: the tensor maps of A and B (built by
// src/ops/gemm/sm90.rs), C (or the split workspace), bias (may be null), M, N, K, alpha, beta,
// relu, out_kind (0 f16, 1 f32, 2 f32 partials), K tiles per split, tile-rows per raster group.
#define AMPKIT_GEMM_SM90(NAME, BN, ST, REGS, MINB, AMN, BMN)                                       \
    extern "C" __global__ void __launch_bounds__(THREADS, MINB)                                   \
        NAME(const __grid_constant__ TensorMap ta, const __grid_constant__ TensorMap tb, void* C, \
             const float* bias, int M, int N, int K, float alpha, float beta, int relu,           \
             int out_kind, int k_tiles_per_split, int group_m) {                                  \
        pdl_start();                                                                              \
        const Epilogue e{bias, alpha, beta, relu};                                                \
        gemm_tile<BN, ST, REGS, AMN, BMN>(ta, tb, C, M, N, K, e, out_kind, k_tiles_per_split,     \
                                          group_m);                                               \
    }

// Register budget: 65536 per SM, 128·40 + 256·232 = 64512 for one block. (Two h128 blocks per SM
// would leave 85 registers per thread at entry; ptxas needs 90 for the wgmma.)
#define AMPKIT_GEMM_SM90_LAYOUT(L, AMN, BMN)                       \
    AMPKIT_GEMM_SM90(gemm_sm90_##L##_h256, 256, 4, 232, 1, AMN, BMN) \
    AMPKIT_GEMM_SM90(gemm_sm90_##L##_h128, 128, 4, 232, 1, AMN, BMN)

AMPKIT_GEMM_SM90_LAYOUT(fwd, false, false)
AMPKIT_GEMM_SM90_LAYOUT(dgrad, false, true)
AMPKIT_GEMM_SM90_LAYOUT(wgrad, true, true)
