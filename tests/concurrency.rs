//! One `Gpu` shared by many threads: ops, eager trainers and CUDA-graph trainers run at once while
//! the kernel modules load lazily underneath them, and every result must be bit-identical to the
//! same work run serially afterwards. No crash, no error, no wrong number.
//!
//! Run it with an empty driver JIT cache too (`rm -rf ~/.nv/ComputeCache`): module loads then
//! take seconds when only PTX is available, which widens every race window.

mod common;

use ampkit::cpu::optim::OptimizerConfig;
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::f16;
use ampkit::nn::MlpConfig;
use ampkit::ops::gemm::{self, Epilogue};
use ampkit::ops::optim::{GpuOptimizer, GpuParamTensor};
use ampkit::ops::{cast, cross_entropy, layernorm, relu, softmax, unscale};
use ampkit::shape::{GemmShape, Layout};
use ampkit::train::gpu_backend::GpuBackend;
use ampkit::train::{Backend, TrainConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Barrier};

/// Threads sharing the one `Gpu`.
const THREADS: usize = 12;
/// Work items each thread runs back to back.
const ROUNDS: usize = 2;

/// The kinds of work a thread runs; each yields every output bit it produced.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// An MLP trainer replaying its step as a CUDA graph (captured on the third step).
    GraphTrainer,
    /// An MLP trainer with LayerNorm, one layer in f32 (cuBLAS), launching kernel by kernel.
    EagerTrainer,
    /// A graph-mode trainer with LayerNorm (its capture holds LayerNorm's scratch reductions).
    GraphTrainerLayerNorm,
    /// GEMMs in all three layouts (split-K shapes included, which use the scratch buffer), a
    /// bias gradient, casts and ReLU.
    Gemms,
    /// LayerNorm forward/backward (warp, block and, on Hopper, cluster kernels) and softmax.
    Rows,
    /// Fused cross-entropy from f16 logits, unscale + inf check, and one Adam step.
    AmpStep,
}

const KINDS: [Work; 6] = [
    Work::GraphTrainer,
    Work::EagerTrainer,
    Work::GraphTrainerLayerNorm,
    Work::Gemms,
    Work::Rows,
    Work::AmpStep,
];

fn bits_f32(v: &[f32]) -> impl Iterator<Item = u32> + '_ {
    v.iter().map(|x| x.to_bits())
}

fn bits_f16(v: &[f16]) -> impl Iterator<Item = u32> + '_ {
    v.iter().map(|x| u32::from(x.to_bits()))
}

fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

fn halves(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

fn run(gpu: &Arc<Gpu>, work: Work, seed: u64) -> ampkit::Result<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    match work {
        Work::GraphTrainer => trainer(gpu, &mut rng, &[96, 80, 10], false, true, &[]),
        Work::EagerTrainer => trainer(gpu, &mut rng, &[72, 48, 40, 10], true, false, &[1]),
        Work::GraphTrainerLayerNorm => trainer(gpu, &mut rng, &[64, 56, 10], true, true, &[]),
        Work::Gemms => gemms(gpu, &mut rng),
        Work::Rows => rows(gpu, &mut rng),
        Work::AmpStep => amp_step(gpu, &mut rng),
    }
}

/// Trains a small MLP for two epochs on random data and returns every per-step loss and scale
/// and the final parameters and optimizer moments.
fn trainer(
    gpu: &Arc<Gpu>,
    rng: &mut StdRng,
    layers: &[usize],
    layernorm: bool,
    cuda_graph: bool,
    fp32_layers: &[usize],
) -> ampkit::Result<Vec<u32>> {
    let batch = 32;
    let samples = batch * 6 + 7; // six full (graphable) batches and a partial one
    let cfg = TrainConfig {
        model: MlpConfig {
            layers: layers.to_vec(),
            layernorm,
            fp32_layers: fp32_layers.to_vec(),
            ..MlpConfig::mnist_default()
        },
        optimizer: OptimizerConfig::adam(1e-3),
        batch,
        seed: rng.gen(),
        cuda_graph,
        ..TrainConfig::mnist_default()
    };
    let inputs = layers[0];
    let classes = *layers.last().unwrap();
    let images = uniform(rng, samples * inputs, -1.0, 1.0);
    let labels: Vec<u32> = (0..samples)
        .map(|_| rng.gen_range(0..classes as u32))
        .collect();
    let mut b = GpuBackend::new(gpu.clone(), &cfg)?;
    let mut out = Vec::new();
    for _epoch in 0..2 {
        b.load_epoch(&images, &labels)?;
        let mut first = 0;
        while first < samples {
            let n = batch.min(samples - first);
            b.step(first, n)?;
            first += n;
        }
        for r in b.take_records()? {
            out.extend([r.loss.to_bits(), r.scale.to_bits(), u32::from(r.skipped)]);
        }
    }
    let state = b.export()?;
    for p in &state.params {
        out.extend(bits_f32(&p.data));
    }
    for m in state.exp_avg.iter().chain(&state.exp_avg_sq) {
        out.extend(bits_f32(m));
    }
    Ok(out)
}

fn gemms(gpu: &Gpu, rng: &mut StdRng) -> ampkit::Result<Vec<u32>> {
    let mut out = Vec::new();
    // Small m·n with a long k: split-K with partial sums in the scratch buffer.
    for (layout, m, n, k) in [
        (Layout::Forward, 96, 64, 6144),
        (Layout::Wgrad, 72, 40, 4093),
        (Layout::Dgrad, 257, 129, 520),
        (Layout::Forward, 333, 190, 77),
    ] {
        let (ar, br) = match layout {
            Layout::Forward => (m * k, n * k),
            Layout::Dgrad => (m * k, k * n),
            Layout::Wgrad => (k * m, k * n),
        };
        let a = gpu.upload(&halves(&uniform(rng, ar, -1.0, 1.0)))?;
        let b = gpu.upload(&halves(&uniform(rng, br, -1.0, 1.0)))?;
        let bias = gpu.upload(&uniform(rng, n, -1.0, 1.0))?;
        let shape = GemmShape::new(layout, m, n, k);
        let mut c = gpu.upload(&vec![f32::NAN; m * n])?;
        gemm::gemm(gpu, shape, &a, &b, &Epilogue::plain(), &mut c)?;
        out.extend(bits_f32(&gpu.download(&c)?));
        let mut h = gpu.upload(&vec![f16::NAN; m * n])?;
        let bias_view = bias.slice(..);
        gemm::gemm(
            gpu,
            shape,
            &a,
            &b,
            &Epilogue::bias(&bias_view, true),
            &mut h,
        )?;
        out.extend(bits_f16(&gpu.download(&h)?));
        let mut db = gpu.upload(&vec![f32::NAN; n])?;
        gemm::bias_grad(gpu, &h, m, n, &mut db)?;
        out.extend(bits_f32(&gpu.download(&db)?));
        let mut back = gpu.upload(&vec![f32::NAN; m * n])?;
        cast::f16_to_f32(gpu, &h, &mut back)?;
        let mut r = gpu.upload(&vec![f32::NAN; m * n])?;
        relu::backward(gpu, &back, &back, &mut r)?;
        out.extend(bits_f32(&gpu.download(&r)?));
    }
    Ok(out)
}

fn rows(gpu: &Gpu, rng: &mut StdRng) -> ampkit::Result<Vec<u32>> {
    let mut out = Vec::new();
    // Warp-, block- and (on Hopper) cluster-per-row widths.
    for (r, c) in [(300, 96), (40, 3000), (6, 40000)] {
        let x = gpu.upload(&uniform(rng, r * c, -3.0, 5.0))?;
        let gamma = gpu.upload(&uniform(rng, c, 0.5, 1.5))?;
        let beta = gpu.upload(&uniform(rng, c, -0.5, 0.5))?;
        let dy = gpu.upload(&uniform(rng, r * c, -1.0, 1.0))?;
        let mut y = gpu.upload(&vec![f32::NAN; r * c])?;
        let mut mean = gpu.upload(&vec![f32::NAN; r])?;
        let mut rstd = gpu.upload(&vec![f32::NAN; r])?;
        layernorm::forward(
            gpu, &x, r, c, &gamma, &beta, 1e-5, &mut y, &mut mean, &mut rstd,
        )?;
        let mut dx = gpu.upload(&vec![f32::NAN; r * c])?;
        let mut dgamma = gpu.upload(&vec![f32::NAN; c])?;
        let mut dbeta = gpu.upload(&vec![f32::NAN; c])?;
        layernorm::backward(
            gpu,
            &dy,
            &x,
            &mean,
            &rstd,
            &gamma,
            r,
            c,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
        )?;
        let mut p = gpu.upload(&vec![f32::NAN; r * c])?;
        softmax::forward(gpu, &x, r, c, &mut p)?;
        let mut dp = gpu.upload(&vec![f32::NAN; r * c])?;
        softmax::backward(gpu, &p, &dy, r, c, &mut dp)?;
        for buf in [&y, &mean, &rstd, &dx, &dgamma, &dbeta, &p, &dp] {
            out.extend(bits_f32(&gpu.download(buf)?));
        }
    }
    Ok(out)
}

fn amp_step(gpu: &Gpu, rng: &mut StdRng) -> ampkit::Result<Vec<u32>> {
    let mut out = Vec::new();
    let (r, c) = (512, 1000);
    let logits = gpu.upload(&halves(&uniform(rng, r * c, -8.0, 8.0)))?;
    let labels: Vec<u32> = (0..r).map(|_| rng.gen_range(0..c as u32)).collect();
    let labels = gpu.upload(&labels)?;
    let scale = gpu.upload(&[1024.0f32])?;
    let mut dlogits = gpu.upload(&vec![f16::NAN; r * c])?;
    let mut loss = gpu.upload(&[f32::NAN])?;
    cross_entropy::softmax_cross_entropy::<f16, f16>(
        gpu,
        &logits,
        &labels,
        r,
        c,
        &scale,
        &mut dlogits,
        &mut loss,
    )?;
    out.extend(bits_f16(&gpu.download(&dlogits)?));
    out.extend(bits_f32(&gpu.download(&loss)?));

    let lens = [r * c, 4097, 33];
    let mut grads = Vec::new();
    for &n in &lens {
        let mut g = gpu.upload(&vec![f32::NAN; n])?;
        cast::f16_to_f32(gpu, &dlogits.slice(..n), &mut g)?;
        grads.push(g);
    }
    let mut found_inf = gpu.upload(&[0.0f32])?;
    unscale::unscale_and_check(gpu, &mut grads, &scale, &mut found_inf)?;
    let mut masters = Vec::new();
    let mut copies = Vec::new();
    for &n in &lens {
        masters.push(gpu.upload(&uniform(rng, n, -1.0, 1.0))?);
        copies.push(gpu.upload(&vec![f16::NAN; n])?);
    }
    let cfg = OptimizerConfig::adam(1e-3);
    let mut opt = GpuOptimizer::new(gpu, &cfg, &lens)?;
    for _ in 0..2 {
        let mut params: Vec<GpuParamTensor<'_>> = masters
            .iter_mut()
            .zip(&grads)
            .zip(&mut copies)
            .map(|((m, g), h)| GpuParamTensor {
                master: m.slice_mut(..),
                grad: g.slice(..),
                half: h.slice_mut(..),
            })
            .collect();
        opt.step(gpu, &cfg, &mut params, &found_inf)?;
    }
    out.extend(bits_f32(&gpu.download(&found_inf)?));
    for (m, h) in masters.iter().zip(&copies) {
        out.extend(bits_f32(&gpu.download(m)?));
        out.extend(bits_f16(&gpu.download(h)?));
    }
    let state = opt.download(gpu)?;
    for t in 0..lens.len() {
        out.extend(bits_f32(state.exp_avg(t).unwrap_or_default()));
        out.extend(bits_f32(state.exp_avg_sq(t).unwrap_or_default()));
    }
    Ok(out)
}

/// Every work item: (thread, round) → (kind, seed).
fn plan(base: u64) -> Vec<Vec<(Work, u64)>> {
    (0..THREADS)
        .map(|t| {
            (0..ROUNDS)
                .map(|r| {
                    let kind = KINDS[(t + r * 5) % KINDS.len()];
                    (
                        kind,
                        base ^ ((t * ROUNDS + r) as u64).wrapping_mul(0x9e37_79b9),
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn threads_sharing_one_gpu_match_a_serial_run_bit_for_bit() {
    let Some(_) = common::gpu() else { return };
    // Its own handle, launching without synchronising (as a library user would), so trainers
    // capture CUDA graphs while other threads launch, load modules and allocate.
    let gpu = Gpu::new(0).expect("opening the GPU");
    gpu.set_sync_launches(false);
    let base: u64 = common::rng("concurrency").gen();
    let plan = plan(base);

    let start = Barrier::new(THREADS);
    let t0 = std::time::Instant::now();
    let threaded: Vec<Vec<Result<Vec<u32>, String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .iter()
            .map(|items| {
                let (gpu, start) = (&gpu, &start);
                s.spawn(move || {
                    start.wait();
                    items
                        .iter()
                        .map(|&(w, seed)| run(gpu, w, seed).map_err(|e| format!("{w:?}: {e}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker thread panicked"))
            .collect()
    });
    eprintln!(
        "{THREADS} threads × {ROUNDS} items in {:.2} s; modules loaded: {:?}",
        t0.elapsed().as_secs_f64(),
        gpu.loaded_modules()
    );

    let mut failures = Vec::new();
    for (t, (items, results)) in plan.iter().zip(&threaded).enumerate() {
        for (r, (&(w, seed), got)) in items.iter().zip(results).enumerate() {
            let want = run(&gpu, w, seed).expect("the serial run");
            match got {
                Err(e) => failures.push(format!("thread {t} item {r}: error {e}")),
                Ok(got) if got != &want => {
                    let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                    failures.push(format!(
                        "thread {t} item {r} ({w:?}): {differ} of {} values differ from the \
                         serial run (lengths {} / {})",
                        want.len(),
                        got.len(),
                        want.len()
                    ))
                }
                Ok(_) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} work items went wrong:\n  {}",
        failures.len(),
        THREADS * ROUNDS,
        failures.join("\n  ")
    );
}

/// `Gpu::capture` on a fork: the graph replays the captured ops on fresh inputs; misuse (sync
/// launches, a nested capture, a synchronisation inside the capture) is a typed error that
/// leaves the handle usable.
#[test]
fn captures_replay_and_misuse_is_a_typed_error() {
    let Some(shared) = common::gpu() else { return };
    let gpu = shared.fork().unwrap();
    let n = 1000;
    let x = gpu
        .upload(&uniform(&mut common::rng("capture"), n, -4.0, 4.0))
        .unwrap();
    let mut y = gpu.upload(&vec![f32::NAN; n]).unwrap();

    // Synchronising launches cannot be captured.
    gpu.set_sync_launches(true);
    let err = gpu.capture(|g| relu::forward(g, &x, &mut y)).err();
    assert!(
        matches!(err, Some(ampkit::Error::InvalidArgument { .. })),
        "{err:?}"
    );
    gpu.set_sync_launches(false);

    // Warm (loads the module), then capture and replay.
    relu::forward(&gpu, &x, &mut y).unwrap();
    gpu.upload(&vec![f32::NAN; n]).map(|p| y = p).unwrap();
    let ((), graph) = gpu.capture(|g| relu::forward(g, &x, &mut y)).unwrap();
    let got: Vec<f32> = gpu.download(&y).unwrap();
    assert!(got.iter().all(|v| v.is_nan()), "capturing ran the work");
    graph.launch().unwrap();
    let want: Vec<f32> = gpu
        .download(&x)
        .unwrap()
        .iter()
        .map(|v| v.max(0.0))
        .collect();
    assert_eq!(gpu.download(&y).unwrap(), want);

    // A capture inside a capture.
    let other = shared.fork().unwrap();
    other.set_sync_launches(false);
    let nested = gpu
        .capture(|g| {
            let inner = other.capture(|o| relu::forward(o, &x, &mut y));
            relu::forward(g, &x, &mut y)?;
            inner.map(|_| ())
        })
        .err();
    assert!(
        matches!(nested, Some(ampkit::Error::InvalidArgument { .. })),
        "{nested:?}"
    );

    // A synchronisation or a copy to the host inside the capture: a typed error raised before
    // the driver is asked (which would invalidate the capture and report an API error), the
    // capture ends, and the handle still computes.
    let synced = gpu.capture(|g| {
        relu::forward(g, &x, &mut y)?;
        g.synchronize()
    });
    assert!(
        matches!(synced, Err(ampkit::Error::InvalidArgument { .. })),
        "a synchronising capture: {:?}",
        synced.map(|_| ())
    );
    let copied = gpu.capture(|g| g.download(&y));
    assert!(
        matches!(copied, Err(ampkit::Error::InvalidArgument { .. })),
        "a download inside a capture: {:?}",
        copied.map(|_| ())
    );
    let mut z = gpu.upload(&vec![f32::NAN; n]).unwrap();
    relu::forward(&gpu, &x, &mut z).unwrap();
    assert_eq!(gpu.download(&z).unwrap(), want);
}

/// Modules load from the SASS built for this GPU wherever the build carries some (no JIT at
/// first use), and the loader reports the image the driver was given.
#[test]
fn modules_load_from_the_sass_built_for_this_gpu() {
    let Some(gpu) = common::gpu() else { return };
    let cc = gpu.info().compute_capability;
    for m in &ampkit::kernels::ALL {
        if m.arch.starts_with("compute_90") && cc != (9, 0) {
            continue; // Hopper-only
        }
        let image = gpu.load_module(m).expect("the module loads");
        assert_eq!(gpu.module_image(m), Some(image), "{}", m.name);
        match m.sass_for(cc) {
            Some(arch) => assert_eq!(
                image,
                ampkit::cuda::ModuleImage::Sass { arch },
                "{}: the driver refused the SASS built for sm_{}{}",
                m.name,
                cc.0,
                cc.1
            ),
            None => assert_eq!(image, ampkit::cuda::ModuleImage::Ptx { arch: m.arch }),
        }
        eprintln!("{:<16} {image}", m.name);
    }
}

/// Fused-loss launches queued on two streams at once (two forks of one `Gpu`) each compute their
/// own mean loss: the kernels' completion counter belongs to the launching handle, not to the
/// module.
#[test]
fn loss_launches_on_two_streams_keep_their_own_tickets() {
    let Some(shared) = common::gpu() else { return };
    let mut rng = common::rng("two-stream loss");
    let (rows, classes, launches) = (8192, 1000, 32);
    let forks = [shared.fork().unwrap(), shared.fork().unwrap()];
    let inputs: Vec<_> = forks
        .iter()
        .map(|g| {
            let logits = g
                .upload(&uniform(&mut rng, rows * classes, -6.0, 6.0))
                .unwrap();
            let labels: Vec<u32> = (0..rows)
                .map(|_| rng.gen_range(0..classes as u32))
                .collect();
            (
                logits,
                g.upload(&labels).unwrap(),
                g.upload(&[1.0f32]).unwrap(),
            )
        })
        .collect();
    let run = |g: &Gpu,
               (x, y, s): &(DeviceBuffer<f32>, DeviceBuffer<u32>, DeviceBuffer<f32>),
               sync: bool| {
        let mut d = g.alloc_zeros::<f32>(rows * classes).unwrap();
        let mut losses = g.alloc_zeros::<f32>(launches).unwrap();
        for i in 0..launches {
            let mut loss = losses.slice_mut(i..i + 1);
            cross_entropy::softmax_cross_entropy::<f32, f32>(
                g, x, y, rows, classes, s, &mut d, &mut loss,
            )
            .unwrap();
            if sync {
                g.synchronize().unwrap();
            }
        }
        losses
    };
    for g in &forks {
        g.set_sync_launches(false);
    }
    // Both streams' launches queued before either is waited for, so they overlap on the GPU.
    let concurrent: Vec<_> = forks
        .iter()
        .zip(&inputs)
        .map(|(g, i)| run(g, i, false))
        .collect();
    for (g, (i, got)) in forks.iter().zip(inputs.iter().zip(&concurrent)) {
        let got = g.download(got).unwrap();
        let want = g.download(&run(g, i, true)).unwrap();
        assert!(got.iter().all(|l| l.is_finite()), "{got:?}");
        assert!(
            got.iter().all(|l| l.to_bits() == want[0].to_bits()),
            "losses of concurrent launches {got:?}, alone {}",
            want[0]
        );
    }
}

/// Per-kernel profiling on a handle: each launch outside a capture gets its own GPU time, in
/// launch order; the launch count counts kernels (a capture's too, a replay's not); reading the
/// times inside a capture is a typed error; the memory high-water mark sees a new allocation.
#[test]
fn kernel_profiles_count_and_time_each_launch() {
    let Some(shared) = common::gpu() else { return };
    let gpu = shared.fork().unwrap();
    gpu.set_sync_launches(false);
    let n = 1 << 20;
    let x = gpu
        .upload(&uniform(&mut common::rng("profile"), n, -4.0, 4.0))
        .unwrap();
    let mut y = gpu.upload(&vec![f32::NAN; n]).unwrap();
    let mut h = gpu.upload(&vec![f16::NAN; n]).unwrap();
    relu::forward(&gpu, &x, &mut y).unwrap(); // loads the modules before counting
    cast::f32_to_f16(&gpu, &x, &mut h).unwrap();
    assert!(gpu.kernel_times().unwrap().is_empty(), "profiling is off");

    gpu.profile_kernels(true);
    let before = gpu.launch_count();
    for _ in 0..3 {
        relu::forward(&gpu, &x, &mut y).unwrap();
    }
    cast::f32_to_f16(&gpu, &y, &mut h).unwrap();
    assert_eq!(gpu.launch_count() - before, 4);
    let times = gpu.kernel_times().unwrap();
    let names: Vec<&str> = times.iter().map(|(k, _)| *k).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names[..3].iter().all(|k| k.starts_with("relu_forward")),
        "{names:?}"
    );
    assert!(names[3].starts_with("cast_f32_to_f16"), "{names:?}");
    assert!(
        times.iter().all(|(_, us)| *us > 0.0 && *us < 1e5),
        "{times:?}"
    );
    assert!(gpu.kernel_times().unwrap().is_empty(), "read once");

    // Captured launches count but are not profiled; reading times inside a capture is refused.
    let before = gpu.launch_count();
    let (inside, graph) = gpu
        .capture(|g| {
            relu::forward(g, &x, &mut y)?;
            Ok(g.kernel_times().is_err())
        })
        .unwrap();
    assert!(inside, "kernel_times inside a capture must be an error");
    assert_eq!(gpu.launch_count() - before, 1);
    graph.launch().unwrap();
    assert_eq!(
        gpu.launch_count() - before,
        1,
        "a replay launches no kernel through ampkit"
    );
    assert!(gpu.kernel_times().unwrap().is_empty());
    gpu.profile_kernels(false);

    // The pool is the device's, shared with the tests running beside this one, which may free
    // memory between two readings: so the checks are that the mark never goes down and that it
    // covers this allocation, not that it rose by exactly its size.
    gpu.reset_peak_memory().unwrap();
    let base = gpu.peak_memory().unwrap();
    let big = gpu.alloc_zeros::<u8>(64 << 20).unwrap();
    gpu.synchronize().unwrap();
    let peak = gpu.peak_memory().unwrap();
    assert!(peak >= base && peak >= 64 << 20, "{base} → {peak}");
    drop(big);
}
