//! Checkpoint directories in the layout Hugging Face's `Trainer` uses:
//!
//! - `model.safetensors`: the f32 master weights only, named like PyTorch's `nn.Sequential`
//!   `state_dict` (`0.weight` `[out, in]`, `0.bias`, `2.weight`, …), so
//!   `Sequential(...).load_state_dict(safetensors.torch.load_file(".../model.safetensors"))`
//!   works unchanged;
//! - `train_state.safetensors`: optimizer moments (`exp_avg.<name>`, `exp_avg_sq.<name>`) and,
//!   in its metadata, the optimizer step, scaler state and loop position (exact: floats as bit
//!   patterns);
//! - `config.json`: the run's [`TrainConfig`] and the loop position, human-readable.
//!
//! Every file is written to a temporary name, flushed to disk (`fsync`) and renamed over the old
//! one, then the directory itself is synced, so a crash mid-write leaves the previous file intact.
//! `config.json` goes last, and all three carry the global step: [`load`] refuses a directory
//! whose files disagree (a crash between two renames) instead of mixing two checkpoints.

use super::backend::BackendState;
use super::config::TrainConfig;
use crate::cpu::scaler::ScalerState;
use crate::error::{Error, Result};
use crate::nn::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Where the loop is: the resume point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Steps done in the current epoch.
    pub step_in_epoch: usize,
    /// Steps attempted in total (skipped ones included).
    pub global_step: u64,
    /// Skipped steps in total.
    pub skipped: u64,
}

/// `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConfigFile {
    format: String,
    train: TrainConfig,
    progress: Progress,
}

const FORMAT: &str = "ampkit-checkpoint-1";
const MODEL: &str = "model.safetensors";
const STATE: &str = "train_state.safetensors";
const CONFIG: &str = "config.json";

fn corrupt(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Writes `bytes` to `dir/name` atomically: temporary file, fsync, rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, "creating", e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(&tmp, "writing", e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, "syncing", e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, "renaming the new file onto", e))?;
    Ok(())
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

fn serialize(
    tensors: &[(String, Vec<usize>, &[f32])],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), f32_bytes(data)).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidArgument {
            op: "train::checkpoint::save",
            detail: e.to_string(),
        })?;
    safetensors::tensor::serialize(views, Some(meta)).map_err(|e| Error::InvalidArgument {
        op: "train::checkpoint::save",
        detail: e.to_string(),
    })
}

/// Saves a checkpoint into `dir` (created if missing; an older checkpoint there is replaced
/// file by file, atomically).
///
/// Errors: [`Error::Io`] naming the file when the directory or a file cannot be created,
/// written, synced or renamed; [`Error::Checkpoint`] when the state cannot be serialised.
pub fn save(
    dir: &Path,
    cfg: &TrainConfig,
    progress: &Progress,
    state: &BackendState,
) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating the checkpoint directory", e))?;
    let step = progress.global_step.to_string();

    let model: Vec<(String, Vec<usize>, &[f32])> = state
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone(), p.data.as_slice()))
        .collect();
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("global_step".to_string(), step.clone()),
    ]);
    write_atomic(dir, MODEL, &serialize(&model, meta)?)?;

    let mut moments: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for (p, (m, v)) in state
        .params
        .iter()
        .zip(state.exp_avg.iter().zip(&state.exp_avg_sq))
    {
        if !m.is_empty() {
            moments.push((format!("exp_avg.{}", p.name), p.shape.clone(), m.as_slice()));
        }
        if !v.is_empty() {
            moments.push((
                format!("exp_avg_sq.{}", p.name),
                p.shape.clone(),
                v.as_slice(),
            ));
        }
    }
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("global_step".to_string(), step.clone()),
        (
            "optimizer_step".to_string(),
            state.optimizer_step.to_string(),
        ),
        (
            "momentum_started".to_string(),
            state.momentum_started.to_string(),
        ),
        (
            "scale_bits".to_string(),
            format!("{:#010x}", state.scaler.scale.to_bits()),
        ),
        ("scale".to_string(), state.scaler.scale.to_string()),
        (
            "growth_tracker".to_string(),
            state.scaler.growth_tracker.to_string(),
        ),
    ]);
    write_atomic(dir, STATE, &serialize(&moments, meta)?)?;

    let config = ConfigFile {
        format: FORMAT.to_string(),
        train: cfg.clone(),
        progress: *progress,
    };
    let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::InvalidArgument {
        op: "train::checkpoint::save",
        detail: e.to_string(),
    })?;
    write_atomic(dir, CONFIG, &json)?;
    // The renames become durable only once the directory entry is on disk.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            corrupt(&path, format!("missing; a checkpoint directory holds {MODEL}, {STATE} and {CONFIG} (written by `ampkit train --save DIR`)"))
        } else {
            Error::io(&path, "reading", e)
        }
    })
}

fn meta<'a>(path: &Path, m: &'a Option<HashMap<String, String>>, key: &str) -> Result<&'a str> {
    m.as_ref()
        .and_then(|m| m.get(key))
        .map(String::as_str)
        .ok_or_else(|| corrupt(path, format!("metadata key {key:?} is missing")))
}

fn parse<T: std::str::FromStr>(path: &Path, key: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| corrupt(path, format!("metadata {key} = {v:?} is not valid")))
}

fn f32_tensor(path: &Path, st: &SafeTensors<'_>, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = st
        .tensor(name)
        .map_err(|e| corrupt(path, format!("tensor {name}: {e}")))?;
    if t.dtype() != Dtype::F32 {
        return Err(corrupt(
            path,
            format!("tensor {name} is {:?}, expected F32", t.dtype()),
        ));
    }
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((t.shape().to_vec(), data))
}

/// Loads a checkpoint directory: the run's configuration, where it stopped, and the backend
/// state. Missing, truncated, corrupted or mutually inconsistent files are
/// [`Error::Checkpoint`] errors naming the file.
pub fn load(dir: &Path) -> Result<(TrainConfig, Progress, BackendState)> {
    if !dir.is_dir() {
        return Err(corrupt(
            dir,
            "is not a directory (pass the DIR given to `ampkit train --save`)",
        ));
    }
    let config_path = dir.join(CONFIG);
    let config: ConfigFile = serde_json::from_slice(&read(dir, CONFIG)?)
        .map_err(|e| corrupt(&config_path, format!("not a valid config.json: {e}")))?;
    if config.format != FORMAT {
        return Err(corrupt(
            &config_path,
            format!("format {:?}, expected {FORMAT:?}", config.format),
        ));
    }
    config
        .train
        .validate()
        .map_err(|e| corrupt(&config_path, e.to_string()))?;
    let step = config.progress.global_step;

    let model_path = dir.join(MODEL);
    let model_bytes = read(dir, MODEL)?;
    let model = SafeTensors::deserialize(&model_bytes).map_err(|e| {
        corrupt(
            &model_path,
            format!("not a valid safetensors file (truncated?): {e}"),
        )
    })?;
    let (_, model_meta) = SafeTensors::read_metadata(&model_bytes)
        .map_err(|e| corrupt(&model_path, e.to_string()))?;
    let state_path = dir.join(STATE);
    let state_bytes = read(dir, STATE)?;
    let st = SafeTensors::deserialize(&state_bytes).map_err(|e| {
        corrupt(
            &state_path,
            format!("not a valid safetensors file (truncated?): {e}"),
        )
    })?;
    let (_, state_meta) = SafeTensors::read_metadata(&state_bytes)
        .map_err(|e| corrupt(&state_path, e.to_string()))?;
    for (path, m) in [
        (&model_path, model_meta.metadata()),
        (&state_path, state_meta.metadata()),
    ] {
        let s: u64 = parse(path, "global_step", meta(path, m, "global_step")?)?;
        if s != step {
            return Err(corrupt(
                dir,
                format!("{} is from step {s} but config.json from step {step}: the directory mixes two checkpoints (a save was interrupted); restore it from a copy", path.display()),
            ));
        }
    }

    let specs = config.train.model.parameter_specs();
    let mut params = Vec::with_capacity(specs.len());
    let (mut exp_avg, mut exp_avg_sq) = (Vec::new(), Vec::new());
    let names: Vec<&str> = st.names();
    for spec in &specs {
        let (shape, data) = f32_tensor(&model_path, &model, &spec.name)?;
        if shape != spec.shape {
            return Err(corrupt(
                &model_path,
                format!(
                    "{} has shape {shape:?}; the model in config.json needs {:?}",
                    spec.name, spec.shape
                ),
            ));
        }
        params.push(Tensor {
            name: spec.name.clone(),
            shape,
            data,
        });
        for (prefix, out) in [("exp_avg.", &mut exp_avg), ("exp_avg_sq.", &mut exp_avg_sq)] {
            let key = format!("{prefix}{}", spec.name);
            out.push(if names.contains(&key.as_str()) {
                let (shape, data) = f32_tensor(&state_path, &st, &key)?;
                if shape != spec.shape {
                    return Err(corrupt(
                        &state_path,
                        format!("{key} has shape {shape:?}, expected {:?}", spec.name),
                    ));
                }
                data
            } else {
                Vec::new()
            });
        }
    }
    if model.names().len() != specs.len() {
        return Err(corrupt(
            &model_path,
            format!(
                "holds {} tensors; the model has {}",
                model.names().len(),
                specs.len()
            ),
        ));
    }
    let m = state_meta.metadata();
    let scale_bits = meta(&state_path, m, "scale_bits")?;
    let scale = u32::from_str_radix(scale_bits.trim_start_matches("0x"), 16)
        .map(f32::from_bits)
        .map_err(|_| {
            corrupt(
                &state_path,
                format!("scale_bits {scale_bits:?} is not a hex bit pattern"),
            )
        })?;
    let state = BackendState {
        params,
        optimizer_step: parse(
            &state_path,
            "optimizer_step",
            meta(&state_path, m, "optimizer_step")?,
        )?,
        momentum_started: parse(
            &state_path,
            "momentum_started",
            meta(&state_path, m, "momentum_started")?,
        )?,
        exp_avg,
        exp_avg_sq,
        scaler: ScalerState {
            scale,
            growth_tracker: parse(
                &state_path,
                "growth_tracker",
                meta(&state_path, m, "growth_tracker")?,
            )?,
        },
    };
    Ok((config.train, config.progress, state))
}
