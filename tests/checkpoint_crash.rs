//! Crashes during a save. A save cut off after each of its file-system steps in turn (a test
//! seam of `checkpoint::save`) leaves the last committed checkpoint loadable, never a mix of two
//! saves, and the next save removes the leftovers. Then real crashes: `ampkit train` processes
//! on a tiny data set, saving a checkpoint after every epoch, killed at random moments (SIGKILL,
//! and SIGINT for every fourth), half of them saving over a complete checkpoint of another run;
//! whenever a save had completed the directory must load, as the killed run's last committed
//! checkpoint or the other run's.

mod checkpoint_support;
mod common;

use ampkit::nn::MlpConfig;
use ampkit::train::{checkpoint, open_backend, Progress, TrainConfig};
use ampkit::{Device, Error};
use checkpoint_support::*;
use rand::Rng;
use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A first save into an empty directory, cut off after each of its file-system steps in turn:
/// every cut leaves either "no checkpoint yet" (a typed error, from `load` and `load_model`) or,
/// once the manifest is renamed into place, the complete checkpoint. The next save removes the
/// leftovers; a load never does.
#[test]
fn a_first_save_cut_at_every_step_leaves_no_checkpoint_or_the_whole_one() {
    let mut rng = common::rng("first save cut");
    let a = Save::at_any_step(&mut rng, 1);
    let (mut cuts, mut empty) = (0, 0);
    for n in 0.. {
        let root = temp();
        let dir = root.path().join("ckpt");
        let done =
            checkpoint::save_cut_after(&dir, &a.cfg, &a.progress, &a.state, Some(&a.data), Some(n))
                .unwrap();
        let before = tree(&dir);
        match checkpoint::load(&dir) {
            Err(Error::NoCheckpoint { path, detail }) => {
                assert_eq!(path, dir.display().to_string());
                assert!(!detail.is_empty());
                assert!(
                    matches!(
                        checkpoint::load_model(&dir),
                        Err(Error::NoCheckpoint { .. })
                    ),
                    "load_model after {n} steps"
                );
                assert!(
                    empty == cuts,
                    "no checkpoint after {n} steps, following a commit"
                );
                empty += 1;
            }
            Ok(got) => {
                assert!(
                    a.is(&got),
                    "after {n} steps: a checkpoint that is not the save"
                );
                assert_eq!(checkpoint::load_model(&dir).unwrap().params, a.state.params);
            }
            Err(e) => panic!("after {n} steps: {e}"),
        }
        assert_eq!(
            tree(&dir),
            before,
            "a load changed the directory (after {n} steps)"
        );
        if done {
            assert_one_generation(&dir);
            break;
        }
        cuts += 1;
        a.save(&dir);
        assert!(a.is(&checkpoint::load(&dir).unwrap()));
        assert_one_generation(&dir);
    }
    eprintln!("{cuts} cut points, {empty} of them before the commit");
    assert!(
        cuts >= 15 && empty >= 10 && empty < cuts,
        "{cuts} cuts, {empty} empty"
    );
}

/// Run B saving over run A's checkpoint (same global step, as when two runs share a directory),
/// cut off after each step in turn: every cut loads exactly A until B's manifest is in place,
/// and exactly B from then on, never a mix; after B completes (or the next save), one generation
/// is left.
#[test]
fn run_b_cut_at_every_step_over_run_a_loads_a_or_b_never_a_mix() {
    let mut rng = common::rng("B over A");
    let progress = some_progress(&mut rng);
    let a = Save::random(&mut rng, 1, progress);
    let b = Save::random(&mut rng, 2, progress);
    let mut ids = Vec::new();
    let mut committed_after = None;
    for n in 0.. {
        let root = temp();
        let dir = root.path();
        a.save(dir);
        let done =
            checkpoint::save_cut_after(dir, &b.cfg, &b.progress, &b.state, Some(&b.data), Some(n))
                .unwrap();
        let before = tree(dir);
        let got = checkpoint::load(dir).unwrap_or_else(|e| panic!("after {n} steps: {e}"));
        assert_eq!(
            tree(dir),
            before,
            "a load changed the directory (after {n} steps)"
        );
        let model = checkpoint::load_model(dir).unwrap();
        assert_eq!((&model.params, &model.id), (&got.state.params, &got.id));
        if a.is(&got) {
            assert!(
                committed_after.is_none(),
                "A again after B was committed ({n} steps)"
            );
        } else {
            assert!(b.is(&got), "after {n} steps: neither A nor B");
            committed_after.get_or_insert(n);
        }
        if !ids.contains(&got.id) {
            ids.push(got.id.clone());
        }
        if done {
            assert_one_generation(dir);
            eprintln!("{n} steps in a save; B committed after {committed_after:?}");
            assert!(n >= 15, "{n} steps");
            break;
        }
        b.save(dir);
        assert!(b.is(&checkpoint::load(dir).unwrap()));
        assert_one_generation(dir);
    }
    assert!(committed_after.is_some());
    assert_eq!(ids.len(), 2, "A's and B's ids: {ids:?}");
    assert!(ids
        .iter()
        .all(|id| id.as_ref().is_some_and(|s| s.len() == 64)));
}

/// The model of the killed runs: `ampkit train`'s default (784→512→10, 4.8 MB of checkpoint files)
/// in an optimised build; a narrower one in a debug build, whose unoptimised GEMMs and hashing
/// would otherwise take about a second per epoch and make the test last minutes.
const LAYERS: &str = if cfg!(debug_assertions) {
    "784,64,10"
} else {
    "784,512,10"
};

/// Processes killed.
const TRIALS: usize = 60;

fn train(data: &Path, save: &Path) -> Child {
    Command::new(ampkit_bin())
        .args([
            "train", "--device", "cpu", "--epochs", "100000", "--batch", "64",
        ])
        .args(["--layers", LAYERS, "--no-progress", "--data"])
        .arg(data)
        .arg("--save")
        .arg(save)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting ampkit train")
}

/// The top-level names in `dir` (none if it does not exist yet), tolerating entries that vanish
/// while the process being watched writes and removes them.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|l| {
            l.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the kill landed inside a save: a temporary file, an uncommitted generation, or a
/// superseded one not yet removed.
fn interrupted_mid_save(dir: &Path) -> bool {
    let names = entries(dir);
    let generations = names.iter().filter(|n| n.starts_with("gen-")).count();
    let committed = usize::from(names.iter().any(|n| n == "manifest.json"));
    names.iter().any(|n| n.starts_with('.')) || generations != committed
}

/// Waits until the process has begun its `n`-th save (the `n`-th new generation directory
/// appears; each lives until the next save commits, so polling cannot miss one). `false` when
/// the process ended first or a minute passed.
fn wait_for_save(dir: &Path, n: usize, child: &mut Child) -> bool {
    let before: HashSet<String> = entries(dir).into_iter().collect();
    let mut new = HashSet::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none() {
        new.extend(
            entries(dir)
                .into_iter()
                .filter(|n| n.starts_with("gen-") && !before.contains(n)),
        );
        if new.len() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

/// Sends SIGINT (through `kill`, as a terminal's Ctrl-C would arrive) and waits up to 30 s for
/// the process to end, then SIGKILL.
fn interrupt(child: &mut Child) {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(sent.success() || child.try_wait().unwrap().is_some());
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
}

#[test]
fn killing_training_at_random_moments_never_leaves_an_unloadable_checkpoint() {
    let mut rng = common::rng("kill ampkit train");
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    write_idx_dir(&data, &mut rng, 128, 64);

    // Run A: a complete checkpoint of another configuration that half the killed runs save over.
    let cfg_a = TrainConfig {
        model: MlpConfig {
            layers: LAYERS.split(',').map(|w| w.parse().unwrap()).collect(),
            ..MlpConfig::mnist_default()
        },
        seed: 1,
        ..TrainConfig::mnist_default()
    };
    let state_a = open_backend(&Device::cpu(), &cfg_a)
        .unwrap()
        .export()
        .unwrap();
    let progress_a = Progress {
        epoch: 3,
        global_step: 6,
        ..Progress::default()
    };
    let save_a = |dir: &Path| checkpoint::save(dir, &cfg_a, &progress_a, &state_a, None).unwrap();
    let scratch = root.path().join("a");
    save_a(&scratch);
    let id_a = checkpoint::load(&scratch).unwrap().id;

    // Calibration: how long until the first save starts and until it commits.
    let calibration = root.path().join("calibration");
    let t = Instant::now();
    let mut child = train(&data, &calibration);
    let (mut started, mut committed) = (None, None);
    while committed.is_none() {
        let names = entries(&calibration);
        if started.is_none() && names.iter().any(|n| n.starts_with("gen-")) {
            started = Some(t.elapsed());
        }
        if names.iter().any(|n| n == "manifest.json") {
            committed = Some(t.elapsed());
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ampkit train ended before its first checkpoint: {status}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "no checkpoint in 300 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let first = committed.unwrap();
    let started = started.unwrap_or(first);
    let save = first - started;

    // A third of the kills at any moment up to twice the first commit (some before any save);
    // the others aimed inside the first, second or third save, up to 1.5 times its length after
    // it began, since a save is the short window a crash must not spoil.
    let (mut sigint, mut killed_run, mut kept_a, mut before_any, mut mid_save) = (0, 0, 0, 0, 0);
    let mut unloadable = Vec::new();
    for trial in 0..TRIALS {
        let dir = root.path().join(format!("trial-{trial}"));
        let over_a = trial % 2 == 1;
        if over_a {
            save_a(&dir);
        }
        let mut child = train(&data, &dir);
        if trial % 3 == 0 {
            std::thread::sleep((first * 2).mul_f64(rng.gen::<f64>()));
        } else {
            let n = rng.gen_range(1..=3);
            assert!(
                wait_for_save(&dir, n, &mut child),
                "trial {trial}: no save {n}"
            );
            std::thread::sleep(save.mul_f64(1.5 * rng.gen::<f64>()));
        }
        if trial % 4 == 0 {
            sigint += 1;
            interrupt(&mut child);
        } else {
            let _ = child.kill();
        }
        child.wait().unwrap();
        mid_save += usize::from(interrupted_mid_save(&dir));
        match checkpoint::load(&dir) {
            Ok(c) if c.id == id_a => kept_a += 1,
            Ok(c) if c.config.seed == 0 && c.progress.epoch >= 1 => killed_run += 1,
            Ok(c) => unloadable.push(format!("trial {trial}: a checkpoint of neither run: {c:?}")),
            Err(Error::NoCheckpoint { .. }) if !over_a => before_any += 1,
            Err(e) => unloadable.push(format!("trial {trial}: {e}")),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!(
        "first save from {:.0} to {:.0} ms: {TRIALS} kills ({} SIGKILL, \
         {sigint} SIGINT, {mid_save} inside a save), {} with a checkpoint ({killed_run} of the \
         killed run, {kept_a} of the run it saved over), {before_any} before any save, {} \
         unloadable",
        started.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        TRIALS - sigint,
        killed_run + kept_a,
        unloadable.len()
    );
    assert!(unloadable.is_empty(), "{unloadable:#?}");
    // Kills that never hit a save, or never came after one, would prove nothing.
    assert!(mid_save > 0, "no kill landed inside a save");
    assert!(killed_run > 0, "no kill came after a completed save");
}
