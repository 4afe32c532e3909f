//! Softmax test support (`softmax_gpu`, `softmax_sm90_gpu`, and under the loss's own support
//! `cross_entropy_gpu`, `cross_entropy_sm90_gpu`): random logits, poison values, misaligned
//! uploads, the Hopper gate, typed-error checks, and softmax's checks against the f64 reference
//! with their limits (see tests/softmax_gpu.rs's docs).

#![allow(dead_code)]

use crate::common::{assert_all_written, assert_close, assert_scaled};
use ampkit::check::{ToF64, Tolerance};
use ampkit::cpu::softmax as cpu;
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::softmax::{backward, forward};
use ampkit::tuning::softmax::{backward_forced, forward_forced, SoftmaxForce};
use ampkit::{f16, Error};
use cudarc::driver::DeviceRepr;
use rand::rngs::StdRng;
use rand::Rng;

pub const LIMIT: f64 = 1e-5;
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

/// Whether the GPU runs the thread-block-cluster kernels (compute capability 9.0); prints
/// `skipped: ...` when it does not.
pub fn hopper(gpu: &Gpu) -> bool {
    if gpu.info().compute_capability == (9, 0) {
        true
    } else {
        eprintln!("skipped: the cluster kernels need compute capability 9.0");
        false
    }
}

/// Fails unless `r` is the expected kind of error (`shape`: [`Error::ShapeMismatch`], else
/// [`Error::InvalidArgument`]) mentioning `needle`.
pub fn expect(r: ampkit::Result<()>, shape: bool, needle: &str) {
    let e = r.unwrap_err();
    let kind = if shape {
        matches!(e, Error::ShapeMismatch { .. })
    } else {
        matches!(e, Error::InvalidArgument { .. })
    };
    assert!(kind && e.to_string().contains(needle), "{needle}: {e}");
}
