//! `ampkit bench`: how every kernel does against the card's own ceilings and against cuBLAS,
//! all measured in the same process, printed as the table `bench/pytorch_reference.py` prints
//! (same columns, and the same row names and shapes wherever the two run the same workload).
//!
//! # Method (GPU)
//!
//! - **Ceilings first.** `copy d2d`: `memcpy_dtod` of a 1 GiB f32 buffer, GB/s = bytes read +
//!   written (2 GiB) / t. `cuBLAS f16 gemm 8192^3`: [`ampkit::ops::blas::Blas::gemm_f16`],
//!   `Y = X·Wᵀ`, f16 out, TFLOP/s = 2·M·N·K / t.
//! - **Timing.** CUDA events between consecutive calls queued back to back; warm-up, then the
//!   median of the timed calls (10 + 50, `--quick` 3 + 10). Kernel rows first queue enough
//!   256 MiB device copies to keep the GPU busy while the host enqueues every timed call
//!   ("queue-ahead", the role `torch.cuda._sleep` plays in the PyTorch script), so host launch
//!   overhead drops out and the rows measure GPU time; the copies also evict the L2. Training rows
//!   do not queue ahead: a step's time includes any host overhead the GPU waits for.
//! - **GEMMs** (`kind = gemm`): [`ampkit::ops::gemm::gemm`] with the planner's choice and cuBLAS on
//!   the same operands, in alternating rounds (5 × 10 timed calls per side, `--quick` 2 × 5) so
//!   clock drift lands on both alike; each side's median is over all its timed calls. `rate` is
//!   TFLOP/s = 2·M·N·K / t, `% ceiling` of the cuBLAS 8192³ ceiling, `vs cuBLAS` = cuBLAS time /
//!   ampkit time at the same shape (> 1: faster than cuBLAS). The two results are compared
//!   (relative L2 ≤ 1e-2, else the row is an ERROR). The plan (`tile/splits`) is in the notes
//!   under the table and in the JSON.
//! - **Memory-bound kernels** (`kind = mem`): GB/s = bytes / t with the byte counts of
//!   `benches/*.rs` (see [`bytes`]), `% ceiling` of the copy GB/s. Inputs cycle through
//!   [`n_sets`] distinct sets (enough for 200 MB, more than the 50 MB L2), random, never zeros.
//!   `% copy same bytes` ([`Row::pct_copy_same_bytes`]): the rate as a percentage of a
//!   `memcpy_dtod` moving the row's bytes (`bytes / 2` read, `bytes / 2` written), timed exactly
//!   like the row (its own rotated sources, queue-ahead, median) and measured once per distinct
//!   size in the run; the sizes, times and rates are listed under the table. A copy of a
//!   kernel's size does not reach the 1 GiB copy's rate (launch ramp and tail: on an H100 a
//!   67 MB copy runs at about 84 % of it), so this column says how close the kernel is to what
//!   a copy of its size achieves, `% ceiling` how close it is to the card's bandwidth. Rows
//!   without bytes (the loss-scale update) leave it blank.
//! - **Training steps** (`kind = train`): [`ampkit::train::open_backend`] with mixed precision,
//!   Adam (lr 1e-3) and dynamic loss scaling, random inputs in [0, 1) and random labels; the
//!   median of per-step event times over consecutive steps (no host sync between steps; the
//!   step records are read back after the timed region). TFLOP/s = 6 · parameters · batch / t.
//!
//! Without a GPU (or with `--device cpu`) the CPU reference is measured instead with
//! `std::time::Instant` (see `cpu.rs`): a host copy ceiling, `cpu::gemm` at the MLP's shapes
//! (batch 1024), LayerNorm, softmax and cross-entropy at MNIST sizes, Adam on the MLP's
//! parameters and a CPU training step; no cuBLAS, so `vs cuBLAS` stays blank. `% copy same
//! bytes` is then against a host copy of the row's bytes, timed like the row.

pub mod bytes;
mod cpu;
mod gpu;
mod gpu_mem;
mod gpu_sweep;
pub mod plot;
pub mod report;
mod same_bytes;

pub use report::{Ceilings, Kind, Meta, Report, Row};

use ampkit::cpu::gemm::Layout;
use ampkit::Device;
use ampkit::Result;
use std::time::{SystemTime, UNIX_EPOCH};

/// What `ampkit bench` runs and how long.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// 3 warm-up + 10 timed calls per row instead of 10 + 50.
    pub quick: bool,
    /// Keep only rows whose `"kind name shape"` contains this (case-insensitive); the ceilings
    /// always run.
    pub only: Option<String>,
    /// Print each row to stderr as it completes.
    pub progress: bool,
}

impl Options {
    /// Untimed calls before the timed ones.
    pub fn warmup(&self) -> usize {
        if self.quick {
            3
        } else {
            10
        }
    }

    /// Timed calls per row (the median is reported).
    pub fn runs(&self) -> usize {
        if self.quick {
            10
        } else {
            50
        }
    }

    /// Alternating rounds per side of a GEMM row (ampkit, cuBLAS, ampkit, …); each round times
    /// `runs() / gemm_rounds()` calls.
    pub fn gemm_rounds(&self) -> usize {
        if self.quick {
            2
        } else {
            5
        }
    }

    fn setup_line(&self, device_specific: &str) -> String {
        format!(
            "{} warm-ups + {} timed runs, median; {device_specific}",
            self.warmup(),
            self.runs()
        )
    }
}

/// Benchmarks `device`: the GPU path for a CUDA device, the CPU reference otherwise.
///
/// A row whose workload fails becomes an ERROR row (the message in [`Row::error`]) and the run
/// goes on; only a failure to set the run up at all (e.g. the GPU's memory cannot hold the
/// random-data pool) is an `Err`.
pub fn run(device: &Device, opts: &Options) -> Result<Report> {
    match device {
        Device::Cpu => cpu::run(opts),
        Device::Cuda(gpu) => gpu::run(gpu, opts),
    }
}

/// Gathers rows as they run: applies `--only`, turns a failed workload into an ERROR row,
/// prints progress, and holds the ceilings the rows are measured against.
pub(crate) struct Collector {
    only: Option<String>,
    progress: bool,
    pub rows: Vec<Row>,
    pub ceilings: Ceilings,
    pub notes: Vec<String>,
}

impl Collector {
    pub fn new(opts: &Options) -> Collector {
        Collector {
            only: opts.only.clone(),
            progress: opts.progress,
            rows: Vec::new(),
            ceilings: Ceilings::default(),
            notes: Vec::new(),
        }
    }

    /// Runs `body` when the row is selected (always when `force`) and records its row, or an
    /// ERROR row with the error's message; returns the row's rate if it has one.
    pub fn row(
        &mut self,
        kind: Kind,
        name: &str,
        shape: &str,
        force: bool,
        body: impl FnOnce(&Ceilings) -> Result<Row>,
    ) -> Option<f64> {
        if !force && !selected(self.only.as_deref(), kind.as_str(), name, shape) {
            return None;
        }
        let row = body(&self.ceilings).unwrap_or_else(|e| Row::failed(kind, name, shape, &e));
        if self.progress {
            let cells: Vec<String> = row.cells().into_iter().filter(|c| !c.is_empty()).collect();
            eprintln!("{}", cells.join(" | "));
        }
        let rate = row.rate.filter(|_| row.error.is_none());
        self.rows.push(row);
        rate
    }

    pub fn into_report(self, meta: Meta) -> Report {
        Report {
            meta,
            ceilings: self.ceilings,
            rows: self.rows,
            notes: self.notes,
        }
    }
}

/// The training configuration every benchmarked step uses: the `ampkit train` defaults (mixed
/// precision, Adam at 1e-3, PyTorch's dynamic loss scaling) with these widths and batch.
pub(crate) fn train_config(dims: &[usize], batch: usize) -> ampkit::train::TrainConfig {
    use ampkit::nn::MlpConfig;
    use ampkit::train::TrainConfig;
    TrainConfig {
        model: MlpConfig {
            layers: dims.to_vec(),
            ..MlpConfig::mnist_default()
        },
        batch,
        ..TrainConfig::mnist_default()
    }
}

/// `n` random samples for a model of these widths: inputs in [0, 1), labels below the last
/// width.
pub(crate) fn train_data(dims: &[usize], n: usize, seed: u32) -> (Vec<f32>, Vec<u32>) {
    let inputs = dims.first().copied().unwrap_or(1);
    let classes = dims.last().copied().unwrap_or(1);
    (
        random_f32(n * inputs, seed, 0.0, 1.0),
        random_labels(n, classes, seed ^ 0x5EED),
    )
}

/// Bytes a pass over one input set must exceed: four times the H100's 50 MB L2.
pub const ROTATE_BYTES: f64 = 200e6;
/// Most distinct input sets one row allocates.
pub const MAX_SETS: usize = 2048;

/// Distinct input sets a row cycles through: `ceil(200 MB / bytes_per_call)`, at least 1, at
/// most [`MAX_SETS`] and at most `calls` (the warm-up and timed calls of the row: more sets
/// than calls would never be touched).
pub fn n_sets(bytes_per_call: f64, calls: usize) -> usize {
    if bytes_per_call.is_nan() || bytes_per_call <= 0.0 {
        return 1;
    }
    let want = (ROTATE_BYTES / bytes_per_call).ceil().min(MAX_SETS as f64) as usize;
    want.min(calls).max(1)
}

/// Whether a row is kept by `--only`: its `"kind name shape"` contains `only`,
/// case-insensitively (no filter keeps everything).
pub fn selected(only: Option<&str>, kind: &str, name: &str, shape: &str) -> bool {
    match only {
        None => true,
        Some(s) => format!("{kind} {name} {shape}")
            .to_lowercase()
            .contains(&s.to_lowercase()),
    }
}

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

/// One GEMM workload: the PyTorch script's `GEMM_CASES`, the same list as `benches/gemm.rs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GemmCase {
    pub name: &'static str,
    pub layout: Layout,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub f32_out: bool,
}

const fn gemm_case(
    name: &'static str,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    f32_out: bool,
) -> GemmCase {
    GemmCase {
        name,
        layout,
        m,
        n,
        k,
        f32_out,
    }
}

/// GEMM rows; `wgrad` rows get ` (f32 out)` appended to their name, as in the PyTorch script.
pub(crate) const GEMM_CASES: [GemmCase; 9] = [
    gemm_case("8192^3", Layout::Forward, 8192, 8192, 8192, false),
    gemm_case("4096^3", Layout::Forward, 4096, 4096, 4096, false),
    gemm_case(
        "mlp fwd 4096x512x784",
        Layout::Forward,
        4096,
        512,
        784,
        false,
    ),
    gemm_case(
        "mlp dgrad 4096x784x512",
        Layout::Dgrad,
        4096,
        784,
        512,
        false,
    ),
    gemm_case(
        "mlp wgrad 512x784x4096",
        Layout::Wgrad,
        512,
        784,
        4096,
        true,
    ),
    gemm_case(
        "mlp fwd2 4096x10x512",
        Layout::Forward,
        4096,
        10,
        512,
        false,
    ),
    gemm_case(
        "wide fwd 8192x4096x4096",
        Layout::Forward,
        8192,
        4096,
        4096,
        false,
    ),
    gemm_case(
        "wide dgrad 8192x4096x4096",
        Layout::Dgrad,
        8192,
        4096,
        4096,
        false,
    ),
    gemm_case(
        "wide wgrad 4096x4096x8192",
        Layout::Wgrad,
        4096,
        4096,
        8192,
        true,
    ),
];

impl GemmCase {
    /// The row name (`wgrad` rows say their output type).
    pub fn row_name(&self) -> String {
        if self.f32_out {
            format!("{} (f32 out)", self.name)
        } else {
            self.name.to_string()
        }
    }

    /// Elements of A and B in this layout.
    pub fn operand_lens(&self) -> (usize, usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        match self.layout {
            Layout::Forward => (m * k, n * k),
            Layout::Dgrad => (m * k, k * n),
            Layout::Wgrad => (k * m, k * n),
        }
    }

    /// Minimal traffic: both f16 operands read once, the output written once.
    pub fn bytes(&self) -> f64 {
        let (la, lb) = self.operand_lens();
        let out = if self.f32_out { 4 } else { 2 };
        (2 * (la + lb) + out * self.m * self.n) as f64
    }
}

/// LayerNorm rows: the PyTorch script's `LN_CASES`. The last moves ≥ 500 MB per call (forward
/// 537 MB, backward 806 MB), where a copy of the same bytes runs near its 1 GiB rate.
pub(crate) const LN_CASES: [(&str, usize, usize); 7] = [
    ("MLP 4096x512", 4096, 512),
    ("MLP 4096x10", 4096, 10),
    ("16384x1024", 16384, 1024),
    ("8192x2048", 8192, 2048),
    ("4096x4096", 4096, 4096),
    ("256x65536", 256, 65536),
    ("1024x65536", 1024, 65536),
];

/// Softmax and cross-entropy rows: the PyTorch script's `SM_CASES`. The last gives every row
/// ≥ 500 MB per call (f16 cross-entropy 537 MB; f32 softmax forward 1.07 GB, backward 1.61 GB).
pub(crate) const SM_CASES: [(&str, usize, usize); 7] = [
    ("MNIST 4096x10", 4096, 10),
    ("MLP 4096x512", 4096, 512),
    ("16384x1024", 16384, 1024),
    ("8192x2048", 8192, 2048),
    ("256x65536", 256, 65536),
    ("1024x65536", 1024, 65536),
    ("2048x65536", 2048, 65536),
];

/// The default MLP's parameter tensors (784·512, 512, 512·10, 10).
pub(crate) const MLP_TENSORS: [usize; 4] = [784 * 512, 512, 512 * 10, 10];

/// Training rows: (name, widths, batch), the PyTorch script's `TRAIN_CASES`.
pub(crate) const TRAIN_CASES: [(&str, &[usize], usize); 3] = [
    ("mlp 784-512-10 b256", &[784, 512, 10], 256),
    ("mlp 784-512-10 b4096", &[784, 512, 10], 4096),
    ("wide 4x4096 b8192", &[4096, 4096, 4096, 4096, 4096], 8192),
];

/// The shape column of a training row: widths joined by `-`, then ` x{batch}`.
pub fn train_shape(dims: &[usize], batch: usize) -> String {
    let widths: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("{} x{batch}", widths.join("-"))
}

/// `time` as ISO 8601 in UTC to the second, the way the PyTorch script writes its date
/// (`2025-01-31T12:00:00+00:00`).
pub fn utc_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A well-mixed 32-bit hash (murmur3's finaliser): the random data of every row.
pub(crate) fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 13;
    x = x.wrapping_mul(0xC2B2_AE35);
    x ^ (x >> 16)
}

/// Uniform in [0, 1) from index `i` of stream `seed`.
pub(crate) fn unit(i: usize, seed: u32) -> f32 {
    let h = hash32((i as u32) ^ hash32(seed.wrapping_add((i as u64 >> 32) as u32)));
    (h >> 8) as f32 / (1u32 << 24) as f32
}

/// `len` random values in `[lo, hi)` (never all equal, never all zero), filled in parallel.
pub(crate) fn random_f32(len: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v = vec![0f32; len];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = lo + (hi - lo) * unit((c << 16) + j, seed);
            }
        });
    v
}

/// `n` random labels below `classes`.
pub(crate) fn random_labels(n: usize, classes: usize, seed: u32) -> Vec<u32> {
    (0..n)
        .map(|i| hash32(i as u32 ^ hash32(seed)) % classes.max(1) as u32)
        .collect()
}

/// The median of `times` (the upper middle one for an even count); NaN for none.
pub(crate) fn median(times: &mut [f64]) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
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
        assert!(bytes::layernorm_fwd(16384, 1024) >= (64 << 20) as f64);
        assert_eq!(n_sets(128.0 * (1 << 20) as f64, 60), 2);
        assert_eq!(n_sets(8.0 * 4096.0 * 10.0, 10_000), 611);
        assert_eq!(n_sets(8.0 * 4096.0 * 10.0, 60), 60);
        assert_eq!(n_sets(1.0, 100_000), MAX_SETS);
        assert_eq!(n_sets(0.0, 60), 1);
        assert_eq!(n_sets(1e12, 60), 1);
    }

    #[test]
    fn every_memory_family_has_a_case_near_the_copy_asymptote() {
        let most = |v: &mut dyn Iterator<Item = f64>| v.fold(0.0, f64::max);
        let ln = most(&mut LN_CASES.iter().map(|&(_, r, c)| bytes::layernorm_fwd(r, c)));
        let xent16 = most(&mut SM_CASES.iter().map(|&(_, r, c)| bytes::xent(r, c, 2, 2)));
        let softmax = most(&mut SM_CASES.iter().map(|&(_, r, c)| bytes::softmax_fwd(r, c)));
        assert!(ln >= 5e8 && xent16 >= 5e8 && softmax >= 5e8);
        // The largest set (softmax backward, f32) stays far below the card's memory.
        let (_, r, c) = SM_CASES[SM_CASES.len() - 1];
        assert!(bytes::softmax_bwd(r, c) < 2e9);
    }

    #[test]
    fn selection_is_case_insensitive_over_kind_name_shape() {
        assert!(selected(None, "gemm", "8192^3", ""));
        assert!(selected(Some("GEMM"), "gemm", "8192^3", ""));
        assert!(!selected(Some("softmax"), "gemm", "8192^3", ""));
        assert!(selected(Some("384x"), "mem", "", "16384x1024"));
    }

    #[test]
    fn utc_dates() {
        let at = |s: u64| utc_date(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(at(1_735_689_599), "2024-12-31T23:59:59+00:00");
    }

    #[test]
    fn random_data_is_spread_and_never_constant() {
        let v = random_f32(100_000, 7, -2.0, 2.0);
        assert!(v.iter().all(|x| (-2.0..2.0).contains(x)));
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!(v.iter().filter(|&&x| x == 0.0).count() < 10);
        assert_ne!(random_f32(16, 1, 0.0, 1.0), random_f32(16, 2, 0.0, 1.0));
        let labels = random_labels(1000, 10, 3);
        assert!(labels.iter().all(|&l| l < 10));
        assert!((0..10).all(|c| labels.contains(&c)));
    }

    #[test]
    fn median_of_times() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 3.0);
        assert!(median(&mut []).is_nan());
    }
}
