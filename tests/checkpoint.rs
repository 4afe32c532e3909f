//! Checkpoint contents: files of two saves or changed files are refused naming the file,
//! non-finite values and invalid loss scales are load errors naming the tensor, identical runs
//! write identical bytes, evaluation needs only the model, and checkpoints of the earlier flat
//! layout still load. Crashes during a save: tests/checkpoint_crash.rs.

mod checkpoint_support;
mod common;

use ampkit::amp::LossScale;
use ampkit::cpu::scaler::{ScalerConfig, ScalerState};
use ampkit::nn::{init_parameters, MlpConfig};
use ampkit::train::checkpoint::{self, Checkpoint};
use ampkit::train::data::Dataset;
use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{open_backend, BackendState, Progress, TrainConfig};
use ampkit::{Device, Error};
use checkpoint_support::*;
use rand::rngs::StdRng;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Records the current hashes of the committed generation's files in the manifest, as a
/// deliberate forger would: what is left to catch a mix is the files' ids.
fn rehash(dir: &Path) {
    let mut m = manifest(dir);
    let generation = generation(dir);
    for name in [
        "config.json",
        "model.safetensors",
        "train_state.safetensors",
    ] {
        m["files"][name] = sha256_hex(&std::fs::read(generation.join(name)).unwrap()).into();
    }
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
}

/// A safetensors file's tensors (name, shape, little-endian bytes) and metadata.
type Contents = (Vec<(String, Vec<usize>, Vec<u8>)>, HashMap<String, String>);

/// Rewrites a safetensors file through `f`.
fn rewrite(path: &Path, f: impl FnOnce(&mut Contents)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut c: Contents = (
        st.tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
            .collect(),
        header.metadata().clone().unwrap_or_default(),
    );
    f(&mut c);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        c.0.iter()
            .map(|(n, s, d)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d);
                (n.clone(), v.unwrap())
            })
            .collect();
    std::fs::write(path, safetensors::serialize(views, Some(c.1)).unwrap()).unwrap();
}

/// Asserts `r` is an [`Error::Checkpoint`] whose path ends with `file` and whose message holds
/// every one of `needles`.
fn assert_refused<T: std::fmt::Debug>(r: ampkit::Result<T>, file: &str, needles: &[&str]) {
    let e = r.unwrap_err();
    let Error::Checkpoint { path, .. } = &e else {
        panic!("expected Error::Checkpoint naming {file}, got {e:?}");
    };
    assert!(path.ends_with(file), "path {path} for {file}: {e}");
    for n in needles {
        assert!(e.to_string().contains(n), "{n:?} not in: {e}");
    }
}

/// The user's report: run B's model next to run A's optimizer state and config. Files of two
/// saves are refused naming the file, whether the manifest's hashes were left (the hash check)
/// or updated (the ids), and in a generation directory loaded on its own.
#[test]
fn files_of_two_saves_are_refused_naming_the_file() {
    let mut rng = common::rng("mixed saves");
    let progress = some_progress(&mut rng);
    let (a, b) = (
        Save::random(&mut rng, 1, progress),
        Save::random(&mut rng, 2, progress),
    );
    let (da, db) = (temp(), temp());
    a.save(da.path());
    b.save(db.path());
    for file in [
        "model.safetensors",
        "train_state.safetensors",
        "config.json",
    ] {
        let root = temp();
        let dir = root.path();
        a.save(dir);
        std::fs::copy(generation(db.path()).join(file), generation(dir).join(file)).unwrap();
        assert_refused(checkpoint::load(dir), file, &["SHA-256"]);
        rehash(dir);
        assert_refused(checkpoint::load(dir), file, &["mixes two checkpoints"]);
        // The generation directory alone, without the manifest: its config.json is the
        // reference, so a foreign config.json shows as the model not matching it.
        let (named, needles) = match file {
            "config.json" => (
                "model.safetensors",
                ["config.json to", "mixes two checkpoints"],
            ),
            _ => (file, ["belongs to", "mixes two checkpoints"]),
        };
        assert_refused(checkpoint::load(&dir.join("latest")), named, &needles);
    }
    assert!(a.is(&checkpoint::load(&da.path().join("latest")).unwrap()));
}

/// Damage anywhere is an error naming the file; a missing directory is "no checkpoint yet", a
/// file where a directory belongs a checkpoint error.
#[test]
fn damaged_files_are_errors_naming_the_file() {
    let mut rng = common::rng("damage");
    let a = Save::at_any_step(&mut rng, 1);
    let root = temp();
    let dir = root.path();
    a.save(dir);
    let gen = generation(dir);
    let model = gen.join("model.safetensors");
    let good = std::fs::read(&model).unwrap();
    std::fs::write(&model, &good[..good.len() / 2]).unwrap();
    assert_refused(checkpoint::load(dir), "model.safetensors", &["SHA-256"]);
    assert_refused(checkpoint::load(&gen), "model.safetensors", &["truncated"]);
    let mut bad = good.clone();
    bad[3] ^= 0x55; // header length
    std::fs::write(&model, &bad).unwrap();
    assert_refused(
        checkpoint::load(&gen),
        "model.safetensors",
        &["not a valid safetensors"],
    );
    std::fs::write(&model, &good).unwrap();
    assert!(a.is(&checkpoint::load(dir).unwrap()));

    let config = gen.join("config.json");
    let json = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        json.replace("\"layernorm\": true", "\"layernorm\": false"),
    )
    .unwrap();
    assert_refused(checkpoint::load(dir), "config.json", &["SHA-256"]);
    rehash(dir);
    // The id still matches (the edit kept it), so the model is checked against the new config.
    assert_refused(
        checkpoint::load(dir),
        "model.safetensors",
        &["tensor 2.weight"],
    );
    std::fs::write(&config, "{").unwrap();
    rehash(dir);
    assert_refused(
        checkpoint::load(dir),
        "config.json",
        &["not a valid config.json"],
    );
    std::fs::remove_file(&config).unwrap();
    assert_refused(checkpoint::load(dir), "config.json", &["missing"]);

    let manifest_path = dir.join("manifest.json");
    let mut m = manifest(dir);
    m["generation"] = "../elsewhere".into();
    std::fs::write(&manifest_path, m.to_string()).unwrap();
    assert_refused(checkpoint::load(dir), "manifest.json", &["gen-<n>"]);
    std::fs::write(&manifest_path, "{").unwrap();
    assert_refused(
        checkpoint::load(dir),
        "manifest.json",
        &["not a valid manifest"],
    );
    // A save will not remove generations a damaged manifest might name.
    let e = checkpoint::save(dir, &a.cfg, &a.progress, &a.state, None).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");

    let e = checkpoint::load(&dir.join("nope")).unwrap_err();
    assert!(matches!(e, Error::NoCheckpoint { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = checkpoint::load(&manifest_path).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    let empty = temp();
    let e = checkpoint::load(empty.path()).unwrap_err();
    assert!(matches!(e, Error::NoCheckpoint { .. }), "{e}");
}

/// A NaN or infinite weight or moment, a negative second moment, or a NaN, zero, negative or
/// infinite loss scale is a load error naming the tensor and the index (or the scale); a save
/// refuses such a state and keeps the previous checkpoint.
#[test]
fn non_finite_values_and_bad_scales_are_load_errors_naming_the_tensor() {
    let mut rng = common::rng("non-finite");
    let a = Save::at_any_step(&mut rng, 1);
    let cases: [(&str, &str, f32); 6] = [
        ("model.safetensors", "0.weight", f32::NAN),
        ("model.safetensors", "3.bias", f32::INFINITY),
        ("model.safetensors", "1.weight", f32::NEG_INFINITY),
        (
            "train_state.safetensors",
            "exp_avg.0.bias",
            f32::NEG_INFINITY,
        ),
        ("train_state.safetensors", "exp_avg_sq.3.weight", f32::NAN),
        ("train_state.safetensors", "exp_avg_sq.0.weight", -0.5),
    ];
    for (file, tensor, value) in cases {
        let root = temp();
        let dir = root.path();
        a.save(dir);
        let mut at = 0;
        rewrite(&generation(dir).join(file), |(tensors, _)| {
            let (_, _, bytes) = tensors.iter_mut().find(|(n, _, _)| n == tensor).unwrap();
            at = rng.gen_range(0..bytes.len() / 4);
            bytes[at * 4..at * 4 + 4].copy_from_slice(&value.to_le_bytes());
        });
        rehash(dir);
        let needle = format!("{tensor}[{at}] is {value}");
        assert_refused(checkpoint::load(dir), file, &[&needle]);
        if file == "model.safetensors" {
            assert_refused(checkpoint::load_model(dir), file, &[&needle]);
        } else {
            checkpoint::load_model(dir).unwrap();
        }
    }
    for scale in [f32::NAN, 0.0, -1.0, f32::INFINITY] {
        let root = temp();
        let dir = root.path();
        a.save(dir);
        rewrite(
            &generation(dir).join("train_state.safetensors"),
            |(_, meta)| {
                meta.insert("scale_bits".into(), format!("{:#010x}", scale.to_bits()));
            },
        );
        rehash(dir);
        let needle = format!(
            "loss scale (scale_bits {:#010x}) is {scale}",
            scale.to_bits()
        );
        assert_refused(checkpoint::load(dir), "train_state.safetensors", &[&needle]);
    }

    let root = temp();
    let dir = root.path();
    a.save(dir);
    let mut diverged = a.state.clone();
    let i = rng.gen_range(0..diverged.params[2].data.len());
    diverged.params[2].data[i] = f32::NAN;
    let e = checkpoint::save(dir, &a.cfg, &a.progress, &diverged, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("1.weight[{i}] is NaN")),
        "{e}"
    );
    let mut bad_scale = a.state.clone();
    bad_scale.scaler.scale = 0.0;
    let e = checkpoint::save(dir, &a.cfg, &a.progress, &bad_scale, None).unwrap_err();
    assert!(e.to_string().contains("loss scale is 0"), "{e}");
    assert!(
        a.is(&checkpoint::load(dir).unwrap()),
        "the previous checkpoint is kept"
    );
}

/// Two identical CPU runs write byte-identical files (the safetensors metadata used to come out
/// in a random order); the id is the content's, so a different run gets another.
/// Every loss-scaling mode is saved in the config and loaded back (a static scale could not be
/// serialised before 0.2).
#[test]
fn every_loss_scale_mode_saves_and_loads() {
    let mut rng = common::rng("loss scale modes");
    for mode in [
        LossScale::Static(1024.0),
        LossScale::Off,
        LossScale::Dynamic(ScalerConfig {
            min_scale: Some(0.5),
            ..ScalerConfig::default()
        }),
    ] {
        let mut save = Save::at_any_step(&mut rng, 5);
        save.cfg.loss_scale = mode;
        let root = temp();
        save.save(root.path());
        let loaded = checkpoint::load(root.path()).unwrap();
        assert_eq!(loaded.config.loss_scale, mode);
        assert!(save.is(&loaded), "{mode:?}");
    }
}

#[test]
fn identical_runs_write_identical_bytes() {
    let mut rng = common::rng("reproducible");
    let images = |n: usize, rng: &mut StdRng| {
        let px = (0..n * 16).map(|_| rng.gen::<u8>()).collect();
        let labels = (0..n).map(|_| rng.gen_range(0..4u8)).collect();
        Dataset::new(px, labels, 4, 4).unwrap()
    };
    let (train, test) = (images(40, &mut rng), images(16, &mut rng));
    let run = |seed: u64| {
        let root = temp();
        let cfg = tiny_config(seed);
        let mut backend = open_backend(&Device::cpu(), &cfg).unwrap();
        let out = Outputs {
            save: Some(root.path().to_path_buf()),
            ..Outputs::default()
        };
        trainer::run(
            backend.as_mut(),
            &cfg,
            &train,
            &test,
            Progress::default(),
            &out,
        )
        .unwrap();
        let files: Vec<(String, String)> = tree(root.path())
            .into_iter()
            .filter(|(_, size)| *size > 0)
            .map(|(name, _)| {
                let hash = sha256_hex(&std::fs::read(root.path().join(&name)).unwrap());
                (name, hash)
            })
            .collect();
        (files, checkpoint::load(root.path()).unwrap().id.unwrap())
    };
    let (first, id) = run(3);
    let (second, id2) = run(3);
    assert_eq!(first.len(), 4, "{first:?}");
    assert_eq!(first, second);
    assert_eq!(id, id2);
    let (other, other_id) = run(4);
    assert_ne!(other_id, id);
    assert_ne!(other, first);
}

/// Evaluation reads the model and the configuration only: without train_state.safetensors
/// `load_model` and `ampkit eval` still work, while `load` names the missing file. The data
/// record passed to `save` comes back from both loads.
#[test]
fn eval_needs_only_the_model_and_the_config() {
    let mut rng = common::rng("model only");
    let a = Save::at_any_step(&mut rng, 1);
    let root = temp();
    let dir = root.path().join("ckpt");
    let cfg = TrainConfig {
        model: MlpConfig {
            layers: vec![784, 8, 10],
            ..MlpConfig::mnist_default()
        },
        ..a.cfg.clone()
    };
    let params = init_parameters(&cfg.model, cfg.seed);
    let mut backend = open_backend(&Device::cpu(), &cfg).unwrap();
    let state = backend.export().unwrap();
    checkpoint::save(&dir, &cfg, &a.progress, &state, Some(&a.data)).unwrap();
    assert_eq!(checkpoint::load(&dir).unwrap().data.as_ref(), Some(&a.data));
    std::fs::remove_file(dir.join("latest/train_state.safetensors")).unwrap();
    assert_refused(
        checkpoint::load(&dir),
        "train_state.safetensors",
        &["missing"],
    );
    let m = checkpoint::load_model(&dir).unwrap();
    assert_eq!(
        (m.config, m.progress, m.params),
        (cfg.clone(), a.progress, params)
    );
    assert_eq!(m.data.as_ref(), Some(&a.data));

    let data = root.path().join("data");
    checkpoint_support::write_idx_dir(&data, &mut rng, 16, 32);
    let out = std::process::Command::new(checkpoint_support::ampkit_bin())
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(&dir)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("test accuracy"), "{stdout}");
}

/// The parts of the checkpoint in tests/checkpoint_v1, which the flat-layout writer of the
/// previous release wrote (format ampkit-checkpoint-1).
fn v1_fixture() -> (TrainConfig, Progress, BackendState) {
    let model = MlpConfig {
        layers: vec![6, 5, 3],
        layernorm: true,
        ..MlpConfig::mnist_default()
    };
    let cfg = TrainConfig {
        model: model.clone(),
        epochs: 3,
        batch: 4,
        seed: 7,
        ..TrainConfig::mnist_default()
    };
    let params = init_parameters(&model, 7);
    let m: Vec<Vec<f32>> = (params.iter().enumerate())
        .map(|(t, p)| {
            (0..p.data.len())
                .map(|j| (t * 100 + j) as f32 * 0.25 - 3.0)
                .collect()
        })
        .collect();
    let v = m
        .iter()
        .map(|x| x.iter().map(|a| a * a).collect())
        .collect();
    let state = BackendState {
        params,
        optimizer_step: 3,
        momentum_started: false,
        exp_avg: m,
        exp_avg_sq: v,
        scaler: ScalerState {
            scale: 32768.0,
            growth_tracker: 2,
        },
        fp8: Vec::new(),
    };
    let progress = Progress {
        epoch: 1,
        step_in_epoch: 2,
        global_step: 7,
        skipped: 1,
    };
    (cfg, progress, state)
}

/// A copy of the flat checkpoint in tests/checkpoint_v1.
fn v1_copy() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/checkpoint_v1");
    let dir = temp();
    for name in [
        "model.safetensors",
        "train_state.safetensors",
        "config.json",
    ] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    dir
}

/// The previous release's flat checkpoints load as they are (no id, no data record), with the
/// step check across their files; the first save into such a directory replaces them.
#[test]
fn flat_checkpoints_of_the_previous_release_load_and_migrate() {
    let (cfg, progress, state) = v1_fixture();
    let dir = v1_copy();
    let got = checkpoint::load(dir.path()).unwrap();
    let want = Checkpoint {
        config: cfg.clone(),
        progress,
        state: state.clone(),
        data: None,
        id: None,
    };
    assert_eq!(got, want);
    assert_eq!(
        checkpoint::load_model(dir.path()).unwrap().params,
        state.params
    );

    let mut rng = common::rng("migrate");
    let b = Save::random(&mut rng, 2, progress);
    b.save(dir.path());
    assert!(b.is(&checkpoint::load(dir.path()).unwrap()));
    assert_one_generation(dir.path());

    let dir = v1_copy();
    let config = dir.path().join("config.json");
    let json = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        json.replace("\"global_step\": 7", "\"global_step\": 6"),
    )
    .unwrap();
    assert_refused(
        checkpoint::load(dir.path()),
        "model.safetensors",
        &["mixes two checkpoints"],
    );
}

/// A moment of the wrong shape names the shape it should have (the message used to print the
/// parameter's name where the shape belonged).
#[test]
fn a_moment_of_the_wrong_shape_names_the_expected_shape() {
    let dir = v1_copy();
    rewrite(
        &dir.path().join("train_state.safetensors"),
        |(tensors, _)| {
            let t = tensors
                .iter_mut()
                .find(|(n, _, _)| n == "exp_avg.0.weight")
                .unwrap();
            assert_eq!(t.1, [5, 6]);
            t.1 = vec![6, 5];
        },
    );
    let r = checkpoint::load(dir.path());
    assert_refused(
        r,
        "train_state.safetensors",
        &["exp_avg.0.weight has shape [6, 5]", "needs [5, 6]"],
    );
}
