//! The FP8 GEMM's non-finite report (`ops::gemm_fp8::gemm_fp8_checked`, the `nonfinite` word of
//! `kernels/gemm_fp8.cu`), which lets the training step's unscale skip reading the FP8 layers'
//! weight gradients: every tile configuration (both epilogues: TMA stores and plain stores) and
//! every output type. The checked product is the unchecked one bit for bit; the word gets bit 0
//! exactly when a stored value is inf or NaN, judged after rounding to the output type (f16 from
//! 65520 up, bf16 from half-way past its largest finite value), and is never cleared.

mod common;

use ampkit::cpu::fp8::Fp8Format;
use ampkit::cuda::Gpu;
use ampkit::ops::gemm_fp8::{
    gemm_fp8_checked, gemm_fp8_checked_with, gemm_fp8_with, Fp8Config, Fp8Operand, Fp8Output,
    FP8_CONFIGS,
};
use ampkit::shape::{GemmShape, Layout};
use common::{assert_shape_error, hopper, rng, sized};
use half::{bf16, f16};
use rand::Rng;

/// A bit the kernel never sets: the word must keep it (never cleared).
const KEEP: u32 = 0x10;

/// E4M3 codes of A [m, k] and B [n, k] and the two inverse scales, on the GPU.
struct Operands {
    shape: GemmShape,
    a: cudarc::driver::CudaSlice<u8>,
    b: cudarc::driver::CudaSlice<u8>,
    sa: cudarc::driver::CudaSlice<f32>,
    sb: cudarc::driver::CudaSlice<f32>,
}

impl Operands {
    fn new(
        gpu: &Gpu,
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        s: (f32, f32),
    ) -> Self {
        let code =
            |v: &[f32]| -> Vec<u8> { v.iter().map(|&x| Fp8Format::E4M3.encode(x)).collect() };
        Operands {
            shape: GemmShape::new(Layout::Forward, m, n, k),
            a: gpu.upload(&code(a)).unwrap(),
            b: gpu.upload(&code(b)).unwrap(),
            sa: gpu.upload(&[s.0]).unwrap(),
            sb: gpu.upload(&[s.1]).unwrap(),
        }
    }

    fn pair(&self) -> (Fp8Operand<'_>, Fp8Operand<'_>) {
        let op = |data, scale_inv| Fp8Operand {
            data,
            format: Fp8Format::E4M3,
            scale_inv,
        };
        (op(&self.a, &self.sa), op(&self.b, &self.sb))
    }

    /// The checked product with `config` (the planner's with `None`) into a poisoned buffer,
    /// its word preset to [`KEEP`]: the output and the word.
    fn checked<C: Fp8Output + bytemuck::Pod>(
        &self,
        gpu: &Gpu,
        config: Option<Fp8Config>,
        poison: C,
    ) -> (Vec<C>, u32) {
        let (a, b) = self.pair();
        let mut out = gpu
            .upload(&vec![poison; self.shape.m * self.shape.n])
            .unwrap();
        let mut word = gpu.upload(&[KEEP]).unwrap();
        match config {
            Some(cfg) => {
                gemm_fp8_checked_with(gpu, cfg, self.shape, &a, &b, None, &mut out, &mut word)
            }
            None => gemm_fp8_checked(gpu, self.shape, &a, &b, None, &mut out, &mut word),
        }
        .unwrap();
        (gpu.download(&out).unwrap(), gpu.download(&word).unwrap()[0])
    }

    fn unchecked<C: Fp8Output + bytemuck::Pod>(
        &self,
        gpu: &Gpu,
        config: Fp8Config,
        poison: C,
    ) -> Vec<C> {
        let (a, b) = self.pair();
        let mut out = gpu
            .upload(&vec![poison; self.shape.m * self.shape.n])
            .unwrap();
        gemm_fp8_with(gpu, config, self.shape, &a, &b, None, &mut out).unwrap();
        gpu.download(&out).unwrap()
    }
}

fn bits<C: bytemuck::Pod>(v: &[C]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// One output type over every config: clean operands leave the word as it was and give the
/// unchecked bits; a NaN code in one row of A (a NaN row of the product) sets bit 0.
fn clean_and_nan<C: Fp8Output + bytemuck::Pod>(gpu: &Gpu, poison: C, failures: &mut Vec<String>) {
    let mut rng = rng("gpu gemm fp8 checked");
    // 389 columns: no TMA store (the row pitch is not a 16-byte multiple); 520: TMA stores where
    // the config has them. The big one walks several units per cluster.
    let big = sized((1100, 2048, 256), (300, 512, 64));
    for (m, n, k) in [(257, 389, 272), (130, 520, 48), big] {
        let pick = |rng: &mut rand::rngs::StdRng, len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| [0.0, 1.0, -1.0, 2.0, -2.0][rng.gen_range(0..5)])
                .collect()
        };
        let (a, b) = (pick(&mut rng, m * k), pick(&mut rng, n * k));
        let clean = Operands::new(gpu, (m, n, k), &a, &b, (0.125, 2.0));
        let mut a_nan = a.clone();
        let row = rng.gen_range(0..m);
        a_nan[row * k + k / 2] = f32::NAN;
        let nan = Operands::new(gpu, (m, n, k), &a_nan, &b, (0.125, 2.0));
        let what = |cfg: Option<Fp8Config>| {
            format!(
                "{m}x{n}x{k} {} -> {}",
                cfg.map_or("planned", |c| c.name),
                std::any::type_name::<C>()
            )
        };
        for cfg in FP8_CONFIGS.into_iter().map(Some).chain([None]) {
            let (got, word) = clean.checked::<C>(gpu, cfg, poison);
            let want = clean.unchecked::<C>(gpu, cfg.unwrap_or(FP8_CONFIGS[0]), poison);
            if cfg.is_some() && bits(&got) != bits(&want) {
                failures.push(format!("{}: the checked product differs", what(cfg)));
            }
            if word != KEEP {
                failures.push(format!("{}: clean product, word {word:#x}", what(cfg)));
            }
            let (_, word) = nan.checked::<C>(gpu, cfg, poison);
            if word != KEEP | 1 {
                failures.push(format!("{}: NaN row {row}, word {word:#x}", what(cfg)));
            }
        }
    }
}

#[test]
fn the_word_reports_a_nan_and_never_changes_the_product() {
    let Some(gpu) = hopper() else { return };
    let mut failures = Vec::new();
    clean_and_nan::<f32>(&gpu, f32::from_bits(0x7FC0_5A5A), &mut failures);
    clean_and_nan::<f16>(&gpu, f16::from_bits(0x7E5A), &mut failures);
    clean_and_nan::<bf16>(&gpu, bf16::from_bits(0x7FDA), &mut failures);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// One product of value `x` (A's inverse scale × 1 × B's inverse scale 1) in column 0, zeros
/// elsewhere, for every config: whether the word was set.
fn overflows<C: Fp8Output + bytemuck::Pod>(
    gpu: &Gpu,
    n: usize,
    x: (f32, f32),
    poison: C,
) -> Vec<(String, bool)> {
    let k = 16;
    let mut a = vec![0.0f32; k];
    a[0] = 1.0;
    let mut b = vec![0.0f32; n * k];
    b[0] = 1.0;
    let ops = Operands::new(gpu, (1, n, k), &a, &b, x);
    FP8_CONFIGS
        .into_iter()
        .map(Some)
        .chain([None])
        .map(|cfg| {
            let (_, word) = ops.checked::<C>(gpu, cfg, poison);
            (cfg.map_or("planned", |c| c.name).to_string(), word & 1 == 1)
        })
        .collect()
}

#[test]
fn overflow_is_judged_after_rounding_to_the_output_type() {
    let Some(gpu) = hopper() else { return };
    let bf16_half_way = f32::from_bits(0x7F7F_8000);
    let below = f32::from_bits(0x7F7F_7FFF);
    // (what, the value's two factors, expected for f32, f16, bf16)
    let cases: [(&str, (f32, f32), [bool; 3]); 5] = [
        ("65519 (f16: 65504)", (65519.0, 1.0), [false, false, false]),
        ("65520 (f16: inf)", (65520.0, 1.0), [false, true, false]),
        (
            "just below bf16's half-way",
            (below, 1.0),
            [false, true, false],
        ),
        (
            "bf16's half-way (bf16: inf)",
            (bf16_half_way, 1.0),
            [false, true, true],
        ),
        (
            "f32 overflow of the scale",
            (f32::MAX, 2.0),
            [true, true, true],
        ),
    ];
    let mut failures = Vec::new();
    // 16 columns: TMA stores for every output type; 13: plain stores.
    for n in [16, 13] {
        for (what, x, [w32, w16, wbf]) in cases {
            let got = [
                overflows::<f32>(&gpu, n, x, f32::from_bits(0x7FC0_5A5A)),
                overflows::<f16>(&gpu, n, x, f16::from_bits(0x7E5A)),
                overflows::<bf16>(&gpu, n, x, bf16::from_bits(0x7FDA)),
            ];
            for ((ty, want), runs) in [("f32", w32), ("f16", w16), ("bf16", wbf)]
                .into_iter()
                .zip(got)
            {
                for (cfg, flagged) in runs {
                    if flagged != want {
                        failures.push(format!("n {n}, {what}, {ty} {cfg}: flagged {flagged}"));
                    }
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
    let Some(gpu) = hopper() else { return };
    let ops = Operands::new(&gpu, (1, 16, 16), &[1.0; 16], &[1.0; 256], (1.0, 1.0));
    let (a, b) = ops.pair();
    let mut out = gpu.alloc_zeros::<f32>(16).unwrap();
    let mut words = gpu.alloc_zeros::<u32>(2).unwrap();
    for len in [0, 2] {
        let mut word = words.slice_mut(..len);
        let r = gemm_fp8_checked(&gpu, ops.shape, &a, &b, None, &mut out, &mut word);
        assert_shape_error(r, "nonfinite");
    }
}
