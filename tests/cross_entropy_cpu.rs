//! CPU fused softmax-cross-entropy (`cpu::cross_entropy`): finite-difference gradient checks in
//! f64, f32 and f16 against independent f64 formulas, property tests over shapes, stability and
//! non-finite logits, thread-count independence, argument checks, and bf16 logits and gradients.
//! (Softmax's own tests are tests/softmax_cpu.rs.)

mod common;

use ampkit::check::{numerical_gradient, unwritten, ToF64, Tolerance};
use ampkit::cpu::cross_entropy::softmax_cross_entropy;
use ampkit::cpu::Element;
use ampkit::{f16, Error};
use common::{assert_all_written, assert_close, assert_invalid, assert_shape_error, rng};
use half::bf16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn poison() -> f32 {
    f32::from_bits(0xDEAD_BEEF)
}

/// `rows·cols` logits: each row around its own offset in ±`offset`, spread ±`spread`.
fn logits(rng: &mut StdRng, rows: usize, cols: usize, offset: f32, spread: f32) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let o = rng.gen_range(-offset..=offset);
        x.extend((0..cols).map(|_| o + rng.gen_range(-spread..=spread)));
    }
    x
}

fn labels(rng: &mut StdRng, rows: usize, classes: usize) -> Vec<u32> {
    (0..rows)
        .map(|_| rng.gen_range(0..classes as u32))
        .collect()
}

fn wide<T: ToF64>(v: &[T]) -> Vec<f64> {
    v.iter().map(|v| v.to_f64()).collect()
}

/// Softmax written without the max shift, `exp(xⱼ) / Σₖ exp(xₖ)`: fine in f64 for |x| ≲ 700,
/// and a different evaluation from the library's.
fn naive_softmax(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let total: f64 = row.iter().map(|v| v.exp()).sum();
            row.iter().map(move |v| v.exp() / total)
        })
        .collect()
}

/// Cross-entropy as `−ln(softmax(x)[label])` and its gradient `(softmax − onehot)·scale/rows`,
/// both from [`naive_softmax`].
fn naive_cross_entropy(x: &[f64], labels: &[u32], classes: usize, scale: f64) -> (f64, Vec<f64>) {
    let rows = labels.len();
    let p = naive_softmax(x, classes);
    let loss = labels
        .iter()
        .enumerate()
        .map(|(r, &l)| -p[r * classes + l as usize].ln())
        .sum::<f64>()
        / rows as f64;
    let grad = (0..p.len())
        .map(|i| {
            let onehot = f64::from(labels[i / classes] as usize == i % classes);
            (p[i] - onehot) * scale / rows as f64
        })
        .collect();
    (loss, grad)
}

/// Whether `got`, the loss rounded once to its type (f32 for f16/f32 gradients, f64 for f64 ones),
/// is `want` to within that rounding (half an f32 ulp, none for f64) plus 1e-12 relative.
fn loss_close<A: Into<f64> + Copy>(got: A, want: f64) -> bool {
    let rounding = if std::mem::size_of::<A>() == 4 {
        want.abs() * f64::from(f32::EPSILON) / 2.0
    } else {
        0.0
    };
    (got.into() - want).abs() <= rounding + 1e-12 * want.abs() + 1e-14
}

fn loss_f64(x: &[f64], labels: &[u32], classes: usize) -> f64 {
    let mut scratch = vec![0.0f64; x.len()];
    softmax_cross_entropy(x, labels, labels.len(), classes, 1.0, &mut scratch).unwrap()
}

/// Central differences, h = 1e-5 scaled by max(1, |xᵢ|) ≤ 6, in f64. The functions are smooth
/// with derivatives of order 1, so truncation (~step²·|f'''|) and rounding noise (~ε·|L|/h,
/// absolute) stay ≲ 1e-10; entries of order 1e-3 to 1 then agree to ~1e-7 relative or better.
/// The check is elementwise, `|Δ| ≤ 1e-9 + 1e-6·|ref|`. The relative L2 error is reported but not
/// bounded: with 1–2 classes the whole gradient can be ~1e-6 (a near-one-hot row), and the
/// absolute noise then dominates it. Observed over 30 runs: worst element 1.6e-10 absolute, rel
/// L2 ≤ 2e-8.
const FD_TOL: Tolerance = Tolerance::new(1e-9, 1e-6).with_rel_l2(f64::INFINITY);

fn cross_entropy_gradient_check(rng: &mut StdRng, rows: usize, classes: usize) {
    let x = wide(&logits(rng, rows, classes, 3.0, 3.0));
    let labels = labels(rng, rows, classes);
    let mut d = vec![0.0f64; x.len()];
    let loss = softmax_cross_entropy(&x, &labels, rows, classes, 1.0, &mut d).unwrap();
    let num = numerical_gradient(|x| loss_f64(x, &labels, classes), &x, 1e-5);
    let what = format!("cross-entropy {rows}x{classes}");
    assert_close(
        &format!("{what} dlogits vs finite differences"),
        &d,
        &num,
        FD_TOL,
    );
    let (naive_loss, _) = naive_cross_entropy(&x, &labels, classes, 1.0);
    assert!(
        (loss - naive_loss).abs() <= 1e-12 * naive_loss.abs() + 1e-14,
        "{what}: loss {loss} vs {naive_loss}"
    );
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let mut rng = rng("cross-entropy gradients_match_finite_differences_in_f64");
    for (rows, cols) in [(1, 1), (1, 2), (3, 17), (4, 64), (2, 784)] {
        cross_entropy_gradient_check(&mut rng, rows, cols);
    }
}

/// f32's unit roundoff 2⁻²⁴ ≈ 6e-8: the largest relative error of one rounding to nearest.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// The loss is computed in f64 from exactly widened logits, so it matches the naive f64 formula
/// to ~1e-15 (limit 1e-12 relative plus 1e-14 absolute, the naive `ln p` near p = 1). Each
/// gradient is rounded once from f64, so in f32 its error is at most half an ulp: relative
/// 2^-24 ≈ 5.96e-8, or 2^-150 absolute for subnormals. The limit is that bound plus the
/// reference's own ~1e-13: any f32 arithmetic on the way would break it.
const ROUNDED_ONCE_F32: Tolerance = Tolerance::new(1e-45, 5.97e-8);
/// In f16, half an ulp is 2^-11 relative (2^-25 absolute for subnormals), and `Element::from_f64`
/// rounds once (not twice through f32), so the limit is 2^-11 plus the reference's error.
/// No bound on the relative L2 error: unscaled f16 gradients are mostly subnormal (the reason loss
/// scaling exists), and their absolute rounding, within bound, dominates it.
const ROUNDED_F16: Tolerance = Tolerance::new(2.99e-8, 4.8829e-4).with_rel_l2(f64::INFINITY);

fn cross_entropy_against_f64<L, D>(
    x: &[L],
    labels: &[u32],
    classes: usize,
    scale: f32,
    fill: D,
    tol: Tolerance,
    what: &str,
) where
    L: Element + ToF64,
    D: Element + ToF64 + bytemuck::Pod,
{
    let rows = labels.len();
    let mut d = vec![fill; x.len()];
    let loss = softmax_cross_entropy(x, labels, rows, classes, scale, &mut d).unwrap();
    assert_all_written(&format!("{what} dlogits"), &d, fill);
    let (want_loss, want_grad) = naive_cross_entropy(&wide(x), labels, classes, f64::from(scale));
    let loss_err = (loss.into() - want_loss).abs() / want_loss.abs().max(1e-300);
    eprintln!("{what} loss: {loss} vs {want_loss}, rel error {loss_err:.2e}");
    assert!(
        loss_close(loss, want_loss),
        "{what}: loss {loss} vs {want_loss}"
    );
    assert_close(&format!("{what} dlogits"), &d, &want_grad, tol);
}

#[test]
fn f32_agrees_with_f64_on_the_parallel_path() {
    let mut rng = rng("cross-entropy f32_agrees_with_f64_on_the_parallel_path");
    // 64·1000 elements: past the parallel threshold.
    let (x, l) = (
        logits(&mut rng, 64, 1000, 20.0, 6.0),
        labels(&mut rng, 64, 1000),
    );
    cross_entropy_against_f64(
        &x,
        &l,
        1000,
        1.0,
        poison(),
        ROUNDED_ONCE_F32,
        "64x1000 f32→f32",
    );
    let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let p16 = f16::from_bits(0x7E5A); // a NaN payload the op never produces
    cross_entropy_against_f64(&x16, &l, 1000, 1024.0, p16, ROUNDED_F16, "64x1000 f16→f16");
}

/// The cross-entropy on rows of 4096 and 65536 columns with a nonzero offset runs in f64 from
/// exactly widened logits whatever their type: the loss from f32 logits has the same bits as
/// from f64 logits, and each f32 gradient is the f64 one rounded once.
#[test]
fn f32_long_rows_are_the_f64_results_rounded_once() {
    let mut rng = rng("f32_long_rows_are_the_f64_results_rounded_once");
    let mut failed = Vec::new();
    for (rows, cols) in [(8, 4096), (4, 65536)] {
        let x = logits(&mut rng, rows, cols, 3.0, 6.0);
        let x64 = wide(&x);
        let labels = labels(&mut rng, rows, cols);
        let (mut d32, mut d64) = (vec![poison(); x.len()], vec![0.0f64; x.len()]);
        let loss32 = softmax_cross_entropy(&x, &labels, rows, cols, 1.0, &mut d32).unwrap();
        let loss64 = softmax_cross_entropy(&x64, &labels, rows, cols, 1.0, &mut d64).unwrap();
        let (naive_loss, _) = naive_cross_entropy(&x64, &labels, cols, 1.0);
        let loss_err = (f64::from(loss32) - naive_loss).abs() / naive_loss;
        let d_err = d32
            .iter()
            .zip(&d64)
            .map(|(&g, &w)| (f64::from(g) - w).abs() / w.abs() / U)
            .fold(0.0, f64::max);

        eprintln!(
            "{rows}x{cols} f32 vs f64: cross-entropy loss {loss_err:.1e} from the naive f64 \
             formula, dlogits {d_err:.2} u"
        );
        let rounded_once = d32
            .iter()
            .zip(&d64)
            .all(|(&g, &w)| g.to_bits() == (w as f32).to_bits());
        for (bad, what) in [
            (
                loss32.to_bits() != (loss64 as f32).to_bits(),
                format!("loss {loss32} vs {loss64} from f64 logits, rounded once"),
            ),
            (
                !loss_close(loss32, naive_loss) || !loss_close(loss64, naive_loss),
                format!("loss {loss32} (f32), {loss64} (f64) vs naive {naive_loss}"),
            ),
            (
                !rounded_once,
                "dlogits not the f64 gradients rounded once".into(),
            ),
        ] {
            if bad {
                failed.push(format!("{rows}x{cols} {what}"));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn f32_and_f16_agree_with_f64_on_any_shape(
        rows in prop::sample::select(vec![1usize, 2, 3, 7, 10, 13, 37]),
        cols in prop::sample::select(vec![1usize, 2, 3, 5, 7, 10, 31, 127, 784]),
        scale in prop::sample::select(vec![1.0f32, 0.5, 3.0, 65536.0, 1e-3]),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let what = format!("{rows}x{cols} seed {seed}");
        let (x, l) = (logits(&mut rng, rows, cols, 20.0, 6.0), labels(&mut rng, rows, cols));
        cross_entropy_against_f64(&x, &l, cols, scale, poison(), ROUNDED_ONCE_F32, &what);
        let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let p16 = f16::from_bits(0x7E5A);
        // f16 gradients overflow past 65504: keep the scaled gradients in range here.
        let s16 = scale.min(1024.0);
        cross_entropy_against_f64(&x16, &l, cols, s16, p16, ROUNDED_F16, &what);
    }

    #[test]
    fn gradients_match_finite_differences_on_any_shape(
        rows in prop::sample::select(vec![1usize, 2, 3, 5]),
        cols in prop::sample::select(vec![1usize, 2, 3, 7, 10, 31, 127]),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        cross_entropy_gradient_check(&mut rng, rows, cols);
    }
}

/// grad_scale multiplies the gradient only: the loss is bit-identical, and a power-of-two scale
/// gives exactly scaled gradients in f64.
#[test]
fn grad_scale_scales_the_gradient_and_never_the_loss() {
    let mut rng = rng("grad_scale_scales_the_gradient_and_never_the_loss");
    let x = wide(&logits(&mut rng, 5, 11, 5.0, 3.0));
    let l = labels(&mut rng, 5, 11);
    let (mut d1, mut d2) = (vec![0.0f64; 55], vec![0.0f64; 55]);
    let loss1 = softmax_cross_entropy(&x, &l, 5, 11, 1.0, &mut d1).unwrap();
    let loss2 = softmax_cross_entropy(&x, &l, 5, 11, 65536.0, &mut d2).unwrap();
    assert_eq!(loss1.to_bits(), loss2.to_bits());
    let scaled: Vec<f64> = d1.iter().map(|d| d * 65536.0).collect();
    assert_eq!(d2, scaled);
}

/// In f16 a large loss scale overflows the gradient to ±inf (rounded once, like any other value):
/// exactly what the scaler's inf check must see. A NaN scale gives NaN gradients; the loss stays
/// finite either way.
#[test]
fn f16_gradients_overflow_to_inf_under_a_large_scale() {
    let x = [f16::ZERO, f16::ZERO];
    let mut d = [f16::ZERO; 2];
    // (0.5 − 1)·2^17 = −65536: past f16's largest finite 65504 (and its rounding midpoint 65520).
    let loss = softmax_cross_entropy(&x, &[0], 1, 2, 131072.0, &mut d).unwrap();
    assert_eq!(loss, std::f64::consts::LN_2 as f32);
    assert_eq!(d, [f16::NEG_INFINITY, f16::INFINITY]);
    // 65504 is still finite: 0.5·(2·65504) rounds to itself.
    softmax_cross_entropy(&x, &[0], 1, 2, 131008.0, &mut d).unwrap();
    assert_eq!(d, [f16::from_f32(-65504.0), f16::from_f32(65504.0)]);
    let loss = softmax_cross_entropy(&x, &[0], 1, 2, f32::NAN, &mut d).unwrap();
    assert!(
        loss.is_finite() && d.iter().all(|d| d.is_nan()),
        "{loss} {d:?}"
    );
}

/// Logits at f16's largest finite value: the max shift keeps exp in range (e^65504 overflows even
/// f64). Row: [65504, 65504, −65504, 0, 65472], so s = 2 + e^-32 and p = [1, 1, 0, 0, e^-32]/s.
#[test]
fn f16_logits_near_65504_are_stable() {
    let x: Vec<f16> = [65504.0f32, 65504.0, -65504.0, 0.0, 65472.0]
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    let s = 2.0 + (-32.0f64).exp();
    let p = [1.0 / s, 1.0 / s, 0.0, 0.0, (-32.0f64).exp() / s];
    for (label, want_loss) in [(0u32, s.ln()), (2, 131008.0 + s.ln()), (4, 32.0 + s.ln())] {
        let mut d = [poison(); 5];
        let loss = softmax_cross_entropy(&x, &[label], 1, 5, 1.0, &mut d).unwrap();
        assert!(
            loss_close(loss, want_loss),
            "label {label}: {loss} vs {want_loss}"
        );
        let mut want = p.to_vec();
        want[label as usize] -= 1.0;
        assert_close(
            &format!("f16 logits, label {label}"),
            &d,
            &want,
            ROUNDED_ONCE_F32,
        );
        let mut d16 = [f16::ZERO; 5];
        softmax_cross_entropy(&x, &[label], 1, 5, 1.0, &mut d16).unwrap();
        assert_close(
            &format!("f16 grads, label {label}"),
            &d16,
            &want,
            ROUNDED_F16,
        );
    }
}

/// Logits of ±1e4 in f32 (e^1e4 overflows f32 and f64) and of ±1e-30, and signed zeros.
#[test]
fn huge_tiny_and_signed_zero_logits() {
    let mut d = [poison(); 3];
    let loss = softmax_cross_entropy(&[1e4f32, 0.0, -1e4], &[1], 1, 3, 1.0, &mut d).unwrap();
    assert_eq!(loss, 1e4); // + ln(1 + e^-1e4 + e^-2e4), which rounds away
    assert_eq!(d, [1.0, -1.0, 0.0]);
    let loss = softmax_cross_entropy(&[1e4f32, 0.0, -1e4], &[0], 1, 3, 1.0, &mut d).unwrap();
    assert_eq!((loss, d), (0.0, [0.0, 0.0, 0.0]));

    let loss = softmax_cross_entropy(&[1e-30f32, -1e-30, 0.0], &[2], 1, 3, 1.0, &mut d).unwrap();
    assert!(loss_close(loss, 3f64.ln()), "{loss}");
    assert_close(
        "tiny logits",
        &d,
        &[1.0 / 3.0, 1.0 / 3.0, -2.0 / 3.0],
        ROUNDED_ONCE_F32,
    );

    let mut d = [poison(); 8];
    let loss = softmax_cross_entropy(&[-0.0f32; 8], &[2, 3], 2, 4, 1.0, &mut d).unwrap();
    assert_eq!(loss, 4f64.ln() as f32);
    assert_eq!(
        d,
        [0.125, 0.125, -0.375, 0.125, 0.125, 0.125, 0.125, -0.375]
    );
}

/// A NaN or +inf logit makes its row's loss and gradients NaN, and the mean loss NaN; the other
/// rows' gradients are unaffected. A −inf logit at the label gives an infinite loss.
#[test]
fn cross_entropy_non_finite_logits_propagate() {
    let mut rng = rng("cross_entropy_non_finite_logits_propagate");
    for bad in [f32::NAN, f32::INFINITY] {
        let mut x = logits(&mut rng, 3, 6, 2.0, 2.0);
        let l = labels(&mut rng, 3, 6);
        x[6 + 4] = bad;
        let mut d = vec![poison(); 18];
        let loss = softmax_cross_entropy(&x, &l, 3, 6, 1.0, &mut d).unwrap();
        assert!(loss.is_nan(), "{bad}: loss {loss}");
        assert!(d[6..12].iter().all(|v| v.is_nan()), "{bad}: {d:?}");
        let (_, mut want) = naive_cross_entropy(&wide(&x), &l, 6, 1.0);
        want[6..12].fill(f64::NAN);
        assert_close(
            &format!("rows around a {bad} row"),
            &d,
            &want,
            ROUNDED_ONCE_F32,
        );
    }
    let mut d = [poison(); 3];
    let x = [f32::NEG_INFINITY, 0.0, 1.0];
    assert_eq!(
        softmax_cross_entropy(&x, &[0], 1, 3, 1.0, &mut d).unwrap(),
        f32::INFINITY
    );
    assert!(d.iter().all(|v| v.is_finite()) && d[0] == -1.0, "{d:?}");
    let x = [f32::NEG_INFINITY; 3];
    assert!(softmax_cross_entropy(&x, &[1], 1, 3, 1.0, &mut d)
        .unwrap()
        .is_nan());
}

/// The per-row losses are summed in row order: the same bits on 1 or 8 threads.
#[test]
fn loss_is_bitwise_reproducible_across_thread_counts() {
    let mut rng = rng("loss_is_bitwise_reproducible_across_thread_counts");
    let (x, l) = (
        logits(&mut rng, 500, 100, 5.0, 5.0),
        labels(&mut rng, 500, 100),
    );
    let run = |threads: usize| {
        let mut d = vec![0f32; x.len()];
        common::on_threads(threads, || {
            softmax_cross_entropy(&x, &l, 500, 100, 1.0, &mut d)
                .unwrap()
                .to_bits()
        })
    };
    assert_eq!(run(1), run(8));
}

#[test]
fn out_of_range_label_is_rejected_before_anything_is_written() {
    let mut d = vec![poison(); 15];
    let e = softmax_cross_entropy(&[0.5f32; 15], &[0, 4, 5], 3, 5, 1.0, &mut d).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("row 2") && msg.contains("label 5") && msg.contains("classes = 5"),
        "{msg}"
    );
    assert_eq!(unwritten(&d, poison()).len(), 15, "dlogits was written");
    let e = softmax_cross_entropy(&[0.5f32; 3], &[u32::MAX], 1, 3, 1.0, &mut d[..3]).unwrap_err();
    assert!(
        e.to_string().contains(&format!("label {}", u32::MAX)),
        "{e}"
    );
}

#[test]
fn wrong_lengths_and_sizes_are_rejected() {
    let (ok, short) = ([0.5f32; 6], [0.5f32; 5]);
    let mut out = vec![poison(); 7];
    let ce = |x: &[f32], l: &[u32], rows, classes, d: &mut [f32]| {
        softmax_cross_entropy(x, l, rows, classes, 1.0, d).map(|_| ())
    };
    assert_shape_error(ce(&short, &[0, 1], 2, 3, &mut out[..6]), "logits");
    assert_shape_error(ce(&ok, &[0, 1], 2, 3, &mut out[..7]), "dlogits");
    assert_shape_error(ce(&ok, &[0, 1, 2], 2, 3, &mut out[..6]), "labels");
    assert_invalid(ce(&[], &[], 0, 3, &mut []), "rows is 0");
    assert_invalid(ce(&[], &[0], 1, 0, &mut []), "classes is 0");
    assert_eq!(unwritten(&out, poison()).len(), 7, "an output was written");
}

/// bf16 logits are widened exactly and bf16 gradients are the f64 gradients rounded once
/// (`Element::from_f64`, nearest even), with the loss rounded to f32 as for f16 and f32; large
/// enough for the parallel path.
#[test]
fn bf16_logits_and_gradients_round_once() {
    let mut rng = rng("cpu cross-entropy bf16");
    let (rows, classes) = (70, 1000);
    let x: Vec<bf16> = logits(&mut rng, rows, classes, 20.0, 6.0)
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let l = labels(&mut rng, rows, classes);
    let mut wide_out = vec![0.0f64; x.len()];
    let want = softmax_cross_entropy(&x, &l, rows, classes, 65536.0, &mut wide_out).unwrap();
    let mut out = vec![bf16::from_bits(0x7F81); x.len()];
    let loss = softmax_cross_entropy(&x, &l, rows, classes, 65536.0, &mut out).unwrap();
    assert_eq!(loss.to_bits(), (want as f32).to_bits());
    let got: Vec<u16> = out.iter().map(|h| h.to_bits()).collect();
    let rounded: Vec<u16> = (wide_out.iter())
        .map(|&g| <bf16 as Element>::from_f64(g).to_bits())
        .collect();
    assert_eq!(got, rounded);
    // The same loss from the f64 widening of the bf16 logits.
    let mut again = vec![0.0f64; x.len()];
    let same = softmax_cross_entropy(&wide(&x), &l, rows, classes, 65536.0, &mut again).unwrap();
    assert_eq!((same.to_bits(), again), (want.to_bits(), wide_out));
}
