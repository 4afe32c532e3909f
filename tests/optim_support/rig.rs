//! The GPU optimizer tests' rig: one model on both sides (CPU reference and `GpuOptimizer`, the
//! GPU tensors as unaligned views), random values with special values sprinkled in, and the
//! GPU-vs-CPU comparisons (within 1e-6, or bit for bit with NaN as NaN). Generic over the
//! working copy's type ([`Copy16`]: f16 or bf16); [`Rig`] is the f16 one.

use crate::common::{self, assert_all_written};
use ampkit::check::{compare, ToF64, Tolerance};
use ampkit::cpu::optim::{
    self, AdamCoefficients, HalfCopy, OptimizerConfig, OptimizerState, ParamTensor,
};
use ampkit::cpu::schedule::LrSchedule;
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::cudarc::driver::DeviceRepr;
use ampkit::f16;
use ampkit::ops::optim::{GpuOptimizer, GpuParamTensor};
use ampkit::tuning::optim::adam_bias_terms;
use half::bf16;
use rand::rngs::StdRng;
use rand::Rng;

/// A signalling NaN: the kernel's f16 conversion always sets the quiet bit, so it never writes it.
pub const POISON: f16 = f16::from_bits(0x7C01);

/// What the rig needs of a working-copy type besides [`HalfCopy`].
pub trait Copy16: HalfCopy + ToF64 + DeviceRepr + bytemuck::Pod + Unpin {
    /// A signalling NaN: the kernel's conversion always sets the quiet bit, so it never writes it.
    const POISON: Self;
    /// Relative tolerance between two roundings of masters within 1e-6 of each other: an ulp
    /// and a bit (f16: 2^-10, bf16: 2^-7).
    const REL_TOL: f64;
}

impl Copy16 for f16 {
    const POISON: Self = POISON;
    const REL_TOL: f64 = 1e-3;
}

impl Copy16 for bf16 {
    const POISON: Self = bf16::from_bits(0x7F81);
    const REL_TOL: f64 = 8e-3;
}

/// Overwrites every element of `buf` with `H::POISON` (a copy from the host, ordered on the
/// stream; the buffer keeps its address).
pub fn poison<H: Copy16>(gpu: &Gpu, buf: &mut DeviceBuffer<H>) {
    let host = vec![H::POISON; buf.len()];
    gpu.stream().memcpy_htod(&host, buf).unwrap();
}

/// Tensor sizes like a model's, around the chunk and vector boundaries, up to 2 M (under
/// [`common::sanitizing`] up to 0.5 M, about 0.75 M in all instead of 3 M).
pub fn model_sizes(rng: &mut StdRng) -> Vec<usize> {
    // 784·512 = 401_408; 2^21 + 5 = 2_097_157. Sanitizing: 784·64 and 2^19 + 5.
    let (weight, large, most) =
        common::sized((401_408, 2_097_157, 40_000), (50_176, 524_293, 10_000));
    let mut sizes = vec![
        1, 3, 10, 512, weight, 5120, 1023, 1024, 1025, 4095, 4096, 4097,
    ];
    sizes.extend([8193, 16385, large]);
    sizes.extend((0..27).map(|_| rng.gen_range(1..most)));
    sizes
}

/// Random values of varied magnitude with `specials` sprinkled in.
pub fn values(rng: &mut StdRng, n: usize, specials: &[f32]) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * 2f32.powi(rng.gen_range(-20..3)))
        .collect();
    for _ in 0..(1 + n / 500).min(n) {
        let i = rng.gen_range(0..n);
        v[i] = specials[rng.gen_range(0..specials.len())];
    }
    v
}

/// Huge (g·g overflows), subnormal, signed zeros, f16's largest.
pub const GRAD_SPECIALS: &[f32] = &[1e30, -1e30, 3e38, 1e-40, -1e-45, -0.0, 0.0, 65504.0, 1e20];
/// Masters that overflow f16, land in its subnormals, or are f32 subnormals.
pub const MASTER_SPECIALS: &[f32] = &[-0.0, 0.0, 65504.0, 70000.0, -7e4, 3e-8, 1e-40];

/// One model on both sides: CPU masters/halves/state and GPU buffers (each tensor a view at a
/// per-tensor offset, so some are unaligned) with a `GpuOptimizer`; working copies of type `H`.
pub struct HalfRig<H: Copy16> {
    pub lens: Vec<usize>,
    /// Leading elements before each tensor's view: [master, grad, half].
    pub offsets: Vec<[usize; 3]>,
    pub master: Vec<DeviceBuffer<f32>>,
    pub grad: Vec<DeviceBuffer<f32>>,
    pub half: Vec<DeviceBuffer<H>>,
    pub cpu_master: Vec<Vec<f32>>,
    pub cpu_half: Vec<Vec<H>>,
    pub cpu: OptimizerState,
    pub opt: GpuOptimizer,
    /// Tensors stepped without a working copy (an empty `half` on both sides): their GPU copies
    /// must stay as they were (poisoned), and the rest must update as with copies.
    pub no_copy: Vec<bool>,
}

/// The rig with f16 copies.
pub type Rig = HalfRig<f16>;

impl<H: Copy16> HalfRig<H> {
    pub fn new(gpu: &Gpu, rng: &mut StdRng, cfg: &OptimizerConfig, lens: &[usize]) -> Self {
        let offsets: Vec<[usize; 3]> = lens
            .iter()
            .map(|_| std::array::from_fn(|_| [0usize, 0, 1, 3][rng.gen_range(0..4)]))
            .collect();
        let cpu_master: Vec<Vec<f32>> = lens
            .iter()
            .map(|&n| values(rng, n, MASTER_SPECIALS))
            .collect();
        let cpu_half: Vec<Vec<H>> = cpu_master
            .iter()
            .map(|m| m.iter().map(|&x| H::from_f32(x)).collect())
            .collect();
        let padded = |v: &[f32], off: usize| [vec![f32::NAN; off], v.to_vec()].concat();
        let master = (cpu_master.iter().zip(&offsets))
            .map(|(m, o)| gpu.upload(&padded(m, o[0])).unwrap())
            .collect();
        let grad = (lens.iter().zip(&offsets))
            .map(|(&n, o)| gpu.upload(&vec![0f32; n + o[1]]).unwrap())
            .collect();
        let half = (cpu_half.iter().zip(&offsets))
            .map(|(h, o)| {
                gpu.upload(&[vec![H::POISON; o[2]], h.clone()].concat())
                    .unwrap()
            })
            .collect();
        HalfRig {
            lens: lens.to_vec(),
            offsets,
            master,
            grad,
            half,
            cpu_master,
            cpu_half,
            cpu: OptimizerState::new(cfg, lens).unwrap(),
            opt: GpuOptimizer::new(gpu, cfg, lens).unwrap(),
            no_copy: vec![false; lens.len()],
        }
    }

    pub fn random_grads(&self, rng: &mut StdRng) -> Vec<Vec<f32>> {
        self.lens
            .iter()
            .map(|&n| values(rng, n, GRAD_SPECIALS))
            .collect()
    }

    /// One step on both sides. Before a real step the GPU halves are poisoned, and afterwards
    /// every element must have been written.
    pub fn step(&mut self, gpu: &Gpu, cfg: &OptimizerConfig, grads: &[Vec<f32>], found_inf: bool) {
        self.step_scheduled(gpu, cfg, &LrSchedule::Constant, grads, found_inf)
    }

    /// [`Rig::step`] with a learning-rate schedule: the CPU side steps with the config whose lr
    /// is the schedule's rate after the reference's real-step count.
    pub fn step_scheduled(
        &mut self,
        gpu: &Gpu,
        cfg: &OptimizerConfig,
        schedule: &LrSchedule,
        grads: &[Vec<f32>],
        found_inf: bool,
    ) {
        let mut params: Vec<ParamTensor<'_, H>> = (self.cpu_master.iter_mut())
            .zip(self.cpu_half.iter_mut())
            .zip(grads)
            .zip(&self.no_copy)
            .map(|(((master, half), grad), &none)| ParamTensor {
                master,
                grad,
                half: if none { &mut half[..0] } else { half },
            })
            .collect();
        let mut now = *cfg;
        match &mut now {
            OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => {
                c.lr = schedule.lr_at(c.lr, self.cpu.step_count())
            }
            OptimizerConfig::Sgd(c) => c.lr = schedule.lr_at(c.lr, self.cpu.step_count()),
        }
        let _ = optim::step(&now, &mut self.cpu, &mut params, found_inf).unwrap();
        for ((buf, g), o) in self.grad.iter_mut().zip(grads).zip(&self.offsets) {
            *buf = gpu
                .upload(&[vec![f32::NAN; o[1]], g.clone()].concat())
                .unwrap();
        }
        if !found_inf {
            for h in &mut self.half {
                poison(gpu, h);
            }
        }
        let flag = gpu.upload(&[if found_inf { 1.0f32 } else { 0.0 }]).unwrap();
        let mut params: Vec<GpuParamTensor<'_, H>> = (self.master.iter_mut())
            .zip(&self.grad)
            .zip(self.half.iter_mut())
            .zip(&self.offsets)
            .zip(&self.no_copy)
            .map(|((((m, g), h), o), &none)| GpuParamTensor {
                master: m.slice_mut(o[0]..),
                grad: g.slice(o[1]..),
                half: if none {
                    h.slice_mut(o[2]..o[2])
                } else {
                    h.slice_mut(o[2]..)
                },
            })
            .collect();
        self.opt
            .step_scheduled(gpu, cfg, schedule, &mut params, &flag)
            .unwrap();
        if !found_inf {
            let what = format!("{} copies", H::NAME);
            let halves = self.gpu_halves(gpu);
            let (none, some): (Vec<_>, Vec<_>) =
                (halves.iter().zip(&self.no_copy)).partition(|(_, &none)| none);
            let some: Vec<H> = some.into_iter().flat_map(|(h, _)| h.clone()).collect();
            assert_all_written(&what, &some, H::POISON);
            for (h, _) in none {
                let bits = |v: &H| bytemuck::bytes_of(v).to_vec();
                assert!(
                    h.iter().all(|v| bits(v) == bits(&H::POISON)),
                    "{what}: a tensor without a working copy had its copy written"
                );
            }
        }
    }

    pub fn gpu_masters(&self, gpu: &Gpu) -> Vec<Vec<f32>> {
        (self.master.iter().zip(&self.offsets))
            .map(|(b, o)| gpu.download(b).unwrap()[o[0]..].to_vec())
            .collect()
    }

    pub fn gpu_halves(&self, gpu: &Gpu) -> Vec<Vec<H>> {
        (self.half.iter().zip(&self.offsets))
            .map(|(b, o)| gpu.download(b).unwrap()[o[2]..].to_vec())
            .collect()
    }

    /// GPU vs CPU: counters exactly; every buffer within tolerance, and bit for bit if `exact`.
    pub fn check(&self, gpu: &Gpu, what: &str, exact: bool, verbose: bool) {
        let state = self.opt.download(gpu).unwrap();
        assert_eq!(
            state.step_count(),
            self.cpu.step_count(),
            "{what}: step count"
        );
        assert_eq!(
            state.momentum_started(),
            self.cpu.momentum_started(),
            "{what}: momentum started"
        );
        let n = self.lens.len();
        type Get = fn(&OptimizerState, usize) -> Option<&[f32]>;
        let buffers: [(&str, Get); 3] = [
            ("exp_avg", OptimizerState::exp_avg),
            ("exp_avg_sq", OptimizerState::exp_avg_sq),
            ("momentum_buffer", OptimizerState::momentum_buffer),
        ];
        for (name, get) in buffers {
            let exists = |s: &OptimizerState| (0..n).map(|t| get(s, t).is_some()).collect();
            let (got_exists, want_exists): (Vec<bool>, Vec<bool>) =
                (exists(&state), exists(&self.cpu));
            assert_eq!(
                got_exists, want_exists,
                "{what}: which {name} buffers exist"
            );
            if want_exists.first() == Some(&true) {
                let flat = |s: &OptimizerState| -> Vec<f32> {
                    (0..n).flat_map(|t| get(s, t).unwrap().to_vec()).collect()
                };
                let name = format!("{what}: {name}");
                same_f32(&name, &flat(&state), &flat(&self.cpu), exact, verbose);
            }
        }
        let masters = self.gpu_masters(gpu).concat();
        same_f32(
            &format!("{what}: masters"),
            &masters,
            &self.cpu_master.concat(),
            exact,
            verbose,
        );
        // Working copies where the tensors keep one.
        let with_copy = |v: Vec<Vec<H>>| -> Vec<H> {
            (v.into_iter().zip(&self.no_copy))
                .filter(|(_, &none)| !none)
                .flat_map(|(h, _)| h)
                .collect()
        };
        let (got, want) = (
            with_copy(self.gpu_halves(gpu)),
            with_copy(self.cpu_half.clone()),
        );
        let reference: Vec<f64> = want.iter().map(|h| h.to_f64()).collect();
        let report = compare(&got, &reference, Tolerance::new(0.0, H::REL_TOL));
        assert!(report.passed(), "{what}: {} halves: {report}", H::NAME);
        if exact {
            let what = format!("{what}: {} halves", H::NAME);
            assert_same_bits(&what, &canon16(&got), &canon16(&want));
        }
    }
}

/// Within 1e-6 relative (elementwise, against the largest finite magnitude, and in L2), and bit
/// for bit with NaN as NaN when `exact`.
pub fn same_f32(what: &str, got: &[f32], want: &[f32], exact: bool, verbose: bool) {
    let reference: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
    let scale = reference
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |a, v| a.max(v.abs()));
    let report = compare(got, &reference, Tolerance::new(1e-6 * scale, 1e-6));
    if verbose || !report.passed() {
        eprintln!("{what}: {report}");
    }
    assert!(report.passed(), "{what}: {report}");
    if exact {
        assert_same_bits(what, &canon32(got), &canon32(want));
    }
}

pub fn canon32(v: &[f32]) -> Vec<u32> {
    v.iter()
        .map(|x| if x.is_nan() { 0x7FC0_0000 } else { x.to_bits() })
        .collect()
}

/// The bits of 16-bit values, every NaN as one value (outside the 16-bit range).
pub fn canon16<H: HalfCopy>(v: &[H]) -> Vec<u32> {
    v.iter()
        .map(|x| {
            if x.to_f32().is_nan() {
                0x1_0000
            } else {
                u32::from(x.to_bits())
            }
        })
        .collect()
}

pub fn assert_same_bits(what: &str, got: &[u32], want: &[u32]) {
    common::assert_bits_eq(what, got, want, |i| i);
}

/// Whether the device's bias corrections equal the host's for steps 1..=steps (always true for
/// SGD, which has none). Printed, so a run shows which comparisons were bit-exact.
pub fn bias_terms_exact(gpu: &Gpu, cfg: &OptimizerConfig, steps: u64) -> bool {
    let (c, decoupled) = match cfg {
        OptimizerConfig::Adam(c) => (c, false),
        OptimizerConfig::AdamW(c) => (c, true),
        OptimizerConfig::Sgd(_) => return true,
    };
    let ts: Vec<u64> = (1..=steps).collect();
    let device = adam_bias_terms(gpu, c, &ts).unwrap();
    let exact = ts.iter().zip(&device).all(|(&t, &(s, b))| {
        let k = AdamCoefficients::new(c, decoupled, t);
        (s.to_bits(), b.to_bits()) == (k.step_size.to_bits(), k.bias_correction2_sqrt.to_bits())
    });
    eprintln!("{cfg:?}: device bias corrections bit-exact for t ≤ {steps}: {exact}");
    exact
}
