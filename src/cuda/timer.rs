//! CUDA-event timing for benchmarks: events with timing enabled, warm-up, median of many runs.
//!
//! ```no_run
//! # fn main() -> ampkit::Result<()> {
//! use ampkit::cuda::{Gpu, GpuTimer};
//! let gpu = Gpu::new(0)?;
//! let src = gpu.alloc_zeros::<f32>(1 << 24)?;
//! let mut dst = gpu.alloc_zeros::<ampkit::f16>(1 << 24)?;
//! let t = GpuTimer::new(&gpu)?.measure(3, 20, || ampkit::ops::cast::f32_to_f16(&gpu, &src, &mut dst))?;
//! println!("f32→f16: {:.3} ms median ({} runs)", t.median_ms, t.runs);
//! # Ok(()) }
//! ```

use crate::cuda::Gpu;
use crate::error::{Error, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

/// A pair of timing-enabled CUDA events on a [`Gpu`]'s stream. Times are GPU time between the
/// two events (resolution about 0.5 µs), not host wall-clock time.
pub struct GpuTimer<'g> {
    gpu: &'g Gpu,
    start: CudaEvent,
    stop: CudaEvent,
}

/// Summary of repeated timings, in milliseconds of GPU time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Median over the timed runs.
    pub median_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
    /// How many runs were timed.
    pub runs: usize,
}

impl<'g> GpuTimer<'g> {
    /// Creates the two events (`CU_EVENT_DEFAULT`: timing enabled; cudarc's `None` disables it).
    /// Errors: [`Error::Driver`].
    pub fn new(gpu: &'g Gpu) -> Result<Self> {
        let new = || {
            gpu.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(Error::driver("creating a timing event"))
        };
        Ok(GpuTimer {
            gpu,
            start: new()?,
            stop: new()?,
        })
    }

    /// GPU time of the work `f` queues on the stream, in milliseconds. Waits for it to finish.
    /// Errors: whatever `f` returns, or [`Error::Driver`] (including a fault in the timed work).
    pub fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let stream = self.gpu.stream();
        self.start
            .record(stream)
            .map_err(Error::driver("recording an event"))?;
        f()?;
        self.stop
            .record(stream)
            .map_err(Error::driver("recording an event"))?;
        let ms = self
            .start
            .elapsed_ms(&self.stop)
            .map_err(Error::driver("reading an event pair"))?;
        Ok(f64::from(ms))
    }

    /// Runs `f` `warmup` times untimed, then times `runs` runs one by one. Errors as
    /// [`GpuTimer::time`], and [`Error::InvalidArgument`] when `runs` is 0.
    pub fn measure(
        &self,
        warmup: usize,
        runs: usize,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<Timing> {
        if runs == 0 {
            return Err(Error::InvalidArgument {
                op: "GpuTimer::measure",
                detail: "runs must be at least 1".into(),
            });
        }
        for _ in 0..warmup {
            f()?;
        }
        self.gpu.synchronize()?;
        let mut times = (0..runs)
            .map(|_| self.time(&mut f))
            .collect::<Result<Vec<f64>>>()?;
        times.sort_by(f64::total_cmp);
        Ok(Timing {
            median_ms: times[runs / 2],
            min_ms: times[0],
            max_ms: times[runs - 1],
            runs,
        })
    }
}
