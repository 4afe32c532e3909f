//! The MNIST data layer: the bundled subset as documented in data/README.md (compiled in, and the
//! same as its files), raw vs gzip, the accepted file names, fingerprints, batch gathering, and
//! the binary training outside the repository. Bad data and unreadable paths are in data_errors.rs,
//! gzip bombs in data_bomb.rs.

mod data_support;

use ampkit::train::data::{self, load_dir, Dataset, MnistSplit, NUM_CLASSES};
use ampkit::{f16, Error};
use data_support::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn bundled() -> &'static MnistSplit {
    static SPLIT: OnceLock<MnistSplit> = OnceLock::new();
    SPLIT.get_or_init(|| data::bundled().expect("the bundled data decodes"))
}

/// data/README.md's sha256 of each decoded file, under the fingerprint's part names.
const README_SHA256: [(&str, &str); 4] = [
    (
        "train-images",
        "4987fe772ce9a708b20aa7d3aff93b61e4aed376a77a139646e679a0961597cf",
    ),
    (
        "train-labels",
        "2df73b721c9366e2e777870a2b99df564e255e45571da000353dddffc7f22297",
    ),
    (
        "test-images",
        "e6ab1f12d35ee633e955402c87dd01ebed15f99c672054215e5e7e6200a47394",
    ),
    (
        "test-labels",
        "1dc09ebaaeee3019a0fc294d290041c5510b71c5938151e3583cee3a71ad0285",
    ),
];

const TRAIN_COUNTS: [usize; NUM_CLASSES] = [801, 902, 793, 826, 784, 690, 811, 856, 755, 782];
const TEST_COUNTS: [usize; NUM_CLASSES] = [200, 225, 198, 206, 196, 173, 203, 214, 189, 196];

#[test]
fn bundled_split_matches_its_readme() {
    let split = bundled();
    assert_eq!((split.train.len(), split.test.len()), (8000, 2000));
    for set in [&split.train, &split.test] {
        assert_eq!((set.rows(), set.cols(), set.image_size()), (28, 28, 784));
        assert_eq!(set.images().len(), set.len() * 784);
        assert_eq!(set.labels().len(), set.len());
        set.check_input_size(784).unwrap();
    }
    assert_eq!(split.train.class_counts(), TRAIN_COUNTS);
    assert_eq!(split.test.class_counts(), TEST_COUNTS);
    for (train, test) in TRAIN_COUNTS.iter().zip(TEST_COUNTS) {
        assert!((690..=910).contains(train) && (170..=230).contains(&test));
    }

    // The loader's view, serialised back to IDX, must hash to data/README.md's raw sha256s.
    let serialised = [
        idx_images(8000, 28, 28, split.train.images()),
        idx_labels(split.train.labels()),
        idx_images(2000, 28, 28, split.test.images()),
        idx_labels(split.test.labels()),
    ];
    for (bytes, (part, want)) in serialised.iter().zip(README_SHA256) {
        assert_eq!(sha256(bytes), want, "{part}");
    }
    // And so must the fingerprint, which hashes the decoded files as they are read.
    let want: BTreeMap<String, String> = README_SHA256
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(split.fingerprint(), want);
    assert!(split.train.source().ends_with("train-images-idx3-ubyte.gz"));
    assert!(split.train.source().starts_with("<bundled>"));
}

#[test]
fn bundled_pixels_look_like_mnist() {
    let split = bundled();
    for set in [&split.train, &split.test] {
        let px = set.images();
        assert_eq!(px.iter().min(), Some(&0));
        assert_eq!(px.iter().max(), Some(&255));
        // MNIST's mean pixel is 0.1307 · 255 ≈ 33; a transposed or shifted decode is far off.
        let mean = px.iter().map(|&p| p as f64).sum::<f64>() / px.len() as f64;
        assert!((28.0..40.0).contains(&mean), "mean pixel {mean}");
        for i in 0..set.len() {
            let img = set.image(i);
            // The 28×28 digits are centred in a 20×20 box: the corners are always background.
            assert_eq!([img[0], img[27], img[756], img[783]], [0; 4], "image {i}");
            assert!(
                img.iter().filter(|&&p| p > 128).count() >= 10,
                "image {i} is blank"
            );
        }
    }
    // Classes are interleaved: each 100-sample window of the training set holds every digit.
    for w in split.train.labels().chunks(100) {
        let mut seen = [false; NUM_CLASSES];
        w.iter().for_each(|&l| seen[l as usize] = true);
        assert!(seen.iter().all(|&s| s));
    }
}

#[test]
fn compiled_in_data_equals_the_data_files() {
    let files = load_dir(&data_dir()).unwrap();
    let built_in = bundled();
    assert_eq!(files.train.images(), built_in.train.images());
    assert_eq!(files.train.labels(), built_in.train.labels());
    assert_eq!(files.test.images(), built_in.test.images());
    assert_eq!(files.test.labels(), built_in.test.labels());
    assert_eq!(files.fingerprint(), built_in.fingerprint());
    assert!(files
        .train
        .source()
        .ends_with("data/train-images-idx3-ubyte.gz"));
    // Decoding again gives the same data.
    let again = data::bundled().unwrap();
    assert_eq!(again.train.images(), built_in.train.images());
    assert_eq!(again.fingerprint(), built_in.fingerprint());
}

#[test]
fn raw_and_test_prefix_load_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("train-images-idx3-ubyte", "train-images-idx3-ubyte"),
        ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "test-images-idx3-ubyte"),
        ("t10k-labels-idx1-ubyte", "test-labels-idx1-ubyte"),
    ] {
        let raw = gunzip(&data_dir().join(format!("{from}.gz")));
        std::fs::write(tmp.path().join(to), raw).unwrap();
    }
    let raw = load_dir(tmp.path()).unwrap();
    // Raw files, another name: the fingerprint of the gzipped originals.
    assert_eq!(raw.fingerprint(), bundled().fingerprint());
    assert_eq!(raw.train.images(), bundled().train.images());
    assert_eq!(raw.train.labels(), bundled().train.labels());
    assert_eq!(raw.test.images(), bundled().test.images());
    assert_eq!(raw.test.labels(), bundled().test.labels());
    assert!(raw.test.source().ends_with("test-images-idx3-ubyte"));

    // Re-gzipped with another encoder, and a multi-member gzip file: the same data.
    let labels = std::fs::read(tmp.path().join("test-labels-idx1-ubyte")).unwrap();
    let (head, tail) = labels.split_at(1000);
    std::fs::remove_file(tmp.path().join("test-labels-idx1-ubyte")).unwrap();
    let two_members = [gzip(head), gzip(tail)].concat();
    std::fs::write(tmp.path().join("test-labels-idx1-ubyte.gz"), two_members).unwrap();
    let regzipped = load_dir(tmp.path()).unwrap();
    assert_eq!(regzipped.test.labels(), bundled().test.labels());
    assert_eq!(regzipped.fingerprint(), bundled().fingerprint());
}

#[test]
fn gather_builds_batches() {
    let set = &bundled().train;
    let indices = [7999, 0, 4321, 0];
    let mut x = vec![f32::NAN; 4 * 784];
    let mut y = vec![u32::MAX; 4];
    set.gather_f32(&indices, &mut x, &mut y).unwrap();
    let mut h = vec![f16::NAN; 4 * 784];
    let mut yh = vec![u32::MAX; 4];
    set.gather_f16(&indices, &mut h, &mut yh).unwrap();
    for (b, &i) in indices.iter().enumerate() {
        assert_eq!(y[b], set.label(i) as u32);
        for (k, &p) in set.image(i).iter().enumerate() {
            let v = x[b * 784 + k];
            assert_eq!(v, p as f32 / 255.0);
            assert_eq!(h[b * 784 + k].to_bits(), f16::from_f32(v).to_bits());
        }
    }
    assert_eq!(yh, y);
    assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
    // An empty batch is fine.
    set.gather_f32(&[], &mut [], &mut []).unwrap();
}

#[test]
fn gather_rejects_bad_arguments_without_writing() {
    let set = &bundled().test;
    let mut x = vec![-1.0f32; 2 * 784];
    let mut y = vec![99u32; 2];
    let err = set.gather_f32(&[1, 2000], &mut x, &mut y).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("index 2000"), "{err}");
    assert!(x.iter().all(|&v| v == -1.0) && y == [99, 99]);

    let err = set.gather_f32(&[1, 2], &mut x[..784], &mut y).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let err = set.gather_f32(&[1, 2], &mut x, &mut y[..1]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let mut h = vec![f16::ZERO; 784];
    let err = set.gather_f16(&[3, 4], &mut h, &mut y).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn small_directory_loads() {
    let tmp = small_dir();
    let split = load_dir(tmp.path()).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (5, 3));
    assert_eq!((split.train.rows(), split.train.cols()), (4, 3));
    assert_eq!(split.train.labels(), [0, 1, 2, 9, 4]);
    assert_eq!(
        split.test.image(2),
        (24..36).map(|i| (i * 37 % 256) as u8).collect::<Vec<_>>()
    );
}

#[test]
fn in_memory_datasets() {
    let set = Dataset::new(vec![0, 255, 128, 1, 2, 3], vec![4, 9], 1, 3).unwrap();
    assert_eq!(
        (set.len(), set.image_size(), set.image(1)),
        (2, 3, &[1u8, 2, 3][..])
    );
    assert_eq!(set.class_counts()[4] + set.class_counts()[9], 2);
    assert!(!set.is_empty() && Dataset::new(vec![], vec![], 28, 28).unwrap().is_empty());
    for bad in [
        Dataset::new(vec![0; 5], vec![1, 2], 1, 3),
        Dataset::new(vec![0; 6], vec![1, 12], 1, 3),
        Dataset::new(vec![], vec![], 0, 3),
    ] {
        assert_data_error(bad.unwrap_err(), "<memory>", &[]);
    }
}

#[test]
fn input_size_against_the_model() {
    // The model's input size against the images.
    let err = bundled().train.check_input_size(100).unwrap_err();
    assert_data_error(
        err,
        "train-images-idx3-ubyte.gz",
        &["image size 784 does not match the first layer's 100 inputs"],
    );
}

#[test]
fn fingerprint_tracks_every_byte_of_the_decoded_files() {
    let tmp = small_dir();
    let split = load_dir(tmp.path()).unwrap();
    let base = split.fingerprint();
    let parts: Vec<&str> = base.keys().map(String::as_str).collect();
    assert_eq!(
        parts,
        ["test-images", "test-labels", "train-images", "train-labels"]
    );
    // Each part is the sha256 of the decoded IDX file, gzipped on disk or not.
    let train_images = gunzip(&tmp.path().join("train-images-idx3-ubyte.gz"));
    assert_eq!(base["train-images"], sha256(&train_images));
    assert_eq!(base["train-labels"], sha256(&idx_labels(&[0, 1, 2, 9, 4])));

    // The same data built in memory.
    let copy = |d: &Dataset| {
        Dataset::new(d.images().to_vec(), d.labels().to_vec(), d.rows(), d.cols()).unwrap()
    };
    let in_memory = MnistSplit {
        train: copy(&split.train),
        test: copy(&split.test),
    };
    assert_eq!(in_memory.fingerprint(), base);

    // One pixel, one label, the shape of the same bytes: each changes only its own part.
    let changed = |edit: &dyn Fn(&Path), part: &str| {
        let tmp = small_dir();
        edit(tmp.path());
        let new = load_dir(tmp.path()).unwrap().fingerprint();
        for (k, v) in &new {
            assert_eq!(v == &base[k], k != part, "{part}: {k}");
        }
    };
    let mut pixels = split.train.images().to_vec();
    pixels[7] ^= 1;
    changed(
        &|dir| {
            let file = idx_images(5, 4, 3, &pixels);
            std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gzip(&file)).unwrap();
        },
        "train-images",
    );
    changed(
        &|dir| {
            std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_labels(&[3, 5, 8])).unwrap();
        },
        "test-labels",
    );
    // Same 60 bytes as 5 images of 12×1 pixels (the test set must match: 12×1 too).
    let tmp = small_dir();
    let file = idx_images(5, 12, 1, split.train.images());
    std::fs::write(tmp.path().join("train-images-idx3-ubyte.gz"), gzip(&file)).unwrap();
    let file = idx_images(3, 12, 1, split.test.images());
    std::fs::write(tmp.path().join("t10k-images-idx3-ubyte.gz"), gzip(&file)).unwrap();
    let reshaped = load_dir(tmp.path()).unwrap().fingerprint();
    assert_ne!(reshaped["train-images"], base["train-images"]);
    assert_eq!(reshaped["train-labels"], base["train-labels"]);
}

/// The ampkit binary cargo built next to this test executable (target/<profile>/ampkit), found at
/// run time.
fn ampkit_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let up = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let candidates = [up.join("ampkit"), up.join("bin").join("ampkit")];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| panic!("no ampkit binary at {candidates:?}; build it with cargo build"))
}

#[test]
fn binary_trains_and_evaluates_outside_the_repository() {
    // No data/ here, and no CARGO_MANIFEST_DIR (cargo sets it for tests) to lead back to one:
    // as after `cargo install`.
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(ampkit_bin())
            .current_dir(tmp.path())
            .env_remove("CARGO_MANIFEST_DIR")
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "ampkit {args:?} failed:\n{text}");
        text
    };
    let train = run(&[
        "train",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--no-progress",
        "--save",
        "ckpt",
    ]);
    assert!(train.contains("8000 train / 2000 test"), "{train}");
    assert!(train.contains("done: 3 steps"), "{train}");
    assert!(tmp.path().join("ckpt").is_dir());
    let eval = run(&["eval", "--checkpoint", "ckpt", "--device", "cpu"]);
    assert!(eval.contains("/2000)"), "{eval}");
}
