//! A bump arena over one device allocation, for activations and kernel scratch.
//!
//! Views handed out borrow the arena, and `reset` takes `&mut self`, so the borrow checker
//! guarantees no view outlives a reset. Offsets are aligned to 256 bytes: every kernel's
//! vector loads (16 bytes) and cuBLASLt's preferred alignment are then satisfied.

use std::cell::Cell;

use super::{DType, DeviceTensor, Gpu, TensorViewMut};
use crate::error::{Error, Result};

const ALIGN: usize = 256;

pub struct Workspace {
    buf: DeviceTensor,
    capacity: usize,
    used: Cell<usize>,
    high_water: Cell<usize>,
}

impl Workspace {
    pub fn new(gpu: &Gpu, capacity_bytes: usize) -> Result<Workspace> {
        let buf = DeviceTensor::alloc(gpu, DType::BF16, &[capacity_bytes.div_ceil(2)])?;
        Ok(Workspace {
            buf,
            capacity: capacity_bytes,
            used: Cell::new(0),
            high_water: Cell::new(0),
        })
    }

    /// A fresh contiguous tensor of `dims`; contents undefined.
    pub fn alloc(&self, dtype: DType, dims: &[usize]) -> Result<TensorViewMut<'_>> {
        let bytes = dims.iter().product::<usize>() * dtype.size_bytes();
        let start = self.used.get().next_multiple_of(ALIGN);
        let end = start + bytes;
        if end > self.capacity {
            return Err(Error::invalid(
                "workspace",
                format!(
                    "{bytes} bytes for {dtype} {dims:?} do not fit: {start} of {} used",
                    self.capacity
                ),
            ));
        }
        self.used.set(end);
        self.high_water.set(self.high_water.get().max(end));
        let inner: usize = dims.iter().skip(1).product();
        // SAFETY: [start, end) lies in the arena's allocation, which lives as long as `self`,
        // and no other view covers it until `reset`, which needs `&mut self`.
        unsafe { TensorViewMut::from_raw(self.buf.device_ptr() + start as u64, dtype, dims, inner) }
    }

    /// Forgets every allocation. Work already queued on the stream still reads and writes
    /// the memory, which is fine: later work on the same stream runs after it.
    pub fn reset(&mut self) {
        self.used.set(0);
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn high_water(&self) -> usize {
        self.high_water.get()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
