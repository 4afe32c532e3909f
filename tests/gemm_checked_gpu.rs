//! The GEMM's non-finite report (`ops::gemm::gemm_checked`, `Epilogue::nonfinite` in
//! `kernels/gemm_epilogue.cuh`), with which the training step's unscale skips reading the weight
//! gradients at scale 1: every layout, every tile configuration this GPU runs and the unaligned
//! one, K-split 1 and 3 (the split reduce checks the sum), f16 and bf16 operands, f32 and 16-bit
//! outputs. The checked product is the unchecked one bit for bit; the word gets bit 0 exactly
//! when a stored value is inf or NaN, judged after the rounding to the output type, and is never
//! cleared.

mod common;

use ampkit::cuda::Gpu;
use ampkit::ops::gemm::{gemm_checked, Epilogue, GemmOperand, GemmOutput};
use ampkit::shape::{GemmShape, Layout};
use ampkit::tuning::gemm::{
    configs_for, gemm_checked_with_plan, gemm_with_plan, Plan, GROUP_M, UNALIGNED,
};
use common::{assert_shape_error, gpu, rng, sized};
use half::{bf16, f16};
use rand::Rng;

/// A bit the kernels never set: the word must keep it.
const KEEP: u32 = 0x10;

const LAYOUTS: [Layout; 3] = [Layout::Forward, Layout::Dgrad, Layout::Wgrad];

/// Every forced plan: each configuration this GPU runs and the unaligned one, K-split 1 and 3.
fn plans(gpu: &Gpu) -> Vec<Plan> {
    (configs_for(gpu).into_iter().chain([UNALIGNED]))
        .flat_map(|config| {
            [1, 3].map(|splits| Plan {
                config,
                splits,
                group_m: GROUP_M,
                blocks: 0,
            })
        })
        .collect()
}

fn lens(s: GemmShape) -> (usize, usize) {
    match s.layout {
        Layout::Forward => (s.m * s.k, s.n * s.k),
        Layout::Dgrad => (s.m * s.k, s.k * s.n),
        Layout::Wgrad => (s.k * s.m, s.k * s.n),
    }
}

/// The checked product in `plan` into a poisoned C, its word preset to [`KEEP`].
fn checked<T, O>(
    gpu: &Gpu,
    shape: GemmShape,
    plan: Plan,
    ab: (&[T], &[T]),
    alpha: f32,
    poison: O,
) -> (Vec<O>, u32)
where
    T: GemmOperand + bytemuck::Pod,
    O: GemmOutput<T> + bytemuck::Pod,
{
    let (a, b) = (gpu.upload(ab.0).unwrap(), gpu.upload(ab.1).unwrap());
    let mut c = gpu.upload(&vec![poison; shape.m * shape.n]).unwrap();
    let mut word = gpu.upload(&[KEEP]).unwrap();
    let epi = Epilogue {
        alpha,
        ..Epilogue::plain()
    };
    gemm_checked_with_plan(gpu, shape, Some(plan), &a, &b, &epi, &mut c, &mut word).unwrap();
    (gpu.download(&c).unwrap(), gpu.download(&word).unwrap()[0])
}

fn unchecked<T, O>(gpu: &Gpu, shape: GemmShape, plan: Plan, ab: (&[T], &[T]), poison: O) -> Vec<O>
where
    T: GemmOperand + bytemuck::Pod,
    O: GemmOutput<T> + bytemuck::Pod,
{
    let (a, b) = (gpu.upload(ab.0).unwrap(), gpu.upload(ab.1).unwrap());
    let mut c = gpu.upload(&vec![poison; shape.m * shape.n]).unwrap();
    gemm_with_plan(gpu, shape, Some(plan), &a, &b, &Epilogue::plain(), &mut c).unwrap();
    gpu.download(&c).unwrap()
}

/// One operand type and output type over every layout and plan: clean operands leave the word
/// as it was and give the unchecked bits; one NaN in A sets bit 0.
fn clean_and_nan<T, O>(gpu: &Gpu, from: fn(f32) -> T, poison: O, failures: &mut Vec<String>)
where
    T: GemmOperand + bytemuck::Pod,
    O: GemmOutput<T> + bytemuck::Pod,
{
    let mut rng = rng("gpu gemm checked");
    let (m, n, k) = sized((300, 520, 264), (72, 136, 264));
    for layout in LAYOUTS {
        let shape = GemmShape::new(layout, m, n, k);
        let (la, lb) = lens(shape);
        let a: Vec<T> = (0..la).map(|_| from(rng.gen_range(-1.0..1.0))).collect();
        let b: Vec<T> = (0..lb).map(|_| from(rng.gen_range(-1.0..1.0))).collect();
        let mut a_nan = a.clone();
        a_nan[rng.gen_range(0..la)] = from(f32::NAN);
        for plan in plans(gpu) {
            let what = format!(
                "{layout:?} {}/{} {} -> {}",
                plan.config.name,
                plan.splits,
                std::any::type_name::<T>(),
                std::any::type_name::<O>()
            );
            let (got, word) = checked(gpu, shape, plan, (&a, &b), 1.0, poison);
            let want = unchecked(gpu, shape, plan, (&a, &b), poison);
            if bytemuck::cast_slice::<O, u8>(&got) != bytemuck::cast_slice::<O, u8>(&want) {
                failures.push(format!("{what}: the checked product differs"));
            }
            if word != KEEP {
                failures.push(format!("{what}: clean product, word {word:#x}"));
            }
            let (_, word) = checked(gpu, shape, plan, (&a_nan, &b), 1.0, poison);
            if word != KEEP | 1 {
                failures.push(format!("{what}: a NaN in A, word {word:#x}"));
            }
        }
    }
}

#[test]
fn the_word_reports_a_nan_and_never_changes_the_product() {
    let Some(gpu) = gpu() else { return };
    let mut failures = Vec::new();
    let p32 = f32::from_bits(0x7FC0_5A5A);
    clean_and_nan::<f16, f32>(&gpu, f16::from_f32, p32, &mut failures);
    clean_and_nan::<f16, f16>(&gpu, f16::from_f32, f16::from_bits(0x7E5A), &mut failures);
    clean_and_nan::<bf16, f32>(&gpu, bf16::from_f32, p32, &mut failures);
    clean_and_nan::<bf16, bf16>(&gpu, bf16::from_f32, bf16::from_bits(0x7FDA), &mut failures);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every output 16·alpha (all-ones operands, K = 16) in every plan: whether the word was set.
fn flags<T, O>(gpu: &Gpu, one: T, alpha: f32, poison: O) -> Vec<(String, bool)>
where
    T: GemmOperand + bytemuck::Pod,
    O: GemmOutput<T> + bytemuck::Pod,
{
    let shape = GemmShape::new(Layout::Forward, 64, 64, 16);
    let ones = vec![one; 64 * 16];
    plans(gpu)
        .into_iter()
        .map(|plan| {
            let (_, word) = checked(gpu, shape, plan, (&ones, &ones), alpha, poison);
            (
                format!("{}/{}", plan.config.name, plan.splits),
                word & 1 == 1,
            )
        })
        .collect()
}

#[test]
fn overflow_is_judged_after_rounding_to_the_output_type() {
    let Some(gpu) = gpu() else { return };
    let bf16_half_way = f32::from_bits(0x7F7F_8000) / 16.0;
    let below = f32::from_bits(0x7F7F_7FFF) / 16.0;
    // (what, alpha (outputs 16·alpha), expected for f16 → f32, f16 → f16, bf16 → f32, bf16 → bf16)
    let cases: [(&str, f32, [bool; 4]); 5] = [
        (
            "65519 (f16: 65504)",
            65519.0 / 16.0,
            [false, false, false, false],
        ),
        (
            "65520 (f16: inf)",
            65520.0 / 16.0,
            [false, true, false, false],
        ),
        (
            "just below bf16's half-way",
            below,
            [false, true, false, false],
        ),
        (
            "bf16's half-way (bf16: inf)",
            bf16_half_way,
            [false, true, false, true],
        ),
        ("f32 overflow", f32::MAX, [true, true, true, true]),
    ];
    let (one16, onebf) = (f16::from_f32(1.0), bf16::from_f32(1.0));
    let p32 = f32::from_bits(0x7FC0_5A5A);
    let mut failures = Vec::new();
    for (what, alpha, want) in cases {
        let got = [
            flags::<f16, f32>(&gpu, one16, alpha, p32),
            flags::<f16, f16>(&gpu, one16, alpha, f16::from_bits(0x7E5A)),
            flags::<bf16, f32>(&gpu, onebf, alpha, p32),
            flags::<bf16, bf16>(&gpu, onebf, alpha, bf16::from_bits(0x7FDA)),
        ];
        let names = ["f16 -> f32", "f16 -> f16", "bf16 -> f32", "bf16 -> bf16"];
        for ((name, want), runs) in names.into_iter().zip(want).zip(got) {
            for (plan, flagged) in runs {
                if flagged != want {
                    failures.push(format!("{what}, {name} {plan}: flagged {flagged}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_flag_that_is_not_one_word_is_refused() {
    let Some(gpu) = gpu() else { return };
    let shape = GemmShape::new(Layout::Forward, 8, 8, 8);
    let ones = gpu.upload(&[f16::from_f32(1.0); 64]).unwrap();
    let mut c = gpu.alloc_zeros::<f32>(64).unwrap();
    let mut words = gpu.alloc_zeros::<u32>(2).unwrap();
    for len in [0, 2] {
        let mut word = words.slice_mut(..len);
        let r = gemm_checked(
            &gpu,
            shape,
            &ones,
            &ones,
            &Epilogue::plain(),
            &mut c,
            &mut word,
        );
        assert_shape_error(r, "nonfinite");
    }
}
