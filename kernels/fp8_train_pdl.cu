// fp8_train_pdl.cu — fp8_train.cu built for sm_90a with programmatic dependent launch (pdl.cuh):
// the twin the host launches on compute-capability 9.0 GPUs. Built for sm_90a, its FP8
// conversions are the cvt.rn.satfinite instruction instead of cuda_fp8.hpp's software path
// (bit-identical results, tests/fp8_train_gpu.rs), which makes the casts memory-bound.
#define AMPKIT_PDL 1
#include "fp8_train.cu"
