//! The FP8 layers of `--precision fp8` on the CPU reference: Transformer Engine's delayed
//! scaling emulated bit for bit in its casts ([`crate::cpu::fp8`]) with exact FP8 GEMMs
//! ([`crate::cpu::gemm_fp8`]).
//!
//! Per FP8 layer, three tensors are cast, each with its own [`ScalingState`] (in this order,
//! layer by layer: [`INPUT`], [`WEIGHT`], [`GRAD`]):
//! - forward: the layer's input (bf16 values) and its f32 master weight to E4M3;
//!   `y = relu?(x_q·w_qᵀ · (sx⁻¹·sw⁻¹) + bias)` rounded once to bf16;
//! - backward: the gradient of the GEMM output (bf16 values) to the recipe's gradient format
//!   (E5M2 under HYBRID); the weight gradient `dy_qᵀ·x_q · (sdy⁻¹·sx⁻¹)` in f32 and the input
//!   gradient `dy_q·w_q · (sdy⁻¹·sw⁻¹)` rounded to bf16; the bias gradient from the unquantised
//!   bf16 gradient, summed in the order of the GPU's fused cast
//!   ([`crate::cpu::fp8::cast_transpose_dbias`]).
//!
//! The casts are the GPU's ([`crate::cpu::fp8::cast_transpose`]: each tensor and its transpose,
//! the batch padded to 16 with zeros), and so are the GEMMs' operands, so the two backends run
//! the same products.
//!
//! Each cast folds its tensor's amax into its state's current slot; after the step, [`update`]
//! computes every next scale and rolls the windows (skipped steps included, as TE does).
//! Evaluations and overflow replays cast with the same scales but record nothing.

use crate::amp::Fp8Recipe;
use crate::cpu::fp8::ScalingState;
use crate::cpu::fp8::{cast_transpose, cast_transpose_dbias, transpose_ld, Fp8Format};
use crate::cpu::gemm_fp8::{gemm_fp8, Fp8Matrix};
use crate::cpu::relu::relu;
use crate::cpu::Element;
use crate::error::{Error, Result};
use crate::nn::MlpConfig;
use crate::shape::{GemmShape, Layout};

/// A layer's input: the first of its three states.
pub(crate) const INPUT: usize = 0;
/// A layer's weight.
pub(crate) const WEIGHT: usize = 1;
/// The gradient of a layer's GEMM output.
pub(crate) const GRAD: usize = 2;
/// States per FP8 layer.
pub(crate) const PER_LAYER: usize = 3;

/// For each linear layer, the index of its first state, or `None` for a layer that is not FP8.
pub(crate) fn slots(cfg: &MlpConfig) -> Vec<Option<usize>> {
    let mut next = 0;
    (0..cfg.linear_count())
        .map(|l| {
            cfg.fp8_layer(l).then(|| {
                next += PER_LAYER;
                next - PER_LAYER
            })
        })
        .collect()
}

/// Fresh states (scale 1, zero history) for every FP8 tensor of the model.
pub(crate) fn fresh_states(cfg: &MlpConfig) -> Vec<ScalingState> {
    let n = slots(cfg).iter().flatten().count() * PER_LAYER;
    (0..n)
        .map(|_| ScalingState::new(cfg.fp8.history_len))
        .collect()
}

/// Checks that `states` fit the model's FP8 tensors: one per tensor, each with the recipe's
/// history length and a positive finite scale.
///
/// Errors: [`crate::Error::InvalidArgument`] saying what differs.
pub(crate) fn check_states(
    op: &'static str,
    cfg: &MlpConfig,
    states: &[ScalingState],
) -> Result<()> {
    let want = slots(cfg).iter().flatten().count() * PER_LAYER;
    let bad = |detail: String| crate::Error::InvalidArgument { op, detail };
    if states.len() != want {
        return Err(bad(format!(
            "{} FP8 scaling states for a model with {want} FP8 tensors (3 per FP8 layer): the \
             state was saved for another precision or model",
            states.len()
        )));
    }
    for (i, s) in states.iter().enumerate() {
        if s.history.len() != cfg.fp8.history_len {
            return Err(bad(format!(
                "FP8 tensor {i} has an amax history of {} steps, the recipe {}: resume with \
                 --fp8-history {}",
                s.history.len(),
                cfg.fp8.history_len,
                s.history.len()
            )));
        }
        if !(s.scale.is_finite() && s.scale > 0.0) {
            return Err(bad(format!(
                "FP8 tensor {i} has scale {}; a scale is always positive and finite",
                s.scale
            )));
        }
    }
    Ok(())
}

/// The format of every state, in state order.
pub(crate) fn formats(recipe: &Fp8Recipe, states: usize) -> Vec<Fp8Format> {
    (0..states)
        .map(|i| match i % PER_LAYER {
            GRAD => recipe.gradient_format(),
            _ => recipe.forward_format(),
        })
        .collect()
}

/// The scale update after a step: every state's next scale and window roll.
pub(crate) fn update(recipe: &Fp8Recipe, states: &mut [ScalingState]) {
    let formats = formats(recipe, states.len());
    for (s, f) in states.iter_mut().zip(formats) {
        s.update(f, recipe.amax_algo, recipe.margin as f32);
    }
}

/// What an FP8 layer's forward keeps for its backward: the FP8 input and weight and their
/// amaxes (recorded by the step, not by evaluations).
pub(crate) struct Fp8Acts {
    /// The input's transpose `[in, ld(b)]` and the weight's `[in, ld(out)]`.
    xqt: Vec<u8>,
    wqt: Vec<u8>,
    sx: f32,
    sw: f32,
    /// `max |x|` and `max |w|` of this forward.
    pub amax: [f32; 2],
}

/// The forward GEMM of an FP8 layer over `b` samples of `x` (`[b, fan_in]`, values already
/// rounded to `H`): returns the output (`[b, out]`, ReLU applied when `relu_out`; `H` values in
/// f32 storage, or f32 values for a layer whose output feeds LayerNorm, `f32_out`) and what the
/// backward needs.
#[allow(clippy::too_many_arguments)] // one layer's shapes and operands
pub(crate) fn forward<H: Element>(
    recipe: &Fp8Recipe,
    states: &[ScalingState],
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    (b, out, fan_in): (usize, usize, usize),
    relu_out: bool,
    f32_out: bool,
) -> Result<(Vec<f32>, Fp8Acts)> {
    let format = recipe.forward_format();
    let (sx, sw) = (states[INPUT].scale, states[WEIGHT].scale);
    let (ldb, ldo) = (ld(b)?, ld(out)?);
    let (mut xq, mut xqt) = (vec![0u8; b * fan_in], vec![0u8; fan_in * ldb]);
    let ax = cast_transpose(format, x, b, fan_in, sx, Some(&mut xq), &mut xqt)?;
    let (mut wq, mut wqt) = (vec![0u8; out * fan_in], vec![0u8; fan_in * ldo]);
    let aw = cast_transpose(format, w, out, fan_in, sw, Some(&mut wq), &mut wqt)?;
    let shape = GemmShape::new(Layout::Forward, b, out, fan_in);
    let (xm, wm) = (
        Fp8Matrix {
            data: &xq,
            format,
            scale_inv: 1.0 / sx,
        },
        Fp8Matrix {
            data: &wq,
            format,
            scale_inv: 1.0 / sw,
        },
    );
    let y: Vec<f32> = if f32_out {
        let mut y = vec![0f32; b * out];
        gemm_fp8(shape, &xm, &wm, Some(bias), &mut y)?;
        y
    } else {
        let mut y = vec![H::from_f32(0.0); b * out];
        gemm_fp8(shape, &xm, &wm, Some(bias), &mut y)?;
        y.iter().map(|v| v.to_f32()).collect()
    };
    // ReLU after the rounding: the same as before it (rounding keeps signs, NaN and zero).
    let y = if relu_out {
        y.into_iter().map(relu).collect()
    } else {
        y
    };
    let acts = Fp8Acts {
        xqt,
        wqt,
        sx,
        sw,
        amax: [ax, aw],
    };
    Ok((y, acts))
}

/// `rows` rounded up to 16, the transposes' row pitch.
fn ld(rows: usize) -> Result<usize> {
    transpose_ld(rows).ok_or_else(|| Error::InvalidArgument {
        op: "train::CpuBackend",
        detail: format!("{rows} rows overflow the FP8 transposes' sizes"),
    })
}

/// The backward GEMMs of an FP8 layer from `dz` (the gradient of its GEMM output, `[b, out]`,
/// bf16 values): the bias gradient into `db`, the f32 weight gradient into `dw` and, with `dx`,
/// the input gradient (`[b, fan_in]`, `H` values). Returns the amax of `dz`.
#[allow(clippy::too_many_arguments)] // one layer's shapes and operands
pub(crate) fn backward<H: Element>(
    recipe: &Fp8Recipe,
    states: &[ScalingState],
    acts: &Fp8Acts,
    dz: &[f32],
    (b, out, fan_in): (usize, usize, usize),
    (dw, db): (&mut [f32], &mut [f32]),
    dx: Option<&mut Vec<f32>>,
) -> Result<f32> {
    let (gf, ff) = (recipe.gradient_format(), recipe.forward_format());
    let sdy = states[GRAD].scale;
    let ldb = ld(b)?;
    // The gradient holds bf16 values (FP8 layers run among bf16 ones): converting is exact.
    let dz16: Vec<half::bf16> = dz.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let (mut dq, mut dqt) = (vec![0u8; b * out], vec![0u8; out * ldb]);
    let amax = cast_transpose_dbias(gf, &dz16, None, b, out, sdy, Some(&mut dq), &mut dqt, db)?;
    // dW [out, in] = dzᵀ·x: the two transposes, K = the padded batch (zeros past b).
    gemm_fp8(
        GemmShape::new(Layout::Forward, out, fan_in, ldb),
        &Fp8Matrix {
            data: &dqt,
            format: gf,
            scale_inv: 1.0 / sdy,
        },
        &Fp8Matrix {
            data: &acts.xqt,
            format: ff,
            scale_inv: 1.0 / acts.sx,
        },
        None,
        dw,
    )?;
    if let Some(dx) = dx {
        // dX [b, in] = dz·W: the gradient and the weight's transpose, K = out.
        let mut d = vec![H::from_f32(0.0); b * fan_in];
        gemm_fp8(
            GemmShape::new(Layout::Forward, b, fan_in, out),
            &Fp8Matrix {
                data: &dq,
                format: gf,
                scale_inv: 1.0 / sdy,
            },
            &Fp8Matrix {
                data: &acts.wqt,
                format: ff,
                scale_inv: 1.0 / acts.sw,
            },
            None,
            &mut d,
        )?;
        *dx = d.iter().map(|v| v.to_f32()).collect();
    }
    Ok(amax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amp::Precision;

    #[test]
    fn every_layer_but_the_last_is_fp8() {
        let mut cfg = MlpConfig {
            layers: vec![784, 256, 128, 10],
            precision: Precision::Fp8,
            ..MlpConfig::mnist_default()
        };
        assert_eq!(slots(&cfg), [Some(0), Some(3), None]);
        cfg.fp32_layers = vec![0];
        assert_eq!(slots(&cfg), [None, Some(0), None]);
        assert_eq!(fresh_states(&cfg).len(), 3);
        cfg.fp8.last_layer = true;
        assert_eq!(slots(&cfg), [None, Some(0), Some(3)]);
        // The classifier's 10 outputs are no multiple of 16: refused, with the way out.
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("multiples of 16") && e.contains("--fp32-layers 2"),
            "{e}"
        );
        cfg.layers[3] = 16;
        cfg.validate().unwrap();
        cfg.precision = Precision::Bf16;
        assert_eq!(slots(&cfg), [None, None, None]);
        let recipe = Fp8Recipe::default();
        assert_eq!(
            formats(&recipe, 6),
            [
                Fp8Format::E4M3,
                Fp8Format::E4M3,
                Fp8Format::E5M2,
                Fp8Format::E4M3,
                Fp8Format::E4M3,
                Fp8Format::E5M2
            ]
        );
    }

    /// One FP8 layer against its definition: dequantised operands multiplied in f64.
    #[test]
    fn forward_and_backward_are_the_scaled_fp8_products() {
        use half::bf16;
        let recipe = Fp8Recipe::default();
        let mut states: Vec<ScalingState> = (0..3).map(|_| ScalingState::new(4)).collect();
        states[INPUT].scale = 2.0;
        states[WEIGHT].scale = 64.0;
        states[GRAD].scale = 1024.0;
        // out a multiple of 16, as FP8 layers' widths are (the weight's transpose has no padding).
        let (b, out, fan_in) = (3, 16, 4);
        let x: Vec<f32> = (0..b * fan_in).map(|i| (i as f32 - 5.0) * 0.37).collect();
        let w: Vec<f32> = (0..out * fan_in)
            .map(|i| (i as f32 - 3.0) * 0.011)
            .collect();
        let bias: Vec<f32> = (0..out).map(|o| 0.25 - 0.0625 * o as f32).collect();
        // The transposes' row pitch: b = 3 and out = 16 rounded up to 16.
        let (y, acts) = forward::<bf16>(
            &recipe,
            &states,
            &x,
            &w,
            &bias,
            (b, out, fan_in),
            true,
            false,
        )
        .unwrap();
        let dec = |q: u8, s: f32| f64::from(Fp8Format::E4M3.decode(q)) / f64::from(s);
        for r in 0..b {
            for o in 0..out {
                let mut v = f64::from(bias[o]);
                for k in 0..fan_in {
                    v += dec(acts.xqt[k * 16 + r], 2.0) * dec(acts.wqt[k * 16 + o], 64.0);
                }
                let want = <bf16 as Element>::from_f64(v.max(0.0)).to_f32();
                assert_eq!(y[r * out + o], want, "y[{r},{o}]");
            }
        }
        assert_eq!(acts.amax, [6.0 * 0.37, 60.0 * 0.011]);
        // bf16 values, as the engine passes.
        let dz: Vec<f32> = (0..b * out)
            .map(|i| bf16::from_f32((i as f32 - 2.5) * 1e-3).to_f32())
            .collect();
        let (mut dw, mut db) = (vec![0f32; out * fan_in], vec![f32::NAN; out]);
        let mut dx = Vec::new();
        let amax = backward::<bf16>(
            &recipe,
            &states,
            &acts,
            &dz,
            (b, out, fan_in),
            (&mut dw, &mut db),
            Some(&mut dx),
        )
        .unwrap();
        for (o, &got) in db.iter().enumerate() {
            let want: f32 = (0..b).map(|r| dz[r * out + o]).sum();
            assert!(
                (got - want).abs() <= want.abs() * 1e-6,
                "db[{o}] = {got} vs {want}"
            );
        }
        assert_eq!(amax, dz.iter().fold(0f32, |m, v| m.max(v.abs())));
        let g = |r: usize, o: usize| {
            let q = Fp8Format::E5M2.encode(dz[r * out + o] * 1024.0);
            f64::from(Fp8Format::E5M2.decode(q)) / 1024.0
        };
        for o in 0..out {
            for k in 0..fan_in {
                let v: f64 = (0..b)
                    .map(|r| g(r, o) * dec(acts.xqt[k * 16 + r], 2.0))
                    .sum();
                assert_eq!(dw[o * fan_in + k], v as f32, "dw[{o},{k}]");
            }
        }
        for r in 0..b {
            for k in 0..fan_in {
                let v: f64 = (0..out)
                    .map(|o| g(r, o) * dec(acts.wqt[k * 16 + o], 64.0))
                    .sum();
                assert_eq!(
                    dx[r * fan_in + k],
                    <bf16 as Element>::from_f64(v).to_f32(),
                    "dx[{r},{k}]"
                );
            }
        }
    }
}
