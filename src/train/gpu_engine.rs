//! The GPU training step, generic over the 16-bit type of its half layers: the engine behind
//! [`super::gpu_backend::GpuBackend`] (whose documentation describes the step).

use super::backend::{Backend, BackendState, Evaluation, StepRecord};
use super::cpu_backend::{
    check_batch, check_params, check_samples, count_correct, export_state, import_dicts,
    layer_params,
};
use super::gpu_data::EpochData;
use super::gpu_layers::{self, Buf, Layer, Params, View};
use super::half::{narrow_vec, TrainHalf};
use super::{config::TrainConfig, memory};
use crate::amp::GradScaler;
use crate::cpu::optim::OptimizerConfig;
use crate::cpu::schedule::LrSchedule;
use crate::cuda::{DeviceBuffer, Gpu};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{init_parameters, MlpConfig, Tensor};
use crate::ops::blas::Blas;
use crate::ops::cross_entropy::{softmax_cross_entropy, Grad, Logit};
use crate::ops::{augment, scaler};
use crate::optim::{self, base_lr, GpuParam, Optimizer};
use cudarc::driver::{CudaGraph, DevicePtr};
use std::sync::Arc;

// The records, evaluation, export and import: a child module, so it sees the backend's fields.
#[path = "gpu_engine_state.rs"]
mod state;

// Values per step in the record buffer: loss, scale, found_inf, the non-finite mask's words.
use crate::ops::scaler::RECORD;

/// The GPU backend for half layers of type `H`.
pub(crate) struct Engine<H: TrainHalf> {
    gpu: Arc<Gpu>,
    cfg: MlpConfig,
    layers: Vec<Layer<H>>,
    /// cuBLAS, for f32 layers only (none for an all-f16 model).
    blas: Option<Blas>,
    opt: OptimizerConfig,
    schedule: LrSchedule,
    batch_cap: usize,
    masters: Vec<DeviceBuffer<f32>>,
    halves: Vec<DeviceBuffer<H>>,
    grads: Vec<DeviceBuffer<f32>>,
    /// The optimizer object, its moments and step counter on the device (created on `gpu`).
    optimizer: Box<dyn Optimizer + Send>,
    /// The loss scaler: scale, growth tracker and found_inf in device memory (on `gpu`).
    scaler: GradScaler,
    /// Real optimizer steps as of the last record read-back (the host's copy of the device
    /// counter, advanced from the records' skip flags).
    real_steps: u64,
    loss: DeviceBuffer<f32>,
    records: DeviceBuffer<f32>,
    /// Steps recorded on the device since the last read-back (the host's copy of `cursor[0]`).
    pending: usize,
    /// `[records written, the epoch's next sample]`, advanced by the step's bookkeeping kernel.
    cursor: DeviceBuffer<u32>,
    /// The host's copy of `cursor[1]`.
    next_first: usize,
    /// The training set on the device and the epoch's plan.
    data: EpochData,
    /// The step's batch, gathered by its first kernel, in layer 0's dtype, and its labels.
    batch_x: Buf<H>,
    batch_y: DeviceBuffer<u32>,
    graph: GraphState,
    /// Fused kernels where the model allows them (the classifier head).
    fused: bool,
    /// `--precision fp8`: the FP8 tensors' scaling state.
    fp8: Option<super::gpu_fp8::Fp8Run>,
    /// Parameters the optimizer keeps no working copy of: the FP8 layers' weights, which their
    /// casts read from the masters (2 bytes per element the step does not write).
    no_copy: Vec<bool>,
}

/// CUDA-graph mode: a full batch's whole step (its input gather included) replays as one graph,
/// captured on the second full step.
struct GraphState {
    enabled: bool,
    /// One full step has run eagerly (modules loaded, scratch sized).
    warm: bool,
    exec: Option<CudaGraph>,
    /// The scratch generation the graph was captured with.
    scratch: u64,
    /// The data's [`EpochData::signature`] and the record buffer's address it was captured
    /// with.
    data: ([u64; 8], u64),
}

fn unsupported(detail: String) -> Error {
    Error::InvalidArgument {
        op: "train::GpuBackend",
        detail,
    }
}

impl<H: TrainHalf> Engine<H> {
    /// The model of `train` with fresh parameters from its seed on `gpu`, with buffers for
    /// batches of up to `train.batch` samples, in CUDA-graph mode if `train.cuda_graph`.
    ///
    /// The backend works on a fork of `gpu` (a stream and scratch buffer of its own on the same
    /// context, ordered after the work queued on `gpu` so far; launch synchronisation as
    /// `gpu`'s at this point), so `gpu` can be shared with other threads and other backends.
    ///
    /// Errors: [`Error::InvalidArgument`] when `train` fails [`TrainConfig::validate`];
    /// [`Error::InsufficientMemory`] when the model does not fit in the GPU's free memory, before anything
    /// is allocated; [`Error::Driver`] when an allocation fails all the same.
    pub(crate) fn new(gpu: Arc<Gpu>, train: &TrainConfig) -> Result<Engine<H>> {
        let (cfg, opt, schedule, loss_scale) = (
            &train.model,
            train.optimizer,
            train.schedule,
            train.loss_scale,
        );
        let (batch, seed, cuda_graph) = (train.batch, train.seed, train.cuda_graph);
        train.validate()?;
        let gpu = gpu.fork()?;
        memory::check_gpu_model(&gpu, train)?;
        let params = init_parameters(cfg, seed);
        let masters = params
            .iter()
            .map(|p| gpu.upload(&p.data))
            .collect::<Result<Vec<_>>>()?;
        let halves = params
            .iter()
            .map(|p| gpu.upload(&narrow_vec::<H>(&p.data)))
            .collect::<Result<Vec<_>>>()?;
        let grads = params
            .iter()
            .map(|p| gpu.alloc_zeros(p.data.len()))
            .collect::<Result<Vec<_>>>()?;
        let lens: Vec<usize> = params.iter().map(|p| p.data.len()).collect();
        let mut optimizer = optim::for_config(&Device::Cuda(gpu.clone()), &opt, &lens)?;
        optimizer.set_schedule(schedule)?;
        let layers = gpu_layers::build(&gpu, cfg, &layer_params(cfg), batch)?;
        let blas = (0..cfg.linear_count())
            .any(|l| !cfg.half_layer(l))
            .then(|| Blas::new(&gpu))
            .transpose()?;
        Ok(Engine {
            cfg: cfg.clone(),
            layers,
            blas,
            opt,
            schedule,
            batch_cap: batch,
            masters,
            halves,
            grads,
            optimizer,
            scaler: {
                let mut s = GradScaler::new(&gpu, loss_scale)?;
                s.set_grad_clip(train.clip)?;
                s
            },
            real_steps: 0,
            loss: gpu.alloc_zeros(1)?,
            records: gpu.alloc_zeros(RECORD)?,
            pending: 0,
            cursor: gpu.alloc_zeros(2)?,
            next_first: 0,
            data: EpochData::empty(&gpu)?,
            batch_x: Buf::new(&gpu, cfg.half_layer(0), batch * cfg.inputs())?,
            batch_y: gpu.alloc_zeros(batch)?,
            graph: GraphState {
                enabled: cuda_graph,
                warm: false,
                exec: None,
                scratch: 0,
                data: ([0; 8], 0),
            },
            fused: true,
            no_copy: {
                let mut no_copy = vec![false; params.len()];
                for (l, lp) in layer_params(cfg).iter().enumerate() {
                    no_copy[lp.w] = cfg.fp8_layer(l);
                }
                no_copy
            },
            fp8: super::gpu_fp8::Fp8Run::new(&gpu, cfg)?,
            gpu,
        })
    }

    /// Turns CUDA-graph mode on or off (on by default through [`crate::train::TrainConfig`]).
    /// Graph replay runs the same kernels with the same arguments as eager steps, so results are
    /// bit-identical either way; it only removes the per-launch host overhead.
    pub(crate) fn set_cuda_graph(&mut self, on: bool) {
        self.graph.enabled = on;
        self.graph.exec = None;
        self.graph.warm = false;
    }

    /// Turns the step's fused kernels on or off (on by default). A model whose last layer is f16
    /// with at most 16 classes over an f16 ReLU layer whose width is a multiple of 32 (up to
    /// 1024) runs its classifier head (last GEMM, loss, both bias gradients, the last dgrad and
    /// the ReLU backward) as one kernel; off, the step launches the unfused ops one by one.
    /// The two agree within the ops' tolerances, not bit for bit (the head's f32 sums run in
    /// another order); each is deterministic. For comparisons; there is no reason to turn it off.
    pub(crate) fn set_fusion(&mut self, on: bool) {
        self.fused = on;
        self.graph.exec = None;
        self.graph.warm = false;
    }

    /// The handle the backend queues its work on: a fork of the `Gpu` it was built with (see
    /// [`GpuBackend::new`]); time or order its steps on this handle's stream.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Whether the steps are replaying a captured CUDA graph.
    pub(crate) fn graph_active(&self) -> bool {
        self.graph.exec.is_some()
    }

    /// Uploads inputs in layer 0's dtype (f16 for a half layer: the autocast cast).
    fn upload_inputs(&self, images: &[f32]) -> Result<Buf<H>> {
        Ok(if self.cfg.half_layer(0) {
            Buf::H(self.gpu.upload(&narrow_vec::<H>(images))?)
        } else {
            Buf::F(self.gpu.upload(images)?)
        })
    }

    /// What a captured step depends on besides the scratch buffer: see [`GraphState::data`].
    fn captured_with(&self) -> ([u64; 8], u64) {
        let records = self.records.device_ptr(self.gpu.stream()).0;
        (self.data.signature(&self.gpu), records)
    }

    /// After an epoch is loaded: the step cursor back to its first sample, and room in the
    /// record buffer for every step of the epoch (at most one per sample) plus the unread ones.
    fn epoch_loaded(&mut self) -> Result<()> {
        let stream = self.gpu.stream().clone();
        stream
            .memcpy_htod(&[0u32], &mut self.cursor.slice_mut(1..2))
            .map_err(Error::driver("resetting the epoch's sample cursor"))?;
        self.next_first = 0;
        let need = (self.pending + self.data.len()) * RECORD;
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
            self.records = bigger; // a graph captured over the old one recaptures
        }
        Ok(())
    }
}

/// The fused softmax-cross-entropy of a batch's logits, dlogits in the logits' dtype.
#[allow(clippy::too_many_arguments)] // the op's own argument list
fn cross_entropy<T: Logit + Grad>(
    gpu: &Gpu,
    logits: &DeviceBuffer<T>,
    labels: &cudarc::driver::CudaView<'_, u32>,
    rows: usize,
    classes: usize,
    scale: &DeviceBuffer<f32>,
    dlogits: &mut DeviceBuffer<T>,
    loss: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let n = rows * classes;
    softmax_cross_entropy::<T, T>(
        gpu,
        &logits.slice(..n),
        labels,
        rows,
        classes,
        scale,
        &mut dlogits.slice_mut(..n),
        loss,
    )
}

/// `len` elements of `buf` from `offset`, as a dtype-tagged view.
fn sample_view<H: TrainHalf>(buf: &Buf<H>, offset: usize, len: usize) -> View<'_, H> {
    match buf {
        Buf::H(b) => View::H(b.slice(offset..offset + len)),
        Buf::F(b) => View::F(b.slice(offset..offset + len)),
    }
}

impl<H: TrainHalf> Backend for Engine<H> {
    fn device(&self) -> String {
        let i = self.gpu.info();
        format!("cuda:{} ({})", i.ordinal, i.name)
    }

    fn load_epoch(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        self.data.load(&self.gpu, &self.cfg, images, labels)?;
        self.epoch_loaded()
    }

    fn keep_dataset(&mut self, images: &[f32], labels: &[u32]) -> Result<bool> {
        self.data.keep(&self.gpu, &self.cfg, images, labels)?;
        Ok(true)
    }

    fn load_epoch_plan(
        &mut self,
        order: &[u32],
        shifts: &[i32],
        side: usize,
        background: f32,
    ) -> Result<()> {
        let inputs = self.cfg.inputs();
        self.data
            .plan(&self.gpu, inputs, order, shifts, side, background)?;
        self.epoch_loaded()
    }

    fn step(&mut self, first: usize, batch: usize) -> Result<()> {
        check_batch("train::GpuBackend::step", first, batch, self.data.len())?;
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
        if first != self.next_first {
            // Not where the last step left the device cursor (a resumed epoch, or steps out of
            // order): move it.
            let at = u32::try_from(first).map_err(|_| unsupported(format!("sample {first}")))?;
            (self.gpu.stream())
                .memcpy_htod(&[at], &mut self.cursor.slice_mut(1..2))
                .map_err(Error::driver("moving the epoch's sample cursor"))?;
        }
        let graphable = self.graph.enabled && batch == self.batch_cap && !self.gpu.sync_launches();
        if !graphable {
            self.step_body(batch)?;
        } else {
            let captured_with = self.captured_with();
            if self.graph.scratch != self.gpu.scratch_generation()
                || self.graph.data != captured_with
            {
                // The scratch buffer, the data or the records moved, or the plan changed, since
                // the capture: capture again.
                self.graph.exec = None;
            }
            if let Some(g) = &self.graph.exec {
                g.launch()
                    .map_err(Error::driver("replaying the step's CUDA graph"))?;
            } else if !self.graph.warm {
                // The first full step runs eagerly: it loads every module and sizes the scratch
                // buffer, so the capture allocates nothing.
                self.step_body(batch)?;
                self.graph.warm = true;
            } else {
                let gpu = self.gpu.clone();
                match gpu.capture(|_| self.step_body(batch)) {
                    Ok(((), g)) => {
                        self.graph.scratch = self.gpu.scratch_generation();
                        self.graph.data = captured_with;
                        g.launch()
                            .map_err(Error::driver("launching the step's CUDA graph"))?;
                        self.graph.exec = Some(g);
                    }
                    Err(_) => {
                        // Something in the step cannot be captured: nothing it queued ran, so
                        // run it eagerly from now on (bit-identical, only slower).
                        self.graph.enabled = false;
                        self.scaler.restart_step();
                        self.step_body(batch)?;
                    }
                }
            }
        }
        self.pending += 1;
        self.next_first = first + batch;
        Ok(())
    }

    fn take_records(&mut self) -> Result<Vec<StepRecord>> {
        self.take_records_impl()
    }

    fn evaluate(&mut self, images: &[f32], labels: &[u32]) -> Result<Evaluation> {
        self.evaluate_impl(images, labels)
    }

    fn export(&mut self) -> Result<BackendState> {
        self.export_impl()
    }

    fn import(&mut self, state: &BackendState) -> Result<()> {
        self.import_impl(state)
    }

    fn scale(&mut self) -> Result<f32> {
        self.scaler.get_scale()
    }

    fn optimizer(&self) -> &OptimizerConfig {
        &self.opt
    }
}

impl<H: TrainHalf> Engine<H> {
    /// One AMP step on the `batch` samples at the device's sample cursor: the batch's gather,
    /// forward, loss at the scaler's scale, backward, the scaler's step (unscale + inf check,
    /// optimizer), the step's record, the scale update. No host synchronisation and no
    /// allocation once warm, so it can be captured in a CUDA graph.
    fn step_body(&mut self, batch: usize) -> Result<()> {
        let (inputs, classes) = (self.cfg.inputs(), self.cfg.classes());
        let gpu_arc = self.gpu.clone();
        let gpu = &*gpu_arc;
        let source = self.data.source(inputs);
        let n = batch * inputs;
        // A first layer in FP8 with a bf16 input takes the batch straight into its E4M3 input
        // (the gather fused with its input cast); the bf16 batch is then not written, and no
        // layer reads it.
        let fused_input = matches!(self.batch_x, Buf::H(_))
            && self.fp8.is_some()
            && self
                .layers
                .first_mut()
                .is_some_and(|first| first.fp8_direct_input().is_some());
        if let (true, Some(run)) = (fused_input, &mut self.fp8) {
            // Every FP8 layer's weight cast rides along with the stage.
            let masters = &self.masters;
            let mut fp8_layers: Vec<_> = self
                .layers
                .iter_mut()
                .filter_map(|l| l.fp8_weight(masters))
                .collect();
            super::gpu_fp8::gather_input(
                gpu,
                run,
                &mut fp8_layers,
                &source,
                &self.cursor,
                &mut self.batch_y,
                batch,
            )?;
        } else {
            match &mut self.batch_x {
                Buf::H(x) => augment::gather_batch(
                    gpu,
                    &source,
                    &self.cursor,
                    &mut x.slice_mut(..n),
                    &mut self.batch_y,
                    batch,
                )?,
                Buf::F(x) => augment::gather_batch(
                    gpu,
                    &source,
                    &self.cursor,
                    &mut x.slice_mut(..n),
                    &mut self.batch_y,
                    batch,
                )?,
            }
        }
        let (x, labels) = (
            sample_view(&self.batch_x, 0, n),
            self.batch_y.slice(..batch),
        );
        let params = Params {
            masters: &self.masters,
            halves: &self.halves,
        };
        let head = self.fused && gpu_layers::head_fits(&self.layers);
        let count = self.layers.len() - usize::from(head);
        gpu_layers::forward(
            gpu,
            &mut self.blas,
            &mut self.layers,
            &params,
            &x,
            batch,
            count,
            (&mut self.fp8, true),
        )?;
        let (scale, loss) = (self.scaler.scale(), &mut self.loss);
        if head {
            gpu_layers::head(
                gpu,
                &mut self.layers,
                &params,
                &mut self.grads,
                labels,
                scale,
                loss,
                batch,
            )?;
        } else {
            let last = self
                .layers
                .last_mut()
                .expect("validated: at least one layer");
            match (&last.out_buf, &mut last.dz) {
                (Buf::H(logits), Some(Buf::H(d))) => {
                    cross_entropy(gpu, logits, &labels, batch, classes, scale, d, loss)?
                }
                (Buf::F(logits), Some(Buf::F(d))) => {
                    cross_entropy(gpu, logits, &labels, batch, classes, scale, d, loss)?
                }
                _ => unreachable!("the last layer has dlogits, in its logits' dtype"),
            }
        }
        // At scale 1 without a norm the unscale would only read the gradients to check them:
        // the weight-gradient GEMMs check what they write instead.
        let check_wgrad = self.scaler.only_checks();
        gpu_layers::backward(
            gpu,
            &mut self.blas,
            &mut self.layers,
            &params,
            &mut self.grads,
            &x,
            batch,
            head,
            &mut self.fp8,
            check_wgrad,
        )?;

        // Unscale + inf check, the step's record and the scale update, and the optimizer (memset
        // of found_inf, one unscale launch whose last block records the step and updates the
        // scale, one fused optimizer launch at the schedule's rate, skipped on the device on
        // inf/NaN). The record holds the scale the step ran with.
        let mut params: Vec<GpuParam<'_, H>> = (self.masters.iter_mut())
            .zip(&mut self.grads)
            .zip(&mut self.halves)
            .zip(&self.no_copy)
            .map(|(((m, g), h), &none)| GpuParam {
                master: m.slice_mut(..),
                grad: g.slice_mut(..),
                half: if none {
                    h.slice_mut(0..0)
                } else {
                    h.slice_mut(..)
                },
            })
            .collect();
        let mut target = scaler::RecordTarget {
            loss: &self.loss,
            records: &mut self.records,
            cursor: &mut self.cursor,
            advance: batch,
        };
        let mut sources = gpu_layers::grad_sources(&mut self.layers, params.len());
        self.scaler
            .step_recording(&mut *self.optimizer, &mut params, &mut sources, &mut target)?;
        if let Some(fp8) = &mut self.fp8 {
            fp8.update(gpu)?;
        }
        Ok(())
    }
}
