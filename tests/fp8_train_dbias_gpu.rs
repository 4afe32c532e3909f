//! `ops::fp8::cast_transpose_dbias` (an FP8 layer's output-gradient cast with its bias gradient
//! and ReLU backward in one pass) against `cpu::fp8::cast_transpose_dbias`, bit for bit: both
//! formats, without the ReLU backward and with it from the ReLU output or from its mask, any bit
//! pattern in the gradient and the ReLU output, odd shapes, the vector and element kernels, outputs poisoned around their views.
//! On the CPU: the twin is the ReLU backward, then `cast_transpose`, then column sums that stay
//! within rounding of exact sums.

mod common;

use ampkit::cpu::fp8::{transpose_ld, CastInput, Fp8Format};
use ampkit::cuda::Gpu;
use ampkit::ops::fp8::ReluSource;
use ampkit::{cpu, ops, Error};
use common::{assert_bits_eq, gpu, rng, sized};
use cudarc::driver::DevicePtrMut;
use half::bf16;
use rand::rngs::StdRng;
use rand::Rng;

const FORMATS: [Fp8Format; 2] = [Fp8Format::E4M3, Fp8Format::E5M2];
const ROWS: [usize; 7] = [0, 1, 15, 63, 64, 65, 130];
const COLS: [usize; 6] = [1, 4, 17, 64, 68, 100];
const POISON: u8 = 0xA5;
const GUARD: usize = 7;

/// A gradient element: any bit pattern now and then (NaN, ±inf, subnormals), ordinary values
/// of many magnitudes otherwise, so the bias sums are numbers in most columns.
fn grad(rng: &mut StdRng) -> bf16 {
    match rng.gen_range(0..40) {
        0 => bf16::from_bits(rng.gen()),
        1 => bf16::from_bits(rng.gen_range(1..0x80) | (u16::from(rng.gen::<bool>()) << 15)),
        _ => bf16::from_f32(rng.gen_range(-4.0f32..4.0) * 2f32.powi(rng.gen_range(-10..10))),
    }
}

/// A ReLU output element: positive mostly, and every case of the backward's test (±0,
/// negative, NaN, +inf, subnormals).
fn relu_out(rng: &mut StdRng) -> bf16 {
    match rng.gen_range(0..10) {
        0 => bf16::from_bits(rng.gen()),
        1 => [bf16::ZERO, bf16::NEG_ZERO, bf16::NAN, bf16::INFINITY][rng.gen_range(0..4)],
        2 => bf16::from_bits(rng.gen_range(1..0x80)),
        3 => bf16::from_f32(-rng.gen_range(0.0f32..2.0)),
        _ => bf16::from_f32(rng.gen_range(0.0f32..2.0)),
    }
}

/// Equal bits, or both NaN (an f32 sum of NaNs has the GPU's canonical payload).
fn same_sum(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// How a case's GPU cast gets the ReLU backward's test: from the forward output `y`, or from
/// its mask (`cpu::relu::mask(y)`, what the FP8 GEMM writes beside y).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    Output,
    Mask,
}

/// One GPU cast of `g` (with the ReLU backward on `y` when given, read as `Via` says) into views
/// at `offs` of poisoned buffers, checked against the CPU twin.
#[allow(clippy::too_many_arguments)] // the case's inputs
fn case(
    gpu: &Gpu,
    f: Fp8Format,
    g: &[bf16],
    relu: Option<(&[bf16], Via)>,
    (rows, cols): (usize, usize),
    scale: f32,
    (src_off, out_off): (usize, usize),
    with_q: bool,
) {
    let (n, ld) = (rows * cols, transpose_ld(rows).unwrap());
    let y = relu.map(|(y, _)| y);
    let (mut want_q, mut want_qt, mut want_db) =
        (vec![0u8; n], vec![0u8; cols * ld], vec![0f32; cols]);
    let want_amax = cpu::fp8::cast_transpose_dbias(
        f,
        g,
        y,
        rows,
        cols,
        scale,
        Some(&mut want_q),
        &mut want_qt,
        &mut want_db,
    )
    .unwrap();

    let padded = |v: &[bf16]| {
        let mut h = vec![bf16::NAN; src_off];
        h.extend_from_slice(v);
        gpu.upload(&h).unwrap()
    };
    let dg = padded(g);
    let dy = relu.filter(|r| r.1 == Via::Output).map(|(y, _)| padded(y));
    let dmask = relu.filter(|r| r.1 == Via::Mask).map(|(y, _)| {
        let mut words = vec![0xA5A5_A5A5u32; src_off];
        words.extend(cpu::relu::mask(y, rows, cols).unwrap());
        gpu.upload(&words).unwrap()
    });
    let mut dq = gpu.upload(&vec![POISON; out_off + n + GUARD]).unwrap();
    let mut dqt = gpu
        .upload(&vec![POISON; out_off + cols * ld + GUARD])
        .unwrap();
    let mut ddb = gpu.upload(&vec![f32::NAN; out_off + cols + GUARD]).unwrap();
    let dscale = gpu.upload(&[scale]).unwrap();
    let mut amax = gpu.upload(&[0f32]).unwrap();
    {
        let yv = dy.as_ref().map(|d| d.slice(src_off..));
        let mv = dmask.as_ref().map(|d| d.slice(src_off..));
        let source = match (&yv, &mv) {
            (Some(y), _) => Some(ReluSource::Output(y)),
            (None, Some(m)) => Some(ReluSource::Mask(m)),
            (None, None) => None,
        };
        let mut qv = dq.slice_mut(out_off..out_off + n);
        let q: Option<&mut dyn DevicePtrMut<u8>> = if with_q { Some(&mut qv) } else { None };
        ops::fp8::cast_transpose_dbias(
            gpu,
            f,
            &dg.slice(src_off..),
            source,
            (rows, cols),
            &dscale,
            q,
            &mut dqt.slice_mut(out_off..out_off + cols * ld),
            &mut amax,
            &mut ddb.slice_mut(out_off..out_off + cols),
        )
        .unwrap();
    }
    let what = format!(
        "{f:?} {rows}x{cols} relu {:?} scale {scale} offsets {src_off}/{out_off} q {with_q}",
        relu.map(|r| r.1)
    );
    let got_q = gpu.download(&dq).unwrap();
    let got_qt = gpu.download(&dqt).unwrap();
    let got_db = gpu.download(&ddb).unwrap();
    let input = |i: usize| format!("grad {:?}, relu_out {:?}", g[i], y.map(|y| y[i]));
    if with_q {
        assert_bits_eq(
            &format!("{what}: q"),
            &got_q[out_off..out_off + n],
            &want_q,
            input,
        );
    } else {
        assert!(got_q.iter().all(|&b| b == POISON), "{what}: q written");
    }
    assert_bits_eq(
        &format!("{what}: qt"),
        &got_qt[out_off..out_off + cols * ld],
        &want_qt,
        |i| i,
    );
    let outside = |v: &[u8], len: usize| {
        v[..out_off]
            .iter()
            .chain(&v[out_off + len..])
            .all(|&b| b == POISON)
    };
    assert!(outside(&got_q, n), "{what}: wrote outside q");
    assert!(outside(&got_qt, cols * ld), "{what}: wrote outside qt");
    for (c, (&got, &want)) in got_db[out_off..out_off + cols]
        .iter()
        .zip(&want_db)
        .enumerate()
    {
        assert!(
            same_sum(got, want),
            "{what}: dbias[{c}] = {got:e}, the CPU's {want:e}"
        );
    }
    let around = got_db[..out_off].iter().chain(&got_db[out_off + cols..]);
    assert!(
        around.into_iter().all(|v| v.is_nan()),
        "{what}: wrote outside dbias"
    );
    let got_amax = gpu.download(&amax).unwrap()[0];
    assert_eq!(
        got_amax.to_bits(),
        want_amax.to_bits(),
        "{what}: amax {got_amax} vs {want_amax}"
    );
}

#[test]
fn cast_transpose_dbias_matches_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("fp8 cast_transpose_dbias");
    for f in FORMATS {
        for relu in [None, Some(Via::Output), Some(Via::Mask)] {
            for &rows in &ROWS {
                for &cols in &COLS {
                    let g: Vec<bf16> = (0..rows * cols).map(|_| grad(&mut rng)).collect();
                    let y: Vec<bf16> = (0..rows * cols).map(|_| relu_out(&mut rng)).collect();
                    let offs = if rng.gen() {
                        (0, 0)
                    } else {
                        (rng.gen_range(0..4), rng.gen_range(0..4))
                    };
                    let scale = 2f32.powi(rng.gen_range(-6..6));
                    let relu = relu.map(|via| (&y[..], via));
                    case(
                        &gpu,
                        f,
                        &g,
                        relu,
                        (rows, cols),
                        scale,
                        offs,
                        rng.gen_bool(0.7),
                    );
                }
            }
        }
    }
}

#[test]
fn cast_transpose_dbias_of_large_matrices_loops_over_tiles() {
    // More tiles than a wave of blocks, every block taking several; both kernels.
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("fp8 cast_transpose_dbias large");
    let (rows, cols) = sized((2053, 1028), (130, 200));
    let g: Vec<bf16> = (0..rows * cols)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)))
        .collect();
    let y: Vec<bf16> = (0..rows * cols).map(|_| relu_out(&mut rng)).collect();
    for via in [Via::Output, Via::Mask] {
        case(
            &gpu,
            Fp8Format::E5M2,
            &g,
            Some((&y, via)),
            (rows, cols),
            64.0,
            (0, 0),
            false,
        );
    }
    case(
        &gpu,
        Fp8Format::E4M3,
        &g,
        None,
        (rows, cols),
        0.5,
        (1, 2),
        true,
    );
}

/// `cast_transpose_dbias_partial` then `bias_grad_finish_many`, five biases at once (two
/// launches: four jobs, then one), give `cast_transpose_dbias`'s codes and bias gradients bit
/// for bit.
#[test]
fn partial_sums_finished_together_equal_the_one_pass_cast() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("fp8 cast_transpose_dbias partial");
    let shapes = [(130, 100), (64, 68), (1, 17), (257, 4), (63, 9)];
    let f = Fp8Format::E5M2;
    let scale = gpu.upload(&[4f32]).unwrap();
    let mut partials = Vec::new();
    let mut dbiases = Vec::new();
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        let g: Vec<bf16> = (0..rows * cols).map(|_| grad(&mut rng)).collect();
        let y: Vec<bf16> = (0..rows * cols).map(|_| relu_out(&mut rng)).collect();
        // One spare element each: no empty allocation when rows = 0.
        let spare = |v: &[bf16]| gpu.upload(&[v, &[bf16::NAN]].concat()).unwrap();
        let (g_buf, y_buf) = (spare(&g), spare(&y));
        let (dg, dy) = (g_buf.slice(..rows * cols), y_buf.slice(..rows * cols));
        let ld = transpose_ld(rows).unwrap();
        let relu = (i % 2 == 0).then_some(ReluSource::Output(&dy));
        // The one-pass cast.
        let mut qt1 = gpu.upload(&vec![POISON; cols * ld]).unwrap();
        let mut amax1 = gpu.upload(&[0f32]).unwrap();
        let mut db1 = gpu.upload(&vec![f32::NAN; cols]).unwrap();
        ops::fp8::cast_transpose_dbias(
            &gpu,
            f,
            &dg,
            relu,
            (rows, cols),
            &scale,
            None,
            &mut qt1,
            &mut amax1,
            &mut db1,
        )
        .unwrap();
        // The cast into tile sums, finished below.
        let mut qt2 = gpu.upload(&vec![POISON; cols * ld]).unwrap();
        let mut amax2 = gpu.upload(&[0f32]).unwrap();
        // One spare element: no empty allocation when rows = 0.
        let len = rows.div_ceil(64) * cols;
        let mut partial = gpu.upload(&vec![f32::NAN; len + 1]).unwrap();
        ops::fp8::cast_transpose_dbias_partial(
            &gpu,
            f,
            &dg,
            relu,
            (rows, cols),
            &scale,
            None,
            &mut qt2,
            &mut amax2,
            &mut partial.slice_mut(..len),
        )
        .unwrap();
        assert_eq!(
            gpu.download(&qt1).unwrap(),
            gpu.download(&qt2).unwrap(),
            "{rows}x{cols}: qt"
        );
        assert_eq!(
            gpu.download(&amax1).unwrap()[0].to_bits(),
            gpu.download(&amax2).unwrap()[0].to_bits(),
            "{rows}x{cols}: amax"
        );
        partials.push((partial, len, rows));
        dbiases.push((db1, gpu.upload(&vec![f32::NAN; cols]).unwrap()));
    }
    {
        let views: Vec<_> = partials
            .iter()
            .map(|(p, len, rows)| (p.slice(..*len), *rows))
            .collect();
        let mut jobs: Vec<ops::fp8::BiasFinish<'_>> = views
            .iter()
            .zip(dbiases.iter_mut())
            .map(|((partial, rows), (_, db2))| ops::fp8::BiasFinish {
                partial,
                rows: *rows,
                dbias: db2,
            })
            .collect();
        ops::fp8::bias_grad_finish_many(&gpu, &mut jobs).unwrap();
    }
    for (&(rows, cols), (db1, db2)) in shapes.iter().zip(&dbiases) {
        let (want, got) = (gpu.download(db1).unwrap(), gpu.download(db2).unwrap());
        for c in 0..cols {
            assert!(
                same_sum(got[c], want[c]),
                "{rows}x{cols}: dbias[{c}] = {:e}, the one-pass cast's {:e}",
                got[c],
                want[c]
            );
        }
    }
    // A partial of the wrong length is refused before anything is launched.
    let (short, mut db) = (
        gpu.alloc_zeros::<f32>(3).unwrap(),
        gpu.alloc_zeros::<f32>(2).unwrap(),
    );
    let mut jobs = [ops::fp8::BiasFinish {
        partial: &short,
        rows: 65,
        dbias: &mut db,
    }];
    let e = ops::fp8::bias_grad_finish_many(&gpu, &mut jobs).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
}

#[test]
fn bad_arguments_are_typed_errors() {
    let Some(gpu) = gpu() else { return };
    let (rows, cols) = (5, 3);
    let g = gpu.upload(&[bf16::ONE; 15]).unwrap();
    let y14 = gpu.upload(&[bf16::ONE; 14]).unwrap();
    let (scale, mut amax) = (gpu.upload(&[1f32]).unwrap(), gpu.upload(&[0f32]).unwrap());
    let mut qt = gpu.alloc_zeros::<u8>(cols * 16).unwrap();
    let mut db = gpu.alloc_zeros::<f32>(cols).unwrap();
    let mut db2 = gpu.alloc_zeros::<f32>(2).unwrap();
    let f = Fp8Format::E5M2;
    let shape = |r: ampkit::Result<()>, what: &str| {
        let e = r.unwrap_err();
        assert!(
            matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains(what),
            "{what}: {e}"
        );
    };
    let r = ops::fp8::cast_transpose_dbias(
        &gpu,
        f,
        &g,
        Some(ReluSource::Output(&y14)),
        (rows, cols),
        &scale,
        None,
        &mut qt,
        &mut amax,
        &mut db,
    );
    shape(r, "relu_out has 14");
    // The mask of 5 × 3: one word per row.
    let mask4 = gpu.upload(&[1u32; 4]).unwrap();
    let r = ops::fp8::cast_transpose_dbias(
        &gpu,
        f,
        &g,
        Some(ReluSource::Mask(&mask4)),
        (rows, cols),
        &scale,
        None,
        &mut qt,
        &mut amax,
        &mut db,
    );
    shape(r, "relu_mask has 4");
    let r = ops::fp8::cast_transpose_dbias(
        &gpu,
        f,
        &g,
        None,
        (rows, cols),
        &scale,
        None,
        &mut qt,
        &mut amax,
        &mut db2,
    );
    shape(r, "dbias has 2");
    let r = ops::fp8::cast_transpose_dbias(
        &gpu,
        f,
        &g,
        None,
        (4, cols),
        &scale,
        None,
        &mut qt,
        &mut amax,
        &mut db,
    );
    shape(r, "grad has 15");
    let r = ops::fp8::cast_transpose_dbias(
        &gpu,
        f,
        &g,
        None,
        (usize::MAX / 2, 4),
        &scale,
        None,
        &mut qt,
        &mut amax,
        &mut db,
    );
    let e = r.unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("overflows"),
        "{e}"
    );
}

#[test]
fn the_cpu_twin_is_relu_backward_cast_transpose_and_column_sums() {
    let mut rng = rng("cpu fp8 cast_transpose_dbias");
    for &(rows, cols) in &[(0, 5), (1, 1), (63, 17), (64, 64), (200, 70), (1000, 33)] {
        let g: Vec<bf16> = (0..rows * cols)
            .map(|_| bf16::from_f32(rng.gen_range(-2.0f32..2.0)))
            .collect();
        let y: Vec<bf16> = (0..rows * cols).map(|_| relu_out(&mut rng)).collect();
        let ld = transpose_ld(rows).unwrap();
        let (mut q, mut qt, mut db) = (
            vec![0u8; rows * cols],
            vec![0u8; cols * ld],
            vec![f32::NAN; cols],
        );
        let f = Fp8Format::E5M2;
        let amax = cpu::fp8::cast_transpose_dbias(
            f,
            &g,
            Some(&y),
            rows,
            cols,
            8.0,
            Some(&mut q),
            &mut qt,
            &mut db,
        )
        .unwrap();
        let mut dz = vec![bf16::ZERO; rows * cols];
        cpu::relu::backward(&g, &y, &mut dz).unwrap();
        let (mut q2, mut qt2) = (vec![0u8; rows * cols], vec![0u8; cols * ld]);
        let amax2 =
            cpu::fp8::cast_transpose(f, &dz, rows, cols, 8.0, Some(&mut q2), &mut qt2).unwrap();
        assert_eq!(
            (q, qt, amax.to_bits()),
            (q2, qt2, amax2.to_bits()),
            "{rows}x{cols}"
        );
        for (c, &got) in db.iter().enumerate() {
            let exact: f64 = (0..rows).map(|r| f64::from(dz[r * cols + c].widen())).sum();
            let magnitude: f64 = (0..rows)
                .map(|r| f64::from(dz[r * cols + c].widen()).abs())
                .sum();
            let err = (f64::from(got) - exact).abs();
            assert!(
                err <= magnitude * 1e-6 + 1e-30,
                "{rows}x{cols} column {c}: {got} vs {exact}"
            );
        }
    }
}
