//! Query the GPU through the library, like `ampkit info`: what it is, its memory, and every
//! embedded kernel module loaded (and timed) into it. Without a GPU: the reason, and the modules.
//!
//! cargo run --release --example 01_device

use ampkit::cuda::Gpu;
use ampkit::{kernels, Error};
use std::time::Instant;

fn main() -> ampkit::Result<()> {
    println!(
        "ampkit {}: {} kernel modules, PTX from {}",
        env!("CARGO_PKG_VERSION"),
        kernels::ALL.len(),
        kernels::PTX_ORIGIN
    );
    let gpu = match Gpu::new(0) {
        Ok(gpu) => gpu,
        Err(Error::NoCudaDevice { reason }) => {
            println!("no GPU: {reason}");
            println!("CPU part: the embedded modules (loaded into the driver only on a GPU)");
            for m in &kernels::ALL {
                println!(
                    "  {:<10} {:<11} {:>3} kernels",
                    m.name,
                    m.arch,
                    m.entry_points().count()
                );
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };

    let info = gpu.info();
    let (major, minor) = info.compute_capability;
    let (free, total) = gpu.memory()?;
    let gib = |b: usize| b as f64 / f64::from(1u32 << 30);
    println!("cuda:{} {}", info.ordinal, info.name);
    println!(
        "  compute capability {major}.{minor} (sm_{major}{minor}), {} SMs",
        info.multiprocessors
    );
    println!(
        "  memory {:.1} GiB total, {:.1} GiB free",
        gib(total),
        gib(free)
    );
    println!(
        "  driver CUDA {}.{}",
        info.driver_version / 1000,
        (info.driver_version % 1000) / 10
    );

    // The ops load modules on first use; loading them all up front checks that the driver accepts
    // this build's kernels and says which image it took: SASS built for this GPU, or PTX it
    // JIT-compiles (slow the first time on a machine, then cached by the driver).
    for m in &kernels::ALL {
        if m.arch.starts_with("compute_90") && info.compute_capability != (9, 0) {
            println!(
                "  {:<10} {:<11} Hopper only: not loaded on sm_{major}{minor}",
                m.name, m.arch
            );
            continue;
        }
        let t = Instant::now();
        let image = gpu.load_module(m)?;
        println!(
            "  {:<14} {:<16} {:>3} kernels, loaded in {:.1} ms",
            m.name,
            image.to_string(),
            m.entry_points().count(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    // The context and stream are cudarc's: use them for your own work, in order with ampkit's.
    let ones = gpu
        .stream()
        .clone_htod(&[1.0f32; 4])
        .map_err(Error::driver("uploading"))?;
    println!(
        "cudarc interop: a {}-element buffer on ampkit's stream; loaded modules: {:?}",
        ones.len(),
        gpu.loaded_modules()
    );
    Ok(())
}
