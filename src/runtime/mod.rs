//! The CUDA runtime layer: device and stream, typed tensors, a workspace arena, event timing
//! and the cuBLASLt GEMM. cudarc loads libcuda and libcublasLt at run time, so everything
//! here builds without a CUDA toolkit and reports "no CUDA device" where there is none.

pub mod device;
pub mod dtype;
pub mod gemm;
mod graph;
pub mod staging;
pub mod tensor;
pub mod timing;
pub mod workspace;

pub use device::Gpu;
pub use dtype::DType;
pub use gemm::{Epilogue, Gemm};
pub use graph::capture_graph;
pub use staging::{PinnedReadback, PinnedStaging};
pub use tensor::{DeviceTensor, Element, Shape, TensorView, TensorViewMut};
pub use timing::GpuTimer;
pub use workspace::Workspace;
