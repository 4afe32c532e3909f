//! Every kind of bad MNIST data, announced sizes over the limits, and unreadable paths: a typed
//! error naming the file and saying what to do, never a panic.

mod data_support;

use ampkit::train::data::load_dir;
use data_support::*;

#[test]
fn missing_directory_and_files() {
    let tmp = small_dir();
    let gone = tmp.path().join("no-such-dir");
    assert_data_error(
        load_dir(&gone).unwrap_err(),
        "no-such-dir",
        &["does not exist"],
    );
    let file = tmp.path().join("train-labels-idx1-ubyte");
    assert_data_error(
        load_dir(&file).unwrap_err(),
        "train-labels-idx1-ubyte",
        &["not a dir"],
    );

    std::fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(
        err,
        "t10k-labels-idx1-ubyte.gz",
        &["missing", "test-labels-idx1-ubyte"],
    );
}

#[test]
fn wrong_magic() {
    let tmp = small_dir();
    // Swapped: a labels file where the images belong.
    let labels = idx_labels(&[1, 2, 3, 4, 5]);
    std::fs::write(tmp.path().join("train-images-idx3-ubyte.gz"), gzip(&labels)).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(
        err,
        "train-images-idx3-ubyte.gz",
        &["0x00000801", "0x00000803", "images and labels swapped?"],
    );

    let tmp = small_dir();
    std::fs::write(
        tmp.path().join("t10k-labels-idx1-ubyte"),
        b"PK\x03\x04 a zip file",
    )
    .unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "t10k-labels-idx1-ubyte", &["magic", "not an IDX file"]);

    // IDX, but of another element type: the header says which.
    let mut floats = idx_labels(&[0; 8]);
    floats[2..4].copy_from_slice(&[0x0d, 2]);
    std::fs::write(tmp.path().join("t10k-labels-idx1-ubyte"), floats).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(
        err,
        "t10k-labels-idx1-ubyte",
        &["0x00000d02 (an IDX file of f32 with 2 dimension(s))"],
    );
}

#[test]
fn truncated_files() {
    // Data cut short, inside a gzip stream that is itself intact.
    let tmp = small_dir();
    let short = idx_images(3, 4, 3, &[0; 35]);
    std::fs::write(tmp.path().join("t10k-images-idx3-ubyte.gz"), gzip(&short)).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(
        err,
        "t10k-images-idx3-ubyte.gz",
        &["truncated", "3×4×3 = 36", "35"],
    );

    // A header cut short, an empty file, and a gzip stream cut short.
    let tmp = small_dir();
    std::fs::write(
        tmp.path().join("train-labels-idx1-ubyte"),
        &idx_labels(&[])[..6],
    )
    .unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "train-labels-idx1-ubyte", &["truncated", "header"]);
    std::fs::write(tmp.path().join("train-labels-idx1-ubyte"), b"").unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "train-labels-idx1-ubyte", &["too short"]);

    let tmp = small_dir();
    let path = tmp.path().join("train-images-idx3-ubyte.gz");
    let gz = std::fs::read(&path).unwrap();
    std::fs::write(&path, &gz[..gz.len() - 10]).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "train-images-idx3-ubyte.gz", &["gzip"]);
    // A flipped byte in the compressed data fails the CRC or the inflater.
    let mut bad = gz.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&path, bad).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "train-images-idx3-ubyte.gz", &["gzip"]);
}

#[test]
fn trailing_garbage() {
    let tmp = small_dir();
    let mut labels = idx_labels(&[3, 5, 7]);
    labels.extend_from_slice(b"\n\n");
    std::fs::write(tmp.path().join("t10k-labels-idx1-ubyte"), labels).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(
        err,
        "t10k-labels-idx1-ubyte",
        &["2 bytes of trailing garbage"],
    );
    // Past 1 MiB the reader stops counting (and reading).
    let mut labels = idx_labels(&[3, 5, 7]);
    labels.resize(labels.len() + (1 << 20) + 1, 0);
    std::fs::write(tmp.path().join("t10k-labels-idx1-ubyte"), gzip(&labels)).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(
        err,
        "t10k-labels-idx1-ubyte",
        &["more than 1048576 bytes of trailing garbage"],
    );
}

#[test]
fn count_mismatch_and_label_range() {
    let tmp = small_dir();
    std::fs::write(
        tmp.path().join("train-labels-idx1-ubyte"),
        idx_labels(&[0, 1, 2, 3]),
    )
    .unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "train-labels-idx1-ubyte", &["4 labels", "5 images"]);
    // Found from the headers, before the truncated images payload is read.
    let short = idx_images(5, 4, 3, &[0; 35]);
    std::fs::write(tmp.path().join("train-images-idx3-ubyte.gz"), gzip(&short)).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "train-labels-idx1-ubyte", &["4 labels", "5 images"]);

    let tmp = small_dir();
    std::fs::write(
        tmp.path().join("t10k-labels-idx1-ubyte"),
        idx_labels(&[3, 10, 7]),
    )
    .unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(
        err,
        "t10k-labels-idx1-ubyte",
        &["label 10 at index 1", "0..=9"],
    );
}

#[test]
fn image_sizes() {
    // Test images of another size than the training images.
    let tmp = small_dir();
    write_set(tmp.path(), "t10k", 3, 3, 4, &[3, 5, 7]);
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "t10k-images-idx3-ubyte.gz", &["3×4", "4×3"]);

    // Zero-sized images, and an empty set.
    let tmp = small_dir();
    write_set(tmp.path(), "train", 5, 0, 3, &[0, 1, 2, 9, 4]);
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "train-images-idx3-ubyte.gz", &["0×3"]);
    let tmp = small_dir();
    write_set(tmp.path(), "t10k", 0, 4, 3, &[]);
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "t10k-images-idx3-ubyte.gz", &["no images"]);
}

#[test]
fn announced_sizes_over_the_limits_fail_before_any_payload() {
    // Each header is followed by 100 bytes only: the old reader called these truncated after
    // reading them; now the header alone decides.
    let cases: [(u32, u32, u32, &str); 4] = [
        (1 << 31, 28, 28, "2147483648 items, more than the 16777216"),
        (u32::MAX, u32::MAX, u32::MAX, "4294967295 items"),
        (
            10,
            2048,
            1024,
            "2097152 bytes per item, more than the 1048576",
        ),
        (
            1 << 20,
            32,
            64,
            "2147483648 bytes in all, more than the 1073741824",
        ),
    ];
    for (n, rows, cols, words) in cases {
        let tmp = small_dir();
        let mut file = idx_images(n, rows, cols, &[0; 100]);
        file.truncate(16 + 100);
        std::fs::write(tmp.path().join("train-images-idx3-ubyte.gz"), gzip(&file)).unwrap();
        let err = load_dir(tmp.path()).unwrap_err();
        assert!(!err.to_string().contains("truncated"), "{err}");
        assert_data_error(err, "train-images-idx3-ubyte.gz", &[words, "download"]);
    }
    let tmp = small_dir();
    let mut labels = idx_labels(&[]);
    labels[4..8].copy_from_slice(&(1u32 << 31).to_be_bytes());
    std::fs::write(tmp.path().join("t10k-labels-idx1-ubyte"), labels).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "t10k-labels-idx1-ubyte", &["2147483648 items"]);
}

#[cfg(unix)]
#[test]
fn unreadable_paths_report_the_os_error() {
    use std::os::unix::fs::PermissionsExt;

    // A data directory below a regular file: ENOTDIR, which permission bits (and root) don't
    // change. It was reported as "does not exist".
    let tmp = small_dir();
    let below_file = tmp.path().join("train-labels-idx1-ubyte").join("mnist");
    let err = load_dir(&below_file).unwrap_err();
    assert!(!err.to_string().contains("does not exist"), "{err}");
    assert_data_error(
        err,
        "mnist",
        &["cannot read the data directory", "os error", "permissions"],
    );

    // A symlink loop and a directory where the file belongs: the reason, not "missing".
    let tmp = small_dir();
    let path = tmp.path().join("train-images-idx3-ubyte.gz");
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&path, &path).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert!(!err.to_string().contains("missing"), "{err}");
    assert_data_error(
        err,
        "train-images-idx3-ubyte.gz",
        &["cannot read", "os error"],
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let err = load_dir(tmp.path()).unwrap_err();
    assert_data_error(err, "train-images-idx3-ubyte.gz", &["not a regular file"]);
    // A usable candidate still wins over an unusable one found first, as before.
    std::fs::remove_dir(&path).unwrap();
    std::fs::create_dir(tmp.path().join("train-images-idx3-ubyte")).unwrap();
    write_set(tmp.path(), "train", 5, 4, 3, &[0, 1, 2, 9, 4]);
    assert_eq!(load_dir(tmp.path()).unwrap().train.len(), 5);

    // A directory without permissions: EACCES, unless the tests run as root, who may read it.
    let tmp = small_dir();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o000)).unwrap();
    let as_root = std::fs::metadata(tmp.path().join("train-labels-idx1-ubyte")).is_ok();
    let result = load_dir(tmp.path());
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    if as_root {
        eprintln!("skipped the permission case: permission bits do not stop this user");
        assert!(result.is_ok());
    } else {
        let err = result.unwrap_err();
        assert!(!err.to_string().contains("missing"), "{err}");
        assert_data_error(err, "train-images-idx3-ubyte", &["cannot read", "os error"]);
    }
}
