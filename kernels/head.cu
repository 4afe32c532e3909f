// head.cu — the classifier head of an f16 MLP's training step in one launch: the last linear
// layer (N = classes ≤ 16), softmax-cross-entropy at the loss scale, the last layer's bias
// gradient, its data gradient and the ReLU backward of the hidden layer below it, with that
// layer's bias gradient; at small batches also the last layer's weight gradient. It replaces six
// launches of the unfused step (the N = 10 forward GEMM, softmax_ce, the dgrad GEMM with K = 10,
// relu_backward, and two bias-gradient reductions), seven with the weight gradient.
//
// What (per row r of `rows`; H = the hidden width, C = classes; src/cpu/head.rs is the reference,
// composed of the unfused ops' CPU references):
//   logits[r, c] = f16(Σ_k h[r, k]·w[c, k] + bias[c])            (f32 accumulation, as the GEMM)
//   dlogits[r, :], loss: softmax-cross-entropy of the f16 logits at *grad_scale / rows, as
//       cross_entropy.cu (the same per-element arithmetic: softmax_common.cuh's exp_shifted, the
//       c + r split, the label's exact quotient, the row loss), dlogits rounded to f16
//   dz[r, k] = f16(Σ_c dlogits[r, c]·w[c, k]) where h[r, k] > 0 (bit test, as relu.cu), else +0
//   dbias[c] = Σ_r dlogits[r, c],  dbias_hidden[k] = Σ_r dz[r, k]      (f32 sums of the f16 values)
//   if dw is not null (one tile per block): dw[b][c, k] = Σ_{r in tile b} dlogits[r, c]·h[r, k],
//       one f32 slice per block; the unscale adds the slices in block order
//   loss = the mean row loss (f64 partial sums, as cross_entropy.cu)
// Algorithm: a block takes 16 rows at a time (one m16 tile) and its 8 warps split the hidden
//   width: warp w owns the column blocks j = w, w + 8, … of 32 columns. Both products run on the
//   tensor cores (mma.sync m16n8k16, f16 in, f32 out), classes padded to 16 with zero weights:
//   - forward: each warp multiplies its column blocks (K steps of 16). The K order is permuted so
//     that every load is 16 bytes: lane (g = lane/4, q = lane%4) loads h[row g and g+8][32j + 8q,
//     +8) and w[class][32j + 8q, +8), its A and B fragments of two k-steps (a permutation of the k
//     index common to both operands leaves the dot product's terms unchanged; only their f32
//     summation order differs, as between any two GEMM tilings). The 8 warps' partial logits
//     meet in shared memory (one buffer per tile parity, one barrier per tile) and every warp
//     adds them in warp order: the same sums, bits and loss in every warp.
//   - the loss works on the accumulator fragments: a row's 16 logits live in the 4 lanes of one
//     quad, so its max and sums take two shuffles; the f16 dlogits fragment is, register for
//     register, the A fragment of the data-gradient product (K = 16 classes). Warp 0 stores the
//     logits, the dlogits and the loss.
//   - dgrad: each warp its column blocks, N in tiles of 8 whose columns are permuted so that lane
//     (g, q) receives exactly h[row][32j + 8q, +8), the 16 bytes it loaded for the forward (kept
//     in registers for the ReLU mask), and stores 16 bytes of dz.
//   - weight gradient (dw): A = dlogitsᵀ (classes × rows) and B = h (rows × columns) are the
//     transposes (movmatrix) of the fragments above, n-tiles permuted so that each lane ends with
//     8 consecutive columns of two classes: two 16-byte stores per class.
//   - bias gradients: each lane sums its 8 columns of rows g and g + 8 over the block's tiles in
//     registers; at the end shuffles across the 8 quads give the block's partial row. The
//     partial rows (and the f64 loss partials) are added in two deterministic rounds: the last
//     block of each group of 16 (an acquire-release ticket) adds its group's rows in block order,
//     the last group adds the group rows in group order (one round for up to 16 blocks). No
//     float atomics: bit-identical run to run for a given launch shape.
// Launch: 256 threads (8 warps), a block per tile up to 2 per SM (blocks loop over tiles beyond);
//   instances mlp_head_f16_j{1,2,4} for up to 1, 2, 4 column blocks per warp (H ≤ 256, 512,
//   1024; 124, 127, 192 registers, j1 and j2 bounded to two blocks per SM). The weights (C·H
//   f16, 10 KiB for MNIST) are read straight from global memory as 16-byte fragments: every warp
//   reads them, so after the first they hit L1. The host checks H % 32 == 0, H ≤ 1024, C ≤ 16
//   and 16-byte alignment of h, dz, dw and w. Scratch: the partial rows of width H + 16 f32 and
//   the f64 loss partials (the Gpu handle's scratch buffer), and one u32 counter per group plus
//   one (Gpu::with_counters: zero between launches, each reset by the block that takes its last
//   ticket).
// Roofline (784→512→10 MLP, 4096 rows): reads h (4 MiB) and writes dz (4 MiB) plus 160 KiB of
//   logits and dlogits: ~2.8 µs at the H100's ~3 TB/s; 2·4096·512·16·2 = 134 MFLOP on the tensor
//   cores is nothing. The six unfused launches it replaces took ~40 µs of event brackets; v3 takes
//   12-19 µs (H100): each block's path holds two HBM round trips, the loss's dependent
//   arithmetic and the ticket rounds.
// History (docs/kernels/head.md): v1 gave each warp whole tiles, one after another: a chain of
//   ~8 K dependent instructions per tile made it 40-54 µs; v3 splits every tile over 8 warps. v4
//   adds the weight gradient: at 256 rows it replaces a 10-12 µs GEMM launch for ~1.5 µs; at 4096
//   rows adding 256 blocks' slices (by ticket levels or in the unscale) cost more than the GEMM.
#include "pdl.cuh"
#include "softmax_common.cuh"

namespace head_detail {

using namespace softmax_detail;

constexpr int WARPS = 8;
constexpr int CP = 16;      // classes padded to two n8 tiles
constexpr int GROUP = 16;   // blocks per first-level reduction group

__device__ __forceinline__ void mma16816(float (&d)[4], unsigned a0, unsigned a1, unsigned a2,
                                         unsigned a3, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The transpose of an 8×8 f16 matrix held as mma fragments (lane g·4 + q: row g, columns 2q,
// 2q + 1) in the same layout.
__device__ __forceinline__ unsigned trans8(unsigned v) {
    unsigned t;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(t) : "r"(v));
    return t;
}

// Eight f16 weights of class row `row` from column `col` (16 bytes; zeros for the padding rows
// ≥ classes). w is small (classes·H f16) and read by every warp, so these hit L1.
__device__ __forceinline__ uint4 load_w(const __half* __restrict__ w, int row, int classes, int H,
                                        int col) {
    return row < classes ? __ldg(reinterpret_cast<const uint4*>(w + size_t(row) * H + col))
                         : make_uint4(0u, 0u, 0u, 0u);
}

// s += v, lane by lane.
__device__ __forceinline__ void add4(float4& s, float4 v) {
    s.x += v.x;
    s.y += v.y;
    s.z += v.z;
    s.w += v.w;
}

__device__ __forceinline__ unsigned pack2(__half lo, __half hi) {
    return unsigned(__half_as_ushort(lo)) | (unsigned(__half_as_ushort(hi)) << 16);
}

// relu.cu's backward on one f16: keep dy's bits where y's bits lie in [1, +inf], else +0.
__device__ __forceinline__ unsigned short relu_bwd(unsigned short dy, unsigned short y) {
    return (y != 0 && y <= 0x7C00u) ? dy : 0;
}

// Rounds a pair of f32 gradients to f16 and masks them with the pair of forward outputs in y.
__device__ __forceinline__ unsigned mask_pair(float d0, float d1, unsigned y) {
    const unsigned short g0 = __half_as_ushort(__float2half_rn(d0));
    const unsigned short g1 = __half_as_ushort(__float2half_rn(d1));
    return unsigned(relu_bwd(g0, y & 0xFFFFu)) | (unsigned(relu_bwd(g1, y >> 16)) << 16);
}

__device__ __forceinline__ float lo_f(unsigned v) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(v & 0xFFFFu)));
}
__device__ __forceinline__ float hi_f(unsigned v) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(v >> 16)));
}

// One row's loss on the quad that holds it: x[4] are this lane's logits of the row (classes
// 2q, 2q+1, 8+2q, 9+2q; −inf where absent), e[4] receive exp(x − m), dl[4] the f16 gradients.
// Returns the row loss (the same in the quad's four lanes).
__device__ __forceinline__ float row_loss(const float (&x)[4], const bool (&present)[4],
                                          unsigned label, int classes, float scale, int q,
                                          __half (&dl)[4]) {
    const bool ok = label < unsigned(classes);
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (present[i]) m = fmaxf(m, x[i]);
    }
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    const bool finite_m = isfinite(m);
    float c = 0.f, r = 0.f, e[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) e[i] = present[i] ? exp_count_ce(x[i], m, finite_m, c, r) : 0.f;
    c += __shfl_xor_sync(0xffffffffu, c, 1);
    r += __shfl_xor_sync(0xffffffffu, r, 1);
    c += __shfl_xor_sync(0xffffffffu, c, 2);
    r += __shfl_xor_sync(0xffffffffu, r, 2);
    const CeRow cw = ce_row(scale, ok, c + r);
    float x_label = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int cls = (i >> 1) * 8 + 2 * q + (i & 1);
        float g = present[i] ? __fmul_rn(e[i], cw.ps) : 0.f;
        if (ok && unsigned(cls) == label) {
            g = __fmul_rn(__fsub_rn(__fdiv_rn(e[i], cw.s), 1.f), cw.scale);
            x_label = x[i];
        }
        dl[i] = __float2half_rn(g);
    }
    // The label's logit to the whole quad (exactly one lane holds it when ok).
    x_label += __shfl_xor_sync(0xffffffffu, x_label, 1);
    x_label += __shfl_xor_sync(0xffffffffu, x_label, 2);
    const float ln_s = __fadd_rn(logf(c), log1pf(__fdiv_rn(r, c)));
    return ok ? __fadd_rn(__fsub_rn(m, x_label), ln_s) : quiet_nan();
}

}  // namespace head_detail

using namespace head_detail;

// dst[k] = Σ_b src[b·n4 + k] over b in [0, count) in block order (float4s, count ≤ GROUP).
__device__ __forceinline__ void sum_rows(const float4* __restrict__ src, unsigned count, int n4,
                                         float4* __restrict__ dst) {
    for (int k = threadIdx.x; k < n4; k += blockDim.x) {
        float4 v[GROUP];
#pragma unroll
        for (int b = 0; b < GROUP; ++b) {
            v[b] = b < int(count) ? __ldcg(src + size_t(b) * n4 + k)
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        float4 s = v[0];
#pragma unroll
        for (int b = 1; b < GROUP; ++b) {
            add4(s, v[b]);
        }
        dst[k] = s;
    }
}

// Σ loss_p[first + b] over b in [0, n), added in index order in f64. The loads go out GROUP at a
// time: __ldcg is inline asm the compiler does not move across iterations, so a plain loop
// waited one L2 round trip per partial (16 in a row per round, ~5 µs at the end of every launch).
__device__ __forceinline__ double sum_loss(const double* __restrict__ loss_p, unsigned first,
                                           unsigned n) {
    double l = 0.0;
    for (unsigned g0 = 0; g0 < n; g0 += GROUP) {
        double v[GROUP];
#pragma unroll
        for (int b = 0; b < GROUP; ++b) v[b] = g0 + b < n ? __ldcg(loss_p + first + g0 + b) : 0.0;
#pragma unroll
        for (int b = 0; b < GROUP; ++b) {
            if (g0 + b < n) l += v[b];
        }
    }
    return l;
}

// The final sums of partial rows [first, first + n) (in row order, GROUP at a time) into the bias
// gradients, and of their f64 loss partials into the mean loss.
__device__ __forceinline__ void final_sums(const float* __restrict__ rows_p,
                                           const double* __restrict__ loss_p, unsigned first,
                                           unsigned n, int width, int H, int classes, int rows,
                                           float* __restrict__ dbias_hidden,
                                           float* __restrict__ dbias, float* __restrict__ loss) {
    const int w4 = width / 4;
    const float4* gsrc = reinterpret_cast<const float4*>(rows_p) + size_t(first) * w4;
    for (int k = threadIdx.x; k < w4; k += blockDim.x) {
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
        for (unsigned g0 = 0; g0 < n; g0 += GROUP) {
            float4 v[GROUP];
#pragma unroll
            for (int b = 0; b < GROUP; ++b) {
                v[b] = g0 + b < n ? __ldcg(gsrc + size_t(g0 + b) * w4 + k)
                                       : make_float4(0.f, 0.f, 0.f, 0.f);
            }
#pragma unroll
            for (int b = 0; b < GROUP; ++b) {
                add4(s, v[b]);
            }
        }
        const float sum[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int col = 4 * k + e;
            if (col < H) {
                dbias_hidden[col] = sum[e];
            } else if (col - H < classes) {
                dbias[col - H] = sum[e];
            }
        }
    }
    if (threadIdx.x == 0) *loss = float(sum_loss(loss_p, first, n) / double(rows));
}

// The bias-gradient and loss partials: one row of `width` f32 and one f64 per block, then one
// per group of GROUP blocks; the last block of each group (a ticket on its group's counter) adds
// its group's rows in block order, and the last group to finish (a ticket on the counter after the
// groups') adds the group rows in group order: two short rounds instead of one block reading
// every block's row. Each counter is put back to zero by the block that takes its last ticket;
// the last block overall writes the bias gradients and the loss.
__device__ __forceinline__ void reduce_partials(float* __restrict__ rows_p,
                                                double* __restrict__ loss_p,
                                                unsigned* __restrict__ counters, int width,
                                                int H, int classes, int rows,
                                                float* __restrict__ dbias_hidden,
                                                float* __restrict__ dbias,
                                                float* __restrict__ loss) {
    const unsigned grid = gridDim.x, groups = (grid + GROUP - 1) / GROUP;
    const unsigned group = blockIdx.x / GROUP;
    const unsigned first = group * GROUP, count = min(grid - first, unsigned(GROUP));
    const int w4 = width / 4;
    __threadfence();
    __syncthreads();
    int last = 0;
    if (threadIdx.x == 0) {
        unsigned t;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(t)
                     : "l"(counters + group)
                     : "memory");
        last = t == count - 1;
        if (last) counters[group] = 0;  // every block of the group has taken its ticket
    }
    if (!__syncthreads_or(last)) return;
    if (groups == 1) {
        // One group: its last block is the last overall and adds the rows itself.
        final_sums(rows_p, loss_p, 0, count, width, H, classes, rows, dbias_hidden, dbias, loss);
        return;
    }
    // The group's rows, in block order, into group row `grid + group`.
    sum_rows(reinterpret_cast<const float4*>(rows_p) + size_t(first) * w4, count, w4,
             reinterpret_cast<float4*>(rows_p) + size_t(grid + group) * w4);
    if (threadIdx.x == 0) loss_p[grid + group] = sum_loss(loss_p, first, count);
    __threadfence();
    __syncthreads();
    last = 0;
    if (threadIdx.x == 0) {
        unsigned t;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(t)
                     : "l"(counters + groups)
                     : "memory");
        last = t == groups - 1;
        if (last) counters[groups] = 0;
    }
    if (!__syncthreads_or(last)) return;
    // The group rows, in group order (at most grid / GROUP + 1 of them).
    final_sums(rows_p, loss_p, grid, groups, width, H, classes, rows, dbias_hidden, dbias, loss);
}

template <int JW>
__device__ __forceinline__ void head_body(const __half* __restrict__ h, const __half* __restrict__ w,
                 const float* __restrict__ bias, const unsigned* __restrict__ labels,
                 const float* __restrict__ grad_scale, int rows, int hidden, int classes,
                 __half* __restrict__ logits, __half* __restrict__ dlogits,
                 __half* __restrict__ dz, float* __restrict__ dbias_hidden,
                 float* __restrict__ dbias, float* __restrict__ dw,
                 float* __restrict__ rows_p, double* __restrict__ loss_p,
                 unsigned* __restrict__ counters,
                 float* __restrict__ loss) {
    const int H = hidden, J = H / 32;
    // Each tile's forward partials, one buffer per tile parity: a warp writes the buffer of tile
    // i + 2 only after the barrier of tile i + 1, which every warp reaches after its reads of
    // tile i, so one barrier per tile suffices.
    __shared__ float part[2][WARPS][8][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const float scale = ce_scale(grad_scale, rows);
    float cls_bias[4];
    bool present[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int cls = (i >> 1) * 8 + 2 * q + (i & 1);
        present[i] = cls < classes;
        cls_bias[i] = present[i] ? bias[cls] : 0.f;
    }
    // This warp's column blocks are j = warp + WARPS·i; col[i][k] sums the hidden gradient of
    // columns 32j + 8q + k over rows g and g + 8 of every tile.
    float col[JW][8];
#pragma unroll
    for (int i = 0; i < JW; ++i) {
#pragma unroll
        for (int k = 0; k < 8; ++k) col[i][k] = 0.f;
    }
    float out_sum[4] = {0.f, 0.f, 0.f, 0.f};  // warp 0: dbias of this lane's classes
    double block_loss = 0.0;                   // warp 0
    const int tiles = (rows + 15) / 16;

    int parity = 0;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x, parity ^= 1) {
        const int ra = tile * 16 + g, rb = ra + 8;
        const bool va = ra < rows, vb = rb < rows;
        const __half* ha = h + size_t(va ? ra : 0) * H + 8 * q;
        const __half* hb = h + size_t(vb ? rb : 0) * H + 8 * q;
        // The labels now, so their round trip overlaps the forward's, not the loss's.
        const unsigned label_a = va ? labels[ra] : 0u, label_b = vb ? labels[rb] : 0u;
        uint4 ya[JW], yb[JW];  // kept for the ReLU mask

        // Forward over this warp's column blocks, then the block's sum in warp order.
        float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int i = 0; i < JW; ++i) {
            const int j = warp + WARPS * i;
            const bool here = j < J;
            ya[i] = here && va ? *reinterpret_cast<const uint4*>(ha + 32 * j) : make_uint4(0, 0, 0, 0);
            yb[i] = here && vb ? *reinterpret_cast<const uint4*>(hb + 32 * j) : make_uint4(0, 0, 0, 0);
            if (!here) continue;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const uint4 wv = load_w(w, 8 * nt + g, classes, H, 32 * j + 8 * q);
                mma16816(acc[nt], ya[i].x, yb[i].x, ya[i].y, yb[i].y, wv.x, wv.y);
                mma16816(acc[nt], ya[i].z, yb[i].z, ya[i].w, yb[i].w, wv.z, wv.w);
            }
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) part[parity][warp][e][lane] = acc[e >> 2][e & 3];
        __syncthreads();
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            float s = part[parity][0][e][lane];
#pragma unroll
            for (int v = 1; v < WARPS; ++v) s += part[parity][v][e][lane];
            acc[e >> 2][e & 3] = s;
        }

        // Bias, the f16 logits, the loss and its f16 gradient, per row (quad g: rows ra, rb),
        // the same in every warp; warp 0 stores them.
        __half dl[2][4];
        float row_l[2];
#pragma unroll
        for (int half_row = 0; half_row < 2; ++half_row) {
            const int row = half_row ? rb : ra;
            const bool valid = half_row ? vb : va;
            float x[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float v = acc[i >> 1][(i & 1) + 2 * half_row] + cls_bias[i];
                const __half hv = __float2half_rn(v);
                x[i] = __half2float(hv);
                const int cls = (i >> 1) * 8 + 2 * q + (i & 1);
                if (warp == 0 && valid && present[i]) logits[size_t(row) * classes + cls] = hv;
            }
            const unsigned label = half_row ? label_b : label_a;
            row_l[half_row] = row_loss(x, present, label, classes, scale, q, dl[half_row]);
            if (!valid) {
#pragma unroll
                for (int i = 0; i < 4; ++i) dl[half_row][i] = __float2half_rn(0.f);
            }
            if (warp == 0) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int cls = (i >> 1) * 8 + 2 * q + (i & 1);
                    if (valid && present[i]) dlogits[size_t(row) * classes + cls] = dl[half_row][i];
                }
            }
        }
        if (warp == 0) {
            // The tile's loss in quad order (rows ra, rb per quad), added in f64.
            double tl = (q == 0) ? (va ? double(row_l[0]) : 0.0) + (vb ? double(row_l[1]) : 0.0)
                                 : 0.0;
            block_loss += warp_sum_d(tl);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float s = __half2float(dl[0][i]) + __half2float(dl[1][i]);
                s += __shfl_xor_sync(0xffffffffu, s, 4);
                s += __shfl_xor_sync(0xffffffffu, s, 8);
                s += __shfl_xor_sync(0xffffffffu, s, 16);
                out_sum[i] += s;
            }
        }

        // The dgrad's A fragment is the dlogits fragment: a0/a1 classes 2q, 2q+1 of rows ra/rb,
        // a2/a3 classes 8 + 2q, 9 + 2q.
        const unsigned a0 = pack2(dl[0][0], dl[0][1]), a1 = pack2(dl[1][0], dl[1][1]);
        const unsigned a2 = pack2(dl[0][2], dl[0][3]), a3 = pack2(dl[1][2], dl[1][3]);
        // The weight gradient's A fragment (classes × rows) is the transposed dlogits fragment.
        unsigned t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        if (dw != nullptr) {
            t0 = trans8(a0);
            t1 = trans8(a2);
            t2 = trans8(a1);
            t3 = trans8(a3);
        }
        __half* za = dz + size_t(va ? ra : 0) * H + 8 * q;
        __half* zb = dz + size_t(vb ? rb : 0) * H + 8 * q;
#pragma unroll
        for (int i = 0; i < JW; ++i) {
            const int j = warp + WARPS * i;
            if (j >= J) continue;
            const unsigned ya_[4] = {ya[i].x, ya[i].y, ya[i].z, ya[i].w};
            const unsigned yb_[4] = {yb[i].x, yb[i].y, yb[i].z, yb[i].w};
            // B fragments of the four n-tiles: rows 2q, 2q+1, 2q+8, 2q+9 of w at columns
            // 32j + 8·(g/2) + [0, 8); n-tile u takes element 2u + g%2 of each.
            const int wc = 32 * j + 8 * (g >> 1);
            const uint4 w0 = load_w(w, 2 * q, classes, H, wc), w1 = load_w(w, 2 * q + 1, classes, H, wc);
            const uint4 w2 = load_w(w, 2 * q + 8, classes, H, wc), w3 = load_w(w, 2 * q + 9, classes, H, wc);
            const unsigned w0_[4] = {w0.x, w0.y, w0.z, w0.w}, w1_[4] = {w1.x, w1.y, w1.z, w1.w};
            const unsigned w2_[4] = {w2.x, w2.y, w2.z, w2.w}, w3_[4] = {w3.x, w3.y, w3.z, w3.w};
            const int sh = 16 * (g & 1);
            unsigned oa[4], ob[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                // n-tile column g is physical column 32j + 8·(g/2) + 2u + g%2.
                const unsigned b0 = ((w0_[u] >> sh) & 0xFFFFu) | (((w1_[u] >> sh) & 0xFFFFu) << 16);
                const unsigned b1 = ((w2_[u] >> sh) & 0xFFFFu) | (((w3_[u] >> sh) & 0xFFFFu) << 16);
                float d[4] = {0.f, 0.f, 0.f, 0.f};
                mma16816(d, a0, a1, a2, a3, b0, b1);
                oa[u] = mask_pair(d[0], d[1], ya_[u]);
                ob[u] = mask_pair(d[2], d[3], yb_[u]);
                col[i][2 * u] += lo_f(oa[u]) + lo_f(ob[u]);
                col[i][2 * u + 1] += hi_f(oa[u]) + hi_f(ob[u]);
            }
            if (va) *reinterpret_cast<uint4*>(za + 32 * j) = make_uint4(oa[0], oa[1], oa[2], oa[3]);
            if (vb) *reinterpret_cast<uint4*>(zb + 32 * j) = make_uint4(ob[0], ob[1], ob[2], ob[3]);

            if (dw == nullptr) continue;
            // The weight gradient dlogitsᵀ·h of this tile on these columns: B is h (rows ×
            // columns), the transposes of the registers loaded for the forward; n-tile u's
            // column g is physical column 32j + 8·(g/2) + 2u + g%2, so that lane (g, q) receives
            // classes g and g + 8 of columns 32j + 8q + 2u, +1: 8 consecutive columns per class.
            // The host passes dw only for a grid of one tile per block: each block's slice is
            // its tile's product, written once.
            float* dw_block = dw + size_t(blockIdx.x) * classes * H;
            float dwv[4][4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
#pragma unroll
                for (int e = 0; e < 4; ++e) dwv[u][e] = 0.f;
                mma16816(dwv[u], t0, t1, t2, t3, trans8(ya_[u]), trans8(yb_[u]));
            }
#pragma unroll
            for (int half_c = 0; half_c < 2; ++half_c) {
                const int cls = g + 8 * half_c;
                if (cls >= classes) continue;
                float4* out = reinterpret_cast<float4*>(dw_block + size_t(cls) * H + 32 * j + 8 * q);
                const float4 lo = make_float4(dwv[0][2 * half_c], dwv[0][2 * half_c + 1],
                                              dwv[1][2 * half_c], dwv[1][2 * half_c + 1]);
                const float4 hi = make_float4(dwv[2][2 * half_c], dwv[2][2 * half_c + 1],
                                              dwv[3][2 * half_c], dwv[3][2 * half_c + 1]);
                out[0] = lo;
                out[1] = hi;
            }
        }
    }

    // This block's partial row: the hidden bias gradient by shuffles across the 8 quads (each
    // warp owns its columns), the last layer's from warp 0, the loss from warp 0's lane 0.
    const int width = H + CP;
    float* my_row = rows_p + size_t(blockIdx.x) * width;
#pragma unroll
    for (int i = 0; i < JW; ++i) {
        const int j = warp + WARPS * i;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            float s = col[i][k];
            s += __shfl_xor_sync(0xffffffffu, s, 4);
            s += __shfl_xor_sync(0xffffffffu, s, 8);
            s += __shfl_xor_sync(0xffffffffu, s, 16);
            if (j < J && g == 0) my_row[32 * j + 8 * q + k] = s;
        }
    }
    if (warp == 0 && g == 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) my_row[H + (i >> 1) * 8 + 2 * q + (i & 1)] = out_sum[i];
    }
    if (threadIdx.x == 0) loss_p[blockIdx.x] = block_loss;
    reduce_partials(rows_p, loss_p, counters, width, H, classes, rows, dbias_hidden, dbias, loss);
}

// One instance per column blocks per warp (JW): H ≤ 256, 512, 1024.
#define AMPKIT_HEAD(JW, MIN_BLOCKS)                                                               \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS) mlp_head_f16_j##JW(       \
        const __half* __restrict__ h, const __half* __restrict__ w,                               \
        const float* __restrict__ bias, const unsigned* __restrict__ labels,                      \
        const float* __restrict__ grad_scale, int rows, int hidden, int classes,                  \
        __half* __restrict__ logits, __half* __restrict__ dlogits, __half* __restrict__ dz,       \
        float* __restrict__ dbias_hidden, float* __restrict__ dbias, float* __restrict__ dw,      \
        float* __restrict__ rows_p, double* __restrict__ loss_p, unsigned* __restrict__ counters, \
        float* __restrict__ loss) {                                                               \
        pdl_start();                                                                              \
        head_body<JW>(h, w, bias, labels, grad_scale, rows, hidden, classes, logits, dlogits, dz, \
                      dbias_hidden, dbias, dw, rows_p, loss_p, counters, loss);                   \
    }
AMPKIT_HEAD(1, 2)
AMPKIT_HEAD(2, 2)
AMPKIT_HEAD(4, 1)
