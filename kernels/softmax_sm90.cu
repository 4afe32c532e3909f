// softmax_sm90.cu — softmax forward/backward and the fused softmax-cross-entropy for very long rows
// (softmax: 16 384 columns and more with 4-element packs; the loss: past 8192 classes with
// 16-byte packs), one thread-block cluster per row. sm_90 only (compute_90a); other GPUs, and
// rows these instances cannot hold, take softmax.cu's and cross_entropy.cu's kernels.
// The loss's cluster kernels live here rather than in a cross_entropy_sm90.cu because the two
// families share this module's device code; their host code is src/ops/softmax/sm90.rs (softmax)
// and src/ops/cross_entropy/sm90.rs (the loss).
//
// Entry points: softmax_fwd_cluster_c{2,4,8}_p{4,8}, softmax_bwd_cluster_c{2,4,8}_p{2,4},
//   softmax_ce_cluster_{f32,f16,bf16}_c{2,4,8}_p{P} (f32: P = 4, 8; f16 and bf16: P = 2, 4), the
//   loss writing f32, f16 or bf16 gradients by its out_kind code (cross_entropy.cu).
// What: the same functions, formulas and rounding as softmax.cu (forward: expf, a plain sum and an
//   IEEE division; backward: y·(dy − Σ y·dy)) and cross_entropy.cu (exp_shifted, the c + r split,
//   the label's exact gradient, the row loss, one-launch mean with a last-block ticket).
// Algorithm: a cluster of C blocks (C = 2, 4, 8; `__cluster_dims__`, so a plain launch works) per
//   row; grid = rows·C. Block `rank` holds packs [rank·span, (rank+1)·span) of the row in registers
//   (span = ceil(packs / C); thread t holds packs t, t + T, …, P of them, VEC = 4 f32 or 8
//   f16/bf16).
//   Each reduction (max, then the sums) goes block-wide and then across the cluster through
//   distributed shared memory (cluster.cuh's cluster_reduce_async: each block pushes its partials
//   into every block's shared memory with st.async onto an mbarrier, and every block adds the C
//   partials in rank order, so all get the same bits; no fences, no barrier at the end). The loss: the thread that stored the label's pack rewrites it;
//   rank 0 computes the row loss and takes the ticket (one partial per row).
// Why: a 65 536-float row (256 KB) fits no single SM; a block per row (softmax.cu) keeps part in
//   shared memory and alternates reading, reducing and writing on one SM (measured 64-79 % of the
//   copy rate). Spread over 8 SMs each block holds 8192 floats in registers, like the 8192-column
//   rows that run at ~90 %, and 3-4 clusters' blocks per SM overlap their phases.
// Roofline (256×65 536): forward 8 B/element = 134 MB, backward 12 B = 201 MB, loss 8 B (f32) or
//   4 B (f16, bf16); at the H100's ~3.0 TB/s copy: 45, 67, 45 and 22 µs.
#include "cluster.cuh"
#include "softmax_common.cuh"

namespace softmax_detail {

using ampkit::cluster_index;
using ampkit::cluster_rank;
using ampkit::cluster_reduce_async;
using ampkit::ClusterExchange;
using ampkit::exchange_init;

// This block's slice of the row: `first` pack and how many (≤ 0 for a block past a short row's
// end; it still takes part in every reduction, with identity values).
struct Slice {
    int first, count;
};

template <int C>
__device__ __forceinline__ Slice slice(int packs) {
    const int span = (packs + C - 1) / C;
    const int first = int(cluster_rank()) * span;
    return Slice{first, min(span, packs - first)};
}

template <int C, int P>
__device__ __forceinline__ void fwd_cluster(const float* __restrict__ x, float* __restrict__ y,
                                            int cols) {
    constexpr int VEC = 4;
    __shared__ ClusterExchange<C, 1> ex;
    const int T = blockDim.x, t = threadIdx.x;
    const Slice sl = slice<C>(cols / VEC);
    const size_t off = size_t(cluster_index()) * cols + size_t(sl.first) * VEC;
    float v[P][VEC];
    load_packs<float, VEC, P>(x + off, T, t, sl.count, v);
    exchange_init(ex);  // while the loads are in flight
    float m[1] = {packs_max<VEC, P>(v, T, t, sl.count)};
    cluster_reduce_async<C, 1, true>(m, ex, 0);
    float s[1] = {0.f};
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * T + t < sl.count) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                v[p][k] = expf(v[p][k] - m[0]);
                s[0] += v[p][k];
            }
        }
    }
    cluster_reduce_async<C, 1, false>(s, ex, 1);
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * T + t < sl.count) {
            float o[VEC];
#pragma unroll
            for (int k = 0; k < VEC; ++k) o[k] = __fdiv_rn(v[p][k], s[0]);
            store<VEC>(y + off, p * T + t, o);
        }
    }
}

template <int C, int P>
__device__ __forceinline__ void bwd_cluster(const float* __restrict__ y,
                                            const float* __restrict__ dy,
                                            float* __restrict__ dx, int cols) {
    constexpr int VEC = 4;
    __shared__ ClusterExchange<C, 1> ex;
    const int T = blockDim.x, t = threadIdx.x;
    const Slice sl = slice<C>(cols / VEC);
    const size_t off = size_t(cluster_index()) * cols + size_t(sl.first) * VEC;
    float a[P][VEC], b[P][VEC];
    float dot[1] = {0.f};
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * T + t < sl.count) {
            load<VEC>(y + off, p * T + t, a[p]);
            load<VEC>(dy + off, p * T + t, b[p]);
        }
    }
    exchange_init(ex);
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * T + t < sl.count) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) dot[0] += a[p][k] * b[p][k];
        }
    }
    cluster_reduce_async<C, 1, false>(dot, ex, 0);
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * T + t < sl.count) {
            float o[VEC];
#pragma unroll
            for (int k = 0; k < VEC; ++k) o[k] = softmax_dx(a[p][k], b[p][k], dot[0]);
            store<VEC>(dx + off, p * T + t, o);
        }
    }
}

// The loss, one row per cluster (see the header). L = float (VEC 4), __half or __nv_bfloat16
// (VEC 8).
template <typename L, int C, int P>
__device__ __forceinline__ void ce_cluster(const L* __restrict__ logits,
                                           const unsigned* __restrict__ labels,
                                           const float* __restrict__ grad_scale, void* dlogits,
                                           int out_kind, double* __restrict__ partial,
                                           float* __restrict__ loss, int rows, int classes) {
    constexpr int VEC = 16 / int(sizeof(L));
    __shared__ ClusterExchange<C, 2> ex;
    const int T = blockDim.x, t = threadIdx.x;
    const int row = int(cluster_index());
    const Slice sl = slice<C>(classes / VEC);
    const size_t row_off = size_t(row) * classes;
    const size_t off = row_off + size_t(sl.first) * VEC;
    const unsigned label = labels[row];
    const bool ok = label < unsigned(classes);
    float v[P][VEC];
    load_packs<L, VEC, P>(logits + off, T, t, sl.count, v);
    exchange_init(ex);  // while the loads are in flight
    const float mt = packs_max<VEC, P>(v, T, t, sl.count);
    float m[2] = {mt, mt};  // one value used; the exchange moves two per round
    cluster_reduce_async<C, 2, true>(m, ex, 0);
    float cr[2] = {0.f, 0.f};
    packs_exp_count<VEC, P>(v, T, t, sl.count, m[0], cr[0], cr[1]);
    cluster_reduce_async<C, 2, false>(cr, ex, 1);
    const float scale = ce_scale(grad_scale, rows);
    const CeRow cw = ce_row(scale, ok, cr[0] + cr[1]);
    packs_out<VEC, P>(dlogits, off, v, T, t, sl.count, cw.ps, out_kind);
    // The thread that stored the label's pack rewrites the label's element (program order).
    const int li = int(label / VEC) - sl.first;
    if (ok && li >= 0 && li < sl.count && li % T == t) {
        ce_label(logits + row_off, dlogits, row_off, label, m[0], cw, out_kind);
    }
    if (cluster_rank() == 0) {
        const double row_loss =
            t == 0 ? double(ce_loss(logits + row_off, label, ok, m[0], cr[0], cr[1])) : 0.0;
        const unsigned clusters = gridDim.x / C;
        if (ce_ticket(partial, row_loss, T, unsigned(row), clusters)) {
            ce_total(partial, loss, rows, clusters);
        }
    }
}

}  // namespace softmax_detail

using namespace softmax_detail;

// Launch bounds: 1024 threads for 16 floats per thread (of each array), 512 for 32.
#define SOFTMAX_CLUSTER(C, P, BOUND, BWD_P, BWD_BOUND)                                          \
    extern "C" __global__ void __cluster_dims__(C, 1, 1) __launch_bounds__(BOUND)                \
        softmax_fwd_cluster_c##C##_p##P(const float* x, float* y, int cols) {                   \
        fwd_cluster<C, P>(x, y, cols);                                                          \
    }                                                                                           \
    extern "C" __global__ void __cluster_dims__(C, 1, 1) __launch_bounds__(BWD_BOUND)            \
        softmax_bwd_cluster_c##C##_p##BWD_P(const float* y, const float* dy, float* dx,         \
                                            int cols) {                                         \
        bwd_cluster<C, BWD_P>(y, dy, dx, cols);                                                 \
    }
#define SOFTMAX_CLUSTER_ALL(C)         \
    SOFTMAX_CLUSTER(C, 4, 1024, 2, 1024) \
    SOFTMAX_CLUSTER(C, 8, 512, 4, 512)
SOFTMAX_CLUSTER_ALL(2)
SOFTMAX_CLUSTER_ALL(4)
SOFTMAX_CLUSTER_ALL(8)

#define SOFTMAX_CE_CLUSTER(T, L, C, P, BOUND)                                                    \
    extern "C" __global__ void __cluster_dims__(C, 1, 1) __launch_bounds__(BOUND)                \
        softmax_ce_cluster_##T##_c##C##_p##P(const L* logits, const unsigned* labels,            \
                                             const float* grad_scale, void* dlogits,             \
                                             int out_kind, double* partial, float* loss,          \
                                             int rows, int classes) {                            \
        ce_cluster<L, C, P>(logits, labels, grad_scale, dlogits, out_kind, partial, loss, rows,   \
                            classes);                                                            \
    }
#define SOFTMAX_CE_CLUSTER_ALL(C)                   \
    SOFTMAX_CE_CLUSTER(f32, float, C, 4, 1024)      \
    SOFTMAX_CE_CLUSTER(f32, float, C, 8, 512)       \
    SOFTMAX_CE_CLUSTER(f16, __half, C, 2, 1024)     \
    SOFTMAX_CE_CLUSTER(f16, __half, C, 4, 512)      \
    SOFTMAX_CE_CLUSTER(bf16, __nv_bfloat16, C, 2, 1024) \
    SOFTMAX_CE_CLUSTER(bf16, __nv_bfloat16, C, 4, 512)
SOFTMAX_CE_CLUSTER_ALL(2)
SOFTMAX_CE_CLUSTER_ALL(4)
SOFTMAX_CE_CLUSTER_ALL(8)
