//! Shared by the row-kernel benches (`layernorm`, `softmax`, `cross_entropy`): rates and the
//! sweep tables they write under `$OUT`.

use ampkit::cuda::Timing;
use ampkit::{Error, Result};

/// Random-looking logits (never all equal): a hash of the index, in [-4, 4).
pub fn logits(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x85EB_CA6B)).wrapping_mul(0x9E37_79B9) >> 8;
            h as f32 / 2_097_152.0 - 4.0
        })
        .collect()
}

/// GB/s of `bytes` moved in the median time of `t`.
pub fn gbs(bytes: usize, t: &Timing) -> f64 {
    bytes as f64 / (t.median_ms * 1e-3) / 1e9
}

/// Writes a sweep's full table to `$OUT/<file>` when `OUT` is set (on the GPU machine).
pub fn write_out(file: &str, table: &str) -> Result<()> {
    let Ok(out) = std::env::var("OUT") else {
        return Ok(());
    };
    let path = std::path::Path::new(&out).join(file);
    std::fs::write(&path, table).map_err(|e| Error::InvalidArgument {
        op: "bench",
        detail: format!("writing {}: {e}", path.display()),
    })
}
