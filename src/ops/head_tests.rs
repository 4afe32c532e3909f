//! The fused head on the GPU against the CPU reference ([`crate::cpu::head`]), stage by stage: the
//! logits against the reference forward, then each later stage against the reference applied to
//! the GPU's own output of the stage before (dlogits and loss from the GPU's logits, the hidden
//! and weight gradients from the GPU's dlogits, the bias gradients from the GPU's gradients), so
//! that each comparison isolates one stage. Odd row counts (partial 16-row tiles, partial blocks, more tiles
//! than warps), widths 32-1024, 1-16 classes; hidden values with +0, −0, negatives, subnormals,
//! NaN and +inf; logits that overflow f16; an out-of-range label; poisoned outputs; bit-identical
//! reruns; typed errors. In-crate because the op is the training step's, not public API.
//!
//! Limits: logits within two f16 ulps plus 2^-20 of the sum of |terms| (the f32 sums of the GEMM and
//! of the kernel add in different orders); dlogits within one f16 ulp plus 2e-5·|scale/rows| (the
//! loss kernels' f32 arithmetic, see tests/cross_entropy_gpu.rs); the hidden gradient within one
//! f16 ulp plus 2^-24 of the sum of |terms|; the bias gradients and the weight gradient (its
//! slices added in slice order, as the unscale adds them) within rows·2^-24 of the sum of |terms|
//! (f32 sums); the loss 1e-5 relative.

use super::{fits, head_step, weight_slices, HeadInputs, HeadOutputs};
use crate::cpu::cross_entropy::softmax_cross_entropy;
use crate::cpu::gemm::{gemm, Epilogue};
use crate::cuda::{test_gpu, Gpu};
use crate::error::Error;
use crate::shape::{GemmShape, Layout};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const POISON16: u16 = 0x7D5A; // a signalling NaN no kernel writes
const POISON32: u32 = 0x7FA5_5A5A;

struct Case {
    hidden: Vec<f16>,
    weight: Vec<f16>,
    bias: Vec<f32>,
    labels: Vec<u32>,
    scale: f32,
    rows: usize,
    width: usize,
    classes: usize,
}

/// ReLU-output-like activations with every kind of special value in a few rows.
fn case(seed: u64, rows: usize, width: usize, classes: usize, weight_range: f32) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let specials = [
        0x0000u16, 0x8000, 0x0001, 0x03FF, 0x7C00, 0x7E00, 0xBC00, 0x7BFF, 0xFBFF,
    ];
    let hidden = (0..rows * width)
        .map(|i| {
            let row = i / width;
            if row % 97 == 5 && rng.gen_bool(0.05) {
                f16::from_bits(specials[rng.gen_range(0..specials.len())])
            } else if rng.gen_bool(0.4) {
                f16::ZERO
            } else if rng.gen_bool(0.05) {
                f16::from_f32(-rng.gen_range(0.0f32..2.0))
            } else {
                f16::from_f32(rng.gen_range(0.0f32..3.0))
            }
        })
        .collect();
    let weight = (0..classes * width)
        .map(|_| f16::from_f32(rng.gen_range(-weight_range..weight_range)))
        .collect();
    let bias = (0..classes).map(|_| rng.gen_range(-0.5f32..0.5)).collect();
    let labels = (0..rows)
        .map(|_| rng.gen_range(0..classes as u32))
        .collect();
    Case {
        hidden,
        weight,
        bias,
        labels,
        scale: 65536.0,
        rows,
        width,
        classes,
    }
}

struct Out {
    logits: Vec<f16>,
    dlogits: Vec<f16>,
    dhidden: Vec<f16>,
    dbias_hidden: Vec<f32>,
    dbias: Vec<f32>,
    /// The weight gradient's slices added in slice order in f32, as the unscale adds them (`None`
    /// for batches whose weight gradient the head leaves to the GEMM).
    dweight: Option<Vec<f32>>,
    loss: f32,
}

fn run(gpu: &Gpu, c: &Case) -> Out {
    let (r, w, k) = (c.rows, c.width, c.classes);
    let h = gpu.upload(&c.hidden).unwrap();
    let wt = gpu.upload(&c.weight).unwrap();
    let b = gpu.upload(&c.bias).unwrap();
    let l = gpu.upload(&c.labels).unwrap();
    let s = gpu.upload(&[c.scale]).unwrap();
    let p16 = f16::from_bits(POISON16);
    let p32 = f32::from_bits(POISON32);
    let mut logits = gpu.upload(&vec![p16; r * k]).unwrap();
    let mut dlogits = gpu.upload(&vec![p16; r * k]).unwrap();
    let mut dhidden = gpu.upload(&vec![p16; r * w]).unwrap();
    let mut dbh = gpu.upload(&vec![p32; w]).unwrap();
    let mut db = gpu.upload(&vec![p32; k]).unwrap();
    let slices = weight_slices(gpu, r);
    let mut dw = gpu.upload(&vec![p32; slices.unwrap_or(1) * k * w]).unwrap();
    let mut loss = gpu.upload(&[p32]).unwrap();
    let inputs = HeadInputs {
        hidden: h.slice(..),
        weight: wt.slice(..),
        bias: b.slice(..),
        labels: l.slice(..),
        grad_scale: &s,
    };
    let got_slices = head_step(
        gpu,
        r,
        w,
        k,
        &inputs,
        &mut HeadOutputs {
            logits: logits.slice_mut(..),
            dlogits: dlogits.slice_mut(..),
            dhidden: dhidden.slice_mut(..),
            dbias_hidden: dbh.slice_mut(..),
            dbias: db.slice_mut(..),
            dweight: slices.map(|_| dw.slice_mut(..)),
            loss: &mut loss,
        },
    )
    .unwrap();
    assert_eq!(got_slices, slices.unwrap_or(0));
    let dw_slices = gpu.download(&dw).unwrap();
    let dweight = if slices.is_some() {
        if let Some(i) = dw_slices.iter().position(|x| x.to_bits() == POISON32) {
            panic!("{r}x{w}x{k}: dweight slice element {i} not written");
        }
        let mut sum = dw_slices[..k * w].to_vec();
        for slice in dw_slices.chunks(k * w).skip(1) {
            for (d, v) in sum.iter_mut().zip(slice) {
                *d += v;
            }
        }
        Some(sum)
    } else {
        // Left to the GEMM: the buffer keeps its poison.
        assert!(
            dw_slices.iter().all(|x| x.to_bits() == POISON32),
            "{r}x{w}x{k}: dweight written though the head leaves it to the GEMM"
        );
        None
    };
    Out {
        logits: gpu.download(&logits).unwrap(),
        dlogits: gpu.download(&dlogits).unwrap(),
        dhidden: gpu.download(&dhidden).unwrap(),
        dbias_hidden: gpu.download(&dbh).unwrap(),
        dbias: gpu.download(&db).unwrap(),
        dweight,
        loss: gpu.download(&loss).unwrap()[0],
    }
}

fn ulp16(v: f64) -> f64 {
    let a = v.abs().min(65504.0);
    if a < 6.103515625e-5 {
        2f64.powi(-24)
    } else {
        2f64.powi(a.log2().floor() as i32 - 10)
    }
}

/// got ≈ want within `allowed`, NaN matching NaN and infinities matching exactly.
fn close(what: &str, i: usize, got: f64, want: f64, allowed: f64) {
    let ok = if want.is_nan() || got.is_nan() {
        want.is_nan() && got.is_nan()
    } else if want.is_infinite() || got.is_infinite() {
        got == want || (got - want).abs() <= allowed
    } else {
        (got - want).abs() <= allowed
    };
    assert!(
        ok,
        "{what}[{i}]: got {got}, want {want} (allowed {allowed})"
    );
}

#[allow(clippy::needless_range_loop)] // indices name rows and columns of several arrays
fn check(gpu: &Gpu, c: &Case, what: &str) {
    let (r, w, k) = (c.rows, c.width, c.classes);
    let out = run(gpu, c);
    assert_ne!(out.loss.to_bits(), POISON32, "{what}: loss not written");
    for (name, v) in [
        ("logits", &out.logits),
        ("dlogits", &out.dlogits),
        ("dhidden", &out.dhidden),
    ] {
        if let Some(i) = v.iter().position(|x| x.to_bits() == POISON16) {
            panic!("{what}: {name}[{i}] not written");
        }
    }
    for (name, v) in [("dbias_hidden", &out.dbias_hidden), ("dbias", &out.dbias)] {
        if let Some(i) = v.iter().position(|x| x.to_bits() == POISON32) {
            panic!("{what}: {name}[{i}] not written");
        }
    }
    // 1. Logits against the reference forward (the composed reference's first stage; a label
    // ≥ classes is its error, so those cases take the forward alone).
    let want = if c.labels.iter().all(|&l| (l as usize) < k) {
        let reference =
            crate::cpu::head::head_step(&c.hidden, &c.weight, &c.bias, &c.labels, c.scale, r, w, k)
                .unwrap();
        whole_chain(c, &out, &reference, what);
        reference.logits
    } else {
        let mut want = vec![f16::ZERO; r * k];
        let fwd = GemmShape::new(Layout::Forward, r, k, w);
        gemm(
            fwd,
            &c.hidden,
            &c.weight,
            &Epilogue::bias(&c.bias, false),
            &mut want,
        )
        .unwrap();
        want
    };
    for i in 0..r * k {
        let (row, cls) = (i / k, i % k);
        let terms: f64 = (0..w)
            .map(|j| (c.hidden[row * w + j].to_f64() * c.weight[cls * w + j].to_f64()).abs())
            .sum();
        let wv = want[i].to_f64();
        let allowed = 2.0 * ulp16(wv) + terms * 2f64.powi(-20);
        close(
            &format!("{what} logits"),
            i,
            out.logits[i].to_f64(),
            wv,
            allowed,
        );
    }
    // 2. dlogits and the loss from the GPU's logits.
    let mut dl = vec![0f64; r * k];
    let loss = softmax_cross_entropy(&out.logits, &c.labels, r, k, c.scale, &mut dl).unwrap();
    let unit = f64::from(c.scale) / r as f64;
    for i in 0..r * k {
        let allowed = ulp16(dl[i]) + 2e-5 * unit;
        close(
            &format!("{what} dlogits"),
            i,
            out.dlogits[i].to_f64(),
            dl[i],
            allowed,
        );
    }
    close(
        &format!("{what} loss"),
        0,
        f64::from(out.loss),
        loss,
        1e-5 * loss.abs().max(1e-30),
    );
    // 3. The hidden gradient from the GPU's dlogits: the f16 dgrad, then the ReLU mask.
    let mut grad_in = vec![f16::ZERO; r * w];
    let dgrad = GemmShape::new(Layout::Dgrad, r, w, k);
    gemm(
        dgrad,
        &out.dlogits,
        &c.weight,
        &Epilogue::plain(),
        &mut grad_in,
    )
    .unwrap();
    for i in 0..r * w {
        let (row, col) = (i / w, i % w);
        let y = c.hidden[i];
        let positive = y.to_bits() != 0 && y.to_bits() <= 0x7C00;
        let got = out.dhidden[i];
        if !positive {
            assert_eq!(
                got.to_bits(),
                0,
                "{what} dhidden[{i}]: masked by {y} but {got}"
            );
            continue;
        }
        let terms: f64 = (0..k)
            .map(|cls| {
                (out.dlogits[row * k + cls].to_f64() * c.weight[cls * w + col].to_f64()).abs()
            })
            .sum();
        let wv = grad_in[i].to_f64();
        let allowed = ulp16(wv) + terms * 2f64.powi(-24);
        close(&format!("{what} dhidden"), i, got.to_f64(), wv, allowed);
    }
    // 4. The bias gradients: f64 column sums of the GPU's gradients.
    let sums = |g: &[f16], cols: usize, j: usize| -> (f64, f64) {
        (0..r).fold((0.0, 0.0), |(s, a), row| {
            let v = g[row * cols + j].to_f64();
            (s + v, a + v.abs())
        })
    };
    for j in 0..k {
        let (s, a) = sums(&out.dlogits, k, j);
        let allowed = a * r as f64 * 2f64.powi(-24);
        close(
            &format!("{what} dbias"),
            j,
            f64::from(out.dbias[j]),
            s,
            allowed,
        );
    }
    for j in 0..w {
        let (s, a) = sums(&out.dhidden, w, j);
        let allowed = a * r as f64 * 2f64.powi(-24);
        close(
            &format!("{what} dbias_hidden"),
            j,
            f64::from(out.dbias_hidden[j]),
            s,
            allowed,
        );
    }
    // 5. The weight gradient: f64 sums of the GPU's dlogits times the hidden values.
    if let Some(dweight) = &out.dweight {
        for (i, &got) in dweight.iter().enumerate() {
            let (cls, col) = (i / w, i % w);
            let (s, a) = (0..r).fold((0.0, 0.0), |(s, a), row| {
                let t = out.dlogits[row * k + cls].to_f64() * c.hidden[row * w + col].to_f64();
                (s + t, a + t.abs())
            });
            let allowed = a * r as f64 * 2f64.powi(-24);
            close(&format!("{what} dweight"), i, f64::from(got), s, allowed);
        }
    }
    // Bit-identical when run again.
    let again = run(gpu, c);
    let bits16 = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits16(&again.logits),
        bits16(&out.logits),
        "{what}: rerun logits"
    );
    assert_eq!(
        bits16(&again.dlogits),
        bits16(&out.dlogits),
        "{what}: rerun dlogits"
    );
    assert_eq!(
        bits16(&again.dhidden),
        bits16(&out.dhidden),
        "{what}: rerun dhidden"
    );
    assert_eq!(
        bits32(&again.dbias_hidden),
        bits32(&out.dbias_hidden),
        "{what}: rerun"
    );
    assert_eq!(
        bits32(&again.dbias),
        bits32(&out.dbias),
        "{what}: rerun dbias"
    );
    assert_eq!(
        again.dweight.as_deref().map(bits32),
        out.dweight.as_deref().map(bits32),
        "{what}: rerun dweight"
    );
    assert_eq!(
        again.loss.to_bits(),
        out.loss.to_bits(),
        "{what}: rerun loss"
    );
}

/// The GPU's outputs against the composed reference's, end to end and loosely (the stages in
/// [`check`] are the exact comparisons): rows whose logits agree bit for bit must agree in
/// dlogits and in the hidden gradient; the loss and the bias gradients within 1 %.
fn whole_chain(c: &Case, out: &Out, reference: &crate::cpu::head::Head, what: &str) {
    let (w, k) = (c.width, c.classes);
    let unit = f64::from(c.scale) / c.rows as f64;
    for row in 0..c.rows {
        let same = |a: &[f16], b: &[f16]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        let span = row * k..(row + 1) * k;
        if !same(&out.logits[span.clone()], &reference.logits[span.clone()]) {
            continue;
        }
        for i in span {
            let want = reference.dlogits[i].to_f64();
            let allowed = 2.0 * ulp16(want) + 2e-5 * unit;
            close(
                &format!("{what} chain dlogits"),
                i,
                out.dlogits[i].to_f64(),
                want,
                allowed,
            );
        }
        if !same(
            &out.dlogits[row * k..(row + 1) * k],
            &reference.dlogits[row * k..(row + 1) * k],
        ) {
            continue;
        }
        for i in row * w..(row + 1) * w {
            let want = reference.dhidden[i].to_f64();
            // The K = classes sums cancel: f32 rounding of the terms, as in check's stage 3.
            let terms: f64 = (0..k)
                .map(|cls| {
                    let d = reference.dlogits[row * k + cls].to_f64();
                    (d * c.weight[cls * w + i % w].to_f64()).abs()
                })
                .sum();
            close(
                &format!("{what} chain dhidden"),
                i,
                out.dhidden[i].to_f64(),
                want,
                2.0 * ulp16(want) + terms * 2f64.powi(-23),
            );
        }
    }
    // Column sums: within 1 % of the sum of the column's |values| (rounding differences of the
    // logits move individual gradients by an f16 ulp or so).
    let column_abs = |g: &[f16], cols: usize, j: usize| -> f64 {
        (0..c.rows)
            .map(|row| g[row * cols + j].to_f64().abs())
            .sum()
    };
    if out.loss.is_finite() {
        let (l, r) = (f64::from(out.loss), f64::from(reference.loss));
        close(&format!("{what} chain loss"), 0, l, r, 1e-2 * r.abs());
        for j in 0..k {
            let allowed = 1e-2 * column_abs(&reference.dlogits, k, j) + 1e-6 * unit;
            let (g, r) = (f64::from(out.dbias[j]), f64::from(reference.dbias[j]));
            close(&format!("{what} chain dbias"), j, g, r, allowed);
        }
        for j in 0..w {
            let allowed = 1e-2 * column_abs(&reference.dhidden, w, j) + 1e-6 * unit;
            let (g, r) = (
                f64::from(out.dbias_hidden[j]),
                f64::from(reference.dbias_hidden[j]),
            );
            close(&format!("{what} chain dbias_hidden"), j, g, r, allowed);
        }
        for (i, &got) in out.dweight.iter().flatten().enumerate() {
            let (cls, col) = (i / w, i % w);
            let a: f64 = (0..c.rows)
                .map(|row| {
                    let d = reference.dlogits[row * k + cls].to_f64();
                    (d * c.hidden[row * w + col].to_f64()).abs()
                })
                .sum();
            let (g, r) = (f64::from(got), f64::from(reference.dweight[i]));
            close(
                &format!("{what} chain dweight"),
                i,
                g,
                r,
                1e-2 * a + 1e-6 * unit,
            );
        }
    }
}

#[test]
fn head_matches_the_composed_reference() {
    let Some(gpu) = test_gpu() else { return };
    let sanitizing = std::env::var("AMPKIT_TEST_SANITIZE").is_ok_and(|v| v == "1");
    let mut shapes = vec![
        (1, 32, 1),
        (15, 64, 10),
        (17, 512, 10),
        (255, 96, 16),
        (300, 1024, 7),
        (1037, 512, 10),
    ];
    if !sanitizing {
        // 4096: the default step; 8197 × 128: more tiles than warps (each warp loops).
        shapes.extend([(4096, 512, 10), (8197, 128, 3)]);
    }
    for (n, &(rows, width, classes)) in shapes.iter().enumerate() {
        let c = case(n as u64 + 1, rows, width, classes, 0.1);
        check(&gpu, &c, &format!("{rows}x{width}x{classes}"));
    }
}

#[test]
fn head_overflowing_logits_and_bad_labels() {
    let Some(gpu) = test_gpu() else { return };
    // Weights this large overflow f16 logits (inf, and NaN rows where +inf meets −inf).
    let c = case(40, 70, 256, 10, 60.0);
    check(&gpu, &c, "overflowing logits");
    // A label ≥ classes: that row's loss and dlogits are NaN, the mean loss NaN.
    let mut c = case(41, 33, 64, 10, 0.1);
    c.labels[20] = 10;
    let out = run(&gpu, &c);
    assert!(out.loss.is_nan(), "bad label: loss {}", out.loss);
    assert!(
        (0..10).all(|j| out.dlogits[20 * 10 + j].is_nan()),
        "bad label row"
    );
    assert!(out.dlogits[19 * 10..20 * 10].iter().all(|v| !v.is_nan()));
}

#[test]
fn head_rejects_what_it_cannot_serve() {
    assert!(fits(512, 10) && fits(32, 1) && fits(1024, 16));
    assert!(!fits(500, 10) && !fits(512, 17) && !fits(2048, 10) && !fits(512, 0));
    let Some(gpu) = test_gpu() else { return };
    let c = case(50, 16, 64, 10, 0.1);
    let h = gpu.upload(&c.hidden).unwrap();
    let wt = gpu.upload(&c.weight).unwrap();
    let b = gpu.upload(&c.bias).unwrap();
    let l = gpu.upload(&c.labels).unwrap();
    let s = gpu.upload(&[1f32]).unwrap();
    let mut logits = gpu.alloc_zeros::<f16>(160).unwrap();
    let mut dlogits = gpu.alloc_zeros::<f16>(160).unwrap();
    let mut dh = gpu.alloc_zeros::<f16>(16 * 64 + 8).unwrap();
    let mut dbh = gpu.alloc_zeros::<f32>(64).unwrap();
    let mut db = gpu.alloc_zeros::<f32>(10).unwrap();
    let mut dw = gpu.alloc_zeros::<f32>(640 + 4).unwrap();
    let mut loss = gpu.alloc_zeros::<f32>(1).unwrap();
    let mut attempt = |dh_from: usize, dw_from: usize, rows: usize| {
        let inputs = HeadInputs {
            hidden: h.slice(..),
            weight: wt.slice(..),
            bias: b.slice(..),
            labels: l.slice(..rows),
            grad_scale: &s,
        };
        let mut outputs = HeadOutputs {
            logits: logits.slice_mut(..rows * 10),
            dlogits: dlogits.slice_mut(..rows * 10),
            dhidden: dh.slice_mut(dh_from..dh_from + rows * 64),
            dbias_hidden: dbh.slice_mut(..),
            dbias: db.slice_mut(..),
            dweight: Some(dw.slice_mut(dw_from..dw_from + 640)),
            loss: &mut loss,
        };
        head_step(&gpu, rows, 64, 10, &inputs, &mut outputs)
    };
    assert_eq!(attempt(0, 0, 16).unwrap(), 1);
    // A view one element in is not 16-byte aligned.
    let e = attempt(1, 0, 16).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(e.to_string().contains("dhidden"), "{e}");
    let e = attempt(0, 2, 16).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(e.to_string().contains("dweight"), "{e}");
    // Lengths that disagree with the shape.
    let e = attempt(0, 0, 15).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("hidden"), "{e}");
}
