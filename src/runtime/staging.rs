//! Page-locked staging for host-to-device uploads that do not stall the stream.
//!
//! A copy from pageable memory is synchronous for the host buffer: the driver first waits for
//! the stream's earlier work, so the CPU cannot queue the next step while the GPU runs. A copy
//! from page-locked memory is a true async DMA. One buffer is reused: an event recorded after
//! each copy says when the host side may be overwritten (by the next step it has long finished).

use cudarc::driver::{result as cu, CudaEvent, PinnedHostSlice};

use super::{Element, Gpu, TensorView, TensorViewMut};
use crate::error::{DriverResultExt, Error, Result};

/// `bytes` of page-locked host memory and the event that guards their reuse.
fn pinned_with_event(gpu: &Gpu, bytes: usize) -> Result<(PinnedHostSlice<u8>, CudaEvent)> {
    // SAFETY: plain page-locked bytes (flags 0: cached); the owners copy in and out of them
    // only with the event's ordering.
    let buf = unsafe { gpu.context().alloc_pinned_with_flags::<u8>(bytes.max(1), 0) }.op("cuMemHostAlloc")?;
    let event = gpu.context().new_event(None).op("cuEventCreate")?;
    Ok((buf, event))
}

pub struct PinnedStaging {
    buf: PinnedHostSlice<u8>,
    copied: CudaEvent,
}

impl PinnedStaging {
    pub fn new(gpu: &Gpu, bytes: usize) -> Result<PinnedStaging> {
        let (buf, copied) = pinned_with_event(gpu, bytes)?;
        Ok(PinnedStaging { buf, copied })
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Queues a copy of `data` into the contiguous view `dst` and returns without waiting for
    /// the GPU (only for the previous copy from this buffer, if still pending).
    pub fn upload<T: Element>(&mut self, gpu: &Gpu, data: &[T], dst: &mut TensorViewMut<'_>) -> Result<()> {
        if T::DTYPE != dst.dtype() {
            return Err(Error::invalid(
                "PinnedStaging::upload",
                format!("{} values into a {} view", T::DTYPE, dst.dtype()),
            ));
        }
        let view = dst.reborrow();
        self.upload_parts(gpu, &mut [(bytemuck::cast_slice(data), view)])
    }

    /// Queues several copies at once (each `(bytes, contiguous destination)`), packed into the
    /// staging buffer at 256-byte offsets, behind one completion event.
    pub fn upload_parts(&mut self, gpu: &Gpu, parts: &mut [(&[u8], TensorViewMut<'_>)]) -> Result<()> {
        const OP: &str = "PinnedStaging::upload_parts";
        let mut total = 0;
        for (bytes, dst) in parts.iter() {
            if bytes.len() != dst.numel() * dst.dtype().size_bytes() || !dst.is_contiguous() {
                return Err(Error::invalid(
                    OP,
                    format!("{} bytes into a {} {:?} view", bytes.len(), dst.dtype(), dst.dims()),
                ));
            }
            total += bytes.len().next_multiple_of(256);
        }
        if total > self.buf.len() {
            return Err(Error::invalid(
                OP,
                format!("{total} bytes over the staging capacity of {}", self.buf.len()),
            ));
        }
        self.copied.synchronize().op("cuEventSynchronize")?;
        let host = self.buf.as_mut_slice().op("cuEventSynchronize")?;
        let mut at = 0;
        let mut queued = Ok(());
        for (bytes, dst) in parts.iter_mut() {
            if bytes.is_empty() {
                continue;
            }
            let part = &mut host[at..at + bytes.len()];
            part.copy_from_slice(bytes);
            // SAFETY: as in `upload`: the destination holds bytes.len() contiguous bytes and
            // this part of the pinned buffer is not rewritten before `copied` completes.
            queued = unsafe { cu::memcpy_htod_async(dst.device_ptr(), &*part, gpu.stream().cu_stream()) }
                .op("cuMemcpyHtoDAsync");
            if queued.is_err() {
                break;
            }
            at += bytes.len().next_multiple_of(256);
        }
        // Recorded on every path: copies queued before a failure still read the buffer, and
        // the next upload (or the drop) must wait for them.
        let recorded = self.copied.record(gpu.stream()).op("cuEventRecord");
        queued?;
        recorded
    }
}

impl Drop for PinnedStaging {
    /// The page-locked memory is freed only after the copies reading it have run.
    fn drop(&mut self) {
        let _ = self.copied.synchronize();
    }
}

/// Page-locked landing space for device-to-host copies that the host collects later: the
/// copies are queued behind the step's work and one event says when they have arrived, so
/// the CPU can queue more work before it reads them.
pub struct PinnedReadback {
    buf: PinnedHostSlice<u8>,
    arrived: CudaEvent,
    /// Byte ranges of the parts queued last, in order.
    parts: Vec<std::ops::Range<usize>>,
}

impl PinnedReadback {
    pub fn new(gpu: &Gpu, bytes: usize) -> Result<PinnedReadback> {
        let (buf, arrived) = pinned_with_event(gpu, bytes)?;
        Ok(PinnedReadback {
            buf,
            arrived,
            parts: Vec::new(),
        })
    }

    /// Queues copies of the contiguous views `srcs` into the buffer (at 256-byte offsets)
    /// and returns at once. Waits only if the previous copies into it are still pending.
    pub fn enqueue(&mut self, gpu: &Gpu, srcs: &[TensorView<'_>]) -> Result<()> {
        const OP: &str = "PinnedReadback::enqueue";
        let bytes = |s: &TensorView<'_>| s.numel() * s.dtype().size_bytes();
        let total: usize = srcs.iter().map(|s| bytes(s).next_multiple_of(256)).sum();
        if total > self.buf.len() {
            return Err(Error::invalid(
                OP,
                format!("{total} bytes over the readback capacity of {}", self.buf.len()),
            ));
        }
        if let Some(s) = srcs.iter().find(|s| !s.is_contiguous()) {
            return Err(Error::invalid(OP, format!("a strided {:?} view", s.dims())));
        }
        self.arrived.synchronize().op("cuEventSynchronize")?;
        let host = self.buf.as_mut_slice().op("cuEventSynchronize")?;
        self.parts.clear();
        let mut at = 0;
        let mut queued = Ok(());
        for src in srcs {
            let n = bytes(src);
            if n > 0 {
                // SAFETY: the source holds n contiguous bytes on the device; this part of the
                // pinned buffer is not read before `arrived` completes, nor rewritten before
                // the next `enqueue` (or freed before the drop), which wait for it.
                queued =
                    unsafe { cu::memcpy_dtoh_async(&mut host[at..at + n], src.device_ptr(), gpu.stream().cu_stream()) }
                        .op("cuMemcpyDtoHAsync");
                if queued.is_err() {
                    break;
                }
            }
            self.parts.push(at..at + n);
            at += n.next_multiple_of(256);
        }
        // Recorded on every path: copies queued before a failure still write into the
        // buffer, and the next enqueue (or the drop) must wait for them.
        let recorded = self.arrived.record(gpu.stream()).op("cuEventRecord");
        if queued.is_err() {
            // No complete result to read.
            self.parts.clear();
        }
        queued?;
        recorded
    }

    /// Waits for the copies queued last and returns their bytes, one slice per source.
    pub fn wait(&self) -> Result<Vec<&[u8]>> {
        self.arrived.synchronize().op("cuEventSynchronize")?;
        let host = self.buf.as_slice().op("cuEventSynchronize")?;
        Ok(self.parts.iter().map(|r| &host[r.clone()]).collect())
    }
}

impl Drop for PinnedReadback {
    /// The page-locked memory is freed only after the copies writing into it have landed.
    fn drop(&mut self) {
        let _ = self.arrived.synchronize();
    }
}
