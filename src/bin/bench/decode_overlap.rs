//! bench's decode step split in two: the batch's two halves as forwards of their own on two
//! streams, side by side, against the whole batch and against the halves one after the other.
//! Each is captured as one CUDA graph and timed over its replays (issue 17's decode lever).
//!
//! Why it might pay (round 12's ncu of the step at batch 256 x 1k context, H100): the paged
//! decode attention streams the KV cache at ~91% of the copy rate (1.79 ms a step), while the
//! four GEMMs a layer at M 256 (0.61 ms a step) fill few SMs and wait on latency. With two
//! halves in flight, one half's GEMMs can run on the SMs the other half's attention leaves
//! idle while it waits on memory; the KV bytes read stay the same and the weights are read
//! twice (27 MB a layer, ~9 us at the copy rate).

use cudarc::driver::CudaGraph;

use ocrvl::config::ModelConfig;
use ocrvl::error::{DriverResultExt, Error, Result};
use ocrvl::model::gpu_weights::ModelWeights;
use ocrvl::model::step::{DeviceStep, HostStep, SeqChunk};
use ocrvl::model::text::{self, KvCache};
use ocrvl::runtime::{capture_graph, DType, DeviceTensor, Gemm, Gpu, GpuTimer, Workspace};

/// One stream's share: its own cuBLASLt handle (and workspace), scratch, inputs and logits.
struct Lane {
    gpu: Gpu,
    gemm: Gemm,
    ws: Workspace,
    step: DeviceStep,
    err: DeviceTensor,
    logits: DeviceTensor,
}

impl Lane {
    fn new(gpu: Gpu, cfg: &ModelConfig, chunks: &[SeqChunk], block_size: usize, autotune: bool) -> Result<Lane> {
        let n = chunks.len();
        let host = HostStep::build(chunks, block_size)?;
        let mut gemm = Gemm::new(&gpu)?;
        // Tuned in the warm-up run, as the engine tunes its decode graphs.
        gemm.set_autotune(if autotune { usize::MAX } else { 0 });
        Ok(Lane {
            ws: Workspace::new(&gpu, text::workspace_bytes(cfg, n, n, n))?,
            step: host.upload(&gpu)?,
            err: DeviceTensor::zeros(&gpu, DType::I32, &[1])?,
            logits: DeviceTensor::alloc(&gpu, DType::F32, &[host.logits_rows.len(), cfg.text.vocab_size])?,
            gemm,
            gpu,
        })
    }

    fn forward(&mut self, cfg: &ModelConfig, weights: &ModelWeights, cache: &mut KvCache) -> Result<()> {
        self.ws.reset();
        let inputs = self.step.inputs(None)?;
        text::forward(
            &self.gpu,
            &mut self.gemm,
            &self.ws,
            cfg,
            weights,
            cache,
            &inputs,
            &mut self.err.view_mut(),
            &mut self.logits.view_mut(),
        )
    }
}

/// Mean replay time of each arrangement, in ms.
pub(crate) struct DecodeOverlap {
    pub whole_ms: f64,
    pub halves_serial_ms: f64,
    pub halves_parallel_ms: f64,
}

/// Times the decode step over `chunks` (decode chunks, one per sequence) as one graph of the
/// whole batch, one graph of its two halves in turn on one stream, and one graph of the
/// halves forked onto two streams and joined.
pub(crate) fn decode_overlap(
    gpu: &Gpu,
    cfg: &ModelConfig,
    weights: &ModelWeights,
    cache: &mut KvCache,
    chunks: &[SeqChunk],
    block_size: usize,
    autotune: bool,
) -> Result<DecodeOverlap> {
    if chunks.len() < 2 {
        return Err(Error::invalid("decode overlap", "needs a batch of at least 2"));
    }
    let (first, second) = chunks.split_at(chunks.len() / 2);
    let mut whole = Lane::new(gpu.clone(), cfg, chunks, block_size, autotune)?;
    let mut a = Lane::new(gpu.clone(), cfg, first, block_size, autotune)?;
    let mut b = Lane::new(gpu.with_new_stream()?, cfg, second, block_size, autotune)?;
    gpu.synchronize()?;
    b.gpu.synchronize()?;

    let whole_graph = capture(gpu, |tuning| {
        tune(&mut whole.gemm, tuning, autotune);
        whole.forward(cfg, weights, cache)
    })?;
    // The halves in turn: the second half on the main stream too, with a handle and scratch of
    // its own.
    let mut b_serial = Lane::new(gpu.clone(), cfg, second, block_size, autotune)?;
    let serial_graph = capture(gpu, |tuning| {
        tune(&mut a.gemm, tuning, autotune);
        tune(&mut b_serial.gemm, tuning, autotune);
        a.forward(cfg, weights, cache)?;
        b_serial.forward(cfg, weights, cache)
    })?;
    let parallel_graph = capture(gpu, |tuning| {
        tune(&mut a.gemm, tuning, autotune);
        tune(&mut b.gemm, tuning, autotune);
        // Fork: the second stream waits for what the main stream queued so far (inside a
        // capture this also joins it to the capture), then each half runs on its own stream.
        b.gpu.stream().join(gpu.stream()).op("cuStreamWaitEvent")?;
        a.forward(cfg, weights, cache)?;
        b.forward(cfg, weights, cache)?;
        gpu.stream().join(b.gpu.stream()).op("cuStreamWaitEvent")
    })?;
    let time = |g: &CudaGraph| GpuTimer::time_mean_ms(gpu, 3, 20, || g.launch().op("cuGraphLaunch"));
    Ok(DecodeOverlap {
        whole_ms: time(&whole_graph)?,
        halves_serial_ms: time(&serial_graph)?,
        halves_parallel_ms: time(&parallel_graph)?,
    })
}

fn tune(gemm: &mut Gemm, tuning: bool, autotune: bool) {
    gemm.set_autotune(if tuning && autotune { usize::MAX } else { 0 });
}

/// Runs `body(true)` once eagerly (the tuning run: every GEMM plan made and timed), then
/// captures `body(false)` on `gpu`'s stream.
fn capture(gpu: &Gpu, mut body: impl FnMut(bool) -> Result<()>) -> Result<CudaGraph> {
    body(true)?;
    gpu.context().synchronize().op("cuCtxSynchronize")?; // the second stream's work too
    capture_graph(gpu, || body(false))
}
