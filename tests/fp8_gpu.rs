//! GPU-vs-CPU parity for the FP8 casts (`kernels/fp8.cu`): quantize with a device-held scale and
//! the amax in the same pass, and dequantize, in E4M3 and E5M2, bit for bit against
//! `cpu::fp8`. Inputs: any f32 bit pattern (NaN payloads, infinities, subnormals), values around
//! each format's saturation threshold, exact rounding ties, ordinary activations; odd lengths and
//! views at every offset; outputs poisoned around their views.

mod common;

use ampkit::cpu::fp8::Fp8Format;
use ampkit::{cpu, ops};
use common::{assert_bits_eq, gpu, rng};
use rand::rngs::StdRng;
use rand::Rng;

const FORMATS: [Fp8Format; 2] = [Fp8Format::E4M3, Fp8Format::E5M2];
const LENGTHS: &[usize] = &[1, 2, 7, 255, 256, 257, 4097, 65_537, 1 << 20 | 3];
const POISON_U8: u8 = 0xA5;
const GUARD: usize = 5;

/// Inputs that, after `scale`, land on every branch of the conversion of `format`.
fn inputs(rng: &mut StdRng, n: usize, format: Fp8Format, scale: f32) -> Vec<f32> {
    let max = format.max();
    (0..n)
        .map(|_| match rng.gen_range(0..6) {
            0 => f32::from_bits(rng.gen()),
            // Around the saturation threshold (the largest finite plus half its ulp).
            1 => rng.gen_range(0.9 * max..1.2 * max) / scale * if rng.gen() { 1.0 } else { -1.0 },
            // Exactly halfway between two adjacent FP8 values.
            2 => {
                let b = rng.gen_range(0..0x7Du8);
                (format.decode(b) + format.decode(b + 1)) * 0.5 / scale
            }
            // The FP8 subnormal range and below.
            3 => rng.gen_range(-1.0f32..1.0) * 2f32.powi(-rng.gen_range(6..20)) / scale,
            _ => rng.gen_range(-4.0f32..4.0) * 2f32.powi(rng.gen_range(-8..8)),
        })
        .collect()
}

#[test]
fn quantize_and_dequantize_match_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("fp8 casts");
    for format in FORMATS {
        for &n in LENGTHS {
            let off = rng.gen_range(0..4);
            // A power-of-two scale as delayed scaling makes them, and an arbitrary one.
            let scale = if rng.gen() {
                2f32.powi(rng.gen_range(-6..6))
            } else {
                rng.gen_range(0.01f32..100.0)
            };
            let mut x = inputs(&mut rng, n, format, scale);
            if rng.gen_bool(0.5) {
                // Half the tensors hold no NaN, so the amax is a number.
                x.iter_mut().filter(|v| v.is_nan()).for_each(|v| *v = 1.0);
            }
            let mut want = vec![0u8; n];
            let want_amax = cpu::fp8::quantize(format, &x, scale, &mut want).unwrap();

            let mut host = vec![f32::NAN; off];
            host.extend_from_slice(&x);
            let src = gpu.upload(&host).unwrap();
            let mut dst = gpu.upload(&vec![POISON_U8; off + n + GUARD]).unwrap();
            let dscale = gpu.upload(&[scale]).unwrap();
            // The amax accumulates: start it below the tensor's so the kernel must raise it.
            let mut amax = gpu.upload(&[0.0f32]).unwrap();
            let mut view = dst.slice_mut(off..off + n);
            ops::fp8::quantize(
                &gpu,
                format,
                &src.slice(off..),
                &mut view,
                &dscale,
                &mut amax,
            )
            .unwrap();
            let got = gpu.download(&dst).unwrap();
            let what = format!("quantize {format:?} n={n} off={off} scale={scale}");
            assert_bits_eq(&what, &got[off..off + n], &want, |i| x[i]);
            assert!(
                got[..off]
                    .iter()
                    .chain(&got[off + n..])
                    .all(|&b| b == POISON_U8),
                "{what}: wrote outside the view"
            );
            let got_amax = gpu.download(&amax).unwrap()[0];
            assert_eq!(
                got_amax.to_bits(),
                want_amax.to_bits(),
                "{what}: amax {got_amax} vs {want_amax}"
            );

            // Every FP8 pattern first, then the quantized tensor.
            let q: Vec<u8> = (0..n)
                .map(|i| if i < 256 { i as u8 } else { want[i] })
                .collect();
            let scale_inv = 1.0 / scale;
            let mut back = vec![0f32; n];
            cpu::fp8::dequantize(format, &q, scale_inv, &mut back).unwrap();
            let dq = gpu.upload(&q).unwrap();
            let mut y = gpu
                .upload(&vec![f32::from_bits(0xDEAD_BEEF); off + n + GUARD])
                .unwrap();
            let dinv = gpu.upload(&[scale_inv]).unwrap();
            let mut yview = y.slice_mut(off..off + n);
            ops::fp8::dequantize(&gpu, format, &dq, &mut yview, &dinv).unwrap();
            let got = gpu.download(&y).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let what = format!("dequantize {format:?} n={n} off={off}");
            assert_bits_eq(&what, &bits(&got[off..off + n]), &bits(&back), |i| q[i]);
            assert!(
                got[..off]
                    .iter()
                    .chain(&got[off + n..])
                    .all(|v| v.to_bits() == 0xDEAD_BEEF),
                "{what}: wrote outside the view"
            );
        }
    }
}

#[test]
fn the_amax_accumulates_across_calls_and_bad_lengths_are_errors() {
    let Some(gpu) = gpu() else { return };
    let x1 = gpu.upload(&[1.0f32, -2.0, 0.5]).unwrap();
    let x2 = gpu.upload(&[-7.5f32, 3.0]).unwrap();
    let scale = gpu.upload(&[1.0f32]).unwrap();
    let mut amax = gpu.upload(&[0.0f32]).unwrap();
    let (mut q1, mut q2) = (
        gpu.alloc_zeros::<u8>(3).unwrap(),
        gpu.alloc_zeros::<u8>(2).unwrap(),
    );
    let f = Fp8Format::E4M3;
    ops::fp8::quantize(&gpu, f, &x1, &mut q1, &scale, &mut amax).unwrap();
    assert_eq!(gpu.download(&amax).unwrap(), [2.0]);
    ops::fp8::quantize(&gpu, f, &x2, &mut q2, &scale, &mut amax).unwrap();
    assert_eq!(gpu.download(&amax).unwrap(), [7.5]);
    ops::fp8::quantize(&gpu, f, &x1, &mut q1, &scale, &mut amax).unwrap();
    assert_eq!(gpu.download(&amax).unwrap(), [7.5], "a max never decreases");

    let err = ops::fp8::quantize(&gpu, f, &x1, &mut q2, &scale, &mut amax).unwrap_err();
    assert!(matches!(err, ampkit::Error::ShapeMismatch { .. }), "{err}");
    let two = gpu.upload(&[1.0f32, 1.0]).unwrap();
    let err = ops::fp8::quantize(&gpu, f, &x1, &mut q1, &two, &mut amax).unwrap_err();
    assert!(err.to_string().contains("scale"), "{err}");
    let mut y = gpu.alloc_zeros::<f32>(2).unwrap();
    let err = ops::fp8::dequantize(&gpu, f, &q1, &mut y, &scale).unwrap_err();
    assert!(matches!(err, ampkit::Error::ShapeMismatch { .. }), "{err}");
}
