//! Capturing queued work as a CUDA graph.

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::Gpu;
use crate::error::{DriverResultExt, Error, Result};

/// Captures what `body` queues on `gpu`'s stream (and on streams it forks from it and joins
/// back) as one graph, instantiated and uploaded. The stream is synchronised first; the
/// capture ends whatever `body` returns, so the stream is usable afterwards, and `body`'s error
/// comes first. Nothing in `body` may synchronise (timing, GEMM autotuning).
pub fn capture_graph(gpu: &Gpu, body: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
    gpu.synchronize()?;
    gpu.stream()
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .op("cuStreamBeginCapture")?;
    let run = body();
    let graph = gpu
        .stream()
        .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH)
        .op("cuStreamEndCapture");
    run?;
    let graph = graph?.ok_or_else(|| Error::invalid("capture", "the capture produced no graph"))?;
    graph.upload().op("cuGraphUpload")?;
    Ok(graph)
}
