//! `ampkit bench`: flags → [`crate::bench::Options`], the run, then the table, JSON and plot.

use crate::bench::{self, Options};
use ampkit::cuda::Gpu;
use ampkit::{Device, Error, Result};
use clap::Args;
use std::path::PathBuf;

/// Flags of `ampkit bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// 3 warm-ups + 10 timed runs per row (default 10 + 50).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Also draw a roofline PNG to PATH.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
    /// Run only rows whose "kind name shape" contains SUBSTRING (case-insensitive); the
    /// ceilings always run.
    #[arg(long, value_name = "SUBSTRING")]
    only: Option<String>,
    /// `auto` (GPU 0 if there is one, else the CPU reference), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// No per-row progress on stderr.
    #[arg(long)]
    no_progress: bool,
}

fn device(spec: &str) -> Result<Device> {
    match crate::cli::device_spec(spec)? {
        crate::cli::DeviceSpec::Auto => Ok(match Gpu::new(0) {
            Ok(gpu) => Device::Cuda(gpu),
            Err(e) => {
                let why = match e {
                    Error::NoCudaDevice { reason } => format!("no CUDA device ({reason})"),
                    e => format!("GPU 0 could not be opened ({e})"),
                };
                println!("{why}: benchmarking the CPU reference instead\n");
                Device::cpu()
            }
        }),
        crate::cli::DeviceSpec::Cpu => Ok(Device::cpu()),
        crate::cli::DeviceSpec::Cuda(n) => Device::cuda(n),
    }
}

/// `ampkit bench`. Prints the report; fails (after writing every output) if any row failed.
pub fn bench(a: BenchArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let opts = Options {
        quick: a.quick,
        only: a.only.clone(),
        progress: !a.no_progress,
    };
    let report = bench::run(&dev, &opts)?;
    print!("{}", report.text());
    if let Some(p) = &a.json {
        report.write_json(p)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.plot {
        bench::plot::roofline(p, &report)?;
        println!("wrote {}", p.display());
    }
    let failed = report.failures();
    if !failed.is_empty() {
        let names: Vec<String> = failed
            .iter()
            .map(|r| format!("{} {} {}", r.kind.as_str(), r.name, r.shape))
            .collect();
        return Err(Error::InvalidArgument {
            op: "ampkit bench",
            detail: format!("{} row(s) failed: {}", failed.len(), names.join("; ")),
        });
    }
    Ok(())
}
