//! The CPU training step, generic over the 16-bit type of its half layers: the engine behind
//! [`super::cpu_backend::CpuBackend`] (whose documentation describes the step).

use super::backend::{Backend, BackendState, Evaluation, StepRecord, EVAL_BATCH};
use super::backend_common::{
    check_batch, check_params, check_samples, count_correct, export_state, import_dicts,
};
use super::config::TrainConfig;
use super::cpu_backend::{layer_params, LayerParams};
use super::cpu_fp8::{self, Fp8Acts};
use super::half::{narrow_vec, round_to, widen_vec, TrainHalf};
use super::locate::{layer_name, OverflowSite, Pass, Probe};
use super::memory;
use crate::amp::CpuGradScaler;
use crate::cpu::gemm::{bias_grad, gemm, Epilogue};
use crate::cpu::optim::OptimizerConfig;
use crate::cpu::scaler::ScalerState;
use crate::cpu::schedule::LrSchedule;
use crate::cpu::{cross_entropy, layernorm, relu};
use crate::device::Device;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::nn::{init_parameters, MlpConfig, Tensor, LAYERNORM_EPS};
use crate::optim::{self, Optimizer, Param};
use crate::shape::{GemmShape, Layout};

/// What the forward pass keeps for the backward pass, per linear layer `l`.
struct LayerActs {
    /// The layer's input (`[b, in]`, f32 storage; `H` values for a half layer).
    input: Vec<f32>,
    /// LayerNorm layers: the GEMM output (LayerNorm's input), mean and rstd.
    ln: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
    /// Hidden layers: the ReLU output (the next layer's input before rounding).
    act: Vec<f32>,
    /// FP8 layers: the FP8 input and weight.
    fp8: Option<Fp8Acts>,
}

/// The CPU backend for half layers of type `H`.
pub(crate) struct CpuEngine<H: TrainHalf> {
    cfg: MlpConfig,
    layers: Vec<LayerParams>,
    opt: OptimizerConfig,
    schedule: LrSchedule,
    params: Vec<Tensor>,
    halves: Vec<Vec<H>>,
    grads: Vec<Vec<f32>>,
    /// The optimizer object on the host (its config's rate is the schedule's base).
    optimizer: Box<dyn Optimizer + Send>,
    scaler: CpuGradScaler,
    epoch_images: Vec<f32>,
    epoch_labels: Vec<u32>,
    records: Vec<StepRecord>,
    /// The parameters' `state_dict` names (for the overflow locator's reports).
    names: Vec<String>,
    /// Per linear layer, its first FP8 scaling state (FP8 layers only).
    fp8_slots: Vec<Option<usize>>,
    /// Delayed scaling's states of every FP8 tensor ([`cpu_fp8`]'s order).
    fp8: Vec<crate::cpu::fp8::ScalingState>,
}

impl<H: TrainHalf> CpuEngine<H> {
    /// The model of `train` with fresh parameters from its seed.
    ///
    /// Errors: [`Error::InvalidArgument`] for an invalid model, schedule or loss scaling;
    /// [`Error::InsufficientMemory`] when the model does not fit in the host's free memory, before anything
    /// is allocated.
    pub(crate) fn new(train: &TrainConfig) -> Result<CpuEngine<H>> {
        let (cfg, opt, schedule, loss_scale, seed) = (
            &train.model,
            train.optimizer,
            train.schedule,
            train.loss_scale,
            train.seed,
        );
        cfg.validate()?;
        schedule.validate()?;
        loss_scale.validate()?;
        memory::check_cpu_model(train)?;
        let params = init_parameters(cfg, seed);
        let lens: Vec<usize> = params.iter().map(|p| p.data.len()).collect();
        let mut optimizer = optim::for_config(&Device::Cpu, &opt, &lens)?;
        optimizer.set_schedule(schedule)?;
        Ok(CpuEngine {
            cfg: cfg.clone(),
            layers: layer_params(cfg),
            optimizer,
            opt,
            schedule,
            halves: params.iter().map(|p| narrow_vec(&p.data)).collect(),
            grads: lens.iter().map(|&n| vec![0.0; n]).collect(),
            params,
            scaler: {
                let mut s = CpuGradScaler::new(loss_scale)?;
                s.set_grad_clip(train.clip)?;
                s
            },
            epoch_images: Vec::new(),
            epoch_labels: Vec::new(),
            records: Vec::new(),
            names: (cfg.parameter_specs().into_iter())
                .map(|s| s.name)
                .collect(),
            fp8_slots: cpu_fp8::slots(cfg),
            fp8: cpu_fp8::fresh_states(cfg),
        })
    }

    /// Forward pass over `b` samples; returns the per-layer activations and the logits (f32
    /// storage; `H` values when the last layer is half).
    ///
    /// With a `probe` ([`super::locate`]), every op's output is checked for inf/NaN as it is
    /// produced (the input batch too).
    fn forward(
        &self,
        x: &[f32],
        b: usize,
        mut probe: Option<&mut Probe>,
    ) -> Result<(Vec<LayerActs>, Vec<f32>)> {
        let n_layers = self.cfg.linear_count();
        let mut acts = Vec::with_capacity(n_layers);
        let mut input = x.to_vec();
        if let Some(p) = probe.as_deref_mut() {
            p.check(Pass::Input, || "the batch".into(), "f32", x, None);
        }
        for (l, lp) in self.layers.iter().enumerate() {
            let name = || layer_name(&self.names[lp.w]);
            let (fan_in, out) = (self.cfg.layers[l], self.cfg.layers[l + 1]);
            let half = self.cfg.half_layer(l);
            let last = l + 1 == n_layers;
            if half {
                round_to::<H>(&mut input);
            }
            let shape = GemmShape::new(Layout::Forward, b, out, fan_in);
            let bias = &self.params[lp.b].data;
            // Hidden layers without LayerNorm fuse their ReLU into the GEMM; LayerNorm layers
            // produce the f32 GEMM output that LayerNorm reads (autocast's f32 input).
            let fuse_relu = !last && lp.ln.is_none();
            let mut z = vec![0f32; b * out];
            let mut fp8_acts = None;
            if let Some(base) = self.fp8_slots[l] {
                // The output feeds LayerNorm in f32, like the bf16 layers' GEMM output.
                let (y, a) = cpu_fp8::forward::<H>(
                    &self.cfg.fp8,
                    &self.fp8[base..base + cpu_fp8::PER_LAYER],
                    &input,
                    &self.params[lp.w].data,
                    bias,
                    (b, out, fan_in),
                    fuse_relu,
                    lp.ln.is_some(),
                )?;
                z = y;
                fp8_acts = Some(a);
                if let Some(p) = probe.as_deref_mut() {
                    let op = || format!("{} output (FP8 GEMM)", name());
                    p.check(Pass::Forward, op, H::DTYPE, &z, None);
                }
            } else if half {
                let x16: Vec<H> = narrow_vec(&input);
                let epi = Epilogue::bias(bias, fuse_relu);
                if lp.ln.is_some() {
                    gemm(shape, &x16, &self.halves[lp.w], &epi, &mut z)?;
                } else {
                    let mut z16 = vec![H::default(); b * out];
                    gemm(shape, &x16, &self.halves[lp.w], &epi, &mut z16)?;
                    z = widen_vec(&z16);
                    if let Some(p) = probe.as_deref_mut() {
                        let wide = || {
                            let mut w = vec![0f32; b * out];
                            let done = gemm(shape, &x16, &self.halves[lp.w], &epi, &mut w);
                            done.map(|()| w).unwrap_or_default()
                        };
                        let op = || format!("{} output", name());
                        p.check_half(Pass::Forward, op, H::DTYPE, &z, &wide);
                    }
                }
            } else {
                let epi = Epilogue::bias(bias, fuse_relu);
                gemm(shape, &input, &self.params[lp.w].data, &epi, &mut z)?;
            }
            // The f32 outputs (a 16-bit one was checked before its widening, with its range).
            let stored_f32 = !half || lp.ln.is_some();
            if let (Some(p), true) = (probe.as_deref_mut(), stored_f32) {
                p.check(
                    Pass::Forward,
                    || format!("{} output", name()),
                    "f32",
                    &z,
                    None,
                );
            }
            let (ln, act) = match lp.ln {
                Some((g, be)) => {
                    let mut y = vec![0f32; b * out];
                    let (mut mean, mut rstd) = (vec![0f32; b], vec![0f32; b]);
                    layernorm::forward(
                        &z,
                        b,
                        out,
                        &self.params[g].data,
                        &self.params[be].data,
                        LAYERNORM_EPS,
                        &mut y,
                        &mut mean,
                        &mut rstd,
                    )?;
                    if let Some(p) = probe.as_deref_mut() {
                        let op = || format!("LayerNorm after {}", name());
                        p.check(Pass::Forward, op, "f32", &y, None);
                    }
                    let mut a = vec![0f32; b * out];
                    relu::forward(&y, &mut a)?;
                    (Some((z, mean, rstd)), a)
                }
                None => (None, z),
            };
            let next = act.clone();
            acts.push(LayerActs {
                input,
                ln,
                act,
                fp8: fp8_acts,
            });
            input = next;
        }
        let logits = acts
            .last_mut()
            .map(|a| std::mem::take(&mut a.act))
            .unwrap_or_default();
        Ok((acts, logits))
    }

    /// Replays the forward and backward of a step on samples `first..first + batch` of the
    /// loaded epoch at loss scale `scale`, checking every op's output: the first that held an
    /// inf/NaN ([`super::locate`]), or `None` when all were finite. Overwrites the gradient
    /// buffers (a step recomputes them) and nothing else: weights, optimizer and scaler stay.
    ///
    /// Errors: as [`Backend::step`]'s batch check.
    pub(crate) fn locate(
        &mut self,
        first: usize,
        batch: usize,
        scale: f32,
    ) -> Result<Option<OverflowSite>> {
        let inputs = self.cfg.inputs();
        check_batch(
            "train::CpuBackend::locate",
            first,
            batch,
            self.epoch_labels.len(),
        )?;
        let x = self.epoch_images[first * inputs..(first + batch) * inputs].to_vec();
        let labels = self.epoch_labels[first..first + batch].to_vec();
        let mut probe = Probe::default();
        let (acts, logits) = self.forward(&x, batch, Some(&mut probe))?;
        let (loss, dlogits) = self.loss_and_grad(&logits, &labels, batch, scale)?;
        probe.check(
            Pass::Loss,
            || "the cross-entropy loss".into(),
            "f32",
            &[loss as f32],
            None,
        );
        let classes = self.cfg.classes();
        let op = || {
            let s = super::health::format_scale(scale);
            format!("the loss gradient (dlogits × loss scale {s})")
        };
        if self.cfg.half_layer(self.cfg.linear_count() - 1) {
            let wide = || {
                let l16: Vec<f32> = widen_vec(&narrow_vec::<H>(&logits));
                let mut d = vec![0f32; batch * classes];
                let done = cross_entropy::softmax_cross_entropy(
                    &l16, &labels, batch, classes, scale, &mut d,
                );
                done.map(|_| d).unwrap_or_default()
            };
            probe.check_half(Pass::Loss, op, H::DTYPE, &dlogits, &wide);
        } else {
            probe.check(Pass::Loss, op, "f32", &dlogits, None);
        }
        self.backward(&acts, dlogits, batch, Some(&mut probe), false)?;
        Ok(probe.into_site())
    }

    /// Mean loss and dlogits (scaled by `scale`, in the last layer's dtype, f32 storage).
    fn loss_and_grad(
        &self,
        logits: &[f32],
        labels: &[u32],
        b: usize,
        scale: f32,
    ) -> Result<(f64, Vec<f32>)> {
        let classes = self.cfg.classes();
        if self.cfg.half_layer(self.cfg.linear_count() - 1) {
            let mut d = vec![H::default(); b * classes];
            let loss = cross_entropy::softmax_cross_entropy(
                &narrow_vec::<H>(logits),
                labels,
                b,
                classes,
                scale,
                &mut d,
            )?;
            Ok((loss.into(), widen_vec(&d)))
        } else {
            let mut d = vec![0f32; b * classes];
            let loss =
                cross_entropy::softmax_cross_entropy(logits, labels, b, classes, scale, &mut d)?;
            Ok((f64::from(loss), d))
        }
    }

    /// Backward pass: fills `self.grads` (scaled) from dlogits; with a `probe`, every op's
    /// output is checked as it is produced.
    fn backward(
        &mut self,
        acts: &[LayerActs],
        dlogits: Vec<f32>,
        b: usize,
        mut probe: Option<&mut Probe>,
        record: bool,
    ) -> Result<()> {
        let mut g = dlogits;
        for l in (0..self.cfg.linear_count()).rev() {
            let lp = self.layers[l];
            // Only a probe's messages need the layer's name.
            let name = || layer_name(&self.names[lp.w]);
            let (fan_in, out) = (self.cfg.layers[l], self.cfg.layers[l + 1]);
            let half = self.cfg.half_layer(l);
            let last = l + 1 == self.cfg.linear_count();
            // g is the gradient of this layer's output (after its ReLU); turn it into the
            // gradient of the GEMM output.
            let mut dz = if last {
                g
            } else {
                let a = &acts[l].act;
                let mut d = vec![0f32; b * out];
                relu::backward(&g, a, &mut d)?;
                if let (Some((g_idx, be_idx)), Some((z, mean, rstd))) = (lp.ln, &acts[l].ln) {
                    let mut dx = vec![0f32; b * out];
                    let (mut dgamma, mut dbeta) = (vec![0f32; out], vec![0f32; out]);
                    layernorm::backward(
                        &d,
                        z,
                        mean,
                        rstd,
                        &self.params[g_idx].data,
                        b,
                        out,
                        &mut dx,
                        &mut dgamma,
                        &mut dbeta,
                    )?;
                    if let Some(p) = probe.as_deref_mut() {
                        let what = |t: &str| format!("LayerNorm backward after {} ({t})", name());
                        p.check(
                            Pass::Backward,
                            || what("its input's gradient"),
                            "f32",
                            &dx,
                            None,
                        );
                        p.check(
                            Pass::Backward,
                            || what("weight gradient"),
                            "f32",
                            &dgamma,
                            None,
                        );
                        p.check(
                            Pass::Backward,
                            || what("bias gradient"),
                            "f32",
                            &dbeta,
                            None,
                        );
                    }
                    self.grads[g_idx] = dgamma;
                    self.grads[be_idx] = dbeta;
                    d = dx;
                }
                d
            };
            let x = &acts[l].input;
            let wshape = GemmShape::new(Layout::Wgrad, out, fan_in, b);
            let dshape = GemmShape::new(Layout::Dgrad, b, fan_in, out);
            let plain = Epilogue::plain();
            let mut dx = vec![0f32; if l > 0 { b * fan_in } else { 0 }];
            let (wname, bname) = (&self.names[lp.w], &self.names[lp.b]);
            if let (Some(base), Some(fa)) = (self.fp8_slots[l], &acts[l].fp8) {
                round_to::<H>(&mut dz);
                if let Some(p) = probe.as_deref_mut() {
                    let op = || format!("the gradient of {}'s output", name());
                    p.check(Pass::Backward, op, H::DTYPE, &dz, None);
                }
                let mut db = vec![0f32; out];
                let amax = cpu_fp8::backward::<H>(
                    &self.cfg.fp8,
                    &self.fp8[base..base + cpu_fp8::PER_LAYER],
                    fa,
                    &dz,
                    (b, out, fan_in),
                    (&mut self.grads[lp.w], &mut db),
                    (l > 0).then_some(&mut dx),
                )?;
                self.grads[lp.b] = db;
                if record {
                    let [x, w] = fa.amax;
                    self.fp8[base + cpu_fp8::INPUT].record(x);
                    self.fp8[base + cpu_fp8::WEIGHT].record(w);
                    self.fp8[base + cpu_fp8::GRAD].record(amax);
                }
                if let (Some(p), true) = (probe.as_deref_mut(), l > 0) {
                    let op = || format!("dgrad of {} (its input's gradient, FP8 GEMM)", name());
                    p.check(Pass::Backward, op, H::DTYPE, &dx, None);
                }
            } else if half {
                // The values before the rounding, kept only for a probe's report.
                let wide = probe.is_some().then(|| dz.clone());
                round_to::<H>(&mut dz);
                if let (Some(p), Some(wide)) = (probe.as_deref_mut(), wide) {
                    let op = || {
                        format!(
                            "the gradient of {}'s output, rounded to {}",
                            name(),
                            H::DTYPE
                        )
                    };
                    p.check_half(Pass::Backward, op, H::DTYPE, &dz, &|| wide.clone());
                }
                let (dz16, x16): (Vec<H>, Vec<H>) = (narrow_vec(&dz), narrow_vec(x));
                gemm(wshape, &dz16, &x16, &plain, &mut self.grads[lp.w])?;
                bias_grad(&dz16, b, out, &mut self.grads[lp.b])?;
                if l > 0 {
                    let mut dx16 = vec![H::default(); b * fan_in];
                    gemm(dshape, &dz16, &self.halves[lp.w], &plain, &mut dx16)?;
                    dx = widen_vec(&dx16);
                    if let Some(p) = probe.as_deref_mut() {
                        let w16 = &self.halves[lp.w];
                        let wide = || {
                            let mut w = vec![0f32; b * fan_in];
                            let done = gemm(dshape, &dz16, w16, &plain, &mut w);
                            done.map(|()| w).unwrap_or_default()
                        };
                        let op = || format!("dgrad of {} (its input's gradient)", name());
                        p.check_half(Pass::Backward, op, H::DTYPE, &dx, &wide);
                    }
                }
            } else {
                gemm(wshape, &dz, x, &plain, &mut self.grads[lp.w])?;
                bias_grad(&dz, b, out, &mut self.grads[lp.b])?;
                if l > 0 {
                    gemm(dshape, &dz, &self.params[lp.w].data, &plain, &mut dx)?;
                }
            }
            if let Some(p) = probe.as_deref_mut() {
                let (gw, gb) = (&self.grads[lp.w], &self.grads[lp.b]);
                let op = |t: &str, n: &str| format!("{t} gradient of {} ({n})", name());
                p.check(Pass::Backward, || op("weight", wname), "f32", gw, None);
                p.check(Pass::Backward, || op("bias", bname), "f32", gb, None);
                if !half && l > 0 {
                    let op = || format!("dgrad of {} (its input's gradient)", name());
                    p.check(Pass::Backward, op, "f32", &dx, None);
                }
            }
            g = dx;
        }
        Ok(())
    }
}

impl<H: TrainHalf> Backend for CpuEngine<H> {
    fn device(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn load_epoch(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        check_samples("train::CpuBackend::load_epoch", &self.cfg, images, labels)?;
        self.epoch_images = images.to_vec();
        self.epoch_labels = labels.to_vec();
        Ok(())
    }

    fn step(&mut self, first: usize, batch: usize) -> Result<()> {
        let inputs = self.cfg.inputs();
        check_batch(
            "train::CpuBackend::step",
            first,
            batch,
            self.epoch_labels.len(),
        )?;
        let x = &self.epoch_images[first * inputs..(first + batch) * inputs];
        let labels = &self.epoch_labels[first..first + batch];
        // The AMP step: the loss gradient at the scaler's scale, then scaler.step (unscale,
        // inf check, the optimizer at the schedule's rate, skipped on inf/NaN) and update.
        let scale = self.scaler.scale();
        let (acts, logits) = self.forward(x, batch, None)?;
        let (loss, dlogits) = self.loss_and_grad(&logits, labels, batch, scale)?;
        self.backward(&acts, dlogits, batch, None, true)?;

        let lr = (self.schedule).lr_at(optim::base_lr(&self.opt), self.optimizer.step_count()?);
        let mut params: Vec<Param<'_, H>> = (self.params.iter_mut())
            .zip(&mut self.grads)
            .zip(&mut self.halves)
            .map(|((p, g), h)| Param {
                master: &mut p.data,
                grad: g,
                half: h,
            })
            .collect();
        let outcome = self.scaler.step(&mut *self.optimizer, &mut params)?;
        self.scaler.update()?;
        cpu_fp8::update(&self.cfg.fp8, &mut self.fp8);
        self.records.push(StepRecord {
            loss: loss as f32,
            scale,
            skipped: outcome.skipped(),
            lr,
            nonfinite: self.scaler.nonfinite_grads(),
            grad_norm: self.scaler.last_grad_norm(),
        });
        Ok(())
    }

    fn take_records(&mut self) -> Result<Vec<StepRecord>> {
        Ok(std::mem::take(&mut self.records))
    }

    fn evaluate(&mut self, images: &[f32], labels: &[u32]) -> Result<Evaluation> {
        check_samples("train::CpuBackend::evaluate", &self.cfg, images, labels)?;
        let (inputs, classes) = (self.cfg.inputs(), self.cfg.classes());
        let mut eval = Evaluation {
            loss: 0.0,
            correct: 0,
            total: labels.len(),
        };
        for (x, y) in images
            .chunks(EVAL_BATCH * inputs)
            .zip(labels.chunks(EVAL_BATCH))
        {
            let b = y.len();
            let (_, logits) = self.forward(x, b, None)?;
            let (loss, _) = self.loss_and_grad(&logits, y, b, 1.0)?;
            eval.loss += loss * b as f64;
            eval.correct += count_correct(&logits, y, classes);
        }
        eval.loss /= labels.len().max(1) as f64;
        Ok(eval)
    }

    fn export(&mut self) -> Result<BackendState> {
        let dict = self.scaler.state_dict();
        let scaler = ScalerState {
            scale: dict.scale,
            growth_tracker: dict.growth_tracker,
        };
        export_state(
            self.params.clone(),
            &self.optimizer.state_dict()?,
            scaler,
            self.fp8.clone(),
        )
    }

    fn import(&mut self, state: &BackendState) -> Result<()> {
        let specs = self.cfg.parameter_specs();
        check_params("train::CpuBackend::import", &specs, &state.params)?;
        let (opt, scaler) =
            import_dicts(&self.opt, self.schedule, self.scaler.loss_scale(), state)?;
        scaler.validate()?; // so that nothing changes unless all load
        cpu_fp8::check_states("train::CpuBackend::import", &self.cfg, &state.fp8)?;
        self.optimizer.load_state_dict(&opt)?;
        self.scaler.load_state_dict(&scaler)?;
        self.params = state.params.clone();
        self.halves = self.params.iter().map(|p| narrow_vec(&p.data)).collect();
        self.fp8 = state.fp8.clone();
        Ok(())
    }

    fn scale(&mut self) -> Result<f32> {
        Ok(self.scaler.scale())
    }

    fn optimizer(&self) -> &OptimizerConfig {
        &self.opt
    }
}
