//! The three files of a checkpoint: how they are encoded (byte-reproducibly, all three carrying
//! one content id) and decoded (every tensor's name, shape and values checked, and every file
//! checked to belong to the same save as `config.json`).

use super::Progress;
use crate::cpu::scaler::ScalerState;
use crate::error::{Error, Result};
use crate::nn::Tensor;
use crate::train::backend::BackendState;
use crate::train::config::TrainConfig;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The flat layout of earlier releases: the three files directly in the directory.
pub(super) const FORMAT_V1: &str = "ampkit-checkpoint-1";
/// The generation layout, whose files carry a checkpoint id.
pub(super) const FORMAT: &str = "ampkit-checkpoint-2";
pub(super) const MODEL: &str = "model.safetensors";
pub(super) const STATE: &str = "train_state.safetensors";
pub(super) const CONFIG: &str = "config.json";
/// The safetensors metadata key holding the checkpoint id.
const ID_KEY: &str = "checkpoint_id";
const SAVE: &str = "train::checkpoint::save";

pub(super) fn corrupt(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

fn refuse(detail: String) -> Error {
    Error::InvalidArgument { op: SAVE, detail }
}

/// Lowercase hex SHA-256 of `bytes`.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ConfigFile {
    pub format: String,
    /// Absent in [`FORMAT_V1`] files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub train: TrainConfig,
    pub progress: Progress,
    /// Training data file name → SHA-256 (hex); absent when the caller recorded none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<BTreeMap<String, String>>,
}

/// A tensor ready for safetensors: little-endian f32 bytes whatever the host's byte order.
struct Named {
    name: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Named {
    fn new(name: String, shape: &[usize], data: &[f32]) -> Named {
        Named {
            name,
            shape: shape.to_vec(),
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// One save, encoded: its id and the files of its generation (name, bytes).
pub(super) struct Encoded {
    pub id: String,
    pub global_step: u64,
    pub files: Vec<(&'static str, Vec<u8>)>,
}

/// Encodes a save. Refuses (before anything is written) a state that a load would reject, so a
/// diverged run cannot replace the last loadable checkpoint with an unloadable one.
pub(super) fn encode(
    cfg: &TrainConfig,
    progress: &Progress,
    state: &BackendState,
    data: Option<&BTreeMap<String, String>>,
) -> Result<Encoded> {
    cfg.validate()?;
    check_state(cfg, state)?;
    let step = progress.global_step.to_string();
    let model: Vec<Named> = state
        .params
        .iter()
        .map(|p| Named::new(p.name.clone(), &p.shape, &p.data))
        .collect();
    let mut moments = Vec::new();
    for (t, p) in state.params.iter().enumerate() {
        for (prefix, bufs) in [
            ("exp_avg", &state.exp_avg),
            ("exp_avg_sq", &state.exp_avg_sq),
        ] {
            if let Some(b) = bufs.get(t).filter(|b| !b.is_empty()) {
                moments.push(Named::new(format!("{prefix}.{}", p.name), &p.shape, b));
            }
        }
    }
    for (name, t) in fp8_names(&cfg.model).iter().zip(&state.fp8) {
        moments.push(Named::new(
            format!("{name}.amax_history"),
            &[t.history.len()],
            &t.history,
        ));
        moments.push(Named::new(format!("{name}.scale"), &[1], &[t.scale]));
    }
    let mut state_meta = BTreeMap::from([
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
    let mut config = ConfigFile {
        format: FORMAT.to_string(),
        id: None,
        train: cfg.clone(),
        progress: *progress,
        data: data.cloned(),
    };
    let id = content_id(&json(&config)?, &model, &moments, &json(&state_meta)?);
    state_meta.insert(ID_KEY.to_string(), id.clone());
    let model_meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("global_step".to_string(), step),
        (ID_KEY.to_string(), id.clone()),
    ]);
    config.id = Some(id.clone());
    let mut config_bytes = serde_json::to_vec_pretty(&config).map_err(|e| refuse(e.to_string()))?;
    config_bytes.push(b'\n');
    Ok(Encoded {
        id,
        global_step: progress.global_step,
        files: vec![
            (MODEL, safetensors_bytes(&model, &model_meta)?),
            (STATE, safetensors_bytes(&moments, &state_meta)?),
            (CONFIG, config_bytes),
        ],
    })
}

/// The checkpoint names of the FP8 scaling states, in [`BackendState::fp8`]'s order:
/// `fp8.{i}.input`, `fp8.{i}.weight`, `fp8.{i}.grad_output` per FP8 layer (`i` its `Sequential`
/// index), each saved as `<name>.amax_history` and `<name>.scale`.
fn fp8_names(model: &crate::nn::MlpConfig) -> Vec<String> {
    (0..model.linear_count())
        .filter(|&l| model.fp8_layer(l))
        .flat_map(|l| {
            let i = model.sequential_index(l);
            ["input", "weight", "grad_output"].map(|t| format!("fp8.{i}.{t}"))
        })
        .collect()
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| refuse(e.to_string()))
}

/// The checkpoint id: SHA-256 over everything the files hold except the id itself (the
/// configuration, loop position and data record, every tensor's name, shape and bytes, the
/// optimizer and scaler metadata), each field length-prefixed so no two contents hash alike by
/// concatenation. Identical saves get identical ids, so the files stay byte-reproducible, while
/// files of two different saves never share one.
fn content_id(config: &[u8], model: &[Named], moments: &[Named], meta: &[u8]) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(config);
    for t in model.iter().chain(moments) {
        field(t.name.as_bytes());
        let dims: Vec<u8> = t
            .shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        field(&dims);
        field(&t.bytes);
    }
    field(meta);
    format!("{:x}", h.finalize())
}

/// A safetensors file with its `__metadata__` keys in sorted order.
///
/// `safetensors::serialize` takes the metadata as a `HashMap` and writes it in the map's
/// (per-process random) iteration order, which made identical saves differ byte for byte. Its
/// tensor entries are already sorted, so the crate writes the file without metadata and the
/// sorted map is spliced in as the header's first key; tensor offsets are relative to the data
/// section, which stays as it was.
fn safetensors_bytes(tensors: &[Named], meta: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(Dtype::F32, t.shape.clone(), &t.bytes).map(|v| (t.name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| refuse(e.to_string()))?;
    let plain = safetensors::tensor::serialize(views, None).map_err(|e| refuse(e.to_string()))?;
    let malformed = || refuse("safetensors wrote a header this splice does not know".into());
    let n = plain
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(malformed)? as usize;
    let header = plain
        .get(8..8 + n)
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| h.trim_end_matches(' ').strip_prefix('{'))
        .ok_or_else(malformed)?;
    let meta = serde_json::to_string(meta).map_err(|e| refuse(e.to_string()))?;
    let mut spliced = format!("{{\"__metadata__\":{meta}");
    if header != "}" {
        spliced.push(',');
    }
    spliced.push_str(header);
    // The format pads the header with spaces to a multiple of 8 bytes, so the data section stays
    // aligned.
    while spliced.len() % 8 != 0 {
        spliced.push(' ');
    }
    let mut out = Vec::with_capacity(8 + spliced.len() + plain.len() - 8 - n);
    out.extend((spliced.len() as u64).to_le_bytes());
    out.extend(spliced.as_bytes());
    out.extend(&plain[8 + n..]);
    Ok(out)
}

/// The first element of `v` that is NaN or infinite, or negative when `nonnegative`.
fn first_bad(v: &[f32], nonnegative: bool) -> Option<(usize, f32)> {
    v.iter()
        .position(|x| !x.is_finite() || (nonnegative && *x < 0.0))
        .map(|i| (i, v[i]))
}

/// What [`encode`] refuses: parameters other than the model's, moments of the wrong length,
/// non-finite values, a loss scale that is not a positive finite number.
fn check_state(cfg: &TrainConfig, state: &BackendState) -> Result<()> {
    let specs = cfg.model.parameter_specs();
    let got: Vec<(&str, &[usize])> = state
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.shape.as_slice()))
        .collect();
    let want: Vec<(&str, &[usize])> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    if got != want {
        return Err(refuse(format!(
            "the state holds parameters {got:?}; the configuration's model has {want:?}"
        )));
    }
    if state.exp_avg.len() > state.params.len() || state.exp_avg_sq.len() > state.params.len() {
        return Err(refuse(format!(
            "the state holds {} exp_avg and {} exp_avg_sq buffers for {} parameters",
            state.exp_avg.len(),
            state.exp_avg_sq.len(),
            state.params.len()
        )));
    }
    for (t, p) in state.params.iter().enumerate() {
        let len: usize = p.shape.iter().product();
        let moments = [
            ("exp_avg", state.exp_avg.get(t), false),
            ("exp_avg_sq", state.exp_avg_sq.get(t), true),
        ];
        let saved = moments
            .into_iter()
            .filter_map(|(prefix, buf, nonnegative)| {
                let buf = buf.filter(|b| !b.is_empty())?;
                Some((format!("{prefix}.{}", p.name), buf, nonnegative))
            });
        for (name, data, nonnegative) in
            std::iter::once((p.name.clone(), &p.data, false)).chain(saved)
        {
            if data.len() != len {
                return Err(refuse(format!(
                    "{name} has {} values; its shape {:?} needs {len}",
                    data.len(),
                    p.shape
                )));
            }
            if let Some((i, v)) = first_bad(data, nonnegative) {
                return Err(refuse(format!(
                    "{name}[{i}] is {v}, which a checkpoint cannot hold (did training diverge?); \
                     nothing was written, the previous checkpoint stays in place"
                )));
            }
        }
    }
    let fp8 = fp8_names(&cfg.model);
    if state.fp8.len() != fp8.len() {
        return Err(refuse(format!(
            "the state holds {} FP8 scaling states; the configuration's model has {} FP8 tensors",
            state.fp8.len(),
            fp8.len()
        )));
    }
    for (name, t) in fp8.iter().zip(&state.fp8) {
        if t.history.len() != cfg.model.fp8.history_len || !(t.scale.is_finite() && t.scale > 0.0) {
            return Err(refuse(format!(
                "{name}: an amax history of {} steps (the recipe has {}) and scale {}",
                t.history.len(),
                cfg.model.fp8.history_len,
                t.scale
            )));
        }
    }
    let scale = state.scaler.scale;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(refuse(format!(
            "the loss scale is {scale}; it must be a positive finite number"
        )));
    }
    Ok(())
}

/// Parses and checks `config.json`: a known format, an id in the current one, a valid
/// configuration.
pub(super) fn decode_config(path: &Path, bytes: &[u8]) -> Result<ConfigFile> {
    let c: ConfigFile = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(path, format!("not a valid config.json: {e}")))?;
    match c.format.as_str() {
        FORMAT if c.id.is_none() => return Err(corrupt(path, "has no checkpoint id")),
        FORMAT | FORMAT_V1 => {}
        f => {
            return Err(corrupt(
                path,
                format!(
                    "format {f:?}; this ampkit reads {FORMAT:?} and {FORMAT_V1:?} (written by a \
                     newer ampkit?)"
                ),
            ))
        }
    }
    c.train
        .validate()
        .map_err(|e| corrupt(path, e.to_string()))?;
    Ok(c)
}

/// Short form of an id for messages.
fn short(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}

/// A parsed safetensors file that belongs to the same save as `config.json`.
struct SafeFile<'a> {
    path: &'a Path,
    st: SafeTensors<'a>,
    meta: HashMap<String, String>,
}

impl<'a> SafeFile<'a> {
    /// Parses `bytes` and checks that the file carries the configuration's id (current format)
    /// and global step (both formats): a file of another save would otherwise load silently.
    fn open(path: &'a Path, bytes: &'a [u8], config: &ConfigFile) -> Result<SafeFile<'a>> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            corrupt(
                path,
                format!("not a valid safetensors file (truncated?): {e}"),
            )
        })?;
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| corrupt(path, e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let f = SafeFile { path, st, meta };
        if let Some(id) = &config.id {
            let own = f.meta(ID_KEY)?;
            if own != id {
                return Err(corrupt(
                    path,
                    format!(
                        "belongs to checkpoint {}…, config.json to checkpoint {}…: the directory \
                         mixes two checkpoints; restore it from a copy",
                        short(own),
                        short(id)
                    ),
                ));
            }
        }
        let step: u64 = f.parse("global_step")?;
        let want = config.progress.global_step;
        if step != want {
            return Err(corrupt(
                path,
                format!(
                    "is from step {step} but config.json from step {want}: the directory mixes \
                     two checkpoints (a save was interrupted); restore it from a copy"
                ),
            ));
        }
        Ok(f)
    }

    fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| corrupt(self.path, format!("metadata key {key:?} is missing")))
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let v = self.meta(key)?;
        v.parse()
            .map_err(|_| corrupt(self.path, format!("metadata {key} = {v:?} is not valid")))
    }

    /// Tensor `name`: F32 of `shape` (`whose` says where the shape comes from), every value
    /// finite, and non-negative when `nonnegative`.
    fn f32(&self, name: &str, shape: &[usize], whose: &str, nonnegative: bool) -> Result<Vec<f32>> {
        let data = self.f32_any(name, shape, whose)?;
        if let Some((i, v)) = first_bad(&data, nonnegative) {
            return Err(corrupt(
                self.path,
                format!(
                    "tensor {name}[{i}] is {v} (of {} values): a checkpoint holds only finite \
                     values{}; the file is damaged, resume from another checkpoint",
                    data.len(),
                    if nonnegative { " ≥ 0 here" } else { "" }
                ),
            ));
        }
        Ok(data)
    }

    /// Tensor `name`: F32 of `shape`, any values (an FP8 amax history keeps the NaN amax of a
    /// step whose tensor held one).
    fn f32_any(&self, name: &str, shape: &[usize], whose: &str) -> Result<Vec<f32>> {
        let t = self
            .st
            .tensor(name)
            .map_err(|e| corrupt(self.path, format!("tensor {name}: {e}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(corrupt(
                self.path,
                format!("tensor {name} is {:?}, expected F32", t.dtype()),
            ));
        }
        if t.shape() != shape {
            return Err(corrupt(
                self.path,
                format!(
                    "tensor {name} has shape {:?}; {whose} needs {shape:?}",
                    t.shape()
                ),
            ));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// The master weights from `model.safetensors`, in the configuration's `state_dict` order.
pub(super) fn decode_model(path: &Path, bytes: &[u8], config: &ConfigFile) -> Result<Vec<Tensor>> {
    let f = SafeFile::open(path, bytes, config)?;
    let specs = config.train.model.parameter_specs();
    let mut params = Vec::with_capacity(specs.len());
    for spec in &specs {
        let data = f.f32(&spec.name, &spec.shape, "the model in config.json", false)?;
        params.push(Tensor {
            name: spec.name.clone(),
            shape: spec.shape.clone(),
            data,
        });
    }
    if f.st.len() != specs.len() {
        return Err(corrupt(
            path,
            format!(
                "holds {} tensors; the model in config.json has {}",
                f.st.len(),
                specs.len()
            ),
        ));
    }
    Ok(params)
}

/// The full backend state: `params` (from [`decode_model`]) with the optimizer moments, step and
/// scaler state from `train_state.safetensors`.
pub(super) fn decode_state(
    path: &Path,
    bytes: &[u8],
    config: &ConfigFile,
    params: Vec<Tensor>,
) -> Result<BackendState> {
    let f = SafeFile::open(path, bytes, config)?;
    let mut unknown: Vec<&str> = f.st.names();
    let (mut exp_avg, mut exp_avg_sq) = (Vec::new(), Vec::new());
    for p in &params {
        for (prefix, out, nonnegative) in [
            ("exp_avg.", &mut exp_avg, false),
            ("exp_avg_sq.", &mut exp_avg_sq, true),
        ] {
            let key = format!("{prefix}{}", p.name);
            let present = unknown.iter().position(|n| *n == key);
            out.push(match present {
                Some(i) => {
                    unknown.swap_remove(i);
                    f.f32(&key, &p.shape, "its parameter", nonnegative)?
                }
                None => Vec::new(),
            });
        }
    }
    let mut fp8 = Vec::new();
    let history = config.train.model.fp8.history_len;
    for name in fp8_names(&config.train.model) {
        let mut take = |key: String, len: usize| -> Result<Vec<f32>> {
            let i = (unknown.iter().position(|n| *n == key))
                .ok_or_else(|| corrupt(path, format!("tensor {key} is missing")))?;
            unknown.swap_remove(i);
            f.f32_any(&key, &[len], "the FP8 recipe in config.json")
        };
        let history = take(format!("{name}.amax_history"), history)?;
        let scale = take(format!("{name}.scale"), 1)?[0];
        if !(scale.is_finite() && scale > 0.0) {
            return Err(corrupt(
                path,
                format!("{name}.scale is {scale}; a saved scale is positive and finite"),
            ));
        }
        fp8.push(crate::cpu::fp8::ScalingState { history, scale });
    }
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(corrupt(
            path,
            format!("holds tensors the model in config.json has no parameter for: {unknown:?}"),
        ));
    }
    let bits = f.meta("scale_bits")?;
    let scale = u32::from_str_radix(bits.trim_start_matches("0x"), 16)
        .map(f32::from_bits)
        .map_err(|_| {
            corrupt(
                path,
                format!("scale_bits {bits:?} is not a hex bit pattern"),
            )
        })?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(corrupt(
            path,
            format!(
                "the loss scale (scale_bits {bits}) is {scale}; a saved scale is always a \
                 positive finite number, so the file is damaged: resume from another checkpoint"
            ),
        ));
    }
    Ok(BackendState {
        params,
        optimizer_step: f.parse("optimizer_step")?,
        momentum_started: f.parse("momentum_started")?,
        exp_avg,
        exp_avg_sq,
        scaler: ScalerState {
            scale,
            growth_tracker: f.parse("growth_tracker")?,
        },
        fp8,
    })
}
