//! Checkpoint directories: crash-safe sets of three files in the layout Hugging Face's `Trainer`
//! uses, committed as one unit.
//!
//! # The files of a checkpoint
//!
//! - `model.safetensors`: the f32 master weights only, named like PyTorch's `nn.Sequential`
//!   `state_dict` (`0.weight` `[out, in]`, `0.bias`, `2.weight`, …), so
//!   `Sequential(...).load_state_dict(safetensors.torch.load_file(".../model.safetensors"))`
//!   works unchanged;
//! - `train_state.safetensors`: optimizer moments (`exp_avg.<name>`, `exp_avg_sq.<name>`) and,
//!   in its metadata, the optimizer step, scaler state and loop position (exact: floats as bit
//!   patterns);
//! - `config.json`: the run's [`TrainConfig`], the loop position and, when the caller passed one,
//!   the training data's identity (file name → SHA-256), human-readable.
//!
//! # The directory
//!
//! ```text
//! DIR/
//!   manifest.json     the commit record: which generation is the checkpoint, its id, the
//!                     SHA-256 of each of its files, and "model": "gen-000007/model.safetensors"
//!   latest -> gen-000007    symlink to the committed generation (Unix file systems with symlinks)
//!   gen-000007/       model.safetensors, train_state.safetensors, config.json
//! ```
//!
//! Outside ampkit, read `DIR/latest/model.safetensors`, or the path in `manifest.json`'s
//! `"model"` (on every platform). [`save`] writes a new generation directory next to the
//! committed one, syncs its files and the directories, then commits it by writing the manifest
//! to a temporary file, syncing it and renaming it over `manifest.json`, and syncs `DIR` again.
//! Killed at any instant, the directory still loads as the last committed checkpoint: the
//! previous generation is removed only after the new manifest is in place. After the commit
//! `latest` is moved (again by renaming a temporary symlink over it) and every other generation
//! is removed, so a directory holds exactly one generation between saves. Half-written
//! generations and temporary files left by a crash are removed by the next save, never by
//! [`load`], which only reads.
//!
//! # Identity and integrity
//!
//! All three files carry the same checkpoint id (the safetensors metadata key `checkpoint_id`,
//! and `config.json`'s `"id"`), and the manifest records it with each file's SHA-256. [`load`]
//! checks the hashes and the ids and names the first file that does not match, so files of two
//! saves never load as one checkpoint.
//!
//! The id is derived from the content, not drawn at random: it is the SHA-256 of everything the
//! files hold except the id (configuration, loop position, data record, every tensor's name,
//! shape and bytes, the optimizer and scaler metadata). Two different saves therefore never share
//! an id, which is all the mix check needs, while two identical runs write byte-identical files
//! (a random id per save would make every save differ). For the same reason the safetensors
//! metadata is written with its keys sorted.
//!
//! Every value is checked when loading: a NaN or infinite weight or moment, a negative
//! `exp_avg_sq`, or a loss scale that is not a positive finite number is an
//! [`Error::Checkpoint`](crate::Error::Checkpoint) naming the tensor and the first offending index (or the scale); [`save`]
//! refuses such a state before writing anything, so a diverged run keeps its last good
//! checkpoint.
//!
//! # Earlier layout
//!
//! Checkpoints of earlier releases (format `ampkit-checkpoint-1`: the three files directly in
//! `DIR`, no id) still load; their files are checked to be from the same global step. The first
//! save into such a directory migrates it: the flat files are removed once the new generation is
//! committed. A generation directory (`DIR/latest`, `DIR/gen-…`) also loads on its own, its files
//! checked against each other by id.

mod files;
mod set;

use super::backend::BackendState;
use super::config::TrainConfig;
use crate::error::Result;
use crate::nn::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

/// A loaded checkpoint: everything needed to resume a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The run's configuration.
    pub config: TrainConfig,
    /// Where the run stopped.
    pub progress: Progress,
    /// Weights, optimizer moments and scaler state.
    pub state: BackendState,
    /// The training data's identity as the saving run recorded it (file name → SHA-256 hex);
    /// `None` when it recorded none, and for checkpoints of earlier releases.
    pub data: Option<BTreeMap<String, String>>,
    /// The checkpoint id (a digest of the content, see the [module docs](self)); `None` for
    /// checkpoints of earlier releases, which carry none.
    pub id: Option<String>,
}

/// A checkpoint's model only, for evaluation: [`load_model`] neither reads nor needs
/// `train_state.safetensors`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCheckpoint {
    /// The run's configuration.
    pub config: TrainConfig,
    /// Where the run stopped.
    pub progress: Progress,
    /// The f32 master weights, in `state_dict` order.
    pub params: Vec<Tensor>,
    /// As [`Checkpoint::data`].
    pub data: Option<BTreeMap<String, String>>,
    /// As [`Checkpoint::id`].
    pub id: Option<String>,
}

/// Saves a checkpoint into `dir` (created if missing) as a new generation and commits it
/// atomically; see the [module docs](self). `data` is the training data's identity (file name →
/// SHA-256 hex), stored in `config.json` and returned by [`load`].
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) (nothing written) when `cfg` is invalid, `state` does not
/// fit `cfg`'s model, or holds a NaN or infinite value or a loss scale that is not a positive
/// finite number; [`Error::Io`](crate::Error::Io) naming the path when a file or directory cannot be created,
/// written, synced, renamed or removed (the last committed checkpoint stays loadable);
/// [`Error::Checkpoint`](crate::Error::Checkpoint) when `dir` holds a damaged `manifest.json`, which a save will not
/// overwrite.
pub fn save(
    dir: &Path,
    cfg: &TrainConfig,
    progress: &Progress,
    state: &BackendState,
    data: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    save_cut_after(dir, cfg, progress, state, data, None).map(|_| ())
}

/// Fault injection for tests: [`save`], stopped before its file-system step number `steps + 1`
/// (steps are creating, writing, syncing, renaming and removing files and directories) as if the
/// process had been killed there: nothing after it runs, nothing is cleaned up. `Ok(true)` when
/// the save completed within `steps` steps, `Ok(false)` when it was cut off.
#[doc(hidden)]
pub fn save_cut_after(
    dir: &Path,
    cfg: &TrainConfig,
    progress: &Progress,
    state: &BackendState,
    data: Option<&BTreeMap<String, String>>,
    steps: Option<usize>,
) -> Result<bool> {
    let encoded = files::encode(cfg, progress, state, data)?;
    match set::save(dir, &encoded, &mut set::Steps::new(steps)) {
        Ok(()) => Ok(true),
        Err(set::Halt::Cut) => Ok(false),
        Err(set::Halt::Failed(e)) => Err(e),
    }
}

/// The configuration and the model of the checkpoint at `at`, checked against the manifest's id
/// and step.
fn load_common(at: &set::Location) -> Result<(files::ConfigFile, Vec<Tensor>)> {
    let (config_path, config_bytes) = at.read(files::CONFIG)?;
    let config = files::decode_config(&config_path, &config_bytes)?;
    if let Some((path, m)) = &at.manifest {
        if config.id.as_deref() != Some(m.id.as_str()) {
            return Err(files::corrupt(
                &config_path,
                format!(
                    "carries checkpoint id {:?}, but {} commits {:?}: the directory mixes two \
                     checkpoints; restore it from a copy",
                    config.id.as_deref().unwrap_or("none"),
                    path.display(),
                    m.id
                ),
            ));
        }
        if config.progress.global_step != m.global_step {
            return Err(files::corrupt(
                path,
                format!(
                    "records step {}, but config.json is from step {}",
                    m.global_step, config.progress.global_step
                ),
            ));
        }
    }
    let (model_path, model_bytes) = at.read(files::MODEL)?;
    let params = files::decode_model(&model_path, &model_bytes, &config)?;
    Ok((config, params))
}

/// Loads the checkpoint in `dir`: the run's configuration, where it stopped, the backend state,
/// the training data record and the id. Reads the committed generation of a checkpoint set, a
/// flat checkpoint of an earlier release, or a generation directory given directly.
///
/// Errors: [`Error::NoCheckpoint`](crate::Error::NoCheckpoint) when `dir` does not exist or holds no committed checkpoint
/// yet (nothing saved, or the first save was interrupted); [`Error::Checkpoint`](crate::Error::Checkpoint) naming the file
/// when one is missing, truncated, corrupted, changed since the save (hash), from another save
/// (id or step), does not fit the configuration's model, or holds a non-finite value or an
/// invalid loss scale; [`Error::Io`](crate::Error::Io) when a file cannot be read.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let at = set::locate(dir)?;
    let (config, params) = load_common(&at)?;
    let (state_path, state_bytes) = at.read(files::STATE)?;
    let state = files::decode_state(&state_path, &state_bytes, &config, params)?;
    Ok(Checkpoint {
        config: config.train,
        progress: config.progress,
        state,
        data: config.data,
        id: config.id,
    })
}

/// Loads only the configuration and the model weights of the checkpoint in `dir`, for evaluation:
/// `train_state.safetensors` is neither read nor required. Checks as [`load`] does for the files
/// it reads.
///
/// Errors: as [`load`].
pub fn load_model(dir: &Path) -> Result<ModelCheckpoint> {
    let (config, params) = load_common(&set::locate(dir)?)?;
    Ok(ModelCheckpoint {
        config: config.train,
        progress: config.progress,
        params,
        data: config.data,
        id: config.id,
    })
}
