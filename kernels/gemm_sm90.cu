// gemm_sm90.cu — FP16 (and, as gemm_sm90_bf16.cu, BF16) GEMM with f32 accumulation on Hopper
// tensor cores (wgmma + TMA), sm_90a.
//
// What: the same function as kernels/gemm.cu (C[m,n] = epilogue(A·B) in the forward, dgrad and
// wgrad layouts of src/cpu/gemm.rs, operands read in place, out_kind 0 16-bit / 1 f32 / 2 raw
// f32 K-split partials for gemm_splitk_reduce), for H100/H200 only. The mma.sync kernels in
// gemm.cu stay the portable path and the one for shapes this kernel does not fit (unaligned operands,
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
// Persistent kernels (v12, below gemm_tile): one block per SM walks a list of tiles, blocks in
// clusters of 2 that share the B tile through TMA multicast; see the comment above
// gemm_persistent. Cooperative (both consumers on one tile, 64 rows each) or ping-pong (each
// consumer whole tiles, in turn).
// Configs (block tile BM×BN×BK, stages, shared memory, blocks per SM):
//   h256:  128×256×64, 4 stages, 193 KB, 1 block/SM — one block per tile
//   h128:  128×128×64, 4 stages, 129 KB, 1 block/SM — one block per tile
//   p256:  128×256×64, 4 stages, 213 KB, persistent, cooperative, cluster 2
//   p128:  128×128×64, 6 stages, 213 KB, persistent, cooperative, cluster 2
//   pp128: 128×128×64, 6 stages, 213 KB, persistent, ping-pong, cluster 2
// Launch: h*: grid (tiles, 1, splits); p*: grid (2·clusters, 1, 1) with at most one block per SM
// (or the plan's count) and at most one cluster per unit; 384 threads, dynamic shared memory as
// above + 1 KB so the tiles can be aligned to the swizzle's 1024-byte period.
// Alignment (the host checks): each operand's contiguous dimension a multiple of 8 halves and
// its base 16-byte aligned (TMA's global-stride and address rules).
// Roofline: 8192³ = 1.1 TFLOP, 1.1 ms at the 989 TFLOP/s dense peak; per stage a block moves
// 48 KB into shared memory for 4.2 MFLOP (h256), 85 FLOP/B out of L2.
// Launched with programmatic dependent launch (pdl.cuh): every entry point starts with pdl_start().
#define AMPKIT_PDL 1
#include "common.cuh"
#include "gemm_element.cuh"
#include "gemm_epilogue.cuh"
#include "pdl.cuh"
#include "wgmma.cuh"

namespace gemm_sm90_detail {

using namespace wgmma;
using gemm_epilogue::Epilogue;
using gemm_epilogue::store4;

constexpr int BM = 128, BK = 64;
constexpr int THREADS = 384;
constexpr int BOX_BYTES = 64 * 64 * 2;  // one 64×64 M/N-major box, and one 64-row K-major slab

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
    // Consumer warpgroup (rows 64·cw .. 64·cw+63), broadcast so the compiler knows it is
    // warp-uniform and keeps the matrix descriptors in uniform registers.
    const int ctid = tid - 128, cw = __shfl_sync(0xffffffffu, ctid / 128, 0);
    const int warp = (ctid / 32) % 4, lane = tid % 32;
    float d[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) d[i] = 0.f;

    // Both operands' shared-memory layouts (see the header): a k16 step moves 32 bytes along a
    // K-major row, or 16 rows of 128 bytes down an M/N-major box.
    constexpr uint32_t A_STEP = A_MN ? 16 * 128 : 32, B_STEP = B_MN ? 16 * 128 : 32;
    constexpr uint32_t A_LBO = A_MN ? BOX_BYTES : 16, B_LBO = B_MN ? BOX_BYTES : 16;
    // Stage 0's descriptors; a stage or k16 step further adds its offset in 16-byte units to
    // the address field, which cannot carry (shared addresses stay below 2^18).
    const uint64_t da0 = descriptor(sA + cw * BOX_BYTES, A_LBO, 1024), db0 = descriptor(sB, B_LBO, 1024);
    for (int i = 0, s = 0, phase = 0; i < nt; ++i) {
        mbar_wait(full(s), phase);
        const uint64_t da = da0 + uint64_t(s * (A_BYTES >> 4)), db = db0 + uint64_t(s * (B_BYTES >> 4));
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            wgmma_tile<BN, A_MN, B_MN>(d, da + kk * (A_STEP >> 4), db + kk * (B_STEP >> 4));
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


// --- v12: the persistent, clustered kernel (configs p256, p128) ---
//
// One block per SM for the whole GEMM (the host launches at most one per SM, in clusters of 2).
// A block's producer and consumers walk the same list of work units (output tile pairs × K
// splits, cluster c taking units c, c + clusters, …) with one shared ring of stages, so the
// producer fills the next tile's stages while the consumers are still in the previous tile's
// epilogue: no pipeline fill per tile and no block launch per tile.
// The two blocks of a cluster take vertically adjacent tiles (rows m0 and m0 + 128) of the same
// column strip, so they need the same B tile: each loads half of it with a TMA multicast into
// both blocks' shared memory (half the B traffic out of L2), and its own A tile. A stage is
// therefore free only when the consumers of both blocks are done with it: its "empty" mbarrier
// counts the 8 consumer warps of each block, arriving remotely for the peer.
// Epilogue: each consumer warpgroup stages its 64 rows in 32-column chunks through a private
// buffer (the stages belong to the producer now) and stores row segments with store4.
constexpr int CLUSTER = 2;
constexpr int EPI_COLS = 32, EPI_LD = EPI_COLS + 8;  // LD ≡ 8 (mod 32): conflict-free float2 writes
constexpr int EPI_BYTES = 64 * EPI_LD * 4;

// Where work unit u of a cluster's list lies: its output tile for block `rank`, its K range and
// split. Units run over split-major (tile, split) pairs; tiles over the pairs of tile-rows in
// raster groups of `group` pair-rows sweeping the tile-columns together.
struct Unit {
    int m0, n0, kt0, nt, split;
};
template <int BN>
__device__ __forceinline__ Unit unit_at(int u, int rank, int M, int N, int K, int k_tiles_per_split,
                                        int group) {
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int pair_rows = (tiles_m + 1) / 2, cluster_tiles = pair_rows * tiles_n;
    const int t = u % cluster_tiles, split = u / cluster_tiles;
    const int g = t / (group * tiles_n), first = g * group, rows = min(pair_rows - first, group);
    const int pr = first + (t % (group * tiles_n)) % rows, tn = (t % (group * tiles_n)) / rows;
    const int k_tiles = (K + BK - 1) / BK, kt0 = split * k_tiles_per_split;
    return Unit{(2 * pr + rank) * BM, tn * BN, kt0, max(min(k_tiles, kt0 + k_tiles_per_split) - kt0, 0),
                split};
}

template <int BN, int STAGES, bool PINGPONG, bool A_MN, bool B_MN>
__device__ __forceinline__ void gemm_persistent(const TensorMap& ta, const TensorMap& tb, void* C,
                                                int M, int N, int K, const Epilogue& e, int out_kind,
                                                int k_tiles_per_split, int splits, int group_m) {
    constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES, B_HALF = B_BYTES / CLUSTER;
    // Ping-pong: each consumer warpgroup computes whole tiles (both 64-row halves), taking every
    // other unit, so one's epilogue overlaps the other's main loop; BN = 128 keeps its two
    // halves' accumulators at 128 registers.
    constexpr int HALVES = PINGPONG ? 2 : 1;
    static_assert(!PINGPONG || BN == 128, "ping-pong holds 2 × 64 accumulators per thread");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    // Same offsets in both blocks of a cluster (same kernel, same dynamic shared memory base), which
    // the multicast loads rely on.
    const uint32_t base = (smem_addr(smem_raw) + 1023) & ~1023u;
    const uint32_t sA = base, sB = base + STAGES * A_BYTES, sEpi = sB + STAGES * B_BYTES;
    const uint32_t bars = sEpi + 2 * EPI_BYTES;  // full[STAGES], empty[STAGES], order[2]
    auto full = [&](int s) { return bars + 8 * s; };
    auto empty = [&](int s) { return bars + 8 * (STAGES + s); };
    // Ping-pong's turn barriers: order[w] completes a phase when the other warpgroup has passed
    // all its waits of a unit, so the two main loops alternate and neither waits on a stage two
    // fills ahead (a parity wait cannot tell that fill from the one before the last).
    auto order = [&](int w) { return bars + 8 * (2 * STAGES + w); };

    const int tid = threadIdx.x, wg = tid / 128;
    const int rank = int(ampkit::cluster_rank());
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full(s), 1);              // own expect_tx arrive; both blocks' TMA bytes
            // One arrive per consumer warp of each block that reads the stage: both warpgroups,
            // or (ping-pong) the one whose unit it holds.
            mbar_init(empty(s), (PINGPONG ? 4 : 8) * CLUSTER);
        }
        mbar_init(order(0), 4);
        mbar_init(order(1), 4);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    // The peer's multicast loads and remote arrives target these barriers: both blocks'
    // initialisation must be visible first.
    cluster_sync();

    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int units = (tiles_m + 1) / 2 * tiles_n * splits;
    const int first_unit = int(ampkit::cluster_index()), stride = int(ampkit::cluster_count());
    const int group = max(group_m, 1);

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (tid == 0) {
            asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&ta)) : "memory");
            asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tb)) : "memory");
            int s = 0, phase = 0;
            for (int u = first_unit; u < units; u += stride) {
                const Unit w = unit_at<BN>(u, rank, M, N, K, k_tiles_per_split, group);
                for (int i = 0; i < w.nt; ++i) {
                    mbar_wait(empty(s), phase ^ 1);
                    mbar_expect_tx(full(s), STAGE_BYTES);
                    const int k0 = (w.kt0 + i) * BK;
                    const uint32_t a = sA + s * A_BYTES, b = sB + s * B_BYTES;
                    if (A_MN) {
#pragma unroll
                        for (int j = 0; j < BM / 64; ++j) tma_load(a + j * BOX_BYTES, ta, w.m0 + 64 * j, k0, full(s));
                    } else {
                        tma_load(a, ta, k0, w.m0, full(s));
                    }
                    // This block's half of the B tile, into both blocks.
                    if (B_MN) {
                        constexpr int HALF_BOXES = BN / 64 / CLUSTER;
#pragma unroll
                        for (int j = 0; j < HALF_BOXES; ++j) {
                            const int box = rank * HALF_BOXES + j;
                            tma_load_multicast(b + box * BOX_BYTES, tb, w.n0 + 64 * box, k0, full(s), 0x3);
                        }
                    } else {
                        tma_load_multicast(b + rank * B_HALF, tb, k0, w.n0 + rank * (BN / CLUSTER), full(s), 0x3);
                    }
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
        // Consumer warpgroup (rows 64·cw .. 64·cw+63), broadcast so the compiler knows it is
        // warp-uniform and keeps the matrix descriptors in uniform registers.
        const int ctid = tid - 128, cw = __shfl_sync(0xffffffffu, ctid / 128, 0);
        const int warp = (ctid / 32) % 4, lane = tid % 32;
        float* stage = reinterpret_cast<float*>(smem_raw + (sEpi - smem_addr(smem_raw))) + cw * (EPI_BYTES / 4);
        constexpr uint32_t A_STEP = A_MN ? 16 * 128 : 32, B_STEP = B_MN ? 16 * 128 : 32;
        constexpr uint32_t A_LBO = A_MN ? BOX_BYTES : 16, B_LBO = B_MN ? BOX_BYTES : 16;
        // Stage 0's descriptors (this warpgroup's A half, or half 0 for ping-pong); a stage, half
        // or k16 step further adds its offset in 16-byte units to the address field, which
        // cannot carry (shared addresses stay below 2^18).
        const uint64_t da0 = descriptor(sA + (PINGPONG ? 0 : cw) * BOX_BYTES, A_LBO, 1024);
        const uint64_t db0 = descriptor(sB, B_LBO, 1024);
        // Releases a stage in both blocks of the cluster: lane r of each warp arrives on block r.
        auto release = [&](int st) {
            __syncwarp();
            if (lane < CLUSTER) mbar_arrive_cluster(empty(st), lane);
        };
        const size_t elem = out_kind == 0 ? 2 : 4;
        int s = 0, phase = 0;
        for (int u = first_unit, j = 0; u < units; u += stride, ++j) {
            const Unit w = unit_at<BN>(u, rank, M, N, K, k_tiles_per_split, group);
            if (PINGPONG && j % 2 != cw) {
                // The other warpgroup's unit: skip its stages in the ring.
                s += w.nt;
                phase ^= (s / STAGES) & 1;
                s %= STAGES;
                continue;
            }
            // Cooperative: this warpgroup's 64 rows of the tile; ping-pong: both 64-row halves.
            float d[HALVES][BN / 2];
#pragma unroll
            for (int h = 0; h < HALVES; ++h)
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) d[h][i] = 0.f;
            // Ping-pong: this warpgroup's n-th unit starts after the other's unit before it.
            if (PINGPONG && j > 0) mbar_wait(order(cw), (j / 2 - (cw == 0 ? 1 : 0)) & 1);
            int prev = -1;
            for (int i = 0; i < w.nt; ++i) {
                mbar_wait(full(s), phase);
                wgmma_fence();
                const uint64_t da = da0 + uint64_t(s * (A_BYTES >> 4)), db = db0 + uint64_t(s * (B_BYTES >> 4));
#pragma unroll
                for (int h = 0; h < HALVES; ++h) {
#pragma unroll
                    for (int kk = 0; kk < BK / 16; ++kk) {
                        wgmma_tile<BN, A_MN, B_MN>(d[h], da + uint64_t(h * (BOX_BYTES >> 4) + kk * (A_STEP >> 4)),
                                                   db + kk * (B_STEP >> 4));
                    }
                }
                wgmma_commit();
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

            // Epilogue, 32 columns at a time through this warpgroup's staging buffer.
            void* out = out_kind == 2 ? static_cast<void*>(static_cast<float*>(C) + size_t(w.split) * M * N) : C;
            const bool vec = (N % 4 == 0) && (reinterpret_cast<uintptr_t>(out) % (4 * elem) == 0);
            const int r = 16 * warp + lane / 4, c = 2 * (lane % 4);
            const int t = ctid % 128, sc = (t % (EPI_COLS / 4)) * 4, sr = t / (EPI_COLS / 4);
            constexpr int ROWS_PER_PASS = 128 / (EPI_COLS / 4);
#pragma unroll
            for (int h = 0; h < HALVES; ++h) {
                const int row0 = w.m0 + 64 * (PINGPONG ? h : cw), rows = min(64, M - row0);
                if (rows <= 0) continue;  // past M, e.g. the pad block of an odd number of tile-rows
#pragma unroll
                for (int ch = 0; ch < BN / EPI_COLS; ++ch) {
                    if (w.n0 + ch * EPI_COLS < N) {
#pragma unroll
                        for (int jj = 0; jj < EPI_COLS / 8; ++jj) {
                            const int q = ch * (EPI_COLS / 8) + jj;
                            *reinterpret_cast<float2*>(&stage[r * EPI_LD + 8 * jj + c]) =
                                make_float2(d[h][4 * q], d[h][4 * q + 1]);
                            *reinterpret_cast<float2*>(&stage[(r + 8) * EPI_LD + 8 * jj + c]) =
                                make_float2(d[h][4 * q + 2], d[h][4 * q + 3]);
                        }
                        asm volatile("bar.sync %0, 128;\n" ::"r"(2 + cw) : "memory");
                        // Not unrolled: store4 is large, and this sits in the unrolled chunk loop.
#pragma unroll 1
                        for (int rr = sr; rr < rows; rr += ROWS_PER_PASS) {
                            const float4 v = *reinterpret_cast<const float4*>(&stage[rr * EPI_LD + sc]);
                            store4(out, out_kind, M, N, row0 + rr, w.n0 + ch * EPI_COLS + sc, v, vec, e);
                        }
                        asm volatile("bar.sync %0, 128;\n" ::"r"(2 + cw) : "memory");
                    }
                }
            }
        }
    }
    // No block may exit while its peer can still arrive on its barriers or write its stages.
    cluster_sync();
}

}  // namespace gemm_sm90_detail

using namespace gemm_sm90_detail;

// Entry points: gemm_sm90_<layout>_<config>. Arguments: the tensor maps of A and B (built by
// src/ops/gemm/sm90.rs), C (or the split workspace), bias (may be null), M, N, K, alpha, beta,
// relu, out_kind (0 the module's 16-bit element, 1 f32, 2 f32 partials), K tiles per split,
// splits (the persistent kernels walk them as units; the others take them from the grid's z),
// tile-rows per raster group (pairs of tile-rows for the persistent kernels), the non-finite flag
// (may be null; gemm_epilogue.cuh). The same names in the f16 and the bf16 module.
#define AMPKIT_GEMM_SM90(NAME, BN, ST, REGS, MINB, AMN, BMN)                                       \
    extern "C" __global__ void __launch_bounds__(THREADS, MINB)                                   \
        NAME(const __grid_constant__ TensorMap ta, const __grid_constant__ TensorMap tb, void* C, \
             const float* bias, int M, int N, int K, float alpha, float beta, int relu,           \
             int out_kind, int k_tiles_per_split, int splits, int group_m, unsigned* nonfinite) { \
        pdl_start();                                                                              \
        const Epilogue e{bias, alpha, beta, relu, nonfinite};                                     \
        gemm_tile<BN, ST, REGS, AMN, BMN>(ta, tb, C, M, N, K, e, out_kind, k_tiles_per_split,     \
                                          group_m);                                               \
    }
#define AMPKIT_GEMM_SM90P(NAME, BN, ST, PP, AMN, BMN)                                                 \
    extern "C" __global__ void __cluster_dims__(CLUSTER, 1, 1) __launch_bounds__(THREADS, 1)     \
        NAME(const __grid_constant__ TensorMap ta, const __grid_constant__ TensorMap tb, void* C, \
             const float* bias, int M, int N, int K, float alpha, float beta, int relu,           \
             int out_kind, int k_tiles_per_split, int splits, int group_m, unsigned* nonfinite) { \
        pdl_start();                                                                              \
        const Epilogue e{bias, alpha, beta, relu, nonfinite};                                     \
        gemm_persistent<BN, ST, PP, AMN, BMN>(ta, tb, C, M, N, K, e, out_kind, k_tiles_per_split, \
                                          splits, group_m);                                       \
    }

// Register budget: 65536 per SM, 128·40 + 256·232 = 64512 for one block. (Two h128 blocks per SM
// would leave 85 registers per thread at entry; ptxas needs 90 for the wgmma.)
#define AMPKIT_GEMM_SM90_LAYOUT(L, AMN, BMN)                         \
    AMPKIT_GEMM_SM90(gemm_sm90_##L##_h256, 256, 4, 232, 1, AMN, BMN) \
    AMPKIT_GEMM_SM90(gemm_sm90_##L##_h128, 128, 4, 232, 1, AMN, BMN) \
    AMPKIT_GEMM_SM90P(gemm_sm90_##L##_p256, 256, 4, false, AMN, BMN) \
    AMPKIT_GEMM_SM90P(gemm_sm90_##L##_p128, 128, 6, false, AMN, BMN) \
    AMPKIT_GEMM_SM90P(gemm_sm90_##L##_pp128, 128, 6, true, AMN, BMN)

AMPKIT_GEMM_SM90_LAYOUT(fwd, false, false)
AMPKIT_GEMM_SM90_LAYOUT(dgrad, false, true)
AMPKIT_GEMM_SM90_LAYOUT(wgrad, true, true)
