//! Cross-entropy test support (`cross_entropy_gpu`, `cross_entropy_bf16_gpu`,
//! `cross_entropy_sm90_gpu`; on top of `softmax_support`): random labels, one loss on the GPU with
//! poisoned outputs, and its check against the f64 reference with the limits of
//! tests/cross_entropy_gpu.rs's docs (plus each gradient type's own rounding).

#![allow(dead_code)]

use crate::common::{assert_all_written, assert_scaled};
use crate::softmax_support::{logits, poison, poison16, upload_at, wide, LIMIT};
use ampkit::check::ToF64;
use ampkit::cpu::cross_entropy as cpu_ce;
use ampkit::cpu::softmax as cpu;
use ampkit::cpu::Element;
use ampkit::cuda::Gpu;
use ampkit::ops::cross_entropy::{softmax_cross_entropy, Grad, Logit};
use ampkit::tuning::cross_entropy::{softmax_cross_entropy_forced, CeForce};
use ampkit::{f16, Error};
use half::bf16;
use rand::rngs::StdRng;
use rand::Rng;

/// exp(x − max) below this flushes to zero in the loss kernels (2^-126, f32's least normal).
pub const FLUSHED_EXP: f64 = 1.1754943508222875e-38;

/// A bf16 NaN the kernels never write (its quiet bit is clear; their conversion sets it).
pub fn poison_bf16() -> bf16 {
    bf16::from_bits(0x7F81)
}

/// A gradient type with the rounding its stores add to the kernel's f32 value: half an ulp,
/// relative, and an absolute bound among the subnormals.
pub trait GradOut: Grad + Element + ToF64 + bytemuck::Pod {
    /// `(relative, absolute)`.
    const ROUNDING: (f64, f64);
}

impl GradOut for f32 {
    const ROUNDING: (f64, f64) = (0.0, 0.0);
}

/// 2^-11 relative, 2^-25 absolute among subnormals; 4.9e-4 and 3e-8 leave a little slack.
impl GradOut for f16 {
    const ROUNDING: (f64, f64) = (4.9e-4, 3e-8);
}

/// 2^-8 relative (8 significant bits); subnormals below 2^-126 are far below every allowance.
impl GradOut for bf16 {
    const ROUNDING: (f64, f64) = (3.92e-3, 1e-39);
}

pub fn labels(rng: &mut StdRng, rows: usize, classes: usize) -> Vec<u32> {
    (0..rows)
        .map(|_| rng.gen_range(0..classes as u32))
        .collect()
}

/// The cross-entropy of `x` into `D` gradients on the GPU, against the f64 reference: the loss to
/// [`LIMIT`] relative, every gradient within `LIMIT·|scale/rows|·(p + onehot)` plus, for 16-bit
/// outputs, half an ulp of their type ([`GradOut`]). Returns (loss, dlogits) as computed.
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
    D: GradOut,
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
    D: GradOut,
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
    D: GradOut,
{
    let rows = labels.len();
    let (got_loss, got) = run_ce_with(gpu, x, labels, classes, scale, fill, offset, force)?;
    assert_all_written(&format!("{what} dlogits"), &got, fill);
    let mut want = vec![0.0f64; x.len()];
    let want_loss =
        cpu_ce::softmax_cross_entropy(x, labels, rows, classes, scale, &mut want).unwrap();
    let allowed = allowance_rounded(&wide(x), labels, classes, scale, &want, D::ROUNDING);
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
    let rounding = if f16_out {
        f16::ROUNDING
    } else {
        f32::ROUNDING
    };
    allowance_rounded(x, labels, classes, scale, want, rounding)
}

/// [`allowance`] for outputs that round by `(relative, absolute)` ([`GradOut::ROUNDING`]).
pub fn allowance_rounded(
    x: &[f64],
    labels: &[u32],
    classes: usize,
    scale: f32,
    want: &[f64],
    (rel, abs): (f64, f64),
) -> Vec<f64> {
    let rows = labels.len();
    let mut p = vec![0.0f64; x.len()];
    cpu::forward(x, rows, classes, &mut p).unwrap();
    let unit = (f64::from(scale) / rows as f64).abs();
    (0..x.len())
        .map(|i| {
            let onehot = f64::from(labels[i / classes] as usize == i % classes);
            let out_err = rel * want[i].abs() + abs;
            LIMIT * unit * (p[i] + onehot) + unit * FLUSHED_EXP + out_err
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

/// Runs [`try_check_ce`] for f32 → f32, f16 → f16 and f16 → f32 under `force`, counting the
/// shapes that fit in `checked`; a shape the row does not fit must be refused with "does not
/// fit" before any launch. [`bf16_types`] is its bf16 twin.
pub fn both_types(
    gpu: &Gpu,
    rng: &mut StdRng,
    (rows, classes): (usize, usize),
    force: Option<CeForce>,
    checked: &mut usize,
) {
    let x = logits(rng, rows, classes, 20.0, 6.0);
    let l = labels(rng, rows, classes);
    let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let what = format!("{rows}x{classes} {force:?}");
    let mut ran = |r: Result<f32, Error>| match r {
        Ok(_) => *checked += 1,
        Err(e) => assert!(e.to_string().contains("does not fit"), "{what}: {e}"),
    };
    let w = format!("{what} f32→f32");
    ran(try_check_ce(gpu, &x, &l, classes, 8.0, poison(), &w, 0, force).map(|r| r.0));
    let w = format!("{what} f16→f16");
    ran(try_check_ce(gpu, &x16, &l, classes, 8.0, poison16(), &w, 0, force).map(|r| r.0));
    let w = format!("{what} f16→f32");
    ran(try_check_ce(gpu, &x16, &l, classes, 65536.0, poison(), &w, 0, force).map(|r| r.0));
}

/// [`both_types`] for bf16: bf16 → bf16, bf16 → f32 (at scale 65536) and f32 → bf16.
pub fn bf16_types(
    gpu: &Gpu,
    rng: &mut StdRng,
    (rows, classes): (usize, usize),
    force: Option<CeForce>,
    checked: &mut usize,
) {
    let x = logits(rng, rows, classes, 20.0, 6.0);
    let l = labels(rng, rows, classes);
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let what = format!("{rows}x{classes} {force:?}");
    let mut ran = |r: Result<f32, Error>| match r {
        Ok(_) => *checked += 1,
        Err(e) => assert!(e.to_string().contains("does not fit"), "{what}: {e}"),
    };
    let w = format!("{what} bf16→bf16");
    ran(try_check_ce(gpu, &xb, &l, classes, 8.0, poison_bf16(), &w, 0, force).map(|r| r.0));
    let w = format!("{what} bf16→f32");
    ran(try_check_ce(gpu, &xb, &l, classes, 65536.0, poison(), &w, 0, force).map(|r| r.0));
    let w = format!("{what} f32→bf16");
    ran(try_check_ce(gpu, &x, &l, classes, 8.0, poison_bf16(), &w, 0, force).map(|r| r.0));
}
