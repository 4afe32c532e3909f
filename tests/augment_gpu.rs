//! The GPU shifted gather (`ops::augment`) against the CPU reference, bit for bit, in f32 and f16
//! and (the `_bf16` twin, with bf16's rounding ties, overflow and NaN payloads) bf16:
//! MNIST-sized epochs and odd sizes, shifts past the image's side, special values, views at
//! offsets, poisoned outputs all written, an out-of-range image index (a NaN row), and argument
//! errors before any launch. (The batch stage's bf16 output: the unit test
//! `ops::augment::tests::coded_batches_equal_f32_batches_bit_for_bit`.)

mod common;

use ampkit::cpu::augment as cpu;
use ampkit::cuda::Gpu;
use ampkit::ops::augment::{gather_shifted, AugmentOutput};
use ampkit::{f16, Error};
use common::{assert_all_written, gpu, rng, sized};
use half::bf16;
use rand::rngs::StdRng;
use rand::Rng;

struct Case {
    images: Vec<f32>,
    order: Vec<u32>,
    shifts: Vec<i32>,
}

fn case(rng: &mut StdRng, count: usize, samples: usize, inputs: usize, max_shift: i32) -> Case {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        -0.0,
        f32::from_bits(1),
        65520.0,
        -65504.0,
    ];
    Case {
        images: (0..count * inputs)
            .map(|i| match i % 97 {
                0..=5 => specials[i % 97],
                _ => rng.gen_range(-3.0f32..3.0),
            })
            .collect(),
        order: (0..samples)
            .map(|_| rng.gen_range(0..count as u32))
            .collect(),
        shifts: (0..2 * samples)
            .map(|_| rng.gen_range(-max_shift..=max_shift))
            .collect(),
    }
}

/// Runs the GPU gather into a poisoned buffer and compares its bits with the CPU's.
fn check<T>(gpu: &Gpu, c: &Case, inputs: usize, side: usize, poison: T, what: &str)
where
    T: AugmentOutput + ampkit::cpu::Element + bytemuck::Pod + Default,
{
    let n = c.order.len() * inputs;
    let mut want = vec![T::default(); n];
    cpu::gather_shifted(
        &c.images, inputs, side, &c.order, &c.shifts, -0.5, &mut want,
    )
    .unwrap();
    let (images, order, shifts) = (
        gpu.upload(&c.images).unwrap(),
        gpu.upload(&c.order).unwrap(),
        gpu.upload(&c.shifts).unwrap(),
    );
    // The output is a view inside a larger poisoned buffer: at an odd element offset (one value
    // per store) and at an even one (pairs of values per store when `inputs` is even).
    for at in [1, 2] {
        let mut buf = gpu.upload(&vec![poison; n + 4]).unwrap();
        let mut view = buf.slice_mut(at..n + at);
        gather_shifted(gpu, &images, inputs, side, &order, &shifts, -0.5, &mut view).unwrap();
        let got: Vec<T> = gpu.download(&buf).unwrap();
        assert_all_written(what, &got[at..n + at], poison);
        let bits = |v: &[T]| bytemuck::cast_slice::<T, u8>(v).to_vec();
        assert!(
            bits(&got[at..n + at]) == bits(&want),
            "{what}, output at element {at}: GPU and CPU differ"
        );
        assert!(
            bits(&got[..at]) == bits(&vec![poison; at])
                && bits(&got[n + at..]) == bits(&vec![poison; 4 - at]),
            "{what}, output at element {at}: a value outside the view was written"
        );
    }
}

#[test]
fn gpu_matches_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu augment");
    let shapes = [
        (28, 11, sized(8000, 300), 2),
        (28, 5, 4096 + 3, 30),
        (5, 3, 1001, 6),
        (1, 2, 7, 1),
        (64, 4, 33, 3),
    ];
    for (side, count, samples, max_shift) in shapes {
        let inputs = side * side;
        let c = case(&mut rng, count, samples, inputs, max_shift);
        let what = format!("{samples} samples of {side}x{side}, shifts ±{max_shift}");
        check(
            &gpu,
            &c,
            inputs,
            side,
            f32::from_bits(0x7fa5_5a5a),
            &format!("{what} f32"),
        );
        check(
            &gpu,
            &c,
            inputs,
            side,
            f16::from_bits(0x7d5a),
            &format!("{what} f16"),
        );
    }
    // Inputs that are not a square image: a plain gather.
    let c = case(&mut rng, 6, 500, 13, 4);
    check(
        &gpu,
        &c,
        13,
        0,
        f32::from_bits(0x7fa5_5a5a),
        "13 inputs, no shift",
    );
    let c = case(&mut rng, 9, 301, 14, 4);
    check(
        &gpu,
        &c,
        14,
        0,
        f16::from_bits(0x7d5a),
        "14 inputs, no shift, f16",
    );
}

/// bf16 output, the same shapes as [`gpu_matches_the_cpu_bit_for_bit`], with values on bf16's
/// rounding ties (both ways), just off them, past its largest value (→ ±inf), NaN payloads and
/// subnormals sprinkled in.
#[test]
fn gpu_matches_the_cpu_bit_for_bit_bf16() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu augment bf16");
    let specials: Vec<f32> = [
        0x3F80_8000u32, // a tie, even below
        0x3F81_8000,    // a tie, odd below
        0x3F80_8001,
        0x3F80_7FFF,
        0x7F7F_FFFF, // → inf
        0xFF7F_8000, // → −inf (the tie above the largest, odd below)
        0x7F7F_7FFF,
        0x7FC0_1234, // NaN payloads, quiet and signalling
        0xFF80_ABCD,
        0x0000_8000, // subnormal ties
        0x0001_8000,
        0x8000_0000,
    ]
    .iter()
    .map(|&b| f32::from_bits(b))
    .collect();
    let poison = bf16::from_bits(0x7FA5); // quiet bit clear: never written
    let shapes = [
        (28, 11, sized(8000, 300), 2),
        (28, 5, 4096 + 3, 30),
        (5, 3, 1001, 6),
        (1, 2, 7, 1),
        (64, 4, 33, 3),
    ];
    for (side, count, samples, max_shift) in shapes {
        let inputs = side * side;
        let mut c = case(&mut rng, count, samples, inputs, max_shift);
        for (i, v) in c.images.iter_mut().enumerate().filter(|(i, _)| i % 13 == 7) {
            *v = specials[i % specials.len()];
        }
        let what = format!("{samples} samples of {side}x{side}, shifts ±{max_shift} bf16");
        check(&gpu, &c, inputs, side, poison, &what);
    }
    for inputs in [13, 14] {
        let mut c = case(&mut rng, 9, 301, inputs, 4);
        for (i, v) in c.images.iter_mut().enumerate().filter(|(i, _)| i % 5 == 1) {
            *v = specials[i % specials.len()];
        }
        check(
            &gpu,
            &c,
            inputs,
            0,
            poison,
            &format!("{inputs} inputs, no shift, bf16"),
        );
    }
}

#[test]
fn an_index_past_the_last_image_makes_its_row_nan() {
    let Some(gpu) = gpu() else { return };
    let images = gpu.upload(&[1.0f32; 2 * 4]).unwrap();
    let order = gpu.upload(&[1u32, 2, 0]).unwrap();
    let shifts = gpu.upload(&[0i32; 6]).unwrap();
    let mut out = gpu.upload(&[0.0f32; 12]).unwrap();
    gather_shifted(&gpu, &images, 4, 2, &order, &shifts, 0.0, &mut out).unwrap();
    let got = gpu.download(&out).unwrap();
    assert_eq!(&got[..4], &[1.0; 4]);
    assert!(got[4..8].iter().all(|v| v.is_nan()), "{got:?}");
    assert_eq!(&got[8..], &[1.0; 4]);
}

#[test]
fn bad_arguments_are_typed_errors_before_any_launch() {
    let Some(gpu) = gpu() else { return };
    let images = gpu.upload(&[1.0f32; 18]).unwrap();
    let order = gpu.upload(&[0u32, 1]).unwrap();
    let shifts = gpu.upload(&[0i32; 4]).unwrap();
    let mut out = gpu.upload(&[-7.5f32; 18]).unwrap();
    let err = |r: ampkit::Result<()>| r.unwrap_err();
    let e = err(gather_shifted(
        &gpu, &images, 9, 4, &order, &shifts, 0.0, &mut out,
    ));
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let short = shifts.slice(..3);
    let e = err(gather_shifted(
        &gpu, &images, 9, 3, &order, &short, 0.0, &mut out,
    ));
    assert!(
        matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains("shifts"),
        "{e}"
    );
    let mut small = out.slice_mut(..17);
    let e = err(gather_shifted(
        &gpu, &images, 9, 3, &order, &shifts, 0.0, &mut small,
    ));
    assert!(
        matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains("out"),
        "{e}"
    );
    assert!(gpu.download(&out).unwrap().iter().all(|&v| v == -7.5));
}
