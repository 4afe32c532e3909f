//! The GPU backend's reads and writes of its state: the step records, evaluation, and the
//! export and import of parameters, optimizer and scaler (a child module of `gpu_engine`, so it
//! sees the backend's fields).

use super::*;
use crate::amp::NonFinite;
use crate::cpu::scaler::ScalerState;

impl<H: TrainHalf> Engine<H> {
    pub(super) fn take_records_impl(&mut self) -> Result<Vec<StepRecord>> {
        if self.pending == 0 {
            return Ok(Vec::new());
        }
        let raw = self
            .gpu
            .download(&self.records.slice(..self.pending * RECORD))?;
        (self.gpu.stream())
            .memcpy_htod(&[0u32], &mut self.cursor.slice_mut(0..1))
            .map_err(Error::driver("resetting the record cursor"))?;
        self.pending = 0;
        let base = base_lr(&self.opt);
        let norm_clipping = matches!(self.scaler.grad_clip(), crate::amp::GradClip::Norm { .. });
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
                    nonfinite: NonFinite::from_words(r[3].to_bits(), r[4].to_bits()),
                    grad_norm: norm_clipping.then_some(r[5]),
                }
            })
            .collect())
    }

    pub(super) fn evaluate_impl(&mut self, images: &[f32], labels: &[u32]) -> Result<Evaluation> {
        check_samples("train::GpuBackend::evaluate", &self.cfg, images, labels)?;
        let (inputs, classes) = (self.cfg.inputs(), self.cfg.classes());
        let xd = self.upload_inputs(images)?;
        let mut eval = Evaluation {
            loss: 0.0,
            correct: 0,
            total: labels.len(),
        };
        for (c, y) in labels.chunks(self.batch_cap).enumerate() {
            let b = y.len();
            let x = sample_view(&xd, c * self.batch_cap * inputs, b * inputs);
            let params = Params {
                masters: &self.masters,
                halves: &self.halves,
            };
            let all = self.layers.len();
            gpu_layers::forward(
                &self.gpu,
                &mut self.blas,
                &mut self.layers,
                &params,
                &x,
                b,
                all,
                (&mut self.fp8, false),
            )?;
            let logits: Vec<f32> = match &self
                .layers
                .last()
                .expect("validated: at least one layer")
                .out_buf
            {
                Buf::H(l) => self
                    .gpu
                    .download(&l.slice(..b * classes))?
                    .iter()
                    .map(|&v| crate::cpu::Element::to_f32(v))
                    .collect(),
                Buf::F(l) => self.gpu.download(&l.slice(..b * classes))?,
            };
            let mut d = vec![0f32; b * classes];
            let loss = crate::cpu::cross_entropy::softmax_cross_entropy(
                &logits, y, b, classes, 1.0, &mut d,
            )?;
            eval.loss += f64::from(loss) * b as f64;
            eval.correct += count_correct(&logits, y, classes);
        }
        eval.loss /= labels.len().max(1) as f64;
        Ok(eval)
    }

    pub(super) fn export_impl(&mut self) -> Result<BackendState> {
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
        let dict = self.scaler.state_dict()?;
        let scaler = ScalerState {
            scale: dict.scale,
            growth_tracker: dict.growth_tracker,
        };
        let fp8 = match &self.fp8 {
            Some(f) => f.download(&self.gpu)?,
            None => Vec::new(),
        };
        export_state(params, &self.optimizer.state_dict()?, scaler, fp8)
    }

    pub(super) fn import_impl(&mut self, state: &BackendState) -> Result<()> {
        check_params(
            "train::GpuBackend::import",
            &self.cfg.parameter_specs(),
            &state.params,
        )?;
        let (opt, scaler) =
            import_dicts(&self.opt, self.schedule, self.scaler.loss_scale(), state)?;
        scaler.validate()?; // so that nothing changes unless all load
        crate::train::cpu_fp8::check_states("train::GpuBackend::import", &self.cfg, &state.fp8)?;
        self.optimizer.load_state_dict(&opt)?;
        self.scaler.load_state_dict(&scaler)?;
        for (t, p) in state.params.iter().enumerate() {
            self.masters[t] = self.gpu.upload(&p.data)?;
            self.halves[t] = self.gpu.upload(&narrow_vec::<H>(&p.data))?;
        }
        if let Some(f) = &mut self.fp8 {
            f.upload(&self.gpu, &state.fp8)?;
        }
        self.real_steps = state.optimizer_step;
        // The masters and 16-bit copies were reallocated: a captured graph would update the old
        // ones (the optimizer and scaler loaded theirs in place).
        self.graph.exec = None;
        self.graph.warm = false;
        Ok(())
    }
}
