//! The checkpoint set on disk: generation directories, the manifest whose atomic replacement
//! commits one, and the order of a save's file-system steps that keeps the last committed set
//! loadable wherever the process stops.

use super::files::{self, corrupt, sha256_hex, Encoded, CONFIG, FORMAT, FORMAT_V1, MODEL, STATE};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(super) const MANIFEST: &str = "manifest.json";
pub(super) const LATEST: &str = "latest";
const GEN_PREFIX: &str = "gen-";
const MANIFEST_TMP: &str = ".manifest.json.tmp";
const LATEST_TMP: &str = ".latest.tmp";
/// Temporary names the flat-layout writer of earlier releases used: leftovers of a crash.
const V1_TMP: [&str; 3] = [
    ".model.safetensors.tmp",
    ".train_state.safetensors.tmp",
    ".config.json.tmp",
];

/// `manifest.json`: which generation is the checkpoint, and what its files must hash to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub format: String,
    /// The checkpoint id every file of the generation carries.
    pub id: String,
    /// The committed generation's directory name (`gen-<n>`).
    pub generation: String,
    /// `<generation>/model.safetensors`, for readers outside ampkit.
    pub model: String,
    pub global_step: u64,
    /// File name → SHA-256 (hex) of each file of the generation.
    pub files: BTreeMap<String, String>,
}

/// `gen-<digits>` → the number.
fn generation_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(GEN_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why a save did not finish.
pub(super) enum Halt {
    /// The fault-injection limit was reached: the save stops as if the process had been killed.
    Cut,
    /// A real error.
    Failed(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Halt {
        Halt::Failed(e)
    }
}

type Step<T = ()> = std::result::Result<T, Halt>;

/// Runs a save's file-system steps, counting them; with a limit, the step after the limit is not
/// run and the save stops there, leaving the directory exactly as a killed process would (this
/// simulation cannot lose unsynced data, which is what the syncs are for).
pub(super) struct Steps {
    limit: Option<usize>,
    done: usize,
}

impl Steps {
    pub(super) fn new(limit: Option<usize>) -> Steps {
        Steps { limit, done: 0 }
    }

    fn run<T>(&mut self, path: &Path, what: &str, f: impl FnOnce() -> io::Result<T>) -> Step<T> {
        if self.limit.is_some_and(|l| self.done >= l) {
            return Err(Halt::Cut);
        }
        self.done += 1;
        f().map_err(|e| Halt::Failed(Error::io(path, what, e)))
    }

    /// A new file holding `bytes`, on disk before the call returns.
    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> Step {
        let mut f = self.run(path, "creating", || {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
        })?;
        self.run(path, "writing", || f.write_all(bytes))?;
        self.run(path, "syncing", || f.sync_all())
    }

    /// Makes the entries of `dir` (files created, renamed, removed) durable.
    fn sync_dir(&mut self, dir: &Path) -> Step {
        self.run(dir, "syncing the directory", || sync_dir(dir))
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    match fs::File::open(dir)?.sync_all() {
        // Some file systems cannot sync a directory; their renames are as durable as they get.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        r => r,
    }
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing here; renames are journaled by the file system.
    Ok(())
}

fn entries(dir: &Path) -> Step<Vec<String>> {
    let list = fs::read_dir(dir).map_err(|e| Error::io(dir, "listing", e))?;
    let mut names = Vec::new();
    for entry in list {
        let entry = entry.map_err(|e| Error::io(dir, "listing", e))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The manifest, if the directory has one. Parsed and checked; see [`locate`].
fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, "reading", e)),
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(&path, format!("not a valid manifest: {e}")))?;
    let bad = |detail: String| Err(corrupt(&path, detail));
    if m.format != FORMAT {
        return bad(format!("format {:?}, expected {FORMAT:?}", m.format));
    }
    if generation_number(&m.generation).is_none() {
        return bad(format!(
            "generation {:?} is not a gen-<n> directory name",
            m.generation
        ));
    }
    if m.model != format!("{}/{MODEL}", m.generation) {
        return bad(format!(
            "model {:?} is not {}/{MODEL}",
            m.model, m.generation
        ));
    }
    let names: Vec<&str> = m.files.keys().map(String::as_str).collect();
    if names != [CONFIG, MODEL, STATE] {
        return bad(format!(
            "lists files {names:?}; a checkpoint has {CONFIG}, {MODEL} and {STATE}"
        ));
    }
    Ok(Some(m))
}

/// The generation `latest` points to, if it is a symlink to one.
fn latest_target(dir: &Path) -> Option<String> {
    let target = fs::read_link(dir.join(LATEST)).ok()?;
    let name = target.to_str()?.to_string();
    generation_number(&name).map(|_| name)
}

/// Writes `enc` as a new generation of the checkpoint set in `dir` and commits it.
///
/// Order, and why each step may be cut off: leftovers of an interrupted save are removed first
/// (never the committed generation, nor the one `latest` still points to); the new generation's
/// files are written and synced, then its directory and `dir`; the manifest naming it is written
/// to a temporary file, synced and renamed over `manifest.json` (the commit: before the rename a
/// load finds the previous manifest and its untouched generation, after it the new one), and
/// `dir` is synced so the rename survives a power loss. Only then do `latest` move and the
/// superseded generations (and a flat-layout checkpoint being migrated) go.
pub(super) fn save(dir: &Path, enc: &Encoded, steps: &mut Steps) -> Step {
    steps.run(dir, "creating the checkpoint directory", || {
        fs::create_dir_all(dir)
    })?;
    // A manifest that cannot be read may still name the only good generation: refuse rather
    // than remove generations that might be it.
    let committed = read_manifest(dir)
        .map_err(|e| Error::Checkpoint {
            path: dir.display().to_string(),
            detail: format!(
                "will not save over a damaged checkpoint set ({e}); move the directory away or \
                 save elsewhere"
            ),
        })?
        .map(|m| m.generation);
    let keep = [committed.clone(), latest_target(dir)];
    let names = entries(dir)?;
    // Numbers are never reused, not even a crashed save's, so a half-removed leftover can never
    // be mistaken for a new generation.
    let next = names
        .iter()
        .filter_map(|n| generation_number(n))
        .max()
        .unwrap_or(0)
        + 1;
    for name in &names {
        let path = dir.join(name);
        if name == MANIFEST_TMP || name == LATEST_TMP || V1_TMP.contains(&name.as_str()) {
            steps.run(&path, "removing the leftover", || fs::remove_file(&path))?;
        } else if generation_number(name).is_some() && !keep.contains(&Some(name.clone())) {
            steps.run(&path, "removing the uncommitted generation", || {
                fs::remove_dir_all(&path)
            })?;
        }
    }

    let generation = format!("{GEN_PREFIX}{next:06}");
    let gen_dir = dir.join(&generation);
    steps.run(&gen_dir, "creating the generation directory", || {
        fs::create_dir(&gen_dir)
    })?;
    for (name, bytes) in &enc.files {
        steps.write_synced(&gen_dir.join(name), bytes)?;
    }
    steps.sync_dir(&gen_dir)?;
    steps.sync_dir(dir)?;

    let manifest = Manifest {
        format: FORMAT.to_string(),
        id: enc.id.clone(),
        generation: generation.clone(),
        model: format!("{generation}/{MODEL}"),
        global_step: enc.global_step,
        files: enc
            .files
            .iter()
            .map(|(name, bytes)| (name.to_string(), sha256_hex(bytes)))
            .collect(),
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::InvalidArgument {
        op: "train::checkpoint::save",
        detail: e.to_string(),
    })?;
    json.push(b'\n');
    let (tmp, path) = (dir.join(MANIFEST_TMP), dir.join(MANIFEST));
    steps.write_synced(&tmp, &json)?;
    steps.run(&path, "renaming the new manifest onto", || {
        fs::rename(&tmp, &path)
    })?;
    steps.sync_dir(dir)?;

    // Committed. What follows is tidying: if it is cut off, the next save finishes it.
    link_latest(dir, &generation, steps)?;
    for name in entries(dir)? {
        if generation_number(&name).is_some() && name != generation {
            let path = dir.join(&name);
            steps.run(&path, "removing the superseded generation", || {
                fs::remove_dir_all(&path)
            })?;
        }
    }
    // A flat checkpoint of an earlier release in the same directory is superseded too; left
    // there, its model.safetensors would be the first file a reader finds.
    let config = dir.join(CONFIG);
    let flat = fs::read(&config)
        .ok()
        .and_then(|b| files::decode_config(&config, &b).ok())
        .is_some_and(|c| c.format == FORMAT_V1);
    if flat {
        for name in [MODEL, STATE, CONFIG] {
            let path = dir.join(name);
            if path.exists() {
                steps.run(
                    &path,
                    "removing the superseded flat checkpoint file",
                    || fs::remove_file(&path),
                )?;
            }
        }
    }
    Ok(())
}

/// Points `dir/latest` at `generation`: a relative symlink, created under a temporary name and
/// renamed over the old one, so a reader never sees `latest` missing or half-made. On a file
/// system without symlinks (FAT, some network mounts) there is no `latest`: the checkpoint is
/// committed already, and manifest.json's "model" names the file.
#[cfg(unix)]
fn link_latest(dir: &Path, generation: &str, steps: &mut Steps) -> Step {
    let (tmp, link) = (dir.join(LATEST_TMP), dir.join(LATEST));
    let made = steps.run(
        &tmp,
        "creating the symlink",
        || match std::os::unix::fs::symlink(generation, &tmp) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
                ) =>
            {
                Ok(false)
            }
            r => r.map(|()| true),
        },
    )?;
    if !made {
        return Ok(());
    }
    steps.run(
        &link,
        "replacing the `latest` symlink (move whatever else is there away)",
        || fs::rename(&tmp, &link),
    )
}

#[cfg(not(unix))]
fn link_latest(_dir: &Path, _generation: &str, _steps: &mut Steps) -> Step {
    // Symlinks need extra privileges here; manifest.json's "model" names the file instead.
    Ok(())
}

/// Where the checkpoint of a directory is: a committed generation, verified against its
/// manifest, or a flat directory.
pub(super) struct Location {
    /// The directory holding the files.
    from: PathBuf,
    /// The committing manifest (path, contents) of a set; `None` for a flat directory.
    pub manifest: Option<(PathBuf, Manifest)>,
}

/// Finds the checkpoint in `dir`: the generation its `manifest.json` commits, or else a flat
/// directory (an earlier release's layout, or a generation directory given directly). Never
/// changes anything on disk: leftovers of an interrupted save are the next save's to remove.
pub(super) fn locate(dir: &Path) -> Result<Location> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NoCheckpoint {
                path: dir.display().to_string(),
                detail: "the directory does not exist (pass the DIR given to `ampkit train \
                         --save`)"
                    .into(),
            })
        }
        Err(e) => return Err(Error::io(dir, "reading", e)),
        Ok(m) if !m.is_dir() => {
            return Err(corrupt(
                dir,
                "is not a directory (pass the DIR given to `ampkit train --save`)",
            ))
        }
        Ok(_) => {}
    }
    if let Some(m) = read_manifest(dir)? {
        return Ok(Location {
            from: dir.join(&m.generation),
            manifest: Some((dir.join(MANIFEST), m)),
        });
    }
    if dir.join(CONFIG).exists() {
        return Ok(Location {
            from: dir.to_path_buf(),
            manifest: None,
        });
    }
    let leftovers: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, "listing", e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| generation_number(n).is_some())
        .collect();
    Err(Error::NoCheckpoint {
        path: dir.display().to_string(),
        detail: if leftovers.is_empty() {
            format!("it holds no {MANIFEST}; `ampkit train --save DIR` writes one")
        } else {
            format!(
                "it holds no {MANIFEST}, only {leftovers:?} of a first save that was interrupted \
                 before it committed (the next save removes it)"
            )
        },
    })
}

impl Location {
    /// File `name` of the checkpoint: its path and bytes, checked against the manifest's hash.
    pub(super) fn read(&self, name: &str) -> Result<(PathBuf, Vec<u8>)> {
        let path = self.from.join(name);
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() != io::ErrorKind::NotFound {
                Error::io(&path, "reading", e)
            } else if self.manifest.is_some() {
                corrupt(
                    &path,
                    format!(
                        "missing, though {MANIFEST} lists it: the directory was changed after \
                         the save; restore it from a copy"
                    ),
                )
            } else {
                corrupt(
                    &path,
                    format!(
                        "missing; a checkpoint holds {MODEL}, {STATE} and {CONFIG} (written by \
                         `ampkit train --save DIR`)"
                    ),
                )
            }
        })?;
        if let Some((_, m)) = &self.manifest {
            let want = m.files.get(name).map(String::as_str).unwrap_or("nothing");
            let have = sha256_hex(&bytes);
            if want != have {
                return Err(corrupt(
                    &path,
                    format!(
                        "its SHA-256 is {have}, but {MANIFEST} records {want}: the file was \
                         changed or damaged after the save; restore the directory from a copy"
                    ),
                ));
            }
        }
        Ok((path, bytes))
    }
}
