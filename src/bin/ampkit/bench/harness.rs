//! The GPU timing harness of `ampkit bench`: CUDA events between calls queued back to back,
//! queue-ahead (device copies keeping the GPU busy while the host enqueues the timed calls, so
//! the rows measure GPU time), and random input sets cut from one device-resident pool.

use super::clock::median;
use super::collect::Options;
use super::copies::CopyCache;
use super::inputs::{hash32, n_sets, random_f32};
use ampkit::cuda::{DeviceBuffer, Gpu};
use ampkit::ops::gemm::GemmOperand;
use ampkit::{ops, Error, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use std::sync::Arc;
use std::time::Instant;

/// f32 elements of the random pool every input set is cut from (256 MB, uploaded once).
const POOL_LEN: usize = 1 << 26;
/// Bytes of each of the two buffers the queue-ahead copies move.
const BUSY_BYTES: usize = 256 << 20;
/// Most queue-ahead copies before one timed sequence.
const MAX_BUSY_COPIES: usize = 512;
/// A row that cannot be measured, for a reason the bench states itself.
pub fn failure(detail: String) -> Error {
    Error::InvalidArgument {
        op: "ampkit bench",
        detail,
    }
}

/// Buffers the queue-ahead copies move, and how long one copy takes.
struct Busy {
    src: DeviceBuffer<u8>,
    dst: DeviceBuffer<u8>,
    copy_us: f64,
}

/// Timing and random data on one GPU.
pub struct Harness {
    /// The GPU handle the rows launch on (the training rows swap in the backend's fork).
    pub gpu: Arc<Gpu>,
    /// Untimed calls before a row's timed ones.
    pub warmup: usize,
    /// Timed calls per row.
    pub runs: usize,
    pool: DeviceBuffer<f32>,
    busy: Option<Busy>,
    /// The same-bytes copies measured so far (`% copy same bytes`).
    pub copies: CopyCache,
}

/// Where set `seed` starts in the pool: a hash of the seed, 256-byte aligned, within `span`.
fn pool_offset(seed: u32, span: usize) -> usize {
    if span == 0 {
        return 0;
    }
    (hash32(seed) as usize % (span + 1)) & !63
}

impl Harness {
    /// Uploads the random pool (values in [-2, 2)).
    pub fn new(gpu: &Arc<Gpu>, opts: &Options) -> Result<Harness> {
        let pool = gpu.upload(&random_f32(POOL_LEN, 0xB0_0C, -2.0, 2.0))?;
        Ok(Harness {
            gpu: gpu.clone(),
            warmup: opts.warmup(),
            runs: opts.runs(),
            pool,
            busy: None,
            copies: Default::default(),
        })
    }

    /// Turns queue-ahead on, with copies timed from the measured copy bandwidth.
    pub fn enable_queue_ahead(&mut self, copy_gbs: f64) -> Result<()> {
        self.busy = Some(Busy {
            src: self.gpu.alloc_zeros(BUSY_BYTES)?,
            dst: self.gpu.alloc_zeros(BUSY_BYTES)?,
            copy_us: 2.0 * BUSY_BYTES as f64 / (copy_gbs * 1e3),
        });
        Ok(())
    }

    /// Queues device copies lasting about `want_us` (clamped to 1-200 ms), so that the GPU is
    /// still busy with them while the host enqueues the timed calls behind them.
    fn queue_ahead(&mut self, want_us: f64) -> Result<()> {
        let stream = self.gpu.stream().clone();
        let Some(b) = self.busy.as_mut() else {
            return Ok(());
        };
        let us = want_us.clamp(1_000.0, 200_000.0);
        let copies = ((us / b.copy_us).ceil() as usize).clamp(1, MAX_BUSY_COPIES);
        for _ in 0..copies {
            stream
                .memcpy_dtod(&b.src, &mut b.dst)
                .map_err(Error::driver("queueing the queue-ahead copies"))?;
        }
        Ok(())
    }

    /// Calls `f(0..warmup)` untimed, then `f(warmup..warmup + runs)` back to back with a CUDA
    /// event between consecutive calls; returns each timed call's µs. With `queue_ahead`, the
    /// timed calls line up behind device copies lasting twice the host time they take to enqueue
    /// (measured during the warm-up, its first call excluded).
    pub fn times_us(
        &mut self,
        queue_ahead: bool,
        warmup: usize,
        runs: usize,
        mut f: impl FnMut(usize) -> Result<()>,
    ) -> Result<Vec<f64>> {
        if runs == 0 {
            return Err(failure("runs must be at least 1".into()));
        }
        let (mut host_s, mut counted) = (0.0, 0usize);
        for i in 0..warmup {
            let t = Instant::now();
            f(i)?;
            if i > 0 {
                host_s += t.elapsed().as_secs_f64();
                counted += 1;
            }
        }
        self.gpu.synchronize()?;
        let ctx = self.gpu.context().clone();
        let events = (0..=runs)
            .map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::driver("creating timing events"))?;
        if queue_ahead {
            let per_call_us = if counted > 0 {
                host_s / counted as f64 * 1e6
            } else {
                50.0
            };
            self.queue_ahead(2.0 * per_call_us * runs as f64)?;
        }
        let stream = self.gpu.stream().clone();
        let record = |e: &cudarc::driver::CudaEvent| {
            e.record(&stream)
                .map_err(Error::driver("recording a timing event"))
        };
        record(&events[0])?;
        for i in 0..runs {
            f(warmup + i)?;
            record(&events[i + 1])?;
        }
        self.gpu.synchronize()?;
        events
            .windows(2)
            .map(|w| {
                w[0].elapsed_ms(&w[1])
                    .map(|ms| f64::from(ms) * 1e3)
                    .map_err(Error::driver("reading timing events"))
            })
            .collect()
    }

    /// The median µs of `f` over the standard warm-up and runs.
    pub fn median_us(
        &mut self,
        queue_ahead: bool,
        f: impl FnMut(usize) -> Result<()>,
    ) -> Result<f64> {
        let mut t = self.times_us(queue_ahead, self.warmup, self.runs, f)?;
        Ok(median(&mut t))
    }

    /// A new f32 buffer of random values from the pool, starting at a place chosen by `seed`
    /// (tiled from several places when longer than the pool).
    pub fn f32_buf(&self, len: usize, seed: u32) -> Result<DeviceBuffer<f32>> {
        let mut dst: DeviceBuffer<f32> = self.gpu.alloc_zeros(len)?;
        let stream = self.gpu.stream();
        let (mut done, mut s) = (0, seed);
        while done < len {
            let chunk = (len - done).min(POOL_LEN);
            let off = pool_offset(s, POOL_LEN - chunk);
            stream
                .memcpy_dtod(
                    &self.pool.slice(off..off + chunk),
                    &mut dst.slice_mut(done..done + chunk),
                )
                .map_err(Error::driver("filling an input set"))?;
            done += chunk;
            s = s.wrapping_add(0x9E37);
        }
        Ok(dst)
    }

    /// [`Harness::f32_buf`] rounded to f16 (ampkit's own cast kernel).
    pub fn f16_buf(&self, len: usize, seed: u32) -> Result<DeviceBuffer<f16>> {
        self.rounded_buf(len, seed, |gpu, src, dst| {
            ops::cast::f32_to_f16(gpu, src, dst)
        })
    }

    /// [`Harness::f32_buf`] rounded to bf16 (ampkit's own cast kernel).
    pub fn bf16_buf(&self, len: usize, seed: u32) -> Result<DeviceBuffer<bf16>> {
        self.rounded_buf(len, seed, |gpu, src, dst| {
            ops::cast::f32_to_bf16(gpu, src, dst)
        })
    }

    /// A buffer of `len` pool values from the place `seed` picks, through `cast`.
    fn rounded_buf<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
        seed: u32,
        cast: impl Fn(&Gpu, &CudaView<'_, f32>, &mut CudaViewMut<'_, T>) -> Result<()>,
    ) -> Result<DeviceBuffer<T>> {
        let mut dst: DeviceBuffer<T> = self.gpu.alloc_zeros(len)?;
        let (mut done, mut s) = (0, seed);
        while done < len {
            let chunk = (len - done).min(POOL_LEN);
            let off = pool_offset(s, POOL_LEN - chunk);
            cast(
                &self.gpu,
                &self.pool.slice(off..off + chunk),
                &mut dst.slice_mut(done..done + chunk),
            )?;
            done += chunk;
            s = s.wrapping_add(0x9E37);
        }
        Ok(dst)
    }
}

/// A GEMM operand type the bench fills with random values.
pub trait BenchOperand: GemmOperand + ValidAsZeroBits + Sized {
    /// `len` random values (the harness's pool, rounded) from the place `seed` picks.
    fn buf(h: &Harness, len: usize, seed: u32) -> Result<DeviceBuffer<Self>>;
}
impl BenchOperand for f16 {
    fn buf(h: &Harness, len: usize, seed: u32) -> Result<DeviceBuffer<f16>> {
        h.f16_buf(len, seed)
    }
}
impl BenchOperand for bf16 {
    fn buf(h: &Harness, len: usize, seed: u32) -> Result<DeviceBuffer<bf16>> {
        h.bf16_buf(len, seed)
    }
}

/// The median µs of `call` on input sets built by `make(harness, seed)`: `n_sets(bytes)` of
/// them, cycled, so that a pass over them exceeds the L2; queue-ahead. The sets are freed
/// before it returns.
pub fn time_sets<S>(
    h: &mut Harness,
    bytes: f64,
    mut make: impl FnMut(&Harness, u32) -> Result<S>,
    mut call: impl FnMut(&mut S, usize) -> Result<()>,
) -> Result<f64> {
    let k = n_sets(bytes, h.warmup + h.runs);
    let mut sets = (0..k)
        .map(|s| make(h, 1000 + 7 * s as u32))
        .collect::<Result<Vec<S>>>()?;
    h.gpu.synchronize()?;
    h.median_us(true, |i| call(&mut sets[i % k], i))
}
