//! The FP8 GEMM's E4M3 output (`ops::gemm_fp8::gemm_fp8_relu_quantized`, out_kind 3 of
//! `kernels/gemm_fp8.cu`) and the transpose of codes (`ops::fp8::transpose`): together they must
//! write, bit for bit, what the bf16 ReLU GEMM followed by `ops::fp8::cast_transpose` writes —
//! the codes, their transpose, the ReLU mask and the amax — for every TMA-store configuration,
//! at scales that saturate, underflow and keep NaN, with rows and columns past the tiles.

mod common;

use ampkit::cpu::fp8::{transpose_ld, Fp8Format};
use ampkit::cuda::Gpu;
use ampkit::ops::fp8::{cast_transpose, transpose};
use ampkit::ops::gemm_fp8::{
    gemm_fp8_relu_masked_with, gemm_fp8_relu_quantized, gemm_fp8_relu_quantized_with, plan_fp8,
    Fp8Config, Fp8Operand, QuantizedOut, FP8_CONFIGS,
};
use ampkit::shape::{GemmShape, Layout};
use common::{assert_invalid, assert_shape_error, gpu, hopper, rng, sized};
use cudarc::driver::CudaSlice;
use half::bf16;
use rand::rngs::StdRng;
use rand::Rng;

/// A product's E4M3 operands, inverse scales and bias on the GPU.
struct Product {
    shape: GemmShape,
    a: CudaSlice<u8>,
    b: CudaSlice<u8>,
    sa: CudaSlice<f32>,
    sb: CudaSlice<f32>,
    bias: CudaSlice<f32>,
}

impl Product {
    /// Random codes (every finite E4M3 magnitude, both signs) and bias; `nan_row`: row of A
    /// whose first code is NaN (0x7F), so that the output row is NaN.
    fn random(
        gpu: &Gpu,
        rng: &mut StdRng,
        (m, n, k): (usize, usize, usize),
        nan_row: Option<usize>,
    ) -> Self {
        let mut code = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    let c: u8 = rng.gen_range(0..0x7F); // 0x7F / 0xFF are NaN
                    c | if rng.gen_bool(0.5) { 0x80 } else { 0 }
                })
                .collect()
        };
        let mut a = code(m * k);
        let b = code(n * k);
        if let Some(r) = nan_row {
            a[r * k] = 0x7F;
        }
        let bias: Vec<f32> = (0..n).map(|_| rng.gen_range(-20.0f32..60.0)).collect();
        Product::upload(
            gpu,
            (m, n, k),
            &a,
            &b,
            (2f32.powi(-6), 2f32.powi(-5)),
            &bias,
        )
    }

    fn upload(
        gpu: &Gpu,
        (m, n, k): (usize, usize, usize),
        a: &[u8],
        b: &[u8],
        (sa, sb): (f32, f32),
        bias: &[f32],
    ) -> Self {
        Product {
            shape: GemmShape::new(Layout::Forward, m, n, k),
            a: gpu.upload(a).unwrap(),
            b: gpu.upload(b).unwrap(),
            sa: gpu.upload(&[sa]).unwrap(),
            sb: gpu.upload(&[sb]).unwrap(),
            bias: gpu.upload(bias).unwrap(),
        }
    }

    fn operands(&self) -> (Fp8Operand<'_>, Fp8Operand<'_>) {
        let op = |data, scale_inv| Fp8Operand {
            data,
            format: Fp8Format::E4M3,
            scale_inv,
        };
        (op(&self.a, &self.sa), op(&self.b, &self.sb))
    }
}

/// What a forward writes for the next layer: codes, transpose, ReLU mask, amax bits.
#[derive(PartialEq)]
struct Written {
    q: Vec<u8>,
    qt: Vec<u8>,
    mask: Vec<u32>,
    amax: u32,
}

/// The bf16 ReLU GEMM with its mask, then the cast of its output at `scale` into an amax that
/// starts at `amax0`.
fn through_bf16(gpu: &Gpu, p: &Product, config: Fp8Config, scale: f32, amax0: f32) -> Written {
    let GemmShape { m, n, .. } = p.shape;
    let ld = transpose_ld(m).unwrap();
    let (a, b) = p.operands();
    let mut y = gpu.upload(&vec![bf16::from_bits(0x7FA5); m * n]).unwrap();
    let mut mask = gpu
        .upload(&vec![0xA5A5_A5A5u32; m * n.div_ceil(32)])
        .unwrap();
    gemm_fp8_relu_masked_with(
        gpu,
        config,
        p.shape,
        &a,
        &b,
        Some(&p.bias),
        &mut y,
        &mut mask,
    )
    .unwrap();
    let s = gpu.upload(&[scale]).unwrap();
    let mut amax = gpu.upload(&[amax0]).unwrap();
    let mut q = gpu.upload(&vec![0xAAu8; m * n]).unwrap();
    let mut qt = gpu.upload(&vec![0xAAu8; n * ld]).unwrap();
    cast_transpose(
        gpu,
        Fp8Format::E4M3,
        &y,
        m,
        n,
        &s,
        Some(&mut q),
        &mut qt,
        &mut amax,
    )
    .unwrap();
    Written {
        q: gpu.download(&q).unwrap(),
        qt: gpu.download(&qt).unwrap(),
        mask: gpu.download(&mask).unwrap(),
        amax: gpu.download(&amax).unwrap()[0].to_bits(),
    }
}

/// The quantized GEMM (`config`, or the planner's) and the transpose of its codes, into poisoned
/// buffers.
fn quantized(gpu: &Gpu, p: &Product, config: Option<Fp8Config>, scale: f32, amax0: f32) -> Written {
    let GemmShape { m, n, .. } = p.shape;
    let ld = transpose_ld(m).unwrap();
    let (a, b) = p.operands();
    let s = gpu.upload(&[scale]).unwrap();
    let mut amax = gpu.upload(&[amax0]).unwrap();
    let mut q = gpu.upload(&vec![0xAAu8; m * n]).unwrap();
    let mut mask = gpu
        .upload(&vec![0xA5A5_A5A5u32; m * n.div_ceil(32)])
        .unwrap();
    let out = QuantizedOut {
        q: &mut q,
        scale: &s,
        amax: &mut amax,
    };
    match config {
        Some(c) => {
            gemm_fp8_relu_quantized_with(gpu, c, p.shape, &a, &b, Some(&p.bias), out, &mut mask)
        }
        None => gemm_fp8_relu_quantized(gpu, p.shape, &a, &b, Some(&p.bias), out, &mut mask),
    }
    .unwrap();
    let mut qt = gpu.upload(&vec![0xAAu8; n * ld]).unwrap();
    transpose(gpu, &q, m, n, &mut qt).unwrap();
    Written {
        q: gpu.download(&q).unwrap(),
        qt: gpu.download(&qt).unwrap(),
        mask: gpu.download(&mask).unwrap(),
        amax: gpu.download(&amax).unwrap()[0].to_bits(),
    }
}

fn tma_store_configs() -> impl Iterator<Item = Fp8Config> {
    FP8_CONFIGS.into_iter().filter(|c| c.tma_store)
}

/// Compares two writes field by field, naming the first difference.
fn assert_same(what: &str, got: &Written, want: &Written) {
    let first = |g: &[u8], w: &[u8]| g.iter().zip(w).position(|(a, b)| a != b);
    if let Some(i) = first(&got.q, &want.q) {
        panic!(
            "{what}: code {i}: got {:#04x}, want {:#04x}",
            got.q[i], want.q[i]
        );
    }
    if let Some(i) = first(&got.qt, &want.qt) {
        panic!(
            "{what}: transpose byte {i}: got {:#04x}, want {:#04x}",
            got.qt[i], want.qt[i]
        );
    }
    if let Some(i) = got.mask.iter().zip(&want.mask).position(|(a, b)| a != b) {
        panic!(
            "{what}: mask word {i}: got {:#010x}, want {:#010x}",
            got.mask[i], want.mask[i]
        );
    }
    assert_eq!(
        got.amax,
        want.amax,
        "{what}: amax bits {:#010x} ({}), want {:#010x} ({})",
        got.amax,
        f32::from_bits(got.amax),
        want.amax,
        f32::from_bits(want.amax)
    );
}

#[test]
fn the_e4m3_output_is_the_bf16_output_cast_bit_for_bit() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu gemm fp8 quantized");
    let shapes = [
        ((257, 400, 272), Some(3)),
        ((130, 512, 48), None),
        ((64, 16, 16), None),
        ((1, 32, 128), None),
        (
            sized((2176, 1024, 128), (300, 272, 64)),
            Some(2000 % sized(2176, 300)),
        ),
    ];
    // Scales that keep the codes normal, saturate most of them (|v|·scale > 448) and flush most
    // to subnormals and zero.
    let scales = [1.0f32, 37.5, 4096.0, 2f32.powi(-12)];
    for ((m, n, k), nan_row) in shapes {
        let p = Product::random(&gpu, &mut rng, (m, n, k), nan_row);
        for (i, &scale) in scales.iter().enumerate() {
            // An amax already above every value must stay (it is only raised).
            let amax0 = if i == 1 { 1e30 } else { 0.0 };
            for config in tma_store_configs() {
                let want = through_bf16(&gpu, &p, config, scale, amax0);
                let got = quantized(&gpu, &p, Some(config), scale, amax0);
                assert_same(
                    &format!("{} {m}×{n}×{k} scale {scale}", config.name),
                    &got,
                    &want,
                );
                if nan_row.is_some() && amax0 == 0.0 {
                    assert!(f32::from_bits(got.amax).is_nan(), "a NaN row's amax is NaN");
                }
            }
            let planned = plan_fp8(p.shape, gpu.info().multiprocessors);
            let want = through_bf16(&gpu, &p, planned, scale, amax0);
            let got = quantized(&gpu, &p, None, scale, amax0);
            assert_same(&format!("planner {m}×{n}×{k} scale {scale}"), &got, &want);
        }
    }
}

/// The tile rows past M hold the bias (TMA zero-fills A): a ReLU'd bias above every real value
/// must not reach the amax. Here every real value is 100 − 32 = 68 and the padding's 100.
#[test]
fn rows_past_m_do_not_reach_the_amax() {
    let Some(gpu) = hopper() else { return };
    let (n, k) = (48, 32);
    let one = Fp8Format::E4M3.encode(1.0);
    let minus_one = Fp8Format::E4M3.encode(-1.0);
    for m in [1, 63, 65, 129, 200] {
        let p = Product::upload(
            &gpu,
            (m, n, k),
            &vec![one; m * k],
            &vec![minus_one; n * k],
            (1.0, 1.0),
            &vec![100.0; n],
        );
        for config in tma_store_configs().map(Some).chain([None]) {
            let got = quantized(&gpu, &p, config, 1.0, 0.0);
            let name = config.map_or("planner", |c| c.name);
            assert_eq!(f32::from_bits(got.amax), 68.0, "{name}, m = {m}");
            assert!(
                got.q.iter().all(|&c| c == Fp8Format::E4M3.encode(68.0)),
                "{name}, m = {m}"
            );
        }
    }
}

#[test]
fn transpose_matches_the_cpu_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu fp8 transpose");
    let shapes = [
        (1, 1),
        (3, 5),
        (64, 64),
        (65, 130),
        (257, 389),
        (100, 4),
        sized((1000, 4096), (200, 512)),
    ];
    for (rows, cols) in shapes {
        let ld = transpose_ld(rows).unwrap();
        let codes: Vec<u8> = (0..rows * cols + 1).map(|_| rng.gen()).collect();
        let dev = gpu.upload(&codes).unwrap();
        // Aligned (4 codes per access where cols allows) and 1 byte past it (one per access).
        for offset in [0, 1] {
            let mut want = vec![0xAAu8; cols * ld];
            let src = &codes[offset..offset + rows * cols];
            ampkit::cpu::fp8::transpose(src, rows, cols, &mut want).unwrap();
            let mut qt = gpu.upload(&vec![0xAAu8; cols * ld]).unwrap();
            let q = dev.slice(offset..offset + rows * cols);
            transpose(&gpu, &q, rows, cols, &mut qt).unwrap();
            let got = gpu.download(&qt).unwrap();
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{rows}×{cols} at offset {offset}: qt[{i}] (column {}, row {}): got {:#04x}, want {:#04x}",
                    i / ld,
                    i % ld,
                    got[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu gemm fp8 quantized errors");
    let (m, n, k) = (64, 48, 32);
    let p = Product::random(&gpu, &mut rng, (m, n, k), None);
    let s = gpu.upload(&[1.0f32]).unwrap();
    let s2 = gpu.upload(&[1.0f32, 1.0]).unwrap();
    let mut amax = gpu.upload(&[0.0f32]).unwrap();
    let mut mask = gpu.upload(&vec![0u32; m * n.div_ceil(32)]).unwrap();
    let mut q = gpu.upload(&vec![0u8; m * n + 16]).unwrap();
    let (a, b) = p.operands();
    let shape = p.shape;
    let mut run = |shape: GemmShape,
                   a: &Fp8Operand<'_>,
                   q: &mut dyn cudarc::driver::DevicePtrMut<u8>,
                   scale: &CudaSlice<f32>| {
        let out = QuantizedOut {
            q,
            scale,
            amax: &mut amax,
        };
        gemm_fp8_relu_quantized(&gpu, shape, a, &b, Some(&p.bias), out, &mut mask)
    };
    assert_shape_error(run(shape, &a, &mut q.slice_mut(..m * n - 1), &s), "C");
    assert_shape_error(
        run(shape, &a, &mut q.slice_mut(..m * n), &s2),
        "the quantization scale",
    );
    assert_invalid(
        run(shape, &a, &mut q.slice_mut(1..m * n + 1), &s),
        "16-byte aligned",
    );
    let e5 = Fp8Operand {
        format: Fp8Format::E5M2,
        ..a
    };
    assert_invalid(
        run(shape, &e5, &mut q.slice_mut(..m * n), &s),
        "both operands must be E4M3",
    );
    let narrow = GemmShape::new(Layout::Forward, m, 40, k);
    let short_b = p.b.slice(..40 * k);
    let b40 = Fp8Operand {
        data: &short_b,
        ..b
    };
    let bias40 = p.bias.slice(..40);
    let mut mask40 = gpu.upload(&vec![0u32; m * 2]).unwrap();
    let mut q40 = gpu.upload(&vec![0u8; m * 40]).unwrap();
    let out = QuantizedOut {
        q: &mut q40,
        scale: &s,
        amax: &mut gpu.upload(&[0.0f32]).unwrap(),
    };
    assert_invalid(
        gemm_fp8_relu_quantized(&gpu, narrow, &a, &b40, Some(&bias40), out, &mut mask40),
        "multiple of 16",
    );
    let mut qt = gpu.upload(&vec![0u8; n * m]).unwrap();
    assert_shape_error(transpose(&gpu, &q.slice(..m * n - 1), m, n, &mut qt), "q");
    assert_shape_error(
        transpose(
            &gpu,
            &q.slice(..m * n),
            m,
            n,
            &mut qt.slice_mut(..n * m - 1),
        ),
        "qt",
    );
}
