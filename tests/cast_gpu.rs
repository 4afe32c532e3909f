//! GPU-vs-CPU parity for the cast family (f32 ↔ f16, f32 ↔ bf16, fill): bit for bit, on fresh random inputs
//! with inf, NaN (with payloads), subnormals, values around 65504 and rounding ties, at odd
//! lengths and every alignment offset. Outputs are poisoned first, and the poison around each
//! output view must survive (no write outside it).

mod common;

use ampkit::{cpu, ops, Device, Error};
use common::{assert_bits_eq, gpu, rng};
use half::f16;
use rand::rngs::StdRng;
use rand::Rng;

const LENGTHS: &[usize] = &[
    1,
    2,
    3,
    7,
    8,
    9,
    15,
    17,
    31,
    255,
    1023,
    4097,
    65_537,
    1 << 20 | 5,
];
const POISON_F16: u16 = 0xDEAD;
const POISON_F32: u32 = 0xDEAD_BEEF;
/// Guard elements on each side of an output view.
const GUARD: usize = 9;

/// f32 inputs that stress every branch of f32 → f16.
fn f32_inputs(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.gen_range(0..10) {
            // Any bit pattern: NaNs with random payloads, infinities, f32 subnormals, huge values.
            0 => f32::from_bits(rng.gen()),
            // Around the f16 overflow threshold: 65504 is the largest finite, 65520 rounds to inf.
            1 => rng.gen_range(65_000.0f32..66_000.0) * if rng.gen() { 1.0 } else { -1.0 },
            // f16 subnormal range and below it (2^-24 is the smallest f16 subnormal).
            2 => rng.gen_range(-7e-5f32..7e-5) * 10f32.powi(-rng.gen_range(0..4)),
            // Exact ties between two adjacent f16 values: must round to the even one.
            3 => {
                let h = f16::from_bits(rng.gen_range(0..0x7BFF));
                let next = f16::from_bits(h.to_bits() + 1);
                (h.to_f32() + next.to_f32()) * 0.5
            }
            4 => [
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                0.0,
                -0.0,
                65504.0,
                65520.0,
            ][rng.gen_range(0..7)],
            // Ordinary activations and gradients.
            _ => rng.gen_range(-4.0f32..4.0) * 2f32.powi(rng.gen_range(-20..12)),
        })
        .collect()
}

/// Every f16 bit pattern in turn (all 65536 of them), then random ones.
fn f16_inputs(rng: &mut StdRng, n: usize) -> Vec<f16> {
    (0..n)
        .map(|i| f16::from_bits(if i < 65_536 { i as u16 } else { rng.gen() }))
        .collect()
}

#[test]
fn f32_to_f16_matches_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("f32_to_f16");
    for &n in LENGTHS {
        // Source offsets 0..4 (every 16-byte phase of an f32) against destination offsets 0..8
        // (every phase of an f16), including the pairs where no common vector width exists.
        for (src_off, dst_off) in [(0, 0), (1, 1), (3, 3), (0, 5), (2, 7), (1, 0), (3, 6)] {
            let src = f32_inputs(&mut rng, n);
            let mut want = vec![f16::ZERO; n];
            cpu::cast::f32_to_f16(&src, &mut want).unwrap();

            let mut src_host = vec![f32::from_bits(POISON_F32); src_off];
            src_host.extend_from_slice(&src);
            let src_dev = gpu.upload(&src_host).unwrap();
            let mut dst_dev = gpu
                .upload(&vec![f16::from_bits(POISON_F16); dst_off + n + GUARD])
                .unwrap();
            ops::cast::f32_to_f16(
                &gpu,
                &src_dev.slice(src_off..),
                &mut dst_dev.slice_mut(dst_off..dst_off + n),
            )
            .unwrap();
            let got = gpu.download(&dst_dev).unwrap();

            let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
            let what = format!("f32_to_f16 n={n} src_off={src_off} dst_off={dst_off}");
            assert_bits_eq(
                &what,
                &bits(&got[dst_off..dst_off + n]),
                &bits(&want),
                |i| src[i],
            );
            assert!(
                got[..dst_off]
                    .iter()
                    .chain(&got[dst_off + n..])
                    .all(|h| h.to_bits() == POISON_F16),
                "{what}: wrote outside the destination view"
            );
        }
    }
}

#[test]
fn f16_to_f32_matches_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("f16_to_f32");
    let mut lengths = LENGTHS.to_vec();
    lengths.push(65_536 + 3); // covers every f16 bit pattern
    for n in lengths {
        for (src_off, dst_off) in [(0, 0), (5, 1), (7, 3), (0, 2), (3, 0)] {
            let src = f16_inputs(&mut rng, n);
            let mut want = vec![0f32; n];
            cpu::cast::f16_to_f32(&src, &mut want).unwrap();

            let mut src_host = vec![f16::from_bits(POISON_F16); src_off];
            src_host.extend_from_slice(&src);
            let src_dev = gpu.upload(&src_host).unwrap();
            let mut dst_dev = gpu
                .upload(&vec![f32::from_bits(POISON_F32); dst_off + n + GUARD])
                .unwrap();
            ops::cast::f16_to_f32(
                &gpu,
                &src_dev.slice(src_off..),
                &mut dst_dev.slice_mut(dst_off..dst_off + n),
            )
            .unwrap();
            let got = gpu.download(&dst_dev).unwrap();

            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let what = format!("f16_to_f32 n={n} src_off={src_off} dst_off={dst_off}");
            assert_bits_eq(
                &what,
                &bits(&got[dst_off..dst_off + n]),
                &bits(&want),
                |i| src[i],
            );
            assert!(
                got[..dst_off]
                    .iter()
                    .chain(&got[dst_off + n..])
                    .all(|x| x.to_bits() == POISON_F32),
                "{what}: wrote outside the destination view"
            );
        }
    }
}

#[test]
fn fill_writes_exact_bits_inside_the_view_only() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("fill");
    for &n in LENGTHS {
        for off in [0usize, 1, 2, 3, 5, 7] {
            // Random values, NaN payloads and negative zero included.
            let v32 = f32::from_bits(rng.gen());
            let mut buf = gpu
                .upload(&vec![f32::from_bits(POISON_F32); off + n + GUARD])
                .unwrap();
            ops::cast::fill_f32(&gpu, &mut buf.slice_mut(off..off + n), v32).unwrap();
            let got = gpu.download(&buf).unwrap();
            let mut want = vec![f32::from_bits(POISON_F32); off + n + GUARD];
            cpu::cast::fill(&mut want[off..off + n], v32);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_bits_eq(
                &format!("fill_f32 n={n} off={off}"),
                &bits(&got),
                &bits(&want),
                |_| v32,
            );

            let v16 = f16::from_bits(rng.gen());
            let mut buf = gpu
                .upload(&vec![f16::from_bits(POISON_F16); off + n + GUARD])
                .unwrap();
            ops::cast::fill_f16(&gpu, &mut buf.slice_mut(off..off + n), v16).unwrap();
            let got = gpu.download(&buf).unwrap();
            let mut want = vec![f16::from_bits(POISON_F16); off + n + GUARD];
            cpu::cast::fill(&mut want[off..off + n], v16);
            let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_bits_eq(
                &format!("fill_f16 n={n} off={off}"),
                &bits(&got),
                &bits(&want),
                |_| v16,
            );
        }
    }
}

#[test]
fn empty_views_are_a_no_op() {
    let Some(gpu) = gpu() else { return };
    let src = gpu.upload(&[1.0f32; 4]).unwrap();
    let mut dst = gpu.upload(&[f16::from_bits(POISON_F16); 4]).unwrap();
    ops::cast::f32_to_f16(&gpu, &src.slice(2..2), &mut dst.slice_mut(1..1)).unwrap();
    ops::cast::fill_f16(&gpu, &mut dst.slice_mut(3..3), f16::ONE).unwrap();
    assert!(gpu
        .download(&dst)
        .unwrap()
        .iter()
        .all(|h| h.to_bits() == POISON_F16));
}

#[test]
fn bad_arguments_are_typed_errors() {
    let Some(gpu) = gpu() else { return };
    let src = gpu.upload(&[1.0f32; 10]).unwrap();
    let mut dst = gpu.alloc_zeros::<f16>(9).unwrap();
    let e = ops::cast::f32_to_f16(&gpu, &src, &mut dst).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("10") && e.to_string().contains('9'),
        "{e}"
    );

    // An f32 view that starts one byte into a buffer cannot be loaded at all.
    let bytes = gpu.alloc_zeros::<u8>(64).unwrap();
    let odd = bytes.slice(1..);
    // SAFETY: reinterpreting device bytes as f32 is sound for the view; only its alignment is off.
    let misaligned = unsafe { odd.transmute::<f32>(8) }.unwrap();
    let mut out = gpu.alloc_zeros::<f16>(8).unwrap();
    let e = ops::cast::f32_to_f16(&gpu, &misaligned, &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
}

#[test]
fn a_missing_device_is_a_typed_error_everywhere() {
    // Runs with or without a GPU: no machine has this many.
    let e = Device::cuda(1 << 20).unwrap_err();
    assert!(matches!(e, Error::NoCudaDevice { .. }), "{e}");
    assert!(
        e.to_string().contains("Device::cpu()"),
        "the message says what to do: {e}"
    );
    let (device, note) = Device::auto();
    assert!(note.starts_with("using "), "{note}");
    assert_eq!(device.gpu().is_some(), note.contains("cuda:"), "{note}");
}

#[test]
fn every_vector_width_is_exact() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("widths");
    let n = 10_007;
    let src = f32_inputs(&mut rng, n);
    let mut want16 = vec![f16::ZERO; n];
    cpu::cast::f32_to_f16(&src, &mut want16).unwrap();
    let mut want32 = vec![0f32; n];
    cpu::cast::f16_to_f32(&want16, &mut want32).unwrap();
    let src_dev = gpu.upload(&src).unwrap();
    let half_dev = gpu.upload(&want16).unwrap();
    for width in [8, 4, 2, 1] {
        for off in [0, 3] {
            let mut out16 = gpu.upload(&vec![f16::from_bits(POISON_F16); n]).unwrap();
            ampkit::tuning::cast::f32_to_f16_max_width(
                &gpu,
                &src_dev.slice(off..),
                &mut out16.slice_mut(off..),
                width,
            )
            .unwrap();
            let got: Vec<u16> = gpu.download(&out16).unwrap()[off..]
                .iter()
                .map(|h| h.to_bits())
                .collect();
            let want: Vec<u16> = want16[off..].iter().map(|h| h.to_bits()).collect();
            assert_bits_eq(
                &format!("f32_to_f16 width {width} off {off}"),
                &got,
                &want,
                |i| src[off + i],
            );

            let mut out32 = gpu.upload(&vec![f32::from_bits(POISON_F32); n]).unwrap();
            ampkit::tuning::cast::f16_to_f32_max_width(
                &gpu,
                &half_dev.slice(off..),
                &mut out32.slice_mut(off..),
                width,
            )
            .unwrap();
            let got: Vec<u32> = gpu.download(&out32).unwrap()[off..]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let want: Vec<u32> = want32[off..].iter().map(|x| x.to_bits()).collect();
            assert_bits_eq(
                &format!("f16_to_f32 width {width} off {off}"),
                &got,
                &want,
                |i| want16[off + i],
            );
        }
    }
}

/// f32 inputs that stress f32 → bf16: any bit pattern (NaN payloads, subnormals), exact ties
/// between adjacent bf16 values and the values around the overflow threshold.
fn bf16_inputs(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.gen_range(0..6) {
            0 | 1 => f32::from_bits(rng.gen()),
            2 => {
                let h = rng.gen_range(0..0x7F7Eu32) | (rng.gen_range(0..2u32) << 15);
                f32::from_bits((h << 16) | 0x8000) // exactly halfway to the next bf16
            }
            3 => f32::from_bits(0x7F7F_0000 + rng.gen_range(0..0x1_0000)), // bf16::MAX and above
            4 => f32::from_bits(rng.gen_range(0..0x0100_0000)), // subnormals and tiny normals
            _ => rng.gen_range(-4.0f32..4.0) * 2f32.powi(rng.gen_range(-40..40)),
        })
        .collect()
}

#[test]
fn bf16_casts_match_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("bf16 casts");
    let mut lengths = LENGTHS.to_vec();
    lengths.push(65_536 + 3); // bf16 → f32 covers every bf16 bit pattern
    for n in lengths {
        for (src_off, dst_off) in [(0, 0), (1, 1), (3, 6), (2, 7), (1, 0)] {
            // f32 → bf16, then back: the first output, poisoned around its view, is the second's
            // input, and every bf16 pattern goes through bf16 → f32 as well.
            let src = bf16_inputs(&mut rng, n);
            let mut want = vec![half::bf16::ZERO; n];
            cpu::cast::f32_to_bf16(&src, &mut want).unwrap();
            let mut src_host = vec![f32::from_bits(POISON_F32); src_off];
            src_host.extend_from_slice(&src);
            let src_dev = gpu.upload(&src_host).unwrap();
            let poison = half::bf16::from_bits(POISON_F16);
            let mut dst_dev = gpu.upload(&vec![poison; dst_off + n + GUARD]).unwrap();
            let mut view = dst_dev.slice_mut(dst_off..dst_off + n);
            ops::cast::f32_to_bf16(&gpu, &src_dev.slice(src_off..), &mut view).unwrap();
            let got = gpu.download(&dst_dev).unwrap();
            let bits = |v: &[half::bf16]| v.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
            let what = format!("f32_to_bf16 n={n} src_off={src_off} dst_off={dst_off}");
            assert_bits_eq(
                &what,
                &bits(&got[dst_off..dst_off + n]),
                &bits(&want),
                |i| src[i],
            );
            assert!(
                got[..dst_off]
                    .iter()
                    .chain(&got[dst_off + n..])
                    .all(|h| h.to_bits() == POISON_F16),
                "{what}: wrote outside the destination view"
            );

            let back_src: Vec<half::bf16> = (0..n)
                .map(|i| {
                    if i < 65_536 {
                        half::bf16::from_bits(i as u16)
                    } else {
                        want[i]
                    }
                })
                .collect();
            let mut back_want = vec![0f32; n];
            cpu::cast::bf16_to_f32(&back_src, &mut back_want).unwrap();
            let back_dev = gpu.upload(&back_src).unwrap();
            let mut out = gpu
                .upload(&vec![f32::from_bits(POISON_F32); dst_off + n + GUARD])
                .unwrap();
            let mut view = out.slice_mut(dst_off..dst_off + n);
            ops::cast::bf16_to_f32(&gpu, &back_dev, &mut view).unwrap();
            let got = gpu.download(&out).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let what = format!("bf16_to_f32 n={n} dst_off={dst_off}");
            assert_bits_eq(
                &what,
                &bits(&got[dst_off..dst_off + n]),
                &bits(&back_want),
                |i| back_src[i],
            );
            assert!(
                got[..dst_off]
                    .iter()
                    .chain(&got[dst_off + n..])
                    .all(|x| x.to_bits() == POISON_F32),
                "{what}: wrote outside the destination view"
            );
        }
    }
}
