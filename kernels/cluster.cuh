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

}  // namespace ampkit
