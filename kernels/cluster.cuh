// cluster.cuh — thread-block-cluster helpers (sm_90): the cluster rank, index and count (also used
// by the persistent GEMM), and for row kernels that split one long row across the C blocks of a
// cluster, the combining of per-block statistics through distributed shared memory. Only the
// *_sm90 modules (built for compute_90a) include it.
//
// Why clusters: a row of 65 536 floats (256 KB) fits no single SM's registers or shared memory, so
// a block per row re-reads part of it or alternates, on one SM, between reading, reducing and
// writing. Split over C blocks (8 for 65 536 columns) each block holds its slice in registers, like
// the 8192-column rows the block-per-row kernels already run near the copy rate, and the SMs'
// phases overlap again.
//
// Determinism: every block reads the C partials in rank order and combines them left to right,
// so every block of the cluster gets the same bits, and the result depends only on the launch
// shape.
#pragma once

#include "common.cuh"

namespace ampkit {

// Rank of this block in its cluster, 0 .. C−1.
static __device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// Index of this block's cluster in the grid (clusters along x only).
static __device__ __forceinline__ unsigned cluster_index() {
    unsigned r;
    asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r));
    return r;
}

// Clusters in the grid (along x only).
static __device__ __forceinline__ unsigned cluster_count() {
    unsigned r;
    asm volatile("mov.u32 %0, %%nclusterid.x;" : "=r"(r));
    return r;
}

static __device__ __forceinline__ float cl_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float cl_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// A block's shared state for cluster reductions (cluster_reduce_async): two buffers, used by
// alternate rounds, each an mbarrier, one slot per (source block, value) and the block's own
// per-warp partials (scratch).
// Each block pushes its block-level results into every block's slots with st.async, which
// signals the destination's mbarrier with the bytes written (release at cluster scope); each
// block waits on its own mbarrier (acquire at cluster scope) until all C·N values have arrived.
// Unlike a cluster barrier with release/acquire (which nvcc lowers to MEMBAR.ALL.GPU — waiting for
// every outstanding store and prefetched load — and an L1 invalidation in every thread; the first
// version of these kernels used one per reduction and measured no faster than one block per row,
// docs/kernels/softmax.md v3), nothing waits for unrelated memory traffic, and no block waits for
// any other to read its memory: the data is pushed, so a block may exit once its own last round
// has arrived.
template <int C, int N>
struct ClusterExchange {
    unsigned long long bar[2];
    float slot[2][C * N];
    // Per round parity, like the slots: round r+1's warp partials go to the other half, so the
    // writes of round r+2 into this half follow round r+1's __syncthreads, which follows warp
    // 0's reads of round r. (With one half, those reads and round r+1's writes were ordered
    // only through warp 0's st.async to its own mbarrier — sound under the PTX memory model but
    // invisible to compute-sanitizer's racecheck, which reported it as a hazard.)
    float scratch[2][32 * N];
};

static __device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Expects `bytes` more on mbarrier `bar` and arrives once (its arrival count is 1), arming its
// current phase.
static __device__ __forceinline__ void mbar_arm(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}

// Called by every thread of every block of the cluster before its first round: initialises
// and arms both mbarriers, then one cluster barrier (relaxed: only the mbarrier initialisation,
// fenced for the cluster, has to be visible before any block pushes to another). The block
// barrier between initialising and arming is for compute-sanitizer: the compiler issues the
// initialisation on the warp's uniform datapath, which racecheck charges to every lane of warp
// 0, and without a barrier it reported thread 0's arming as racing with the other lanes.
template <int C, int N>
static __device__ __forceinline__ void exchange_init(ClusterExchange<C, N>& ex) {
    if (threadIdx.x == 0) {
#pragma unroll
        for (int b = 0; b < 2; ++b) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&ex.bar[b]))
                         : "memory");
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x == 0) {
#pragma unroll
        for (int b = 0; b < 2; ++b) mbar_arm(&ex.bar[b], C * N * 4);
    }
    asm volatile(
        "barrier.cluster.arrive.relaxed.aligned;\n\t"
        "barrier.cluster.wait.aligned;" ::: "memory");
}

// Waits until the phase of `bar` with parity `parity` has completed.
static __device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) {
    asm volatile(
        "{\n\t"
        ".reg .pred done;\n"
        "LAB_WAIT:\n\t"
        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra LAB_WAIT;\n\t"
        "}" ::"r"(smem_addr(bar)),
        "r"(parity)
        : "memory");
}

// N values reduced over the cluster (MAX: fmaxf, else +): each block reduces its threads' values
// (warp butterflies, then the warps in order through `ex.scratch`), pushes the block's results
// into every block's slots, and every thread combines the C blocks' slots in rank order, so every
// block gets the same bits. Uses `ex` (exchange_init first). `round` counts this block's calls
// from 0; rounds alternate buffers, and a buffer is written again only after every block has
// pushed the round in between, which each does only after all its threads passed a barrier
// that follows their reads of this round.
template <int C, int N, bool MAX>
static __device__ __forceinline__ void cluster_reduce_async(float (&v)[N],
                                                            ClusterExchange<C, N>& ex,
                                                            int round) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int b = round & 1;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        v[k] = MAX ? cl_warp_max(v[k]) : cl_warp_sum(v[k]);
        if (lane == 0) ex.scratch[b][k * 32 + warp] = v[k];
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        const unsigned me = cluster_rank();
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const float id = MAX ? -INFINITY : 0.f;
            float x = lane < warps ? ex.scratch[b][k * 32 + lane] : id;
            x = MAX ? cl_warp_max(x) : cl_warp_sum(x);
            if (lane < C) {
                unsigned dst, bar;
                asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
                             : "=r"(dst)
                             : "r"(smem_addr(&ex.slot[b][me * N + k])), "r"(lane));
                asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
                             : "=r"(bar)
                             : "r"(smem_addr(&ex.bar[b])), "r"(lane));
                asm volatile(
                    "st.async.shared::cluster.mbarrier::complete_tx::bytes.f32 [%0], %1, [%2];" ::
                        "r"(dst),
                    "f"(x), "r"(bar)
                    : "memory");
            }
        }
    }
    mbar_wait(&ex.bar[b], unsigned(round >> 1) & 1u);
#pragma unroll
    for (int k = 0; k < N; ++k) {
        float a = MAX ? -INFINITY : 0.f;
#pragma unroll
        for (int r = 0; r < C; ++r) {
            const float x = ex.slot[b][r * N + k];
            a = MAX ? fmaxf(a, x) : a + x;
        }
        v[k] = a;
    }
    // Re-arm this buffer's next phase (after this thread's wait: the phase just completed).
    if (threadIdx.x == 0) mbar_arm(&ex.bar[b], C * N * 4);
}

}  // namespace ampkit
