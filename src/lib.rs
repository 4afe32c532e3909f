//! # ampkit
//!
//! Hand-written CUDA kernels with a Rust host for mixed-precision (AMP) training: an FP16
//! tensor-core GEMM with f32 accumulation, f32 LayerNorm / softmax / fused softmax-cross-entropy,
//! a fused unscale-and-inf-check, PyTorch `GradScaler`'s loss-scale update on the device, and a
//! fused Adam/AdamW/SGD on f32 master weights. Every GPU op in [`ops`] has a CPU twin in [`cpu`]
//! computing the same function, with its exact numerics documented, and the tests compare the two
//! through [`check`].
//!
//! # Quick start
//!
//! No GPU is needed for the CPU half of the library. A linear layer's forward on the CPU
//! reference, checked against the all-f64 reference with the tolerance harness:
//!
//! ```
//! use ampkit::check::{compare, Tolerance};
//! use ampkit::cpu::gemm::{gemm, gemm_f64, Epilogue};
//! use ampkit::shape::{GemmShape, Layout};
//! use ampkit::f16;
//!
//! # fn main() -> ampkit::Result<()> {
//! let (m, n, k) = (8, 16, 32); // Y[m, n] = X[m, k] · W[n, k]ᵀ, as nn.Linear stores W
//! let x: Vec<f16> = (0..m * k).map(|i| f16::from_f32(((i * 7) % 13) as f32 / 13.0 - 0.5)).collect();
//! let w: Vec<f16> = (0..n * k).map(|i| f16::from_f32(((i * 5) % 11) as f32 / 11.0 - 0.5)).collect();
//! let shape = GemmShape::new(Layout::Forward, m, n, k);
//!
//! // f16 operands, f32 accumulation, f32 output.
//! let mut y = vec![0f32; m * n];
//! gemm(shape, &x, &w, &Epilogue::plain(), &mut y)?;
//!
//! // The f64 reference and a tolerance: |y − ref| ≤ atol + rtol·|ref| and rel. L2 ≤ rtol.
//! let wide = |v: &[f16]| v.iter().map(|h| h.to_f64()).collect::<Vec<f64>>();
//! let mut reference = vec![0f64; m * n];
//! gemm_f64(shape, &wide(&x), &wide(&w), &Epilogue::plain(), &mut reference)?;
//! let report = compare(&y, &reference, Tolerance::new(1e-6, 1e-6));
//! assert!(report.passed(), "{report}");
//! # Ok(()) }
//! ```
//!
//! The same GEMM on the GPU takes cudarc device buffers — ampkit's or your own — and is checked
//! the same way (`no_run` here: it needs a GPU; see `examples/02_gemm.rs`):
//!
//! ```no_run
//! # use ampkit::shape::{GemmShape, Layout};
//! # use ampkit::f16;
//! # fn main() -> ampkit::Result<()> {
//! # let (m, n, k) = (8, 16, 32);
//! # let (x, w) = (vec![f16::ONE; m * k], vec![f16::ONE; n * k]);
//! # let reference = vec![32.0f64; m * n];
//! # let shape = GemmShape::new(Layout::Forward, m, n, k);
//! use ampkit::check::{compare, Tolerance};
//! use ampkit::ops::gemm::{gemm, Epilogue};
//!
//! let (device, note) = ampkit::Device::auto(); // GPU 0, or the CPU with the reason
//! println!("{note}");
//! if let Some(gpu) = device.gpu() {
//!     let (dx, dw) = (gpu.upload(&x)?, gpu.upload(&w)?);
//!     let mut dy = gpu.alloc_zeros::<f32>(m * n)?;
//!     gemm(gpu, shape, &dx, &dw, &Epilogue::plain(), &mut dy)?;
//!     let report = compare(&gpu.download(&dy)?, &reference, Tolerance::new(1e-5, 1e-5));
//!     assert!(report.passed(), "{report}");
//! }
//! # Ok(()) }
//! ```
//!
//! Training goes through [`train`]; the configuration is plain data:
//!
//! ```
//! let mut cfg = ampkit::train::TrainConfig::mnist_default();
//! cfg.model.layers = vec![784, 256, 10];
//! cfg.epochs = 2;
//! cfg.validate()?;
//! assert_eq!(cfg.loss_scale.initial_scale(), 65536.0); // PyTorch GradScaler's default
//! # Ok::<(), ampkit::Error>(())
//! ```
//!
//! # The modules
//!
//! - [`cuda`]: the device handle [`cuda::Gpu`] (context, one stream, module cache), device
//!   buffers, the CUDA-event timer. [`cuda::Gpu::from_stream`] runs ampkit on your own cudarc
//!   stream; [`cuda::Gpu::context`] / [`cuda::Gpu::stream`] give ampkit's out.
//! - [`ops`]: the GPU ops, one module per kernel family; [`ops`]'s module doc has the table of
//!   dtypes, accumulation and tolerances against the CPU.
//! - [`cpu`]: the reference of every op (rayon), same names and argument order, each module
//!   documenting its exact semantics (rounding, NaN/inf, operation order) so a kernel can match
//!   it. Public so you can validate your own kernels against it.
//! - [`shape`]: problem shapes both twins take ([`shape::GemmShape`], [`shape::Layout`]).
//! - [`check`]: the tolerance harness: relative L2 and elementwise `atol + rtol·|ref|` against an
//!   f64 reference, NaN only where expected, poisoned-output checks, finite differences.
//! - [`amp`] and [`optim`]: PyTorch's `GradScaler` ([`amp::GradScaler`] on the device,
//!   [`amp::CpuGradScaler`]) and optimizer objects ([`optim::Adam`], [`optim::AdamW`],
//!   [`optim::Sgd`]): one AMP step on your own buffers is scale, `step`, `update`.
//! - [`nn`] and [`train`]: the MLP (PyTorch `nn.Sequential` names and shapes), the training loop
//!   over a CPU and a GPU backend, MNIST data, checkpoints, metrics and plots.
//! - [`Device`]: the CPU or a GPU, chosen by the caller or by [`Device::auto`].
//! - [`kernels`]: the PTX modules compiled from `kernels/*.cu` at build time (informational).
//! - [`Error`] / [`Result`]: the one error type; library code returns it instead of panicking.
//!
//! # Numerics in one paragraph
//!
//! GEMMs take f16 operands and accumulate in f32 (products exact, sums rounded); LayerNorm,
//! softmax and the loss compute in f32 from f16 or f32 inputs; master weights, moments and
//! unscaled gradients are f32; f16 copies are rounded to nearest even. Elementwise ops (cast,
//! ReLU, unscale, scale update, optimizer) are bit-exact with their CPU references; reductions
//! (GEMM, LayerNorm, softmax, the loss) agree to rounding, to the tolerances in [`ops`], and are
//! deterministic run to run.
//!
//! # Without a GPU
//!
//! Nothing needs CUDA to build: cudarc loads the driver at run time, and the PTX is compiled by
//! nvcc when one is installed or taken from the committed snapshot. On a machine without a GPU
//! [`cuda::Gpu::new`] returns [`Error::NoCudaDevice`], [`Device::auto`] falls back to the CPU, and
//! everything in [`cpu`], [`check`], [`amp`], [`nn`] and [`train`] works.
//!
//! # Cargo features
//!
//! - `cli` (default): the `ampkit` command (`train`, `eval`, `bench`, `info`); turns on `plot`
//!   and `progress` and brings clap.
//! - `plot` (default, through `cli`): PNG plots of a training run (`train::plot`,
//!   `train::trainer::Outputs::plot`); brings plotters and image. Without it, a plot asked of
//!   the training loop is [`Error::FeatureDisabled`], found before the first step.
//! - `progress` (default, through `cli`): the training loop's progress bar; brings indicatif.
//!   Without it the loop shows no bar.
//!
//! A library user who needs none of them depends on
//! `ampkit = { version = "0.2", default-features = false }`: the kernels, ops, CPU references,
//! [`check`], [`amp`], [`nn`] and [`train`] (loop, backends, data, checkpoints, metrics) are all
//! there, without clap, plotters, image or indicatif.
//!
//! # Examples
//!
//! `examples/` holds numbered, runnable programs (`cargo run --release --example 02_gemm`): the
//! device query, a GEMM on your own cudarc buffers, LayerNorm and softmax-cross-entropy, a
//! hand-written AMP step with a forced overflow, MLP training through [`train`], and checking
//! your own kernel against a [`cpu`] reference. Without a GPU each says so and runs its CPU part.
#![deny(missing_docs)]

pub mod amp;
pub mod check;
pub mod cpu;
pub mod cuda;
mod device;
mod error;
pub mod kernels;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod shape;
pub mod train;
#[doc(hidden)]
pub mod tuning;
mod validate;

pub use device::Device;
pub use error::{Error, Result};
pub use half::f16;

/// The cudarc this build of ampkit links, re-exported so your device buffers, streams and
/// contexts are of the exact types the ops accept, without matching its version and features in
/// your own `Cargo.toml` (`ampkit::cudarc::driver::CudaContext`, …).
pub use cudarc;
