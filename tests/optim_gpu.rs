//! GPU optimizer (`ops::optim`) vs the CPU reference (`cpu::optim`): Adam, AdamW and SGD (plain,
//! momentum, dampening + weight decay, Nesterov) over several steps on a model-sized tensor list
//! (dozens of tensors of 1 to 2 M elements, odd sizes, unaligned views), gradients with huge
//! values, subnormals and −0.0; skipped steps that write nothing (step counter included); the
//! device's bias corrections bit for bit; more tensors than one launch holds; empty lists;
//! checkpoint round trips; typed errors before any launch. Each test that writes working copies
//! runs with f16 copies and again with bf16 copies (the `_bf16` twins), and the bf16 rounding is
//! checked bit for bit on its critical values (ties, overflow, subnormals).
//!
//! Accuracy: every state element within 1e-6 relative (reported), and bit-exact (NaN as NaN)
//! whenever the device's bias-correction terms for the steps taken equal the host's — the
//! per-element math is the reference's, operation for operation.

mod common;
mod optim_support;

use ampkit::cpu::optim::{
    self, AdamCoefficients, AdamConfig, OptimizerConfig, OptimizerState, ParamTensor,
};
use ampkit::cpu::schedule::LrSchedule;
use ampkit::cuda::DeviceBuffer;
use ampkit::ops::optim::{GpuOptimizer, GpuParamTensor};
use ampkit::tuning::optim::adam_bias_terms;
use ampkit::{f16, Error};
use common::{gpu, rng};
use half::bf16;
use optim_support::rig::*;
use optim_support::{all_configs, sgd};
use rand::Rng;

#[test]
fn every_optimizer_matches_the_cpu_over_steps() {
    every_optimizer_matches::<f16>("gpu optim steps");
}

#[test]
fn every_optimizer_matches_the_cpu_over_steps_bf16() {
    every_optimizer_matches::<bf16>("gpu optim steps bf16");
}

fn every_optimizer_matches<H: Copy16>(seed: &str) {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(seed);
    // A skipped first step (SGD's buffers must still start from the gradient) and a skip later.
    let found_inf = [true, false, false, true, false, false];
    for cfg in all_configs() {
        let exact = bias_terms_exact(&gpu, &cfg, found_inf.len() as u64);
        let sizes = model_sizes(&mut rng);
        let mut rig = HalfRig::<H>::new(&gpu, &mut rng, &cfg, &sizes);
        for (k, &skip) in found_inf.iter().enumerate() {
            let grads = rig.random_grads(&mut rng);
            rig.step(&gpu, &cfg, &grads, skip);
            let last = k + 1 == found_inf.len();
            rig.check(
                &gpu,
                &format!("{} {cfg:?} step {k} (skip {skip})", H::NAME),
                exact,
                last,
            );
        }
        let real = found_inf.iter().filter(|&&s| !s).count() as u64;
        assert_eq!(rig.opt.step_count(&gpu).unwrap(), real);
    }
}

/// Tensors without a working copy (an empty `half` view, as the FP8 layers' weights pass) update
/// their masters and moments bit for bit as the CPU does, next to tensors with one, and the
/// kernel writes none of their copy.
#[test]
fn tensors_without_a_working_copy_update_alike() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("no working copy");
    let found_inf = [false, true, false];
    for cfg in all_configs() {
        let exact = bias_terms_exact(&gpu, &cfg, found_inf.len() as u64);
        let sizes = model_sizes(&mut rng);
        let mut rig = HalfRig::<f16>::new(&gpu, &mut rng, &cfg, &sizes);
        rig.no_copy = (0..sizes.len()).map(|t| t % 2 == 0).collect();
        for h in &mut rig.half {
            poison(&gpu, h);
        }
        for (k, &skip) in found_inf.iter().enumerate() {
            let grads = rig.random_grads(&mut rng);
            rig.step(&gpu, &cfg, &grads, skip);
            rig.check(&gpu, &format!("no copy {cfg:?} step {k}"), exact, false);
        }
    }
}

/// A cosine schedule advances on real steps only (the GPU reads its step counter) and clamps
/// past `total`; AdamW's decay follows the scheduled rate. Within 1e-6 of the CPU (the f64
/// cosines of libm and CUDA may differ in the last bit before the rounding to f32).
#[test]
fn cosine_schedule_follows_real_steps() {
    cosine_schedule::<f16>("gpu optim schedule");
}

#[test]
fn cosine_schedule_follows_real_steps_bf16() {
    cosine_schedule::<bf16>("gpu optim schedule bf16");
}

fn cosine_schedule<H: Copy16>(seed: &str) {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(seed);
    let found_inf = [false, true, false, false, true, false, false];
    for cfg in all_configs() {
        let base = match cfg {
            OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => c.lr,
            OptimizerConfig::Sgd(c) => c.lr,
        };
        let schedule = LrSchedule::Cosine {
            total: 4,
            min_lr: base / 10.0,
        };
        let sizes = model_sizes(&mut rng);
        let mut rig = HalfRig::<H>::new(&gpu, &mut rng, &cfg, &sizes);
        for (k, &skip) in found_inf.iter().enumerate() {
            let grads = rig.random_grads(&mut rng);
            rig.step_scheduled(&gpu, &cfg, &schedule, &grads, skip);
            let last = k + 1 == found_inf.len();
            let what = format!("{} {cfg:?} cosine step {k}", H::NAME);
            rig.check(&gpu, &what, false, last);
        }
    }
}

#[test]
fn adam_bias_corrections_match_the_host_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut ts: Vec<u64> = (1..=20_000).collect();
    ts.extend([1 << 20, 999_999, 123_456_789, 1 << 40]);
    for (lr, beta1, beta2) in [
        (1e-3, 0.9, 0.999),
        (0.05, 0.8, 0.99),
        (3e-4, 0.95, 0.9999),
        (1.0, 0.5, 0.9),
        (1e-3, 0.0, 0.0),
        (2e-2, 0.999_999, 0.999_999_9),
    ] {
        let cfg = AdamConfig {
            lr,
            beta1,
            beta2,
            ..AdamConfig::default()
        };
        let device = adam_bias_terms(&gpu, &cfg, &ts).unwrap();
        for (&t, &(step_size, bc2_sqrt)) in ts.iter().zip(&device) {
            let k = AdamCoefficients::new(&cfg, false, t);
            assert_eq!(
                (step_size.to_bits(), bc2_sqrt.to_bits()),
                (k.step_size.to_bits(), k.bias_correction2_sqrt.to_bits()),
                "lr {lr} beta1 {beta1} beta2 {beta2} t {t}: device ({step_size:e}, {bc2_sqrt:e}), \
                 host ({:e}, {:e})",
                k.step_size,
                k.bias_correction2_sqrt
            );
        }
    }
}

#[test]
fn skipped_steps_write_nothing() {
    skipped_steps::<f16>("gpu optim skip");
}

#[test]
fn skipped_steps_write_nothing_bf16() {
    skipped_steps::<bf16>("gpu optim skip bf16");
}

fn skipped_steps<H: Copy16>(seed: &str) {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(seed);
    for cfg in [OptimizerConfig::adamw(1e-2), sgd(0.1, 0.9, 0.0, 0.0, true)] {
        let sizes = [1, 4099, 70_000, 31];
        let mut rig = HalfRig::<H>::new(&gpu, &mut rng, &cfg, &sizes);
        let grads = rig.random_grads(&mut rng);
        rig.step(&gpu, &cfg, &grads, false);
        let before = (rig.opt.download(&gpu).unwrap(), rig.gpu_masters(&gpu));
        // Poisoned halves show any write (the CPU's halves keep their values: the next real
        // step rewrites both sides).
        for h in &mut rig.half {
            poison(&gpu, h);
        }
        let grads = rig.random_grads(&mut rng);
        rig.step(&gpu, &cfg, &grads, true);
        let halves = rig.gpu_halves(&gpu).concat();
        assert!(
            halves.iter().all(|h| h.to_bits() == H::POISON.to_bits()),
            "{cfg:?}: a skipped step wrote an {} copy",
            H::NAME
        );
        let after = (rig.opt.download(&gpu).unwrap(), rig.gpu_masters(&gpu));
        assert_eq!(
            after.0.step_count(),
            1,
            "{cfg:?}: the skip advanced the counter"
        );
        let bits = |s: &OptimizerState, m: &[Vec<f32>]| {
            let mut all = canon32(&m.concat());
            for t in 0..sizes.len() {
                for b in [s.exp_avg(t), s.exp_avg_sq(t), s.momentum_buffer(t)]
                    .into_iter()
                    .flatten()
                {
                    all.extend(canon32(b));
                }
            }
            (all, s.step_count(), s.momentum_started())
        };
        assert!(
            bits(&before.0, &before.1) == bits(&after.0, &after.1),
            "{cfg:?}: a skipped step changed the masters or the state"
        );
        // The next real step rewrites every half and continues exactly like the CPU.
        let grads = rig.random_grads(&mut rng);
        rig.step(&gpu, &cfg, &grads, false);
        let exact = bias_terms_exact(&gpu, &cfg, 2);
        rig.check(
            &gpu,
            &format!("{} {cfg:?} after a skip", H::NAME),
            exact,
            true,
        );
    }
}

#[test]
fn more_tensors_than_one_launch_holds() {
    many_tensors::<f16>("gpu optim many");
}

#[test]
fn more_tensors_than_one_launch_holds_bf16() {
    many_tensors::<bf16>("gpu optim many bf16");
}

fn many_tensors<H: Copy16>(seed: &str) {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(seed);
    for cfg in [OptimizerConfig::adam(1e-2), sgd(0.05, 0.9, 0.1, 0.0, false)] {
        // 199 non-empty tensors: launches of 74, 74 and 51.
        let mut sizes: Vec<usize> = (0..200).map(|_| rng.gen_range(1..3000)).collect();
        sizes[199] = 100_000;
        sizes[70] = 0;
        let exact = bias_terms_exact(&gpu, &cfg, 3);
        let mut rig = HalfRig::<H>::new(&gpu, &mut rng, &cfg, &sizes);
        for (k, skip) in [false, true, false, false].into_iter().enumerate() {
            let grads = rig.random_grads(&mut rng);
            rig.step(&gpu, &cfg, &grads, skip);
            rig.check(
                &gpu,
                &format!("{} {cfg:?} 200 tensors, step {k}", H::NAME),
                exact,
                k == 3,
            );
        }
        // Three launches per step, one advance per real step.
        assert_eq!(rig.opt.step_count(&gpu).unwrap(), 3);
    }
}

#[test]
fn empty_lists_and_tensors_still_count_the_step() {
    empty_lists::<f16>("gpu optim empty");
}

#[test]
fn empty_lists_and_tensors_still_count_the_step_bf16() {
    empty_lists::<bf16>("gpu optim empty bf16");
}

fn empty_lists<H: Copy16>(seed: &str) {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(seed);
    for sizes in [vec![], vec![0, 0], vec![0, 5, 0]] {
        for cfg in [OptimizerConfig::adam(1e-3), sgd(0.1, 0.5, 0.0, 0.0, false)] {
            let exact = bias_terms_exact(&gpu, &cfg, 2);
            let mut rig = HalfRig::<H>::new(&gpu, &mut rng, &cfg, &sizes);
            for skip in [false, true, false] {
                let grads = rig.random_grads(&mut rng);
                rig.step(&gpu, &cfg, &grads, skip);
                rig.check(&gpu, &format!("{cfg:?} on {sizes:?}"), exact, false);
            }
            assert_eq!(rig.opt.step_count(&gpu).unwrap(), 2, "{sizes:?}");
        }
    }
}

/// bf16 copies round like `half::bf16::from_f32` on their critical values: plain SGD at lr 0
/// leaves every master as it is (`p − 0·g`), so each copy is the rounding of a chosen f32 —
/// ties to even both ways, just off ties, the largest finite values (which round to ±inf), inf,
/// subnormals, ±0 — bit for bit, on vector and scalar paths.
#[test]
fn bf16_copies_round_like_half_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu optim bf16 rounding");
    let mut special: Vec<f32> = [
        0x3F80_8000u32, // 1 + 2^-8: a tie, even below → down
        0x3F81_8000,    // a tie, odd below → up
        0x3F80_8001,    // just above a tie → up
        0x3F80_7FFF,    // just below a tie → down
        0x7F7F_FFFF,    // f32::MAX → inf
        0x7F7F_8000,    // the tie above bf16's largest → inf (odd below)
        0x7F7F_7FFF,    // → bf16's largest
        0xFF7F_FFFF,    // −f32::MAX → −inf
        0x7F80_0000,    // inf
        0xFF80_0000,    // −inf
        0x0000_0001,    // the smallest subnormal → +0
        0x0000_8000,    // a subnormal tie (even below) → +0
        0x0001_8000,    // a subnormal tie (odd below) → up
        0x007F_FFFF,    // the largest subnormal → the smallest normal
        0x8000_0000,    // −0
        0x0000_0000,
    ]
    .iter()
    .map(|&b| f32::from_bits(b))
    .collect();
    special.extend((0..4093).map(|_| f32::from_bits(rng.gen::<u32>())));
    special.retain(|x| !x.is_nan());
    let cfg = sgd(0.0, 0.0, 0.0, 0.0, false);
    let lens = [special.len(), 7, 1];
    let mut rig = HalfRig::<bf16>::new(&gpu, &mut rng, &cfg, &lens);
    rig.cpu_master[0] = special.clone();
    gpu.stream()
        .memcpy_htod(
            &[vec![0f32; rig.offsets[0][0]], special.clone()].concat(),
            &mut rig.master[0],
        )
        .unwrap();
    let grads: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.0; n]).collect();
    rig.step(&gpu, &cfg, &grads, false);
    let got = rig.gpu_halves(&gpu);
    let want: Vec<u16> = special
        .iter()
        .map(|&x| bf16::from_f32(x).to_bits())
        .collect();
    let got: Vec<u16> = got[0].iter().map(|h| h.to_bits()).collect();
    common::assert_bits_eq("bf16 copies of chosen masters", &got, &want, |i| special[i]);
    rig.check(&gpu, "bf16 rounding", true, false);
}

#[test]
fn checkpoints_round_trip() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu optim checkpoint");
    for cfg in [
        OptimizerConfig::adamw(3e-3),
        sgd(0.05, 0.9, 0.0, 0.01, false),
    ] {
        let sizes = [7, 1 << 16, 513];
        let mut rig = Rig::new(&gpu, &mut rng, &cfg, &sizes);
        for _ in 0..2 {
            let grads = rig.random_grads(&mut rng);
            rig.step(&gpu, &cfg, &grads, false);
        }
        // Download → upload → download is the identity, counters included.
        let saved = rig.opt.download(&gpu).unwrap();
        let restored = GpuOptimizer::from_state(&gpu, &cfg, &saved).unwrap();
        let again = restored.download(&gpu).unwrap();
        assert_eq!(again.step_count(), 2);
        assert_eq!(again.momentum_started(), saved.momentum_started());
        for t in 0..sizes.len() {
            for (a, b) in [
                (saved.exp_avg(t), again.exp_avg(t)),
                (saved.exp_avg_sq(t), again.exp_avg_sq(t)),
                (saved.momentum_buffer(t), again.momentum_buffer(t)),
            ] {
                assert_eq!(a.map(canon32), b.map(canon32), "{cfg:?} tensor {t}");
            }
        }
        // A CPU state uploaded mid-run continues exactly like the CPU.
        rig.opt = GpuOptimizer::from_state(&gpu, &cfg, &rig.cpu).unwrap();
        let exact = bias_terms_exact(&gpu, &cfg, 4);
        for _ in 0..2 {
            let grads = rig.random_grads(&mut rng);
            rig.step(&gpu, &cfg, &grads, false);
        }
        rig.check(&gpu, &format!("{cfg:?} restored"), exact, true);
    }
}

#[test]
fn bad_arguments_are_typed_errors_before_any_launch() {
    let Some(gpu) = gpu() else { return };
    let cfg = OptimizerConfig::adam(1e-2);
    let lens = [3usize, 5];
    let mut opt = GpuOptimizer::new(&gpu, &cfg, &lens).unwrap();
    let mut master: Vec<DeviceBuffer<f32>> = lens
        .iter()
        .map(|&n| gpu.upload(&vec![1.5f32; n]).unwrap())
        .collect();
    let grad: Vec<DeviceBuffer<f32>> = lens
        .iter()
        .map(|&n| gpu.upload(&vec![0.25f32; n]).unwrap())
        .collect();
    let mut half: Vec<DeviceBuffer<f16>> = lens
        .iter()
        .map(|&n| gpu.upload(&vec![POISON; n]).unwrap())
        .collect();
    let clean = gpu.upload(&[0.0f32]).unwrap();
    let two = gpu.upload(&[0.0f32; 2]).unwrap();
    // (config, master trim, grad trim, half trim, tensors, found_inf, expected message part)
    let adamw = OptimizerConfig::adamw(1e-2);
    let bad_lr = OptimizerConfig::adam(-1.0);
    let cases: [(&OptimizerConfig, usize, usize, usize, usize, bool, &str); 7] = [
        (&cfg, 0, 0, 0, 1, false, "1 parameter tensors"),
        (&cfg, 1, 0, 0, 2, false, "tensor 0: master has 2"),
        (&cfg, 0, 1, 0, 2, false, "grad 2"),
        (&cfg, 0, 0, 1, 2, false, "half 2"),
        (&cfg, 0, 0, 0, 2, true, "found_inf"),
        (&adamw, 0, 0, 0, 2, false, "created for Adam"),
        (&bad_lr, 0, 0, 0, 2, false, "lr"),
    ];
    for (c, mt, gt, ht, count, bad_flag, message) in cases {
        let mut params: Vec<GpuParamTensor<'_>> = (master.iter_mut())
            .zip(&grad)
            .zip(half.iter_mut())
            .take(count)
            .map(|((m, g), h)| GpuParamTensor {
                master: m.slice_mut(mt..),
                grad: g.slice(gt..),
                half: h.slice_mut(ht..),
            })
            .collect();
        let flag = if bad_flag { &two } else { &clean };
        let e = opt.step(&gpu, c, &mut params, flag).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ShapeMismatch { .. } | Error::InvalidArgument { .. }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(message), "{e} (want {message:?})");
    }
    let e = GpuOptimizer::new(&gpu, &sgd(0.1, 0.0, 0.0, 0.0, false), &lens)
        .unwrap()
        .step::<f16, _>(&gpu, &sgd(0.1, 0.9, 0.0, 0.0, false), &mut [], &clean)
        .unwrap_err();
    assert!(e.to_string().contains("without momentum buffers"), "{e}");
    let e = GpuOptimizer::from_state(&gpu, &adamw, &opt.download(&gpu).unwrap()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // Nothing ran: state, masters and halves as they were.
    let state = opt.download(&gpu).unwrap();
    assert_eq!(state.step_count(), 0);
    assert!((0..2).all(|t| state.exp_avg(t).unwrap().iter().all(|&m| m.to_bits() == 0)));
    assert!(master
        .iter()
        .all(|m| gpu.download(m).unwrap().iter().all(|&x| x == 1.5)));
    assert!(half.iter().all(|h| gpu
        .download(h)
        .unwrap()
        .iter()
        .all(|x| x.to_bits() == POISON.to_bits())));
}

/// The device forms β^t by binary powering in double-double (kernels/optim.cu); mirrored here,
/// it must round to the same f32 coefficients as the host's `powf` over a wide sweep. Runs
/// without a GPU: it checks the algorithm, the GPU tests check the kernel.
#[test]
fn binary_powering_rounds_like_powf() {
    fn dd_mul((ah, al): (f64, f64), (bh, bl): (f64, f64)) -> (f64, f64) {
        let p = ah * bh;
        let e = ah.mul_add(bh, -p) + (ah * bl + al * bh);
        let s = p + e;
        (s, e - (s - p))
    }
    fn pow_int(b: f64, mut t: u64) -> f64 {
        let (mut r, mut x) = ((1.0, 0.0), (b, 0.0));
        while t != 0 {
            if t & 1 == 1 {
                r = dd_mul(r, x);
            }
            t >>= 1;
            if t != 0 {
                x = dd_mul(x, x);
            }
        }
        r.0 + r.1
    }
    let mut rng = rng("binary powering");
    let mut cases: Vec<(f64, u64)> = [0.9, 0.999, 0.99, 0.8, 0.9999, 0.5, 0.0]
        .iter()
        .flat_map(|&b| (1..=20_000u64).map(move |t| (b, t)))
        .collect();
    cases.extend((0..100_000).map(|_| (rng.gen_range(0.0..1.0), rng.gen_range(1..1_000_000))));
    for (beta, t) in cases {
        let cfg = AdamConfig {
            lr: 1e-3,
            beta1: beta,
            beta2: beta,
            ..AdamConfig::default()
        };
        let k = AdamCoefficients::new(&cfg, false, t);
        let bc = 1.0 - pow_int(beta, t);
        assert_eq!(
            ((cfg.lr / bc) as f32, bc.sqrt() as f32),
            (k.step_size, k.bias_correction2_sqrt),
            "beta {beta} t {t}"
        );
    }
}

/// `OptimizerState::from_parts` (what `GpuOptimizer::download` builds its result with) rebuilds
/// a CPU state exactly and rejects inconsistent parts. Runs without a GPU.
#[test]
fn states_rebuild_from_their_parts() {
    let mut rng = rng("optim from_parts");
    let lens = [3usize, 0, 17];
    for cfg in [OptimizerConfig::adamw(1e-2), sgd(0.1, 0.9, 0.0, 0.0, false)] {
        let mut state = OptimizerState::new(&cfg, &lens).unwrap();
        let mut master: Vec<Vec<f32>> = lens.iter().map(|&n| values(&mut rng, n, &[0.0])).collect();
        let mut half: Vec<Vec<f16>> = lens.iter().map(|&n| vec![f16::ZERO; n]).collect();
        for _ in 0..2 {
            let grads: Vec<Vec<f32>> = lens.iter().map(|&n| values(&mut rng, n, &[1.0])).collect();
            let mut params: Vec<ParamTensor<'_>> = (master.iter_mut())
                .zip(half.iter_mut())
                .zip(&grads)
                .map(|((master, half), grad)| ParamTensor { master, grad, half })
                .collect();
            let _ = optim::step(&cfg, &mut state, &mut params, false).unwrap();
        }
        let parts = |get: fn(&OptimizerState, usize) -> Option<&[f32]>| {
            (0..lens.len())
                .map(|t| get(&state, t).map(<[f32]>::to_vec))
                .collect::<Option<Vec<_>>>()
        };
        let (m, v) = match cfg {
            OptimizerConfig::Sgd(_) => (parts(OptimizerState::momentum_buffer), None),
            _ => (
                parts(OptimizerState::exp_avg),
                parts(OptimizerState::exp_avg_sq),
            ),
        };
        let started = state.momentum_started();
        let rebuilt =
            OptimizerState::from_parts(&cfg, &lens, 2, started, m.clone(), v.clone()).unwrap();
        assert_eq!(rebuilt, state, "{cfg:?}");
        // Inconsistent parts.
        let e = OptimizerState::from_parts(&cfg, &lens[..2], 2, started, m.clone(), v.clone())
            .unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
        let e = OptimizerState::from_parts(&cfg, &lens, 2, started, m.clone(), Some(Vec::new()))
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidArgument { .. } | Error::ShapeMismatch { .. }
            ),
            "{e}"
        );
    }
    let plain = sgd(0.1, 0.0, 0.0, 0.0, false);
    let e = OptimizerState::from_parts(&plain, &lens, 0, true, None, None).unwrap_err();
    assert!(e.to_string().contains("momentum_started"), "{e}");
    let e = OptimizerState::from_parts(&OptimizerConfig::adam(1e-3), &lens, 0, false, None, None)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
}
