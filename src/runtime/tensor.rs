//! Typed device tensors and borrowed views of them.
//!
//! A [`DeviceTensor`] owns device memory. A [`TensorView`] / [`TensorViewMut`] borrows part of
//! one (or of the [`Workspace`](super::Workspace) arena) and is what kernel wrappers take.
//! Layout: row-major; the last dims are contiguous and dim 0 may be strided (`stride0`, in
//! elements), which covers the two slicings the model needs: a range of tokens, and a range
//! of columns such as the q part of a fused qkv output.

use std::fmt;
use std::marker::PhantomData;

use cudarc::driver::{result as cu, CudaSlice, DevicePtr, DeviceRepr};

use super::{DType, Gpu};
use crate::error::{DriverResultExt, Error, Result};

/// Host types that mirror a device dtype.
pub trait Element: DeviceRepr + bytemuck::Pod + Default + fmt::Debug {
    const DTYPE: DType;
}
impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for i8 {
    const DTYPE: DType = DType::I8;
}

pub const MAX_RANK: usize = 4;

/// A shape of rank 0 to [`MAX_RANK`], stored inline so views cost no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: usize,
}

impl Shape {
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.len() > MAX_RANK {
            return Err(Error::invalid("shape", format!("rank {} over {MAX_RANK}", dims.len())));
        }
        let mut d = [0; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        Ok(Shape {
            dims: d,
            rank: dims.len(),
        })
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// Elements in one index of dim 0 (the product of the other dims).
    pub fn inner(&self) -> usize {
        self.dims().iter().skip(1).product()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// Device memory holding a dense row-major tensor.
pub struct DeviceTensor {
    // Kept for its Drop, which frees the memory; `ptr` is its address.
    _buf: CudaSlice<u8>,
    ptr: u64,
    dtype: DType,
    shape: Shape,
}

impl DeviceTensor {
    /// Allocates without initialising: contents are whatever the allocator returns.
    pub fn alloc(gpu: &Gpu, dtype: DType, dims: &[usize]) -> Result<DeviceTensor> {
        let shape = Shape::new(dims)?;
        // At least one byte, so every tensor has a distinct, valid address.
        let bytes = (shape.numel() * dtype.size_bytes()).max(1);
        // SAFETY: u8 has no invalid bit patterns; callers treat the contents as undefined.
        let buf = unsafe { gpu.stream().alloc::<u8>(bytes) }.op("cuMemAllocAsync")?;
        let (ptr, _) = buf.device_ptr(gpu.stream());
        Ok(DeviceTensor {
            _buf: buf,
            ptr,
            dtype,
            shape,
        })
    }

    pub fn zeros(gpu: &Gpu, dtype: DType, dims: &[usize]) -> Result<DeviceTensor> {
        let t = Self::alloc(gpu, dtype, dims)?;
        // SAFETY: the range lies inside the allocation made above.
        unsafe { cu::memset_d8_async(t.ptr, 0, t.nbytes(), gpu.stream().cu_stream()) }.op("cuMemsetD8Async")?;
        Ok(t)
    }

    /// Copies `data` (row-major, `dims`) to a new device tensor.
    pub fn from_host<T: Element>(gpu: &Gpu, dims: &[usize], data: &[T]) -> Result<DeviceTensor> {
        Self::from_bytes(gpu, T::DTYPE, dims, bytemuck::cast_slice(data))
    }

    /// Copies raw little-endian bytes of `dtype` to a new device tensor.
    pub fn from_bytes(gpu: &Gpu, dtype: DType, dims: &[usize], bytes: &[u8]) -> Result<DeviceTensor> {
        let mut t = Self::alloc(gpu, dtype, dims)?;
        t.view_mut().copy_from_bytes(gpu, bytes)?;
        Ok(t)
    }

    pub fn to_host<T: Element>(&self, gpu: &Gpu) -> Result<Vec<T>> {
        self.view().to_host(gpu)
    }

    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            ptr: self.ptr,
            dtype: self.dtype,
            shape: self.shape,
            stride0: self.shape.inner(),
            _borrow: PhantomData,
        }
    }

    pub fn view_mut(&mut self) -> TensorViewMut<'_> {
        TensorViewMut {
            ptr: self.ptr,
            dtype: self.dtype,
            shape: self.shape,
            stride0: self.shape.inner(),
            _borrow: PhantomData,
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size_bytes()
    }

    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

impl fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceTensor({} {:?} @0x{:x})", self.dtype, self.shape, self.ptr)
    }
}

macro_rules! view_common {
    ($t:ident) => {
        impl<'a> $t<'a> {
            /// A view of raw device memory.
            ///
            /// # Safety
            /// `ptr` must address at least `(dims[0]-1)*stride0 + inner` elements of `dtype`
            /// that stay allocated, and not otherwise written while the view lives, for `'a`.
            pub unsafe fn from_raw(ptr: u64, dtype: DType, dims: &[usize], stride0: usize) -> Result<Self> {
                let shape = Shape::new(dims)?;
                if shape.rank() > 0 && stride0 < shape.inner() {
                    return Err(Error::invalid(
                        "view",
                        format!("stride0 {stride0} under the row size {}", shape.inner()),
                    ));
                }
                Ok($t {
                    ptr,
                    dtype,
                    shape,
                    stride0,
                    _borrow: PhantomData,
                })
            }

            pub fn dtype(&self) -> DType {
                self.dtype
            }

            pub fn dims(&self) -> &[usize] {
                self.shape.dims()
            }

            pub fn shape(&self) -> Shape {
                self.shape
            }

            pub fn numel(&self) -> usize {
                self.shape.numel()
            }

            /// Elements between consecutive indices of dim 0.
            pub fn stride0(&self) -> usize {
                self.stride0
            }

            pub fn is_contiguous(&self) -> bool {
                self.shape.rank() <= 1 || self.stride0 == self.shape.inner() || self.shape.dims()[0] <= 1
            }

            pub fn device_ptr(&self) -> u64 {
                self.ptr
            }

            /// Checks dtype and dims against what an operation expects.
            pub fn expect(&self, op: &'static str, what: &str, dtype: DType, dims: &[usize]) -> Result<()> {
                if self.dtype != dtype || self.dims() != dims {
                    return Err(Error::invalid(
                        op,
                        format!(
                            "{what}: expected {dtype} {dims:?}, got {} {:?}",
                            self.dtype,
                            self.dims()
                        ),
                    ));
                }
                Ok(())
            }

            /// Copies the view to the host (waits for the stream).
            pub fn to_host<T: Element>(&self, gpu: &Gpu) -> Result<Vec<T>> {
                if T::DTYPE != self.dtype {
                    return Err(Error::invalid(
                        "to_host",
                        format!("view is {}, asked for {}", self.dtype, T::DTYPE),
                    ));
                }
                let mut out = vec![T::default(); self.numel()];
                let inner = self.shape.inner();
                let rows = if self.shape.rank() == 0 {
                    1
                } else {
                    self.shape.dims()[0]
                };
                let s = gpu.stream().cu_stream();
                let queued = if self.is_contiguous() {
                    // SAFETY: the view's memory holds numel contiguous elements; `out` lives
                    // until the stream has finished with it (below).
                    unsafe { cu::memcpy_dtoh_async(&mut out[..], self.ptr, s) }.op("cuMemcpyDtoHAsync")
                } else {
                    (0..rows).try_for_each(|r| {
                        let src = self.ptr + (r * self.stride0 * T::DTYPE.size_bytes()) as u64;
                        // SAFETY: row r lies inside the viewed memory; `out` outlives the copy.
                        unsafe { cu::memcpy_dtoh_async(&mut out[r * inner..(r + 1) * inner], src, s) }
                            .op("cuMemcpyDtoHAsync")
                    })
                };
                // Every path waits for the stream before `out` can be dropped: a failed copy
                // may follow queued ones that still write into it.
                let synced = gpu.synchronize();
                if let Err(e) = synced {
                    // The stream's state is unknown, so a queued copy might still land in
                    // `out`: it is never freed (a leak, and only on a failing GPU).
                    std::mem::forget(out);
                    return Err(queued.err().unwrap_or(e));
                }
                queued?;
                Ok(out)
            }
        }

        impl fmt::Debug for $t<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{}({} {:?} stride0 {} @0x{:x})",
                    stringify!($t),
                    self.dtype,
                    self.shape,
                    self.stride0,
                    self.ptr
                )
            }
        }
    };
}

/// A read-only borrowed view of device memory.
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    ptr: u64,
    dtype: DType,
    shape: Shape,
    stride0: usize,
    _borrow: PhantomData<&'a ()>,
}

/// A writable borrowed view of device memory.
pub struct TensorViewMut<'a> {
    ptr: u64,
    dtype: DType,
    shape: Shape,
    stride0: usize,
    _borrow: PhantomData<&'a mut ()>,
}

view_common!(TensorView);
view_common!(TensorViewMut);

impl<'a> TensorView<'a> {
    /// Rows `start..start+len` of dim 0.
    pub fn narrow0(&self, start: usize, len: usize) -> Result<TensorView<'a>> {
        let (ptr, shape) = narrow0(self.ptr, self.dtype, self.shape, self.stride0, start, len)?;
        Ok(TensorView { ptr, shape, ..*self })
    }

    /// Columns `start..start+len` of a 2-D view (the result is strided).
    pub fn columns(&self, start: usize, len: usize) -> Result<TensorView<'a>> {
        let (ptr, shape) = columns(self.ptr, self.dtype, self.shape, start, len)?;
        Ok(TensorView { ptr, shape, ..*self })
    }

    /// The same elements under other dims; the view must be contiguous.
    pub fn reshape(&self, dims: &[usize]) -> Result<TensorView<'a>> {
        let shape = reshape(self.shape, self.is_contiguous(), dims)?;
        Ok(TensorView {
            shape,
            stride0: shape.inner(),
            ..*self
        })
    }
}

impl<'a> TensorViewMut<'a> {
    pub fn as_view(&self) -> TensorView<'_> {
        TensorView {
            ptr: self.ptr,
            dtype: self.dtype,
            shape: self.shape,
            stride0: self.stride0,
            _borrow: PhantomData,
        }
    }

    pub fn narrow0(self, start: usize, len: usize) -> Result<TensorViewMut<'a>> {
        let (ptr, shape) = narrow0(self.ptr, self.dtype, self.shape, self.stride0, start, len)?;
        Ok(TensorViewMut { ptr, shape, ..self })
    }

    pub fn columns(self, start: usize, len: usize) -> Result<TensorViewMut<'a>> {
        let (ptr, shape) = columns(self.ptr, self.dtype, self.shape, start, len)?;
        Ok(TensorViewMut { ptr, shape, ..self })
    }

    /// Rows `0..n` and `n..` of dim 0, as two disjoint mutable views.
    pub fn split_at0(self, n: usize) -> Result<(TensorViewMut<'a>, TensorViewMut<'a>)> {
        let rows = self.dims().first().copied().unwrap_or(0);
        if n > rows {
            return Err(Error::invalid("split_at0", format!("row {n} of {rows}")));
        }
        let (head_ptr, head_shape) = narrow0(self.ptr, self.dtype, self.shape, self.stride0, 0, n)?;
        let (tail_ptr, tail_shape) = narrow0(self.ptr, self.dtype, self.shape, self.stride0, n, rows - n)?;
        Ok((
            TensorViewMut {
                ptr: head_ptr,
                shape: head_shape,
                ..self
            },
            TensorViewMut {
                ptr: tail_ptr,
                shape: tail_shape,
                ..self
            },
        ))
    }

    /// Splits a 2-D view `[rows, sum(widths)]` into column blocks of `widths`, each strided
    /// (a fused qkv output into its q, k and v parts).
    /// The N rows of a 2-D `[N, len]` view, each a 1-D `[len]` view (disjoint, so all mutable
    /// at once).
    pub fn split_rows<const N: usize>(self) -> Result<[TensorViewMut<'a>; N]> {
        let dims = self.dims().to_vec();
        if dims.len() != 2 || dims[0] != N {
            return Err(Error::invalid("split_rows", format!("{dims:?} is not [{N}, len]")));
        }
        let mut row = 0;
        Ok([(); N].map(|_| {
            let view = TensorViewMut {
                ptr: self.ptr + (row * self.stride0 * self.dtype.size_bytes()) as u64,
                dtype: self.dtype,
                shape: Shape {
                    dims: [dims[1], 0, 0, 0],
                    rank: 1,
                },
                stride0: 1,
                _borrow: PhantomData,
            };
            row += 1;
            view
        }))
    }

    pub fn split_columns<const N: usize>(self, widths: [usize; N]) -> Result<[TensorViewMut<'a>; N]> {
        let dims = self.dims().to_vec();
        if dims.len() != 2 || widths.iter().sum::<usize>() != dims[1] {
            return Err(Error::invalid(
                "split_columns",
                format!("{widths:?} do not split {dims:?}"),
            ));
        }
        let mut start = 0;
        Ok(widths.map(|w| {
            let view = TensorViewMut {
                ptr: self.ptr + (start * self.dtype.size_bytes()) as u64,
                dtype: self.dtype,
                shape: Shape {
                    dims: [dims[0], w, 0, 0],
                    rank: 2,
                },
                stride0: self.stride0,
                _borrow: PhantomData,
            };
            start += w;
            view
        }))
    }

    pub fn reshape(self, dims: &[usize]) -> Result<TensorViewMut<'a>> {
        let shape = reshape(self.shape, self.is_contiguous(), dims)?;
        Ok(TensorViewMut {
            shape,
            stride0: shape.inner(),
            ..self
        })
    }

    /// A shorter-lived mutable view of the same memory (to pass a view on while keeping it).
    pub fn reborrow(&mut self) -> TensorViewMut<'_> {
        TensorViewMut {
            _borrow: PhantomData,
            ..*self
        }
    }

    /// The same bytes read as another dtype of the same size (e.g. f32 results in an i32
    /// buffer, so that several outputs come back in one copy).
    pub fn bitcast(self, dtype: DType) -> Result<TensorViewMut<'a>> {
        if dtype.size_bytes() != self.dtype.size_bytes() {
            return Err(Error::invalid(
                "bitcast",
                format!("{} to {}: element sizes differ", self.dtype, dtype),
            ));
        }
        Ok(TensorViewMut { dtype, ..self })
    }

    /// Copies host data into a contiguous view (queued on the stream; `data` must outlive
    /// nothing, since the copy from pageable memory completes before this returns).
    pub fn copy_from_host<T: Element>(&mut self, gpu: &Gpu, data: &[T]) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::invalid(
                "copy_from_host",
                format!("view is {}, data is {}", self.dtype, T::DTYPE),
            ));
        }
        self.copy_from_bytes(gpu, bytemuck::cast_slice(data))
    }

    pub fn copy_from_bytes(&mut self, gpu: &Gpu, bytes: &[u8]) -> Result<()> {
        let want = self.numel() * self.dtype.size_bytes();
        if bytes.len() != want || !self.is_contiguous() {
            return Err(Error::invalid(
                "copy_from_host",
                format!(
                    "{} bytes for a {} {:?} view of {want} bytes (contiguous: {})",
                    bytes.len(),
                    self.dtype,
                    self.shape,
                    self.is_contiguous()
                ),
            ));
        }
        if want == 0 {
            return Ok(());
        }
        // SAFETY: the view addresses `want` contiguous bytes.
        let queued =
            unsafe { cu::memcpy_htod_async(self.ptr, bytes, gpu.stream().cu_stream()) }.op("cuMemcpyHtoDAsync");
        // A pageable source may be reused by the caller as soon as we return, the error paths
        // included: wait for the stream either way.
        let synced = gpu.synchronize();
        queued?;
        synced
    }

    /// Copies a contiguous view of the same dtype and element count into this contiguous view,
    /// on the stream (device to device).
    pub fn copy_from_view(&mut self, gpu: &Gpu, src: &TensorView<'_>) -> Result<()> {
        if src.dtype() != self.dtype || src.numel() != self.numel() || !src.is_contiguous() || !self.is_contiguous() {
            return Err(Error::invalid(
                "copy_from_view",
                format!(
                    "{} {:?} into {} {:?} (both must be contiguous)",
                    src.dtype(),
                    src.dims(),
                    self.dtype,
                    self.dims()
                ),
            ));
        }
        let bytes = self.numel() * self.dtype.size_bytes();
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: both views address `bytes` contiguous bytes on this GPU.
        unsafe { cu::memcpy_dtod_async(self.ptr, src.device_ptr(), bytes, gpu.stream().cu_stream()) }
            .op("cuMemcpyDtoDAsync")
    }

    /// Fills every byte with `byte` (tests poison outputs with 0xFF: NaN in every float type).
    pub fn fill_bytes(&mut self, gpu: &Gpu, byte: u8) -> Result<()> {
        let rows = if self.shape.rank() == 0 {
            1
        } else {
            self.shape.dims()[0]
        };
        let es = self.dtype.size_bytes();
        let s = gpu.stream().cu_stream();
        if self.is_contiguous() {
            // SAFETY: the view addresses numel contiguous elements.
            unsafe { cu::memset_d8_async(self.ptr, byte, self.numel() * es, s) }.op("cuMemsetD8Async")
        } else {
            for r in 0..rows {
                let p = self.ptr + (r * self.stride0 * es) as u64;
                // SAFETY: row r lies inside the view.
                unsafe { cu::memset_d8_async(p, byte, self.shape.inner() * es, s) }.op("cuMemsetD8Async")?;
            }
            Ok(())
        }
    }
}

fn narrow0(ptr: u64, dtype: DType, shape: Shape, stride0: usize, start: usize, len: usize) -> Result<(u64, Shape)> {
    let dims = shape.dims();
    if dims.is_empty() || start + len > dims[0] {
        return Err(Error::invalid(
            "narrow0",
            format!("rows {start}..{} of {:?}", start + len, dims),
        ));
    }
    let mut new = dims.to_vec();
    new[0] = len;
    Ok((ptr + (start * stride0 * dtype.size_bytes()) as u64, Shape::new(&new)?))
}

fn columns(ptr: u64, dtype: DType, shape: Shape, start: usize, len: usize) -> Result<(u64, Shape)> {
    let dims = shape.dims();
    if dims.len() != 2 || start + len > dims[1] {
        return Err(Error::invalid(
            "columns",
            format!("columns {start}..{} of {:?}", start + len, dims),
        ));
    }
    Ok((ptr + (start * dtype.size_bytes()) as u64, Shape::new(&[dims[0], len])?))
}

fn reshape(shape: Shape, contiguous: bool, dims: &[usize]) -> Result<Shape> {
    let new = Shape::new(dims)?;
    if !contiguous || new.numel() != shape.numel() {
        return Err(Error::invalid(
            "reshape",
            format!("{shape:?} to {dims:?} (contiguous: {contiguous})"),
        ));
    }
    Ok(new)
}
