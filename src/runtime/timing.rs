//! Device-side timing with CUDA events, shared by the benches and the bench binary.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

use super::Gpu;
use crate::error::{DriverResultExt, Result};

/// A pair of timing events around work queued on the GPU's stream.
pub struct GpuTimer {
    start: CudaEvent,
    stop: CudaEvent,
}

impl GpuTimer {
    pub fn new(gpu: &Gpu) -> Result<GpuTimer> {
        let ctx = gpu.context();
        // The default flags keep timing on (cudarc's own default disables it).
        let start = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .op("cuEventCreate")?;
        let stop = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .op("cuEventCreate")?;
        Ok(GpuTimer { start, stop })
    }

    pub fn start(&self, gpu: &Gpu) -> Result<()> {
        self.start.record(gpu.stream()).op("cuEventRecord")
    }

    pub fn stop(&self, gpu: &Gpu) -> Result<()> {
        self.stop.record(gpu.stream()).op("cuEventRecord")
    }

    /// Milliseconds between start and stop; waits for stop.
    pub fn elapsed_ms(&self) -> Result<f32> {
        self.stop.synchronize().op("cuEventSynchronize")?;
        self.start.elapsed_ms(&self.stop).op("cuEventElapsedTime")
    }

    /// Runs `f` `warmup` times, then times `iters` runs of it as one span; returns the mean
    /// milliseconds per run.
    pub fn time_mean_ms(gpu: &Gpu, warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        for _ in 0..warmup {
            f()?;
        }
        let t = GpuTimer::new(gpu)?;
        t.start(gpu)?;
        for _ in 0..iters {
            f()?;
        }
        t.stop(gpu)?;
        Ok(t.elapsed_ms()? as f64 / iters.max(1) as f64)
    }
}
