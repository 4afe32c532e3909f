//! The CPU reference of the fused classifier head ([`crate::ops::head`]): the unfused ops'
//! references composed in the training step's order, each rounding where the unfused GPU step
//! rounds (f16 logits, f16 dlogits, f16 data gradient; f32 weight gradient), so that the fused
//! kernel is checked against exactly what it replaces.

use super::cross_entropy::softmax_cross_entropy;
use super::gemm::{bias_grad, gemm, Epilogue};
use super::relu;
use crate::error::Result;
use crate::shape::{GemmShape, Layout};
use half::f16;

/// What the head computes for one batch.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub logits: Vec<f16>,
    pub dlogits: Vec<f16>,
    /// The hidden layer's GEMM-output gradient (its ReLU backward applied).
    pub dhidden: Vec<f16>,
    pub dbias_hidden: Vec<f32>,
    pub dbias: Vec<f32>,
    /// The last layer's weight gradient `[classes, width]`.
    pub dweight: Vec<f32>,
    pub loss: f32,
}

/// The head over `rows` samples of the hidden output `hidden` (`[rows, width]`), with the last
/// layer's `weight` (`[classes, width]`) and `bias`, the `labels` and the loss scale. Errors as
/// the composed references (shape mismatches, a label ≥ classes).
#[allow(clippy::too_many_arguments)] // the op's own argument list
pub(crate) fn head_step(
    hidden: &[f16],
    weight: &[f16],
    bias: &[f32],
    labels: &[u32],
    grad_scale: f32,
    rows: usize,
    width: usize,
    classes: usize,
) -> Result<Head> {
    let mut logits = vec![f16::ZERO; rows * classes];
    let forward = GemmShape::new(Layout::Forward, rows, classes, width);
    gemm(
        forward,
        hidden,
        weight,
        &Epilogue::bias(bias, false),
        &mut logits,
    )?;
    let mut dlogits = vec![f16::ZERO; rows * classes];
    let loss = softmax_cross_entropy(&logits, labels, rows, classes, grad_scale, &mut dlogits)?;
    let mut grad_in = vec![f16::ZERO; rows * width];
    let dgrad = GemmShape::new(Layout::Dgrad, rows, width, classes);
    gemm(dgrad, &dlogits, weight, &Epilogue::plain(), &mut grad_in)?;
    let mut dhidden = vec![f16::ZERO; rows * width];
    relu::backward(&grad_in, hidden, &mut dhidden)?;
    let mut dbias = vec![0f32; classes];
    bias_grad(&dlogits, rows, classes, &mut dbias)?;
    let mut dweight = vec![0f32; classes * width];
    let wgrad = GemmShape::new(Layout::Wgrad, classes, width, rows);
    gemm(wgrad, &dlogits, hidden, &Epilogue::plain(), &mut dweight)?;
    let mut dbias_hidden = vec![0f32; width];
    bias_grad(&dhidden, rows, width, &mut dbias_hidden)?;
    Ok(Head {
        logits,
        dlogits,
        dhidden,
        dbias_hidden,
        dbias,
        dweight,
        loss,
    })
}
