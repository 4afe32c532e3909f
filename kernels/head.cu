// head.cu — the classifier head of an f16 MLP's training step in one launch: the last linear
// layer (N = classes ≤ 16), softmax-cross-entropy at the loss scale, the last layer's bias
// gradient, its data gradient and the ReLU backward of the hidden layer below it, with that
// layer's bias gradient. It replaces six launches of the unfused step (the N = 10 forward GEMM,
// softmax_ce, the dgrad GEMM with K = 10, relu_backward, and two bias-gradient reductions).
//
// What (per row r of `rows`; H = the hidden width, C = classes; src/cpu/head.rs is the reference,
// composed of the unfused ops' CPU references):
//   logits[r, c] = f16(Σ_k h[r, k]·w[c, k] + bias[c])            (f32 accumulation, as the GEMM)
//   dlogits[r, :], loss: softmax-cross-entropy of the f16 logits at *grad_scale / rows, as
//       cross_entropy.cu (the same per-element arithmetic: softmax_common.cuh's exp_shifted, the
//       c + r split, the label's exact quotient, the row loss), dlogits rounded to f16
//   dz[r, k] = f16(Σ_c dlogits[r, c]·w[c, k]) where h[r, k] > 0 (bit test, as relu.cu), else +0
//   dbias[c] = Σ_r dlogits[r, c],  dbias_hidden[k] = Σ_r dz[r, k]      (f32 sums of the f16 values)
//   loss = the mean row loss (f64 partial sums, as cross_entropy.cu)
// Algorithm: a warp takes 16 rows at a time (one m16 tile) and runs both products on the tensor
//   cores (mma.sync m16n8k16, f16 in, f32 out), classes padded to 16 with zero weights:
//   - forward: K = H in steps of 16. The K order is permuted so that every load is 16 bytes:
//     lane (g = lane/4, q = lane%4) loads h[row g and g+8][32j + 8q, +8) and w[class][32j + 8q,
//     +8), which are its A and B fragments of two k-steps (a permutation of the k index common
//     to both operands leaves the dot product's terms unchanged; only their f32 summation order
//     differs, as between any two GEMM tilings).
//   - the loss works on the accumulator fragments: a row's 16 logits live in the 4 lanes of one
//     quad, so its max and sums take two shuffles; the f16 dlogits fragment is, register for
//     register, the A fragment of the data-gradient product (K = 16 classes).
//   - dgrad: N = H in tiles of 8 whose columns are permuted so that lane (g, q) receives exactly
//     h[row][32j + 8q, +8), the 16 bytes it loads for the ReLU mask, and stores 16 bytes of dz.
//   - bias gradients: column sums of each tile by shuffles across the 8 quads, added per warp
//     into its own shared-memory row in tile order, then summed over the block's warps in warp
//     order into one partial per block; the last block to finish (an acquire-release ticket, as
//     cross_entropy.cu) adds the partials in block order. No float atomics: bit-identical run to
//     run for a given launch shape.
// Launch: 256 threads (8 warps), grid = min(⌈tiles / 8⌉, number of SMs), dynamic shared memory:
//   w as [16][H + pad] f16 (forward fragments), wᵀ as [H][16 + 2] f16 (dgrad fragments), and
//   8 rows of H f32 (the warps' bias-gradient rows); the host checks H % 32 == 0, H ≤ 1024, C ≤ 16
//   and 16-byte alignment of h and dz. Scratch (the Gpu handle's ticket buffer): the counter, one
//   f64 loss partial per block, then H + 16 f32 bias-gradient partials per block.
// Roofline (784→512→10 MLP, 4096 rows): reads h (4 MiB) and writes dz (4 MiB) plus 160 KiB of
//   logits and dlogits: ~2.8 µs at the H100's ~3 TB/s; 2·4096·512·16·2 = 134 MFLOP on the tensor
//   cores is nothing. The unfused launches it replaces took ~40 µs (bench/RESULTS.md).
#include "softmax_common.cuh"

namespace head_detail {

using namespace softmax_detail;

constexpr int WARPS = 8;
constexpr int CP = 16;         // classes padded to two n8 tiles
constexpr int WT_STRIDE = 18;  // halves per row of wᵀ in shared memory (9 words: 2-way conflicts)

__device__ __forceinline__ void mma16816(float (&d)[4], unsigned a0, unsigned a1, unsigned a2,
                                         unsigned a3, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
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

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    mlp_head_f16(const __half* __restrict__ h, const __half* __restrict__ w,
                 const float* __restrict__ bias, const unsigned* __restrict__ labels,
                 const float* __restrict__ grad_scale, int rows, int hidden, int classes,
                 __half* __restrict__ logits, __half* __restrict__ dlogits,
                 __half* __restrict__ dz, float* __restrict__ dbias_hidden,
                 float* __restrict__ dbias, double* __restrict__ partial,
                 float* __restrict__ loss) {
    const int H = hidden;
    const int ws = H + ((H * 2) % 128 == 0 ? 32 : 0);  // w row stride: rows 64 B apart in banks
    __half* w_s = reinterpret_cast<__half*>(dyn_smem);
    __half* wt_s = w_s + CP * ws;
    float* red = reinterpret_cast<float*>(wt_s + size_t(H) * WT_STRIDE);  // [WARPS][H]
    __shared__ float red_out[WARPS][CP];

    // Weights into shared memory, classes ≥ C as zeros, in both layouts.
    for (int i = threadIdx.x; i < CP * H; i += blockDim.x) {
        const int c = i / H, k = i - c * H;
        const __half v = c < classes ? w[size_t(c) * H + k] : __float2half_rn(0.f);
        w_s[c * ws + k] = v;
        wt_s[k * WT_STRIDE + c] = v;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    float* my_red = red + warp * H;
    for (int k = lane; k < H; k += 32) my_red[k] = 0.f;
    __syncthreads();

    const float scale = ce_scale(grad_scale, rows);
    float cls_bias[4];
    bool present[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int cls = (i >> 1) * 8 + 2 * q + (i & 1);
        present[i] = cls < classes;
        cls_bias[i] = present[i] ? bias[cls] : 0.f;
    }
    float out_sum[4] = {0.f, 0.f, 0.f, 0.f};  // dbias of this lane's classes, over its tiles
    double warp_loss = 0.0;
    const int tiles = (rows + 15) / 16, blocks32 = H / 32;

    for (int tile = blockIdx.x * WARPS + warp; tile < tiles; tile += gridDim.x * WARPS) {
        const int ra = tile * 16 + g, rb = ra + 8;
        const bool va = ra < rows, vb = rb < rows;
        const __half* ha = h + size_t(va ? ra : 0) * H + 8 * q;
        const __half* hb = h + size_t(vb ? rb : 0) * H + 8 * q;

        // Forward: logits of the 16 rows × 16 (padded) classes.
        float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll 8
        for (int j = 0; j < blocks32; ++j) {
            const uint4 lo = va ? *reinterpret_cast<const uint4*>(ha + 32 * j) : make_uint4(0, 0, 0, 0);
            const uint4 hi = vb ? *reinterpret_cast<const uint4*>(hb + 32 * j) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const uint4 wv =
                    *reinterpret_cast<const uint4*>(w_s + (8 * nt + g) * ws + 32 * j + 8 * q);
                mma16816(acc[nt], lo.x, hi.x, lo.y, hi.y, wv.x, wv.y);
                mma16816(acc[nt], lo.z, hi.z, lo.w, hi.w, wv.z, wv.w);
            }
        }

        // Bias, the f16 logits, the loss and its f16 gradient, per row (quad g: rows ra, rb).
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
                if (valid && present[i]) logits[size_t(row) * classes + cls] = hv;
            }
            const unsigned label = valid ? labels[row] : 0u;
            row_l[half_row] = row_loss(x, present, label, classes, scale, q, dl[half_row]);
            if (!valid) {
#pragma unroll
                for (int i = 0; i < 4; ++i) dl[half_row][i] = __float2half_rn(0.f);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int cls = (i >> 1) * 8 + 2 * q + (i & 1);
                if (valid && present[i]) dlogits[size_t(row) * classes + cls] = dl[half_row][i];
            }
        }
        // The tile's loss in row order of quads (rows ra, rb per quad), added in f64.
        double tl = (q == 0) ? (va ? double(row_l[0]) : 0.0) + (vb ? double(row_l[1]) : 0.0) : 0.0;
        tl = warp_sum_d(tl);
        warp_loss += tl;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float s = __half2float(dl[0][i]) + __half2float(dl[1][i]);
            s += __shfl_xor_sync(0xffffffffu, s, 4);
            s += __shfl_xor_sync(0xffffffffu, s, 8);
            s += __shfl_xor_sync(0xffffffffu, s, 16);
            out_sum[i] += s;
        }

        // The dgrad's A fragment is the dlogits fragment: a0/a1 classes 2q, 2q+1 of rows ra/rb,
        // a2/a3 classes 8 + 2q, 9 + 2q.
        const unsigned a0 = pack2(dl[0][0], dl[0][1]), a1 = pack2(dl[1][0], dl[1][1]);
        const unsigned a2 = pack2(dl[0][2], dl[0][3]), a3 = pack2(dl[1][2], dl[1][3]);
        __half* za = dz + size_t(va ? ra : 0) * H + 8 * q;
        __half* zb = dz + size_t(vb ? rb : 0) * H + 8 * q;
#pragma unroll 4
        for (int j = 0; j < blocks32; ++j) {
            const uint4 ya = va ? *reinterpret_cast<const uint4*>(ha + 32 * j) : make_uint4(0, 0, 0, 0);
            const uint4 yb = vb ? *reinterpret_cast<const uint4*>(hb + 32 * j) : make_uint4(0, 0, 0, 0);
            const unsigned ya_[4] = {ya.x, ya.y, ya.z, ya.w}, yb_[4] = {yb.x, yb.y, yb.z, yb.w};
            unsigned oa[4], ob[4];
            float col[8];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                // n-tile column g is physical column 32j + 8·(g/2) + 2u + g%2.
                const int p = 32 * j + 8 * (g >> 1) + 2 * u + (g & 1);
                const unsigned* wt = reinterpret_cast<const unsigned*>(wt_s + p * WT_STRIDE);
                float d[4] = {0.f, 0.f, 0.f, 0.f};
                mma16816(d, a0, a1, a2, a3, wt[q], wt[q + 4]);
                oa[u] = mask_pair(d[0], d[1], ya_[u]);
                ob[u] = mask_pair(d[2], d[3], yb_[u]);
                col[2 * u] = lo_f(oa[u]) + lo_f(ob[u]);
                col[2 * u + 1] = hi_f(oa[u]) + hi_f(ob[u]);
            }
            if (va) *reinterpret_cast<uint4*>(za + 32 * j) = make_uint4(oa[0], oa[1], oa[2], oa[3]);
            if (vb) *reinterpret_cast<uint4*>(zb + 32 * j) = make_uint4(ob[0], ob[1], ob[2], ob[3]);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                col[k] += __shfl_xor_sync(0xffffffffu, col[k], 4);
                col[k] += __shfl_xor_sync(0xffffffffu, col[k], 8);
                col[k] += __shfl_xor_sync(0xffffffffu, col[k], 16);
            }
            if (g == 0) {
#pragma unroll
                for (int k = 0; k < 8; ++k) my_red[32 * j + 8 * q + k] += col[k];
            }
        }
    }

    // The block's partials: the warps' rows summed in warp order.
    if (g == 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) red_out[warp][(i >> 1) * 8 + 2 * q + (i & 1)] = out_sum[i];
    }
    __syncthreads();
    const int width = H + CP;
    float* dbp = reinterpret_cast<float*>(partial + 1 + gridDim.x);  // [grid][H + 16]
    for (int k = threadIdx.x; k < width; k += blockDim.x) {
        float s = 0.f;
        for (int v = 0; v < WARPS; ++v) s += k < H ? red[v * H + k] : red_out[v][k - H];
        dbp[size_t(blockIdx.x) * width + k] = s;
    }
    __threadfence();
    // The loss partial and the ticket (cross_entropy.cu's); the last block adds everything.
    if (!ce_ticket(partial, warp_loss, 32)) return;
    for (int k = threadIdx.x; k < width; k += blockDim.x) {
        // Eight running sums (block b into sum b % 8) keep eight loads in flight; they are
        // added in a fixed tree at the end.
        float s8[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (unsigned b0 = 0; b0 < gridDim.x; b0 += 8) {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                if (b0 + i < gridDim.x) s8[i] += __ldcg(dbp + size_t(b0 + i) * width + k);
            }
        }
        const float s = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
        if (k < H) {
            dbias_hidden[k] = s;
        } else if (k - H < classes) {
            dbias[k - H] = s;
        }
    }
    ce_total(partial, loss, rows);
}
