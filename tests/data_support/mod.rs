//! Shared support of the MNIST data tests (`data`, `data_errors`, `data_bomb`): IDX and gzip
//! bytes built in memory, a small valid data directory, and the check that an error names its file
//! and says what to do.
#![allow(dead_code)]

use ampkit::Error;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// data/ of this repository, found at run time (never `env!`, which would bake in the build
/// machine's path).
pub fn data_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let root = manifest.unwrap_or_else(|| std::env::current_dir().expect("current directory"));
    root.join("data")
}

/// IDX bytes of a set: header (magic, dimensions) followed by the data.
pub fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [0x803, n, rows, cols] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [0x801, labels.len() as u32] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(labels);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A small valid directory: 5 training and 3 test images of 4×3 pixels.
pub fn small_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), "train", 5, 4, 3, &[0, 1, 2, 9, 4]);
    write_set(tmp.path(), "t10k", 3, 4, 3, &[3, 5, 7]);
    tmp
}

pub fn write_set(dir: &Path, prefix: &str, n: u32, rows: u32, cols: u32, labels: &[u8]) {
    let pixels: Vec<u8> = (0..n * rows * cols).map(|i| (i * 37 % 256) as u8).collect();
    let images = idx_images(n, rows, cols, &pixels);
    std::fs::write(
        dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        gzip(&images),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{prefix}-labels-idx1-ubyte")),
        idx_labels(labels),
    )
    .unwrap();
}

/// Asserts `err` is [`Error::Data`] whose path and message name `file`, and whose message contains
/// each of `words`.
pub fn assert_data_error(err: Error, file: &str, words: &[&str]) {
    let msg = err.to_string();
    match &err {
        Error::Data { path, .. } => assert!(path.ends_with(file), "path {path} for {file}"),
        other => panic!("expected Error::Data, got {other:?}"),
    }
    assert!(msg.contains(file), "message does not name {file}: {msg}");
    for w in words {
        assert!(msg.contains(w), "message lacks {w:?}: {msg}");
    }
    assert!(msg.contains("--data DIR"), "message says what to do: {msg}");
}
