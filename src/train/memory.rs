//! How much memory a run needs, computed with overflow-checked arithmetic before anything is
//! allocated, and compared with what the host (or the GPU) has free. Without this a model too
//! large for the machine aborts the process in the middle of allocating its parameters (Rust
//! aborts on a failed allocation) instead of returning an error that says what to change.
//!
//! The figures are upper bounds of the large buffers, not an exact account: per parameter the f32
//! master weight, its f16 copy, the f32 gradient and the optimizer's moments; per linear layer
//! the activations a step (or an evaluation batch) keeps and the temporaries it makes; on the GPU
//! the weight gradients' K-split slices where the GEMM planner splits them; and the f32 copies
//! of the data set. Small, fixed costs (kernel modules, cuBLAS workspace, scratch)
//! are covered by a fixed 256 MiB on the GPU and ignored on the host.

use super::backend::EVAL_BATCH;
use super::config::TrainConfig;
use crate::cpu::optim::OptimizerConfig;
use crate::cuda::Gpu;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::MlpConfig;

/// Device memory kept free for what the estimate does not itemise: the loaded kernel modules,
/// cuBLAS's workspace, the shared scratch buffer and the CUDA graph.
pub(crate) const GPU_SLACK: u64 = 256 << 20;

/// Parameters of the model, or `None` if the count overflows u64.
pub(crate) fn parameter_count(m: &MlpConfig) -> Option<u64> {
    let mut n: u64 = 0;
    for l in 0..m.layers.len().saturating_sub(1) {
        let (fan_in, out) = (m.layers[l] as u64, m.layers[l + 1] as u64);
        let ln = if m.layernorm && l + 2 < m.layers.len() {
            2
        } else {
            0
        };
        let layer = fan_in.checked_add(1 + ln)?.checked_mul(out)?;
        n = n.checked_add(layer)?;
    }
    Some(n)
}

/// Bytes per parameter that live as long as the backend: f32 master, f16 copy, f32 gradient and
/// the optimizer's moments (Adam's two, SGD's momentum buffer).
fn bytes_per_parameter(opt: &OptimizerConfig) -> u64 {
    let moments = match opt {
        OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => 2,
        OptimizerConfig::Sgd(c) if c.momentum != 0.0 => 1,
        OptimizerConfig::Sgd(_) => 0,
    };
    4 + 2 + 4 + 4 * moments
}

/// `Σ rows · (a·in + b·out)` over the linear layers: activations and temporaries of a pass.
fn per_layer(m: &MlpConfig, rows: u64, a: u64, b: u64) -> Option<u64> {
    let mut n: u64 = 0;
    for w in m.layers.windows(2) {
        let (fan_in, out) = (w[0] as u64, w[1] as u64);
        let row = a.checked_mul(fan_in)?.checked_add(b.checked_mul(out)?)?;
        n = n.checked_add(rows.checked_mul(row)?)?;
    }
    Some(n)
}

/// Host bytes of the CPU backend: parameters with gradients and moments, plus one step's (or
/// one evaluation batch's) activations and temporaries, f32 and f16 copies of each layer's
/// input and output through forward and backward (at most 12 bytes per input and 28 per output
/// value). `None` when the size overflows u64.
pub(crate) fn cpu_model_bytes(cfg: &TrainConfig) -> Option<u64> {
    let params = parameter_count(&cfg.model)?.checked_mul(bytes_per_parameter(&cfg.optimizer))?;
    let rows = cfg.batch.max(EVAL_BATCH) as u64;
    params.checked_add(per_layer(&cfg.model, rows, 12, 28)?)
}

/// Host bytes of the data during a CPU run: the f32 training and test sets, the epoch's
/// shuffled copy and the backend's copy of it, and the labels.
pub(crate) fn cpu_data_bytes(cfg: &TrainConfig, train_len: usize, test_len: usize) -> Option<u64> {
    let inputs = cfg.model.layers.first().copied().unwrap_or(0) as u64;
    let (n, m) = (train_len as u64, test_len as u64);
    let images = n.checked_mul(3)?.checked_add(m)?.checked_mul(inputs)?;
    images
        .checked_mul(4)?
        .checked_add(n.checked_add(m)?.checked_mul(12)?)
}

/// Device bytes of the GPU backend: parameters with gradients and moments, every layer's
/// buffers for `cfg.batch` rows (at most 4 bytes per input and 32 per output value, plus the
/// CUDA graph's staging buffer), and [`GPU_SLACK`].
pub(crate) fn gpu_model_bytes(cfg: &TrainConfig) -> Option<u64> {
    let params = parameter_count(&cfg.model)?.checked_mul(bytes_per_parameter(&cfg.optimizer))?;
    let rows = cfg.batch as u64;
    let layers = per_layer(&cfg.model, rows, 4, 32)?;
    let staging = rows.checked_mul(cfg.model.layers.first().copied().unwrap_or(0) as u64 + 1)?;
    params
        .checked_add(layers)?
        .checked_add(staging.checked_mul(4)?)?
        .checked_add(fp8_bytes(&cfg.model, rows)?)?
        .checked_add(GPU_SLACK)
}

/// Device bytes of the FP8 layers' casts (`--precision fp8`): per FP8 layer its input, weight
/// and output gradient in FP8, each also transposed (the transposes padded to 16 rows), its
/// output's ReLU mask (a bit per element, in 32-bit words per row), its bias gradient's tile
/// sums (f32 per 64 rows and column), and three amax histories with their scales.
fn fp8_bytes(m: &MlpConfig, rows: u64) -> Option<u64> {
    let mut n: u64 = 0;
    for l in (0..m.linear_count()).filter(|&l| m.fp8_layer(l)) {
        let (fan_in, out) = (m.layers[l] as u64, m.layers[l + 1] as u64);
        let acts = rows
            .checked_add(16)?
            .checked_mul(fan_in.checked_add(out)?)?;
        let weight = fan_in.checked_mul(out)?;
        let history = (m.fp8.history_len as u64)
            .checked_add(2)?
            .checked_mul(3 * 4)?;
        let mask = rows.checked_mul(out.div_ceil(32).checked_mul(4)?)?;
        let bias_sums = rows.div_ceil(64).checked_mul(out.checked_mul(4)?)?;
        n = n.checked_add(
            acts.checked_add(weight)?
                .checked_mul(2)?
                .checked_add(history)?
                .checked_add(mask)?
                .checked_add(bias_sums)?,
        )?;
    }
    Some(n)
}

/// Device bytes of the data during a GPU run: the resident training set (f32, twice while a
/// replacement is uploaded), the set uploaded for the end-of-epoch evaluation, the labels, the
/// epoch's plan (an index and two shifts per sample) and the per-step records.
pub(crate) fn gpu_data_bytes(cfg: &TrainConfig, train_len: usize, test_len: usize) -> Option<u64> {
    let inputs = cfg.model.layers.first().copied().unwrap_or(0) as u64;
    let n = (train_len.max(test_len)) as u64;
    n.checked_mul(inputs)?
        .checked_mul(3 * 4)?
        .checked_add(n.checked_mul(4 + 12 + 12)?)
}

/// Bytes the host can still allocate: `MemAvailable` from `/proc/meminfo`, lowered to the
/// cgroup's remaining limit where one is set (in a container `MemAvailable` describes the whole
/// machine). `None` where neither can be read (not Linux).
pub(crate) fn host_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut avail = kib.checked_mul(1024)?;
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    if let (Some(max), Some(cur)) = (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        avail = avail.min(max.saturating_sub(cur));
    }
    Some(avail)
}

/// [`Error::InsufficientMemory`] unless `needed` (`None`: it overflowed) fits in what the host
/// has available (or, where that is unknown, in the largest allocation Rust allows).
pub(crate) fn check_host(what: &str, needed: Option<u64>, hint: &str) -> Result<()> {
    let available = host_available().unwrap_or(isize::MAX as u64);
    check(what, needed, available, "the host", hint)
}

/// [`Error::InsufficientMemory`] unless `needed` (`None`: it overflowed) fits in the GPU's free
/// memory. Errors: [`Error::Driver`] if the free memory cannot be read.
pub(crate) fn check_gpu(gpu: &Gpu, what: &str, needed: Option<u64>, hint: &str) -> Result<()> {
    let (free, _) = gpu.memory()?;
    let i = gpu.info();
    let device = format!("cuda:{} ({})", i.ordinal, i.name);
    check(what, needed, free as u64, &device, hint)
}

fn check(what: &str, needed: Option<u64>, available: u64, device: &str, hint: &str) -> Result<()> {
    match needed {
        Some(n) if n <= available => Ok(()),
        n => Err(Error::InsufficientMemory {
            what: what.to_string(),
            device: device.to_string(),
            needed: n.unwrap_or(u64::MAX),
            available,
            hint: hint.to_string(),
        }),
    }
}

/// What a model is, for the messages: "the model 784→3000000→10 (2385000010 parameters, adam,
/// batch 64)".
fn describe(cfg: &TrainConfig) -> String {
    let widths: Vec<String> = cfg.model.layers.iter().map(usize::to_string).collect();
    let params = parameter_count(&cfg.model).map_or("too many".to_string(), |n| n.to_string());
    let opt = match cfg.optimizer {
        OptimizerConfig::Adam(_) => "adam",
        OptimizerConfig::AdamW(_) => "adamw",
        OptimizerConfig::Sgd(_) => "sgd",
    };
    format!(
        "the model {} ({params} parameters, {opt}, batch {})",
        widths.join("→"),
        cfg.batch
    )
}

/// What to change when a model does not fit.
const MODEL_HINT: &str = "use fewer or narrower layers or a smaller batch";

/// The CPU backend's own check: [`cpu_model_bytes`] against the host's available memory.
/// Rust aborts the process when an allocation fails, so a model that cannot fit is refused
/// before any of it is allocated.
///
/// Errors: [`Error::InsufficientMemory`].
pub(crate) fn check_cpu_model(cfg: &TrainConfig) -> Result<()> {
    let what = format!("training {} on the CPU", describe(cfg));
    check_host(&what, cpu_model_bytes(cfg), MODEL_HINT)
}

/// The GPU backend's own check: [`gpu_model_bytes`] against the GPU's free memory, and the
/// parameters' host-side initial values (f32, and the f16 copy made for the upload) against
/// the host's, before either is allocated.
///
/// Errors: [`Error::InsufficientMemory`]; [`Error::Driver`] if the free memory cannot be read.
pub(crate) fn check_gpu_model(gpu: &Gpu, cfg: &TrainConfig) -> Result<()> {
    let what = describe(cfg);
    let needed = gpu_model_bytes(cfg).and_then(|n| n.checked_add(wgrad_slice_bytes(gpu, cfg)?));
    check_gpu(gpu, &format!("training {what}"), needed, MODEL_HINT)?;
    let host = parameter_count(&cfg.model).and_then(|n| n.checked_mul(6));
    check_host(&format!("preparing {what} for the GPU"), host, MODEL_HINT)
}

/// Device bytes of the GPU backend's weight-gradient slice buffers: for each f16 layer whose
/// weight gradient a step leaves in slices at the configured batch on `gpu` (the GEMM planner's
/// K-splits, or the fused head's slices for the last layer), that many f32 copies of the weight
/// (`train::gpu_layers`; the unscale adds them).
fn wgrad_slice_bytes(gpu: &Gpu, cfg: &TrainConfig) -> Option<u64> {
    let model = &cfg.model;
    let count = model.linear_count();
    (0..count)
        .filter(|&l| model.half_layer(l))
        .try_fold(0u64, |sum, l| {
            let (fan_in, out) = (model.layers[l], model.layers[l + 1]);
            let last = l + 1 == count;
            let splits = crate::ops::head::step_weight_slices(gpu, out, fan_in, cfg.batch, last);
            let bytes = if splits > 1 {
                (splits as u64)
                    .checked_mul(out as u64)?
                    .checked_mul(fan_in as u64)?
                    .checked_mul(4)?
            } else {
                0
            };
            sum.checked_add(bytes)
        })
}

/// Checks the whole run (model, batch and data) against the host and, for a GPU, the device,
/// before anything is allocated for it. The backends check their own part again when built.
///
/// Errors: [`Error::InsufficientMemory`] saying how much was needed and how much is available;
/// [`Error::Driver`] if a GPU's free memory cannot be read.
pub fn check_run(
    device: &Device,
    cfg: &TrainConfig,
    train_len: usize,
    test_len: usize,
) -> Result<()> {
    let what = describe(cfg);
    match device {
        Device::Cpu => {
            let need = cpu_model_bytes(cfg)
                .and_then(|m| m.checked_add(cpu_data_bytes(cfg, train_len, test_len)?));
            check_host(&format!("training {what} on the CPU"), need, MODEL_HINT)
        }
        Device::Cuda(gpu) => {
            let need = gpu_model_bytes(cfg)
                .and_then(|m| m.checked_add(wgrad_slice_bytes(gpu, cfg)?))
                .and_then(|m| m.checked_add(gpu_data_bytes(cfg, train_len, test_len)?));
            check_gpu(gpu, &format!("training {what}"), need, MODEL_HINT)?;
            // The host keeps the f32 data and builds the parameters before uploading them.
            let host = parameter_count(&cfg.model)
                .and_then(|p| p.checked_mul(6))
                .and_then(|p| p.checked_add(cpu_data_bytes(cfg, train_len, test_len)?));
            check_host(&format!("preparing {what} for the GPU"), host, MODEL_HINT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(layers: Vec<usize>) -> TrainConfig {
        let mut c = TrainConfig::mnist_default();
        c.model.layers = layers;
        c
    }

    #[test]
    fn counts_match_the_model() {
        let c = TrainConfig::mnist_default();
        assert_eq!(
            parameter_count(&c.model),
            Some(c.model.parameter_count() as u64)
        );
        let mut ln = cfg(vec![4, 8, 8, 2]);
        ln.model.layernorm = true;
        assert_eq!(
            parameter_count(&ln.model),
            Some(ln.model.parameter_count() as u64)
        );
        // Adam: 4 + 2 + 4 + 8 bytes per parameter, plus activations.
        let b = cpu_model_bytes(&c).unwrap();
        assert!(b > 18 * 407_050 && b < 18 * 407_050 + (64 << 20), "{b}");
    }

    #[test]
    fn huge_models_overflow_or_exceed_the_host() {
        let e = check_host(
            "x",
            cpu_model_bytes(&cfg(vec![784, 2_000_000_000_000, 10])),
            "h",
        )
        .unwrap_err();
        assert!(matches!(e, Error::InsufficientMemory { .. }), "{e}");
        assert_eq!(
            cpu_model_bytes(&cfg(vec![usize::MAX, usize::MAX, 10])),
            None
        );
        let e = check_host("y", None, "smaller").unwrap_err();
        assert!(e.to_string().contains("more than 2^64 bytes"), "{e}");
        assert!(e.to_string().contains("smaller"), "{e}");
        check_host("z", cpu_model_bytes(&TrainConfig::mnist_default()), "h").unwrap();
    }
}
