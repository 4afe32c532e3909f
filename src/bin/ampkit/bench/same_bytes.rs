//! The `% copy same bytes` column: for every memory-bound row with a byte count, a copy that
//! moves the same bytes (half read, half written), timed like the row — L2-cold input sets
//! ([`super::n_sets`]), queue-ahead on the GPU, median — and measured once per distinct size in
//! a run ([`CopyCache`]). The 1 GiB copy of `% ceiling` runs at the copy's asymptotic rate; a
//! copy of a kernel's own size, with the same launch ramp and tail, is what that kernel could
//! reach if it were a copy.

use super::gpu::Harness;
use super::gpu_mem::time_sets;
use super::report::{Ceilings, Kind, Row};
use ampkit::cuda::DeviceBuffer;
use ampkit::{Error, Result};
use std::collections::BTreeMap;

/// f32 elements a copy moves so that its bytes read + written (`8 · len`) match `bytes`,
/// rounded to the nearest element, at least 1.
pub fn copy_len(bytes: f64) -> usize {
    if bytes.is_finite() && bytes > 0.0 {
        ((bytes / 8.0).round() as usize).max(1)
    } else {
        1
    }
}

/// Bytes read + written by a copy of `len` f32 elements.
pub fn copy_bytes(len: usize) -> f64 {
    8.0 * len as f64
}

/// Same-bytes copies measured in a run: µs per copy length ([`copy_len`]), or why the copy
/// failed (so it is not retried for every row of that size).
#[derive(Debug, Default)]
pub(crate) struct CopyCache {
    times: BTreeMap<usize, std::result::Result<f64, String>>,
}

impl CopyCache {
    /// The median µs of a copy of `len` elements: the cached result, else `measure(len)`'s,
    /// cached.
    pub fn us(&mut self, len: usize, measure: impl FnOnce(usize) -> Result<f64>) -> Result<f64> {
        let r = self
            .times
            .entry(len)
            .or_insert_with(|| measure(len).map_err(|e| e.to_string()));
        r.clone().map_err(|detail| Error::InvalidArgument {
            op: "ampkit bench (same-bytes copy)",
            detail,
        })
    }

    /// The GB/s of a copy of `bytes` (see [`CopyCache::us`]); `None` if it failed.
    pub fn gbs(&mut self, bytes: f64, measure: impl FnOnce(usize) -> Result<f64>) -> Option<f64> {
        let len = copy_len(bytes);
        let us = self.us(len, measure).ok()?;
        Some(copy_bytes(len) / us / 1e3)
    }

    /// The lines under the table: what the column means (`copy` names the copy, e.g. "host
    /// copy"; `ceiling` the copy of `% ceiling`, e.g. "1 GiB copy"), then every size measured,
    /// `MB µs GB/s`.
    pub fn notes(&self, copy: &str, ceiling: &str) -> Vec<String> {
        if self.times.is_empty() {
            return Vec::new();
        }
        let sizes: Vec<String> = (self.times.iter())
            .map(|(&len, r)| {
                let mb = copy_bytes(len) / 1e6;
                match r {
                    Ok(us) => format!(
                        "{mb:.3} MB {us:.1} us {:.1} GB/s",
                        copy_bytes(len) / us / 1e3
                    ),
                    Err(e) => format!("{mb:.3} MB failed ({e})"),
                }
            })
            .collect();
        vec![
            format!(
                "% copy same bytes = 100 x rate / GB/s of a {copy} moving the row's bytes (half \
                 read, half written), timed like the row in the same run; % ceiling is against \
                 the {ceiling}, whose rate a copy of a kernel's size need not reach"
            ),
            format!(
                "same-bytes copies (bytes read + written, median, rate): {}",
                sizes.join("; ")
            ),
        ]
    }
}

/// Median µs of a device-to-device copy of `len` f32 elements, timed like a kernel row: the
/// sources cycle through `n_sets(8 · len)` random sets, one destination, queue-ahead.
fn device_copy_us(h: &mut Harness, len: usize) -> Result<f64> {
    let mut dst: DeviceBuffer<f32> = h.gpu.alloc_zeros(len)?;
    let stream = h.gpu.stream().clone();
    time_sets(
        h,
        copy_bytes(len),
        |h, s| h.f32_buf(len, s),
        |src, _| {
            stream
                .memcpy_dtod(&*src, &mut dst)
                .map_err(Error::driver("timing the same-bytes device copy"))
        },
    )
}

/// Runs `f` on the harness's [`CopyCache`] with the harness itself free to measure.
fn with_cache<T>(h: &mut Harness, f: impl FnOnce(&mut CopyCache, &mut Harness) -> T) -> T {
    let mut cache = std::mem::take(&mut h.copies);
    let r = f(&mut cache, h);
    h.copies = cache;
    r
}

/// GB/s of a device copy of `bytes` (half read, half written), measured once per size in the
/// run; `None` if it failed.
pub(super) fn device_copy_gbs(h: &mut Harness, bytes: f64) -> Option<f64> {
    with_cache(h, |c, h| c.gbs(bytes, |len| device_copy_us(h, len)))
}

/// A row of its own for the same-bytes device copy of `bytes` (the `AMPKIT_BENCH_MEM_SWEEP`
/// rows), from the same cached measurement the column uses.
pub(super) fn device_copy_row(
    h: &mut Harness,
    (name, shape): (&str, &str),
    bytes: f64,
    ceil: &Ceilings,
) -> Result<Row> {
    let len = copy_len(bytes);
    let us = with_cache(h, |c, h| c.us(len, |len| device_copy_us(h, len)))?;
    let gbs = copy_bytes(len) / us / 1e3;
    Ok(
        Row::measured(Kind::Mem, name, shape, us, Some(gbs), "GB/s", ceil.copy_gbs)
            .with_work(0.0, copy_bytes(len))
            .with_copy_same_bytes(Some(gbs)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lengths_match_the_bytes() {
        assert_eq!(copy_len(8.0 * 4096.0 * 512.0), 4096 * 512);
        // Adam on the MLP: 30 B per parameter, not a multiple of 8: within half an element.
        let adam = 30.0 * 407_050.0;
        assert!((copy_bytes(copy_len(adam)) - adam).abs() <= 4.0);
        assert_eq!(copy_len(12.0), 2);
        assert_eq!(copy_len(0.0), 1);
        assert_eq!(copy_len(f64::NAN), 1);
    }

    #[test]
    fn cache_measures_once_per_size_and_keeps_failures() {
        let mut c = CopyCache::default();
        let mut calls = 0;
        let mut measure = |len: usize| {
            calls += 1;
            Ok(len as f64 * 8.0 / 2000.0) // 2000 MB/s = 2 GB/s
        };
        assert_eq!(c.gbs(8e6, &mut measure), Some(2.0));
        assert_eq!(c.gbs(8e6 + 1.0, &mut measure), Some(2.0));
        assert_eq!(c.gbs(16e6, &mut measure), Some(2.0));
        assert_eq!(calls, 2);
        let fail = |_| -> Result<f64> {
            Err(Error::InvalidArgument {
                op: "test",
                detail: "out of memory".into(),
            })
        };
        assert_eq!(c.gbs(4e6, fail), None);
        assert!(c.us(copy_len(4e6), |_| Ok(1.0)).is_err());
        let notes = c.notes("device copy", "1 GiB copy");
        assert_eq!(notes.len(), 2);
        assert!(notes[0].starts_with("% copy same bytes = 100 x rate / GB/s of a device copy"));
        assert!(
            notes[1].contains("8.000 MB 4000.0 us 2.0 GB/s"),
            "{}",
            notes[1]
        );
        assert!(notes[1].contains("4.000 MB failed (") && notes[1].contains("out of memory"));
        assert!(notes[0].contains("against the 1 GiB copy, whose rate"));
        assert!(CopyCache::default().notes("host copy", "x").is_empty());
    }
}
