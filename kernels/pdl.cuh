// pdl.cuh — programmatic dependent launch (Hopper) for the kernels of a training step.
//
// The host launches the kernels of a module built with AMPKIT_PDL (the `<family>_pdl` twins of
// the step's portable modules, and gemm_sm90) with the programmatic-stream-serialization
// attribute on a compute-capability 9.0 GPU: such a kernel may start while the kernel before it
// in the stream is still finishing, so its blocks are resident and its launch latency is spent
// by the time the data it reads is ready. pdl_start() must therefore come first in every kernel
// of such a module, before any global memory access: griddepcontrol.wait returns once the
// previous kernel has completed and its writes are visible (at once when there is no such
// dependency). The trigger after it lets the next kernel be scheduled; since the trigger follows
// the wait, at most two grids of a stream overlap. Elsewhere (other modules, the compute_80
// builds, older GPUs) pdl_start() is empty.
#pragma once

#if defined(AMPKIT_PDL) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void pdl_start() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
#else
__device__ __forceinline__ void pdl_start() {}
#endif
