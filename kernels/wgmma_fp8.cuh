// wgmma_fp8.cuh — the FP8 tensor-core instructions of kernels/gemm_fp8.cu (sm_90a):
// wgmma.mma_async m64n256k32, m64n192k32 and m64n128k32 with f32 accumulators and E4M3/E5M2
// operands, both
// from shared memory through matrix descriptors (wgmma.cuh's `descriptor`).
//
// FP8 wgmma has no transpose bits: both operands must be K-major in shared memory, which is why
// the FP8 GEMM takes A [M,K] and B [N,K] only. The accumulation runs in the tensor core's own
// precision (coarser than f32 per k32 step: see src/ops/gemm_fp8.rs's numerics), into f32
// registers.
//
// Fp8Mma<N, FA, FB>::run(d, da, db, accumulate): D(64×N) (+)= A(64×32) · B(32×N); FA, FB =
// FP8_E4M3 or FP8_E5M2 for A and B. One "+f" operand per accumulator register, so the register lists are spelled out
// (generated) below; the operand-type pair is pasted into the instruction name by a macro.
#pragma once

#include <stdint.h>

namespace wgmma_fp8 {

constexpr int FP8_E4M3 = 0, FP8_E5M2 = 1;

// Operand lists of the accumulators: each width's list extends the narrower one.
#define AMPKIT_FP8_REGS_128 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15" \
    ", " "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" \
    ", " "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47" \
    ", " "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define AMPKIT_FP8_REGS_192 \
    AMPKIT_FP8_REGS_128 ", " "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79" \
    ", " "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define AMPKIT_FP8_REGS_256 \
    AMPKIT_FP8_REGS_192 ", " "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111" \
    ", " "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define AMPKIT_FP8_OUTS_128 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define AMPKIT_FP8_OUTS_192 \
    AMPKIT_FP8_OUTS_128, \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
#define AMPKIT_FP8_OUTS_256 \
    AMPKIT_FP8_OUTS_192, \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

template <int N, int FA, int FB>
struct Fp8Mma;

// scale-d: `accumulate` 0 makes D = A·B, ignoring the accumulators' values (a tile's first
// k32 step, so they need no zeroing), else D += A·B.
#define AMPKIT_FP8_MMA(N, FA, FB, AT, BT, IDX_A, IDX_B, IDX_P)                                        \
    template <>                                                                                     \
    struct Fp8Mma<N, FA, FB> {                                                                      \
        static __device__ __forceinline__ void run(float (&d)[N / 2], uint64_t da, uint64_t db,    \
                                                   int accumulate) {                                \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #IDX_P ", 0;\n"                        \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32." AT "." BT " {"           \
                         AMPKIT_FP8_REGS_##N "}, %" #IDX_A ", %" #IDX_B ", p, 1, 1;\n}\n"           \
                         : AMPKIT_FP8_OUTS_##N                                                      \
                         : "l"(da), "l"(db), "r"(accumulate));                                      \
        }                                                                                           \
    };
#define AMPKIT_FP8_MMA_PAIRS(N, IA, IB, IP)                        \
    AMPKIT_FP8_MMA(N, FP8_E4M3, FP8_E4M3, "e4m3", "e4m3", IA, IB, IP) \
    AMPKIT_FP8_MMA(N, FP8_E4M3, FP8_E5M2, "e4m3", "e5m2", IA, IB, IP) \
    AMPKIT_FP8_MMA(N, FP8_E5M2, FP8_E4M3, "e5m2", "e4m3", IA, IB, IP) \
    AMPKIT_FP8_MMA(N, FP8_E5M2, FP8_E5M2, "e5m2", "e5m2", IA, IB, IP)

AMPKIT_FP8_MMA_PAIRS(256, 128, 129, 130)
AMPKIT_FP8_MMA_PAIRS(192, 96, 97, 98)
AMPKIT_FP8_MMA_PAIRS(128, 64, 65, 66)

#undef AMPKIT_FP8_MMA_PAIRS
#undef AMPKIT_FP8_MMA

}  // namespace wgmma_fp8
