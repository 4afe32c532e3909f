//! The GPU trainer's resident data path: the training set kept in device memory, each epoch
//! loaded as a plan and each batch gathered (shifted, cast) on the device by the step's first
//! kernel, must train bit for bit like epochs assembled on the host and loaded with
//! `load_epoch` — eager and in CUDA-graph mode, through a resumed epoch — and refuse bad plans.

mod common;

use ampkit::cpu::optim::OptimizerConfig;
use ampkit::train::data::load_dir;
use ampkit::train::gpu_backend::GpuBackend;
use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{Backend, BackendState, Evaluation, Progress, StepRecord, TrainConfig};
use ampkit::Error;
use std::path::PathBuf;

/// A GPU backend that keeps no dataset: the trainer assembles every epoch on the host and calls
/// `load_epoch`, as it does for the CPU.
struct HostAssembled(GpuBackend);

impl Backend for HostAssembled {
    fn device(&self) -> String {
        self.0.device()
    }
    fn load_epoch(&mut self, images: &[f32], labels: &[u32]) -> ampkit::Result<()> {
        self.0.load_epoch(images, labels)
    }
    fn step(&mut self, first: usize, batch: usize) -> ampkit::Result<()> {
        self.0.step(first, batch)
    }
    fn take_records(&mut self) -> ampkit::Result<Vec<StepRecord>> {
        self.0.take_records()
    }
    fn evaluate(&mut self, images: &[f32], labels: &[u32]) -> ampkit::Result<Evaluation> {
        self.0.evaluate(images, labels)
    }
    fn export(&mut self) -> ampkit::Result<BackendState> {
        self.0.export()
    }
    fn import(&mut self, state: &BackendState) -> ampkit::Result<()> {
        self.0.import(state)
    }
    fn scale(&mut self) -> ampkit::Result<f32> {
        self.0.scale()
    }
    fn optimizer(&self) -> &OptimizerConfig {
        self.0.optimizer()
    }
}

fn data_dir() -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().expect("current directory"));
    root.join("data")
}

fn state_bits(s: &BackendState) -> Vec<u32> {
    let mut v: Vec<u32> = s
        .params
        .iter()
        .flat_map(|p| p.data.iter().map(|x| x.to_bits()))
        .collect();
    for m in s.exp_avg.iter().chain(&s.exp_avg_sq) {
        v.extend(m.iter().map(|x| x.to_bits()));
    }
    v.extend([s.scaler.scale.to_bits(), s.optimizer_step as u32]);
    v
}

#[test]
fn resident_epochs_train_bit_for_bit_like_host_assembled_ones() {
    let Some(shared) = common::gpu() else { return };
    let gpu = shared.fork().unwrap();
    gpu.set_sync_launches(false); // so that graph mode engages
    let split = load_dir(&data_dir()).expect("the bundled data loads");
    // An odd sample count: 9 full batches of 48 and one of 29 per epoch (sanitizing: 4 and 29).
    let n = common::sized(461, 221);
    let size = split.train.image_size();
    let train = ampkit::train::data::Dataset::new(
        split.train.images()[..n * size].to_vec(),
        split.train.labels()[..n].to_vec(),
        split.train.rows(),
        split.train.cols(),
    )
    .unwrap();
    let test = ampkit::train::data::Dataset::new(
        split.test.images()[..100 * size].to_vec(),
        split.test.labels()[..100].to_vec(),
        split.test.rows(),
        split.test.cols(),
    )
    .unwrap();
    for (graph, shift) in [(false, 2), (true, 2), (true, 0)] {
        let cfg = TrainConfig {
            epochs: 2,
            batch: 48,
            cuda_graph: graph,
            augment_shift: shift,
            ..TrainConfig::mnist_default()
        };
        let mut runs = Vec::new();
        for resident in [true, false] {
            let inner = GpuBackend::new(gpu.clone(), &cfg).unwrap();
            let mut b: Box<dyn Backend> = if resident {
                Box::new(inner)
            } else {
                Box::new(HostAssembled(inner))
            };
            let s = trainer::run(
                &mut *b,
                &cfg,
                &train,
                &test,
                Progress::default(),
                &Outputs::default(),
            )
            .unwrap();
            let records: Vec<(u32, u32, bool)> = s
                .steps
                .iter()
                .map(|(_, r)| (r.loss.to_bits(), r.scale.to_bits(), r.skipped))
                .collect();
            runs.push((records, state_bits(&b.export().unwrap())));
        }
        assert_eq!(
            runs[0].0.len(),
            2 * n.div_ceil(48),
            "graph {graph} shift {shift}: steps"
        );
        assert!(
            runs[0].0 == runs[1].0,
            "graph {graph} shift {shift}: step records differ"
        );
        assert!(
            runs[0].1 == runs[1].1,
            "graph {graph} shift {shift}: final states differ"
        );
    }
}

#[test]
fn a_resumed_epoch_moves_the_device_cursor() {
    let Some(shared) = common::gpu() else { return };
    let gpu = shared.fork().unwrap();
    gpu.set_sync_launches(false);
    let (inputs, n, batch) = (784, 200, 32);
    let mut rng = common::rng("resident cursor");
    use rand::Rng;
    let images: Vec<f32> = (0..n * inputs).map(|_| rng.gen_range(0.0..1.0)).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.gen_range(0..10)).collect();
    let order: Vec<u32> = (0..n as u32).rev().collect();
    let shifts: Vec<i32> = (0..2 * n).map(|_| rng.gen_range(-2..=2)).collect();
    let cfg = TrainConfig {
        batch,
        cuda_graph: true,
        ..TrainConfig::mnist_default()
    };
    // Two fresh backends (same seed, same weights) take one step each: at batch 0, and at batch
    // 5 with no step before it, so the device cursor must be moved from 0 to sample 5·batch.
    let mut records = Vec::new();
    for skip_to in [0usize, 5] {
        let mut b = GpuBackend::new(gpu.clone(), &cfg).unwrap();
        assert!(b.keep_dataset(&images, &labels).unwrap());
        b.load_epoch_plan(&order, &shifts, 28, 0.0).unwrap();
        b.step(skip_to * batch, batch).unwrap();
        records.push(b.take_records().unwrap()[0]);
    }
    // The same fresh weights on different samples: different losses (a cursor left at sample 0
    // would give the same).
    assert_ne!(records[0].loss.to_bits(), records[1].loss.to_bits());
    // And the later batch as its own epoch from the start gives that same loss.
    let mut b = GpuBackend::new(gpu.clone(), &cfg).unwrap();
    b.keep_dataset(&images, &labels).unwrap();
    b.load_epoch_plan(&order[5 * batch..], &shifts[10 * batch..], 28, 0.0)
        .unwrap();
    b.step(0, batch).unwrap();
    assert_eq!(
        b.take_records().unwrap()[0].loss.to_bits(),
        records[1].loss.to_bits()
    );
}

#[test]
fn bad_plans_are_typed_errors() {
    let Some(shared) = common::gpu() else { return };
    let cfg = TrainConfig {
        batch: 16,
        ..TrainConfig::mnist_default()
    };
    let mut b = GpuBackend::new(shared.clone(), &cfg).unwrap();
    let images = vec![0.5f32; 10 * 784];
    let labels = vec![3u32; 10];
    let plan = |b: &mut GpuBackend, order: &[u32], shifts: &[i32], side| {
        b.load_epoch_plan(order, shifts, side, 0.0)
    };
    assert!(matches!(
        plan(&mut b, &[0, 1], &[0; 4], 28),
        Err(Error::InvalidArgument { .. })
    ));
    b.keep_dataset(&images, &labels).unwrap();
    for (order, shifts, side) in [
        (vec![0, 10], vec![0; 4], 28), // index past the set
        (vec![], vec![], 28),          // empty epoch
        (vec![0, 1], vec![0; 4], 27),  // not the image's side
    ] {
        assert!(
            matches!(
                plan(&mut b, &order, &shifts, side),
                Err(Error::InvalidArgument { .. })
            ),
            "{order:?} {side}"
        );
    }
    assert!(matches!(
        plan(&mut b, &[0, 1], &[0; 3], 28),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        b.keep_dataset(&images[..784 * 9], &labels),
        Err(Error::ShapeMismatch { .. })
    ));
    // A good plan still loads and steps after the refusals.
    plan(&mut b, &[9, 0, 4], &[1, -1, 0, 0, 2, 2], 28).unwrap();
    b.step(0, 3).unwrap();
    let r = b.take_records().unwrap();
    assert_eq!(r.len(), 1);
    assert!(r[0].loss.is_finite());
}
