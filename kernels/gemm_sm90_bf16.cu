// gemm_sm90_bf16.cu — the BF16 twin of gemm_sm90.cu (Hopper, sm_90a): the same kernels, entry
// points and launch shapes, with bf16 operands (wgmma …bf16.bf16, f32 accumulation; the TMA maps
// the host builds say bf16) and bf16 as the 16-bit output (out_kind 0). Algorithm, configs and
// roofline are in gemm_sm90.cu's header.
#define AMPKIT_GEMM_BF16 1
#include "gemm_sm90.cu"
