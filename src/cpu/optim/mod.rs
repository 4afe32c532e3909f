//! Optimizers on f32 master weights on the CPU (Adam, AdamW, SGD with momentum); the reference for
//! the fused, skip-aware GPU optimizer kernel. Formulas are `torch.optim`'s single-tensor ones.
//!
//! # One step
//!
//! [`step`] takes the config, the [`OptimizerState`] (moment buffers and ONE step counter), a list
//! of [`ParamTensor`]s (f32 master weights, f32 *unscaled* gradient, 16-bit working copy: f16, or
//! bf16 — [`HalfCopy`]) and the scaler's `found_inf`:
//!
//! - Everything is validated first (config ranges, state kind, tensor count, every length);
//!   an error modifies nothing.
//! - `found_inf = true`: nothing is touched — master weights, moments, the step counter and the
//!   16-bit copies stay bit-identical — and [`StepOutcome::Skipped`] is returned. Because the
//!   counter does not advance, the next real step uses the bias corrections it would have used
//!   had the skipped step never been attempted (as `_fused_adam` undoes its step increment).
//! - Otherwise the counter advances to `t`, each element is updated as below, and the copy
//!   becomes `f16::from_f32(new master)` (round to nearest even, overflow to ±inf), or
//!   `bf16::from_f32(new master)` for a bf16 copy (round to nearest even; [`HalfCopy`]).
//!
//! # Precision: what is f64 and what is f32
//!
//! Hyperparameters are f64, like the Python floats PyTorch receives. Once per step the scalar
//! coefficients are computed in f64 and rounded once to f32 ([`AdamCoefficients::new`],
//! [`SgdCoefficients::new`]); the GPU kernel receives these same f32 values as arguments, and
//! the per-element math is f32 only. The f64 scalars are:
//! - the bias corrections `bc1 = 1 − β1^t`, `bc2 = 1 − β2^t` (`powf`), then
//!   `step_size = lr / bc1` and `bc2_sqrt = sqrt(bc2)`. In f32, `1 − β^t` multiplies the
//!   rounding error of `β` by `1/(1 − β^t)`: `1 − f32(0.999)` is 1.3e-5 off, so every early
//!   update would be 6.4e-6 off. f64 keeps `β`'s digits, and the final rounding to f32 hides any
//!   last-bit difference between libm's and CUDA's `pow`. PyTorch's single-tensor Adam also
//!   forms these in Python (f64) floats.
//! - `1 − β1`, `1 − β2`, `1 − dampening` and AdamW's `1 − lr·wd`, for the same reason
//!   (PyTorch forms them in Python floats too).
//! - `lr`, `β1`, `β2`, `eps`, `weight_decay` and `momentum` are simply rounded to f32.
//!
//! # Per element (f32, every operation rounded to nearest even, in the order written)
//!
//! Adam / AdamW, with `g` the gradient and `p` the master weight:
//! ```text
//! Adam,  wd ≠ 0:  g = g + wd·p                     (L2: decay added to the gradient)
//! AdamW, wd ≠ 0:  p = p · decay,  decay = f32(1 − lr·wd)     (decoupled, before the update)
//! m = β1·m + (1−β1)·g
//! v = β2·v + ((1−β2)·g)·g
//! p = p − (step_size·m) / (sqrt(v)/bc2_sqrt + eps)
//! ```
//! SGD (`first` = no real step with momentum yet, when PyTorch's buffer is still `None`):
//! ```text
//! wd ≠ 0:        d = g + wd·p      else d = g
//! momentum ≠ 0:  buf = first ? d : momentum·buf + (1−dampening)·d
//!                d = nesterov ? d + momentum·buf : buf
//! p = p − lr·d
//! ```
//! No fused multiply-add: a GPU twin must use `__fmul_rn`/`__fadd_rn` (or `-fmad=false`) and
//! IEEE `sqrtf` and division (nvcc's defaults without `--use_fast_math`) to match bit for bit.
//! PyTorch's `p.add_(d, alpha=-lr)` and `addcdiv_(m, denom, value=-step_size)` equal the
//! subtractions above exactly (negation is exact). Elements are independent, so the result does
//! not depend on how the work is split over threads.
//!
//! Moments use the documented form `β1·m + (1−β1)·g`, as `_fused_adam`'s kernel does; the
//! single-tensor path's `lerp_` can differ from it in the last bit. A non-finite gradient with
//! `found_inf = false` is not checked: the flag is trusted, and NaN propagates into the state.
//! Not implemented: `amsgrad`, `maximize`.

// The configs live in `config`, the per-step f32 scalars in `coefficients`, the state with what a
// step takes and returns in `state`, and the per-element update rules in `update`; `step` itself
// and its argument checks are here. Everything public is re-exported at this path.
mod coefficients;
mod config;
pub(crate) mod half_copy;
mod state;
mod update;

pub use coefficients::{AdamCoefficients, SgdCoefficients};
pub use config::{AdamConfig, OptimizerConfig, SgdConfig};
pub use half_copy::HalfCopy;
pub use state::{OptimizerState, ParamTensor, StepOutcome};

use crate::error::{Error, Result};
use rayon::prelude::*;
use update::{adam_tensor, sgd_tensor};

/// Below this many elements the work stays on the calling thread (as in [`crate::cpu::cast`]).
const PARALLEL_MIN: usize = 1 << 15;

/// Elements per rayon task inside one large tensor.
const CHUNK: usize = 1 << 14;

/// One optimizer step over every tensor, skipped entirely when `found_inf` is set, writing
/// working copies of type `H` (f16 or bf16). The exact semantics are in the module doc.
///
/// Errors, all raised before anything is modified: [`Error::InvalidArgument`] for an invalid
/// config or one of another kind than the state was created for (or SGD momentum on a state
/// created without); [`Error::ShapeMismatch`] when the tensor count or any master/grad/half
/// length disagrees with the state.
pub fn step<H: HalfCopy>(
    cfg: &OptimizerConfig,
    state: &mut OptimizerState,
    params: &mut [ParamTensor<'_, H>],
    found_inf: bool,
) -> Result<StepOutcome> {
    const OP: &str = "cpu::optim::step";
    validate_step(OP, cfg, state, params)?;
    if found_inf {
        return Ok(StepOutcome::Skipped);
    }
    state.step += 1;
    let parallel = state.lens.iter().sum::<usize>() >= PARALLEL_MIN;
    match cfg {
        OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => {
            let decoupled = matches!(cfg, OptimizerConfig::AdamW(_));
            let k = AdamCoefficients::new(c, decoupled, state.step);
            let (ms, vs) = (&mut state.exp_avg, &mut state.exp_avg_sq);
            let f = |(p, (m, v)): (_, (&mut Vec<f32>, &mut Vec<f32>))| adam_tensor(&k, p, m, v);
            if parallel {
                let work = ms.par_iter_mut().zip(vs.par_iter_mut());
                params.par_iter_mut().zip(work).for_each(f);
            } else {
                params.iter_mut().zip(ms.iter_mut().zip(vs)).for_each(f);
            }
        }
        OptimizerConfig::Sgd(c) => {
            let k = SgdCoefficients::new(c, !state.momentum_started);
            state.momentum_started |= k.momentum != 0.0;
            // Without momentum `exp_avg` holds one empty vector per tensor, never read.
            let f = |(p, b): (_, &mut Vec<f32>)| {
                sgd_tensor(&k, p, (k.momentum != 0.0).then_some(b.as_mut_slice()))
            };
            if parallel {
                let work = state.exp_avg.par_iter_mut();
                params.par_iter_mut().zip(work).for_each(f);
            } else {
                params.iter_mut().zip(&mut state.exp_avg).for_each(f);
            }
        }
    }
    Ok(StepOutcome::Stepped)
}

fn validate_step<H: HalfCopy>(
    op: &'static str,
    cfg: &OptimizerConfig,
    state: &OptimizerState,
    params: &[ParamTensor<'_, H>],
) -> Result<()> {
    state.check_config(op, cfg)?;
    let lens: Vec<[usize; 3]> = params
        .iter()
        .map(|p| [p.master.len(), p.grad.len(), p.half.len()])
        .collect();
    check_tensor_lens(op, &state.lens, &lens)
}

/// The parameter list of a step (each tensor's master, grad and half lengths) against the
/// lengths its optimizer state was created for; shared by the CPU and GPU optimizers.
pub(crate) fn check_tensor_lens(
    op: &'static str,
    state: &[usize],
    got: &[[usize; 3]],
) -> Result<()> {
    if got.len() != state.len() {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!(
                "{} parameter tensors but the state was created for {}",
                got.len(),
                state.len()
            ),
        });
    }
    for (t, (&[master, grad, half], &n)) in got.iter().zip(state).enumerate() {
        if master != n || grad != n || (half != n && half != 0) {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!(
                    "tensor {t}: master has {master} elements, grad {grad}, half {half}; the \
                     state was created for {n} and all four must agree (or half be empty: no \
                     working copy)"
                ),
            });
        }
    }
    Ok(())
}
