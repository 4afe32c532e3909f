//! `amp::GradScaler` with the `optim` objects on the GPU: against the hand-written AMP step on the
//! CPU references over many steps with inf/NaN gradients injected (odd sizes, views at odd
//! offsets, every optimizer); bit for bit with the primitives it is made of (`ops::unscale`,
//! `GpuOptimizer`, `ops::scaler`) over lists longer than one launch holds, with a schedule;
//! misuse as typed errors that queue nothing; state dicts moving between the GPU and the CPU and
//! resuming; the whole step replayed as a CUDA graph, bit for bit with eager steps, also after a
//! state dict was loaded into it in place; one tensor's moments read without a full download;
//! bf16 working copies through the public step (`GpuParam<'_, bf16>`) against `CpuGradScaler`.
//! Skips without a GPU (`common::gpu`).
//!
//! Against the CPU: the flag, the unscaled gradients, the scale and the tracker always bit for
//! bit; weights, f16 copies and moments bit for bit (NaN as NaN) when the schedule is constant and
//! the device's Adam bias corrections equal the host's (`optim_gpu.rs` asserts they do), else
//! within 1e-6 as `optim_gpu.rs` compares them (a cosine's last f64 bit may differ between libm
//! and CUDA before the rounding to f32).

mod common;
mod grad_scaler_support;
mod optim_support;

use ampkit::amp::{CpuGradScaler, GradScaler, LossScale, ScalerStateDict, Stage};
use ampkit::cuda::DeviceBuffer;
use ampkit::ops::optim::{GpuOptimizer, GpuParamTensor};
use ampkit::optim::{
    AdamConfig, GpuParam, LrSchedule, Moment, OptimizerConfig, OptimizerStateDict, Param,
};
use ampkit::{Device, Error};
use common::{gpu, rng, sized};
use grad_scaler_support::device::{same, same_device, DeviceModel, GpuPair};
use grad_scaler_support::*;
use half::bf16;
use optim_support::rig::bias_terms_exact;
use rand::rngs::StdRng;
use rand::Rng;

#[test]
fn gpu_scaler_matches_the_cpu_references_over_many_steps() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu grad scaler steps");
    let lens = sizes(
        &mut rng,
        sized(600_001, 70_001),
        sized(40_000, 5_000),
        sized(12, 4),
    );
    for (i, cfg) in optim_support::all_configs().into_iter().enumerate() {
        let schedule = if i % 2 == 1 {
            LrSchedule::Constant
        } else {
            LrSchedule::Cosine {
                total: 12,
                min_lr: 1e-4,
            }
        };
        let mut p = GpuPair::new(&gpu, &mut rng, cfg, schedule, dynamic(3), &lens);
        let steps = sized(24, 8);
        for step in 0..steps {
            let poison = step == 0 || rng.gen_bool(0.25);
            let grads = scaled_grads(&mut rng, &lens, p.reference.scaler.scale, poison);
            p.step(&grads);
            let what = format!("{cfg:?} {schedule:?} step {step} (poisoned {poison})");
            let found = p.check_step(&what, &grads, step % 4 == 3 || step + 1 == steps);
            assert_eq!(found, poison, "{what}");
        }
    }
}

#[test]
fn gpu_scaler_step_is_the_primitives_over_lists_longer_than_a_launch() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu grad scaler primitives");
    // 130 tensors: two unscale launches (96 a launch) and two optimizer launches (76).
    let mut lens: Vec<usize> = (0..129).map(|_| rng.gen_range(1..700)).collect();
    lens.push(sized(100_003, 20_003));
    let cfg = OptimizerConfig::adamw(1e-2);
    let schedule = LrSchedule::Cosine {
        total: 8,
        min_lr: 1e-3,
    };
    let mode = dynamic(2);
    let scaler_cfg = *mode.dynamic().unwrap();
    let mut p = GpuPair::new(&gpu, &mut rng, cfg, schedule, mode, &lens);
    // The same step from the primitives, on a second copy of the model.
    let weights = p.reference.weights.clone();
    let mut twin = DeviceModel::upload(&gpu, &mut rng, &weights);
    let mut opt = GpuOptimizer::new(&gpu, &cfg, &lens).unwrap();
    let mut scale = gpu.upload(&[mode.initial_scale()]).unwrap();
    let mut tracker = gpu.alloc_zeros::<i32>(1).unwrap();
    let mut found_inf = gpu.alloc_zeros::<f32>(1).unwrap();
    for step in 0..10 {
        let mut grads = scaled_grads(&mut rng, &lens, p.reference.scaler.scale, false);
        let poison = step % 3 == 0;
        if poison {
            // In the second launch of both kernels.
            grads[120][0] = POISONS[step % POISONS.len()];
        }
        p.step(&grads);
        twin.set_grads(&gpu, &grads);
        twin.poison_halves(&gpu);
        gpu.stream().memset_zeros(&mut found_inf).unwrap();
        let mut views: Vec<_> = (twin.grad.iter_mut().zip(&twin.offsets))
            .map(|(g, o)| g.slice_mut(o[1]..))
            .collect();
        ampkit::ops::unscale::unscale_and_check(&gpu, &mut views, &scale, &mut found_inf).unwrap();
        drop(views);
        let mut params: Vec<GpuParamTensor<'_>> = (twin.master.iter_mut())
            .zip(twin.grad.iter())
            .zip(twin.half.iter_mut())
            .zip(&twin.offsets)
            .map(|(((m, g), h), o)| GpuParamTensor {
                master: m.slice_mut(o[0]..),
                grad: g.slice(o[1]..),
                half: h.slice_mut(o[2]..),
            })
            .collect();
        opt.step_scheduled(&gpu, &cfg, &schedule, &mut params, &found_inf)
            .unwrap();
        drop(params);
        ampkit::ops::scaler::update_scale(&gpu, &mut scale, &mut tracker, &found_inf, &scaler_cfg)
            .unwrap();

        let what = format!("step {step} (poisoned {poison})");
        assert_eq!(p.check_step(&what, &grads, false), poison, "{what}");
        assert_same_f32(&what, &twin.masters(&gpu), &p.model.masters(&gpu));
        assert_same_f32(&what, &twin.grads(&gpu), &p.model.grads(&gpu));
        assert_same_f16(&what, &twin.halves(&gpu), &p.model.halves(&gpu));
        assert_eq!(
            gpu.download(&scale).unwrap()[0].to_bits(),
            p.scaler.get_scale().unwrap().to_bits(),
            "{what}: scale"
        );
        let (a, b) = (opt.download(&gpu).unwrap(), p.opt.state_dict().unwrap());
        assert_eq!(a.step_count(), b.step, "{what}");
        let exp_avg: Vec<Vec<f32>> = (0..lens.len())
            .map(|t| a.exp_avg(t).unwrap().to_vec())
            .collect();
        assert_same_f32(&what, b.exp_avg.as_ref().unwrap(), &exp_avg);
    }
}

#[test]
fn gpu_misuse_is_a_typed_error_that_queues_nothing() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu grad scaler misuse");
    let lens = [5, 1030];
    let cfg = OptimizerConfig::adam(1e-2);
    let mut p = GpuPair::new(&gpu, &mut rng, cfg, LrSchedule::Constant, dynamic(2), &lens);
    let invalid = |e: Error| matches!(e, Error::InvalidArgument { .. });
    assert!(invalid(p.scaler.update().unwrap_err()), "update first");
    assert_eq!(p.scaler.get_scale().unwrap(), 1024.0);

    let grads = scaled_grads(&mut rng, &lens, 1024.0, false);
    p.prepare(&grads);
    let masters = p.model.masters(&gpu);
    // An optimizer on the host, or on another stream, or for other tensors: refused, and the
    // gradients are still scaled.
    let mut host = object(&Device::Cpu, &cfg, &lens);
    let mut params = p.model.params();
    assert!(invalid(p.scaler.step(&mut *host, &mut params).unwrap_err()));
    let fork = Device::Cuda(gpu.fork().unwrap());
    let mut other = object(&fork, &cfg, &lens);
    assert!(invalid(
        p.scaler.step(&mut *other, &mut params).unwrap_err()
    ));
    let mut wrong = object(&Device::Cuda(gpu.clone()), &cfg, &[5, 1031]);
    let err = p.scaler.step(&mut *wrong, &mut params).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    drop(params);
    assert_eq!(p.scaler.stage(), Stage::Ready);
    assert_same_f32("refused steps", &p.model.grads(&gpu), &grads);
    assert_same_f32("refused steps", &p.model.masters(&gpu), &masters);

    // A host scaler refuses a GPU optimizer.
    let mut cpu_scaler = CpuGradScaler::new(dynamic(2)).unwrap();
    let mut w = Weights::random(&mut rng, &lens);
    let mut g = grads.clone();
    let mut host_params = w.params(&mut g);
    assert!(invalid(
        cpu_scaler.step(&mut *p.opt, &mut host_params).unwrap_err()
    ));
    drop(host_params);

    // unscale twice, step twice, unscale after step.
    let mut views: Vec<_> = (p.model.grad.iter_mut().zip(&p.model.offsets))
        .map(|(b, o)| b.slice_mut(o[1]..))
        .collect();
    p.scaler.unscale(&mut views).unwrap();
    assert!(invalid(p.scaler.unscale(&mut views).unwrap_err()));
    drop(views);
    let once = p.model.grads(&gpu);
    let mut want = grads.clone();
    let _ = p.reference.step(&mut want);
    assert_same_f32("unscaled once", &once, &want);
    let mut params = p.model.params();
    p.scaler.step(&mut *p.opt, &mut params).unwrap();
    assert!(invalid(
        p.scaler.step(&mut *p.opt, &mut params).unwrap_err()
    ));
    drop(params);
    let masters = p.model.masters(&gpu);
    same(
        "stepped once",
        &masters,
        &p.reference.weights.master,
        p.exact,
    );
    assert_same_f32("unscaled once", &p.model.grads(&gpu), &want);
    p.scaler.update().unwrap();
    assert!(invalid(p.scaler.update().unwrap_err()), "update twice");
    assert_eq!(p.opt.step_count().unwrap(), 1);
    assert!(p.opt.moment_view(Moment::ExpAvg, 2).is_err(), "no tensor 2");
    assert!(p.opt.moment_view(Moment::MomentumBuffer, 0).is_err());
}

#[test]
fn gpu_state_dicts_move_to_the_cpu_and_back_and_resume() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu grad scaler state dicts");
    let lens = sizes(&mut rng, sized(100_001, 20_001), 3000, 3);
    for cfg in optim_support::all_configs() {
        let schedule = LrSchedule::Constant;
        let mut p = GpuPair::new(&gpu, &mut rng, cfg, schedule, dynamic(2), &lens);
        for step in 0..5 {
            let grads = scaled_grads(&mut rng, &lens, p.reference.scaler.scale, step == 1);
            p.step(&grads);
            p.check_step(&format!("{cfg:?} step {step}"), &grads, false);
        }
        // GPU → CPU: the host objects continue as the device ones (and the reference).
        let mut cpu_opt = object(&Device::Cpu, &cfg, &lens);
        cpu_opt
            .load_state_dict(&p.opt.state_dict().unwrap())
            .unwrap();
        let mut cpu_scaler = CpuGradScaler::new(LossScale::Off).unwrap();
        cpu_scaler
            .load_state_dict(&p.scaler.state_dict().unwrap())
            .unwrap();
        let mut host = Weights {
            master: p.model.masters(&gpu),
            half: p.model.halves(&gpu),
        };
        for step in 5..10 {
            let grads = scaled_grads(&mut rng, &lens, p.reference.scaler.scale, step == 7);
            p.step(&grads);
            let what = format!("{cfg:?} step {step}");
            p.check_step(&what, &grads, step == 9);
            let mut g = grads.clone();
            let mut params = host.params(&mut g);
            let _ = cpu_scaler.step(&mut *cpu_opt, &mut params).unwrap();
            drop(params);
            cpu_scaler.update().unwrap();
            let what = format!("{what} on the CPU");
            same(&what, &host.master, &p.reference.weights.master, p.exact);
            assert_same_f32(&what, &g, &p.model.grads(&gpu));
            assert_eq!(cpu_scaler.state_dict(), p.scaler.state_dict().unwrap());
        }
        // CPU → GPU, into the existing buffers of a fresh pair, then continue.
        let (opt_dict, scaler_dict) = (cpu_opt.state_dict().unwrap(), cpu_scaler.state_dict());
        let off = LossScale::Off;
        let mut fresh = GpuPair::new(&gpu, &mut rng, cfg, schedule, off, &lens);
        fresh.opt.load_state_dict(&opt_dict).unwrap();
        fresh.scaler.load_state_dict(&scaler_dict).unwrap();
        fresh.model.set_masters(&gpu, &host.master);
        fresh.reference = p.reference.clone();
        fresh.exact = p.exact;
        for step in 10..13 {
            let grads = scaled_grads(&mut rng, &lens, fresh.reference.scaler.scale, step == 11);
            fresh.step(&grads);
            let what = format!("{cfg:?} step {step}, loaded on the GPU");
            fresh.check_step(&what, &grads, true);
        }
    }
}

/// What the graph test saves to load back later.
type Saved = (
    OptimizerStateDict,
    ScalerStateDict,
    Vec<Vec<f32>>,
    Reference,
);

#[test]
fn the_whole_step_replays_as_a_cuda_graph_also_after_a_state_dict_is_loaded() {
    let Some(shared) = gpu() else { return };
    // Captures need a handle of their own whose launches do not synchronise.
    let gpu = shared.fork().unwrap();
    gpu.set_sync_launches(false);
    let mut rng = rng("gpu grad scaler graph");
    let lens = sizes(&mut rng, sized(200_003, 30_003), 5000, 4);
    let (mode, weights) = (dynamic(2), Weights::random(&mut rng, &lens));
    for cfg in [
        OptimizerConfig::sgd_momentum(0.05, 0.9),
        OptimizerConfig::adamw(1e-2),
    ] {
        // The schedule runs on the device from the step counter, inside the graph too.
        let schedule = LrSchedule::Cosine {
            total: 16,
            min_lr: 0.0,
        };
        let new = |rng: &mut StdRng| {
            GpuPair::with_weights(&gpu, rng, cfg, schedule, mode, weights.clone())
        };
        let (mut graphed, mut eager) = (new(&mut rng), new(&mut rng));
        // Step 0 runs eagerly: it loads every module the step uses, so the capture loads none.
        let grads = scaled_grads(&mut rng, &lens, 1024.0, false);
        graphed.step(&grads);
        eager.step(&grads);
        eager.check_step("eager step 0", &grads, true);
        same_device("step 0", &gpu, &graphed.model, &eager.model);
        let GpuPair {
            scaler, opt, model, ..
        } = &mut graphed;
        let ((), graph) = gpu
            .capture(|_| {
                let mut params = model.params();
                scaler.step(&mut **opt, &mut params)?;
                drop(params);
                scaler.update()
            })
            .unwrap();
        assert_eq!(graphed.scaler.stage(), Stage::Ready);
        let mut saved = None;
        for step in 1..12 {
            if step == 8 {
                // Back to the state after step 4, loaded into the buffers the graph holds.
                let (o, s, masters, reference): Saved = saved.take().unwrap();
                for p in [&mut graphed, &mut eager] {
                    p.opt.load_state_dict(&o).unwrap();
                    p.scaler.load_state_dict(&s).unwrap();
                    p.model.set_masters(&gpu, &masters);
                }
                eager.reference = reference;
            }
            let poison = step % 3 == 0;
            let grads = scaled_grads(&mut rng, &lens, eager.reference.scaler.scale, poison);
            graphed.prepare(&grads);
            graph.launch().unwrap();
            eager.step(&grads);
            let what = format!("{cfg:?} graph replay {step} (poisoned {poison})");
            assert_eq!(eager.check_step(&what, &grads, true), poison, "{what}");
            same_device(&what, &gpu, &graphed.model, &eager.model);
            let (a, b) = (
                graphed.opt.state_dict().unwrap(),
                eager.opt.state_dict().unwrap(),
            );
            assert_eq!(a.step, b.step, "{what}");
            for (x, y) in [
                (&a.exp_avg, &b.exp_avg),
                (&a.exp_avg_sq, &b.exp_avg_sq),
                (&a.momentum_buffer, &b.momentum_buffer),
            ] {
                assert_eq!(x.is_some(), y.is_some(), "{what}");
                if let (Some(x), Some(y)) = (x, y) {
                    assert_same_f32(&what, x, y);
                }
            }
            let (s, t) = (
                graphed.scaler.state_dict().unwrap(),
                eager.scaler.state_dict().unwrap(),
            );
            assert_eq!(s, t, "{what}");
            if step == 4 {
                saved = Some((b, t, eager.model.masters(&gpu), eager.reference.clone()));
            }
        }
    }
}

#[test]
fn one_tensors_moments_are_read_without_a_full_download() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu optimizer moments");
    let lens = [3, 4097, 1025];
    for cfg in [
        OptimizerConfig::Adam(AdamConfig::default()),
        OptimizerConfig::sgd_momentum(0.1, 0.9),
    ] {
        let mut p = GpuPair::new(&gpu, &mut rng, cfg, LrSchedule::Constant, dynamic(4), &lens);
        for step in 0..3 {
            let grads = scaled_grads(&mut rng, &lens, p.reference.scaler.scale, false);
            p.step(&grads);
            p.check_step(&format!("{cfg:?} step {step}"), &grads, true);
        }
        let dict = p.opt.state_dict().unwrap();
        for which in kept_moments(&cfg) {
            let all = match which {
                Moment::ExpAvg => dict.exp_avg.as_ref(),
                Moment::ExpAvgSq => dict.exp_avg_sq.as_ref(),
                Moment::MomentumBuffer => dict.momentum_buffer.as_ref(),
            }
            .unwrap();
            for (t, &n) in lens.iter().enumerate() {
                let got = p.opt.moment(which, t).unwrap();
                assert_same_f32(&format!("{which:?} {t}"), &[got], &[all[t].clone()]);
                // The view, copied asynchronously into a buffer of ours.
                let view = p.opt.moment_view(which, t).unwrap();
                assert_eq!(view.len(), n);
                let mut mine = gpu.alloc_zeros::<f32>(n).unwrap();
                gpu.stream().memcpy_dtod(&view, &mut mine).unwrap();
                let copied = gpu.download(&mine).unwrap();
                assert_same_f32(&format!("{which:?} {t} view"), &[copied], &[all[t].clone()]);
            }
        }
    }
}

/// The public step with bf16 working copies (`GpuParam<'_, bf16>`): the GPU scaler and
/// optimizer object against `CpuGradScaler` with `Param<'_, bf16>`, every optimizer, poisoned
/// steps included. Each step starts from poisoned copies: a skipped step leaves them, a real one
/// writes each as `bf16::from_f32` of its new master, bit for bit with the CPU (NaN as NaN)
/// whenever the masters are (constant rate, the device's bias corrections exact).
#[test]
fn gpu_scaler_steps_bf16_copies_like_the_cpu_scaler() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu grad scaler bf16");
    let poison = bf16::from_bits(0x7F81); // never written: the conversion quiets NaNs
    let lens = sizes(&mut rng, sized(70_001, 9_001), 5_000, 3);
    for cfg in optim_support::all_configs() {
        let exact = bias_terms_exact(&gpu, &cfg, 64);
        let mut cpu_opt = object(&Device::Cpu, &cfg, &lens);
        let mut gpu_opt = object(&Device::Cuda(gpu.clone()), &cfg, &lens);
        let mut cpu_scaler = CpuGradScaler::new(dynamic(2)).unwrap();
        let mut scaler = GradScaler::new(&gpu, dynamic(2)).unwrap();
        let mut master: Vec<Vec<f32>> = lens.iter().map(|&n| values(&mut rng, n)).collect();
        let mut copy: Vec<Vec<bf16>> = lens.iter().map(|&n| vec![poison; n]).collect();
        let mut d_master: Vec<DeviceBuffer<f32>> =
            master.iter().map(|m| gpu.upload(m).unwrap()).collect();
        let mut d_grad: Vec<DeviceBuffer<f32>> =
            lens.iter().map(|&n| gpu.alloc_zeros(n).unwrap()).collect();
        // At an odd offset: 2-byte aligned, not 8.
        let mut d_copy: Vec<DeviceBuffer<bf16>> = lens
            .iter()
            .map(|&n| gpu.upload(&vec![poison; n + 1]).unwrap())
            .collect();
        for step in 0..6 {
            let bad = step == 1 || rng.gen_bool(0.2);
            let mut grads = scaled_grads(&mut rng, &lens, cpu_scaler.scale(), bad);
            for (d, g) in d_grad.iter_mut().zip(&grads) {
                gpu.stream().memcpy_htod(g, d).unwrap();
            }
            for d in &mut d_copy {
                gpu.stream().memcpy_htod(&vec![poison; d.len()], d).unwrap();
            }
            copy.iter_mut().for_each(|c| c.fill(poison));
            let mut params: Vec<Param<'_, bf16>> = (master.iter_mut())
                .zip(grads.iter_mut())
                .zip(copy.iter_mut())
                .map(|((master, grad), half)| Param { master, grad, half })
                .collect();
            let outcome = cpu_scaler.step(&mut *cpu_opt, &mut params).unwrap();
            drop(params);
            cpu_scaler.update().unwrap();
            let mut params: Vec<GpuParam<'_, bf16>> = (d_master.iter_mut())
                .zip(d_grad.iter_mut())
                .zip(d_copy.iter_mut())
                .map(|((m, g), h)| GpuParam {
                    master: m.slice_mut(..),
                    grad: g.slice_mut(..),
                    half: h.slice_mut(1..),
                })
                .collect();
            scaler.step(&mut *gpu_opt, &mut params).unwrap();
            drop(params);
            scaler.update().unwrap();

            let what = format!("{cfg:?} bf16 step {step} (poisoned {bad})");
            assert_eq!(outcome.skipped(), bad, "{what}");
            let flag = gpu.download(scaler.found_inf()).unwrap()[0];
            assert_eq!(flag != 0.0, bad, "{what}: found_inf");
            let got_master: Vec<Vec<f32>> =
                d_master.iter().map(|d| gpu.download(d).unwrap()).collect();
            same(&format!("{what}: masters"), &got_master, &master, exact);
            let got_copy: Vec<Vec<bf16>> = d_copy
                .iter()
                .map(|d| gpu.download(d).unwrap()[1..].to_vec())
                .collect();
            for (t, (g, w)) in got_copy.iter().zip(&copy).enumerate() {
                let what = format!("{what}: bf16 copy {t}");
                if bad {
                    assert!(g.iter().all(|x| x.to_bits() == poison.to_bits()), "{what}");
                    continue;
                }
                common::assert_all_written(&what, g, poison);
                let rounded: Vec<u32> = (got_master[t].iter())
                    .map(|&x| u32::from(bf16::from_f32(x).to_bits()))
                    .collect();
                assert_bits_eq_nan(&what, g, &rounded);
                if exact {
                    let want: Vec<u32> = w.iter().map(|h| u32::from(h.to_bits())).collect();
                    assert_bits_eq_nan(&what, g, &want);
                }
            }
            assert_eq!(
                scaler.get_scale().unwrap().to_bits(),
                cpu_scaler.scale().to_bits(),
                "{what}: scale"
            );
        }
    }
}

/// bf16 bits against expected bits, every NaN as one value.
fn assert_bits_eq_nan(what: &str, got: &[bf16], want: &[u32]) {
    let canon = |b: u32| if b & 0x7FFF > 0x7F80 { 0x1_0000 } else { b };
    let got: Vec<u32> = got.iter().map(|h| canon(u32::from(h.to_bits()))).collect();
    let want: Vec<u32> = want.iter().map(|&b| canon(b)).collect();
    common::assert_bits_eq(what, &got, &want, |i| i);
}
