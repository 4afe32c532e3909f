//! The GEMM's tuning lines of `ampkit bench` (notes under the table, for the planner's data):
//! `AMPKIT_BENCH_GEMM_SWEEP=1` times every tile configuration one after another;
//! `AMPKIT_BENCH_GEMM_VERSUS=h256,pp128,…` times named plans and cuBLAS in alternating rounds.

use super::cases::GemmCase;
use super::clock::median;
use super::harness::{failure, BenchOperand, Harness};
use super::work::gemm_flops;
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::blas::Blas;
use ampkit::ops::gemm::{Epilogue, GemmOutput};
use ampkit::tuning::gemm::{configs_for, gemm_with_plan, Plan, CONFIGS, GROUP_M, HOPPER_CONFIGS};
use ampkit::Result;
use half::{bf16, f16};

/// A case's forced-plan GEMM and its cuBLAS twin on one operand set, whatever its types.
trait TimedGemm {
    /// ampkit's GEMM in `plan`, into the output type the case names.
    fn ampkit(&mut self, gpu: &Gpu, plan: Plan) -> Result<()>;
    /// cuBLAS on the same operands and output type.
    fn cublas(&mut self, gpu: &Gpu, blas: &Blas) -> Result<()>;
}

/// One case's operands (f16 or bf16, as the case says) and both output types.
struct Operands<T: BenchOperand> {
    case: GemmCase,
    a: DeviceBuffer<T>,
    b: DeviceBuffer<T>,
    out16: DeviceBuffer<T>,
    out32: DeviceBuffer<f32>,
}

/// The case's operands in its element type.
fn operands(h: &Harness, case: &GemmCase) -> Result<Box<dyn TimedGemm>> {
    fn make<T: BenchOperand + GemmOutput<T> + 'static>(
        h: &Harness,
        case: &GemmCase,
    ) -> Result<Box<dyn TimedGemm>> {
        let (la, lb) = case.operand_lens();
        Ok(Box::new(Operands::<T> {
            case: case.clone(),
            a: T::buf(h, la, 11)?,
            b: T::buf(h, lb, 12)?,
            out16: h.gpu.alloc_zeros(case.m * case.n)?,
            out32: h.gpu.alloc_zeros(case.m * case.n)?,
        }))
    }
    if case.bf16 {
        make::<bf16>(h, case)
    } else {
        make::<f16>(h, case)
    }
}

impl<T: BenchOperand + GemmOutput<T>> TimedGemm for Operands<T> {
    fn ampkit(&mut self, gpu: &Gpu, plan: Plan) -> Result<()> {
        let (shape, epi, plan) = (self.case.shape(), Epilogue::plain(), Some(plan));
        let (a, b) = (&self.a, &self.b);
        if self.case.f32_out {
            gemm_with_plan(gpu, shape, plan, a, b, &epi, &mut self.out32)
        } else {
            gemm_with_plan(gpu, shape, plan, a, b, &epi, &mut self.out16)
        }
    }

    fn cublas(&mut self, gpu: &Gpu, blas: &Blas) -> Result<()> {
        let (shape, a, b) = (self.case.shape(), &self.a, &self.b);
        if self.case.f32_out {
            blas.gemm_half::<f32, T, _, _, _>(gpu, shape, a, b, 0.0, &mut self.out32)
        } else {
            blas.gemm_half::<T, T, _, _, _>(gpu, shape, a, b, 0.0, &mut self.out16)
        }
    }
}

/// `AMPKIT_BENCH_GEMM_SWEEP=1`: every tile configuration (and K-splits 1, 2, 4; for the
/// persistent ones also raster groups and a 128-block grid) on one shape, TFLOP/s in GPU time
/// (queue-ahead), one configuration after another.
pub(super) fn gemm_sweep(h: &mut Harness, case: &GemmCase) -> Result<String> {
    let gpu = h.gpu.clone();
    let mut ops = operands(h, case)?;
    let flops = gemm_flops(case.m, case.n, case.k);
    let mut plans = Vec::new();
    for config in configs_for(&gpu) {
        for splits in [1usize, 2, 4] {
            if splits > 1 && case.k < 2048 {
                continue;
            }
            let p = Plan {
                config,
                splits,
                group_m: GROUP_M,
                blocks: 0,
            };
            plans.push((format!("{}/{splits}", config.name), p));
            // The persistent kernels' raster groups (pairs of tile-rows) and grid size: all SMs,
            // or 128 of them (reported faster than all 132 for a similar kernel).
            if config.persistent && splits == 1 {
                for group_m in [2usize, 8, 16] {
                    for blocks in [0usize, 128] {
                        let name = format!("{}/1/g{group_m}/b{blocks}", config.name);
                        plans.push((
                            name,
                            Plan {
                                group_m,
                                blocks,
                                ..p
                            },
                        ));
                    }
                }
            }
        }
    }
    let mut line = format!("sweep {} (TFLOP/s, GPU time):", case.name);
    for (name, p) in plans {
        let mut t = h.times_us(true, 3, 20, |_| ops.ampkit(&gpu, p))?;
        line += &format!(" {name}={:.0}", flops / median(&mut t) / 1e6);
    }
    Ok(line)
}

/// A plan named `config[/splits[/gGROUP[/bBLOCKS]]]`, e.g. `pp128`, `h128/4`, `p256/1/g16/b128`
/// (a Hopper configuration on another GPU fails at its launch, with a typed error).
fn parse_plan(spec: &str) -> Result<Plan> {
    let bad = || {
        failure(format!(
            "bad plan spec {spec:?}: config[/splits[/gGROUP[/bBLOCKS]]]"
        ))
    };
    let mut parts = spec.split('/');
    let name = parts.next().unwrap_or_default();
    let config = CONFIGS
        .iter()
        .chain(&HOPPER_CONFIGS)
        .copied()
        .find(|c| c.name == name)
        .ok_or_else(|| failure(format!("no tile configuration {name:?}")))?;
    let mut plan = Plan {
        config,
        splits: 1,
        group_m: if config.persistent { 8 } else { GROUP_M },
        blocks: 0,
    };
    for (i, part) in parts.enumerate() {
        let (field, digits) = match (i, part.chars().next()) {
            (0, _) => (&mut plan.splits, part),
            (_, Some('g')) => (&mut plan.group_m, &part[1..]),
            (_, Some('b')) => (&mut plan.blocks, &part[1..]),
            _ => return Err(bad()),
        };
        *field = digits.parse().map_err(|_| bad())?;
    }
    Ok(plan)
}

/// `AMPKIT_BENCH_GEMM_VERSUS=h256,p256/1/g16,…`: the named plans (see [`parse_plan`]) and cuBLAS
/// timed in alternating rounds on the same operands, as the table times ampkit against cuBLAS, so
/// that clock and power drift between configurations cancels (a sweep times one configuration
/// after another). Prints each one's TFLOP/s and its ratio to cuBLAS.
pub(super) fn gemm_versus(
    h: &mut Harness,
    blas: &Blas,
    case: &GemmCase,
    specs: &str,
) -> Result<String> {
    let gpu = h.gpu.clone();
    let plans = specs
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|spec| Ok((spec.to_string(), parse_plan(spec)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut ops = operands(h, case)?;
    const ROUNDS: usize = 7;
    let mut times = vec![Vec::new(); plans.len() + 1];
    for round in 0..ROUNDS {
        let warmup = if round == 0 { 3 } else { 1 };
        for (i, (_, p)) in plans.iter().enumerate() {
            times[i].extend(h.times_us(true, warmup, 10, |_| ops.ampkit(&gpu, *p))?);
        }
        times[plans.len()].extend(h.times_us(true, warmup, 10, |_| ops.cublas(&gpu, blas))?);
    }
    let flops = gemm_flops(case.m, case.n, case.k);
    let cublas_us = median(&mut times[plans.len()]);
    let mut line = format!(
        "versus {} (TFLOP/s, ×cuBLAS; {ROUNDS} alternating rounds): cuBLAS={:.0}",
        case.name,
        flops / cublas_us / 1e6
    );
    for (i, (spec, _)) in plans.iter().enumerate() {
        let us = median(&mut times[i]);
        line += &format!(" {spec}={:.0} ({:.2}x)", flops / us / 1e6, cublas_us / us);
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::parse_plan;

    #[test]
    fn plan_specs_parse_and_bad_ones_are_errors() {
        let p = parse_plan("pp128").unwrap();
        assert_eq!(
            (p.config.name, p.splits, p.group_m, p.blocks),
            ("pp128", 1, 8, 0)
        );
        let p = parse_plan("h128/4").unwrap();
        assert_eq!((p.config.name, p.splits, p.group_m), ("h128", 4, 4));
        let p = parse_plan("p256/1/g16/b128").unwrap();
        assert_eq!((p.splits, p.group_m, p.blocks), (1, 16, 128));
        for bad in ["nope", "h256/x", "h256/1/q3", "h256/1/g"] {
            assert!(parse_plan(bad).is_err(), "{bad}");
        }
    }
}
