//! The FP8 GEMM rows of `ampkit bench` (cases with `fp8` in `bench/cases.json`): ampkit's
//! `ops::gemm_fp8` beside cuBLASLt's FP8 GEMM (`ops::blas::BlasLt`, fast accumulation) on the
//! same operands, formats, scales and output type, interleaved call by call; and, with
//! `AMPKIT_BENCH_GEMM_SWEEP`, every FP8 tile configuration on the case, interleaved the same way.

use super::cases::GemmCase;
use super::clock::median;
use super::harness::{failure, Harness};
use super::report::{Kind, Row};
use super::work::{gemm_flops, gemm_shape};
use ampkit::check::{rel_l2_error, ToF64};
use ampkit::cpu::fp8::Fp8Format;
use ampkit::cuda::DeviceBuffer;
use ampkit::ops::blas::BlasLt;
use ampkit::ops::gemm_fp8::{
    gemm_fp8_relu_with, gemm_fp8_with, plan_fp8, Fp8Config, Fp8Operand, Fp8Output, FP8_CONFIGS,
};
use ampkit::{ops, Result};
use cudarc::driver::ValidAsZeroBits;
use half::bf16;

/// Largest relative L2 difference between ampkit's and cuBLASLt's results that still counts as
/// the same (both accumulate in the tensor core's precision; the orders differ).
const TOLERANCE: f64 = 1e-2;
/// The quantization scale of the operands: the pool's values in [-2, 2) become [-64, 64), inside
/// both formats' ranges.
const SCALE: f32 = 32.0;

/// A case's FP8 operands on the device: codes and inverse scales.
struct Operands {
    a: DeviceBuffer<u8>,
    b: DeviceBuffer<u8>,
    sa: DeviceBuffer<f32>,
    sb: DeviceBuffer<f32>,
    formats: (Fp8Format, Fp8Format),
}

impl Operands {
    fn new(h: &Harness, case: &GemmCase) -> Result<Operands> {
        let Some(formats) = case.fp8_formats()? else {
            return Err(failure(format!("{} is not an FP8 case", case.name)));
        };
        let (la, lb) = case.operand_lens();
        let quantized = |len: usize, seed: u32, format: Fp8Format| -> Result<DeviceBuffer<u8>> {
            let src = h.f32_buf(len, seed)?;
            let mut dst: DeviceBuffer<u8> = h.gpu.alloc_zeros(len)?;
            let scale = h.gpu.upload(&[SCALE])?;
            let mut amax = h.gpu.alloc_zeros::<f32>(1)?;
            ops::fp8::quantize(&h.gpu, format, &src, &mut dst, &scale, &mut amax)?;
            Ok(dst)
        };
        Ok(Operands {
            a: quantized(la, 21, formats.0)?,
            b: quantized(lb, 22, formats.1)?,
            sa: h.gpu.upload(&[1.0 / SCALE])?,
            sb: h.gpu.upload(&[1.0 / SCALE])?,
            formats,
        })
    }

    fn a(&self) -> Fp8Operand<'_> {
        Fp8Operand {
            data: &self.a,
            format: self.formats.0,
            scale_inv: &self.sa,
        }
    }

    fn b(&self) -> Fp8Operand<'_> {
        Fp8Operand {
            data: &self.b,
            format: self.formats.1,
            scale_inv: &self.sb,
        }
    }
}

/// The FP8 row of `case`: bf16 output (f32 with `f32_out`).
pub(super) fn fp8_row(h: &mut Harness, lt: &mut BlasLt, case: &GemmCase) -> Result<Row> {
    if case.f32_out {
        row::<f32>(h, lt, case)
    } else {
        row::<bf16>(h, lt, case)
    }
}

fn row<C: Fp8Output + ValidAsZeroBits + ToF64>(
    h: &mut Harness,
    lt: &mut BlasLt,
    case: &GemmCase,
) -> Result<Row> {
    let shape = case.shape();
    let ops = Operands::new(h, case)?;
    let (a, b) = (ops.a(), ops.b());
    let config = plan_fp8(shape, h.gpu.info().multiprocessors);
    let mut ours: DeviceBuffer<C> = h.gpu.alloc_zeros(case.m * case.n)?;
    let mut theirs: DeviceBuffer<C> = h.gpu.alloc_zeros(case.m * case.n)?;
    let gpu = h.gpu.clone();
    // Interleaved call by call (ours, cuBLASLt, ours, …) in one timed sequence: both see the same
    // clocks. FP8 GEMMs run at the card's power limit, where back-to-back blocks of one kernel
    // measured ±10 % apart depending on what ran before (docs/kernels/gemm_fp8.md).
    let times = h.times_us(true, 2 * h.warmup, 2 * h.runs, |i| {
        if i % 2 == 0 {
            gemm_fp8_with(&gpu, config, shape, &a, &b, None, &mut ours)
        } else {
            lt.gemm_fp8(&gpu, shape, &a, &b, &mut theirs)
        }
    })?;
    let (mut t_ours, mut t_theirs): (Vec<f64>, Vec<f64>) = (
        times.iter().step_by(2).copied().collect(),
        times.iter().skip(1).step_by(2).copied().collect(),
    );
    let (us, lt_us) = (median(&mut t_ours), median(&mut t_theirs));
    let x = gpu.download(&ours)?;
    let reference: Vec<f64> = gpu.download(&theirs)?.iter().map(|v| v.to_f64()).collect();
    let diff = rel_l2_error(&x, &reference);
    if diff.is_nan() || diff > TOLERANCE {
        return Err(failure(format!(
            "ampkit's FP8 result differs from cuBLASLt's: relative L2 {diff:.2e} > {TOLERANCE:.0e}"
        )));
    }
    let flops = gemm_flops(case.m, case.n, case.k);
    let mut row = Row::measured(
        Kind::Gemm,
        &case.row_name(),
        &gemm_shape(case.layout, case.m, case.n, case.k),
        us,
        Some(flops / us / 1e6),
        "TFLOP/s",
        // % of cuBLASLt's FP8 rate on the same problem in this run.
        Some(flops / lt_us / 1e6),
    )
    .with_work(flops, case.bytes());
    row.vs_cublas = Some(lt_us / us);
    row.plan = Some(format!("{}/1", config.name));
    Ok(row)
}

/// Every FP8 configuration on `case` (bf16 or f32 output as its row), cuBLASLt, and the planned
/// configuration with a bias and a ReLU: a note line with each one's median TFLOP/s.
pub(super) fn fp8_sweep(h: &mut Harness, lt: &mut BlasLt, case: &GemmCase) -> Result<String> {
    if case.f32_out {
        sweep::<f32>(h, lt, case)
    } else {
        sweep::<bf16>(h, lt, case)
    }
}

/// One timed entry of the sweep.
#[derive(Clone, Copy)]
enum Entry {
    /// A configuration, no bias.
    Plain(Fp8Config),
    /// cuBLASLt's FP8 GEMM.
    CublasLt,
    /// A configuration with a bias and the ReLU epilogue.
    BiasRelu(Fp8Config),
}

fn sweep<C: Fp8Output + ValidAsZeroBits>(
    h: &mut Harness,
    lt: &mut BlasLt,
    case: &GemmCase,
) -> Result<String> {
    let shape = case.shape();
    let ops = Operands::new(h, case)?;
    let (a, b) = (ops.a(), ops.b());
    let mut out: DeviceBuffer<C> = h.gpu.alloc_zeros(case.m * case.n)?;
    // Every configuration once more with a bias and a ReLU (a hidden layer's forward in the
    // training step): what that epilogue costs each one (a ping-pong config overlaps it with
    // the other consumer's main loop), in the same sequence.
    let bias = h.f32_buf(case.n, 23)?;
    let gpu = h.gpu.clone();
    let flops = gemm_flops(case.m, case.n, case.k);
    // Every configuration, cuBLASLt and every configuration with bias + ReLU in turn, call by
    // call, in one timed sequence (as the row).
    let entries: Vec<Entry> = (FP8_CONFIGS.iter().copied().map(Entry::Plain))
        .chain([Entry::CublasLt])
        .chain(FP8_CONFIGS.iter().copied().map(Entry::BiasRelu))
        .collect();
    let c = entries.len();
    let times = h.times_us(true, c * h.warmup, c * h.runs, |i| match entries[i % c] {
        Entry::Plain(cfg) => gemm_fp8_with(&gpu, cfg, shape, &a, &b, None, &mut out),
        Entry::CublasLt => lt.gemm_fp8(&gpu, shape, &a, &b, &mut out),
        Entry::BiasRelu(cfg) => gemm_fp8_relu_with(&gpu, cfg, shape, &a, &b, Some(&bias), &mut out),
    })?;
    let mut cells = Vec::new();
    for (j, entry) in entries.iter().enumerate() {
        let mut t: Vec<f64> = times.iter().skip(j).step_by(c).copied().collect();
        let us = median(&mut t);
        let name = match entry {
            Entry::Plain(cfg) => cfg.name.to_string(),
            Entry::CublasLt => "cuBLASLt".to_string(),
            Entry::BiasRelu(cfg) => format!("{}+bias+relu", cfg.name),
        };
        cells.push(format!(
            "{name} {:.0} TFLOP/s ({us:.1} us)",
            flops / us / 1e6
        ));
    }
    Ok(format!("fp8 sweep {}: {}", case.name, cells.join(", ")))
}
