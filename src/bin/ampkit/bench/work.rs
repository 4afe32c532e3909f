//! What the compute-bound rows do, as the PyTorch script counts and names it: GEMM and
//! training-step FLOPs, and the shape column of GEMM and training rows.

use ampkit::shape::Layout;

/// The shape column of a GEMM row, as the PyTorch script writes it: `[MxK]@[NxK]^T` (forward),
/// `[MxK]@[KxN]` (dgrad), `[KxM]^T@[KxN]` (wgrad).
pub fn gemm_shape(layout: Layout, m: usize, n: usize, k: usize) -> String {
    match layout {
        Layout::Forward => format!("[{m}x{k}]@[{n}x{k}]^T"),
        Layout::Dgrad => format!("[{m}x{k}]@[{k}x{n}]"),
        Layout::Wgrad => format!("[{k}x{m}]^T@[{k}x{n}]"),
    }
}

/// FLOPs of one GEMM: `2·M·N·K`.
pub fn gemm_flops(m: usize, n: usize, k: usize) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64
}

/// Parameters of an MLP with biases: `Σ in·out + out` over consecutive widths.
pub fn mlp_params(dims: &[usize]) -> usize {
    dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
}

/// FLOPs of one training step: `6 · parameters · batch` (forward 2, backward 4).
pub fn train_flops(dims: &[usize], batch: usize) -> f64 {
    6.0 * mlp_params(dims) as f64 * batch as f64
}

/// The shape column of a training row: widths joined by `-`, then ` x{batch}`.
pub fn train_shape(dims: &[usize], batch: usize) -> String {
    let widths: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("{} x{batch}", widths.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_matches_the_pytorch_script() {
        assert_eq!(gemm_flops(8192, 8192, 8192), 2.0 * 8192f64.powi(3));
        assert_eq!(mlp_params(&[784, 512, 10]), 407_050);
        assert_eq!(mlp_params(&[4096; 5]), 4 * (4096 * 4096 + 4096));
        assert_eq!(
            gemm_shape(Layout::Wgrad, 512, 784, 4096),
            "[4096x512]^T@[4096x784]"
        );
        assert_eq!(
            gemm_shape(Layout::Forward, 8192, 8192, 8192),
            "[8192x8192]@[8192x8192]^T"
        );
        assert_eq!(
            gemm_shape(Layout::Dgrad, 4096, 784, 512),
            "[4096x512]@[512x784]"
        );
        assert_eq!(train_shape(&[784, 512, 10], 256), "784-512-10 x256");
    }
}
