// unscale_pdl.cu — unscale.cu built for sm_90a with programmatic dependent launch (pdl.cuh): the twin
// the host launches on compute-capability 9.0 GPUs.
#define AMPKIT_PDL 1
#include "unscale.cu"
