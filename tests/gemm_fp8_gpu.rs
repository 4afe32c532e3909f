//! The FP8 GEMM (`kernels/gemm_fp8.cu`, Hopper only) against the f64 CPU reference
//! (`ampkit::cpu::gemm_fp8`): every tile configuration, every A×B format pair, f32/f16/bf16
//! outputs, odd M/N tails, K off the 128-deep stage, scales ≠ 1, bias, poisoned outputs.
//! Exact where the tensor core's accumulation is exact (small-integer products), within the
//! accumulation tolerance of `ops::gemm_fp8`'s module doc on random codes; typed errors.

mod common;

use ampkit::check::{rel_l2_error, ToF64};
use ampkit::cpu::fp8::Fp8Format;
use ampkit::cpu::gemm_fp8::{gemm_fp8_f64, gemm_fp8_magnitude, Fp8Matrix};
use ampkit::cuda::Gpu;
use ampkit::ops::gemm_fp8::{
    gemm_fp8, gemm_fp8_relu, gemm_fp8_relu_masked, gemm_fp8_relu_masked_with, gemm_fp8_relu_with,
    gemm_fp8_with, Fp8Config, Fp8Operand, Fp8Output, FP8_CONFIGS,
};
use ampkit::shape::{GemmShape, Layout};
use ampkit::Error;
use common::{assert_all_written, assert_invalid, assert_shape_error, gpu, rng, sized};
use cudarc::driver::{CudaSlice, DevicePtr};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::Rng;

const PAIRS: [(Fp8Format, Fp8Format); 4] = [
    (Fp8Format::E4M3, Fp8Format::E4M3),
    (Fp8Format::E4M3, Fp8Format::E5M2),
    (Fp8Format::E5M2, Fp8Format::E4M3),
    (Fp8Format::E5M2, Fp8Format::E5M2),
];

/// An output type: its poison (a NaN), its rounding (half an ulp, relative, and the absolute
/// floor of its subnormals) and the host's once-rounding of an f64.
trait Out: Fp8Output + ToF64 + bytemuck::Pod + PartialEq + std::fmt::Debug {
    const POISON: Self;
    const HALF_ULP: f64;
    const FLOOR: f64;
    fn round(v: f64) -> Self;
}
impl Out for f32 {
    const POISON: f32 = f32::from_bits(0x7FC0_5A5A);
    const HALF_ULP: f64 = 6.0e-8;
    const FLOOR: f64 = 1e-44;
    fn round(v: f64) -> f32 {
        <f32 as ampkit::cpu::Element>::from_f64(v)
    }
}
impl Out for f16 {
    const POISON: f16 = f16::from_bits(0x7E5A);
    const HALF_ULP: f64 = 4.9e-4;
    const FLOOR: f64 = 3e-8;
    fn round(v: f64) -> f16 {
        <f16 as ampkit::cpu::Element>::from_f64(v)
    }
}
impl Out for bf16 {
    const POISON: bf16 = bf16::from_bits(0x7FDA);
    const HALF_ULP: f64 = 3.9e-3;
    const FLOOR: f64 = 1e-40;
    fn round(v: f64) -> bf16 {
        <bf16 as ampkit::cpu::Element>::from_f64(v)
    }
}

/// One problem: operand values (exactly representable in both formats, or encoded per format),
/// inverse scales and a bias.
struct Case {
    shape: GemmShape,
    a: Vec<f32>,
    b: Vec<f32>,
    scale_inv: (f32, f32),
    bias: Option<Vec<f32>>,
}

/// The codes of `values` in `format` (saturating, nearest even).
fn encode(format: Fp8Format, values: &[f32]) -> Vec<u8> {
    values.iter().map(|&v| format.encode(v)).collect()
}

/// Values spread over `2^lo .. 2^hi` in magnitude, either sign, some zeros.
fn spread(rng: &mut StdRng, len: usize, lo: i32, hi: i32) -> Vec<f32> {
    (0..len)
        .map(|_| {
            if rng.gen_range(0..16) == 0 {
                return 0.0;
            }
            let mag = 2f32.powi(rng.gen_range(lo..hi)) * rng.gen_range(1.0..2.0);
            if rng.gen() {
                mag
            } else {
                -mag
            }
        })
        .collect()
}

/// A case's operands on the GPU (`Case::upload`).
struct OnDevice {
    pair: (Fp8Format, Fp8Format),
    a: CudaSlice<u8>,
    b: CudaSlice<u8>,
    sa: CudaSlice<f32>,
    sb: CudaSlice<f32>,
    bias: Option<CudaSlice<f32>>,
}

impl OnDevice {
    fn operands(&self) -> (Fp8Operand<'_>, Fp8Operand<'_>) {
        (
            Fp8Operand {
                data: &self.a,
                format: self.pair.0,
                scale_inv: &self.sa,
            },
            Fp8Operand {
                data: &self.b,
                format: self.pair.1,
                scale_inv: &self.sb,
            },
        )
    }

    fn bias(&self) -> Option<&dyn DevicePtr<f32>> {
        self.bias.as_ref().map(|b| b as &dyn DevicePtr<f32>)
    }
}

impl Case {
    /// Operands in {0, ±1, ±2}, power-of-two scales, bias in quarters: every partial sum of
    /// k ≤ 272 products stays below 2^11 in whole numbers, which the tensor core adds exactly, and
    /// the f32 result is exact, so every output type rounds the same value the host rounds.
    fn exact(rng: &mut StdRng, m: usize, n: usize, k: usize) -> Case {
        let mut pick = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| [0.0, 1.0, -1.0, 2.0, -2.0][rng.gen_range(0..5)])
                .collect()
        };
        let (a, b) = (pick(m * k), pick(n * k));
        let bias = (0..n)
            .map(|_| rng.gen_range(-32..32) as f32 * 0.25)
            .collect();
        Case {
            shape: GemmShape::new(Layout::Forward, m, n, k),
            a,
            b,
            scale_inv: (0.125, 2.0),
            bias: Some(bias),
        }
    }

    /// Codes over each format's range, scales ≠ 1, bias or none.
    fn random(rng: &mut StdRng, m: usize, n: usize, k: usize, bias: bool) -> Case {
        let (a, b) = (spread(rng, m * k, -5, 5), spread(rng, n * k, -5, 5));
        let bias = bias.then(|| (0..n).map(|_| rng.gen_range(-4.0..4.0)).collect());
        Case {
            shape: GemmShape::new(Layout::Forward, m, n, k),
            a,
            b,
            scale_inv: (0.0625, 0.3),
            bias,
        }
    }

    fn codes(&self, (fa, fb): (Fp8Format, Fp8Format)) -> (Vec<u8>, Vec<u8>) {
        (encode(fa, &self.a), encode(fb, &self.b))
    }

    /// The f64 reference and `scale·Σ|A·B|` for the format pair.
    fn reference(&self, pair: (Fp8Format, Fp8Format)) -> (Vec<f64>, Vec<f64>) {
        let (ca, cb) = self.codes(pair);
        let (a, b) = (
            Fp8Matrix {
                data: &ca,
                format: pair.0,
                scale_inv: self.scale_inv.0,
            },
            Fp8Matrix {
                data: &cb,
                format: pair.1,
                scale_inv: self.scale_inv.1,
            },
        );
        let r = gemm_fp8_f64(self.shape, &a, &b, self.bias.as_deref()).unwrap();
        (r, gemm_fp8_magnitude(self.shape, &a, &b).unwrap())
    }

    /// The case's codes in `pair`'s formats, scales and bias, on the GPU.
    fn upload(&self, gpu: &Gpu, pair: (Fp8Format, Fp8Format)) -> OnDevice {
        let (ca, cb) = self.codes(pair);
        OnDevice {
            pair,
            a: gpu.upload(&ca).unwrap(),
            b: gpu.upload(&cb).unwrap(),
            sa: gpu.upload(&[self.scale_inv.0]).unwrap(),
            sb: gpu.upload(&[self.scale_inv.1]).unwrap(),
            bias: self.bias.as_ref().map(|b| gpu.upload(b).unwrap()),
        }
    }

    /// The GPU result with `config` (the planner's with `None`), into a poisoned buffer, every
    /// element checked written.
    fn run<C: Out>(
        &self,
        gpu: &Gpu,
        pair: (Fp8Format, Fp8Format),
        config: Option<Fp8Config>,
    ) -> Vec<C> {
        let dev = self.upload(gpu, pair);
        let (a, b) = dev.operands();
        let mut out = gpu
            .upload(&vec![C::POISON; self.shape.m * self.shape.n])
            .unwrap();
        match config {
            Some(cfg) => gemm_fp8_with(gpu, cfg, self.shape, &a, &b, dev.bias(), &mut out),
            None => gemm_fp8(gpu, self.shape, &a, &b, dev.bias(), &mut out),
        }
        .unwrap();
        let got = gpu.download(&out).unwrap();
        assert_all_written(&self.what::<C>(pair, config), &got, C::POISON);
        got
    }

    fn what<C>(&self, pair: (Fp8Format, Fp8Format), config: Option<Fp8Config>) -> String {
        let GemmShape { m, n, k, .. } = self.shape;
        format!(
            "{m}x{n}x{k} {:?}x{:?} {} -> {}",
            pair.0,
            pair.1,
            config.map_or("planned", |c| c.name),
            std::any::type_name::<C>()
        )
    }

    /// Bit-for-bit: every output is the host's one rounding of the exact result. `Err` says where
    /// not.
    fn check_exact<C: Out>(
        &self,
        gpu: &Gpu,
        pair: (Fp8Format, Fp8Format),
        config: Option<Fp8Config>,
        want: &[f64],
    ) -> Result<(), String> {
        let got = self.run::<C>(gpu, pair, config);
        let bad: Vec<usize> = (0..got.len())
            .filter(|&i| got[i] != C::round(want[i]))
            .collect();
        match bad.first() {
            None => Ok(()),
            Some(&i) => Err(format!(
                "{}: {} of {} elements differ; first at ({}, {}): got {:?}, want {:?}",
                self.what::<C>(pair, config),
                bad.len(),
                got.len(),
                i / self.shape.n,
                i % self.shape.n,
                got[i],
                C::round(want[i])
            )),
        }
    }

    /// Within `⌈k/32⌉·2⁻¹³·scale·Σ|A·B|` + the output's rounding per element, relative L2 ≤ 1e-2.
    /// Returns the worst error in units of that bound, or `Err` saying where it fails.
    fn check_close<C: Out>(
        &self,
        gpu: &Gpu,
        pair: (Fp8Format, Fp8Format),
        config: Option<Fp8Config>,
        reference: &(Vec<f64>, Vec<f64>),
    ) -> Result<f64, String> {
        let got = self.run::<C>(gpu, pair, config);
        let (want, mag) = reference;
        let acc = self.shape.k.div_ceil(32) as f64 * 2f64.powi(-13);
        let mut worst = (0f64, 0usize);
        for i in 0..got.len() {
            let bound = acc * mag[i] + C::HALF_ULP * want[i].abs() + C::FLOOR;
            let err = (got[i].to_f64() - want[i]).abs();
            let ratio = if err.is_nan() {
                f64::INFINITY
            } else {
                err / bound
            };
            if ratio > worst.0 {
                worst = (ratio, i);
            }
        }
        let what = self.what::<C>(pair, config);
        let i = worst.1;
        if worst.0 > 1.0 {
            return Err(format!(
                "{what}: element ({}, {}) = {} vs {} (Σ|A·B|·scale {}): {:.2} × the bound",
                i / self.shape.n,
                i % self.shape.n,
                got[i].to_f64(),
                want[i],
                mag[i],
                worst.0
            ));
        }
        let l2 = rel_l2_error(&got, want);
        if l2 > 1e-2 {
            return Err(format!("{what}: relative L2 error {l2:.2e}"));
        }
        Ok(worst.0)
    }
}

/// Fails listing every failed check (all combinations run first, so one run shows the pattern).
fn assert_none_failed(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} checks failed:\n  {}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// The GPU, if it is a Hopper; elsewhere the op must refuse with an error that says so.
fn hopper() -> Option<std::sync::Arc<Gpu>> {
    let gpu = gpu()?;
    if gpu.info().compute_capability == (9, 0) {
        return Some(gpu);
    }
    let mut rng = rng("gpu gemm fp8 not hopper");
    let case = Case::exact(&mut rng, 8, 8, 16);
    let dev = case.upload(&gpu, PAIRS[0]);
    let (a, b) = dev.operands();
    let mut out = gpu.alloc_zeros::<f32>(64).unwrap();
    assert_invalid(
        gemm_fp8(&gpu, case.shape, &a, &b, None, &mut out),
        "Hopper only",
    );
    eprintln!(
        "skipped: the FP8 GEMM needs compute capability 9.0 (refused with the error checked)"
    );
    None
}

#[test]
fn small_integer_products_are_exact_for_every_config_format_and_output() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu gemm fp8 exact");
    // One tile; odd tails with K = 2 stages + 16; a thin one; and enough units (2176 rows: an
    // odd number of 128-row tiles, so a pad block; 8000 columns) that every cluster walks
    // several, alternating between the ping-pong consumers.
    let big = sized((2176, 8000, 32), (400, 1100, 32));
    let mut failures = Vec::new();
    for (m, n, k) in [(1, 1, 16), (257, 389, 272), (130, 520, 48), big] {
        // The values are exact in both formats: one reference for every pair.
        let case = Case::exact(&mut rng, m, n, k);
        let (want, _) = case.reference(PAIRS[0]);
        for config in FP8_CONFIGS {
            for pair in PAIRS {
                failures.extend(
                    case.check_exact::<f32>(&gpu, pair, Some(config), &want)
                        .err(),
                );
                failures.extend(
                    case.check_exact::<f16>(&gpu, pair, Some(config), &want)
                        .err(),
                );
                failures.extend(
                    case.check_exact::<bf16>(&gpu, pair, Some(config), &want)
                        .err(),
                );
            }
        }
        failures.extend(case.check_exact::<bf16>(&gpu, PAIRS[0], None, &want).err());
    }
    assert_none_failed(&failures);
}

/// `gemm_fp8_relu`: the same exact sums with every value not above 0 written as +0 (the training
/// step's hidden-layer forward), f32, f16 and bf16 out, with a bias that pushes some sums below
/// 0; through the planner and every config, on a shape whose rows TMA can store (520 columns)
/// and one whose rows it cannot (389: the plain epilogue). `gemm_fp8_relu_masked` writes the
/// same output and its ReLU mask (`cpu::relu::mask` of what it stored), every word of it; the
/// last case's scale (2⁻²⁶, no bias) leaves sums of 1 and 2 positive in f32 but +0 once rounded
/// to f16 (its smallest subnormal is 2⁻²⁴), so the mask must follow the stored value.
#[test]
fn the_relu_epilogue_keeps_only_positive_sums() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu gemm fp8 relu");
    let mut tiny = Case::exact(&mut rng, 130, 520, 48);
    tiny.scale_inv = (2f32.powi(-13), 2f32.powi(-13));
    tiny.bias = None;
    let cases = [
        Case::exact(&mut rng, 257, 389, 272),
        Case::exact(&mut rng, 130, 520, 48),
        tiny,
    ];
    for case in &cases {
        let (want, _) = case.reference(PAIRS[0]);
        assert!(want.iter().any(|&v| v < 0.0) && want.iter().any(|&v| v > 0.0));
        let dev = case.upload(&gpu, PAIRS[0]);
        let (a, b) = dev.operands();
        for config in FP8_CONFIGS.into_iter().map(Some).chain([None]) {
            check_relu::<bf16>(&gpu, case, (&a, &b), dev.bias(), config, &want);
            check_relu::<f16>(&gpu, case, (&a, &b), dev.bias(), config, &want);
            check_relu::<f32>(&gpu, case, (&a, &b), dev.bias(), config, &want);
        }
    }
}

fn check_relu<C: Out + ampkit::cpu::Element>(
    gpu: &Gpu,
    case: &Case,
    ops: (&Fp8Operand<'_>, &Fp8Operand<'_>),
    bias: Option<&dyn DevicePtr<f32>>,
    config: Option<Fp8Config>,
    want: &[f64],
) {
    let mut out = gpu.upload(&vec![C::POISON; want.len()]).unwrap();
    match config {
        Some(cfg) => gemm_fp8_relu_with(gpu, cfg, case.shape, ops.0, ops.1, bias, &mut out),
        None => gemm_fp8_relu(gpu, case.shape, ops.0, ops.1, bias, &mut out),
    }
    .unwrap();
    let got = gpu.download(&out).unwrap();
    let name = config.map_or("planner", |c| c.name);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let expect = C::round(if w > 0.0 { w } else { 0.0 });
        assert!(
            g == expect,
            "{name} {:?}: relu output {i}: got {g:?}, want {expect:?} (sum {w})",
            case.shape
        );
    }
    // The masked twin: the same output, and its mask into a poisoned buffer.
    let GemmShape { m, n, .. } = case.shape;
    let mut masked = gpu.upload(&vec![C::POISON; want.len()]).unwrap();
    let mut mask = gpu
        .upload(&vec![0xA5A5_A5A5u32; m * n.div_ceil(32)])
        .unwrap();
    match config {
        Some(cfg) => gemm_fp8_relu_masked_with(
            gpu,
            cfg,
            case.shape,
            ops.0,
            ops.1,
            bias,
            &mut masked,
            &mut mask,
        ),
        None => gemm_fp8_relu_masked(gpu, case.shape, ops.0, ops.1, bias, &mut masked, &mut mask),
    }
    .unwrap();
    let masked = gpu.download(&masked).unwrap();
    assert!(
        bytemuck::cast_slice::<C, u8>(&masked) == bytemuck::cast_slice::<C, u8>(&got),
        "{name} {:?}: the masked GEMM's output differs",
        case.shape
    );
    let want_mask = ampkit::cpu::relu::mask(&got, m, n).unwrap();
    let got_mask = gpu.download(&mask).unwrap();
    for (i, (&g, &w)) in got_mask.iter().zip(&want_mask).enumerate() {
        assert!(
            g == w,
            "{name} {:?} {}: mask word {i} (row {}, columns {}..): got {g:#010x}, want {w:#010x}",
            case.shape,
            std::any::type_name::<C>(),
            i / n.div_ceil(32),
            32 * (i % n.div_ceil(32))
        );
    }
}

/// The TMA-store configs write through a tensor map only when D's base and row pitch are 16-byte
/// multiples: an output view 8 bytes past an aligned base takes the plain epilogue of the same
/// tiles, with the same exact results and nothing written outside the view.
#[test]
fn tma_store_configs_fall_back_for_a_misaligned_output() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu gemm fp8 tma fallback");
    let case = Case::exact(&mut rng, 130, 520, 48);
    let (want, _) = case.reference(PAIRS[0]);
    let dev = case.upload(&gpu, PAIRS[0]);
    let (a, b) = dev.operands();
    let len = want.len();
    for config in FP8_CONFIGS.into_iter().filter(|c| c.tma_store) {
        // f32 elements: 2 of them put the view 8 bytes past the buffer's (aligned) base.
        let mut out = gpu.upload(&vec![<f32 as Out>::POISON; len + 4]).unwrap();
        let mut view = out.slice_mut(2..2 + len);
        gemm_fp8_with(&gpu, config, case.shape, &a, &b, dev.bias(), &mut view).unwrap();
        let got = gpu.download(&out).unwrap();
        for i in [0, 1, len + 2, len + 3] {
            assert!(
                got[i].to_bits() == <f32 as Out>::POISON.to_bits(),
                "{}: element {i} outside the view was written",
                config.name
            );
        }
        for (i, (&g, &w)) in got[2..2 + len].iter().zip(&want).enumerate() {
            assert!(
                g == <f32 as Out>::round(w),
                "{}: output {i}: got {g}, want {}",
                config.name,
                <f32 as Out>::round(w)
            );
        }
    }
}

#[test]
fn random_codes_match_within_the_accumulation_tolerance() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu gemm fp8 random");
    let shapes = [
        sized((300, 520, 1040), (130, 140, 272)),
        sized((129, 257, 4096), (65, 70, 1024)),
    ];
    let (mut worst, mut failures) = (0f64, Vec::new());
    let mut note = |r: Result<f64, String>| match r {
        Ok(w) => worst = worst.max(w),
        Err(e) => failures.push(e),
    };
    for (i, (m, n, k)) in shapes.into_iter().enumerate() {
        let case = Case::random(&mut rng, m, n, k, i == 0);
        for pair in PAIRS {
            let reference = case.reference(pair);
            for config in FP8_CONFIGS {
                note(case.check_close::<f32>(&gpu, pair, Some(config), &reference));
                note(case.check_close::<f16>(&gpu, pair, Some(config), &reference));
                note(case.check_close::<bf16>(&gpu, pair, Some(config), &reference));
            }
            note(case.check_close::<f32>(&gpu, pair, None, &reference));
        }
    }
    assert_none_failed(&failures);
    eprintln!("worst error: {worst:.3} × the bound ⌈k/32⌉·2⁻¹³·scale·Σ|A·B| + rounding");
}

#[test]
fn bad_arguments_are_refused_before_any_launch() {
    let Some(gpu) = hopper() else { return };
    let (m, n, k) = (16, 8, 32);
    let x = gpu.upload(&vec![0x38u8; m * k + 16]).unwrap();
    let w = gpu.upload(&vec![0x38u8; n * k]).unwrap();
    let one = gpu.upload(&[1f32]).unwrap();
    let two = gpu.upload(&[1f32, 1.0]).unwrap();
    let mut out = gpu.upload(&vec![f32::POISON; m * n]).unwrap();
    let xa = x.slice(0..m * k);
    let a = Fp8Operand {
        data: &xa,
        format: Fp8Format::E4M3,
        scale_inv: &one,
    };
    let b = Fp8Operand {
        data: &w,
        format: Fp8Format::E4M3,
        scale_inv: &one,
    };
    let shape = GemmShape::new(Layout::Forward, m, n, k);
    let run = |s: GemmShape, a: &Fp8Operand, b: &Fp8Operand, out: &mut _| -> Result<(), Error> {
        gemm_fp8::<f32>(&gpu, s, a, b, None, out)
    };
    assert_invalid(
        run(GemmShape::new(Layout::Dgrad, m, n, k), &a, &b, &mut out),
        "K-major",
    );
    assert_shape_error(
        run(
            GemmShape::new(Layout::Forward, m, n, k + 16),
            &a,
            &b,
            &mut out,
        ),
        "A",
    );
    let bad_scale = Fp8Operand {
        scale_inv: &two,
        ..b
    };
    assert_shape_error(run(shape, &a, &bad_scale, &mut out), "B's scale_inv");
    // k = 24: 24-byte rows, not a TMA pitch; codes for it exist.
    let x24 = x.slice(0..m * 24);
    let w24 = gpu.upload(&vec![0x38u8; n * 24]).unwrap();
    let a24 = Fp8Operand { data: &x24, ..a };
    let b24 = Fp8Operand { data: &w24, ..b };
    assert_invalid(
        run(
            GemmShape::new(Layout::Forward, m, n, 24),
            &a24,
            &b24,
            &mut out,
        ),
        "multiple of 16",
    );
    let shifted = x.slice(8..8 + m * k);
    let a8 = Fp8Operand {
        data: &shifted,
        ..a
    };
    assert_invalid(run(shape, &a8, &b, &mut out), "16-byte aligned");
    // A ReLU mask one word short of m·⌈n/32⌉.
    let mut short = gpu.alloc_zeros::<u32>(m * n.div_ceil(32) - 1).unwrap();
    assert_shape_error(
        gemm_fp8_relu_masked(&gpu, shape, &a, &b, None, &mut out, &mut short),
        "relu_mask",
    );
    // Nothing was launched: the output is still poisoned.
    let got = gpu.download(&out).unwrap();
    assert!(got.iter().all(|v| v.to_bits() == f32::POISON.to_bits()));
    // And the valid call works: 32 · 1 · 1 = 32.
    run(shape, &a, &b, &mut out).unwrap();
    assert!(gpu.download(&out).unwrap().iter().all(|&v| v == 32.0));
}
