//! What a downstream crate writes on top of ampkit: a linear layer's forward on whichever device
//! it was given, through the public API only.

use ampkit::cpu::gemm::{gemm, Epilogue};
use ampkit::shape::{GemmShape, Layout};
use ampkit::{f16, Device, Result};

/// `Y[m, n] = relu?(X[m, k]·W[n, k]ᵀ + b)` with f16 operands and f32 output, on `device`.
pub fn linear(
    device: &Device,
    (m, n, k): (usize, usize, usize),
    x: &[f16],
    w: &[f16],
    b: &[f32],
    relu: bool,
) -> Result<Vec<f32>> {
    let shape = GemmShape::new(Layout::Forward, m, n, k);
    let mut y = vec![0f32; m * n];
    match device {
        Device::Cpu => gemm(shape, x, w, &Epilogue::bias(b, relu), &mut y)?,
        Device::Cuda(gpu) => {
            let (dx, dw, db) = (gpu.upload(x)?, gpu.upload(w)?, gpu.upload(b)?);
            let mut dy = gpu.alloc_zeros::<f32>(m * n)?;
            // The bias is the buffer itself, as every op takes any device pointer.
            let epilogue = ampkit::ops::gemm::Epilogue::bias(&db, relu);
            ampkit::ops::gemm::gemm(gpu, shape, &dx, &dw, &epilogue, &mut dy)?;
            y = gpu.download(&dy)?;
        }
    }
    Ok(y)
}
