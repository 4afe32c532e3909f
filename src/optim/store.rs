//! The state every optimizer object owns, on the host ([`OptimizerState`], stepped by
//! [`crate::cpu::optim::step`]) or on a GPU ([`GpuOptimizer`], stepped by its fused kernel), and
//! the steps the scalers call. Each step and state access is the primitive's own, so results are
//! bit-identical to calling the primitives directly.

use super::{base_lr, with_lr, LrSchedule, Moment, OptimizerConfig, OptimizerStateDict};
use crate::cpu::optim::{
    self, check_tensor_lens, HalfCopy, OptimizerState, ParamTensor, StepOutcome,
};
use crate::cuda::{DeviceBuffer, Gpu};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::optim::{GpuOptimizer, GpuParamTensor};
use cudarc::driver::CudaView;
use std::sync::Arc;

/// Where the state lives.
#[derive(Debug)]
enum Store {
    Host(OptimizerState),
    Device {
        /// The handle the optimizer was created with: its stream orders every copy of the state.
        gpu: Arc<Gpu>,
        opt: GpuOptimizer,
    },
}

/// An optimizer object's state: config, schedule, and the moments and counter on their device.
/// Public only inside a private module (the scalers reach it through the sealed trait).
#[derive(Debug)]
pub struct Inner {
    cfg: OptimizerConfig,
    schedule: LrSchedule,
    store: Store,
}

fn invalid(op: &'static str, detail: String) -> Error {
    Error::InvalidArgument { op, detail }
}

fn kind_name(cfg: &OptimizerConfig) -> &'static str {
    match cfg {
        OptimizerConfig::Adam(_) => "Adam",
        OptimizerConfig::AdamW(_) => "AdamW",
        OptimizerConfig::Sgd(_) => "Sgd",
    }
}

impl Inner {
    /// Zeroed state for `cfg` (validated) on `device`.
    pub(super) fn new(device: &Device, cfg: OptimizerConfig, lens: &[usize]) -> Result<Inner> {
        let store = match device {
            Device::Cpu => Store::Host(OptimizerState::new(&cfg, lens)?),
            Device::Cuda(gpu) => Store::Device {
                opt: GpuOptimizer::new(gpu, &cfg, lens)?,
                gpu: gpu.clone(),
            },
        };
        Ok(Inner {
            cfg,
            schedule: LrSchedule::Constant,
            store,
        })
    }

    pub(super) fn config(&self) -> OptimizerConfig {
        self.cfg
    }

    pub(super) fn schedule(&self) -> LrSchedule {
        self.schedule
    }

    pub(super) fn tensor_lens(&self) -> &[usize] {
        match &self.store {
            Store::Host(s) => s.tensor_lens(),
            Store::Device { opt, .. } => opt.tensor_lens(),
        }
    }

    /// `cfg` must be valid, of this optimizer's kind, and (SGD momentum) have buffers to use.
    fn check_config(&self, op: &'static str, cfg: &OptimizerConfig) -> Result<()> {
        cfg.validate()?;
        if std::mem::discriminant(cfg) != std::mem::discriminant(&self.cfg) {
            return Err(invalid(
                op,
                format!(
                    "this optimizer is {} but the config is for {}; create a {} for it",
                    kind_name(&self.cfg),
                    kind_name(cfg),
                    kind_name(cfg)
                ),
            ));
        }
        let momentum = matches!(cfg, OptimizerConfig::Sgd(c) if c.momentum != 0.0);
        if momentum && !self.has_momentum_buffers() {
            return Err(invalid(
                op,
                "the config asks for momentum but this Sgd was created without momentum \
                 buffers; create it with the momentum config"
                    .into(),
            ));
        }
        Ok(())
    }

    /// SGD: whether the state holds momentum buffers.
    fn has_momentum_buffers(&self) -> bool {
        match &self.store {
            Store::Host(s) => s.has_momentum_buffers(),
            Store::Device { opt, .. } => opt.has_momentum_buffers(),
        }
    }

    pub(super) fn set_config(&mut self, cfg: OptimizerConfig) -> Result<()> {
        self.check_config("optim::Optimizer::set_config", &cfg)?;
        self.cfg = cfg;
        Ok(())
    }

    pub(super) fn set_schedule(&mut self, schedule: LrSchedule) -> Result<()> {
        schedule.validate()?;
        self.schedule = schedule;
        Ok(())
    }

    pub(super) fn step_count(&self) -> Result<u64> {
        match &self.store {
            Store::Host(s) => Ok(s.step_count()),
            Store::Device { gpu, opt } => opt.step_count(gpu),
        }
    }

    pub(super) fn moment(&self, which: Moment, t: usize) -> Result<Vec<f32>> {
        const OP: &str = "optim::Optimizer::moment";
        self.check_moment(OP, which, t)?;
        match &self.store {
            Store::Host(s) => {
                let m = match which {
                    Moment::ExpAvg => s.exp_avg(t),
                    Moment::ExpAvgSq => s.exp_avg_sq(t),
                    Moment::MomentumBuffer => s.momentum_buffer(t),
                };
                Ok(m.expect("checked by check_moment").to_vec())
            }
            Store::Device { gpu, .. } => gpu.download(&self.moment_view(which, t)?),
        }
    }

    pub(super) fn moment_view(&self, which: Moment, t: usize) -> Result<CudaView<'_, f32>> {
        const OP: &str = "optim::Optimizer::moment_view";
        self.check_moment(OP, which, t)?;
        match &self.store {
            Store::Host(_) => Err(invalid(
                OP,
                "this optimizer's state is on the host; read it with moment()".into(),
            )),
            Store::Device { opt, .. } => Ok(opt
                .moment_view(which == Moment::ExpAvgSq, t)
                .expect("checked by check_moment")),
        }
    }

    /// `t` is a tensor and the optimizer keeps `which`.
    fn check_moment(&self, op: &'static str, which: Moment, t: usize) -> Result<()> {
        let n = self.tensor_lens().len();
        if t >= n {
            return Err(invalid(
                op,
                format!("tensor {t} does not exist: the optimizer has {n} tensors"),
            ));
        }
        let adam = !matches!(self.cfg, OptimizerConfig::Sgd(_));
        let kept = match which {
            Moment::ExpAvg | Moment::ExpAvgSq => adam,
            Moment::MomentumBuffer => !adam && self.has_momentum_buffers(),
        };
        if !kept {
            let keeps = if adam {
                "ExpAvg and ExpAvgSq"
            } else if matches!(self.cfg, OptimizerConfig::Sgd(c) if c.momentum != 0.0) {
                "MomentumBuffer"
            } else {
                "no moments (it was created without momentum)"
            };
            return Err(invalid(
                op,
                format!("{} keeps {keeps}, not {which:?}", kind_name(&self.cfg)),
            ));
        }
        Ok(())
    }

    pub(super) fn state_dict(&self) -> Result<OptimizerStateDict> {
        let downloaded;
        let state = match &self.store {
            Store::Host(s) => s,
            Store::Device { gpu, opt } => {
                downloaded = opt.download(gpu)?;
                &downloaded
            }
        };
        let n = state.tensor_lens().len();
        let all = |get: fn(&OptimizerState, usize) -> Option<&[f32]>| -> Vec<Vec<f32>> {
            (0..n)
                .map(|t| get(state, t).map(<[f32]>::to_vec).unwrap_or_default())
                .collect()
        };
        let adam = !matches!(self.cfg, OptimizerConfig::Sgd(_));
        Ok(OptimizerStateDict {
            config: self.cfg,
            schedule: self.schedule,
            step: state.step_count(),
            momentum_started: state.momentum_started(),
            exp_avg: adam.then(|| all(OptimizerState::exp_avg)),
            exp_avg_sq: adam.then(|| all(OptimizerState::exp_avg_sq)),
            momentum_buffer: state
                .has_momentum_buffers()
                .then(|| all(OptimizerState::momentum_buffer)),
        })
    }

    pub(super) fn load_state_dict(&mut self, dict: &OptimizerStateDict) -> Result<()> {
        const OP: &str = "optim::Optimizer::load_state_dict";
        dict.schedule.validate()?;
        dict.config.validate()?;
        if std::mem::discriminant(&dict.config) != std::mem::discriminant(&self.cfg) {
            return Err(invalid(
                OP,
                format!(
                    "the state dict is for {} but this optimizer is {}",
                    kind_name(&dict.config),
                    kind_name(&self.cfg)
                ),
            ));
        }
        let adam = !matches!(self.cfg, OptimizerConfig::Sgd(_));
        let (m, v) = if adam {
            if dict.momentum_buffer.is_some() {
                return Err(invalid(
                    OP,
                    "an Adam/AdamW state dict has no momentum_buffer; pass None".into(),
                ));
            }
            (dict.exp_avg.clone(), dict.exp_avg_sq.clone())
        } else {
            if dict.exp_avg.is_some() || dict.exp_avg_sq.is_some() {
                return Err(invalid(
                    OP,
                    "an Sgd state dict has no exp_avg or exp_avg_sq; pass None".into(),
                ));
            }
            (dict.momentum_buffer.clone(), None)
        };
        let lens = self.tensor_lens().to_vec();
        let state = OptimizerState::from_parts(
            &dict.config,
            &lens,
            dict.step,
            dict.momentum_started,
            m,
            v,
        )?;
        state.check_config(OP, &dict.config)?;
        match &mut self.store {
            Store::Host(s) => *s = state,
            Store::Device { gpu, opt } => opt.load_state(gpu, &dict.config, &state)?,
        }
        self.cfg = dict.config;
        self.schedule = dict.schedule;
        Ok(())
    }

    /// Everything [`Inner::step_host`] checks, before the scaler touches the gradients: a host
    /// state, and `lens` (`[master, grad, half]` per tensor) matching it.
    pub(crate) fn check_host(&self, op: &'static str, lens: &[[usize; 3]]) -> Result<()> {
        let Store::Host(state) = &self.store else {
            return Err(invalid(
                op,
                "this optimizer's state is on a GPU; step it with amp::GradScaler (or create \
                 it on Device::Cpu)"
                    .into(),
            ));
        };
        state.check_config(op, &self.cfg)?;
        check_tensor_lens(op, state.tensor_lens(), lens)
    }

    /// One CPU step with the schedule's rate for the real steps taken so far, skipped when
    /// `found_inf` (the CPU trainer's step, unchanged).
    pub(crate) fn step_host<H: HalfCopy>(
        &mut self,
        params: &mut [ParamTensor<'_, H>],
        found_inf: bool,
    ) -> Result<StepOutcome> {
        let Store::Host(state) = &mut self.store else {
            return Err(invalid(
                "optim::Optimizer::step",
                "this optimizer's state is on a GPU".into(),
            ));
        };
        let lr = self.schedule.lr_at(base_lr(&self.cfg), state.step_count());
        optim::step(&with_lr(&self.cfg, lr), state, params, found_inf)
    }

    /// Everything [`Inner::step_device`] checks, before the scaler touches the gradients: a
    /// device state created with a `Gpu` on `gpu`'s stream, and `lens` matching it.
    pub(crate) fn check_device(
        &self,
        op: &'static str,
        gpu: &Gpu,
        lens: &[[usize; 3]],
    ) -> Result<()> {
        let Store::Device { gpu: mine, opt } = &self.store else {
            return Err(invalid(
                op,
                "this optimizer's state is on the host; step it with amp::CpuGradScaler (or \
                 create it on Device::Cuda)"
                    .into(),
            ));
        };
        if !Arc::ptr_eq(mine.stream(), gpu.stream()) {
            return Err(invalid(
                op,
                "the optimizer and the scaler were created with different Gpu handles (streams); \
                 create both with the same one so their work is ordered"
                    .into(),
            ));
        }
        opt.check_step(op, gpu, &self.cfg, lens, 1)
    }

    /// One fused GPU step (schedule on the device), skipped on the device when `found_inf` is
    /// nonzero, with `clip` applied to each gradient as it is loaded. Queues work only: no
    /// synchronisation, no device allocation.
    pub(crate) fn step_device<H: HalfCopy>(
        &mut self,
        gpu: &Gpu,
        params: &mut [GpuParamTensor<'_, H>],
        found_inf: &DeviceBuffer<f32>,
        clip: crate::ops::optim::GradClip,
    ) -> Result<()> {
        let Store::Device { opt, .. } = &mut self.store else {
            return Err(invalid(
                "optim::Optimizer::step",
                "this optimizer's state is on the host".into(),
            ));
        };
        opt.step_clipped(gpu, &self.cfg, &self.schedule, params, found_inf, clip)
    }
}
