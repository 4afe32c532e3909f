//! The training loop's guards, through the library on the CPU (and the GPU where present): a
//! dead run stops with [`Error::Diverged`] and leaves the last checkpoint as it was, output
//! paths are checked before the first step, a model too large for the machine is refused before
//! anything is allocated, an epoch without steps reports no loss, and a cosine run resumed with
//! its own horizon continues bit for bit.

mod common;

use ampkit::amp::LossScale;
use ampkit::cpu::optim::OptimizerConfig;
use ampkit::cpu::schedule::LrSchedule;
use ampkit::train::gpu_backend::GpuBackend;
use ampkit::train::resume::{resumed_config, Horizon};
use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{memory, open_backend, Progress, TrainConfig};
use ampkit::{Device, Error};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file under `dir` with its bytes (whatever the checkpoint layout).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                files.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

#[test]
fn a_diverging_run_stops_and_leaves_the_checkpoint_alone() {
    let split = common::bundled_mnist();
    // 10 steps per epoch: the epoch ends (a save is due) before the divergence rules can fire.
    let (train, test) = (
        common::subset(&split.train, 640),
        common::subset(&split.test, 200),
    );
    for device in common::devices() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("ckpt");
        let plot = t.path().join("dead.png");
        let good = TrainConfig {
            epochs: 1,
            max_steps: Some(4),
            ..TrainConfig::mnist_default()
        };
        let save = Outputs {
            save: Some(dir.clone()),
            ..Outputs::default()
        };
        let mut b = open_backend(&device, &good).unwrap();
        trainer::run(b.as_mut(), &good, &train, &test, Progress::default(), &save).unwrap();
        let before = snapshot(&dir);
        assert!(!before.is_empty());

        // Adam at 1e3: the first step blows the weights up, every later loss is NaN.
        let dead = TrainConfig {
            epochs: 5,
            optimizer: OptimizerConfig::adam(1e3),
            ..TrainConfig::mnist_default()
        };
        let out = Outputs {
            plot: Some(plot.clone()),
            ..save.clone()
        };
        let mut b = open_backend(&device, &dead).unwrap();
        let e =
            trainer::run(b.as_mut(), &dead, &train, &test, Progress::default(), &out).unwrap_err();
        match &e {
            Error::Diverged { step, reason, .. } => {
                // Step 0 trains, every later loss is NaN: found at the first read-back that
                // holds 25 of them (CPU: step 25; the GPU may blow up a step later).
                assert!((25..50).contains(step), "{e}");
                assert!(reason.contains("25 consecutive"), "{e}");
            }
            other => panic!("{}: {other}", b.device()),
        }
        assert!(
            snapshot(&dir) == before,
            "{}: the checkpoint changed",
            b.device()
        );
        assert_eq!(&std::fs::read(&plot).unwrap()[1..4], b"PNG");
    }
}

#[test]
fn a_scale_that_always_overflows_ends_the_run() {
    let split = common::bundled_mnist();
    // 32 steps per epoch; every step overflows f16 at 1e30 and the scale never changes.
    let (train, test) = (
        common::subset(&split.train, 2000),
        common::subset(&split.test, 100),
    );
    for device in common::devices() {
        let cfg = TrainConfig {
            epochs: 10,
            loss_scale: LossScale::Static(1e30),
            ..TrainConfig::mnist_default()
        };
        let mut b = open_backend(&device, &cfg).unwrap();
        let e = trainer::run(
            b.as_mut(),
            &cfg,
            &train,
            &test,
            Progress::default(),
            &Outputs::default(),
        )
        .unwrap_err();
        match &e {
            Error::Diverged { step, reason, hint } => {
                assert_eq!(*step, 255, "{e}");
                assert!(reason.contains("256 consecutive steps were skipped"), "{e}");
                assert!(hint.contains("smaller static loss scale"), "{e}");
            }
            other => panic!("{}: {other}", b.device()),
        }
    }
}

#[test]
fn output_paths_are_checked_before_any_step() {
    let split = common::bundled_mnist();
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        epochs: 1,
        ..TrainConfig::mnist_default()
    };
    let mut b = open_backend(&Device::cpu(), &cfg).unwrap();
    let fresh = b.export().unwrap();
    for out in [
        Outputs {
            plot: Some(t.path().to_path_buf()),
            ..Outputs::default()
        },
        Outputs {
            save: Some(t.path().join("f").join("ckpt")),
            metrics: Some(t.path().join("f")),
            ..Outputs::default()
        },
    ] {
        std::fs::create_dir_all(t.path().join("f")).unwrap();
        let e = trainer::run(
            b.as_mut(),
            &cfg,
            &common::subset(&split.train, 200),
            &split.test,
            Progress::default(),
            &out,
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert_eq!(
            common::state_bits(&b.export().unwrap()),
            common::state_bits(&fresh),
            "a step ran: {e}"
        );
    }
}

#[test]
fn an_epoch_resumed_at_its_end_has_no_loss() {
    let split = common::bundled_mnist();
    let train = common::subset(&split.train, 200); // 4 steps per epoch
    let cfg = TrainConfig {
        epochs: 1,
        ..TrainConfig::mnist_default()
    };
    let mut b = open_backend(&Device::cpu(), &cfg).unwrap();
    let at_end = Progress {
        epoch: 0,
        step_in_epoch: 4,
        global_step: 4,
        skipped: 0,
    };
    let s = trainer::run(
        b.as_mut(),
        &cfg,
        &train,
        &common::subset(&split.test, 100),
        at_end,
        &Outputs::default(),
    )
    .unwrap();
    assert!(s.steps.is_empty());
    assert_eq!(s.epochs.len(), 1);
    assert_eq!(s.epochs[0].train_loss, None);
    assert_eq!(s.saved, None);
}

/// 1.6·10¹² parameters: no host and no GPU has the memory.
fn huge() -> TrainConfig {
    let mut cfg = TrainConfig::mnist_default();
    cfg.model.layers = vec![784, 2_000_000_000, 10];
    cfg
}

#[test]
fn a_model_too_large_for_the_host_is_refused_before_allocating() {
    let e = match open_backend(&Device::cpu(), &huge()) {
        Err(e) => e,
        Ok(_) => panic!("a 1.6e12-parameter model was built"),
    };
    match &e {
        Error::InsufficientMemory {
            needed,
            available,
            device,
            ..
        } => {
            assert!(needed > available, "{e}");
            assert_eq!(device, "the host");
            assert!(e.to_string().contains("GiB"), "{e}");
        }
        other => panic!("{other}"),
    }
    let e = memory::check_run(&Device::cpu(), &huge(), 8000, 2000).unwrap_err();
    assert!(matches!(e, Error::InsufficientMemory { .. }), "{e}");
    memory::check_run(&Device::cpu(), &TrainConfig::mnist_default(), 8000, 2000).unwrap();
}

#[test]
fn a_model_too_large_for_the_gpu_is_refused_before_allocating() {
    let Some(gpu) = common::gpu() else { return };
    let (free_before, _) = gpu.memory().unwrap();
    let e = match GpuBackend::new(gpu.clone(), &huge()) {
        Err(e) => e,
        Ok(_) => panic!("a 1.6e12-parameter model was built"),
    };
    match &e {
        Error::InsufficientMemory { device, .. } => {
            assert!(device.starts_with("cuda:"), "not the GPU's check: {e}");
        }
        other => panic!("{other}"),
    }
    let (free_after, _) = gpu.memory().unwrap();
    assert!(
        free_after + (64 << 20) >= free_before,
        "{free_before} → {free_after}: something was allocated"
    );
    let dev = Device::Cuda(gpu);
    memory::check_run(&dev, &TrainConfig::mnist_default(), 8000, 2000).unwrap();
    let e = memory::check_run(&dev, &huge(), 8000, 2000).unwrap_err();
    assert!(matches!(e, Error::InsufficientMemory { .. }), "{e}");
}

#[test]
fn a_cosine_run_resumed_with_its_own_horizon_is_bit_identical() {
    let split = common::bundled_mnist();
    let (train, test) = (
        common::subset(&split.train, 500),
        common::subset(&split.test, 100),
    ); // 8 steps/epoch
    for device in common::devices() {
        let cfg = TrainConfig {
            epochs: 2,
            schedule: LrSchedule::Cosine {
                total: 1,
                min_lr: 1e-5,
            },
            ..TrainConfig::mnist_default()
        }
        .with_schedule_horizon(train.len());
        assert_eq!(cfg.schedule.with_total(16), cfg.schedule);
        let quiet = Outputs::default();
        let mut straight = open_backend(&device, &cfg).unwrap();
        trainer::run(
            straight.as_mut(),
            &cfg,
            &train,
            &test,
            Progress::default(),
            &quiet,
        )
        .unwrap();
        let want = straight.export().unwrap();

        // Interrupted 3 steps into epoch 2 (as a crash would, the horizon unchanged), then
        // resumed with the same request.
        let mut a = open_backend(&device, &cfg).unwrap();
        let stop = TrainConfig {
            max_steps: Some(11),
            ..cfg.clone()
        };
        let part = trainer::run(
            a.as_mut(),
            &stop,
            &train,
            &test,
            Progress::default(),
            &quiet,
        )
        .unwrap();
        let state = a.export().unwrap();
        let resumed =
            resumed_config(&stop, &part.progress, Horizon::default(), train.len()).unwrap();
        assert_eq!(resumed, cfg);
        let mut b = open_backend(&device, &resumed).unwrap();
        b.import(&state).unwrap();
        trainer::run(b.as_mut(), &resumed, &train, &test, part.progress, &quiet).unwrap();
        assert!(
            common::state_bits(&b.export().unwrap()) == common::state_bits(&want),
            "{}: the resumed cosine run differs",
            b.device()
        );
    }
}
