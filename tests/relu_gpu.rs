//! GPU ReLU forward and backward (`ops::relu`) vs the CPU reference, bit for bit, in f16, bf16 and
//! f32 (every bf16 test a `bf16_` twin of the f16 one):
//! every bit pattern (NaN payloads, ±inf, −0.0, subnormals) in both the gradient and the forward
//! output, lengths around the vector widths, views at offsets that force every vector width and
//! head, poisoned outputs all written, and length errors naming the operand.

mod common;

use ampkit::cpu::relu;
use ampkit::cuda::Gpu;
use ampkit::ops::relu::{backward, forward, ReluElement};
use ampkit::{f16, Error};
use common::{assert_all_written, assert_bits_eq, gpu, rng};
use cudarc::driver::DeviceRepr;
use half::bf16;
use rand::rngs::StdRng;
use rand::Rng;

/// What the test needs of an element type: bit patterns in and out, and the CPU reference.
trait Bits: ReluElement + ampkit::cpu::Element + bytemuck::Pod + DeviceRepr {
    type U: Copy + PartialEq + std::fmt::LowerHex + std::fmt::Debug;
    /// Never an output: dy is kept free of it, and the kernel writes dy's bits or +0.
    const POISON: Self;
    /// Values that decide the comparison with 0 or must pass through untouched.
    const SPECIALS: &'static [Self];
    fn random(rng: &mut StdRng) -> Self;
    fn bits(self) -> Self::U;
}

impl Bits for f16 {
    type U = u16;
    const POISON: f16 = f16::from_bits(0x7D5A);
    const SPECIALS: &'static [f16] = &[
        f16::from_bits(0x0000),
        f16::from_bits(0x8000),
        f16::from_bits(0x0001),
        f16::from_bits(0x8001),
        f16::from_bits(0x7C00),
        f16::from_bits(0xFC00),
        f16::from_bits(0x7E00),
        f16::from_bits(0xFE01),
        f16::from_bits(0x7C01),
        f16::from_bits(0x7BFF),
    ];
    fn random(rng: &mut StdRng) -> f16 {
        f16::from_bits(rng.gen())
    }
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

impl Bits for bf16 {
    type U = u16;
    const POISON: bf16 = bf16::from_bits(0x7FA5);
    const SPECIALS: &'static [bf16] = &[
        bf16::from_bits(0x0000),
        bf16::from_bits(0x8000),
        bf16::from_bits(0x0001),
        bf16::from_bits(0x8001),
        bf16::from_bits(0x7F80),
        bf16::from_bits(0xFF80),
        bf16::from_bits(0x7FC0),
        bf16::from_bits(0xFFC1),
        bf16::from_bits(0x7F81),
        bf16::from_bits(0x7F7F),
        // f16's +inf bit pattern: an ordinary positive bf16.
        bf16::from_bits(0x7C00),
        bf16::from_bits(0x7C01),
    ];
    fn random(rng: &mut StdRng) -> bf16 {
        bf16::from_bits(rng.gen())
    }
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

impl Bits for f32 {
    type U = u32;
    const POISON: f32 = f32::from_bits(0x7FA5_5A5A);
    const SPECIALS: &'static [f32] = &[
        0.0,
        -0.0,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7FC0_0000),
        f32::from_bits(0xFFC0_1234),
        f32::from_bits(0x7F80_0001),
        f32::MAX,
    ];
    fn random(rng: &mut StdRng) -> f32 {
        // Random bits cover NaN and inf rarely; mixing in plain values keeps both signs common.
        if rng.gen() {
            f32::from_bits(rng.gen())
        } else {
            rng.gen_range(-4.0f32..4.0)
        }
    }
    fn bits(self) -> u32 {
        self.to_bits()
    }
}

fn values<T: Bits>(rng: &mut StdRng, n: usize) -> Vec<T> {
    let mut v: Vec<T> = (0..n).map(|_| T::random(rng)).collect();
    for i in 0..n.min(2 * T::SPECIALS.len()) {
        let at = rng.gen_range(0..n);
        v[at] = T::SPECIALS[i % T::SPECIALS.len()];
    }
    v
}

/// One case: views of `n` elements starting `offsets` = [dy, y, dx] elements into their buffers.
fn check_case<T: Bits>(gpu: &Gpu, rng: &mut StdRng, n: usize, offsets: [usize; 3]) {
    let mut dy: Vec<T> = values(rng, n);
    for g in &mut dy {
        if g.bits() == T::POISON.bits() {
            *g = T::SPECIALS[0];
        }
    }
    let y: Vec<T> = values(rng, n);
    let mut want = vec![T::POISON; n];
    relu::backward(&dy, &y, &mut want).unwrap();

    let pad = |v: &[T], off: usize| [vec![T::POISON; off], v.to_vec()].concat();
    let dy_dev = gpu.upload(&pad(&dy, offsets[0])).unwrap();
    let y_dev = gpu.upload(&pad(&y, offsets[1])).unwrap();
    let mut dx_dev = gpu.upload(&vec![T::POISON; n + offsets[2] + 5]).unwrap();
    backward(
        gpu,
        &dy_dev.slice(offsets[0]..),
        &y_dev.slice(offsets[1]..),
        &mut dx_dev.slice_mut(offsets[2]..offsets[2] + n),
    )
    .unwrap();
    let all = gpu.download(&dx_dev).unwrap();
    let got = &all[offsets[2]..offsets[2] + n];
    let what = format!("{} elements, offsets {offsets:?}", n);
    assert_all_written(&what, got, T::POISON);
    let bits = |v: &[T]| v.iter().map(|x| x.bits()).collect::<Vec<_>>();
    assert_bits_eq(&what, &bits(got), &bits(&want), |i| {
        (dy[i].bits(), y[i].bits())
    });
    let outside = all[..offsets[2]].iter().chain(&all[offsets[2] + n..]);
    assert!(
        outside.map(|x| x.bits()).all(|b| b == T::POISON.bits()),
        "{what}: written outside the view"
    );
}

/// The forward on a view of `n` elements at offsets [x, y].
fn check_forward<T: Bits>(gpu: &Gpu, rng: &mut StdRng, n: usize, offsets: [usize; 2]) {
    let mut x: Vec<T> = values(rng, n);
    for v in &mut x {
        if v.bits() == T::POISON.bits() {
            *v = T::SPECIALS[1];
        }
    }
    let mut want = vec![T::POISON; n];
    relu::forward(&x, &mut want).unwrap();
    let x_dev = gpu
        .upload(&[vec![T::POISON; offsets[0]], x.clone()].concat())
        .unwrap();
    let mut y_dev = gpu.upload(&vec![T::POISON; n + offsets[1] + 3]).unwrap();
    forward(
        gpu,
        &x_dev.slice(offsets[0]..),
        &mut y_dev.slice_mut(offsets[1]..offsets[1] + n),
    )
    .unwrap();
    let all = gpu.download(&y_dev).unwrap();
    let got = &all[offsets[1]..offsets[1] + n];
    let what = format!("forward, {n} elements, offsets {offsets:?}");
    assert_all_written(&what, got, T::POISON);
    let bits = |v: &[T]| v.iter().map(|x| x.bits()).collect::<Vec<_>>();
    assert_bits_eq(&what, &bits(got), &bits(&want), |i| x[i].bits());
    let outside = all[..offsets[1]].iter().chain(&all[offsets[1] + n..]);
    assert!(
        outside.map(|x| x.bits()).all(|b| b == T::POISON.bits()),
        "{what}: written outside the view"
    );
}

#[test]
fn forward_matches_the_reference_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu relu forward");
    for n in [0, 1, 7, 8, 9, 17, 4097, (1 << 20) + 3] {
        for off in [[0, 0], [1, 1], [0, 3], [5, 2]] {
            check_forward::<f16>(&gpu, &mut rng, n, off);
            check_forward::<f32>(&gpu, &mut rng, n, off);
        }
    }
    let x = gpu.upload(&[1f32; 4]).unwrap();
    let mut y = gpu.upload(&[0f32; 3]).unwrap();
    let e = forward(&gpu, &x, &mut y).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
}

#[test]
fn bf16_forward_matches_the_reference_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu relu forward bf16");
    for n in [0, 1, 7, 8, 9, 17, 4097, (1 << 20) + 3] {
        for off in [[0, 0], [1, 1], [0, 3], [5, 2]] {
            check_forward::<bf16>(&gpu, &mut rng, n, off);
        }
    }
}

fn matches_the_reference<T: Bits>(label: &str) {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(label);
    let offsets = [
        [0, 0, 0],
        [1, 1, 1],
        [0, 1, 0],
        [3, 3, 3],
        [0, 0, 5],
        [2, 6, 4],
    ];
    for n in [0, 1, 2, 7, 8, 9, 15, 16, 17, 1000, 4097, (1 << 20) + 3] {
        for off in offsets {
            check_case::<T>(&gpu, &mut rng, n, off);
        }
    }
}

#[test]
fn f16_matches_the_reference_bit_for_bit() {
    matches_the_reference::<f16>("gpu relu backward f16");
}

#[test]
fn bf16_matches_the_reference_bit_for_bit() {
    matches_the_reference::<bf16>("gpu relu backward bf16");
}

#[test]
fn f32_matches_the_reference_bit_for_bit() {
    matches_the_reference::<f32>("gpu relu backward f32");
}

#[test]
fn every_f16_output_pattern_against_every_sign() {
    let Some(gpu) = gpu() else { return };
    // All 65536 patterns of y, each against a nonzero dy whose bits show it passed through.
    let y: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let dy: Vec<f16> = (0..=u16::MAX)
        .map(|i| f16::from_bits((i ^ 0x5555) | 1))
        .collect();
    let mut want = vec![f16::ZERO; y.len()];
    relu::backward(&dy, &y, &mut want).unwrap();
    let mut dx = gpu.upload(&vec![f16::ONE; y.len()]).unwrap();
    let (dy_dev, y_dev) = (gpu.upload(&dy).unwrap(), gpu.upload(&y).unwrap());
    backward(&gpu, &dy_dev, &y_dev, &mut dx).unwrap();
    let got = gpu.download(&dx).unwrap();
    let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_bits_eq("all f16 patterns", &bits(&got), &bits(&want), |i| y[i]);
    // The rule itself: only 0x0001..=0x7C00 (positive, finite or +inf) pass the gradient.
    let passed = (0..y.len())
        .filter(|&i| got[i].to_bits() == dy[i].to_bits())
        .count();
    assert_eq!(passed, 0x7C00);
}

/// Every bf16 pattern, in both directions: only 0x0001..=0x7F80 (positive, finite or +inf; f16's
/// +inf pattern 0x7C00 is an ordinary bf16) pass the gradient, and the forward keeps those and
/// the NaNs (bits unchanged), writing +0 elsewhere.
#[test]
fn every_bf16_output_pattern_against_every_sign() {
    let Some(gpu) = gpu() else { return };
    let y: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let dy: Vec<bf16> = (0..=u16::MAX)
        .map(|i| bf16::from_bits((i ^ 0x5555) | 1))
        .collect();
    let mut want = vec![bf16::ZERO; y.len()];
    relu::backward(&dy, &y, &mut want).unwrap();
    let mut dx = gpu.upload(&vec![bf16::ONE; y.len()]).unwrap();
    let (dy_dev, y_dev) = (gpu.upload(&dy).unwrap(), gpu.upload(&y).unwrap());
    backward(&gpu, &dy_dev, &y_dev, &mut dx).unwrap();
    let got = gpu.download(&dx).unwrap();
    let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_bits_eq("all bf16 patterns", &bits(&got), &bits(&want), |i| y[i]);
    let passed = (0..y.len())
        .filter(|&i| got[i].to_bits() == dy[i].to_bits())
        .count();
    assert_eq!(passed, 0x7F80);

    let mut want = vec![bf16::ZERO; y.len()];
    relu::forward(&y, &mut want).unwrap();
    let mut out = gpu.upload(&vec![bf16::ONE; y.len()]).unwrap();
    forward(&gpu, &y_dev, &mut out).unwrap();
    let got = gpu.download(&out).unwrap();
    assert_bits_eq(
        "all bf16 patterns, forward",
        &bits(&got),
        &bits(&want),
        |i| y[i],
    );
    let kept = (0..y.len()).filter(|&i| got[i].to_bits() == y[i].to_bits() && i != 0);
    // 0x0001..=0x7F80, and the NaNs: 0x7F81..=0x7FFF, 0xFF81..=0xFFFF.
    assert_eq!(kept.count(), 0x7F80 + 2 * 0x7F);
}

#[test]
fn length_mismatch_is_a_typed_error() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.upload(&[1.0f32; 4]).unwrap();
    let b = gpu.upload(&[1.0f32; 3]).unwrap();
    let mut out = gpu.upload(&[0.0f32; 4]).unwrap();
    let e = backward(&gpu, &a, &b, &mut out).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("y has 3"), "{e}");
    let mut short = gpu.upload(&[0.0f32; 2]).unwrap();
    let e = backward(&gpu, &a, &a, &mut short).unwrap_err();
    assert!(e.to_string().contains("dx has 2"), "{e}");
    assert_eq!(
        gpu.download(&out).unwrap(),
        vec![0.0; 4],
        "nothing launched"
    );
}
