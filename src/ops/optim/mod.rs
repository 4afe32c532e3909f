//! The fused, skip-aware optimizer on the GPU (`kernels/optim.cu`); CPU twin:
//! [`crate::cpu::optim`], whose module doc gives the exact per-element formulas. Bit-exact with
//! it (NaN payloads aside).
//!
//! [`GpuOptimizer`] keeps everything a step reads or writes besides the parameters on the
//! device: Adam's moments or SGD's momentum buffers (f32), the step counter and SGD's "momentum
//! started" flag. [`GpuOptimizer::step`] updates every parameter tensor in one launch (up to
//! 74 tensors; more take more launches), reading the `found_inf` flag that [`crate::ops::unscale`]
//! sets: if it is nonzero nothing changes — masters, moments, 16-bit copies, step counter.
//! Otherwise the f32 masters and moments are updated, the working copies (f16, or bf16:
//! [`HalfCopy`], one type per step) rewritten, and the counter
//! advanced, all on the device. Adam's bias corrections are computed on the device from the
//! counter, exactly as [`AdamCoefficients::new`] computes them on the host. Nothing synchronises
//! or copies to the host, and every address is fixed, so a step can be captured in a CUDA graph;
//! [`GpuOptimizer::download`] (for checkpoints and tests) is the one call that synchronises.
//!
//! [`AdamCoefficients::new`]: crate::cpu::optim::AdamCoefficients::new

// The kernel's argument structs (with the C layouts of `kernels/optim.cu`) and the per-launch
// table planning live in `args`; the state, its checks and the launches are here.
mod args;

use crate::cpu::optim::{
    check_tensor_lens, AdamConfig, HalfCopy, OptimizerConfig, OptimizerState, SgdCoefficients,
};
use crate::cpu::schedule::LrSchedule;
use crate::cuda::{DeviceBuffer, Gpu, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::kernels;
pub(crate) use args::GradClip;
use args::{table, AdamHyper, Hyper, Schedule, SgdHyper, MAX_TENSORS};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use half::f16;
use std::sync::Arc;

const THREADS: u32 = 256;
/// Bounds of the elements per block; chunks are powers of two, so multiples of the 1024
/// elements one vector pass of a block covers, which keeps every chunk vector-aligned.
const MIN_CHUNK: usize = 1024;
const MAX_CHUNK: usize = 16384;
/// Blocks per SM a step aims for before chunks grow past [`MIN_CHUNK`].
const BLOCKS_PER_SM: usize = 4;
/// Moment offsets are multiples of this many elements (16 bytes), so the moments of a tensor
/// are as aligned as the flat buffer.
const OFFSET_ALIGN: usize = 4;

/// Slots of the device counters (`STEP`, ... in `kernels/optim.cu`).
const COUNTER_STEP: usize = 0;
const COUNTER_MOMENTUM_STARTED: usize = 1;
const COUNTERS: usize = 3;

/// One parameter tensor as the GPU optimizer sees it (the twin of
/// [`crate::cpu::optim::ParamTensor`]), with a working copy of type `H` ([`half::f16`] by
/// default, or [`half::bf16`]); views of any offset and length work.
#[derive(Debug)]
pub struct GpuParamTensor<'a, H: HalfCopy = f16> {
    /// f32 master weights, updated in place.
    pub master: CudaViewMut<'a, f32>,
    /// The f32 gradient, already unscaled.
    pub grad: CudaView<'a, f32>,
    /// The 16-bit working copy, rewritten from the new master weights after a real step
    /// (rounded as [`HalfCopy::from_f32`], bit for bit); an empty view for a tensor that keeps
    /// none (the kernel then skips those stores: 2 bytes per element).
    pub half: CudaViewMut<'a, H>,
}

/// The optimizer's device-resident state: moments (or momentum buffers), step counter and
/// SGD's "momentum started" flag, for tensors of fixed lengths. The GPU twin of
/// [`OptimizerState`]; see the module doc.
#[derive(Debug)]
pub struct GpuOptimizer {
    /// The config the state was created for: fixes the optimizer kind.
    cfg: OptimizerConfig,
    /// SGD: momentum buffers exist (created with momentum ≠ 0, or uploaded with them).
    momentum_buffers: bool,
    lens: Vec<usize>,
    /// Where each tensor's moments start in the flat buffers, in elements.
    offsets: Vec<usize>,
    /// Adam's `m` or SGD's momentum buffers, all tensors in one allocation.
    exp_avg: Option<DeviceBuffer<f32>>,
    /// Adam's `v`.
    exp_avg_sq: Option<DeviceBuffer<f32>>,
    /// `[steps taken, momentum started (0/1), blocks done (kernel scratch, 0 between steps)]`.
    counters: DeviceBuffer<u64>,
}

impl GpuOptimizer {
    /// Zeroed state on `gpu` for tensors of the given lengths, for the optimizer `cfg` selects
    /// (validated here), like [`OptimizerState::new`]: Adam/AdamW get two moments per tensor,
    /// SGD with momentum one buffer, plain SGD none; the step counter starts at 0.
    ///
    /// Errors: [`Error::InvalidArgument`] for an invalid config or lengths adding up past
    /// `usize::MAX`; [`Error::Driver`] when the device memory cannot be allocated.
    pub fn new(gpu: &Gpu, cfg: &OptimizerConfig, lens: &[usize]) -> Result<GpuOptimizer> {
        cfg.validate()?;
        let momentum = matches!(cfg, OptimizerConfig::Sgd(c) if c.momentum != 0.0);
        Self::allocate(gpu, cfg, lens, momentum)
    }

    /// Uploads a host state (a checkpoint, or a CPU optimizer's state) for stepping with `cfg`,
    /// which must be a config [`crate::cpu::optim::step`] accepts for `state`.
    ///
    /// Errors: [`Error::InvalidArgument`] when `cfg` is invalid or of another kind than `state`;
    /// [`Error::Driver`] when allocating or copying fails.
    pub fn from_state(
        gpu: &Gpu,
        cfg: &OptimizerConfig,
        state: &OptimizerState,
    ) -> Result<GpuOptimizer> {
        state.check_config("ops::optim::GpuOptimizer::from_state", cfg)?;
        let mut opt = Self::allocate(gpu, cfg, state.tensor_lens(), state.has_momentum_buffers())?;
        opt.fill(gpu, state)?;
        Ok(opt)
    }

    /// Replaces the state with `state` (for stepping with `cfg`, checked as in
    /// [`GpuOptimizer::from_state`]), copying it into the existing buffers so that their
    /// addresses, and a CUDA graph captured over them, stay valid; only a state with SGD
    /// momentum buffers where this one has none (or the reverse) is reallocated. Errors, with
    /// nothing changed: as [`GpuOptimizer::from_state`], plus [`Error::ShapeMismatch`] when the
    /// tensor lengths differ and [`Error::InvalidArgument`] for a state of another kind or on
    /// another GPU.
    pub(crate) fn load_state(
        &mut self,
        gpu: &Gpu,
        cfg: &OptimizerConfig,
        state: &OptimizerState,
    ) -> Result<()> {
        const OP: &str = "ops::optim::GpuOptimizer::load_state";
        state.check_config(OP, cfg)?;
        self.same_gpu(OP, gpu)?;
        if std::mem::discriminant(cfg) != std::mem::discriminant(&self.cfg) {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "the state was created for {} but the loaded one is for {}",
                    kind_name(&self.cfg),
                    kind_name(cfg)
                ),
            });
        }
        if state.tensor_lens() != self.lens.as_slice() {
            return Err(Error::ShapeMismatch {
                op: OP,
                detail: format!(
                    "the loaded state has tensors of lengths {:?}, this one {:?}",
                    state.tensor_lens(),
                    self.lens
                ),
            });
        }
        let sgd = matches!(cfg, OptimizerConfig::Sgd(_));
        if sgd && state.has_momentum_buffers() != self.momentum_buffers {
            *self = Self::from_state(gpu, cfg, state)?;
            return Ok(());
        }
        self.fill(gpu, state)?;
        self.cfg = *cfg;
        Ok(())
    }

    /// Copies `state`'s buffers and counters into this layout's (same lengths and buffers).
    fn fill(&mut self, gpu: &Gpu, state: &OptimizerState) -> Result<()> {
        let lens = state.tensor_lens();
        let layout = (self.offsets.clone(), self.flat_len());
        if matches!(self.cfg, OptimizerConfig::Sgd(_)) {
            restore(gpu, &mut self.exp_avg, &layout, lens, |t| {
                state.momentum_buffer(t)
            })?;
        } else {
            restore(gpu, &mut self.exp_avg, &layout, lens, |t| state.exp_avg(t))?;
            restore(gpu, &mut self.exp_avg_sq, &layout, lens, |t| {
                state.exp_avg_sq(t)
            })?;
        }
        let started = u64::from(state.momentum_started());
        gpu.stream()
            .memcpy_htod(&[state.step_count(), started, 0], &mut self.counters)
            .map_err(Error::driver("copying optimizer state to the device"))
    }

    /// Tensor `t`'s part of the first (`second = false`: Adam's `m`, SGD's momentum buffer) or
    /// second (Adam's `v`) flat buffer; `None` if the state keeps no such buffer or `t` is out
    /// of range.
    pub(crate) fn moment_view(&self, second: bool, t: usize) -> Option<CudaView<'_, f32>> {
        let buf = if second {
            self.exp_avg_sq.as_ref()?
        } else {
            self.exp_avg.as_ref()?
        };
        let (off, n) = (*self.offsets.get(t)?, *self.lens.get(t)?);
        Some(buf.slice(off..off + n))
    }

    /// Zeroed buffers and counters for the layout; the caller fills what it restores.
    fn allocate(
        gpu: &Gpu,
        cfg: &OptimizerConfig,
        lens: &[usize],
        momentum_buffers: bool,
    ) -> Result<GpuOptimizer> {
        let mut offsets = Vec::with_capacity(lens.len());
        let mut total = 0usize;
        for &n in lens {
            offsets.push(total);
            total = n
                .checked_next_multiple_of(OFFSET_ALIGN)
                .and_then(|n| total.checked_add(n))
                .ok_or_else(|| Error::InvalidArgument {
                    op: "ops::optim::GpuOptimizer::new",
                    detail: "the tensor lengths add up past usize::MAX".into(),
                })?;
        }
        let adam = !matches!(cfg, OptimizerConfig::Sgd(_));
        let buffer = |on: bool| on.then(|| gpu.alloc_zeros::<f32>(total.max(1))).transpose();
        Ok(GpuOptimizer {
            cfg: *cfg,
            momentum_buffers: !adam && momentum_buffers,
            lens: lens.to_vec(),
            offsets,
            exp_avg: buffer(adam || momentum_buffers)?,
            exp_avg_sq: buffer(adam)?,
            counters: gpu.alloc_zeros(COUNTERS)?,
        })
    }

    fn flat_len(&self) -> usize {
        self.exp_avg.as_ref().map_or(0, DeviceBuffer::len)
    }

    /// The tensor lengths the state was created for.
    pub fn tensor_lens(&self) -> &[usize] {
        &self.lens
    }

    /// SGD: whether the state holds momentum buffers (created or uploaded with them).
    pub(crate) fn has_momentum_buffers(&self) -> bool {
        self.momentum_buffers
    }

    /// Real (not skipped) steps taken so far. Reads the device counter: synchronises.
    /// Errors: [`Error::InvalidArgument`] when `gpu` is not the context the state lives in;
    /// [`Error::Driver`] for a failed copy (or an earlier kernel's fault).
    pub fn step_count(&self, gpu: &Gpu) -> Result<u64> {
        self.same_gpu("ops::optim::GpuOptimizer::step_count", gpu)?;
        Ok(gpu.download(&self.counters)?[COUNTER_STEP])
    }

    /// Copies the whole state to the host, as the [`OptimizerState`] the CPU optimizer would
    /// hold after the same steps (compare with `==` bit for bit, or save as a checkpoint).
    /// Synchronises. Errors as [`GpuOptimizer::step_count`].
    pub fn download(&self, gpu: &Gpu) -> Result<OptimizerState> {
        self.same_gpu("ops::optim::GpuOptimizer::download", gpu)?;
        let counters = gpu.download(&self.counters)?;
        let split = |buf: &Option<DeviceBuffer<f32>>| -> Result<Option<Vec<Vec<f32>>>> {
            let Some(buf) = buf else { return Ok(None) };
            let flat = gpu.download(buf)?;
            Ok(Some(
                self.offsets
                    .iter()
                    .zip(&self.lens)
                    .map(|(&off, &n)| flat[off..off + n].to_vec())
                    .collect(),
            ))
        };
        OptimizerState::from_parts(
            &self.cfg,
            &self.lens,
            counters[COUNTER_STEP],
            counters[COUNTER_MOMENTUM_STARTED] != 0,
            split(&self.exp_avg)?,
            split(&self.exp_avg_sq)?,
        )
    }

    /// One optimizer step over every tensor, skipped entirely on the device when `found_inf`
    /// (one f32, as [`crate::ops::unscale`] writes it) is nonzero. The working copies are of
    /// type `H` (f16 or bf16; 2-byte aligned either way). `cfg` may change between steps
    /// (a learning-rate schedule) but must be of the kind the state was created for. Queues the
    /// work and returns; whether the step was skipped is `found_inf` itself.
    ///
    /// Errors, all raised before anything is launched: [`Error::InvalidArgument`] for an invalid
    /// config, one of another kind than the state's (or SGD momentum on a state without
    /// buffers), a state created on another GPU, or a misaligned view;
    /// [`Error::ShapeMismatch`] when the tensor count or any master/grad/half length disagrees
    /// with the state, or `found_inf` is not one element.
    pub fn step<H: HalfCopy, F: DevicePtr<f32>>(
        &mut self,
        gpu: &Gpu,
        cfg: &OptimizerConfig,
        params: &mut [GpuParamTensor<'_, H>],
        found_inf: &F,
    ) -> Result<()> {
        self.step_scheduled(gpu, cfg, &LrSchedule::Constant, params, found_inf)
    }

    /// [`GpuOptimizer::step`] with a learning-rate schedule: the kernel evaluates
    /// [`LrSchedule::lr_at`]`(cfg's lr, t)` in f64 from the device step counter `t` (real steps
    /// taken), so skipped steps do not advance it and nothing synchronises. For AdamW the decay
    /// factor `f32(1 − lr·wd)` follows the scheduled rate. [`LrSchedule::Constant`] gives
    /// exactly [`GpuOptimizer::step`]. Errors as there, plus an invalid schedule.
    pub fn step_scheduled<H: HalfCopy, F: DevicePtr<f32>>(
        &mut self,
        gpu: &Gpu,
        cfg: &OptimizerConfig,
        schedule: &LrSchedule,
        params: &mut [GpuParamTensor<'_, H>],
        found_inf: &F,
    ) -> Result<()> {
        self.step_clipped(gpu, cfg, schedule, params, found_inf, GradClip::default())
    }

    /// [`GpuOptimizer::step_scheduled`] with gradient clipping applied to each gradient as it
    /// is loaded (the gradient buffers are not changed): `g · *coef` when `clip.coef` is the
    /// address of one f32 on the device (a `clip_grad_norm_` factor the unscale wrote), then
    /// clamped to `[−value, value]` when `clip.value > 0`. The amp scaler passes it.
    pub(crate) fn step_clipped<H: HalfCopy, F: DevicePtr<f32>>(
        &mut self,
        gpu: &Gpu,
        cfg: &OptimizerConfig,
        schedule: &LrSchedule,
        params: &mut [GpuParamTensor<'_, H>],
        found_inf: &F,
        clip: GradClip,
    ) -> Result<()> {
        const OP: &str = "ops::optim::GpuOptimizer::step";
        schedule.validate()?;
        let lens: Vec<[usize; 3]> = params
            .iter()
            .map(|p| [p.master.len(), p.grad.len(), p.half.len()])
            .collect();
        self.check_step(OP, gpu, cfg, &lens, found_inf.len())?;
        let sched = Schedule::new(cfg, schedule);
        let stream = gpu.stream();
        let mut guards = Vec::with_capacity(3 * params.len() + 4);
        let mut m_base = 0;
        if let Some(buf) = self.exp_avg.as_mut() {
            let (ptr, guard) = buf.device_ptr_mut(stream);
            guards.push(guard);
            m_base = ptr;
        }
        let mut v_base = 0;
        if let Some(buf) = self.exp_avg_sq.as_mut() {
            let (ptr, guard) = buf.device_ptr_mut(stream);
            guards.push(guard);
            v_base = ptr;
        }
        let (kernel, hyper) = match cfg {
            OptimizerConfig::Adam(c) => ("optim_adam", Hyper::Adam(AdamHyper::new(c, false))),
            OptimizerConfig::AdamW(c) => ("optim_adam", Hyper::Adam(AdamHyper::new(c, true))),
            OptimizerConfig::Sgd(c) => {
                let k = SgdCoefficients::new(c, false);
                let hyper = SgdHyper {
                    lr: k.lr,
                    momentum: k.momentum,
                    one_minus_dampening: k.one_minus_dampening,
                    weight_decay: k.weight_decay,
                    nesterov: i32::from(k.nesterov),
                    unused: 0,
                };
                ("optim_sgd", Hyper::Sgd(hyper))
            }
        };
        // Without momentum the kernel never touches the buffers; pass none.
        let m_base = match hyper {
            Hyper::Sgd(h) if h.momentum == 0.0 => 0,
            _ => m_base,
        };
        let mut entries = Vec::with_capacity(params.len());
        for (t, p) in params.iter_mut().enumerate() {
            let len = self.lens[t];
            let (master, g1) = p.master.device_ptr_mut(stream);
            let (grad, g2) = p.grad.device_ptr(stream);
            let has_half = !p.half.is_empty();
            let (half, g3) = p.half.device_ptr_mut(stream);
            // No working copy: a null pointer, which the kernel skips.
            let half = if has_half { half } else { 0 };
            guards.extend([g1, g2, g3]);
            if master % 4 != 0 || grad % 4 != 0 || half % 2 != 0 {
                return Err(Error::InvalidArgument {
                    op: OP,
                    detail: format!("tensor {t} is not aligned to its element size"),
                });
            }
            if len == 0 {
                continue;
            }
            let at = |base: u64| {
                if base == 0 {
                    0
                } else {
                    base + 4 * self.offsets[t] as u64
                }
            };
            entries.push([master, grad, half, at(m_base), at(v_base), len as u64]);
        }
        let (counters, g4) = self.counters.device_ptr_mut(stream);
        let (flag, g5) = found_inf.device_ptr(stream);
        guards.extend([g4, g5]);
        let total: usize = self.lens.iter().sum();
        let chunk = (total / (BLOCKS_PER_SM * gpu.info().multiprocessors.max(1)))
            .clamp(MIN_CHUNK, MAX_CHUNK)
            .next_power_of_two();
        // A step over no elements still launches (one block, empty table) to advance the counter.
        let batches: Vec<&[[u64; 6]]> = if entries.is_empty() {
            vec![&[]]
        } else {
            entries.chunks(MAX_TENSORS).collect()
        };
        let mut tables = Vec::with_capacity(batches.len());
        for batch in &batches {
            tables.push(table(OP, batch, chunk, H::DEVICE_KIND)?);
        }
        for (i, (table, blocks)) in tables.into_iter().enumerate() {
            let mut args = KernelArgs::new();
            args.push(table);
            match hyper {
                Hyper::Adam(h) => args.push(h),
                Hyper::Sgd(h) => args.push(h),
            };
            args.push(sched);
            args.push(counters)
                .push(flag)
                .push(clip)
                .push(chunk as i64)
                .push(i32::from(i + 1 == batches.len()));
            // SAFETY: optim_{adam,sgd}(TensorTable, {Adam,Sgd}Hyper, Schedule,
            // unsigned long long* counters, const float* found_inf, GradClip clip,
            // long long chunk, int final_launch) matches (clip.coef is null or one f32 on the
            // device, the caller's promise): the table and
            // hyperparameters have the kernel's layouts (the table's copy_kind is H's, so the
            // kernel writes 2-byte elements of H's format); each entry's master, grad and half
            // hold `len` elements (validated), its moments `len` f32 at their offsets in the flat
            // buffers (allocated for these lengths), or are null where the kernel does not read
            // them; counters holds 3 u64 and found_inf one f32; the guards outlive the launch.
            unsafe {
                gpu.launch(
                    &kernels::OPTIM,
                    kernel,
                    LaunchConfig::linear(blocks, THREADS),
                    &args,
                )?
            };
        }
        Ok(())
    }

    /// Everything [`GpuOptimizer::step`] checks before it launches (except the schedule and
    /// the views' alignment), with each tensor's `[master, grad, half]` lengths.
    pub(crate) fn check_step(
        &self,
        op: &'static str,
        gpu: &Gpu,
        cfg: &OptimizerConfig,
        lens: &[[usize; 3]],
        found_inf_len: usize,
    ) -> Result<()> {
        cfg.validate()?;
        if std::mem::discriminant(cfg) != std::mem::discriminant(&self.cfg) {
            return Err(Error::InvalidArgument {
                op,
                detail: format!(
                    "the state was created for {} but the config is {}; step a state with the \
                     optimizer it was created for",
                    kind_name(&self.cfg),
                    kind_name(cfg)
                ),
            });
        }
        if let OptimizerConfig::Sgd(c) = cfg {
            if c.momentum != 0.0 && !self.momentum_buffers {
                return Err(Error::InvalidArgument {
                    op,
                    detail: format!(
                        "momentum = {} but the state was created without momentum buffers; \
                         create the state with the momentum config",
                        c.momentum
                    ),
                });
            }
        }
        self.same_gpu(op, gpu)?;
        if found_inf_len != 1 {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!("found_inf must be one f32 on the device, got {found_inf_len}"),
            });
        }
        check_tensor_lens(op, &self.lens, lens)
    }

    /// The state's buffers belong to the context they were allocated in.
    fn same_gpu(&self, op: &'static str, gpu: &Gpu) -> Result<()> {
        if Arc::ptr_eq(self.counters.context(), gpu.context()) {
            return Ok(());
        }
        Err(Error::InvalidArgument {
            op,
            detail: "the optimizer state lives on another GPU context; pass the Gpu it was \
                     created with"
                .into(),
        })
    }
}

/// Copies per-tensor host buffers (`get(t)`, `None` leaving zeros) into a flat device buffer laid
/// out by `(offsets, flat length)`.
fn restore<'s>(
    gpu: &Gpu,
    buf: &mut Option<DeviceBuffer<f32>>,
    (offsets, flat_len): &(Vec<usize>, usize),
    lens: &[usize],
    get: impl Fn(usize) -> Option<&'s [f32]>,
) -> Result<()> {
    let Some(buf) = buf else { return Ok(()) };
    let mut host = vec![0.0f32; *flat_len];
    for (t, (&off, &n)) in offsets.iter().zip(lens).enumerate() {
        if let Some(src) = get(t) {
            host[off..off + n].copy_from_slice(src);
        }
    }
    gpu.stream()
        .memcpy_htod(&host, buf)
        .map_err(Error::driver("copying optimizer state to the device"))
}

fn kind_name(cfg: &OptimizerConfig) -> &'static str {
    match cfg {
        OptimizerConfig::Adam(_) => "Adam",
        OptimizerConfig::AdamW(_) => "AdamW",
        OptimizerConfig::Sgd(_) => "Sgd",
    }
}

/// The device's Adam bias-correction terms `(f32(lr / (1 − β1^t)), f32(sqrt(1 − β2^t)))` for
/// each `t` of `steps`, computed by the code the optimizer kernel runs; for tests comparing
/// them with [`AdamCoefficients::new`]'s `step_size` and `bias_correction2_sqrt`. Synchronises.
///
/// [`AdamCoefficients::new`]: crate::cpu::optim::AdamCoefficients::new
#[doc(hidden)]
pub fn adam_bias_terms(gpu: &Gpu, cfg: &AdamConfig, steps: &[u64]) -> Result<Vec<(f32, f32)>> {
    const OP: &str = "ops::optim::adam_bias_terms";
    OptimizerConfig::Adam(*cfg).validate()?;
    let n = i32::try_from(steps.len()).map_err(|_| Error::InvalidArgument {
        op: OP,
        detail: format!("{} steps exceed one launch; pass fewer", steps.len()),
    })?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let ts = gpu.upload(steps)?;
    let mut out: DeviceBuffer<f32> = gpu.alloc_zeros(2 * steps.len())?;
    {
        let (ts_ptr, _g1) = ts.device_ptr(gpu.stream());
        let (out_ptr, _g2) = out.device_ptr_mut(gpu.stream());
        let mut args = KernelArgs::new();
        args.push(AdamHyper::new(cfg, false))
            .push(ts_ptr)
            .push(n)
            .push(out_ptr);
        // SAFETY: optim_adam_bias_terms(AdamHyper, const unsigned long long* ts, int n,
        // float* out) matches; ts holds n u64 and out 2n f32; the kernel bounds-checks i < n.
        unsafe {
            gpu.launch(
                &kernels::OPTIM,
                "optim_adam_bias_terms",
                LaunchConfig::linear(steps.len().div_ceil(256) as u32, 256),
                &args,
            )?
        };
    }
    let flat = gpu.download(&out)?;
    Ok(flat.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}
