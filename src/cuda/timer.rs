//! CUDA-event timing for benchmarks: events with timing enabled, warm-up, median of many runs.

use crate::cuda::Gpu;
use crate::error::{Error, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

/// A pair of timing-enabled CUDA events on a [`Gpu`]'s stream.
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

    /// Runs `f` `warmup` times untimed, then times `runs` runs one by one.
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
