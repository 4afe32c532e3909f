//! The CPU shifted gather (`cpu::augment`) against an independent formulation: each output pixel
//! found by walking the source image and placing it, not by looking back from the output. Square
//! and non-square images, shifts beyond the side, f32/f16/f64 outputs, special values copied bit
//! for bit, and every argument error before anything is written.

mod common;

use ampkit::cpu::augment::gather_shifted;
use ampkit::{f16, Error};
use common::rng;
use rand::rngs::StdRng;
use rand::Rng;

/// Forward placement: start from `background` everywhere, then move every source pixel to where
/// the shift puts it, if that is on the grid.
fn placed(
    images: &[f32],
    inputs: usize,
    side: usize,
    order: &[u32],
    shifts: &[i32],
    bg: f32,
) -> Vec<f32> {
    let mut out = vec![bg; order.len() * inputs];
    for (i, &s) in order.iter().enumerate() {
        let src = &images[s as usize * inputs..][..inputs];
        let dst = &mut out[i * inputs..][..inputs];
        if side == 0 {
            dst.copy_from_slice(src);
            continue;
        }
        for (p, &v) in src.iter().enumerate() {
            let r = (p / side) as i64 + i64::from(shifts[2 * i + 1]);
            let c = (p % side) as i64 + i64::from(shifts[2 * i]);
            if (0..side as i64).contains(&r) && (0..side as i64).contains(&c) {
                dst[r as usize * side + c as usize] = v;
            }
        }
    }
    out
}

struct Case {
    images: Vec<f32>,
    order: Vec<u32>,
    shifts: Vec<i32>,
}

fn case(rng: &mut StdRng, count: usize, samples: usize, inputs: usize, max_shift: i32) -> Case {
    Case {
        images: (0..count * inputs)
            .map(|_| rng.gen_range(-3.0f32..3.0))
            .collect(),
        order: (0..samples)
            .map(|_| rng.gen_range(0..count as u32))
            .collect(),
        shifts: (0..2 * samples)
            .map(|_| rng.gen_range(-max_shift..=max_shift))
            .collect(),
    }
}

#[test]
fn square_images_match_the_forward_placement() {
    let mut rng = rng("cpu augment square");
    for (side, samples, max_shift) in [
        (1, 3, 1),
        (2, 5, 2),
        (5, 17, 3),
        (28, 64, 2),
        (28, 300, 30),
        (7, 2000, 8),
    ] {
        let inputs = side * side;
        let c = case(&mut rng, 11, samples, inputs, max_shift);
        let bg = -0.4242;
        let want = placed(&c.images, inputs, side, &c.order, &c.shifts, bg);
        let mut got = vec![f32::NAN; want.len()];
        gather_shifted(&c.images, inputs, side, &c.order, &c.shifts, bg, &mut got).unwrap();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "side {side}"
        );
        // f16 and f64 outputs are the f32 values rounded (or widened) once.
        let mut h = vec![f16::NAN; want.len()];
        gather_shifted(&c.images, inputs, side, &c.order, &c.shifts, bg, &mut h).unwrap();
        assert!(h
            .iter()
            .zip(&want)
            .all(|(h, w)| h.to_bits() == f16::from_f32(*w).to_bits()));
        let mut d = vec![f64::NAN; want.len()];
        gather_shifted(&c.images, inputs, side, &c.order, &c.shifts, bg, &mut d).unwrap();
        assert!(d.iter().zip(&want).all(|(d, w)| *d == f64::from(*w)));
    }
}

#[test]
fn side_zero_gathers_without_shifting() {
    let mut rng = rng("cpu augment gather");
    let inputs = 13; // not a square
    let c = case(&mut rng, 7, 40, inputs, 5);
    let mut got = vec![f32::NAN; 40 * inputs];
    gather_shifted(&c.images, inputs, 0, &c.order, &c.shifts, 9.0, &mut got).unwrap();
    assert_eq!(got, placed(&c.images, inputs, 0, &c.order, &c.shifts, 9.0));
}

#[test]
fn special_values_are_copied_bit_for_bit() {
    let bits = [
        0x7fc0_1234u32,
        0xff80_0000,
        0x8000_0000,
        0x0000_0001,
        0x7f7f_ffff,
        0x477f_e000,
    ];
    let images: Vec<f32> = bits
        .iter()
        .chain(&bits[..3])
        .map(|&b| f32::from_bits(b))
        .collect();
    let mut out = vec![0.0f32; 9];
    gather_shifted(&images, 9, 3, &[0], &[0, 0], 1.0, &mut out).unwrap();
    assert!(out
        .iter()
        .zip(&images)
        .all(|(o, i)| o.to_bits() == i.to_bits()));
    // 65504 stays finite in f16; the next f32 values round to it or to inf as f16 does.
    let mut h = vec![f16::ZERO; 9];
    gather_shifted(&images, 9, 3, &[0], &[0, 0], 1.0, &mut h).unwrap();
    assert_eq!(h[5], f16::MAX);
    assert!(h[0].is_nan() && h[1] == f16::NEG_INFINITY && h[4] == f16::INFINITY);
}

#[test]
fn bad_arguments_are_typed_errors_and_write_nothing() {
    let images = vec![1.0f32; 2 * 9];
    let poison = -7.5f32;
    // (expected text, inputs, side, order, shifts, out length, a shape error?)
    type Bad = (&'static str, usize, usize, Vec<u32>, Vec<i32>, usize, bool);
    let cases: [Bad; 6] = [
        ("inputs is 0", 0, 0, vec![0], vec![0, 0], 0, false),
        ("side", 9, 4, vec![0], vec![0, 0], 9, false),
        ("not a multiple", 4, 2, vec![0], vec![0, 0], 4, true),
        ("shifts", 9, 3, vec![0, 1], vec![0, 0], 18, true),
        ("out", 9, 3, vec![0], vec![0, 0], 10, true),
        ("image 2", 9, 3, vec![1, 2], vec![0; 4], 18, false),
    ];
    for (what, inputs, side, order, shifts, out_len, shape) in cases {
        let mut out = vec![poison; out_len];
        let err =
            gather_shifted(&images, inputs, side, &order, &shifts, 0.0, &mut out).unwrap_err();
        match (&err, shape) {
            (Error::ShapeMismatch { .. }, true) | (Error::InvalidArgument { .. }, false) => {}
            _ => panic!("{what}: {err}"),
        }
        assert!(err.to_string().contains(what), "{what}: {err}");
        assert!(out.iter().all(|&v| v == poison), "{what}: wrote output");
    }
    // No samples is fine.
    gather_shifted::<f32>(&images, 9, 3, &[], &[], 0.0, &mut []).unwrap();
}
