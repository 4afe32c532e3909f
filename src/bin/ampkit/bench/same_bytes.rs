//! The `% copy same bytes` column on the GPU: for every memory-bound row with a byte count, a
//! device copy that moves the same bytes (half read, half written), timed like the row — L2-cold
//! input sets ([`super::inputs::n_sets`]), queue-ahead, median — and measured once per distinct
//! size in a run ([`super::copies::CopyCache`]). The 1 GiB copy of `% ceiling` runs at the
//! copy's asymptotic rate; a copy of a kernel's own size, with the same launch ramp and tail, is
//! what that kernel could reach if it were a copy.

use super::copies::{copy_bytes, copy_len, CopyCache};
use super::harness::{time_sets, Harness};
use super::report::{Ceilings, Kind, Row};
use ampkit::cuda::DeviceBuffer;
use ampkit::{Error, Result};

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
