//! ReLU forward/backward: special values and a finite-difference check of the backward.

mod common;

use ampkit::check::{numerical_gradient, Tolerance};
use ampkit::cpu::relu;
use common::{assert_close, rng};
use half::f16;
use rand::Rng;

#[test]
fn backward_matches_finite_differences() {
    let mut rng = rng("relu gradcheck");
    // Inputs stay further than h from the kink at 0, where the derivative does not exist; off
    // the kink ReLU is linear, so a large h costs no truncation error and keeps rounding small.
    let x: Vec<f64> = (0..257)
        .map(|_| {
            let v: f64 = rng.gen_range(0.01..3.0);
            if rng.gen() {
                v
            } else {
                -v
            }
        })
        .collect();
    let g: Vec<f64> = (0..x.len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let loss = |x: &[f64]| {
        let mut y = vec![0.0; x.len()];
        relu::forward(x, &mut y).unwrap();
        y.iter().zip(&g).map(|(y, g)| y * g).sum::<f64>()
    };
    let mut y = vec![0.0; x.len()];
    relu::forward(&x, &mut y).unwrap();
    let mut dx = vec![f64::NAN; x.len()];
    relu::backward(&g, &y, &mut dx).unwrap();
    assert_close(
        "relu dx",
        &dx,
        &numerical_gradient(loss, &x, 1e-3),
        Tolerance::new(1e-9, 1e-9),
    );
}

#[test]
fn special_values_in_f16() {
    let mut rng = rng("relu f16");
    let x: Vec<f16> = (0..10_000).map(|_| f16::from_bits(rng.gen())).collect();
    let mut y = vec![f16::ZERO; x.len()];
    relu::forward(&x, &mut y).unwrap();
    for (a, b) in x.iter().zip(&y) {
        let want = if a.is_nan() || a.to_f32() > 0.0 {
            a.to_bits()
        } else {
            0
        };
        assert_eq!(b.to_bits(), want, "relu({a:?})");
    }
}
