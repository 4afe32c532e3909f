//! Gzip bombs: small `.gz` files that inflate to 2 GiB. The reader must reject them with its peak
//! heap use bounded by what the IDX header announces, and without inflating the whole stream.
//!
//! The heap is measured by a counting global allocator, which is why this is its own test binary
//! with one test: no other test's allocations run alongside.

mod data_support;

use ampkit::train::data::Dataset;
use ampkit::Error;
use data_support::{gzip, idx_images, idx_labels};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The system allocator, keeping the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = IN_USE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call forwards to `System` with the caller's arguments; the counters are only
// bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        IN_USE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            // Counted as a fresh block beside the old one, as a moving realloc briefly is.
            grew(new_size);
            IN_USE.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;

/// Writes a gzip file that inflates to `head` followed by 2 GiB of zeros, then bytes that are not
/// gzip. The zeros are 256 gzip members of 8 MiB each (a multi-member file, which gzip readers
/// inflate as one stream); the final junk makes any reader that inflates to the end fail there,
/// with a gzip error, so the error a test gets shows where the reader stopped.
fn write_bomb(path: &Path, head: &[u8]) -> u64 {
    let zeros = gzip(&vec![0u8; 8 * MIB]);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    file.write_all(&gzip(head)).unwrap();
    for _ in 0..256 {
        file.write_all(&zeros).unwrap();
    }
    file.write_all(b"the end of the bomb, not gzip").unwrap();
    file.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// Loads `images` with valid labels for `n` images; returns the error, the peak heap above what
/// was in use before, and the time taken.
fn load(images: &Path, labels: &Path, n: usize) -> (Error, usize, f64) {
    std::fs::write(labels, idx_labels(&vec![0; n])).unwrap();
    let before = IN_USE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let t = Instant::now();
    let result = Dataset::load(images, labels);
    let secs = t.elapsed().as_secs_f64();
    let peak = PEAK.load(Ordering::SeqCst) - before;
    (result.expect_err("a bomb must not load"), peak, secs)
}

#[test]
fn gzip_bombs_fail_with_memory_bounded_by_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, labels) = (
        tmp.path().join("train-images-idx3-ubyte.gz"),
        tmp.path().join("train-labels-idx1-ubyte"),
    );

    // A plausible header (10,000 images, 7.8 MB) whose payload is followed by 2 GiB of zeros.
    let n = 10_000;
    let size = write_bomb(&images, &idx_images(n as u32, 28, 28, &vec![0; n * 784]));
    let (err, peak, secs) = load(&images, &labels, n);
    eprintln!(
        "bomb after a 10000-image header: {:.1} MB file, peak heap {:.1} MB, {secs:.2} s: {err}",
        size as f64 / 1e6,
        peak as f64 / 1e6
    );
    let msg = err.to_string();
    // "trailing garbage", not the gzip error at the end: the reader stopped long before it.
    assert!(
        msg.contains("more than 1048576 bytes of trailing garbage"),
        "{msg}"
    );
    assert!(!msg.contains("gzip"), "{msg}");
    // The announced payload plus buffers (the inflater's window, the file buffer): well under the
    // 2 GiB a read-everything reader needs.
    assert!(peak < n * 784 + 2 * MIB, "peak heap {peak} bytes");

    // A header announcing 2^31 images: rejected from the header alone.
    write_bomb(&images, &idx_images(1 << 31, 28, 28, &[]));
    let (err, peak, secs) = load(&images, &labels, 10);
    eprintln!(
        "bomb after a 2^31-image header: peak heap {:.1} MB, {secs:.2} s: {err}",
        peak as f64 / 1e6
    );
    let msg = err.to_string();
    assert!(
        msg.contains("2147483648 items, more than the 16777216"),
        "{msg}"
    );
    assert!(peak < 2 * MIB, "peak heap {peak} bytes");
}
