//! The copies behind `% copy same bytes`: a copy of a row's bytes (half read, half written) as
//! f32 elements, and the cache that measures each size once per run, on the GPU or the host
//! (the measuring is the caller's: `same_bytes.rs` on the GPU, `cpu.rs` on the host).

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
pub struct CopyCache {
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
