//! A linear layer's forward, `Y = relu(X·Wᵀ + b)`, as an FP16 tensor-core GEMM with f32
//! accumulation on buffers *you* allocate with cudarc, on *your* stream — checked against
//! `ampkit::cpu::gemm` with `ampkit::check`. Without a GPU: the CPU reference against the f64 one.
//!
//! cargo run --release --example 02_gemm

use ampkit::check::{compare, Tolerance};
use ampkit::cpu::gemm::{gemm as cpu_gemm, gemm_f64, Epilogue as CpuEpilogue};
use ampkit::cuda::Gpu;
use ampkit::ops::gemm::{gemm, Epilogue};
use ampkit::shape::{GemmShape, Layout};
use ampkit::{f16, Device};
use cudarc::driver::CudaContext;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An odd batch (m) on purpose: any shape works; k and n multiples of 8 take the fast path.
    let (m, n, k) = (300, 512, 784);
    let shape = GemmShape::new(Layout::Forward, m, n, k);
    let mut rng = StdRng::seed_from_u64(2);
    let mut f16s = |len: usize| -> Vec<f16> {
        (0..len)
            .map(|_| f16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect()
    };
    let (x, w) = (f16s(m * k), f16s(n * k)); // X [m, k], W [n, k] like nn.Linear
    let bias: Vec<f32> = (0..n).map(|j| (j % 7) as f32 * 0.1 - 0.3).collect();
    println!("Y[{m}×{n}] = relu(X[{m}×{k}]·W[{n}×{k}]ᵀ + b), f16 operands, f32 accumulation");

    // CPU reference (f32 accumulation) and the all-f64 reference it is checked against.
    let mut y_cpu = vec![0f32; m * n];
    cpu_gemm(shape, &x, &w, &CpuEpilogue::bias(&bias, true), &mut y_cpu)?;
    let wide = |v: &[f16]| v.iter().map(|h| h.to_f64()).collect::<Vec<f64>>();
    let mut y64 = vec![0f64; m * n];
    gemm_f64(
        shape,
        &wide(&x),
        &wide(&w),
        &CpuEpilogue::bias(&bias, true),
        &mut y64,
    )?;
    // f32 sums of k terms err by about √k·2⁻²⁴ of their size.
    let tol = Tolerance::new(1e-5 * (k as f64).sqrt(), 1e-5).with_rel_l2(1e-3);
    let report = compare(&y_cpu, &y64, tol);
    println!("cpu::gemm vs gemm_f64: {report}");
    assert!(report.passed());

    let (device, note) = Device::auto();
    println!("{note}");
    let Some(probe) = device.gpu() else {
        println!("no GPU: ran the CPU part only");
        return Ok(());
    };

    // Your own cudarc context and stream; ampkit queues its kernels on that stream.
    let ctx = CudaContext::new(probe.info().ordinal)?;
    let stream = ctx.new_stream()?;
    let gpu = Gpu::from_stream(stream.clone())?;
    let (dx, dw) = (stream.clone_htod(&x)?, stream.clone_htod(&w)?);
    let db = stream.clone_htod(&bias)?;
    let mut dy = stream.alloc_zeros::<f32>(m * n)?;
    // Views work too: the bias is passed as a CudaView of the whole buffer.
    let db_view = db.slice(..);
    gemm(
        &gpu,
        shape,
        &dx,
        &dw,
        &Epilogue::bias(&db_view, true),
        &mut dy,
    )?;
    let y_gpu = stream.clone_dtoh(&dy)?; // waits for the GEMM

    let reference: Vec<f64> = y_cpu.iter().map(|&v| f64::from(v)).collect();
    let report = compare(&y_gpu, &reference, tol);
    println!("ops::gemm ({}) vs cpu::gemm: {report}", gpu.info().name);
    if !report.passed() {
        return Err("the GPU GEMM is outside the tolerance".into());
    }
    Ok(())
}
