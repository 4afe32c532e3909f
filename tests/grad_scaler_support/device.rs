//! The GPU side of the scaler tests: a model in device memory at odd offsets, and a GPU scaler +
//! optimizer object stepped beside the CPU reference, compared after every step.

use super::*;
use crate::common::assert_all_written;
use crate::optim_support::rig::{bias_terms_exact, same_f32};
use ampkit::amp::{GradScaler, Stage};
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::cast::fill_f16;
use ampkit::optim::GpuParam;
use ampkit::Device;
use std::sync::Arc;

/// A model in device memory: each tensor a view starting `offsets[t][k]` elements into its
/// buffer ([master, grad, half]), so most views are not 16-byte aligned. Addresses never move.
pub struct DeviceModel {
    pub offsets: Vec<[usize; 3]>,
    pub master: Vec<DeviceBuffer<f32>>,
    pub grad: Vec<DeviceBuffer<f32>>,
    pub half: Vec<DeviceBuffer<f16>>,
}

impl DeviceModel {
    pub fn upload(gpu: &Gpu, rng: &mut StdRng, w: &Weights) -> DeviceModel {
        let lens: Vec<usize> = w.master.iter().map(Vec::len).collect();
        let offsets: Vec<[usize; 3]> = lens
            .iter()
            .map(|_| std::array::from_fn(|_| rng.gen_range(0..4)))
            .collect();
        let pad = |v: &[f32], o: usize| [vec![f32::NAN; o], v.to_vec()].concat();
        DeviceModel {
            master: (w.master.iter().zip(&offsets))
                .map(|(m, o)| gpu.upload(&pad(m, o[0])).unwrap())
                .collect(),
            grad: (lens.iter().zip(&offsets))
                .map(|(&n, o)| gpu.upload(&vec![f32::NAN; n + o[1]]).unwrap())
                .collect(),
            half: (w.half.iter().zip(&offsets))
                .map(|(h, o)| {
                    gpu.upload(&[vec![POISON; o[2]], h.clone()].concat())
                        .unwrap()
                })
                .collect(),
            offsets,
        }
    }

    /// Copies `grads` into the gradient views (the buffers stay where they are).
    pub fn set_grads(&mut self, gpu: &Gpu, grads: &[Vec<f32>]) {
        for ((buf, g), o) in self.grad.iter_mut().zip(grads).zip(&self.offsets) {
            let n = g.len();
            gpu.stream()
                .memcpy_htod(&g[..], &mut buf.slice_mut(o[1]..o[1] + n))
                .unwrap();
        }
    }

    /// Replaces the master weights (in the same buffers).
    pub fn set_masters(&mut self, gpu: &Gpu, masters: &[Vec<f32>]) {
        for ((buf, m), o) in self.master.iter_mut().zip(masters).zip(&self.offsets) {
            let n = m.len();
            gpu.stream()
                .memcpy_htod(&m[..], &mut buf.slice_mut(o[0]..o[0] + n))
                .unwrap();
        }
    }

    pub fn poison_halves(&mut self, gpu: &Gpu) {
        for h in &mut self.half {
            fill_f16(gpu, h, POISON).unwrap();
        }
    }

    pub fn params(&mut self) -> Vec<GpuParam<'_>> {
        (self.master.iter_mut())
            .zip(self.grad.iter_mut())
            .zip(self.half.iter_mut())
            .zip(&self.offsets)
            .map(|(((m, g), h), o)| GpuParam {
                master: m.slice_mut(o[0]..),
                grad: g.slice_mut(o[1]..),
                half: h.slice_mut(o[2]..),
            })
            .collect()
    }

    pub fn masters(&self, gpu: &Gpu) -> Vec<Vec<f32>> {
        (self.master.iter().zip(&self.offsets))
            .map(|(b, o)| gpu.download(b).unwrap()[o[0]..].to_vec())
            .collect()
    }

    pub fn grads(&self, gpu: &Gpu) -> Vec<Vec<f32>> {
        (self.grad.iter().zip(&self.offsets))
            .map(|(b, o)| gpu.download(b).unwrap()[o[1]..].to_vec())
            .collect()
    }

    pub fn halves(&self, gpu: &Gpu) -> Vec<Vec<f16>> {
        (self.half.iter().zip(&self.offsets))
            .map(|(b, o)| gpu.download(b).unwrap()[o[2]..].to_vec())
            .collect()
    }
}

/// A GPU scaler, optimizer object and model beside the CPU reference.
pub struct GpuPair {
    pub gpu: Arc<Gpu>,
    pub scaler: GradScaler,
    pub opt: Box<dyn Optimizer>,
    pub model: DeviceModel,
    pub reference: Reference,
    /// Whether weights and moments must equal the reference's bit for bit (see the module doc).
    pub exact: bool,
}

impl GpuPair {
    pub fn new(
        gpu: &Arc<Gpu>,
        rng: &mut StdRng,
        cfg: OptimizerConfig,
        schedule: LrSchedule,
        mode: LossScale,
        lens: &[usize],
    ) -> GpuPair {
        let weights = Weights::random(rng, lens);
        Self::with_weights(gpu, rng, cfg, schedule, mode, weights)
    }

    pub fn with_weights(
        gpu: &Arc<Gpu>,
        rng: &mut StdRng,
        cfg: OptimizerConfig,
        schedule: LrSchedule,
        mode: LossScale,
        weights: Weights,
    ) -> GpuPair {
        let lens: Vec<usize> = weights.master.iter().map(Vec::len).collect();
        let mut opt = object(&Device::Cuda(gpu.clone()), &cfg, &lens);
        opt.set_schedule(schedule).unwrap();
        GpuPair {
            gpu: gpu.clone(),
            scaler: GradScaler::new(gpu, mode).unwrap(),
            opt,
            model: DeviceModel::upload(gpu, rng, &weights),
            reference: Reference::new(cfg, schedule, mode, weights),
            exact: schedule == LrSchedule::Constant && bias_terms_exact(gpu, &cfg, 64),
        }
    }

    /// Loads the gradients and poisons the f16 copies before a step.
    pub fn prepare(&mut self, grads: &[Vec<f32>]) {
        self.model.set_grads(&self.gpu, grads);
        self.model.poison_halves(&self.gpu);
    }

    /// One eager step: scale is implied by `grads`; step, update.
    pub fn step(&mut self, grads: &[Vec<f32>]) {
        self.prepare(grads);
        let mut params = self.model.params();
        self.scaler.step(&mut *self.opt, &mut params).unwrap();
        drop(params);
        self.scaler.update().unwrap();
    }

    /// The reference's step with the same gradients, then everything compared.
    pub fn check_step(&mut self, what: &str, grads: &[Vec<f32>], moments: bool) -> bool {
        let mut want = grads.to_vec();
        let (found, outcome) = self.reference.step(&mut want);
        let flag = self.gpu.download(self.scaler.found_inf()).unwrap()[0];
        assert_eq!(flag != 0.0, found, "{what}: found_inf");
        // The overflow locator's per-tensor flags: exactly the tensors holding an inf/NaN (a
        // clean step after a poisoned one must have cleared them).
        let bad = grads.iter().map(|g| g.iter().any(|v| !v.is_finite()));
        assert_eq!(
            self.scaler.nonfinite_grads().unwrap(),
            ampkit::amp::NonFinite::from_flags(bad),
            "{what}: non-finite tensors"
        );
        assert_eq!(outcome.skipped(), found, "{what}");
        let gpu = &self.gpu;
        assert_same_f32(&format!("{what}: grads"), &self.model.grads(gpu), &want);
        let masters = self.model.masters(gpu);
        same(what, &masters, &self.reference.weights.master, self.exact);
        // Every step starts with poisoned copies: a skipped one leaves them, a real one
        // rewrites every element.
        let halves = self.model.halves(gpu);
        if found {
            for h in &halves {
                assert!(h.iter().all(|x| x.to_bits() == POISON.to_bits()), "{what}");
            }
        } else {
            for h in &halves {
                assert_all_written(what, h, POISON);
            }
            if self.exact {
                assert_same_f16(what, &halves, &self.reference.weights.half);
            }
        }
        let dict = self.scaler.state_dict().unwrap();
        let r = self.reference.scaler;
        assert_eq!(
            (dict.scale.to_bits(), dict.growth_tracker),
            (r.scale.to_bits(), r.growth_tracker),
            "{what}: scale and tracker"
        );
        assert_eq!(self.scaler.stage(), Stage::Ready);
        if moments {
            assert_eq!(
                self.opt.step_count().unwrap(),
                self.reference.state.step_count(),
                "{what}: step count"
            );
            for which in kept_moments(&self.reference.cfg) {
                let got: Vec<Vec<f32>> = (0..masters.len())
                    .map(|t| self.opt.moment(which, t).unwrap())
                    .collect();
                let want: Vec<Vec<f32>> = (0..masters.len())
                    .map(|t| self.reference.moment(which, t).unwrap().to_vec())
                    .collect();
                same(&format!("{what}: {which:?}"), &got, &want, self.exact);
            }
        }
        found
    }
}

/// Bit for bit (NaN as NaN) when `exact`, else within 1e-6 as `optim_gpu.rs` compares.
pub fn same(what: &str, got: &[Vec<f32>], want: &[Vec<f32>], exact: bool) {
    if exact {
        assert_same_f32(what, got, want);
    } else {
        same_f32(what, &got.concat(), &want.concat(), false, false);
    }
}

/// Two device models hold the same values, bit for bit.
pub fn same_device(what: &str, gpu: &Gpu, a: &DeviceModel, b: &DeviceModel) {
    assert_same_f32(
        &format!("{what}: masters"),
        &a.masters(gpu),
        &b.masters(gpu),
    );
    assert_same_f32(&format!("{what}: grads"), &a.grads(gpu), &b.grads(gpu));
    assert_same_f16(&format!("{what}: halves"), &a.halves(gpu), &b.halves(gpu));
}
