//! Train the 784→512→10 MLP on the bundled MNIST split through `ampkit::train` (what
//! `ampkit train` does), for two epochs with mixed precision, on the GPU if there is one, else on
//! the CPU reference. Then reload the checkpoint it wrote and evaluate it on a fresh backend.
//!
//! cargo run --release --example 05_train_mlp
//!
//! With `AMPKIT_TEST_SANITIZE=1` (set by `scripts/gpu-sanitize`, which runs it under
//! compute-sanitizer) it stops after 20 steps, in the first epoch, and checks the reloaded
//! checkpoint against the trained backend's own evaluation.

use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{checkpoint, data, open_backend, Progress, TrainConfig};
use ampkit::Device;

fn main() -> ampkit::Result<()> {
    let mut cfg = TrainConfig::mnist_default(); // Adam 1e-3, batch 64, dynamic loss scaling
    cfg.epochs = 2;
    // Instrumented runs (compute-sanitizer) take up to a second a step: a few steps cover every
    // kernel of the step, the checkpoint and the evaluation.
    if std::env::var("AMPKIT_TEST_SANITIZE").is_ok_and(|v| v == "1") {
        cfg.max_steps = Some(20);
        println!("AMPKIT_TEST_SANITIZE=1: stopping after 20 steps (max_steps), in the first epoch");
    }
    println!(
        "model: {} ({} parameters)",
        cfg.model.describe(),
        cfg.model.parameter_count()
    );

    // The bundled subset, compiled into the library: 8,000 training and 2,000 test digits.
    let split = data::bundled()?;
    println!(
        "data: {} training, {} test images of {}×{}",
        split.train.len(),
        split.test.len(),
        split.train.rows(),
        split.train.cols()
    );

    let (device, note) = Device::auto();
    println!("{note}");
    if device.gpu().is_none() {
        println!("no GPU: training on the CPU reference backend");
    }
    let mut backend = open_backend(&device, &cfg)?;
    let dir = std::env::temp_dir().join(format!("ampkit-example-05-{}", std::process::id()));
    let out = Outputs {
        save: Some(dir.clone()), // a checkpoint after every epoch
        verbose: true,           // one line per epoch
        ..Outputs::default()
    };
    let summary = trainer::run(
        backend.as_mut(),
        &cfg,
        &split.train,
        &split.test,
        Progress::default(),
        &out,
    )?;
    let skipped = summary.steps.iter().filter(|(_, r)| r.skipped).count();
    println!(
        "{} steps, {skipped} skipped by the loss scaler",
        summary.steps.len()
    );

    // The checkpoint: model.safetensors (PyTorch state_dict names, in DIR/latest/), optimizer and
    // scaler state, config.json. Load it into a fresh backend and evaluate.
    let checkpoint::Checkpoint {
        config: saved_cfg,
        progress,
        state,
        ..
    } = checkpoint::load(&dir)?;
    let mut fresh = open_backend(&device, &saved_cfg)?;
    fresh.import(&state)?;
    let (test_x, test_y) = ampkit::train::dataset_f32(&split.test, saved_cfg.normalize);
    let eval = fresh.evaluate(&test_x, &test_y)?;
    println!(
        "checkpoint {} (epoch {}, step {}): test accuracy {:.2}%, loss {:.4}",
        dir.display(),
        progress.epoch,
        progress.global_step,
        100.0 * eval.accuracy(),
        eval.loss
    );
    // The test accuracy of the last epoch, or (stopped mid-epoch) of the trained backend now.
    let trained = match summary.epochs.last() {
        Some(last) => last.test.correct,
        None => backend.evaluate(&test_x, &test_y)?.correct,
    };
    assert_eq!(
        eval.correct, trained,
        "the reloaded weights are the trained ones"
    );
    std::fs::remove_dir_all(&dir).map_err(|e| ampkit::Error::io(&dir, "removing", e))?;
    Ok(())
}
