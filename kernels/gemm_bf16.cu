// gemm_bf16.cu — the BF16 twin of gemm.cu: the same kernels, entry points and launch shapes,
// with bf16 operands (mma.sync …bf16.bf16, f32 accumulation) and bf16 as the 16-bit output
// (out_kind 0). Everything else (algorithm, configs, roofline: the same FLOPs and bytes) is in
// gemm.cu's header; gemm_element.cuh says what changes with the element type. The bias gradient
// kernels live in gemm.cu only (they read bf16 too).
#define AMPKIT_GEMM_BF16 1
#include "gemm.cu"
