//! The training step on the GPU: the same sequence as [`super::cpu_backend`], each op from
//! [`crate::ops`], everything on one stream with no host synchronisation and no device-to-host
//! copy. Per step: forward GEMMs (bias and ReLU in the epilogue), fused softmax-cross-entropy
//! (the loss scale read from device memory), per-layer backward (ReLU/LayerNorm backward, f32
//! weight gradient, bias gradient, f16 data gradient), one multi-tensor unscale + inf check, one
//! fused optimizer launch (skips itself on inf/NaN), the device-side scale update, and three
//! 4-byte device-to-device copies that append (loss, scale, found_inf) to a record buffer the
//! host reads back in [`Backend::take_records`].
//!
//! All buffers are allocated once for the configured batch, so their addresses are fixed.
//! Mixed precision only: a layer in f32 (`--precision fp32`, `--fp32-layers`) needs an f32 GEMM,
//! which the GPU path does not have yet; [`GpuBackend::new`] says so and the CPU backend runs it.

use super::backend::{Backend, BackendState, Evaluation, StepRecord};
use super::cpu_backend::{
    base_lr, check_batch, check_params, check_samples, count_correct, layer_params,
    restore_optimizer, LayerParams,
};
use crate::amp::{LossScale, ScalerStages};
use crate::cpu::gemm::{GemmShape, Layout};
use crate::cpu::optim::OptimizerConfig;
use crate::cpu::scaler::ScalerState;
use crate::cpu::schedule::LrSchedule;
use crate::cuda::{DeviceBuffer, Gpu};
use crate::error::{Error, Result};
use crate::nn::{init_parameters, MlpConfig, Tensor, LAYERNORM_EPS};
use crate::ops::gemm::{bias_grad, gemm, Epilogue};
use crate::ops::optim::{GpuOptimizer, GpuParamTensor};
use crate::ops::{cast, layernorm, relu, scaler, softmax, unscale};
use half::f16;
use std::sync::Arc;

/// Values per step in the record buffer: loss, scale, found_inf.
const RECORD: usize = 3;

/// Per linear layer: the buffers of its forward and backward pass, sized for the batch.
struct LayerBuffers {
    /// The layer's output as the next layer reads it (f16): the ReLU output of a hidden layer
    /// or the logits.
    out16: DeviceBuffer<f16>,
    /// LayerNorm layers: GEMM output (f32), LayerNorm output, ReLU output (f32), mean, rstd.
    ln: Option<LnBuffers>,
    /// Gradient of the GEMM output (f16), the input of wgrad, dgrad and the bias gradient.
    dz16: DeviceBuffer<f16>,
}

struct LnBuffers {
    z: DeviceBuffer<f32>,
    y: DeviceBuffer<f32>,
    a: DeviceBuffer<f32>,
    mean: DeviceBuffer<f32>,
    rstd: DeviceBuffer<f32>,
    /// f32 scratch for the backward pass (gradient of `a`, then of `y`, then of `z`).
    g1: DeviceBuffer<f32>,
    g2: DeviceBuffer<f32>,
}

/// The GPU backend.
pub struct GpuBackend {
    gpu: Arc<Gpu>,
    cfg: MlpConfig,
    layers: Vec<LayerParams>,
    opt: OptimizerConfig,
    schedule: LrSchedule,
    loss_scale: LossScale,
    batch_cap: usize,
    masters: Vec<DeviceBuffer<f32>>,
    halves: Vec<DeviceBuffer<f16>>,
    grads: Vec<DeviceBuffer<f32>>,
    optimizer: GpuOptimizer,
    /// Real optimizer steps as of the last record read-back (the host's copy of the device
    /// counter, advanced from the records' skip flags).
    real_steps: u64,
    scale: DeviceBuffer<f32>,
    tracker: DeviceBuffer<i32>,
    found_inf: DeviceBuffer<f32>,
    loss: DeviceBuffer<f32>,
    records: DeviceBuffer<f32>,
    pending: usize,
    bufs: Vec<LayerBuffers>,
    /// The gradient arriving from the layer above (f16), one buffer per layer input width.
    g16: Vec<DeviceBuffer<f16>>,
    epoch_x: DeviceBuffer<f16>,
    epoch_y: DeviceBuffer<u32>,
    epoch_len: usize,
    stages: ScalerStages,
}

fn unsupported(detail: String) -> Error {
    Error::InvalidArgument {
        op: "train::GpuBackend",
        detail,
    }
}

impl GpuBackend {
    /// A model with fresh parameters from `seed` on `gpu`, with buffers for batches of up to
    /// `batch` samples.
    pub fn new(
        gpu: Arc<Gpu>,
        cfg: &MlpConfig,
        opt: OptimizerConfig,
        schedule: LrSchedule,
        loss_scale: LossScale,
        batch: usize,
        seed: u64,
    ) -> Result<GpuBackend> {
        cfg.validate()?;
        schedule.validate()?;
        loss_scale.validate()?;
        if let Some(l) = (0..cfg.linear_count()).find(|&l| !cfg.half_layer(l)) {
            return Err(unsupported(format!(
                "layer {l} is set to f32 ({:?} precision{}); the GPU path runs f16 GEMMs only so far: \
                 train this configuration with --device cpu",
                cfg.precision,
                if cfg.fp32_layers.is_empty() { "" } else { ", --fp32-layers" }
            )));
        }
        if batch == 0 {
            return Err(unsupported("batch must be ≥ 1".into()));
        }
        let params = init_parameters(cfg, seed);
        let masters = params
            .iter()
            .map(|p| gpu.upload(&p.data))
            .collect::<Result<Vec<_>>>()?;
        let halves = params
            .iter()
            .map(|p| gpu.upload(&p.data.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()))
            .collect::<Result<Vec<_>>>()?;
        let grads = params
            .iter()
            .map(|p| gpu.alloc_zeros(p.data.len()))
            .collect::<Result<Vec<_>>>()?;
        let lens: Vec<usize> = params.iter().map(|p| p.data.len()).collect();
        let optimizer = GpuOptimizer::new(&gpu, &opt, &lens)?;
        let layers = layer_params(cfg);
        let mut bufs = Vec::new();
        let mut g16 = Vec::new();
        for (l, lp) in layers.iter().enumerate() {
            let out = cfg.layers[l + 1];
            let n = batch * out;
            let ln = match lp.ln {
                Some(_) => Some(LnBuffers {
                    z: gpu.alloc_zeros(n)?,
                    y: gpu.alloc_zeros(n)?,
                    a: gpu.alloc_zeros(n)?,
                    mean: gpu.alloc_zeros(batch)?,
                    rstd: gpu.alloc_zeros(batch)?,
                    g1: gpu.alloc_zeros(n)?,
                    g2: gpu.alloc_zeros(n)?,
                }),
                None => None,
            };
            bufs.push(LayerBuffers {
                out16: gpu.alloc_zeros(n)?,
                ln,
                dz16: gpu.alloc_zeros(n)?,
            });
            g16.push(gpu.alloc_zeros(batch * cfg.layers[l])?);
        }
        Ok(GpuBackend {
            cfg: cfg.clone(),
            layers,
            opt,
            schedule,
            batch_cap: batch,
            masters,
            halves,
            grads,
            optimizer,
            real_steps: 0,
            scale: gpu.upload(&[loss_scale.initial_scale()])?,
            tracker: gpu.alloc_zeros(1)?,
            found_inf: gpu.alloc_zeros(1)?,
            loss: gpu.alloc_zeros(1)?,
            records: gpu.alloc_zeros(RECORD)?,
            pending: 0,
            bufs,
            g16,
            epoch_x: gpu.alloc_zeros(1)?,
            epoch_y: gpu.alloc_zeros(1)?,
            epoch_len: 0,
            stages: ScalerStages::new(),
            loss_scale,
            gpu,
        })
    }

    /// Forward pass over `b ≤ batch_cap` samples whose f16 inputs start at element `x_off` of
    /// `eval_x`, or of the loaded epoch when `None`; the logits end in
    /// `bufs.last().out16[..b·classes]`.
    fn forward(
        &mut self,
        eval_x: Option<&DeviceBuffer<f16>>,
        x_off: usize,
        b: usize,
    ) -> Result<()> {
        let gpu = &*self.gpu;
        let x = eval_x.unwrap_or(&self.epoch_x);
        let n = self.cfg.linear_count();
        for l in 0..n {
            let (fan_in, out) = (self.cfg.layers[l], self.cfg.layers[l + 1]);
            let lp = self.layers[l];
            let last = l + 1 == n;
            let shape = GemmShape::new(Layout::Forward, b, out, fan_in);
            let (done, rest) = self.bufs.split_at_mut(l);
            let cur = &mut rest[0];
            let input = match done.last() {
                Some(prev) => prev.out16.slice(..b * fan_in),
                None => x.slice(x_off..x_off + b * fan_in),
            };
            let bias = self.masters[lp.b].slice(..);
            let w = self.halves[lp.w].slice(..);
            match (&mut cur.ln, lp.ln) {
                (Some(ln), Some((g, be))) => {
                    gemm(
                        gpu,
                        shape,
                        &input,
                        &w,
                        &Epilogue::bias(&bias, false),
                        &mut ln.z.slice_mut(..b * out),
                    )?;
                    layernorm::forward(
                        gpu,
                        &ln.z.slice(..b * out),
                        b,
                        out,
                        &self.masters[g],
                        &self.masters[be],
                        LAYERNORM_EPS,
                        &mut ln.y.slice_mut(..b * out),
                        &mut ln.mean.slice_mut(..b),
                        &mut ln.rstd.slice_mut(..b),
                    )?;
                    relu::forward(gpu, &ln.y.slice(..b * out), &mut ln.a.slice_mut(..b * out))?;
                    cast::f32_to_f16(
                        gpu,
                        &ln.a.slice(..b * out),
                        &mut cur.out16.slice_mut(..b * out),
                    )?;
                }
                _ => {
                    let epi = Epilogue::bias(&bias, !last);
                    gemm(
                        gpu,
                        shape,
                        &input,
                        &w,
                        &epi,
                        &mut cur.out16.slice_mut(..b * out),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Backward pass from the f16 dlogits in `bufs.last().dz16`; fills the (scaled) gradients.
    fn backward(&mut self, x_off: usize, b: usize) -> Result<()> {
        let gpu = &*self.gpu;
        let n = self.cfg.linear_count();
        for l in (0..n).rev() {
            let (fan_in, out) = (self.cfg.layers[l], self.cfg.layers[l + 1]);
            let lp = self.layers[l];
            let last = l + 1 == n;
            let (below, rest) = self.bufs.split_at_mut(l);
            let cur = &mut rest[0];
            if !last {
                // The gradient of this layer's output, left by layer l+1's dgrad in g16[l+1].
                let g = self.g16[l + 1].slice(..b * out);
                match (&mut cur.ln, lp.ln) {
                    (Some(ln), Some((gi, bi))) => {
                        cast::f16_to_f32(gpu, &g, &mut ln.g1.slice_mut(..b * out))?;
                        relu::backward(
                            gpu,
                            &ln.g1.slice(..b * out),
                            &ln.a.slice(..b * out),
                            &mut ln.g2.slice_mut(..b * out),
                        )?;
                        let (dg, db) = pair_mut(&mut self.grads, gi, bi);
                        layernorm::backward(
                            gpu,
                            &ln.g2.slice(..b * out),
                            &ln.z.slice(..b * out),
                            &ln.mean.slice(..b),
                            &ln.rstd.slice(..b),
                            &self.masters[gi],
                            b,
                            out,
                            &mut ln.g1.slice_mut(..b * out),
                            dg,
                            db,
                        )?;
                        cast::f32_to_f16(
                            gpu,
                            &ln.g1.slice(..b * out),
                            &mut cur.dz16.slice_mut(..b * out),
                        )?;
                    }
                    _ => {
                        relu::backward(
                            gpu,
                            &g,
                            &cur.out16.slice(..b * out),
                            &mut cur.dz16.slice_mut(..b * out),
                        )?;
                    }
                }
            }
            let dz = cur.dz16.slice(..b * out);
            let input = match below.last() {
                Some(prev) => prev.out16.slice(..b * fan_in),
                None => self.epoch_x.slice(x_off..x_off + b * fan_in),
            };
            gemm(
                gpu,
                GemmShape::new(Layout::Wgrad, out, fan_in, b),
                &dz,
                &input,
                &Epilogue::plain(),
                &mut self.grads[lp.w],
            )?;
            bias_grad(gpu, &dz, b, out, &mut self.grads[lp.b])?;
            if l > 0 {
                gemm(
                    gpu,
                    GemmShape::new(Layout::Dgrad, b, fan_in, out),
                    &dz,
                    &self.halves[lp.w],
                    &Epilogue::plain(),
                    &mut self.g16[l].slice_mut(..b * fan_in),
                )?;
            }
        }
        Ok(())
    }

    /// Appends (loss, scale, found_inf) of the step to the record buffer (sized in
    /// [`Backend::load_epoch`] for a whole epoch, so a step never allocates).
    fn record(&mut self) -> Result<()> {
        let stream = self.gpu.stream();
        let at = self.pending * RECORD;
        let copy = |src: &DeviceBuffer<f32>, dst: &mut DeviceBuffer<f32>, i: usize| {
            stream
                .memcpy_dtod(&src.slice(0..1), &mut dst.slice_mut(at + i..at + i + 1))
                .map_err(Error::driver("recording a step"))
        };
        copy(&self.loss, &mut self.records, 0)?;
        copy(&self.scale, &mut self.records, 1)?;
        copy(&self.found_inf, &mut self.records, 2)?;
        self.pending += 1;
        Ok(())
    }
}

/// Two distinct elements of a slice, mutably.
fn pair_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert!(i < j, "parameter order puts γ before β");
    let (a, b) = v.split_at_mut(j);
    (&mut a[i], &mut b[0])
}

impl Backend for GpuBackend {
    fn device(&self) -> String {
        let i = self.gpu.info();
        format!("cuda:{} ({})", i.ordinal, i.name)
    }

    fn load_epoch(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        check_samples("train::GpuBackend::load_epoch", &self.cfg, images, labels)?;
        let x: Vec<f16> = images.iter().map(|&v| f16::from_f32(v)).collect();
        if self.epoch_x.len() < x.len().max(1) || self.epoch_y.len() < labels.len().max(1) {
            self.epoch_x = self.gpu.alloc_zeros(x.len().max(1))?;
            self.epoch_y = self.gpu.alloc_zeros(labels.len().max(1))?;
        }
        let stream = self.gpu.stream();
        stream
            .memcpy_htod(&x, &mut self.epoch_x.slice_mut(..x.len()))
            .map_err(Error::driver("uploading the epoch's images"))?;
        stream
            .memcpy_htod(labels, &mut self.epoch_y.slice_mut(..labels.len()))
            .map_err(Error::driver("uploading the epoch's labels"))?;
        self.epoch_len = labels.len();
        // Room for every step of the epoch (at most one per sample) plus what is still unread.
        let need = (self.pending + labels.len()) * RECORD;
        if self.records.len() < need {
            let mut bigger = self.gpu.alloc_zeros::<f32>(need)?;
            if self.pending > 0 {
                stream
                    .memcpy_dtod(
                        &self.records.slice(..self.pending * RECORD),
                        &mut bigger.slice_mut(..self.pending * RECORD),
                    )
                    .map_err(Error::driver("growing the step records"))?;
            }
            self.records = bigger;
        }
        Ok(())
    }

    fn step(&mut self, first: usize, batch: usize) -> Result<()> {
        check_batch("train::GpuBackend::step", first, batch, self.epoch_len)?;
        if batch > self.batch_cap {
            return Err(unsupported(format!(
                "batch {batch} exceeds the {} the backend was built for",
                self.batch_cap
            )));
        }
        if (self.pending + 1) * RECORD > self.records.len() {
            return Err(unsupported(format!(
                "{} step records are waiting: call take_records() at least once per epoch",
                self.pending
            )));
        }
        let (inputs, classes) = (self.cfg.inputs(), self.cfg.classes());
        self.forward(None, first * inputs, batch)?;
        let gpu_arc = self.gpu.clone();
        let gpu = &*gpu_arc;
        let last = self.bufs.last_mut().expect("validated: at least one layer");
        softmax::softmax_cross_entropy::<f16, f16, _, _, _, _, _>(
            gpu,
            &last.out16.slice(..batch * classes),
            &self.epoch_y.slice(first..first + batch),
            batch,
            classes,
            &self.scale,
            &mut last.dz16.slice_mut(..batch * classes),
            &mut self.loss,
        )?;
        self.backward(first * inputs, batch)?;

        self.stages.unscale()?;
        gpu.stream()
            .memset_zeros(&mut self.found_inf)
            .map_err(Error::driver("clearing found_inf"))?;
        unscale::unscale_and_check(gpu, &mut self.grads, &self.scale, &mut self.found_inf)?;
        self.stages.step()?;
        let mut params: Vec<GpuParamTensor<'_>> = self
            .masters
            .iter_mut()
            .zip(&self.grads)
            .zip(&mut self.halves)
            .map(|((m, g), h)| GpuParamTensor {
                master: m.slice_mut(..),
                grad: g.slice(..),
                half: h.slice_mut(..),
            })
            .collect();
        self.optimizer.step_scheduled(
            gpu,
            &self.opt,
            &self.schedule,
            &mut params,
            &self.found_inf,
        )?;
        drop(params);
        self.record()?;
        if let Some(c) = self.loss_scale.dynamic() {
            scaler::update_scale(gpu, &mut self.scale, &mut self.tracker, &self.found_inf, c)?;
        }
        self.stages.update()?;
        Ok(())
    }

    fn take_records(&mut self) -> Result<Vec<StepRecord>> {
        if self.pending == 0 {
            return Ok(Vec::new());
        }
        let raw = self
            .gpu
            .download(&self.records.slice(..self.pending * RECORD))?;
        self.pending = 0;
        let base = base_lr(&self.opt);
        Ok(raw
            .chunks_exact(RECORD)
            .map(|r| {
                let skipped = r[2] != 0.0;
                let lr = self.schedule.lr_at(base, self.real_steps);
                if !skipped {
                    self.real_steps += 1;
                }
                StepRecord {
                    loss: r[0],
                    scale: r[1],
                    skipped,
                    lr,
                }
            })
            .collect())
    }

    fn evaluate(&mut self, images: &[f32], labels: &[u32]) -> Result<Evaluation> {
        check_samples("train::GpuBackend::evaluate", &self.cfg, images, labels)?;
        let (inputs, classes) = (self.cfg.inputs(), self.cfg.classes());
        let x: Vec<f16> = images.iter().map(|&v| f16::from_f32(v)).collect();
        let xd = self.gpu.upload(&x)?;
        let mut eval = Evaluation {
            loss: 0.0,
            correct: 0,
            total: labels.len(),
        };
        for (c, y) in labels.chunks(self.batch_cap).enumerate() {
            let b = y.len();
            self.forward(Some(&xd), c * self.batch_cap * inputs, b)?;
            let last = self.bufs.last().expect("validated: at least one layer");
            let logits: Vec<f32> = self
                .gpu
                .download(&last.out16.slice(..b * classes))?
                .iter()
                .map(|v| v.to_f32())
                .collect();
            let mut d = vec![0f32; b * classes];
            eval.loss +=
                crate::cpu::softmax::softmax_cross_entropy(&logits, y, b, classes, 1.0, &mut d)?
                    * b as f64;
            eval.correct += count_correct(&logits, y, classes);
        }
        eval.loss /= labels.len().max(1) as f64;
        Ok(eval)
    }

    fn export(&mut self) -> Result<BackendState> {
        let specs = self.cfg.parameter_specs();
        let params = specs
            .iter()
            .zip(&self.masters)
            .map(|(s, m)| {
                Ok(Tensor {
                    name: s.name.clone(),
                    shape: s.shape.clone(),
                    data: self.gpu.download(m)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let st = self.optimizer.download(&self.gpu)?;
        let n = params.len();
        let take = |f: &dyn Fn(usize) -> Option<Vec<f32>>| {
            (0..n).map(|t| f(t).unwrap_or_default()).collect()
        };
        Ok(BackendState {
            params,
            optimizer_step: st.step_count(),
            momentum_started: st.momentum_started(),
            exp_avg: take(&|t| {
                st.exp_avg(t)
                    .or_else(|| st.momentum_buffer(t))
                    .map(<[f32]>::to_vec)
            }),
            exp_avg_sq: take(&|t| st.exp_avg_sq(t).map(<[f32]>::to_vec)),
            scaler: ScalerState {
                scale: self.gpu.download(&self.scale)?[0],
                growth_tracker: self.gpu.download(&self.tracker)?[0],
            },
        })
    }

    fn import(&mut self, state: &BackendState) -> Result<()> {
        check_params(
            "train::GpuBackend::import",
            &self.cfg.parameter_specs(),
            &state.params,
        )?;
        let host = restore_optimizer(&self.opt, &state.params, state)?;
        self.optimizer = GpuOptimizer::from_state(&self.gpu, &self.opt, &host)?;
        for (t, p) in state.params.iter().enumerate() {
            self.masters[t] = self.gpu.upload(&p.data)?;
            self.halves[t] = self
                .gpu
                .upload(&p.data.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>())?;
        }
        self.scale = self.gpu.upload(&[state.scaler.scale])?;
        self.tracker = self.gpu.upload(&[state.scaler.growth_tracker])?;
        self.real_steps = state.optimizer_step;
        Ok(())
    }

    fn scale(&mut self) -> Result<f32> {
        Ok(self.gpu.download(&self.scale)?[0])
    }

    fn optimizer(&self) -> &OptimizerConfig {
        &self.opt
    }
}
