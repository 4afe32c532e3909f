// cluster.cuh — thread-block-cluster helpers (sm_90) for row kernels that split one long row
// across the C blocks of a cluster and combine per-block statistics through distributed shared
// memory. Only the *_sm90 modules (built for compute_90a) include it.
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

// Barrier over every thread of the cluster. Release/acquire: shared-memory writes made before it
// by any block of the cluster are visible to reads after it from any block. Called by all threads
// (the .aligned form: whole warps, uniformly).
static __device__ __forceinline__ void cluster_sync() {
    asm volatile(
        "barrier.cluster.arrive.release.aligned;\n\t"
        "barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// *p in the shared memory of cluster block `rank` (p: an address of this block's shared memory;
// the same variable in every block of the kernel).
template <typename T>
static __device__ __forceinline__ T load_remote(const T* p, unsigned rank);

template <>
__device__ __forceinline__ float load_remote<float>(const float* p, unsigned rank) {
    const unsigned local = static_cast<unsigned>(__cvta_generic_to_shared(p));
    unsigned remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

template <>
__device__ __forceinline__ double load_remote<double>(const double* p, unsigned rank) {
    const unsigned local = static_cast<unsigned>(__cvta_generic_to_shared(p));
    unsigned remote;
    double v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f64 %0, [%1];" : "=d"(v) : "r"(remote) : "memory");
    return v;
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

// N values reduced over the cluster: each block reduces its threads' values (warp butterflies,
// then the warps in order through `scratch`), thread 0 publishes the block's N results in
// `slot`, the cluster synchronises, and every thread combines the C blocks' slots in rank order.
// MAX selects fmaxf instead of +. `slot` must not be written again until every block of the
// cluster has passed the next cluster_sync (callers alternate two slots, or sync before exit).
// `scratch` holds ≥ 32·N floats; blockDim.x is a multiple of 32.
template <int C, int N, bool MAX>
static __device__ __forceinline__ void cluster_reduce(float (&v)[N], float* scratch,
                                                      float* slot) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        v[k] = MAX ? cl_warp_max(v[k]) : cl_warp_sum(v[k]);
        if (lane == 0) scratch[k * 32 + warp] = v[k];
    }
    __syncthreads();
    if (threadIdx.x < 32) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const float id = MAX ? -INFINITY : 0.f;
            float b = lane < warps ? scratch[k * 32 + lane] : id;
            b = MAX ? cl_warp_max(b) : cl_warp_sum(b);
            if (lane == 0) slot[k] = b;
        }
    }
    cluster_sync();
#pragma unroll
    for (int k = 0; k < N; ++k) {
        float a = MAX ? -INFINITY : 0.f;
#pragma unroll
        for (int r = 0; r < C; ++r) {
            const float b = load_remote(slot + k, unsigned(r));
            a = MAX ? fmaxf(a, b) : a + b;
        }
        v[k] = a;
    }
}

// A block's shared state for cluster reductions without fences (cluster_reduce_async): two
// buffers, used by alternate rounds, each an mbarrier and one slot per (source block, value).
// Each block pushes its block-level results into every block's slots with st.async, which
// signals the destination's mbarrier with the bytes written (release at cluster scope); each
// block waits on its own mbarrier (acquire at cluster scope) until all C·N values have arrived.
// Unlike a cluster barrier with release/acquire (which nvcc lowers to MEMBAR.ALL.GPU — waiting for
// every outstanding store and prefetched load — and an L1 invalidation in every thread), nothing
// waits for unrelated memory traffic, and no block waits for any other to read its memory: the
// data is pushed, so a block may exit once its own last round has arrived.
template <int C, int N>
struct ClusterExchange {
    unsigned long long bar[2];
    float slot[2][C * N];
    float scratch[32 * N];
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
// fenced for the cluster, has to be visible before any block pushes to another).
template <int C, int N>
static __device__ __forceinline__ void exchange_init(ClusterExchange<C, N>& ex) {
    if (threadIdx.x == 0) {
#pragma unroll
        for (int b = 0; b < 2; ++b) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&ex.bar[b]))
                         : "memory");
            mbar_arm(&ex.bar[b], C * N * 4);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
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

// cluster_reduce's result (N values reduced over the cluster, combined in rank order, the same
// bits in every block) through `ex` (exchange_init first). `round` counts this block's calls
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
        if (lane == 0) ex.scratch[k * 32 + warp] = v[k];
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        const unsigned me = cluster_rank();
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const float id = MAX ? -INFINITY : 0.f;
            float x = lane < warps ? ex.scratch[k * 32 + lane] : id;
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
