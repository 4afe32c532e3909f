//! Bytes read + written per call, as `benches/*.rs` count them (f32 = 4 B, f16 = 2 B, u32 labels
//! = 4 B), and approximate FLOPs per call for the roofline's x axis.

/// f32 → f16 or f16 → f32 over `n` elements: 4 + 2 bytes each.
pub fn cast(n: usize) -> f64 {
    6.0 * n as f64
}

/// f32 unscale + inf check in place over `n` elements: read and write 4 bytes each.
pub fn unscale(n: usize) -> f64 {
    8.0 * n as f64
}

/// LayerNorm forward: x read, y written (`8n`), gamma and beta read (`8·cols`), mean and
/// rstd written (`8·rows`).
pub fn layernorm_fwd(rows: usize, cols: usize) -> f64 {
    8.0 * (rows * cols) as f64 + 8.0 * cols as f64 + 8.0 * rows as f64
}

/// LayerNorm backward: dy and x read, dx written (`12n`), mean and rstd read (`8·rows`),
/// gamma read and dgamma, dbeta written (`12·cols`).
pub fn layernorm_bwd(rows: usize, cols: usize) -> f64 {
    12.0 * (rows * cols) as f64 + 8.0 * rows as f64 + 12.0 * cols as f64
}

/// Softmax forward: x read, y written.
pub fn softmax_fwd(rows: usize, cols: usize) -> f64 {
    8.0 * (rows * cols) as f64
}

/// Softmax backward: y and dy read, dx written.
pub fn softmax_bwd(rows: usize, cols: usize) -> f64 {
    12.0 * (rows * cols) as f64
}

/// Fused softmax-cross-entropy: logits read and dlogits written (`(in + out)·n`, 8 for f32 →
/// f32, 4 for f16 → f16) plus 12 bytes per row (label read, row loss written and read back).
pub fn xent(rows: usize, cols: usize, logit_bytes: usize, grad_bytes: usize) -> f64 {
    ((logit_bytes + grad_bytes) * rows * cols) as f64 + 12.0 * rows as f64
}

/// ReLU backward in f16: dy and y read, dx written, 2 bytes each.
pub fn relu_bwd_f16(n: usize) -> f64 {
    6.0 * n as f64
}

/// One fused Adam step per parameter: master, grad, m, v read (16 B); master, m, v and the
/// f16 copy written (14 B).
pub fn adam(params: usize) -> f64 {
    30.0 * params as f64
}

/// Approximate FLOPs per element (or per parameter for Adam), for the roofline only:
/// cast 1, unscale 1, LayerNorm forward 8 and backward 13, softmax forward 5 and backward 4,
/// cross-entropy 7, ReLU backward 1, Adam 18.
pub fn flops_per_element(op: &str) -> f64 {
    match op {
        "layernorm fwd" => 8.0,
        "layernorm bwd" => 13.0,
        "softmax fwd" => 5.0,
        "softmax bwd" => 4.0,
        "xent" => 7.0,
        "adam" => 18.0,
        _ => 1.0,
    }
}

/// Minimal device traffic of one mixed-precision training step of an MLP, for the
/// roofline's x axis: 46 bytes per parameter (f16 weights read by forward and dgrad 4, f32
/// gradient written 4, unscale read + write 8, Adam 30) plus, per linear layer of widths
/// `in → out`, f16 activations `2·batch·(3·in + 3·out)` (forward reads X and writes Y;
/// backward reads dY twice, X once and writes dX).
pub fn train_step(dims: &[usize], batch: usize) -> f64 {
    let params = super::work::mlp_params(dims) as f64;
    let acts: f64 = dims
        .windows(2)
        .map(|w| 2.0 * batch as f64 * (3.0 * w[0] as f64 + 3.0 * w[1] as f64))
        .sum();
    46.0 * params + acts
}

#[cfg(test)]
mod tests {
    use super::super::cases::Cases;
    use super::*;

    #[test]
    fn every_memory_family_has_a_case_near_the_copy_asymptote() {
        assert!(layernorm_fwd(16384, 1024) >= (64 << 20) as f64);
        let cases = Cases::embedded().unwrap();
        let (ln, sm) = (&cases.layernorm, &cases.softmax);
        let most = |v: &mut dyn Iterator<Item = f64>| v.fold(0.0, f64::max);
        let ln = most(&mut ln.iter().map(|c| layernorm_fwd(c.rows, c.cols)));
        let xent16 = most(&mut sm.iter().map(|c| xent(c.rows, c.cols, 2, 2)));
        let softmax = most(&mut sm.iter().map(|c| softmax_fwd(c.rows, c.cols)));
        assert!(ln >= 5e8 && xent16 >= 5e8 && softmax >= 5e8);
        // The largest set (softmax backward, f32) stays far below the card's memory.
        let largest = sm.iter().map(|c| softmax_bwd(c.rows, c.cols));
        assert!(largest.fold(0.0, f64::max) < 2e9);
    }
}
