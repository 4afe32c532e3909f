//! The per-element update rules (the module doc of [`crate::cpu::optim`] gives the formulas),
//! split into rayon tasks over large tensors.

use super::{AdamCoefficients, HalfCopy, ParamTensor, SgdCoefficients, CHUNK, PARALLEL_MIN};
use rayon::prelude::*;

/// One tensor, split into rayon tasks when it is large.
pub(super) fn adam_tensor<H: HalfCopy>(
    k: &AdamCoefficients,
    p: &mut ParamTensor<'_, H>,
    m: &mut [f32],
    v: &mut [f32],
) {
    if p.master.len() < PARALLEL_MIN {
        adam_chunk(k, p.master, p.grad, p.half, m, v);
        return;
    }
    let tasks = p
        .master
        .par_chunks_mut(CHUNK)
        .zip(p.grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)));
    if p.half.is_empty() {
        tasks.for_each(|((w, g), (m, v))| adam_chunk::<H>(k, w, g, &mut [], m, v));
    } else {
        tasks
            .zip(p.half.par_chunks_mut(CHUNK))
            .for_each(|(((w, g), (m, v)), h)| adam_chunk(k, w, g, h, m, v));
    }
}

/// `half` is empty (no working copy) or as long as `master`.
fn adam_chunk<H: HalfCopy>(
    k: &AdamCoefficients,
    master: &mut [f32],
    grad: &[f32],
    half: &mut [H],
    m: &mut [f32],
    v: &mut [f32],
) {
    let update = |w: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
        let mut p = *w;
        let mut g = g;
        if k.l2 != 0.0 {
            g += k.l2 * p;
        }
        if k.decay != 1.0 {
            p *= k.decay;
        }
        *m = k.beta1 * *m + k.one_minus_beta1 * g;
        *v = k.beta2 * *v + k.one_minus_beta2 * g * g;
        let denom = v.sqrt() / k.bias_correction2_sqrt + k.eps;
        p -= k.step_size * *m / denom;
        *w = p;
        p
    };
    let params = master.iter_mut().zip(grad).zip(m).zip(v);
    if half.is_empty() {
        params.for_each(|(((w, &g), m), v)| {
            update(w, g, m, v);
        });
    } else {
        for ((((w, &g), m), v), h) in params.zip(half) {
            *h = H::from_f32(update(w, g, m, v));
        }
    }
}

pub(super) fn sgd_tensor<H: HalfCopy>(
    k: &SgdCoefficients,
    p: &mut ParamTensor<'_, H>,
    buf: Option<&mut [f32]>,
) {
    if p.master.len() < PARALLEL_MIN {
        sgd_chunk(k, p.master, p.grad, p.half, buf);
        return;
    }
    let tasks = p.master.par_chunks_mut(CHUNK).zip(p.grad.par_chunks(CHUNK));
    match (buf, p.half.is_empty()) {
        (Some(buf), false) => tasks
            .zip(p.half.par_chunks_mut(CHUNK))
            .zip(buf.par_chunks_mut(CHUNK))
            .for_each(|(((w, g), h), b)| sgd_chunk(k, w, g, h, Some(b))),
        (Some(buf), true) => tasks
            .zip(buf.par_chunks_mut(CHUNK))
            .for_each(|((w, g), b)| sgd_chunk::<H>(k, w, g, &mut [], Some(b))),
        (None, false) => tasks
            .zip(p.half.par_chunks_mut(CHUNK))
            .for_each(|((w, g), h)| sgd_chunk(k, w, g, h, None)),
        (None, true) => tasks.for_each(|(w, g)| sgd_chunk::<H>(k, w, g, &mut [], None)),
    }
}

/// `buf` is `Some` exactly when momentum is nonzero; `half` is empty (no working copy) or as
/// long as `master`.
fn sgd_chunk<H: HalfCopy>(
    k: &SgdCoefficients,
    master: &mut [f32],
    grad: &[f32],
    half: &mut [H],
    buf: Option<&mut [f32]>,
) {
    let decayed = |p: f32, g: f32| {
        if k.weight_decay != 0.0 {
            g + k.weight_decay * p
        } else {
            g
        }
    };
    match buf {
        None => {
            for (w, &g) in master.iter_mut().zip(grad) {
                *w -= k.lr * decayed(*w, g);
            }
        }
        Some(buf) => {
            for ((w, &g), b) in master.iter_mut().zip(grad).zip(buf) {
                let d = decayed(*w, g);
                *b = if k.first_step {
                    d
                } else {
                    k.momentum * *b + k.one_minus_dampening * d
                };
                let d = if k.nesterov { d + k.momentum * *b } else { *b };
                *w -= k.lr * d;
            }
        }
    }
    for (h, &w) in half.iter_mut().zip(master.iter()) {
        *h = H::from_f32(w);
    }
}
