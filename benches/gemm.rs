//! GEMM benchmark: ampkit's tensor-core kernel against cuBLAS (`cublasGemmEx`, f16 operands,
//! f32 compute, the same output type) on the same operands in the same run, timed with CUDA
//! events (5 alternating rounds of 10 timed runs per side, median of the round medians).
//! Shapes: the `gemm` list of `bench/cases.json`, which `ampkit bench` runs too: 8192³, 4096³,
//! the default MLP at batch 4096 (784→512 forward, dgrad, wgrad; 512→10 forward) and a wide
//! 4096→4096 layer at batch 8192.
//!
//! Prints TFLOP/s for both and the ratio, plus the relative L2 difference between the two results
//! as a sanity check. Without a GPU it prints `skipped: no CUDA device` and exits 0.

mod common;

use ampkit::cuda::{DeviceBuffer, Gpu, GpuTimer, Timing};
use ampkit::ops::gemm::{gemm, Epilogue, GemmOutput};
use ampkit::shape::{GemmShape, Layout};
use ampkit::tuning::gemm::{configs_for, gemm_with_plan, plan, Plan, GROUP_M};
use ampkit::{Error, Result};
use common::cases::GemmCase;
use criterion::{Criterion, Throughput};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use half::f16;
use std::ffi::c_void;
use std::time::Duration;

fn main() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    let blas = CudaBlas::new(gpu.stream().clone()).expect("creating a cuBLAS handle");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args();
    let cases = common::cases();
    let mut rows = Vec::new();
    // The bf16 and FP8 rows are `ampkit bench`'s (this bench times the f16 kernels).
    let f16_cases: Vec<_> = (cases.gemm.iter())
        .filter(|c| !c.bf16 && c.fp8.is_none())
        .cloned()
        .collect();
    for case in &f16_cases {
        let row = if case.f32_out {
            run::<f32>(&gpu, &blas, case, &mut c)
        } else {
            run::<f16>(&gpu, &blas, case, &mut c)
        };
        rows.push(row.expect("benchmark case"));
    }
    sweep(&gpu, &f16_cases).expect("config sweep");
    println!(
        "\nGEMM on {} (TFLOP/s, 5 alternating rounds × 10 runs, CUDA events):",
        gpu.info().name
    );
    println!(
        "{:<28} {:>6} {:>9} {:>9} {:>7} {:>10}",
        "shape", "plan", "ampkit", "cuBLAS", "ratio", "rel diff"
    );
    for (case, plan, ours, theirs, diff) in rows {
        let tflops =
            |t: Timing| 2.0 * (case.m * case.n * case.k) as f64 / (t.median_ms * 1e-3) / 1e12;
        println!(
            "{:<28} {:>6} {:>9.1} {:>9.1} {:>7.2} {:>10.1e}",
            case.name,
            plan,
            tflops(ours),
            tflops(theirs),
            tflops(ours) / tflops(theirs),
            diff
        );
    }
}

/// Alternating timing rounds per side in the table.
const ROUNDS: usize = 5;

/// The median of per-round medians, with the extremes over all rounds.
fn median_of(mut rounds: Vec<Timing>) -> Timing {
    rounds.sort_by(|a, b| a.median_ms.total_cmp(&b.median_ms));
    Timing {
        median_ms: rounds[rounds.len() / 2].median_ms,
        min_ms: rounds
            .iter()
            .map(|t| t.min_ms)
            .fold(f64::INFINITY, f64::min),
        max_ms: rounds.iter().map(|t| t.max_ms).fold(0.0, f64::max),
        runs: rounds.iter().map(|t| t.runs).sum(),
    }
}

type Row<'a> = (&'a GemmCase, String, Timing, Timing, f64);

fn run<'a, C>(
    gpu: &Gpu,
    blas: &CudaBlas,
    case: &'a GemmCase,
    crit: &mut Criterion,
) -> Result<Row<'a>>
where
    C: GemmOutput + ValidAsZeroBits + DeviceRepr + ampkit::check::ToF64,
{
    let GemmShape { layout, m, n, k } = case.shape();
    let (la, lb) = match layout {
        Layout::Forward => (m * k, n * k),
        Layout::Dgrad => (m * k, k * n),
        Layout::Wgrad => (k * m, k * n),
    };
    let a = gpu.upload(&noise(la, 1))?;
    let b = gpu.upload(&noise(lb, 2))?;
    let mut ours: DeviceBuffer<C> = gpu.alloc_zeros(m * n)?;
    let mut theirs: DeviceBuffer<C> = gpu.alloc_zeros(m * n)?;
    let timer = GpuTimer::new(gpu)?;
    let mut run_ours =
        |c: &mut DeviceBuffer<C>| gemm(gpu, case.shape(), &a, &b, &Epilogue::plain(), c);
    let mut run_theirs = |c: &mut DeviceBuffer<C>| cublas_gemm(gpu, blas, case.shape(), &a, &b, c);

    let flops = 2 * m * n * k;
    let mut group = crit.benchmark_group(format!("gemm/{}", case.name));
    group.throughput(Throughput::Elements(flops as u64));
    for (who, f) in [
        (
            "ampkit",
            &mut run_ours as &mut dyn FnMut(&mut DeviceBuffer<C>) -> Result<()>,
        ),
        ("cublas", &mut run_theirs),
    ] {
        let out = if who == "ampkit" {
            &mut ours
        } else {
            &mut theirs
        };
        group.bench_function(who, |bencher| {
            bencher.iter_custom(|iters| {
                let ms = timer
                    .time(|| (0..iters).try_for_each(|_| f(out)))
                    .expect("timed launches");
                Duration::from_secs_f64(ms / 1e3)
            })
        });
    }
    group.finish();

    // Alternate rounds of ours and cuBLAS so clock and temperature drift during the run land on
    // both alike; each side's figure is the median of its rounds' medians.
    let (mut mine, mut cublas) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        mine.push(timer.measure(3, 10, || run_ours(&mut ours))?);
        cublas.push(timer.measure(3, 10, || run_theirs(&mut theirs))?);
    }
    let (t_ours, t_theirs) = (median_of(mine), median_of(cublas));
    let (x, y) = (gpu.download(&ours)?, gpu.download(&theirs)?);
    let reference: Vec<f64> = y.iter().map(|v| v.to_f64()).collect();
    let diff = ampkit::check::rel_l2_error(&x, &reference);
    let p = plan(
        case.shape(),
        true,
        gpu.info().multiprocessors,
        gpu.info().compute_capability == (9, 0),
    );
    Ok((
        case,
        format!("{}/{}", p.config.name, p.splits),
        t_ours,
        t_theirs,
        diff,
    ))
}

/// The same row-major product through cuBLAS's column-major API: C = A·B row-major is
/// Cᵀ = Bᵀ·Aᵀ column-major, and a row-major [r, c] matrix is a column-major [c, r] one.
fn cublas_gemm<C: GemmOutput>(
    gpu: &Gpu,
    blas: &CudaBlas,
    shape: GemmShape,
    a: &DeviceBuffer<f16>,
    b: &DeviceBuffer<f16>,
    c: &mut DeviceBuffer<C>,
) -> Result<()> {
    use cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
    let GemmShape { layout, m, n, k } = shape;
    // (op on B, op on A, ld of B, ld of A) as cuBLAS's first and second operands.
    let (op_b, op_a, ldb, lda) = match layout {
        Layout::Forward => (T, N, k, k),
        Layout::Dgrad => (N, N, n, k),
        Layout::Wgrad => (N, T, n, m),
    };
    let c_type = if C::KIND == 0 {
        cudaDataType::CUDA_R_16F
    } else {
        cudaDataType::CUDA_R_32F
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    let stream = gpu.stream();
    let (pa, _ga) = a.device_ptr(stream);
    let (pb, _gb) = b.device_ptr(stream);
    let (pc, _gc) = c.device_ptr_mut(stream);
    // SAFETY: the pointers hold the sizes the shape implies (allocated above from the same
    // shape); alpha and beta are host f32 as CUBLAS_COMPUTE_32F requires in host pointer mode.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            op_b,
            op_a,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const c_void,
            pb as *const c_void,
            cudaDataType::CUDA_R_16F,
            ldb as i32,
            pa as *const c_void,
            cudaDataType::CUDA_R_16F,
            lda as i32,
            &beta as *const f32 as *const c_void,
            pc as *mut c_void,
            c_type,
            n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| Error::InvalidArgument {
        op: "bench cublas",
        detail: e.to_string(),
    })
}

/// Every tile configuration (and K-splits) on the shapes that decide the cost model's choices,
/// TFLOP/s with f16 output: the data behind `plan`. Those shapes are the table's first GEMM
/// (8192³) and the MLP's three products (its entries 2-4).
fn sweep(gpu: &Gpu, cases: &[GemmCase]) -> Result<()> {
    let timer = GpuTimer::new(gpu)?;
    println!("\ntile config sweep (TFLOP/s, median of 10):");
    for &i in &[0usize, 2, 3, 4] {
        let case = &cases[i];
        let GemmShape { m, n, k, .. } = case.shape();
        let (la, lb) = (m.max(n) * k, k * n.max(m));
        let a = gpu.upload(&noise(la, 3))?;
        let b = gpu.upload(&noise(lb, 4))?;
        let mut c: DeviceBuffer<f32> = gpu.alloc_zeros(m * n)?;
        let mut row = format!("{:<28}", case.name);
        for config in configs_for(gpu) {
            for splits in [1usize, 4] {
                if splits > 1 && case.layout != Layout::Wgrad {
                    continue;
                }
                let p = Some(Plan {
                    config,
                    splits,
                    group_m: GROUP_M,
                    blocks: 0,
                });
                let t = timer.measure(3, 10, || {
                    gemm_with_plan(
                        gpu,
                        case.shape(),
                        p,
                        &a.slice(..a_len(case.shape())),
                        &b.slice(..b_len(case.shape())),
                        &Epilogue::plain(),
                        &mut c,
                    )
                })?;
                row += &format!(
                    " {}/{}={:.0}",
                    config.name,
                    splits,
                    2.0 * (m * n * k) as f64 / (t.median_ms * 1e-3) / 1e12
                );
            }
        }
        println!("{row}");
    }
    // Raster group height for the big case, for the model's choice and every Hopper config.
    let case = &cases[0];
    let GemmShape { m, n, k, .. } = case.shape();
    let a = gpu.upload(&noise(m * k, 5))?;
    let b = gpu.upload(&noise(n * k, 6))?;
    let mut c: DeviceBuffer<f16> = gpu.alloc_zeros(m * n)?;
    let base = plan(
        case.shape(),
        true,
        gpu.info().multiprocessors,
        gpu.info().compute_capability == (9, 0),
    );
    let mut bases = vec![base];
    bases.extend(
        configs_for(gpu)
            .into_iter()
            .filter(|c| c.hopper && c.name != base.config.name)
            .map(|config| Plan { config, ..base }),
    );
    for base in bases {
        let mut row = format!("{:<28}", format!("{} group_m", case.name));
        for group_m in [1usize, 2, 4, 8, 16] {
            let p = Some(Plan { group_m, ..base });
            let t = timer.measure(3, 10, || {
                gemm_with_plan(gpu, case.shape(), p, &a, &b, &Epilogue::plain(), &mut c)
            })?;
            row += &format!(
                " {}:{}={:.0}",
                base.config.name,
                group_m,
                2.0 * (m * n * k) as f64 / (t.median_ms * 1e-3) / 1e12
            );
        }
        println!("{row}");
    }
    Ok(())
}

fn a_len(s: GemmShape) -> usize {
    s.m * s.k
}

fn b_len(s: GemmShape) -> usize {
    s.n * s.k
}

/// Random-looking operands in [-0.5, 0.5) (never zeros or constants: tensor cores draw less power
/// and can run faster on uniform data, which would flatter every number here).
fn noise(len: usize, seed: u32) -> Vec<f16> {
    (0..len as u32)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x85EB_CA6B)).wrapping_mul(0x9E37_79B9);
            f16::from_f32((h >> 8) as f32 / (1 << 24) as f32 - 0.5)
        })
        .collect()
}
