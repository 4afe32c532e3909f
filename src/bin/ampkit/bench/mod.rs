//! `ampkit bench`: how every kernel does against the card's own ceilings and against cuBLAS,
//! all measured in the same process, printed as the table `bench/pytorch_reference.py` prints
//! (same columns, and the same row names and shapes wherever the two run the same workload).
//!
//! # Method (GPU)
//!
//! - **Ceilings first.** `copy d2d`: `memcpy_dtod` of a 1 GiB f32 buffer, GB/s = bytes read +
//!   written (2 GiB) / t. `cuBLAS f16 gemm 8192^3`: [`ampkit::ops::blas::Blas::gemm_half`],
//!   `Y = X·Wᵀ`, f16 out, TFLOP/s = 2·M·N·K / t.
//! - **Timing.** CUDA events between consecutive calls queued back to back; warm-up, then the
//!   median of the timed calls (10 + 50, `--quick` 3 + 10). Kernel rows first queue enough
//!   256 MiB device copies to keep the GPU busy while the host enqueues every timed call
//!   ("queue-ahead", the role `torch.cuda._sleep` plays in the PyTorch script), so host launch
//!   overhead drops out and the rows measure GPU time; the copies also evict the L2. Training rows
//!   do not queue ahead: a step's time includes any host overhead the GPU waits for.
//! - **GEMMs** (`kind = gemm`): [`ampkit::ops::gemm::gemm`] with the planner's choice and cuBLAS on
//!   the same operands, in alternating rounds (5 × 10 timed calls per side, `--quick` 2 × 5) so
//!   clock drift lands on both alike; each side's median is over all its timed calls. `rate` is
//!   TFLOP/s = 2·M·N·K / t, `% ceiling` of the cuBLAS 8192³ ceiling, `vs cuBLAS` = cuBLAS time /
//!   ampkit time at the same shape (> 1: faster than cuBLAS). The two results are compared
//!   (relative L2 ≤ 1e-2, else the row is an ERROR). The plan (`tile/splits`) is in the notes
//!   under the table and in the JSON.
//! - **Memory-bound kernels** (`kind = mem`): GB/s = bytes / t with the byte counts of
//!   `benches/*.rs` (see [`bytes`]), `% ceiling` of the copy GB/s. Inputs cycle through
//!   [`inputs::n_sets`] distinct sets (enough for 200 MB, more than the 50 MB L2), random, never zeros.
//!   `% copy same bytes` ([`report::Row::pct_copy_same_bytes`]): the rate as a percentage of a
//!   `memcpy_dtod` moving the row's bytes (`bytes / 2` read, `bytes / 2` written), timed exactly
//!   like the row (its own rotated sources, queue-ahead, median) and measured once per distinct
//!   size in the run; the sizes, times and rates are listed under the table. A copy of a
//!   kernel's size does not reach the 1 GiB copy's rate (launch ramp and tail: on an H100 a
//!   67 MB copy runs at about 84 % of it), so this column says how close the kernel is to what
//!   a copy of its size achieves, `% ceiling` how close it is to the card's bandwidth. Rows
//!   without bytes (the loss-scale update) leave it blank.
//! - **Training steps** (`kind = train`): [`ampkit::train::open_backend`] with mixed precision,
//!   Adam (lr 1e-3) and dynamic loss scaling, random inputs in [0, 1) and random labels; the
//!   median of per-step event times over consecutive steps (no host sync between steps; the
//!   step records are read back after the timed region). TFLOP/s = 6 · parameters · batch / t.
//!
//! Without a GPU (or with `--device cpu`) the CPU reference is measured instead with
//! `std::time::Instant` (see `cpu.rs`): a host copy ceiling, `cpu::gemm` at the MLP's shapes
//! (batch 1024), LayerNorm, softmax and cross-entropy at MNIST sizes, Adam on the MLP's
//! parameters and a CPU training step; no cuBLAS, so `vs cuBLAS` stays blank. `% copy same
//! bytes` is then against a host copy of the row's bytes, timed like the row.
//!
//! # Layers
//!
//! Each module uses only those below it (`tests/module_cycles.rs` checks): this file (the entry
//! point) → `gpu` (ceilings, GEMM and training rows) → `gpu_sweep` → `gpu_mem` (memory-bound
//! rows) → `same_bytes` (`% copy same bytes` on the GPU) → `harness` (CUDA-event timing,
//! queue-ahead, input sets); `cpu` beside the GPU half; under all of them `collect`, `copies`,
//! `cases`, `bytes`, `work`, `inputs`, `clock` and `report`; `plot` draws a finished report.

pub mod bytes;
mod cases;
#[cfg(test)]
mod cases_tests;
mod clock;
mod collect;
mod copies;
mod cpu;
mod gpu;
mod gpu_fp8;
mod gpu_gemm_tuning;
mod gpu_mem;
mod gpu_sweep;
mod harness;
mod inputs;
pub mod plot;
pub mod report;
mod same_bytes;
mod work;

pub use collect::Options;
pub use report::Report;

use ampkit::{Device, Result};

/// Benchmarks `device` on the workloads of `bench/cases.json` ([`cases`]): the GPU path for a
/// CUDA device, the CPU reference otherwise.
///
/// A row whose workload fails becomes an ERROR row (the message in [`report::Row::error`]) and
/// the run goes on; only a failure to set the run up at all (a malformed case table, or a GPU
/// whose memory cannot hold the random-data pool) is an `Err`.
pub fn run(device: &Device, opts: &Options) -> Result<Report> {
    let cases = cases::Cases::embedded()?;
    match device {
        Device::Cpu => cpu::run(opts, &cases),
        Device::Cuda(gpu) => gpu::run(gpu, opts, &cases),
    }
}
