//! Softmax and cross-entropy test support: random logits and labels, misaligned uploads, and the
//! checks against the f64 reference with their limits (see tests/softmax_gpu.rs's docs).

#![allow(dead_code)]

use crate::common::{assert_all_written, assert_close, assert_scaled};
use ampkit::check::{ToF64, Tolerance};
use ampkit::cpu::softmax as cpu;
use ampkit::cpu::Element;
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::cross_entropy::{softmax_cross_entropy, Grad, Logit};
use ampkit::ops::softmax::{backward, forward};
use ampkit::tuning::cross_entropy::{softmax_cross_entropy_forced, CeForce};
use ampkit::tuning::softmax::{backward_forced, forward_forced, SoftmaxForce};
use ampkit::{f16, Error};
use cudarc::driver::DeviceRepr;
use rand::rngs::StdRng;
use rand::Rng;
use std::mem::size_of;

pub const LIMIT: f64 = 1e-5;
/// exp(x − max) below this flushes to zero in the loss kernels (2^-126, f32's least normal).
pub const FLUSHED_EXP: f64 = 1.1754943508222875e-38;
/// Softmax outputs: relative elementwise and in L2; the 1e-30 absolute covers outputs that
/// underflow to subnormals.
pub const SOFTMAX_FWD: Tolerance = Tolerance::new(1e-30, LIMIT);

pub fn poison() -> f32 {
    f32::from_bits(0xDEAD_BEEF)
}

pub fn poison16() -> f16 {
    f16::from_bits(0x7E5A) // a NaN payload the kernels never write
}

/// `rows·cols` logits: each row around its own offset in ±`offset`, spread ±`spread`.
pub fn logits(rng: &mut StdRng, rows: usize, cols: usize, offset: f32, spread: f32) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let o = rng.gen_range(-offset..=offset);
        x.extend((0..cols).map(|_| o + rng.gen_range(-spread..=spread)));
    }
    x
}

pub fn labels(rng: &mut StdRng, rows: usize, classes: usize) -> Vec<u32> {
    (0..rows)
        .map(|_| rng.gen_range(0..classes as u32))
        .collect()
}

pub fn wide<T: ToF64>(v: &[T]) -> Vec<f64> {
    v.iter().map(|v| v.to_f64()).collect()
}

/// `v` on the device behind `offset` leading `pad` elements (a view at `offset` is then
/// misaligned for 4-wide accesses when offset is odd).
pub fn upload_at<T: DeviceRepr + Copy>(
    gpu: &Gpu,
    v: &[T],
    offset: usize,
    pad: T,
) -> DeviceBuffer<T> {
    let mut padded = vec![pad; offset];
    padded.extend_from_slice(v);
    gpu.upload(&padded).unwrap()
}

/// Forward then backward (on the GPU's own y), every buffer at element `offset`; y and dx
/// poisoned, fully written and within the limits of the f64 reference.
pub fn check_softmax(gpu: &Gpu, rng: &mut StdRng, rows: usize, cols: usize, offset: usize) {
    check_softmax_with(gpu, rng, rows, cols, offset, None).unwrap();
}

/// [`check_softmax`] in a forced launch shape, or the error of a shape the row does not fit.
pub fn check_softmax_with(
    gpu: &Gpu,
    rng: &mut StdRng,
    rows: usize,
    cols: usize,
    offset: usize,
    force: Option<SoftmaxForce>,
) -> Result<(), Error> {
    let what = format!("softmax {rows}x{cols} offset {offset} {force:?}");
    let x = logits(rng, rows, cols, 20.0, 6.0);
    let dy: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let o = offset;
    let xd = upload_at(gpu, &x, o, 0.0);
    let dyd = upload_at(gpu, &dy, o, 0.0);
    let mut y = upload_at(gpu, &vec![poison(); x.len()], o, 0.0);
    let mut dx = upload_at(gpu, &vec![poison(); x.len()], o, 0.0);
    match force {
        None => {
            forward(gpu, &xd.slice(o..), rows, cols, &mut y.slice_mut(o..))?;
            backward(
                gpu,
                &y.slice(o..),
                &dyd.slice(o..),
                rows,
                cols,
                &mut dx.slice_mut(o..),
            )?;
        }
        Some(f) => {
            forward_forced(gpu, &xd.slice(o..), rows, cols, &mut y.slice_mut(o..), f)?;
            let ins = (&y.slice(o..), &dyd.slice(o..));
            backward_forced(gpu, ins, rows, cols, &mut dx.slice_mut(o..), f)?;
        }
    }
    let got_y = gpu.download(&y.slice(o..)).unwrap();
    let got_dx = gpu.download(&dx.slice(o..)).unwrap();
    assert_all_written(&format!("{what} y"), &got_y, poison());
    assert_all_written(&format!("{what} dx"), &got_dx, poison());

    let (x64, dy64) = (wide(&x), wide(&dy));
    let (mut y64, mut dx64) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    cpu::forward(&x64, rows, cols, &mut y64).unwrap();
    cpu::backward(&y64, &dy64, rows, cols, &mut dx64).unwrap();
    let mut scale = Vec::with_capacity(x.len());
    for (y, dy) in y64.chunks(cols).zip(dy64.chunks(cols)) {
        let dot_abs: f64 = y.iter().zip(dy).map(|(y, d)| y * d.abs()).sum();
        scale.extend(y.iter().zip(dy).map(|(y, d)| y * (d.abs() + dot_abs)));
    }
    assert_close(&format!("{what} y"), &got_y, &y64, SOFTMAX_FWD);
    assert_scaled(&format!("{what} dx"), &got_dx, &dx64, &scale, LIMIT);
    Ok(())
}

/// The cross-entropy of `x` into `D` gradients on the GPU, against the f64 reference: the loss to
/// [`LIMIT`] relative, every gradient within `LIMIT·|scale/rows|·(p + onehot)` plus, for f16
/// outputs, half an f16 ulp. Returns (loss, dlogits) as computed.
pub fn check_ce<L, D>(
    gpu: &Gpu,
    x: &[L],
    labels: &[u32],
    classes: usize,
    scale: f32,
    fill: D,
    what: &str,
) -> (f32, Vec<D>)
where
    L: Logit + Element + ToF64,
    D: Grad + Element + ToF64 + bytemuck::Pod,
{
    check_ce_with(gpu, x, labels, classes, scale, fill, what, 0, None)
}

/// [`check_ce`] with the buffers at element `offset` and, if given, a forced launch shape.
#[allow(clippy::too_many_arguments)]
pub fn check_ce_with<L, D>(
    gpu: &Gpu,
    x: &[L],
    labels: &[u32],
    classes: usize,
    scale: f32,
    fill: D,
    what: &str,
    offset: usize,
    force: Option<CeForce>,
) -> (f32, Vec<D>)
where
    L: Logit + Element + ToF64,
    D: Grad + Element + ToF64 + bytemuck::Pod,
{
    try_check_ce(gpu, x, labels, classes, scale, fill, what, offset, force)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// [`check_ce_with`], or the error of a forced shape the row does not fit (nothing launched).
#[allow(clippy::too_many_arguments)]
pub fn try_check_ce<L, D>(
    gpu: &Gpu,
    x: &[L],
    labels: &[u32],
    classes: usize,
    scale: f32,
    fill: D,
    what: &str,
    offset: usize,
    force: Option<CeForce>,
) -> Result<(f32, Vec<D>), Error>
where
    L: Logit + Element + ToF64,
    D: Grad + Element + ToF64 + bytemuck::Pod,
{
    let rows = labels.len();
    let (got_loss, got) = run_ce_with(gpu, x, labels, classes, scale, fill, offset, force)?;
    assert_all_written(&format!("{what} dlogits"), &got, fill);
    let mut want = vec![0.0f64; x.len()];
    let want_loss = ampkit::cpu::cross_entropy::softmax_cross_entropy(
        x, labels, rows, classes, scale, &mut want,
    )
    .unwrap();
    let allowed = allowance(&wide(x), labels, classes, scale, &want, size_of::<D>() == 2);
    assert_scaled(&format!("{what} dlogits"), &got, &want, &allowed, 1.0);
    let err = (f64::from(got_loss) - want_loss).abs() / want_loss.abs().max(1e-30);
    eprintln!("{what} loss: {got_loss} vs {want_loss}, rel error {err:.2e}");
    assert!(err <= LIMIT, "{what}: loss {got_loss} vs {want_loss}");
    Ok((got_loss, got))
}

/// How far each gradient may be from the f64 reference `want`: [`LIMIT`] of the terms that
/// cancel in it, `|grad_scale/rows|·(p + onehot)`, and for f16 outputs half an f16 ulp
/// (2^-11 relative, 2^-25 absolute among subnormals; 4.9e-4 and 3e-8 leave a little slack).
/// The kernels flush exp(x − max) below 2^-126 to zero (`exp_shifted`), so every gradient may
/// also be off by `|grad_scale/rows|·2^-126`.
pub fn allowance(
    x: &[f64],
    labels: &[u32],
    classes: usize,
    scale: f32,
    want: &[f64],
    f16_out: bool,
) -> Vec<f64> {
    let rows = labels.len();
    let mut p = vec![0.0f64; x.len()];
    cpu::forward(x, rows, classes, &mut p).unwrap();
    let unit = (f64::from(scale) / rows as f64).abs();
    (0..x.len())
        .map(|i| {
            let onehot = f64::from(labels[i / classes] as usize == i % classes);
            let f16_err = if f16_out {
                4.9e-4 * want[i].abs() + 3e-8
            } else {
                0.0
            };
            LIMIT * unit * (p[i] + onehot) + unit * FLUSHED_EXP + f16_err
        })
        .collect()
}

/// Uploads and runs one cross-entropy (buffers at element `offset`); returns (loss, dlogits).
pub fn run_ce<L, D>(
    gpu: &Gpu,
    x: &[L],
    labels: &[u32],
    classes: usize,
    scale: f32,
    fill: D,
    offset: usize,
) -> (f32, Vec<D>)
where
    L: Logit + Element,
    D: Grad + Element,
{
    run_ce_with(gpu, x, labels, classes, scale, fill, offset, None).unwrap()
}

/// [`run_ce`] in a forced launch shape when `force` is given.
#[allow(clippy::too_many_arguments)]
pub fn run_ce_with<L, D>(
    gpu: &Gpu,
    x: &[L],
    labels: &[u32],
    classes: usize,
    scale: f32,
    fill: D,
    offset: usize,
    force: Option<CeForce>,
) -> Result<(f32, Vec<D>), Error>
where
    L: Logit + Element,
    D: Grad + Element,
{
    let (rows, o) = (labels.len(), offset);
    let xd = upload_at(gpu, x, o, x[0]);
    let ld = gpu.upload(labels).unwrap();
    let sd = gpu.upload(&[scale]).unwrap();
    let mut dd = upload_at(gpu, &vec![fill; x.len()], o, fill);
    let mut loss = gpu.upload(&[poison()]).unwrap();
    let xv = xd.slice(o..);
    let mut dv = dd.slice_mut(o..);
    match force {
        None => softmax_cross_entropy(gpu, &xv, &ld, rows, classes, &sd, &mut dv, &mut loss),
        Some(f) => {
            softmax_cross_entropy_forced(gpu, (&xv, &ld, &sd), rows, classes, &mut dv, &mut loss, f)
        }
    }?;
    let got_loss = gpu.download(&loss).unwrap()[0];
    assert_ne!(got_loss.to_bits(), poison().to_bits(), "loss never written");
    Ok((got_loss, gpu.download(&dd.slice(o..)).unwrap()))
}
