//! One GPU: its context, the compute stream and the facts about it that tuning needs.

use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaStream};

use crate::error::{DriverResultExt, Error, Result};
use crate::sys::ocrvl_stream_t;

/// A CUDA device with one non-default stream on which all engine work is queued.
///
/// Event tracking is off: cudarc would otherwise record events on every buffer use, which
/// breaks CUDA-graph capture ("dependency created on uncaptured work in another stream").
/// Ordering between streams is therefore this crate's job; with one stream there is none.
#[derive(Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (i32, i32),
    sm_count: usize,
}

impl Gpu {
    /// Opens device `ordinal`. Fails with [`Error::NoDevice`] where libcuda is missing, the
    /// driver does not start, or there is no such device: never a panic.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoDevice(
                "libcuda.so could not be loaded (no NVIDIA driver on this machine)".into(),
            ));
        }
        let count =
            CudaContext::device_count().map_err(|e| Error::NoDevice(format!("the CUDA driver did not start: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoDevice(format!(
                "device {ordinal} requested but the driver sees {count} device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).op("cuCtxCreate/cuDevicePrimaryCtxRetain")?;
        // SAFETY: set before any buffer exists, so no tracked event is left dangling.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().op("cuStreamCreate")?;
        let name = ctx.name().op("cuDeviceGetName")?;
        let compute_capability = ctx.compute_capability().op("cuDeviceGetAttribute")?;
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .op("cuDeviceGetAttribute")? as usize;
        Ok(Gpu {
            ctx,
            stream,
            name,
            compute_capability,
            sm_count,
        })
    }

    /// The same device with a new stream of its own: a second queue whose work may run beside
    /// this one's. Ordering between the two is the caller's (events).
    pub fn with_new_stream(&self) -> Result<Gpu> {
        let stream = self.ctx.new_stream().op("cuStreamCreate")?;
        Ok(Gpu { stream, ..self.clone() })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The stream in the form the C launchers take.
    pub fn raw_stream(&self) -> ocrvl_stream_t {
        self.stream.cu_stream() as ocrvl_stream_t
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// True on Hopper (sm_90), where the sm_90a kernels can run if they were built.
    pub fn is_hopper(&self) -> bool {
        self.compute_capability.0 == 9
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().op("cuMemGetInfo")
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().op("cuStreamSynchronize")
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("sm_count", &self.sm_count)
            .finish()
    }
}
