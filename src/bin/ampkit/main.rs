//! The `ampkit` command line.

use ampkit::cuda::Gpu;
use ampkit::{kernels, Device, Error};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;
use std::time::Instant;

mod bench;
mod cli;
mod cli_bench;
mod cli_resume;
mod train_args;

#[derive(Parser)]
#[command(
    name = "ampkit",
    version,
    about = "Mixed-precision training kernels: CUDA with a Rust host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the GPU (name, compute capability, memory, driver) and load every kernel module.
    Info {
        /// `auto` (GPU 0, or the kernel list without loading when there is none), `cpu` (the
        /// kernel list only), `cuda` or `cuda:N`.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Train an MLP with mixed precision (default: 784→512→10 on the bundled MNIST split, on the
    /// GPU if there is one).
    Train(Box<train_args::TrainArgs>),
    /// Test accuracy of a checkpoint.
    Eval(train_args::EvalArgs),
    /// Every kernel against the card's copy and cuBLAS ceilings, measured in the same run (the
    /// CPU reference without a GPU).
    Bench(cli_bench::BenchArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Info { device } => info(&device),
        Command::Train(args) => {
            let given = cli_resume::Given::new(matches.subcommand_matches("train"));
            cli::train(*args, &given)
        }
        Command::Eval(args) => cli::eval(args),
        Command::Bench(args) => cli_bench::bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ampkit: error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error as a command-line user needs it: the library's advice on a missing GPU names Rust
/// calls, so the CLI gives the flag instead.
fn message(e: &Error) -> String {
    match e {
        Error::NoCudaDevice { reason } => format!(
            "no CUDA device: {reason}. Use --device cpu to run on the CPU (--device auto falls \
             back to it by itself)"
        ),
        e => e.to_string(),
    }
}

/// The kernel modules without loading them (no GPU, or `--device cpu`).
fn list_modules(why: &str) {
    println!("device: {} — {why}", Device::cpu());
    for m in &kernels::ALL {
        let entries = m.entry_points().count();
        let sass = if m.sass.is_empty() {
            "no SASS".to_string()
        } else {
            format!("SASS {}", m.sass.join(" "))
        };
        println!(
            "  {:<14} {:<12} {entries:>3} kernels  {sass} ({} KB)  (not loaded: no GPU)",
            m.name,
            m.arch,
            m.fatbin.len().div_ceil(1024)
        );
    }
}

fn info(spec: &str) -> ampkit::Result<()> {
    println!("ampkit {}", env!("CARGO_PKG_VERSION"));
    println!(
        "kernels: {} module(s), PTX from {}, SASS from {}",
        kernels::ALL.len(),
        kernels::PTX_ORIGIN,
        kernels::SASS_ORIGIN
    );
    let gpu = match cli::device_spec(spec)? {
        cli::DeviceSpec::Cpu => {
            list_modules("--device cpu");
            return Ok(());
        }
        cli::DeviceSpec::Auto => match Gpu::new(0) {
            Ok(gpu) => gpu,
            Err(Error::NoCudaDevice { reason }) => {
                list_modules(&format!("no CUDA device: {reason}"));
                return Ok(());
            }
            Err(e) => return Err(e),
        },
        // A GPU asked for by number must exist.
        cli::DeviceSpec::Cuda(n) => Gpu::new(n)?,
    };
    let i = gpu.info();
    let (free, total) = gpu.memory()?;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    println!("device: {}", Device::Cuda(gpu.clone()));
    println!("  name:               {}", i.name);
    println!(
        "  compute capability: {}.{} (sm_{}{})",
        i.compute_capability.0,
        i.compute_capability.1,
        i.compute_capability.0,
        i.compute_capability.1
    );
    println!("  multiprocessors:    {}", i.multiprocessors);
    println!(
        "  memory:             {:.1} GiB total, {:.1} GiB free",
        gib(total),
        gib(free)
    );
    println!(
        "  driver:             CUDA {}.{}",
        i.driver_version / 1000,
        (i.driver_version % 1000) / 10
    );
    println!("loaded modules:");
    let all = Instant::now();
    for m in &kernels::ALL {
        if m.arch.starts_with("compute_90") && i.compute_capability != (9, 0) {
            println!(
                "  {:<14} {:<12} (Hopper only: not loaded on this GPU)",
                m.name, m.arch
            );
            continue;
        }
        let t = Instant::now();
        // Loading fetches every entry point too, so this is the whole cost of first use.
        let image = gpu.load_module(m)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "  {:<14} {:<20} {:>3} kernels  loaded in {ms:.1} ms",
            m.name,
            image.to_string(),
            m.entry_points().count()
        );
    }
    println!(
        "  all modules loaded in {:.1} ms",
        all.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
