//! The GPU half of `ampkit bench`, top to bottom: the two ceilings, the GEMM rows, the
//! memory-bound rows (`gpu_mem.rs`, with the sweep of `gpu_sweep.rs` when asked for) and the
//! training rows, all timed by the harness (`harness.rs`).

use super::bytes;
use super::cases::{Cases, GemmCase};
use super::clock::{median, utc_date};
use super::collect::{selected, Collector, Options};
use super::gpu_fp8;
use super::gpu_gemm_tuning;
use super::gpu_mem::{self, CaseRows};
use super::gpu_sweep;
use super::harness::{failure, BenchOperand, Harness};
use super::inputs::{train_config, train_data};
use super::report::{Ceilings, Kind, Meta, Report, Row};
use super::work::{gemm_flops, gemm_shape, mlp_params, train_flops, train_shape};
use ampkit::check::{rel_l2_error, ToF64};
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::blas::{Blas, BlasLt};
use ampkit::ops::gemm::{gemm, Epilogue, GemmOutput};
use ampkit::shape::{GemmShape, Layout};
use ampkit::train::gpu_backend::GpuBackend;
use ampkit::train::Backend;
use ampkit::tuning::gemm::plan;
use ampkit::{Error, Result};
use cudarc::driver::ValidAsZeroBits;
use half::{bf16, f16};
use std::sync::Arc;
use std::time::SystemTime;

/// Largest relative L2 difference between ampkit's GEMM and cuBLAS's that still counts as the
/// same result (f16 outputs differ by rounding, ~1e-3).
const GEMM_TOLERANCE: f64 = 1e-2;

/// The driver line: the CUDA version the driver supports and, where `/proc` shows it, the
/// kernel module's version.
fn driver_line(gpu: &Gpu) -> String {
    let v = gpu.info().driver_version;
    let cuda = format!("CUDA {}.{}", v / 1000, (v % 1000) / 10);
    let module = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|s| {
            let first = s.lines().next()?.to_string();
            first
                .split_whitespace()
                .find(|t| {
                    t.split('.').count() >= 2
                        && t.split('.')
                            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(str::to_string)
        });
    match module {
        Some(m) => format!("{m} ({cuda})"),
        None => cuda,
    }
}

/// The GPU benchmark, every row in order: ceilings, GEMMs, memory-bound kernels, training steps.
pub fn run(gpu: &Arc<Gpu>, opts: &Options, cases: &Cases) -> Result<Report> {
    let date = utc_date(SystemTime::now());
    let mut h = Harness::new(gpu, opts)?;
    let mut c = Collector::new(opts);

    c.ceilings.copy_gbs = c.row(Kind::Ceiling, "copy d2d", "1 GiB f32", true, |_| {
        copy_ceiling(&mut h)
    });
    let mut queue_ahead = false;
    if let Some(gbs) = c.ceilings.copy_gbs {
        match h.enable_queue_ahead(gbs) {
            Ok(()) => queue_ahead = true,
            Err(e) => c.notes.push(format!("queue-ahead off: {e}")),
        }
    }
    let blas = Blas::new(gpu).map_err(|e| e.to_string());
    let blas_ref = || blas.as_ref().map_err(|e| failure(e.clone()));
    let big = gemm_shape(Layout::Forward, 8192, 8192, 8192);
    c.ceilings.cublas_f16_8192_tflops =
        c.row(Kind::Ceiling, "cuBLAS f16 gemm 8192^3", &big, true, |_| {
            cublas_ceiling(&mut h, blas_ref()?)
        });

    let mut plans = Vec::new();
    // cuBLASLt (the FP8 rows' baseline), created by the first FP8 row that runs.
    let mut blas_lt: Option<std::result::Result<BlasLt, String>> = None;
    for case in &cases.gemm {
        let (name, shape) = (
            case.row_name(),
            gemm_shape(case.layout, case.m, case.n, case.k),
        );
        if case.fp8.is_some() {
            let sweep = std::env::var_os("AMPKIT_BENCH_GEMM_SWEEP").is_some()
                && selected(opts.only.as_deref(), Kind::Gemm.as_str(), &name, &shape);
            let mut note = None;
            c.row(Kind::Gemm, &name, &shape, false, |_| {
                let lt = blas_lt.get_or_insert_with(|| BlasLt::new(gpu).map_err(|e| e.to_string()));
                let lt = lt.as_mut().map_err(|e| failure(e.clone()))?;
                let row = gpu_fp8::fp8_row(&mut h, lt, case)?;
                if sweep {
                    note = Some(
                        gpu_fp8::fp8_sweep(&mut h, lt, case)
                            .unwrap_or_else(|e| format!("fp8 sweep {}: {e}", case.name)),
                    );
                }
                plans.push(format!(
                    "{} {}",
                    case.name,
                    row.plan.as_deref().unwrap_or("?")
                ));
                Ok(row)
            });
            c.notes.extend(note);
            continue;
        }
        c.row(Kind::Gemm, &name, &shape, false, |ceil| {
            let rounds = opts.gemm_rounds();
            let blas = blas_ref()?;
            let row = match (case.bf16, case.f32_out) {
                (false, true) => gemm_row::<f32, f16>(&mut h, blas, case, rounds, ceil),
                (false, false) => gemm_row::<f16, f16>(&mut h, blas, case, rounds, ceil),
                (true, true) => gemm_row::<f32, bf16>(&mut h, blas, case, rounds, ceil),
                (true, false) => gemm_row::<bf16, bf16>(&mut h, blas, case, rounds, ceil),
            }?;
            plans.push(format!(
                "{} {}",
                case.name,
                row.plan.as_deref().unwrap_or("?")
            ));
            Ok(row)
        });
        if std::env::var_os("AMPKIT_BENCH_GEMM_SWEEP").is_some()
            && selected(opts.only.as_deref(), Kind::Gemm.as_str(), &name, &shape)
        {
            match gpu_gemm_tuning::gemm_sweep(&mut h, case) {
                Ok(line) => c.notes.push(line),
                Err(e) => c.notes.push(format!("sweep {}: {e}", case.name)),
            }
        }
        if let Some(specs) = std::env::var_os("AMPKIT_BENCH_GEMM_VERSUS") {
            if selected(opts.only.as_deref(), Kind::Gemm.as_str(), &name, &shape) {
                let specs = specs.to_string_lossy().into_owned();
                match gpu_gemm_tuning::gemm_versus(&mut h, blas_ref()?, case, &specs) {
                    Ok(line) => c.notes.push(line),
                    Err(e) => c.notes.push(format!("versus {}: {e}", case.name)),
                }
            }
        }
    }
    if !plans.is_empty() {
        c.notes
            .push(format!("gemm plans (tile/splits): {}", plans.join("; ")));
    }

    // AMPKIT_BENCH_MEM_SWEEP=1: every softmax/loss launch shape, before each softmax case's rows.
    let sweep = std::env::var_os("AMPKIT_BENCH_MEM_SWEEP").is_some();
    gpu_mem::run(
        &mut h,
        &mut c,
        cases,
        sweep.then_some(gpu_sweep::softmax_sweep as CaseRows),
    );

    for t in &cases.train {
        let (label, dims, batch, precision) = (&t.name, &t.layers[..], t.batch, t.precision);
        let fp8_last = t.fp8_last_layer;
        // bf16 and FP8 rows: the graph step only (what they are compared on).
        let low = precision != ampkit::amp::Precision::Mixed;
        // The unfused step beside the fused one, for models with a classifier head to fuse,
        // and the fused step with gradient-norm clipping (what the fused clipping costs).
        let head = dims.last().is_some_and(|&c| c <= 16);
        let modes = [
            (false, true, false),
            (true, true, false),
            (true, false, false),
            (true, true, true),
        ];
        let wanted = |&(g, f, c): &(bool, bool, bool)| {
            if low {
                g && f && !c
            } else {
                (f && !c) || head
            }
        };
        for (graph, fused, clip) in modes.into_iter().filter(wanted) {
            let mode = match (graph, fused, clip) {
                (false, _, _) => "eager",
                (true, true, false) => "graph",
                (true, false, _) => "graph unfused",
                (true, true, true) => "graph clip-norm",
            };
            let (name, shape) = (format!("{label} {mode}"), train_shape(dims, batch));
            let mut note = None;
            c.row(Kind::Train, &name, &shape, false, |ceil| {
                let mode = (graph, fused, clip);
                let model = (dims, precision, fp8_last);
                let (row, n) = train_row(&mut h, &name, model, batch, mode, ceil)?;
                note = Some(n);
                Ok(row)
            });
            c.notes.extend(note);
        }
    }
    c.notes.push(
        "vs cuBLAS = cuBLAS time / ampkit time on the same operands (> 1: ampkit faster); \
         train rows: one AMP step (forward, fused softmax-cross-entropy, backward, unscale + \
         inf check, fused Adam, scale update) launched kernel by kernel, no CUDA graph"
            .into(),
    );

    let runs = opts.setup_line(&format!(
        "L2 rotation on (input sets for 200 MB per row); queue-ahead {}; GEMMs: {} alternating \
         rounds vs cuBLAS; train: median of per-step CUDA-event times, no queue-ahead",
        if queue_ahead { "on" } else { "off" },
        opts.gemm_rounds()
    ));
    Ok(c.into_report(Meta {
        card: gpu.info().name.clone(),
        driver: driver_line(gpu),
        ampkit: env!("CARGO_PKG_VERSION").to_string(),
        date,
        runs,
    }))
}

/// Device-to-device copy of 1 GiB of f32: GB/s counts bytes read + written.
fn copy_ceiling(h: &mut Harness) -> Result<Row> {
    const N: usize = (1 << 30) / 4;
    let src = h.f32_buf(N, 1)?;
    let mut dst: DeviceBuffer<f32> = h.gpu.alloc_zeros(N)?;
    let stream = h.gpu.stream().clone();
    let us = h.median_us(false, |_| {
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(Error::driver("timing the device copy"))
    })?;
    let bytes = 2.0 * (1u64 << 30) as f64;
    let gbs = bytes / us / 1e3;
    Ok(Row::measured(
        Kind::Ceiling,
        "copy d2d",
        "1 GiB f32",
        us,
        Some(gbs),
        "GB/s",
        Some(gbs),
    ))
}

/// cuBLAS f16 GEMM at 8192³ (`Y = X·Wᵀ`, f16 out): TFLOP/s = 2·M·N·K / t.
fn cublas_ceiling(h: &mut Harness, blas: &Blas) -> Result<Row> {
    let (m, n, k) = (8192, 8192, 8192);
    let shape = GemmShape::new(Layout::Forward, m, n, k);
    let a = h.f16_buf(m * k, 2)?;
    let b = h.f16_buf(n * k, 3)?;
    let mut c: DeviceBuffer<f16> = h.gpu.alloc_zeros(m * n)?;
    let gpu = h.gpu.clone();
    let us = h.median_us(true, |_| {
        blas.gemm_half::<f16, _, _, _, _>(&gpu, shape, &a, &b, 0.0, &mut c)
    })?;
    let flops = gemm_flops(m, n, k);
    let tflops = flops / us / 1e6;
    let case = GemmCase {
        name: "8192^3".into(),
        layout: Layout::Forward,
        m,
        n,
        k,
        f32_out: false,
        bf16: false,
        fp8: None,
    };
    Ok(Row::measured(
        Kind::Ceiling,
        "cuBLAS f16 gemm 8192^3",
        &gemm_shape(Layout::Forward, m, n, k),
        us,
        Some(tflops),
        "TFLOP/s",
        Some(tflops),
    )
    .with_work(flops, case.bytes()))
}

/// ampkit's GEMM (the planner's choice) and cuBLAS on the same operands, in alternating rounds;
/// fails if the two results differ by more than [`GEMM_TOLERANCE`].
fn gemm_row<C, T>(
    h: &mut Harness,
    blas: &Blas,
    case: &GemmCase,
    rounds: usize,
    ceil: &Ceilings,
) -> Result<Row>
where
    C: GemmOutput<T> + ValidAsZeroBits + ToF64,
    T: BenchOperand,
{
    let shape = case.shape();
    let (la, lb) = case.operand_lens();
    let a = T::buf(h, la, 11)?;
    let b = T::buf(h, lb, 12)?;
    let mut ours: DeviceBuffer<C> = h.gpu.alloc_zeros(case.m * case.n)?;
    let mut theirs: DeviceBuffer<C> = h.gpu.alloc_zeros(case.m * case.n)?;
    let gpu = h.gpu.clone();
    let rounds = rounds.max(1);
    let per_round = (h.runs / rounds).max(1);
    let (mut t_ours, mut t_theirs) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let warmup = if r == 0 { h.warmup } else { h.warmup.min(2) };
        t_ours.extend(h.times_us(true, warmup, per_round, |_| {
            gemm::<C, _>(&gpu, shape, &a, &b, &Epilogue::plain(), &mut ours)
        })?);
        t_theirs.extend(h.times_us(true, warmup, per_round, |_| {
            blas.gemm_half::<C, _, _, _, _>(&gpu, shape, &a, &b, 0.0, &mut theirs)
        })?);
    }
    let (us, cublas_us) = (median(&mut t_ours), median(&mut t_theirs));
    let x = gpu.download(&ours)?;
    let reference: Vec<f64> = gpu.download(&theirs)?.iter().map(|v| v.to_f64()).collect();
    let diff = rel_l2_error(&x, &reference);
    if diff.is_nan() || diff > GEMM_TOLERANCE {
        return Err(failure(format!(
            "ampkit's result differs from cuBLAS's: relative L2 {diff:.2e} > {GEMM_TOLERANCE:.0e}"
        )));
    }
    let info = gpu.info();
    let p = plan(
        shape,
        true,
        info.multiprocessors,
        info.compute_capability == (9, 0),
    );
    let flops = gemm_flops(case.m, case.n, case.k);
    let mut row = Row::measured(
        Kind::Gemm,
        &case.row_name(),
        &gemm_shape(case.layout, case.m, case.n, case.k),
        us,
        Some(flops / us / 1e6),
        "TFLOP/s",
        ceil.cublas_f16_8192_tflops,
    )
    .with_work(flops, case.bytes());
    row.vs_cublas = Some(cublas_us / us);
    row.plan = Some(format!("{}/{}", p.config.name, p.splits));
    Ok(row)
}

/// One training step of an MLP on the GPU backend, eager (each kernel launched from the host) or
/// replaying the step's captured CUDA graph: warm-up, then the median of per-step event times
/// over consecutive steps; the step records are read back outside the timed region.
/// Returns the row and a note (skipped steps, last loss and scale).
fn train_row(
    h: &mut Harness,
    name: &str,
    (dims, precision, fp8_last): (&[usize], ampkit::amp::Precision, bool),
    batch: usize,
    (graph, fused, clip): (bool, bool, bool),
    ceil: &Ceilings,
) -> Result<(Row, String)> {
    let mut cfg = ampkit::train::TrainConfig {
        cuda_graph: graph,
        // A limit the bench's gradients exceed, so that every step scales them.
        clip: if clip {
            ampkit::amp::GradClip::Norm { max_norm: 1e-3 }
        } else {
            ampkit::amp::GradClip::Off
        },
        ..train_config(dims, batch, precision)
    };
    cfg.model.fp8.last_layer = fp8_last;
    let mut backend = GpuBackend::new(h.gpu.clone(), &cfg)?;
    backend.set_fusion(fused);
    // The backend queues its steps on a stream of its own: time them there.
    let bench_gpu = std::mem::replace(&mut h.gpu, backend.gpu().clone());
    let timed = train_row_timed(h, &mut backend, dims, batch);
    h.gpu = bench_gpu;
    let (us, records, step) = timed?;
    let Some(last) = records.last() else {
        return Err(failure("the timed steps left no records".into()));
    };
    if records.iter().all(|r| !r.loss.is_finite()) {
        return Err(failure(format!(
            "every timed step had a non-finite loss (last {})",
            last.loss
        )));
    }
    let skipped = records.iter().filter(|r| r.skipped).count();
    let flops = train_flops(dims, batch);
    let row = Row::measured(
        Kind::Train,
        name,
        &train_shape(dims, batch),
        us,
        Some(flops / us / 1e6),
        "TFLOP/s",
        ceil.cublas_f16_8192_tflops,
    )
    .with_work(flops, bytes::train_step(dims, batch));
    let busy: f64 = step.kernels.iter().map(|(_, t)| t).sum();
    let kernels: Vec<String> = (step.kernels.iter())
        .map(|(k, t)| format!("{k} {t:.1}"))
        .collect();
    let note = format!(
        "{name}: {} parameters, {skipped} of {} timed steps skipped (inf/NaN gradients), \
         last loss {:.4}, scale {}; {:.1} us wall per step (host); one eager step: {} kernels, \
         their event brackets (each also holds any wait for its own launch: upper bounds) sum \
         to {busy:.1} us, {:.0} % of the step's GPU time: {}",
        mlp_params(dims),
        records.len(),
        last.loss,
        last.scale,
        step.wall_us,
        step.kernels.len(),
        100.0 * busy / us,
        kernels.join(", ")
    );
    Ok((row, note))
}

/// Where one training step's time goes, beside its event-timed median.
struct StepAnatomy {
    /// Host wall time per timed step, µs (launches, or the graph launch, and the event records).
    wall_us: f64,
    /// One eager step's kernels in launch order, each with its own GPU time in µs.
    kernels: Vec<(&'static str, f64)>,
}

/// The timed part of [`train_row`], with `h.gpu` the backend's own handle: warm-up steps, then
/// per-step event times; returns the median, the timed steps' records, and the anatomy of one
/// more step run eagerly with per-kernel events.
fn train_row_timed(
    h: &mut Harness,
    backend: &mut GpuBackend,
    dims: &[usize],
    batch: usize,
) -> Result<(f64, Vec<ampkit::train::StepRecord>, StepAnatomy)> {
    // A few batches of distinct data (two for the wide model: 256 MB of inputs each).
    let batches = if batch * dims[0] > 1 << 24 { 2 } else { 4 };
    let (images, labels) = train_data(dims, batches * batch, 77);
    backend.load_epoch(&images, &labels)?;
    drop(images);
    let at = |i: usize| (i % batches) * batch;
    for i in 0..h.warmup {
        backend.step(at(i), batch)?;
    }
    h.gpu.synchronize()?;
    backend.take_records()?;
    let warmup = h.warmup;
    let wall = std::time::Instant::now();
    let mut times = h.times_us(false, 0, h.runs, |i| backend.step(at(warmup + i), batch))?;
    let wall_us = wall.elapsed().as_secs_f64() * 1e6 / h.runs.max(1) as f64;
    let records = backend.take_records()?;
    // One more step, eager, each kernel bracketed by events (outside the timed steps).
    backend.set_cuda_graph(false);
    let gpu = backend.gpu().clone();
    gpu.profile_kernels(true);
    let profiled = backend.step(0, batch).and_then(|()| gpu.kernel_times());
    gpu.profile_kernels(false);
    let kernels = profiled?;
    backend.take_records()?;
    Ok((
        median(&mut times),
        records,
        StepAnatomy { wall_us, kernels },
    ))
}
