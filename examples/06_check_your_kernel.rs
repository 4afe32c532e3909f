//! Check your own kernel against an `ampkit::cpu` reference with the tolerance harness
//! (`ampkit::check`), the way ampkit's own tests check its kernels: a reference in f64, a
//! tolerance derived from the arithmetic, inputs that include the hard cases, poisoned outputs.
//!
//! "Your kernel" is a row softmax: on the CPU, two hand-written f32 versions (a correct one, and a
//! naive one that skips the max subtraction, which the harness catches); on a GPU, the same
//! softmax as CUDA C++ compiled at run time with NVRTC and launched on ampkit's stream.
//!
//! cargo run --release --example 06_check_your_kernel

use ampkit::check::{compare, unwritten, Report, Tolerance};
use ampkit::cpu::softmax;
use ampkit::cuda::Gpu;
use ampkit::Device;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use rand::{rngs::StdRng, Rng, SeedableRng};

const ROWS: usize = 64;
const COLS: usize = 100;

/// A softmax kernel of your own, in f32 (multiplying by 1/sum instead of dividing: allowed,
/// within the tolerance).
fn my_softmax(x: &[f32], y: &mut [f32], naive: bool) {
    for (x, y) in x.chunks(COLS).zip(y.chunks_mut(COLS)) {
        let m = if naive {
            0.0
        } else {
            x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        };
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - m).exp();
        }
        let inv = 1.0 / y.iter().sum::<f32>();
        y.iter_mut().for_each(|v| *v *= inv);
    }
}

/// The same kernel in CUDA C++: one thread per row.
const MY_KERNEL: &str = r#"
extern "C" __global__ void my_softmax(const float* x, float* y, int rows, int cols) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * cols;
    float* yr = y + (size_t)r * cols;
    float m = __int_as_float(0xff800000);  // -inf
    for (int j = 0; j < cols; ++j) m = fmaxf(m, xr[j]);
    float s = 0.0f;
    for (int j = 0; j < cols; ++j) { yr[j] = expf(xr[j] - m); s += yr[j]; }
    float inv = 1.0f / s;
    for (int j = 0; j < cols; ++j) yr[j] *= inv;
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Random logits, with the cases that break softmaxes: large logits (exp overflows without
    // the max subtraction) and -inf (masked entries, which must give exactly 0).
    let mut rng = StdRng::seed_from_u64(6);
    let mut x: Vec<f32> = (0..ROWS * COLS).map(|_| rng.gen_range(-8.0..8.0)).collect();
    x[3 * COLS..4 * COLS].iter_mut().for_each(|v| *v += 200.0);
    x[5 * COLS + 7] = f32::NEG_INFINITY;

    // The reference: ampkit's CPU softmax run in f64.
    let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let mut want = vec![0f64; x.len()];
    softmax::forward(&x64, ROWS, COLS, &mut want)?;

    // f32 arithmetic over a row of 100: a few ulps relative; 1e-30 absolute for outputs that
    // underflow to subnormals.
    let tol = Tolerance::new(1e-30, 1e-5);
    let poison = f32::from_bits(0x7FC0_DEAD); // a NaN no kernel writes by accident
    let check = |what: &str, got: &[f32]| -> Report {
        let report = compare(got, &want, tol);
        let missed = unwritten(got, poison).len();
        println!(
            "{what}: {} ({missed} never written)",
            if report.passed() && missed == 0 {
                "PASS"
            } else {
                "FAIL"
            }
        );
        println!("  {report}");
        report
    };

    println!("CPU: your kernels against ampkit::cpu::softmax (f64)");
    let mut y = vec![poison; x.len()];
    my_softmax(&x, &mut y, false);
    assert!(check("my_softmax", &y).passed());
    let mut y = vec![poison; x.len()];
    my_softmax(&x, &mut y, true);
    assert!(
        !check("naive my_softmax (no max subtraction: must FAIL)", &y).passed(),
        "the harness catches the NaN row"
    );

    let (device, note) = Device::auto();
    println!("{note}");
    let Some(gpu) = device.gpu() else {
        println!("no GPU: ran the CPU part only");
        return Ok(());
    };
    // SAFETY: only probes whether the NVRTC library can be loaded; nothing is called.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!("NVRTC (libnvrtc) not found: skipping the run-time compiled kernel");
        return Ok(());
    }
    println!("GPU: your kernel, compiled with NVRTC, on ampkit's stream");
    let got = run_on_gpu(gpu, &x, poison)?;
    if !check("my_softmax (CUDA)", &got).passed() {
        return Err("the CUDA kernel is outside the tolerance".into());
    }
    Ok(())
}

fn run_on_gpu(gpu: &Gpu, x: &[f32], poison: f32) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let ptx = cudarc::nvrtc::compile_ptx(MY_KERNEL)?;
    let module = gpu.context().load_module(ptx)?; // ampkit's context, your module
    let kernel = module.load_function("my_softmax")?;
    let dx = gpu.upload(x)?;
    let mut dy = gpu.upload(&vec![poison; x.len()])?;
    let (rows, cols) = (ROWS as i32, COLS as i32);
    let mut launch = gpu.stream().launch_builder(&kernel);
    launch.arg(&dx).arg(&mut dy).arg(&rows).arg(&cols);
    // SAFETY: the arguments match the kernel's parameters, and both buffers hold rows·cols f32.
    unsafe { launch.launch(LaunchConfig::for_num_elems(ROWS as u32)) }?;
    Ok(gpu.download(&dy)?)
}
