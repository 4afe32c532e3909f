// layernorm.cu — LayerNorm over the last dimension in f32: forward (y, and mean and rstd per row)
// and backward (dx; dgamma and dbeta through per-block partial sums and a small second pass).
//
// What: src/cpu/layernorm.rs's function. Per row, n = cols: mean = Σx / n; var = Σ(x − mean)² / n
//   (two-pass, over the row held on chip); rstd = 1 / sqrt(var + eps) (IEEE sqrt and division);
//   y = ((x − mean)·rstd)·gamma + beta through _rn intrinsics, so nothing is contracted into an
//   FMA. Backward: x̂ = (x − mean)·rstd, g = dy·gamma, dx = rstd·((g − mean(g)) − x̂·mean(g·x̂));
//   dgamma = Σ_rows dy·x̂ and dbeta = Σ_rows dy, overwritten. Sums are f32 trees rather than the
//   CPU's left-to-right folds in f64, so results match it to rounding, not bit for bit. Every
//   reduction has a fixed shape that depends only on (rows, cols, alignment): results are
//   bit-identical run to run and no float atomics exist. NaN/inf propagate exactly as the IEEE operations carry them.
// Algorithm and launch shapes (picked in src/ops/layernorm/; on compute capability 9.0, float4
//   rows past 8192 columns take layernorm_sm90.cu's cluster kernels instead, where they fit).
//   VEC = 4 (float4 accesses) when cols % 4 == 0 and every row pointer is 16-byte aligned, else 1.
//   A "pack" is VEC floats.
//   fwd_warp<VEC,P>   cols ≤ 32·P·VEC: a warp per row, 8 rows per 256-thread block, the row in
//                     registers (P packs per lane), shuffle reductions.
//   fwd_block<VEC>    longer rows: a block per row. x is read once from memory into dynamic
//                     shared memory (as much of the row as fits), 8 more floats per thread into
//                     registers (a still longer tail is read again and comes from L2), then the
//                     variance and y passes run over those copies.
//   bwd_rows<VEC,P,PF> cols ≤ P·VEC·(launch bound): a row group (a warp, or the whole block)
//                     holds one row's x̂ and g in registers; each thread also sums dy·x̂ and dy for
//                     its own columns over the block's `rows_per_block` rows, and the block writes
//                     one partial row [dgamma | dbeta] (warps added in warp order through shared
//                     memory). PF (the _pf kernels) loads the next row during this row's
//                     reduction. The host takes warp mode up to 256 float4 columns, else a block
//                     per row with PF (measured: docs/kernels/layernorm.md).
//   bwd_stats<VEC> then bwd_cols<VEC>   any longer row: mean(g) and mean(g·x̂) per row first, then
//                     a column-tiled pass writes dx and the partial rows (x and dy read twice; the
//                     second pass walks the rows backwards, so it starts on what is still in L2).
//   bwd_finish        dgamma, dbeta = Σ partial rows in block order (16 strided sums, then a fixed
//                     tree).
// Roofline: forward reads x and writes y, 8 B/element (gamma, beta, mean, rstd are per column or
//   per row); backward reads dy and x and writes dx, 12 B/element (20 B on the two-pass path), plus
//   partial rows of 2·cols floats written and read once per ≥ 8-32 rows (1.33/rows more). At the H100's
//   ~2.9 TB/s device copy, 4096×512 forward (16.8 MB) is 5.8 µs, the size of the launch overhead;
//   8192×2048 forward (134 MB) is 46 µs, backward (201 MB) 69 µs.
#include "layernorm.cuh"

namespace layernorm_detail {

constexpr int WARP_ROWS = 8;  // rows per block in warp mode (256 threads)
constexpr int UNROLL = 4;     // packs per thread in flight in the block kernels' first pass
constexpr int FINISH_Y = 16;  // partial rows summed side by side by bwd_finish

// Threads a bwd_rows instance may be launched with: its per-thread state is 4·P·VEC floats
// (6·P·VEC with prefetch), so wide instances trade threads for registers (64 per thread at 1024
// threads, 128 at 512). Mirrored by src/ops/layernorm/backward.rs (checked against the PTX's
// .maxntid in src/ops/layernorm/mod.rs).
constexpr int bwd_bound(int vec, int p, bool pf) {
    return pf ? (vec * p <= 4 ? 1024 : vec * p <= 8 ? 512 : 256)
              : (vec * p <= 8 ? 1024 : vec * p <= 16 ? 512 : 256);
}

// Butterfly: lane i adds v_i + v_(i^o) and lane i^o the same two operands (addition commutes), so
// every lane ends with the same bits.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Two sums over the block, returned to every thread. blockDim.x is a multiple of 32.
__device__ __forceinline__ float2 block_sum2(float a, float b) {
    __shared__ float2 part[32];
    a = warp_sum(a);
    b = warp_sum(b);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = make_float2(a, b);
    __syncthreads();
    const float2 t = lane < int(blockDim.x >> 5) ? part[lane] : make_float2(0.f, 0.f);
    a = warp_sum(t.x);
    b = warp_sum(t.y);
    __syncthreads();  // `part` is reused by the next call
    return make_float2(a, b);
}

extern __shared__ __align__(16) float dyn_smem[];

template <int VEC, int P>
__device__ __forceinline__ void fwd_warp(const float* __restrict__ x, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, float* __restrict__ y,
                                         float* __restrict__ mean, float* __restrict__ rstd,
                                         int rows, int cols, float eps) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * WARP_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;  // whole warps only: nothing below synchronises the block
    const int packs = cols / VEC;
    const float n = float(cols);
    const float* xr = x + size_t(row) * cols;
    float v[P][VEC];
    float sum = 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int i = p * 32 + lane;
        if (i < packs) {
            load<VEC>(xr, i, v[p]);
#pragma unroll
            for (int k = 0; k < VEC; ++k) sum += v[p][k];
        }
    }
    const float mu = warp_sum(sum) / n;
    float ss = 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (p * 32 + lane < packs) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                const float d = v[p][k] - mu;
                ss += d * d;
            }
        }
    }
    const float rs = 1.f / sqrtf(warp_sum(ss) / n + eps);
    float* yr = y + size_t(row) * cols;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int i = p * 32 + lane;
        if (i < packs) {
            float g[VEC], b[VEC], o[VEC];
            load<VEC>(gamma, i, g);
            load<VEC>(beta, i, b);
#pragma unroll
            for (int k = 0; k < VEC; ++k) o[k] = normalise(v[p][k], mu, rs, g[k], b[k]);
            store<VEC>(yr, i, o);
        }
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// Floats per thread that fwd_block keeps in registers past the shared-memory cache: packs
// [cached, cached + TAIL_FLOATS/VEC·T) live in registers (thread t holds cached + u·T + t), so a
// 65 536-float row is read once with 1024 threads on a 227 KB device.
constexpr int TAIL_FLOATS = 8;

template <int VEC>
__device__ __forceinline__ void fwd_block(const float* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float* __restrict__ y,
                                          float* __restrict__ mean, float* __restrict__ rstd,
                                          int cols, float eps, int cached) {
    constexpr int TP = TAIL_FLOATS / VEC;
    const int row = blockIdx.x, tid = threadIdx.x, T = blockDim.x;
    const int packs = cols / VEC;
    const int rest = cached + TP * T;  // packs from here on are read again in each pass
    const float n = float(cols);
    const float* xr = x + size_t(row) * cols;
    float* cache = dyn_smem;
    // Each thread owns packs tid, tid + T, ... in every pass, so it only ever reads back what it
    // cached itself: no barrier between the passes beyond the reductions'. Per thread, every pass
    // visits its packs in increasing order (cache, registers, the rest).
    float tail[TP][VEC];
#pragma unroll
    for (int u = 0; u < TP; ++u) {
        if (cached + u * T + tid < packs) load<VEC>(xr, cached + u * T + tid, tail[u]);
    }
    float sum = 0.f;
    for (int base = tid; base < cached; base += UNROLL * T) {
        float v[UNROLL][VEC];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (base + u * T < cached) load<VEC>(xr, base + u * T, v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * T;
            if (i < cached) {
                store<VEC>(cache, i, v[u]);
#pragma unroll
                for (int k = 0; k < VEC; ++k) sum += v[u][k];
            }
        }
    }
#pragma unroll
    for (int u = 0; u < TP; ++u) {
        if (cached + u * T + tid < packs) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) sum += tail[u][k];
        }
    }
    for (int i = rest + tid; i < packs; i += T) {
        float v[VEC];
        load<VEC>(xr, i, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) sum += v[k];
    }
    const float mu = block_sum2(sum, 0.f).x / n;
    float ss = 0.f;
    for (int i = tid; i < cached; i += T) {
        float v[VEC];
        load<VEC>(cache, i, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float d = v[k] - mu;
            ss += d * d;
        }
    }
#pragma unroll
    for (int u = 0; u < TP; ++u) {
        if (cached + u * T + tid < packs) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                const float d = tail[u][k] - mu;
                ss += d * d;
            }
        }
    }
    for (int i = rest + tid; i < packs; i += T) {
        float v[VEC];
        load<VEC>(xr, i, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float d = v[k] - mu;
            ss += d * d;
        }
    }
    const float rs = 1.f / sqrtf(block_sum2(ss, 0.f).x / n + eps);
    float* yr = y + size_t(row) * cols;
#pragma unroll 4
    for (int i = tid; i < cached; i += T) {
        float v[VEC], g[VEC], b[VEC], o[VEC];
        load<VEC>(cache, i, v);
        load<VEC>(gamma, i, g);
        load<VEC>(beta, i, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = normalise(v[k], mu, rs, g[k], b[k]);
        store<VEC>(yr, i, o);
    }
#pragma unroll
    for (int u = 0; u < TP; ++u) {
        const int i = cached + u * T + tid;
        if (i < packs) {
            float g[VEC], b[VEC], o[VEC];
            load<VEC>(gamma, i, g);
            load<VEC>(beta, i, b);
#pragma unroll
            for (int k = 0; k < VEC; ++k) o[k] = normalise(tail[u][k], mu, rs, g[k], b[k]);
            store<VEC>(yr, i, o);
        }
    }
    for (int i = rest + tid; i < packs; i += T) {
        float v[VEC], g[VEC], b[VEC], o[VEC];
        load<VEC>(xr, i, v);
        load<VEC>(gamma, i, g);
        load<VEC>(beta, i, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = normalise(v[k], mu, rs, g[k], b[k]);
        store<VEC>(yr, i, o);
    }
    if (tid == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// This thread's packs (i = p·group + t) of x and dy in row `off`.
template <int VEC, int P>
__device__ __forceinline__ void load_row(const float* __restrict__ x, const float* __restrict__ dy,
                                         size_t off, int group, int t, int packs,
                                         float (&xv)[P][VEC], float (&dv)[P][VEC]) {
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int i = p * group + t;
        if (i < packs) {
            load<VEC>(x + off, i, xv[p]);
            load<VEC>(dy + off, i, dv[p]);
        }
    }
}

// Row groups of `group` threads: 32 (warp mode: blockDim.x / 32 rows at a time, shuffles only)
// or blockDim.x (block mode: one row at a time). Requires packs ≤ P·group. With PF (prefetch),
// the next row's x, dy, mean and rstd are loaded before this row's reduction, so loads stay in
// flight across it (6·P·VEC floats of state per thread instead of 4·P·VEC).
template <int VEC, int P, bool PF>
__device__ __forceinline__ void bwd_rows(const float* __restrict__ dy, const float* __restrict__ x,
                                         const float* __restrict__ mean,
                                         const float* __restrict__ rstd,
                                         const float* __restrict__ gamma, float* __restrict__ dx,
                                         float* __restrict__ partial, int rows, int cols,
                                         int rows_per_block, int group) {
    const int groups = blockDim.x / group, my_group = threadIdx.x / group, t = threadIdx.x % group;
    const int packs = cols / VEC;
    const float n = float(cols);
    float acc_g[P][VEC], acc_b[P][VEC];
#pragma unroll
    for (int p = 0; p < P; ++p) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc_g[p][k] = acc_b[p][k] = 0.f;
    }
    const int r0 = blockIdx.x * rows_per_block, r1 = min(rows, r0 + rows_per_block);
    float xv[P][VEC], dv[P][VEC];  // PF: the row the loop is on, loaded one iteration ahead
    float mu = 0.f, rs = 0.f;
    int r = r0 + my_group;
    if (PF && r < r1) {
        load_row<VEC, P>(x, dy, size_t(r) * cols, group, t, packs, xv, dv);
        mu = mean[r];
        rs = rstd[r];
    }
    // In block mode groups == 1, so the trip count (and every barrier in it) is block-uniform.
    for (; r < r1; r += groups) {
        const size_t off = size_t(r) * cols;
        float xh[P][VEC], g[P][VEC];
        float sg = 0.f, sgx = 0.f;
        if (!PF) {
            mu = mean[r];
            rs = rstd[r];
        }
        const float rs_here = rs;
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int i = p * group + t;
            if (i < packs) {
                float gm[VEC];
                if (!PF) {
                    load<VEC>(x + off, i, xv[p]);
                    load<VEC>(dy + off, i, dv[p]);
                }
                load<VEC>(gamma, i, gm);
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    xh[p][k] = __fmul_rn(__fsub_rn(xv[p][k], mu), rs);
                    g[p][k] = __fmul_rn(dv[p][k], gm[k]);
                    sg += g[p][k];
                    sgx += g[p][k] * xh[p][k];
                    acc_g[p][k] += dv[p][k] * xh[p][k];
                    acc_b[p][k] += dv[p][k];
                }
            }
        }
        if (PF && r + groups < r1) {
            load_row<VEC, P>(x, dy, off + size_t(groups) * cols, group, t, packs, xv, dv);
            mu = mean[r + groups];
            rs = rstd[r + groups];
        }
        float2 s;
        if (group == 32) {
            s = make_float2(warp_sum(sg), warp_sum(sgx));
        } else {
            s = block_sum2(sg, sgx);
        }
        const float mg = s.x / n, mgx = s.y / n;
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int i = p * group + t;
            if (i < packs) {
                float o[VEC];
#pragma unroll
                for (int k = 0; k < VEC; ++k) o[k] = dx_of(g[p][k], xh[p][k], rs_here, mg, mgx);
                store<VEC>(dx + off, i, o);
            }
        }
    }
    float* out = partial + size_t(blockIdx.x) * 2 * cols;
    if (groups == 1) {
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int i = p * group + t;
            if (i < packs) {
                store<VEC>(out, i, acc_g[p]);
                store<VEC>(out + cols, i, acc_b[p]);
            }
        }
        return;
    }
    // Warp mode: add the groups' sums in group order through shared memory (2·cols floats).
    float* sh = dyn_smem;
    for (int w = 0; w < groups; ++w) {
        if (my_group == w) {
#pragma unroll
            for (int p = 0; p < P; ++p) {
                const int i = p * group + t;
                if (i < packs) {
#pragma unroll
                    for (int k = 0; k < VEC; ++k) {
                        const int j = i * VEC + k;
                        sh[j] = w == 0 ? acc_g[p][k] : sh[j] + acc_g[p][k];
                        sh[cols + j] = w == 0 ? acc_b[p][k] : sh[cols + j] + acc_b[p][k];
                    }
                }
            }
        }
        __syncthreads();
    }
    for (int j = threadIdx.x; j < 2 * cols; j += blockDim.x) out[j] = sh[j];
}

// Two-pass path, pass 1: mean(g) and mean(g·x̂) of each row, a block per row.
template <int VEC>
__device__ __forceinline__ void bwd_stats(const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ mean,
                                          const float* __restrict__ rstd,
                                          const float* __restrict__ gamma,
                                          float* __restrict__ stats, int cols) {
    const int row = blockIdx.x, packs = cols / VEC;
    const size_t off = size_t(row) * cols;
    const float mu = mean[row], rs = rstd[row];
    float sg = 0.f, sgx = 0.f;
#pragma unroll 4
    for (int i = threadIdx.x; i < packs; i += blockDim.x) {
        float xv[VEC], dv[VEC], gm[VEC];
        load<VEC>(x + off, i, xv);
        load<VEC>(dy + off, i, dv);
        load<VEC>(gamma, i, gm);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float xh = __fmul_rn(__fsub_rn(xv[k], mu), rs);
            const float g = __fmul_rn(dv[k], gm[k]);
            sg += g;
            sgx += g * xh;
        }
    }
    const float2 s = block_sum2(sg, sgx);
    if (threadIdx.x == 0) {
        const float n = float(cols);
        stats[2 * size_t(row)] = s.x / n;
        stats[2 * size_t(row) + 1] = s.y / n;
    }
}

// Two-pass path, pass 2: a thread per pack of columns, down the rows of part
// gridDim.y − 1 − blockIdx.y: blocks start in blockIdx order, so this pass begins with the last
// rows, which pass 1 read last and which are the likeliest to be still in L2.
template <int VEC>
__device__ __forceinline__ void bwd_cols(const float* __restrict__ dy, const float* __restrict__ x,
                                         const float* __restrict__ mean,
                                         const float* __restrict__ rstd,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ stats, float* __restrict__ dx,
                                         float* __restrict__ partial, int rows, int cols,
                                         int rows_per_block) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= cols / VEC) return;  // no barriers in this kernel
    float gm[VEC], acc_g[VEC], acc_b[VEC];
    load<VEC>(gamma, i, gm);
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc_g[k] = acc_b[k] = 0.f;
    const int part = gridDim.y - 1 - blockIdx.y;
    const int r0 = part * rows_per_block, r1 = min(rows, r0 + rows_per_block);
#pragma unroll 4
    for (int r = r0; r < r1; ++r) {
        const size_t off = size_t(r) * cols;
        const float mu = mean[r], rs = rstd[r];
        const float mg = stats[2 * size_t(r)], mgx = stats[2 * size_t(r) + 1];
        float xv[VEC], dv[VEC], o[VEC];
        load<VEC>(x + off, i, xv);
        load<VEC>(dy + off, i, dv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float xh = __fmul_rn(__fsub_rn(xv[k], mu), rs);
            acc_g[k] += dv[k] * xh;
            acc_b[k] += dv[k];
            o[k] = dx_of(__fmul_rn(dv[k], gm[k]), xh, rs, mg, mgx);
        }
        store<VEC>(dx + off, i, o);
    }
    float* out = partial + size_t(part) * 2 * cols;
    store<VEC>(out, i, acc_g);
    store<VEC>(out + cols, i, acc_b);
}

}  // namespace layernorm_detail

using namespace layernorm_detail;

#define LN_FWD_WARP(V, P)                                                                         \
    extern "C" __global__ void __launch_bounds__(32 * WARP_ROWS) layernorm_fwd_warp_v##V##_p##P(  \
        const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd, \
        int rows, int cols, float eps) {                                                          \
        fwd_warp<V, P>(x, gamma, beta, y, mean, rstd, rows, cols, eps);                           \
    }
LN_FWD_WARP(4, 1)
LN_FWD_WARP(4, 2)
LN_FWD_WARP(4, 4)
LN_FWD_WARP(4, 8)
LN_FWD_WARP(1, 1)
LN_FWD_WARP(1, 2)
LN_FWD_WARP(1, 4)
LN_FWD_WARP(1, 8)

#define LN_FWD_BLOCK(V)                                                                          \
    extern "C" __global__ void __launch_bounds__(1024) layernorm_fwd_block_v##V(                 \
        const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd, \
        int cols, float eps, int cached) {                                                       \
        fwd_block<V>(x, gamma, beta, y, mean, rstd, cols, eps, cached);                          \
    }
LN_FWD_BLOCK(4)
LN_FWD_BLOCK(1)

#define LN_BWD_ROWS(V, P)                                                                        \
    extern "C" __global__ void __launch_bounds__(bwd_bound(V, P, false))                         \
        layernorm_bwd_rows_v##V##_p##P(const float* dy, const float* x, const float* mean,       \
                                       const float* rstd, const float* gamma, float* dx,         \
                                       float* partial, int rows, int cols, int rows_per_block,   \
                                       int group) {                                              \
        bwd_rows<V, P, false>(dy, x, mean, rstd, gamma, dx, partial, rows, cols, rows_per_block, \
                              group);                                                            \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(bwd_bound(V, P, true))                          \
        layernorm_bwd_rows_pf_v##V##_p##P(const float* dy, const float* x, const float* mean,    \
                                          const float* rstd, const float* gamma, float* dx,      \
                                          float* partial, int rows, int cols,                    \
                                          int rows_per_block, int group) {                       \
        bwd_rows<V, P, true>(dy, x, mean, rstd, gamma, dx, partial, rows, cols, rows_per_block,  \
                             group);                                                             \
    }
LN_BWD_ROWS(4, 1)
LN_BWD_ROWS(4, 2)
LN_BWD_ROWS(4, 4)
LN_BWD_ROWS(4, 8)
LN_BWD_ROWS(1, 1)
LN_BWD_ROWS(1, 2)
LN_BWD_ROWS(1, 4)
LN_BWD_ROWS(1, 8)

#define LN_BWD_TWO_PASS(V)                                                                       \
    extern "C" __global__ void __launch_bounds__(1024) layernorm_bwd_stats_v##V(                 \
        const float* dy, const float* x, const float* mean, const float* rstd,                   \
        const float* gamma, float* stats, int cols) {                                            \
        bwd_stats<V>(dy, x, mean, rstd, gamma, stats, cols);                                     \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) layernorm_bwd_cols_v##V(                   \
        const float* dy, const float* x, const float* mean, const float* rstd,                   \
        const float* gamma, const float* stats, float* dx, float* partial, int rows, int cols,   \
        int rows_per_block) {                                                                    \
        bwd_cols<V>(dy, x, mean, rstd, gamma, stats, dx, partial, rows, cols, rows_per_block);   \
    }
LN_BWD_TWO_PASS(4)
LN_BWD_TWO_PASS(1)

// dgamma[c], dbeta[c] = Σ_b partial[b][c], [cols + c]: 32 columns × 16 strided partial sums per
// block, then a fixed tree over the 16. parts = 0 (no rows) writes zeros.
extern "C" __global__ void __launch_bounds__(32 * FINISH_Y)
    layernorm_bwd_finish(const float* __restrict__ partial, int parts, int cols,
                         float* __restrict__ dgamma, float* __restrict__ dbeta) {
    __shared__ float sh[FINISH_Y][33];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const long long width = 2LL * cols;
    const long long c = (long long)blockIdx.x * 32 + tx;
    float s = 0.f;
    if (c < width) {
#pragma unroll 8
        for (int b = ty; b < parts; b += FINISH_Y) s += partial[size_t(b) * width + c];
    }
    sh[ty][tx] = s;
    __syncthreads();
#pragma unroll
    for (int o = FINISH_Y / 2; o > 0; o >>= 1) {
        if (ty < o) sh[ty][tx] += sh[ty + o][tx];
        __syncthreads();
    }
    if (ty == 0 && c < width) {
        if (c < cols) {
            dgamma[c] = sh[0][tx];
        } else {
            dbeta[c - cols] = sh[0][tx];
        }
    }
}
