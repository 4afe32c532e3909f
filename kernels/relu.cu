// relu.cu — ReLU forward (y = x where x > 0 or NaN, else +0.0) and backward on the forward
// output (dx = dy where y > 0, else +0.0). (In the MLP the forward is usually the GEMM epilogue's;
// this kernel serves activations the GEMM does not produce, e.g. LayerNorm outputs.)
//
// What: relu_{forward,backward}_f16_v{1,2,4,8}, relu_{forward,backward}_bf16_v{1,2,4,8},
//   relu_{forward,backward}_f32_v{1,2,4}; one instantiation per element format and vector width
//   V (elements per access); the host picks the widest V that the three pointers' alignment
//   allows at some head offset (src/ops/relu.rs). f16 and bf16 share the 16-bit storage but not
//   the bit pattern of +inf (0x7C00, 0x7F80), so the format is a tag type, not the storage width.
// Numerics (bit-exact with src/cpu/relu.rs::backward): the test is done on bit patterns, so no
//   value is converted or rounded: y > 0 exactly when y's sign bit is clear, y is not ±0 and not
//   NaN, i.e. its bits lie in [1, +inf]; then dx takes dy's bits unchanged (NaN payloads, −0.0,
//   subnormals and infinities included), else dx = +0.0. A NaN y therefore gives +0.0, as the
//   reference's `y > 0` comparison does. The forward keeps x's bits where they lie in
//   [1, +inf] or x is NaN (src/cpu/relu.rs::forward: NaN stays NaN), else writes +0.0.
// Launch: 1-D grid-stride, 256 threads, grid capped by the host at a wave of resident blocks;
//   thread t also handles head element t (t < head < V) and tail element t (t < V).
// Roofline: reads dy and y, writes dx: 6 B per f16 or bf16 element, 12 B per f32 element; a
//   compare and a select each. The default MLP's 4096×512 hidden gradient (f16, 12.6 MB) takes
//   ~4 µs at the device copy rate (~2.9 TB/s on the H100).
#include "common.cuh"

using ampkit::Pack;
using ampkit::Split;

namespace relu_detail {

// The element formats: their storage and the bit pattern of +inf; y > 0 ⇔ 0 < bits(y) ≤ +inf.
struct F16 {
    using Bits = uint16_t;
    static constexpr Bits inf = 0x7C00u;
};
struct Bf16 {
    using Bits = uint16_t;
    static constexpr Bits inf = 0x7F80u;
};
struct F32 {
    using Bits = uint32_t;
    static constexpr Bits inf = 0x7F800000u;
};

template <class Fmt>
struct Backward {
    using Bits = typename Fmt::Bits;
    static __device__ __forceinline__ Bits apply(Bits dy, Bits y) {
        return (y != 0 && y <= Fmt::inf) ? dy : Bits(0);
    }
};

// Called with both operands = x.
template <class Fmt>
struct Forward {
    using Bits = typename Fmt::Bits;
    static __device__ __forceinline__ Bits apply(Bits x, Bits) {
        constexpr Bits sign = Bits(Bits(1) << (8 * sizeof(Bits) - 1));
        const bool nan = Bits(x & Bits(~sign)) > Fmt::inf;
        return (nan || (x != 0 && x <= Fmt::inf)) ? x : Bits(0);
    }
};

// out[i] = Op::apply(a[i], b[i]) over n elements, packs of V after `head` scalar ones.
template <int V, class Op, typename Bits>
__device__ __forceinline__ void elementwise(const Bits* __restrict__ dy, const Bits* __restrict__ y,
                                            Bits* __restrict__ dx, size_t n, size_t head) {
    const Split s = ampkit::split_for_packs(n, head, V);
    const size_t t = ampkit::global_thread();
    if (t < s.head) dx[t] = Op::apply(dy[t], y[t]);
    if (t < s.n - s.tail_begin) {
        const size_t i = s.tail_begin + t;
        dx[i] = Op::apply(dy[i], y[i]);
    }
    const auto* dy_packs = reinterpret_cast<const Pack<Bits, V>*>(dy + s.head);
    const auto* y_packs = reinterpret_cast<const Pack<Bits, V>*>(y + s.head);
    auto* dx_packs = reinterpret_cast<Pack<Bits, V>*>(dx + s.head);
    for (size_t p = t; p < s.packs; p += ampkit::grid_threads()) {
        const Pack<Bits, V> g = dy_packs[p];
        const Pack<Bits, V> out = y_packs[p];
        Pack<Bits, V> r;
#pragma unroll
        for (int i = 0; i < V; ++i) r.v[i] = Op::apply(g.v[i], out.v[i]);
        dx_packs[p] = r;
    }
}

}  // namespace relu_detail

using namespace relu_detail;

// One extern "C" entry point per (format, V): stable, unmangled names for the host's module table.
#define AMPKIT_RELU_BACKWARD(NAME, FMT, V)                                                        \
    extern "C" __global__ void relu_backward_##NAME##_v##V(                                       \
        const FMT::Bits* dy, const FMT::Bits* y, FMT::Bits* dx, size_t n, size_t head) {          \
        elementwise<V, Backward<FMT>>(dy, y, dx, n, head);                                        \
    }                                                                                             \
    extern "C" __global__ void relu_forward_##NAME##_v##V(const FMT::Bits* x, FMT::Bits* y,       \
                                                          size_t n, size_t head) {               \
        elementwise<V, Forward<FMT>>(x, x, y, n, head);                                           \
    }
AMPKIT_RELU_BACKWARD(f16, F16, 1)
AMPKIT_RELU_BACKWARD(f16, F16, 2)
AMPKIT_RELU_BACKWARD(f16, F16, 4)
AMPKIT_RELU_BACKWARD(f16, F16, 8)
AMPKIT_RELU_BACKWARD(bf16, Bf16, 1)
AMPKIT_RELU_BACKWARD(bf16, Bf16, 2)
AMPKIT_RELU_BACKWARD(bf16, Bf16, 4)
AMPKIT_RELU_BACKWARD(bf16, Bf16, 8)
AMPKIT_RELU_BACKWARD(f32, F32, 1)
AMPKIT_RELU_BACKWARD(f32, F32, 2)
AMPKIT_RELU_BACKWARD(f32, F32, 4)
