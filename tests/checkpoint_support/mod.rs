//! Shared support of the checkpoint tests (`checkpoint`, `checkpoint_crash`): random saves of a
//! tiny model, views of a checkpoint directory, the `ampkit` binary and a small synthetic MNIST
//! directory for it.
#![allow(dead_code)]

use ampkit::cpu::scaler::ScalerState;
use ampkit::nn::{MlpConfig, Tensor};
use ampkit::train::checkpoint::{self, Checkpoint};
use ampkit::train::{BackendState, Progress, TrainConfig};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `ampkit` binary cargo built next to the test executable (`target/<profile>/ampkit`).
pub fn ampkit_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("a directory");
    let up = dir.parent().expect("a parent directory");
    let candidates = [up.join("ampkit"), up.join("bin").join("ampkit")];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| panic!("no ampkit binary at {candidates:?}; build it with cargo build"))
}

/// Writes the four MNIST IDX files (raw, 28×28 random pixels, random labels 0..=9) for `train`
/// training and `test` test images into `dir`.
pub fn write_idx_dir(dir: &Path, rng: &mut impl Rng, train: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let mut images = [0x803u32, n as u32, 28, 28]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<u8>>();
        images.extend((0..n * 28 * 28).map(|_| rng.gen::<u8>()));
        let mut labels = [0x801u32, n as u32]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<u8>>();
        labels.extend((0..n).map(|_| rng.gen_range(0..10u8)));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

pub fn tiny_config(seed: u64) -> TrainConfig {
    TrainConfig {
        model: MlpConfig {
            layers: vec![16, 8, 4],
            layernorm: true,
            ..MlpConfig::mnist_default()
        },
        epochs: 2,
        batch: 8,
        seed,
        ..TrainConfig::mnist_default()
    }
}

/// A save's inputs, all drawn at random.
pub struct Save {
    pub cfg: TrainConfig,
    pub progress: Progress,
    pub state: BackendState,
    pub data: BTreeMap<String, String>,
}

impl Save {
    pub fn random(rng: &mut StdRng, seed: u64, progress: Progress) -> Save {
        let cfg = tiny_config(seed);
        let mut draw = |len: usize, lo: f32| (0..len).map(|_| rng.gen_range(lo..1.0)).collect();
        let params: Vec<Tensor> = cfg
            .model
            .parameter_specs()
            .into_iter()
            .map(|s| Tensor {
                data: draw(s.shape.iter().product(), -1.0),
                name: s.name,
                shape: s.shape,
            })
            .collect();
        let exp_avg = params.iter().map(|p| draw(p.data.len(), -1.0)).collect();
        let exp_avg_sq = params.iter().map(|p| draw(p.data.len(), 0.0)).collect();
        let digest = |rng: &mut StdRng| format!("{:064x}", rng.gen::<u128>());
        Save {
            data: BTreeMap::from([
                ("train-images-idx3-ubyte".to_string(), digest(rng)),
                ("train-labels-idx1-ubyte".to_string(), digest(rng)),
            ]),
            state: BackendState {
                params,
                optimizer_step: rng.gen_range(1..10_000),
                momentum_started: false,
                exp_avg,
                exp_avg_sq,
                scaler: ScalerState {
                    scale: 2f32.powi(rng.gen_range(0..24)),
                    growth_tracker: rng.gen_range(0..2000),
                },
                fp8: Vec::new(),
            },
            cfg,
            progress,
        }
    }

    pub fn at_any_step(rng: &mut StdRng, seed: u64) -> Save {
        let progress = some_progress(rng);
        Save::random(rng, seed, progress)
    }

    pub fn save(&self, dir: &Path) {
        checkpoint::save(
            dir,
            &self.cfg,
            &self.progress,
            &self.state,
            Some(&self.data),
        )
        .unwrap();
    }

    /// Whether `c` is exactly this save (its id aside).
    pub fn is(&self, c: &Checkpoint) -> bool {
        c.config == self.cfg
            && c.progress == self.progress
            && c.state == self.state
            && c.data.as_ref() == Some(&self.data)
    }
}

pub fn some_progress(rng: &mut StdRng) -> Progress {
    Progress {
        epoch: rng.gen_range(0..50),
        step_in_epoch: rng.gen_range(0..100),
        global_step: rng.gen_range(1..100_000),
        skipped: rng.gen_range(0..10),
    }
}

pub fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Every path under `dir` (symlinks not followed), with the file sizes: what a load must leave
/// untouched.
pub fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(list) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in list {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                todo.push(p.clone());
            }
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            out.push((rel, if meta.is_file() { meta.len() } else { 0 }));
        }
    }
    out.sort();
    out
}

/// The top-level names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !n.contains('/'))
        .collect()
}

/// After a completed save: the manifest, `latest`, and the one generation both name.
pub fn assert_one_generation(dir: &Path) {
    let names = names(dir);
    let manifest = manifest(dir);
    let generation = manifest["generation"].as_str().unwrap().to_string();
    assert_eq!(
        names,
        [generation.clone(), "latest".into(), "manifest.json".into()]
    );
    assert_eq!(
        std::fs::read_link(dir.join("latest")).unwrap(),
        Path::new(&generation)
    );
    let model = dir.join(manifest["model"].as_str().unwrap());
    assert_eq!(model, dir.join(&generation).join("model.safetensors"));
    assert!(model.is_file());
}

pub fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The committed generation's directory.
pub fn generation(dir: &Path) -> PathBuf {
    dir.join(manifest(dir)["generation"].as_str().unwrap())
}
