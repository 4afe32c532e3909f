//! Optimizer objects shaped like `torch.optim`: [`Adam`], [`AdamW`] and [`Sgd`] own their state
//! (Adam's moments or SGD's momentum buffers, and the step counter) on the device they were
//! created on, and the loss scaler steps them: [`crate::amp::GradScaler::step`] on a GPU,
//! [`crate::amp::CpuGradScaler::step`] on the CPU.
//!
//! This module is their one home because an optimizer object spans both devices: [`crate::ops`]
//! and [`crate::cpu`] hold the per-device primitives these objects are built from, and
//! [`crate::amp`] holds the loss scaling that drives them. PyTorch users look for optimizers
//! under `optim`, and the configs are re-exported here ([`AdamConfig`], [`SgdConfig`],
//! [`OptimizerConfig`], [`LrSchedule`]) so GPU code needs nothing from [`crate::cpu`].
//!
//! # Where the state lives
//!
//! `Adam::new(&device, cfg, &lens)` (likewise [`AdamW::new`], [`Sgd::new`]) keeps the state in
//! device memory for [`Device::Cuda`] (one flat f32 buffer per moment and a device step counter:
//! a step never synchronises, and its addresses never move, so it can be captured in a CUDA
//! graph) and in host vectors for [`Device::Cpu`]. `lens` are the element counts of the
//! parameter tensors, in the order every step passes them.
//!
//! # Numerics
//!
//! A GPU step is one launch of the fused kernel behind [`crate::ops::optim::GpuOptimizer`]
//! (learning-rate schedule evaluated on the device from the step counter), a CPU step one call of
//! [`crate::cpu::optim::step`] with the schedule's rate for the real steps taken so far: results
//! are bit-identical to calling those directly, and to each other as the kernel is to the
//! reference (NaN payloads aside; a cosine schedule's f64 cosine may differ in its last bit
//! between CUDA and libm before it is rounded to f32, so `tests/` compare those within 1e-6). The
//! per-element formulas and what is computed in f64 are in [`crate::cpu::optim`]'s module doc.
//! Parameters are f32 masters with 16-bit working copies ([`Param`], [`GpuParam`]): f16 by
//! default, or bf16 ([`HalfCopy`]; `Param<'_, bf16>`), rewritten by every real step with the
//! `half` crate's rounding, bit for bit on either device; moments are f32.
//! A step with an inf/NaN gradient changes nothing, step counter included.
//!
//! # Reading the state
//!
//! [`Optimizer::step_count`], [`Optimizer::moment`] (one tensor's moment, copied to the host) and
//! [`Optimizer::moment_view`] (a borrowed device view of it: read it with your own kernel or copy
//! it asynchronously, no synchronisation) read parts of the state;
//! [`Optimizer::state_dict`] copies all of it into an [`OptimizerStateDict`], and
//! [`Optimizer::load_state_dict`] puts one back (a checkpoint, or the other device's state).
//!
//! ```
//! use ampkit::optim::{Adam, AdamConfig, Moment, Optimizer};
//! use ampkit::Device;
//!
//! let opt = Adam::new(&Device::Cpu, AdamConfig::default(), &[6, 2])?;
//! assert_eq!(opt.step_count()?, 0);
//! assert_eq!(opt.moment(Moment::ExpAvg, 1)?, vec![0.0; 2]);
//! assert!(opt.moment(Moment::MomentumBuffer, 0).is_err()); // Adam keeps none
//! let dict = opt.state_dict()?; // plain data: serde, or your own format
//! assert_eq!(dict.exp_avg_sq.as_ref().map(Vec::len), Some(2));
//! # Ok::<(), ampkit::Error>(())
//! ```

// The state and what it does (host or device) is `store::Inner`; this file holds the public
// types, which own one `Inner` each, and the trait the scalers accept.
mod store;

pub use crate::cpu::optim::{AdamConfig, HalfCopy, OptimizerConfig, SgdConfig, StepOutcome};
pub use crate::cpu::schedule::LrSchedule;

use crate::device::Device;
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut};
use half::f16;
use serde::{Deserialize, Serialize};
pub(crate) use store::Inner;

/// One parameter tensor on the host, as [`crate::amp::CpuGradScaler::step`] takes it, with a
/// working copy of type `H`: [`half::f16`] by default, or [`half::bf16`] (`Param<'_, bf16>`).
#[derive(Debug)]
pub struct Param<'a, H: HalfCopy = f16> {
    /// f32 master weights, updated in place by a real step.
    pub master: &'a mut [f32],
    /// The f32 gradient, as backward left it (scaled); the scaler unscales it in place.
    pub grad: &'a mut [f32],
    /// The 16-bit working copy, rewritten from the new master weights by a real step
    /// ([`HalfCopy::from_f32`]); empty for a tensor that keeps none.
    pub half: &'a mut [H],
}

/// One parameter tensor in device memory, as [`crate::amp::GradScaler::step`] takes it: views
/// of any buffers (yours or ampkit's), at any offset, of the length the optimizer was created
/// for. The working copy is of type `H`: [`half::f16`] by default, or [`half::bf16`]
/// (`GpuParam<'_, bf16>`); either must be 2-byte aligned.
#[derive(Debug)]
pub struct GpuParam<'a, H: HalfCopy = f16> {
    /// f32 master weights, updated in place by a real step.
    pub master: CudaViewMut<'a, f32>,
    /// The f32 gradient, as backward left it (scaled); the scaler unscales it in place.
    pub grad: CudaViewMut<'a, f32>,
    /// The 16-bit working copy, rewritten from the new master weights by a real step (rounded
    /// as [`HalfCopy::from_f32`], bit for bit); an empty view for a tensor that keeps none.
    pub half: CudaViewMut<'a, H>,
}

/// Which per-tensor buffer of an optimizer's state, with PyTorch's state keys: Adam/AdamW keep
/// [`Moment::ExpAvg`] and [`Moment::ExpAvgSq`], SGD with momentum [`Moment::MomentumBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Adam's first moment `m` (`exp_avg`).
    ExpAvg,
    /// Adam's second moment `v` (`exp_avg_sq`).
    ExpAvgSq,
    /// SGD's momentum buffer (`momentum_buffer`); zeros until the first real step with momentum.
    MomentumBuffer,
}

/// Everything an optimizer needs to continue exactly where it stopped, as plain data (serde):
/// the hyperparameters, the schedule, the step counter and every moment, one vector per
/// parameter tensor. A buffer the optimizer does not keep is `None`.
///
/// Moments hold whatever the steps produced; JSON cannot store inf or NaN, so use a binary
/// format (safetensors, bincode) for states that may contain them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerStateDict {
    /// The optimizer and its hyperparameters (the base learning rate of the schedule).
    pub config: OptimizerConfig,
    /// The learning-rate schedule, evaluated at the number of real steps taken.
    pub schedule: LrSchedule,
    /// Real (not skipped) steps taken; Adam's `t` of the next step is this plus one.
    pub step: u64,
    /// SGD: whether a real step with momentum has filled the buffers (PyTorch's buffer is no
    /// longer `None`); false otherwise.
    pub momentum_started: bool,
    /// Adam/AdamW's `m` per tensor; `None` for SGD.
    pub exp_avg: Option<Vec<Vec<f32>>>,
    /// Adam/AdamW's `v` per tensor; `None` for SGD.
    pub exp_avg_sq: Option<Vec<Vec<f32>>>,
    /// SGD's momentum buffer per tensor; `None` for Adam/AdamW and SGD created without momentum.
    pub momentum_buffer: Option<Vec<Vec<f32>>>,
}

pub(crate) mod sealed {
    /// Keeps [`super::Optimizer`] implemented by this crate's optimizers only: the scalers
    /// reach their state through it.
    pub trait Sealed {
        fn inner(&self) -> &super::Inner;
        fn inner_mut(&mut self) -> &mut super::Inner;
    }
}

/// What [`Adam`], [`AdamW`] and [`Sgd`] share: the scalers step any of them, and these methods
/// read and replace their state. Implemented by this crate's optimizers only.
///
/// On a GPU, methods that return host data wait for the work queued so far on the optimizer's
/// stream (the `Gpu` it was created with); the others queue nothing.
pub trait Optimizer: sealed::Sealed {
    /// The hyperparameters (for a schedule, the base rate).
    fn config(&self) -> OptimizerConfig {
        self.inner().config()
    }

    /// Replaces the hyperparameters from the next step on (PyTorch: editing
    /// `param_groups[0]`). A CUDA graph already captured keeps the values it was captured with.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] when `cfg` is out of range or of another
    /// optimizer kind, or asks for SGD momentum on an optimizer created without (nothing is
    /// changed then).
    fn set_config(&mut self, cfg: OptimizerConfig) -> Result<()> {
        self.inner_mut().set_config(cfg)
    }

    /// The learning-rate schedule ([`LrSchedule::Constant`] unless set).
    fn schedule(&self) -> LrSchedule {
        self.inner().schedule()
    }

    /// Sets the learning-rate schedule: step `t` (0-based, counting real steps only, so skipped
    /// steps do not advance it) uses [`LrSchedule::lr_at`]`(base lr, t)`, computed on the
    /// device for a GPU optimizer. Errors: [`crate::Error::InvalidArgument`] for an invalid
    /// schedule.
    fn set_schedule(&mut self, schedule: LrSchedule) -> Result<()> {
        self.inner_mut().set_schedule(schedule)
    }

    /// The parameter tensors' element counts, fixed at creation.
    fn tensor_lens(&self) -> &[usize] {
        self.inner().tensor_lens()
    }

    /// Real (not skipped) steps taken so far. On a GPU this reads the device counter (8 bytes)
    /// and so waits for the queued steps. Errors: [`crate::Error::Driver`] for a failed copy.
    fn step_count(&self) -> Result<u64> {
        self.inner().step_count()
    }

    /// Tensor `t`'s moment `which`, copied to the host (on a GPU only that tensor's part of the
    /// state is copied; waits for the queued steps).
    ///
    /// Errors: [`crate::Error::InvalidArgument`] when `t` is out of range or the optimizer does
    /// not keep `which` (see [`Moment`]); [`crate::Error::Driver`] for a failed copy.
    fn moment(&self, which: Moment, t: usize) -> Result<Vec<f32>> {
        self.inner().moment(which, t)
    }

    /// Tensor `t`'s moment `which` in device memory, borrowed: nothing is copied or waited for.
    /// Read it in stream order after the steps (on the optimizer's `Gpu` stream, or one joined
    /// to it): copy it asynchronously with cudarc's `memcpy_dtod`, or pass it to a kernel.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] for an optimizer on the host (use
    /// [`Optimizer::moment`]), `t` out of range, or a moment the optimizer does not keep.
    fn moment_view(&self, which: Moment, t: usize) -> Result<CudaView<'_, f32>> {
        self.inner().moment_view(which, t)
    }

    /// The whole state as plain data, for a checkpoint. On a GPU this copies every moment to
    /// the host and waits for the queued steps. Errors: [`crate::Error::Driver`].
    fn state_dict(&self) -> Result<OptimizerStateDict> {
        self.inner().state_dict()
    }

    /// Replaces the state (and the config and schedule) with `dict`'s. On a GPU the moments
    /// and counter are copied into the existing buffers, so their addresses (and a CUDA graph
    /// captured over them) stay valid; only a dict bringing SGD momentum buffers to an
    /// optimizer created without them (or the reverse) reallocates.
    ///
    /// Errors, with nothing changed: [`crate::Error::InvalidArgument`] when `dict` is for
    /// another optimizer kind, its config or schedule is invalid, or its buffers do not fit the
    /// kind (e.g. SGD momentum without a momentum buffer); [`crate::Error::ShapeMismatch`]
    /// when its tensors' lengths differ from [`Optimizer::tensor_lens`];
    /// [`crate::Error::Driver`] when a copy fails.
    fn load_state_dict(&mut self, dict: &OptimizerStateDict) -> Result<()> {
        self.inner_mut().load_state_dict(dict)
    }
}

/// Declares an optimizer type owning one [`Inner`].
macro_rules! optimizer_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(Inner);

        impl sealed::Sealed for $name {
            fn inner(&self) -> &Inner {
                &self.0
            }
            fn inner_mut(&mut self) -> &mut Inner {
                &mut self.0
            }
        }

        impl Optimizer for $name {}
    };
}

optimizer_type!(
    /// `torch.optim.Adam` on f32 master weights: weight decay is L2, added to the gradient.
    /// Keeps [`Moment::ExpAvg`] and [`Moment::ExpAvgSq`] per tensor.
    Adam
);
optimizer_type!(
    /// `torch.optim.AdamW` on f32 master weights: weight decay is decoupled
    /// (`p *= 1 − lr·wd` before the update). Keeps [`Moment::ExpAvg`] and
    /// [`Moment::ExpAvgSq`] per tensor.
    AdamW
);
optimizer_type!(
    /// `torch.optim.SGD` on f32 master weights, with optional momentum, dampening, Nesterov and
    /// L2 weight decay. Keeps [`Moment::MomentumBuffer`] per tensor when created with momentum.
    Sgd
);

impl Adam {
    /// Zeroed moments and step counter for tensors of `lens` elements, on `device`.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] naming a hyperparameter out of the ranges
    /// documented on [`AdamConfig`], or lengths adding up past `usize::MAX`;
    /// [`crate::Error::Driver`] when device memory cannot be allocated.
    pub fn new(device: &Device, cfg: AdamConfig, lens: &[usize]) -> Result<Adam> {
        Inner::new(device, OptimizerConfig::Adam(cfg), lens).map(Adam)
    }
}

impl AdamW {
    /// Zeroed moments and step counter for tensors of `lens` elements, on `device`. Errors as
    /// [`Adam::new`]. Note that PyTorch's AdamW defaults to `weight_decay = 1e-2`
    /// ([`OptimizerConfig::adamw`]), [`AdamConfig::default`] to 0.
    pub fn new(device: &Device, cfg: AdamConfig, lens: &[usize]) -> Result<AdamW> {
        Inner::new(device, OptimizerConfig::AdamW(cfg), lens).map(AdamW)
    }
}

impl Sgd {
    /// A step counter for tensors of `lens` elements, on `device`, and zeroed momentum buffers
    /// if `cfg.momentum ≠ 0` (none otherwise: later configs cannot add momentum). Errors as
    /// [`Adam::new`], with the ranges of [`SgdConfig`].
    pub fn new(device: &Device, cfg: SgdConfig, lens: &[usize]) -> Result<Sgd> {
        Inner::new(device, OptimizerConfig::Sgd(cfg), lens).map(Sgd)
    }
}

/// The optimizer `cfg` names, boxed: for code that picks the kind at run time (the trainer).
pub(crate) fn for_config(
    device: &Device,
    cfg: &OptimizerConfig,
    lens: &[usize],
) -> Result<Box<dyn Optimizer + Send>> {
    Ok(match *cfg {
        OptimizerConfig::Adam(c) => Box::new(Adam::new(device, c, lens)?),
        OptimizerConfig::AdamW(c) => Box::new(AdamW::new(device, c, lens)?),
        OptimizerConfig::Sgd(c) => Box::new(Sgd::new(device, c, lens)?),
    })
}

/// The learning rate of an optimizer config (a schedule's base rate).
pub(crate) fn base_lr(cfg: &OptimizerConfig) -> f64 {
    match cfg {
        OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => c.lr,
        OptimizerConfig::Sgd(c) => c.lr,
    }
}

/// The same config with another learning rate.
pub(crate) fn with_lr(cfg: &OptimizerConfig, lr: f64) -> OptimizerConfig {
    let mut c = *cfg;
    match &mut c {
        OptimizerConfig::Adam(a) | OptimizerConfig::AdamW(a) => a.lr = lr,
        OptimizerConfig::Sgd(s) => s.lr = lr,
    }
    c
}
