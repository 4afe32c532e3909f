// layernorm_sm90.cu — LayerNorm forward and backward for long rows (8192+ float4 columns) on
// thread-block clusters, sm_90a (H100/H200).
//
// What: the same function as kernels/layernorm.cu (src/cpu/layernorm.rs): forward y, mean, rstd;
//   backward dx and the per-cluster partial rows [dgamma | dbeta] that layernorm.cu's
//   `layernorm_bwd_finish` adds. Same math and rounding: mean = Σx / n, var = Σ(x − mean)² / n
//   over the values held on chip (two-pass), rstd = 1 / sqrt(var + eps) (IEEE), y and dx through
//   the _rn formulas of layernorm.cuh. float4 only: cols % 4 == 0 and 16-byte aligned row
//   pointers (the host checks; anything else stays on layernorm.cu).
// Why clusters: a 65 536-float row (256 KB) fits no single SM, so layernorm.cu's block per row
//   either re-reads (backward: two passes, 20 B/element) or runs one block per SM whose reading,
//   reducing and writing phases never overlap (forward). Split over the C blocks of a cluster
//   (C = 2, 4, 8, compile-time __cluster_dims__), each block holds its slice of the row in
//   registers and the row's statistics are combined through distributed shared memory
//   (cluster.cuh's cluster_reduce_async: each block pushes its block sums into every block's
//   shared memory with st.async onto an mbarrier and every block adds the C sums in rank order,
//   so all get the same bits; no memory fence, so prefetched loads stay in flight across it).
// Algorithm and launch shapes (chosen in src/ops/layernorm/sm90.rs). packs = cols / 4; a block
//   of rank r owns the packs [r·S, min((r+1)·S, packs)), S = ceil(packs / C); thread t holds its
//   packs t, t + T, … (P of them, P·T ≥ S).
//   fwd_cluster<C,P>  grid = rows·C, a cluster per row. Read the slice (all P loads in flight),
//                     cluster sum → mean; Σ(x − mean)² over the registers, cluster sum → rstd;
//                     y. Rank 0 thread 0 writes mean and rstd.
//   bwd_cluster<C,P>  grid = G·C: cluster g takes rows g, g + G, …, each block its column slice.
//                     Per row: x̂ and g = dy·gamma, one cluster sum of (Σg, Σg·x̂), dx; dgamma and
//                     dbeta accumulate per thread over the cluster's rows in row order. The next
//                     row's x, dy, mean and rstd are loaded before this row's reduction, so loads
//                     stay in flight across the cluster exchange (rounds alternate its two
//                     buffers). Each block writes its slice of partial row g.
//                     G depends on (rows, cols) only (never the SM count): bit-identical run to
//                     run and across GPUs.
// Roofline: forward 8 B/element, backward 12 B/element plus G partial rows of 2·cols floats
//   written and read once (≈ 1.33·G/rows of the traffic, mostly L2 hits for the read). At the
//   H100's ~2.9 TB/s device copy, 256×65536 is 46 µs forward and 69 µs backward, plus ~2 µs for
//   the default 12 partial rows (6.3 MB written; read back by layernorm_bwd_finish mostly from
//   L2); layernorm.cu ran it at 75 % and 56 % of copy (docs/kernels/layernorm.md).
#include "cluster.cuh"
#include "layernorm.cuh"

namespace layernorm_sm90_detail {

using namespace layernorm_detail;
using ampkit::cluster_index;
using ampkit::cluster_rank;
using ampkit::cluster_reduce_async;
using ampkit::ClusterExchange;
using ampkit::exchange_init;

constexpr int VEC = 4;

// Launch bounds, mirrored by src/ops/layernorm/sm90.rs (checked there against the PTX's
// .maxntid). Forward state is P·4 floats per thread; backward with prefetch 6·P·4 (x̂, g, the next
// row's x and dy, the dgamma and dbeta sums): P = 4 fits 128 registers without spilling, so 512
// threads (16 warps, one block per SM) — measured 9-12 % faster at 65 536 columns than P = 8 with
// 256 threads (docs/kernels/layernorm.md, v3).
constexpr int fwd_cluster_bound(int p) { return p <= 4 ? 1024 : 512; }
constexpr int bwd_cluster_bound(int p) { return p <= 1 ? 1024 : p <= 4 ? 512 : 256; }

// This block's packs of a row: [lo, hi).
struct Slice {
    int lo, hi;
};

template <int C>
__device__ __forceinline__ Slice slice_of(int cols) {
    const int packs = cols / VEC, per = (packs + C - 1) / C;
    const int lo = int(cluster_rank()) * per;
    return Slice{lo, min(lo + per, packs)};
}

template <int C, int P>
__device__ __forceinline__ void fwd_cluster(const float* __restrict__ x,
                                            const float* __restrict__ gamma,
                                            const float* __restrict__ beta, float* __restrict__ y,
                                            float* __restrict__ mean, float* __restrict__ rstd,
                                            int cols, float eps) {
    __shared__ ClusterExchange<C, 1> ex;
    const int row = int(cluster_index()), tid = threadIdx.x, T = blockDim.x;
    const Slice s = slice_of<C>(cols);
    const float n = float(cols);
    const float* xr = x + size_t(row) * cols;
    float v[P][VEC];
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (s.lo + p * T + tid < s.hi) load<VEC>(xr, s.lo + p * T + tid, v[p]);
    }
    exchange_init(ex);  // while the loads are in flight
    float sum[1] = {0.f};
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (s.lo + p * T + tid < s.hi) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) sum[0] += v[p][k];
        }
    }
    cluster_reduce_async<C, 1, false>(sum, ex, 0);
    const float mu = sum[0] / n;
    float ss[1] = {0.f};
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (s.lo + p * T + tid < s.hi) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                const float d = v[p][k] - mu;
                ss[0] += d * d;
            }
        }
    }
    cluster_reduce_async<C, 1, false>(ss, ex, 1);
    const float rs = 1.f / sqrtf(ss[0] / n + eps);
    float* yr = y + size_t(row) * cols;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int i = s.lo + p * T + tid;
        if (i < s.hi) {
            float g[VEC], b[VEC], o[VEC];
            load<VEC>(gamma, i, g);
            load<VEC>(beta, i, b);
#pragma unroll
            for (int k = 0; k < VEC; ++k) o[k] = normalise(v[p][k], mu, rs, g[k], b[k]);
            store<VEC>(yr, i, o);
        }
    }
    if (cluster_rank() == 0 && tid == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// This thread's packs of x and dy in the row at `off`.
template <int P>
__device__ __forceinline__ void load_slice(const float* __restrict__ x,
                                           const float* __restrict__ dy, size_t off, Slice s,
                                           float (&xv)[P][VEC], float (&dv)[P][VEC]) {
    const int tid = threadIdx.x, T = blockDim.x;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int i = s.lo + p * T + tid;
        if (i < s.hi) {
            load<VEC>(x + off, i, xv[p]);
            load<VEC>(dy + off, i, dv[p]);
        }
    }
}

template <int C, int P>
__device__ __forceinline__ void bwd_cluster(const float* __restrict__ dy,
                                            const float* __restrict__ x,
                                            const float* __restrict__ mean,
                                            const float* __restrict__ rstd,
                                            const float* __restrict__ gamma,
                                            float* __restrict__ dx, float* __restrict__ partial,
                                            int rows, int cols) {
    __shared__ ClusterExchange<C, 2> ex;
    const int g = int(cluster_index()), G = int(gridDim.x) / C;
    const int tid = threadIdx.x, T = blockDim.x;
    const Slice s = slice_of<C>(cols);
    const float n = float(cols);
    float acc_g[P][VEC], acc_b[P][VEC];
#pragma unroll
    for (int p = 0; p < P; ++p) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc_g[p][k] = acc_b[p][k] = 0.f;
    }
    float xv[P][VEC], dv[P][VEC];  // the row the loop is on, loaded one iteration ahead
    float mu = 0.f, rs = 0.f;
    int r = g;
    if (r < rows) {
        load_slice<P>(x, dy, size_t(r) * cols, s, xv, dv);
        mu = mean[r];
        rs = rstd[r];
    }
    exchange_init(ex);  // while the first row's loads are in flight
    // Every block of the cluster walks the same rows: the trip count, and so every barrier in
    // the loop, is cluster-uniform.
    for (int it = 0; r < rows; r += G, ++it) {
        const size_t off = size_t(r) * cols;
        float xh[P][VEC], gv[P][VEC];
        float sums[2] = {0.f, 0.f};
        const float rs_here = rs;
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int i = s.lo + p * T + tid;
            if (i < s.hi) {
                float gm[VEC];
                load<VEC>(gamma, i, gm);
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    xh[p][k] = __fmul_rn(__fsub_rn(xv[p][k], mu), rs);
                    gv[p][k] = __fmul_rn(dv[p][k], gm[k]);
                    sums[0] += gv[p][k];
                    sums[1] += gv[p][k] * xh[p][k];
                    acc_g[p][k] += dv[p][k] * xh[p][k];
                    acc_b[p][k] += dv[p][k];
                }
            }
        }
        if (r + G < rows) {
            load_slice<P>(x, dy, off + size_t(G) * cols, s, xv, dv);
            mu = mean[r + G];
            rs = rstd[r + G];
        }
        cluster_reduce_async<C, 2, false>(sums, ex, it);
        const float mg = sums[0] / n, mgx = sums[1] / n;
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int i = s.lo + p * T + tid;
            if (i < s.hi) {
                float o[VEC];
#pragma unroll
                for (int k = 0; k < VEC; ++k) o[k] = dx_of(gv[p][k], xh[p][k], rs_here, mg, mgx);
                store<VEC>(dx + off, i, o);
            }
        }
    }
    // Partial row g (zeros for a cluster without rows, so the finish kernel may add all G).
    float* out = partial + size_t(g) * 2 * cols;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int i = s.lo + p * T + tid;
        if (i < s.hi) {
            store<VEC>(out, i, acc_g[p]);
            store<VEC>(out + cols, i, acc_b[p]);
        }
    }
}


}  // namespace layernorm_sm90_detail

using namespace layernorm_sm90_detail;

#define LN_CLUSTER(C, P)                                                                          \
    extern "C" __global__ void __cluster_dims__(C, 1, 1)                                         \
        __launch_bounds__(fwd_cluster_bound(P)) layernorm_fwd_cluster_c##C##_p##P(                \
            const float* x, const float* gamma, const float* beta, float* y, float* mean,         \
            float* rstd, int cols, float eps) {                                                   \
        fwd_cluster<C, P>(x, gamma, beta, y, mean, rstd, cols, eps);                              \
    }                                                                                             \
    extern "C" __global__ void __cluster_dims__(C, 1, 1)                                         \
        __launch_bounds__(bwd_cluster_bound(P)) layernorm_bwd_cluster_c##C##_p##P(                \
            const float* dy, const float* x, const float* mean, const float* rstd,                \
            const float* gamma, float* dx, float* partial, int rows, int cols) {                  \
        bwd_cluster<C, P>(dy, x, mean, rstd, gamma, dx, partial, rows, cols);                     \
    }
LN_CLUSTER(2, 2)
LN_CLUSTER(2, 4)
LN_CLUSTER(2, 8)
LN_CLUSTER(4, 2)
LN_CLUSTER(4, 4)
LN_CLUSTER(4, 8)
LN_CLUSTER(8, 2)
LN_CLUSTER(8, 4)
LN_CLUSTER(8, 8)
