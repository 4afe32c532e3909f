//! MNIST in the standard IDX format: the reader and the batch gatherer that feeds the trainer.
//!
//! A data directory holds four files, each raw or gzipped (recognised by its content, not its
//! name):
//!
//! | file | IDX magic | accepted names (each also with `.gz`) |
//! |---|---|---|
//! | training images | `0x00000803` (u8, 3 dims) | `train-images-idx3-ubyte`, `train-images.idx3-ubyte` |
//! | training labels | `0x00000801` (u8, 1 dim) | `train-labels-idx1-ubyte`, `train-labels.idx1-ubyte` |
//! | test images | `0x00000803` | `t10k-images-idx3-ubyte`, `test-images-idx3-ubyte` (or `.idx3-ubyte`) |
//! | test labels | `0x00000801` | `t10k-labels-idx1-ubyte`, `test-labels-idx1-ubyte` (or `.idx1-ubyte`) |
//!
//! The original distribution's names come first; the dotted ones are how some mirrors spell them.
//! An 8,000/2,000 subset is compiled into the library ([`bundled`]), so it needs no files at run
//! time; the full 60,000/10,000 set, or any set in these files, loads through [`load_dir`].
//!
//! Files are streamed: each header is checked before its payload is read, a file may announce at
//! most 16,777,216 items of at most 1 MiB each and 1 GiB in all, and exactly the announced payload
//! is read, so memory stays at what the headers announce however far a gzip stream would inflate.
//!
//! Every defect in the files (missing or unreadable, wrong magic, an announced size over the
//! limits, truncated, trailing bytes, count mismatch, label outside 0..=9, corrupt gzip) is an
//! [`Error::Data`] naming the file, never a panic.

mod idx;

use crate::error::{expect_len, Error, Result};
use half::f16;
use idx::IdxReader;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Number of classes: labels are `0..NUM_CLASSES`.
pub const NUM_CLASSES: usize = 10;

/// IDX magic of an unsigned-byte array with 3 dimensions (count, rows, cols).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of an unsigned-byte array with 1 dimension (count).
const LABELS_MAGIC: u32 = 0x0000_0801;

/// What to do when a file is damaged.
const REFETCH: &str = "download the file again";

/// One set of labelled images: `len()` images of `rows × cols` bytes each, row-major, stored
/// contiguously, with one label in `0..NUM_CLASSES` per image.
#[derive(Clone)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
    // The images file, so later errors (such as a size mismatch with the model) can name it.
    source: PathBuf,
    // sha256 (hex) of the images and labels as IDX files, computed once when the set is built:
    // the data cannot change afterwards.
    images_sha256: String,
    labels_sha256: String,
}

/// The training and test sets of one data directory; both have the same image size.
///
/// [`load_dir`] and [`bundled`] check that both sets are non-empty and of one image size; a split
/// built from its fields is whatever the caller puts in.
#[derive(Clone, Debug)]
pub struct MnistSplit {
    /// The training set (`train-*` files).
    pub train: Dataset,
    /// The test set (`t10k-*` or `test-*` files).
    pub test: Dataset,
}

impl Dataset {
    /// A dataset from images already in memory: `images` holds `labels.len()` images of
    /// `rows × cols` bytes each.
    ///
    /// Fails with [`Error::Data`] if `rows` or `cols` is 0, if `images` is not
    /// `labels.len() · rows · cols` bytes long, if a label is 10 or more, or if the count, `rows`
    /// or `cols` does not fit the 32 bits of an IDX header. [`Dataset::source`] is then
    /// `<memory>`.
    pub fn new(images: Vec<u8>, labels: Vec<u8>, rows: usize, cols: usize) -> Result<Dataset> {
        let source = PathBuf::from("<memory>");
        let image_size = image_size(&source, rows, cols)?;
        let want = labels.len().checked_mul(image_size);
        if want != Some(images.len()) {
            return Err(data_err(
                &source,
                format!(
                    "{} image bytes for {} labels of {rows}×{cols} images; expected {}·{image_size}",
                    images.len(),
                    labels.len(),
                    labels.len()
                ),
            ));
        }
        check_labels(&source, &labels)?;
        // The fingerprint hashes the IDX files these would be, so it matches a load of them.
        let header = |dims: &[usize]| -> Result<Vec<u8>> {
            let mut out = Vec::with_capacity(4 + 4 * dims.len());
            out.extend_from_slice(&[0, 0, 8, dims.len() as u8]);
            for &d in dims {
                let d = u32::try_from(d).map_err(|_| {
                    data_err(
                        &source,
                        format!("dimension {d} does not fit an IDX header's 32 bits"),
                    )
                })?;
                out.extend_from_slice(&d.to_be_bytes());
            }
            Ok(out)
        };
        let images_sha256 = sha256_hex(&[&header(&[labels.len(), rows, cols])?, &images]);
        let labels_sha256 = sha256_hex(&[&header(&[labels.len()])?, &labels]);
        Ok(Dataset {
            images,
            labels,
            rows,
            cols,
            source,
            images_sha256,
            labels_sha256,
        })
    }

    /// Reads an IDX images file and its IDX labels file (each raw or gzipped).
    ///
    /// Both headers are read and checked before either payload, so a count mismatch or an
    /// announced size over the limits ([module docs](self)) fails before the data is read.
    ///
    /// Fails with [`Error::Data`] naming the file at fault when either cannot be read, is not the
    /// right kind of IDX file, announces too much data, is truncated or has bytes after its data,
    /// when the two counts differ, or when a label is 10 or more.
    pub fn load(images_path: &Path, labels_path: &Path) -> Result<Dataset> {
        let images = IdxReader::open(images_path, IMAGES_MAGIC, "images")?;
        // Checked before the labels file is opened: a zero-sized image makes any count fit.
        let [_, rows, cols] = images.dims();
        image_size(images_path, rows, cols)?;
        let labels = IdxReader::open(labels_path, LABELS_MAGIC, "labels")?;
        Dataset::from_idx(images, labels)
    }

    /// The set whose headers `images` and `labels` have read; reads both payloads.
    fn from_idx(images: IdxReader<'_, 3>, labels: IdxReader<'_, 1>) -> Result<Dataset> {
        let [count, rows, cols] = images.dims();
        image_size(images.source(), rows, cols)?;
        let [label_count] = labels.dims();
        if label_count != count {
            return Err(data_err(
                labels.source(),
                format!(
                    "{label_count} labels, but the images file {} has {count} images; the two \
                     files must come from the same set",
                    images.source().display()
                ),
            ));
        }
        let source = images.source().to_path_buf();
        let labels_source = labels.source().to_path_buf();
        let (images, images_sha256) = images.finish()?;
        let (labels, labels_sha256) = labels.finish()?;
        check_labels(&labels_source, &labels)?;
        Ok(Dataset {
            images,
            labels,
            rows,
            cols,
            source,
            images_sha256,
            labels_sha256,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image, `rows · cols` (784 for MNIST): the model's input size.
    pub fn image_size(&self) -> usize {
        self.rows * self.cols
    }

    /// Image height in pixels.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Image width in pixels.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The file the images came from: `<memory>` for [`Dataset::new`], `<bundled>/<file name>` for
    /// [`bundled`].
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Image `i`: `image_size()` bytes, row-major, 0 = background.
    ///
    /// # Panics
    ///
    /// If `i >= len()`, like slice indexing; [`Dataset::gather_f32`] checks instead.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.image_size();
        &self.images[i * size..(i + 1) * size]
    }

    /// Label of image `i`, in `0..NUM_CLASSES`.
    ///
    /// # Panics
    ///
    /// If `i >= len()`, like slice indexing.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// All labels, one per image.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// All images, `len() · image_size()` bytes, image after image.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &label in &self.labels {
            // Every constructor checked label < NUM_CLASSES.
            counts[usize::from(label)] += 1;
        }
        counts
    }

    /// Fails with [`Error::Data`] naming the images file unless each image has `expected` pixels
    /// (the first layer's input size).
    pub fn check_input_size(&self, expected: usize) -> Result<()> {
        if self.image_size() == expected {
            return Ok(());
        }
        Err(data_err(
            &self.source,
            format!(
                "image size {} does not match the first layer's {expected} inputs (the images \
                 are {}×{}); build the model with {} inputs or use data of that size",
                self.image_size(),
                self.rows,
                self.cols,
                self.image_size()
            ),
        ))
    }

    /// Gathers the images and labels at `indices` into a batch: row `b` of `images` (a row-major
    /// `indices.len() × image_size()` matrix) is image `indices[b]` with each pixel `p` as
    /// `p / 255` in [0, 1], and `labels[b]` is its label. Allocates nothing.
    ///
    /// Fails, writing nothing, with [`Error::ShapeMismatch`] if `images` or `labels` has the
    /// wrong length, and with [`Error::InvalidArgument`] if an index is `len()` or more.
    pub fn gather_f32(
        &self,
        indices: &[usize],
        images: &mut [f32],
        labels: &mut [u32],
    ) -> Result<()> {
        // 256 possible pixels: one division each, then table lookups.
        let table: [f32; 256] = std::array::from_fn(|p| p as f32 / 255.0);
        self.gather("Dataset::gather_f32", indices, images, labels, &table)
    }

    /// [`Dataset::gather_f32`] in f16: each pixel is the f16 of the f32 `p / 255` (round to
    /// nearest even), so the batch equals `gather_f32` followed by
    /// [`crate::cpu::cast::f32_to_f16`]. Allocates nothing.
    ///
    /// Fails, writing nothing, as [`Dataset::gather_f32`] does.
    pub fn gather_f16(
        &self,
        indices: &[usize],
        images: &mut [f16],
        labels: &mut [u32],
    ) -> Result<()> {
        let table: [f16; 256] = std::array::from_fn(|p| f16::from_f32(p as f32 / 255.0));
        self.gather("Dataset::gather_f16", indices, images, labels, &table)
    }

    fn gather<T: Copy>(
        &self,
        op: &'static str,
        indices: &[usize],
        images: &mut [T],
        labels: &mut [u32],
        table: &[T; 256],
    ) -> Result<()> {
        let size = self.image_size();
        expect_len(op, "labels", labels.len(), indices.len(), "the batch size")?;
        let want = indices
            .len()
            .checked_mul(size)
            .ok_or_else(|| Error::InvalidArgument {
                op,
                detail: format!("batch of {} images overflows usize", indices.len()),
            })?;
        expect_len(op, "images", images.len(), want, "batch size · image size")?;
        // Checked up front so a bad index leaves the caller's buffers untouched.
        if let Some((b, &i)) = indices.iter().enumerate().find(|&(_, &i)| i >= self.len()) {
            return Err(Error::InvalidArgument {
                op,
                detail: format!(
                    "index {i} at batch position {b} is out of range for {} samples",
                    self.len()
                ),
            });
        }
        for ((&i, row), label) in indices
            .iter()
            .zip(images.chunks_exact_mut(size))
            .zip(labels)
        {
            for (dst, &p) in row.iter_mut().zip(self.image(i)) {
                *dst = table[usize::from(p)];
            }
            *label = u32::from(self.labels[i]);
        }
        Ok(())
    }
}

impl fmt::Debug for Dataset {
    // The derived form would print every pixel.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("source", &self.source)
            .finish()
    }
}

impl MnistSplit {
    /// The identity of the data: for each of `train-images`, `train-labels`, `test-images` and
    /// `test-labels`, the sha256 (lowercase hex) of that part as a decoded IDX file, header and
    /// payload, as `gunzip -c FILE.gz | sha256sum` prints it.
    ///
    /// The same data raw or gzipped, under any accepted file name, or built in memory with
    /// [`Dataset::new`], has the same fingerprint; one changed pixel, label or dimension changes
    /// it. The hashes are computed once, while each set is read (or built), so this only copies
    /// them.
    pub fn fingerprint(&self) -> BTreeMap<String, String> {
        [
            ("train-images", &self.train.images_sha256),
            ("train-labels", &self.train.labels_sha256),
            ("test-images", &self.test.images_sha256),
            ("test-labels", &self.test.labels_sha256),
        ]
        .into_iter()
        .map(|(part, hash)| (part.to_string(), hash.clone()))
        .collect()
    }

    /// A split of two loaded sets, which must be non-empty and of one image size.
    fn checked(train: Dataset, test: Dataset) -> Result<MnistSplit> {
        for set in [&train, &test] {
            if set.is_empty() {
                return Err(data_err(
                    &set.source,
                    "contains no images; training and evaluation need at least one".to_string(),
                ));
            }
        }
        if (test.rows, test.cols) != (train.rows, train.cols) {
            return Err(data_err(
                &test.source,
                format!(
                    "test images are {}×{} but the training images ({}) are {}×{}; both sets \
                     must come from the same data",
                    test.rows,
                    test.cols,
                    train.source.display(),
                    train.rows,
                    train.cols
                ),
            ));
        }
        Ok(MnistSplit { train, test })
    }
}

/// Loads the training and test sets from `dir` (file names in the [module docs](self)).
///
/// Fails with [`Error::Data`] when `dir` or a file in it is missing or cannot be read (with the
/// operating system's reason), when `dir` is not a directory, when a file is bad (see
/// [`Dataset::load`]), when a set is empty, or when the test images differ in size from the
/// training images.
pub fn load_dir(dir: &Path) -> Result<MnistSplit> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(data_err(
                dir,
                "the data directory is not a directory; pass the directory that holds the four \
                 files"
                    .to_string(),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(data_err(
                dir,
                "the data directory does not exist".to_string(),
            ))
        }
        Err(e) => {
            return Err(data_err(
                dir,
                format!("cannot read the data directory ({e}); check the path and its permissions"),
            ))
        }
    }
    let find = |prefixes: &[&str], kind: &str, idx: &str| find_file(dir, prefixes, kind, idx);
    let train_images = find(&["train"], "images", "idx3")?;
    let train_labels = find(&["train"], "labels", "idx1")?;
    let test_images = find(&["t10k", "test"], "images", "idx3")?;
    let test_labels = find(&["t10k", "test"], "labels", "idx1")?;
    let train = Dataset::load(&train_images, &train_labels)?;
    let test = Dataset::load(&test_images, &test_labels)?;
    MnistSplit::checked(train, test)
}

/// The repository's `data/` files, compiled in so an installed binary needs no files.
const BUNDLED: [(&str, &[u8]); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        include_bytes!("../../../data/train-images-idx3-ubyte.gz"),
    ),
    (
        "train-labels-idx1-ubyte.gz",
        include_bytes!("../../../data/train-labels-idx1-ubyte.gz"),
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        include_bytes!("../../../data/t10k-images-idx3-ubyte.gz"),
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        include_bytes!("../../../data/t10k-labels-idx1-ubyte.gz"),
    ),
];

/// The bundled MNIST subset, 8,000 training and 2,000 test images of 28×28: the repository's
/// `data/` files (its README says where they come from and how they were split), compiled into the
/// library. Reads no files; each call decodes the embedded bytes anew (tens of milliseconds).
///
/// The sets' [`Dataset::source`] is `<bundled>/<file name>`. Fails with [`Error::Data`] only if
/// the embedded files are damaged, which would be a defect of the build.
pub fn bundled() -> Result<MnistSplit> {
    let set = |images: (&str, &'static [u8]), labels: (&str, &'static [u8])| {
        let part = |name: &str| Path::new("<bundled>").join(name);
        let images = IdxReader::new(part(images.0), images.1, IMAGES_MAGIC, "images")?;
        let labels = IdxReader::new(part(labels.0), labels.1, LABELS_MAGIC, "labels")?;
        Dataset::from_idx(images, labels)
    };
    let [train_images, train_labels, test_images, test_labels] = BUNDLED;
    MnistSplit::checked(
        set(train_images, train_labels)?,
        set(test_images, test_labels)?,
    )
}

fn data_err(path: &Path, detail: String) -> Error {
    Error::Data {
        path: path.display().to_string(),
        detail,
    }
}

/// The first existing file among `<prefix>-<kind>-<idx>-ubyte[.gz]` and
/// `<prefix>-<kind>.<idx>-ubyte[.gz]`, prefixes in order.
///
/// A candidate that cannot be examined (no permission, a symlink loop) or is not a file is passed
/// over like a missing one, but if no candidate is usable the error names the first such problem:
/// calling the file missing would hide why it cannot be read.
fn find_file(dir: &Path, prefixes: &[&str], kind: &str, idx: &str) -> Result<PathBuf> {
    let mut problem = None;
    for prefix in prefixes {
        for sep in ['-', '.'] {
            for ext in ["", ".gz"] {
                let path = dir.join(format!("{prefix}-{kind}{sep}{idx}-ubyte{ext}"));
                let detail = match std::fs::metadata(&path) {
                    Ok(meta) if meta.is_file() => return Ok(path),
                    Ok(_) => "is not a regular file; put the IDX file itself here".to_string(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => format!("cannot read ({e}); check the file and its permissions"),
                };
                problem.get_or_insert_with(|| data_err(&path, detail));
            }
        }
    }
    if let Some(err) = problem {
        return Err(err);
    }
    let names: Vec<String> = prefixes
        .iter()
        .map(|p| format!("{p}-{kind}-{idx}-ubyte[.gz]"))
        .collect();
    Err(data_err(
        &dir.join(format!("{}-{kind}-{idx}-ubyte.gz", prefixes[0])),
        format!(
            "missing: no {} in {} (also tried `.{idx}-ubyte` spellings)",
            names.join(" or "),
            dir.display()
        ),
    ))
}

/// sha256 (lowercase hex) of the concatenated `parts`.
fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    parts.iter().for_each(|p| hash.update(p));
    to_hex(&hash.finalize())
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `rows · cols`, which must be at least 1 and fit in usize.
fn image_size(path: &Path, rows: usize, cols: usize) -> Result<usize> {
    match rows.checked_mul(cols) {
        Some(size) if size > 0 => Ok(size),
        _ => Err(data_err(
            path,
            format!("image size {rows}×{cols}: rows and columns must be at least 1"),
        )),
    }
}

fn check_labels(path: &Path, labels: &[u8]) -> Result<()> {
    match labels.iter().position(|&l| usize::from(l) >= NUM_CLASSES) {
        None => Ok(()),
        Some(i) => Err(data_err(
            path,
            format!(
                "label {} at index {i} is out of range 0..={}; {REFETCH}",
                labels[i],
                NUM_CLASSES - 1
            ),
        )),
    }
}
