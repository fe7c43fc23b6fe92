//! The engine: requests in, tokens out. One [`Engine::step`] is schedule → encode the images
//! the step needs (one packed vision pass) → one decoder forward over decodes and prefill
//! chunks (a captured CUDA graph for decode-only steps) → sample → update the scheduler →
//! the step's outputs.
//!
//! Async scheduling: after launching a graph decode step, the engine plans the next decode
//! step and launches it too before reading the first one's tokens (their ids are copied on
//! the GPU into the next step's inputs), so the GPU does not idle while the host reads
//! tokens, updates the scheduler and packs the next step. Detokenisation and streaming run
//! on the service's side (src/service/), not here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaEvent, CudaGraph};

use half::bf16;

use super::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
use super::sequence::{FinishReason, ImageSpan, Sequence, StopConditions};
use crate::config::{EngineConfig, EnvFlags, FlashAttnVersion, ModelConfig};
use crate::error::{DriverResultExt, Error, Result};
use crate::kernels::attention::{fa3_unavailable_reason, resolve_version, AttentionVersion};
use crate::kernels::decode::decode_num_splits;
use crate::kernels::embedding::take_embedding_error;
use crate::kernels::sampling::{Sampler, SamplingOutputs, SamplingParams, STATUS_OK};
use crate::model::gpu_weights::ModelWeights;
use crate::model::step::{DecodeRow, HostStep, SeqChunk, StepLayout};
use crate::model::text::{self, KvCache};
use crate::model::vision::{self, VisionBatch, VisionBatchHost};
use crate::model::weights::Checkpoint;
use crate::runtime::{DType, DeviceTensor, Gemm, Gpu, PinnedReadback, PinnedStaging, Workspace};

/// Tokens per KV block (kernels/include/kv_cache.h says why 64).
pub const BLOCK_SIZE: usize = 64;
/// Most image patches encoded in one step: a few full pages.
pub const ENCODER_PATCHES_PER_STEP: usize = 16384;

/// One image, preprocessed: bf16 pixel values `[patches, 3·14·14]` and the patch grid.
#[derive(Clone, Debug)]
pub struct EngineImage {
    /// Shared, so that a caller holding the same image for many requests copies nothing.
    pub pixels: Arc<[bf16]>,
    pub grid: (usize, usize),
    /// Identifies the content for the prefix cache: `prefix_hash::image_content_hash` of the
    /// image bytes (keyed, 128 bits, so no caller can make two images collide).
    pub content_hash: u128,
}

/// A request as the engine takes it: the prompt already tokenised, with each image's
/// placeholders expanded in place (one per merged token, images in order).
#[derive(Clone, Debug)]
pub struct EngineRequest {
    pub prompt_ids: Vec<u32>,
    pub images: Vec<EngineImage>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Alternatives to report per generated token (0..=20).
    pub top_logprobs: usize,
}

/// One generated token, and the finish reason when it is the request's last.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    pub request_id: u64,
    pub token: u32,
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens and their log-probabilities (empty when not asked).
    pub top: Vec<(u32, f32)>,
    pub finished: Option<FinishReason>,
}

/// Gauges and counters of the engine, for metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub num_preemptions: u64,
    pub prefix_cache_queried_tokens: u64,
    pub prefix_cache_hit_tokens: u64,
    pub images_encoded: u64,
    pub image_patches_encoded: u64,
}

struct RequestState {
    images: Vec<EngineImage>,
    /// M-RoPE positions of the prompt, [3, prompt_len] row-major, and the decode offset.
    positions: Vec<i32>,
    rope_delta: i32,
    sampling: SamplingParams,
    top_logprobs: usize,
    /// Projected image tokens of each image once encoded: (packed output, first row).
    features: HashMap<usize, (Rc<DeviceTensor>, usize)>,
    /// Tests only ([`Engine::poison_logits_for_test`]): the request's logits rows are set to
    /// NaN before sampling, a stand-in for a model fault.
    poisoned: bool,
}

/// Where a step's host time goes, summed over steps (seconds), for the bench's gap report.
/// The GPU waits during everything except `wait`: schedule, build, upload and launch, and the
/// bookkeeping after the tokens arrive.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTimings {
    pub steps: u64,
    /// Steps that replayed a captured decode graph.
    pub graph_steps: u64,
    /// Scheduling, image encoding launches, building and packing the step's inputs.
    pub prepare_s: f64,
    /// Uploading the inputs and launching the forward and the sampler.
    pub launch_s: f64,
    /// Waiting for the sampled tokens (the GPU's share of the step, plus launch backlog).
    pub wait_s: f64,
    /// Scheduler update and output assembly after the tokens arrived.
    pub update_s: f64,
    /// Steps planned and launched while the step before was still running (async
    /// scheduling): for those, prepare and launch overlap the GPU's work.
    pub ahead_steps: u64,
    /// GPU time between the end of one step's work and the first command of the next
    /// (CUDA events; not counted across an idle engine): how long the GPU waited for the host.
    pub gpu_idle_s: f64,
}

/// A launched step whose tokens are on their way to the host: what `finish` needs.
struct InFlight {
    plan: SchedulerOutput,
    /// `(logits row, sequence)` of each sampled row, in row order.
    rows: Vec<(usize, u64)>,
    /// Top alternatives copied per row (the most any row asked for).
    top_n: usize,
    /// The captured graph's batch size, for a graph step.
    graph_batch: Option<usize>,
    /// The readback slot the results land in (`None`: nothing sampled).
    readback: Option<usize>,
    /// The next step may be planned ahead of this one's tokens: no row uses penalties.
    can_plan_ahead: bool,
    /// Timing events at the step's first command and after its last.
    started: CudaEvent,
    ended: CudaEvent,
}

/// A decode forward captured for one padded batch size.
struct DecodeGraph {
    graph: CudaGraph,
    layout: StepLayout,
}

/// Buffers that live as long as the engine, so that steps allocate nothing and a captured
/// graph finds its inputs at the addresses it was captured with.
struct StepBuffers {
    /// i32: the packed step (HostStep::pack_into), at most `meta_capacity` elements.
    meta: DeviceTensor,
    staging: PinnedStaging,
    /// Page-locked staging for a step's image pixels (up to `ENCODER_PATCHES_PER_STEP`
    /// patches): an async DMA instead of a pageable copy that holds the host (and the GPU,
    /// which has nothing queued yet) for several milliseconds per page image.
    pixels: PinnedStaging,
    packed: Vec<i32>,
    /// f32 [max_num_seqs, vocab]: one logits row per sequence at most.
    logits: DeviceTensor,
    /// i32 [3 * max_num_seqs]: a step's tokens, log-probs (f32 bits) and statuses, each
    /// `rows` long and back to back, so that one copy brings them home.
    sampled: DeviceTensor,
    /// [max_num_seqs * 20] ids and log-probs of the top alternatives.
    top_ids: DeviceTensor,
    top_logprobs: DeviceTensor,
}

/// Most top alternatives per token (the sampler's limit).
const MAX_TOP_LOGPROBS: usize = 20;
/// Penalty history tokens the sampler holds per step, over all rows; a row's history is its
/// most recent output tokens, cut to an equal share when the batch would exceed this.
const PENALTY_HISTORY_CAPACITY: usize = 1 << 20;

pub struct Engine {
    gpu: Gpu,
    cfg: ModelConfig,
    env: EnvFlags,
    weights: ModelWeights,
    gemm: Gemm,
    ws: Workspace,
    cache: KvCache,
    scheduler: Scheduler,
    sampler: Sampler,
    embed_error: DeviceTensor,
    requests: HashMap<u64, RequestState>,
    next_id: u64,
    images_encoded: u64,
    image_patches_encoded: u64,
    buffers: StepBuffers,
    /// Block-table width of graph steps: max_model_len / BLOCK_SIZE, rounded up.
    table_width: usize,
    /// The cache block no sequence owns (index `num_blocks`): padding rows of a graph step
    /// write their K/V there and attend to it.
    scratch_block: i32,
    /// Captured decode graphs by padded batch size (empty with --enforce-eager).
    graphs: BTreeMap<usize, DecodeGraph>,
    timings: StepTimings,
    async_scheduling: bool,
    /// The step planned ahead and launched, whose tokens the next `step` collects.
    in_flight: Option<InFlight>,
    /// Two landing slots for sampled tokens: a step's results arrive in one while the step
    /// planned ahead of it already has its copy queued into the other.
    readback: [PinnedReadback; 2],
    next_readback: usize,
    /// The end event of the step finished last, while steps follow each other.
    last_step_end: Option<CudaEvent>,
    /// Requests ended by a fault of their own (a logits row the sampler refused), with why,
    /// until [`Engine::take_failed`] collects them.
    failed: Vec<(u64, String)>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // A step planned ahead may still be writing into buffers about to be freed.
        if self.in_flight.is_some() {
            let _ = self.gpu.synchronize();
        }
    }
}

/// Decode batch sizes that get a graph: 1, 2, 4, 8, then every multiple of 8, up to and
/// including `max_num_seqs`. A batch runs in the smallest graph that holds it; padding is at
/// most 7 rows past 8, a few percent of the step at the sizes where it matters.
pub fn graph_batch_sizes(max_num_seqs: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [1, 2, 4].into_iter().filter(|&b| b < max_num_seqs).collect();
    v.extend((1..).map(|k| 8 * k).take_while(|&b| b < max_num_seqs));
    v.push(max_num_seqs);
    v
}

impl Engine {
    /// Loads the model in `dir`, sizes the KV cache from `--gpu-memory-utilization`, and
    /// captures the decode graphs (unless `--enforce-eager`).
    pub fn new(gpu: Gpu, dir: &Path, engine: &EngineConfig, env: EnvFlags) -> Result<Engine> {
        let cfg = ModelConfig::from_dir(dir)?;
        engine.validate(&cfg)?;
        let attention = resolve_version(&gpu, env.flash_attn_version)?;
        let ckpt = Checkpoint::open(dir)?;
        let mut weights = ModelWeights::upload(&gpu, &cfg, &ckpt.validate(&cfg)?)?;
        weights.attention = attention;
        log_attention_choice(&gpu, env, attention);
        let gemm = Gemm::new(&gpu)?;
        let (t, s) = (engine.max_num_batched_tokens, engine.max_num_seqs);
        let ws_bytes =
            text::workspace_bytes(&cfg, t, s, s).max(vision::workspace_bytes(&cfg, ENCODER_PATCHES_PER_STEP));
        let ws = Workspace::new(&gpu, ws_bytes)?;
        let sampler = Sampler::new(&gpu, s, PENALTY_HISTORY_CAPACITY)?;
        let embed_error = DeviceTensor::zeros(&gpu, DType::I32, &[1])?;
        let table_width = engine.max_model_len.div_ceil(BLOCK_SIZE);
        // Packed step bound: ids, 3 position rows, slots and image rows per token; a table row,
        // a length and a few offsets per sequence (HostStep::pack_into).
        let meta_capacity = 6 * t + s * table_width + 4 * s + 1;
        let vocab = cfg.text.vocab_size;
        let buffers = StepBuffers {
            meta: DeviceTensor::zeros(&gpu, DType::I32, &[meta_capacity])?,
            staging: PinnedStaging::new(&gpu, meta_capacity * 4)?,
            // Every image has at least 4 patches; each part is placed at a 256-byte offset.
            pixels: PinnedStaging::new(
                &gpu,
                ENCODER_PATCHES_PER_STEP * (cfg.vision.patch_dim() * 2) + ENCODER_PATCHES_PER_STEP / 4 * 256,
            )?,
            packed: Vec::with_capacity(meta_capacity),
            logits: DeviceTensor::zeros(&gpu, DType::F32, &[s, vocab])?,
            sampled: DeviceTensor::zeros(&gpu, DType::I32, &[3 * s])?,
            top_ids: DeviceTensor::zeros(&gpu, DType::I32, &[s * MAX_TOP_LOGPROBS])?,
            top_logprobs: DeviceTensor::zeros(&gpu, DType::F32, &[s * MAX_TOP_LOGPROBS])?,
        };
        // Per slot: tokens, log-probs and statuses, the top alternatives' ids and log-probs.
        let readback_bytes = (3 * s + 2 * s * MAX_TOP_LOGPROBS) * 4 + 3 * 256;
        let readback = [
            PinnedReadback::new(&gpu, readback_bytes)?,
            PinnedReadback::new(&gpu, readback_bytes)?,
        ];
        // The KV cache takes what the utilisation target leaves after everything above, with
        // 512 MiB kept back for the step's transient buffers (image features, encoder
        // outputs) and the graphs. One extra block is the padding rows' scratch.
        let (free, total) = gpu.memory_info()?;
        let used = total - free;
        let budget = (total as f64 * engine.gpu_memory_utilization) as usize;
        let per_block = KvCache::bytes_per_block(&cfg, BLOCK_SIZE);
        let num_blocks = match engine.num_gpu_blocks_override {
            Some(n) => n,
            None => (budget.saturating_sub(used + (512 << 20)) / per_block).saturating_sub(1),
        };
        let needed = engine.max_model_len.div_ceil(BLOCK_SIZE);
        if num_blocks < needed {
            return Err(Error::invalid(
                "engine",
                format!(
                    "the KV cache gets {num_blocks} blocks of {BLOCK_SIZE} tokens but one sequence of \
                     --max-model-len {} needs {needed}: lower --max-model-len or --max-num-seqs, or raise \
                     --gpu-memory-utilization",
                    engine.max_model_len
                ),
            ));
        }
        let cache = KvCache::new(&gpu, &cfg, num_blocks + 1, BLOCK_SIZE)?;
        let scheduler = Scheduler::new(SchedulerConfig::from_engine(
            engine,
            BLOCK_SIZE,
            num_blocks,
            ENCODER_PATCHES_PER_STEP,
        ))?;
        let mut e = Engine {
            gpu,
            cfg,
            env,
            weights,
            gemm,
            ws,
            cache,
            scheduler,
            sampler,
            embed_error,
            requests: HashMap::new(),
            next_id: 1,
            images_encoded: 0,
            image_patches_encoded: 0,
            buffers,
            table_width,
            scratch_block: num_blocks as i32,
            graphs: BTreeMap::new(),
            timings: StepTimings::default(),
            async_scheduling: engine.async_scheduling,
            in_flight: None,
            readback,
            next_readback: 0,
            last_step_end: None,
            failed: Vec::new(),
        };
        if !engine.enforce_eager {
            for b in graph_batch_sizes(s) {
                e.capture_decode_graph(b).map_err(|err| {
                    Error::invalid(
                        "engine",
                        format!("capturing the decode graph of batch {b} failed ({err}); --enforce-eager runs without graphs"),
                    )
                })?;
            }
        }
        Ok(e)
    }

    /// Batch sizes with a captured decode graph.
    pub fn graph_batch_sizes(&self) -> Vec<usize> {
        self.graphs.keys().copied().collect()
    }

    /// Host-time breakdown of the steps so far.
    pub fn step_timings(&self) -> StepTimings {
        self.timings.clone()
    }

    /// A decode step of `batch` padding rows (all on the scratch block).
    fn padding_chunk(&self) -> SeqChunk {
        SeqChunk {
            ids: vec![0],
            positions: [vec![0], vec![0], vec![0]],
            start: 0,
            block_table: vec![self.scratch_block],
            is_decode: true,
            wants_logits: true,
            image_slots: Vec::new(),
        }
    }

    /// Runs the decode forward of `batch` rows once (so every GEMM plan exists), then captures
    /// it. The graph reads the packed step at the start of `meta` and writes logits rows
    /// `0..batch`; the split count is fixed at the heuristic's choice for a full-length context.
    fn capture_decode_graph(&mut self, batch: usize) -> Result<()> {
        let chunks = vec![self.padding_chunk(); batch];
        let host = HostStep::build_with_width(&chunks, BLOCK_SIZE, self.table_width)?;
        let b = &mut self.buffers;
        b.packed.clear();
        let layout = host.pack_into(&mut b.packed);
        let mut dst = b.meta.view_mut().narrow0(0, layout.len())?;
        b.staging.upload(&self.gpu, &b.packed, &mut dst)?;
        let t = &self.cfg.text;
        let splits = decode_num_splits(
            batch,
            t.num_key_value_heads,
            self.table_width * BLOCK_SIZE,
            self.gpu.sm_count(),
        );
        for capture in [false, true] {
            self.ws.reset();
            let mut inputs = layout.inputs(self.buffers.meta.view(), None)?;
            inputs.decode_splits = Some(splits);
            let mut logits = self.buffers.logits.view_mut().narrow0(0, batch)?;
            if capture {
                self.gpu.synchronize()?;
                self.gpu
                    .stream()
                    .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .op("cuStreamBeginCapture")?;
            }
            // The warm-up run times the decode GEMMs' candidate algorithms (never while
            // capturing: timing synchronises). OCRVL_GEMM_AUTOTUNE=0 keeps the heuristic's.
            let tune = !capture && std::env::var("OCRVL_GEMM_AUTOTUNE").map_or(true, |v| v != "0");
            self.gemm.set_autotune(if tune { usize::MAX } else { 0 });
            let run = text::forward(
                &self.gpu,
                &mut self.gemm,
                &self.ws,
                &self.cfg,
                &self.weights,
                &mut self.cache,
                &inputs,
                &mut self.embed_error.view_mut(),
                &mut logits,
            );
            self.gemm.set_autotune(0);
            if capture {
                // End the capture whatever happened, so the stream is usable afterwards.
                let graph = self
                    .gpu
                    .stream()
                    .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH)
                    .op("cuStreamEndCapture");
                run?;
                let graph = graph?.ok_or_else(|| Error::invalid("capture", "the capture produced no graph"))?;
                graph.upload().op("cuGraphUpload")?;
                self.graphs.insert(
                    batch,
                    DecodeGraph {
                        graph,
                        layout: layout.clone(),
                    },
                );
            } else {
                run?;
            }
        }
        self.gpu.synchronize()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn num_kv_blocks(&self) -> usize {
        self.cache.num_blocks
    }

    pub fn stats(&self) -> EngineStats {
        let s = self.scheduler.stats();
        let pool = self.scheduler.pool();
        EngineStats {
            num_running: self.scheduler.num_running(),
            num_waiting: self.scheduler.num_waiting(),
            kv_blocks_total: pool.num_blocks(),
            kv_blocks_free: pool.num_free(),
            num_preemptions: s.num_preemptions,
            prefix_cache_queried_tokens: s.prefix_cache_queried_tokens,
            prefix_cache_hit_tokens: s.prefix_cache_hit_tokens,
            images_encoded: self.images_encoded,
            image_patches_encoded: self.image_patches_encoded,
        }
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
    }

    /// Admits a request; errors name the problem (too long, bad image spans, bad sampling
    /// values) and leave the engine unchanged.
    pub fn add_request(&mut self, req: EngineRequest) -> Result<u64> {
        const OP: &str = "add_request";
        req.sampling.validate()?;
        if req.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(Error::invalid(
                OP,
                format!("top_logprobs {} over {MAX_TOP_LOGPROBS}", req.top_logprobs),
            ));
        }
        let image_token = self.cfg.tokens.image_token_id;
        let grids: Vec<crate::preprocess::image::ImageGrid> = req
            .images
            .iter()
            .map(|im| crate::preprocess::image::ImageGrid {
                t: 1,
                h: im.grid.0,
                w: im.grid.1,
            })
            .collect();
        let pos = crate::preprocess::mrope::mrope_positions(&req.prompt_ids, image_token, &grids, 2)
            .map_err(|e| Error::invalid(OP, e.to_string()))?;
        // Image spans: each image's run of placeholders, in order.
        let mut spans = Vec::new();
        let mut t = 0;
        for im in &req.images {
            while t < req.prompt_ids.len() && req.prompt_ids[t] != image_token {
                t += 1;
            }
            let len = im.grid.0 * im.grid.1 / 4;
            if im.pixels.len() != im.grid.0 * im.grid.1 * self.cfg.vision.patch_dim() {
                return Err(Error::invalid(
                    OP,
                    format!("image pixels do not match its {:?} grid", im.grid),
                ));
            }
            spans.push(ImageSpan {
                start: t,
                len,
                content_hash: im.content_hash,
                num_patches: im.grid.0 * im.grid.1,
            });
            t += len;
        }
        let id = self.next_id;
        let stop = StopConditions {
            max_tokens: req.max_tokens,
            eos_token_id: self.cfg.tokens.eos_token_ids.first().copied(),
            stop_token_ids: req.stop_token_ids.clone(),
            ignore_eos: req.ignore_eos,
        };
        self.scheduler
            .add(Sequence::new(id, req.prompt_ids.clone(), spans, stop))
            .map_err(|e| Error::invalid(OP, e.to_string()))?;
        self.next_id += 1;
        let mut sampling = req.sampling;
        if sampling.seed == 0 {
            sampling.seed = id;
        }
        self.requests.insert(
            id,
            RequestState {
                images: req.images,
                positions: pos.positions,
                rope_delta: pos.rope_delta,
                sampling,
                top_logprobs: req.top_logprobs,
                features: HashMap::new(),
                poisoned: false,
            },
        );
        Ok(id)
    }

    /// Requests that failed alone since the last call, with the reason: their logits row was
    /// not finite (a model fault) or the sampler refused their parameters. Each is finished
    /// and its blocks are back in the pool; the other requests of its steps go on. Call
    /// after every [`Engine::step`].
    pub fn take_failed(&mut self) -> Vec<(u64, String)> {
        std::mem::take(&mut self.failed)
    }

    /// Tests only: from the next step on, request `id`'s logits rows are NaN when sampled, so
    /// the request fails as a model fault would make it. False if no such request.
    #[doc(hidden)]
    pub fn poison_logits_for_test(&mut self, id: u64) -> bool {
        self.requests.get_mut(&id).map(|r| r.poisoned = true).is_some()
    }

    /// Aborts a request in any state; its blocks return to the pool.
    pub fn abort(&mut self, id: u64) -> bool {
        self.requests.remove(&id);
        self.scheduler.abort(id).is_some()
    }

    /// Runs one engine step; returns the tokens it produced.
    ///
    /// With async scheduling, a decode step that replays a graph is followed at once by the
    /// next one, planned ahead (`Scheduler::schedule_ahead`) and launched before this step's
    /// tokens reach the host; the call then waits for this step's tokens, and the step ahead
    /// is the one the next call finishes. The GPU thus always has the next step queued while
    /// the host updates the scheduler. Each call returns the tokens of one step either way.
    pub fn step(&mut self) -> Result<Vec<StepOutput>> {
        let current = match self.in_flight.take() {
            Some(step) => step,
            None => {
                let t0 = Instant::now();
                let plan = self.scheduler.schedule();
                for (id, img) in &plan.freed_encoder_outputs {
                    if let Some(r) = self.requests.get_mut(id) {
                        r.features.remove(img);
                    }
                }
                if plan.is_empty() {
                    return Ok(Vec::new());
                }
                self.launch(plan, t0)?
            }
        };
        if self.async_scheduling && current.graph_batch.is_some() && current.can_plan_ahead {
            let t0 = Instant::now();
            if let Some(plan) = self.scheduler.schedule_ahead(&current.plan) {
                self.in_flight = Some(self.launch(plan, t0)?);
                self.timings.ahead_steps += 1;
            }
        }
        self.finish(current)
    }

    /// Encodes the plan's images, packs and uploads its inputs, and queues the forward, the
    /// sampler and the copy of the sampled tokens to the host, without waiting for any.
    fn launch(&mut self, plan: SchedulerOutput, t0: Instant) -> Result<InFlight> {
        let event = || {
            self.gpu
                .context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .op("cuEventCreate")
        };
        let (started, ended) = (event()?, event()?);
        // The step's first command: the vision pass when there is one, else the upload.
        if !plan.encoder_inputs.is_empty() {
            started.record(self.gpu.stream()).op("cuEventRecord")?;
        }
        self.encode_images(&plan)?;
        // A decode-only step runs in the smallest captured graph that holds it.
        let n = plan.scheduled.len();
        let graph_batch = if plan.scheduled.iter().all(|e| e.is_decode) {
            self.graphs.range(n..).next().map(|(&b, _)| b)
        } else {
            None
        };
        let ahead = plan.scheduled.iter().any(|e| e.prev_row.is_some());
        if ahead && graph_batch.is_none() {
            return Err(Error::invalid("step", "a step planned ahead has no decode graph"));
        }
        // Graph steps pack straight into the graph's layout (no chunks); the others build
        // their chunks. Either way: the packed step, its image features, and for each
        // scheduled sequence the logits row it gets.
        let (layout, features, logits_index) = match graph_batch {
            Some(batch) => {
                let mut rows = Vec::with_capacity(n);
                for (i, e) in plan.scheduled.iter().enumerate() {
                    let r = &self.requests[&e.seq_id];
                    let prompt_len = r.positions.len() / 3;
                    let t = e.start;
                    let positions = [0, 1, 2].map(|axis| {
                        if t < prompt_len {
                            r.positions[axis * prompt_len + t]
                        } else {
                            t as i32 + r.rope_delta
                        }
                    });
                    rows.push(DecodeRow {
                        id: plan.input_ids[i],
                        positions,
                        start: t,
                        block_table: &e.block_table,
                    });
                }
                let g = &self.graphs[&batch];
                g.layout
                    .pack_decode(&mut self.buffers.packed, &rows, BLOCK_SIZE, self.scratch_block)?;
                (g.layout.clone(), None, (0..n).map(Some).collect::<Vec<_>>())
            }
            None => {
                let (host, features) = self.build_step(&plan)?;
                self.buffers.packed.clear();
                let layout = host.pack_into(&mut self.buffers.packed);
                (layout, features, host.logits_index)
            }
        };
        let t1 = Instant::now();

        if plan.encoder_inputs.is_empty() {
            started.record(self.gpu.stream()).op("cuEventRecord")?;
        }
        let b = &mut self.buffers;
        let mut dst = b.meta.view_mut().narrow0(0, layout.len())?;
        b.staging.upload(&self.gpu, &b.packed, &mut dst)?;
        if ahead {
            self.copy_sampled_tokens(&plan, &layout)?;
        }
        match graph_batch {
            Some(batch) => {
                self.graphs[&batch].graph.launch().op("cuGraphLaunch")?;
                self.timings.graph_steps += 1;
            }
            None => {
                self.ws.reset();
                let inputs = layout.inputs(self.buffers.meta.view(), features.as_ref().map(DeviceTensor::view))?;
                let rows = layout.logits_len();
                let mut logits = self.buffers.logits.view_mut().narrow0(0, rows)?;
                text::forward(
                    &self.gpu,
                    &mut self.gemm,
                    &self.ws,
                    &self.cfg,
                    &self.weights,
                    &mut self.cache,
                    &inputs,
                    &mut self.embed_error.view_mut(),
                    &mut logits,
                )?;
            }
        }

        // Sample the rows that need logits; the step position seeds each row's random stream,
        // so a request's tokens do not depend on the batch it ran in. Real rows come first in
        // the logits (padding rows of a graph step follow them).
        let mut rows_info: Vec<(usize, u64, SamplingParams)> = plan
            .scheduled
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                logits_index[i].map(|row| {
                    let mut p = self.requests[&e.seq_id].sampling;
                    p.step = (e.start + e.num_tokens) as u64;
                    (row, e.seq_id, p)
                })
            })
            .collect();
        rows_info.sort_by_key(|r| r.0);
        let rows = rows_info.len();
        let top_n = rows_info
            .iter()
            .map(|r| self.requests[&r.1].top_logprobs)
            .max()
            .unwrap_or(0);
        // A step planned ahead samples before this step's tokens are home, so its rows
        // could not see them in a penalty history.
        let can_plan_ahead = rows_info.iter().all(|r| !r.2.has_penalties());
        let mut readback = None;
        if rows > 0 {
            if rows_info.iter().enumerate().any(|(i, r)| r.0 != i) {
                return Err(Error::invalid("step", "logits rows are not the first rows of the step"));
            }
            let ordered: Vec<SamplingParams> = rows_info.iter().map(|r| r.2).collect();
            let histories = self.penalty_histories(&rows_info);
            let history_refs: Vec<&[i32]> = histories.iter().map(Vec::as_slice).collect();
            self.sampler.set_batch(&self.gpu, &ordered, &history_refs)?;
            let b = &mut self.buffers;
            let top = if top_n > 0 {
                Some((
                    b.top_ids.view_mut().narrow0(0, rows * top_n)?.reshape(&[rows, top_n])?,
                    b.top_logprobs
                        .view_mut()
                        .narrow0(0, rows * top_n)?
                        .reshape(&[rows, top_n])?,
                ))
            } else {
                None
            };
            let [token, logprob, status] = b
                .sampled
                .view_mut()
                .narrow0(0, 3 * rows)?
                .reshape(&[3, rows])?
                .split_rows()?;
            let mut out = SamplingOutputs {
                token,
                logprob: logprob.bitcast(DType::F32)?,
                status,
                top,
            };
            for (row, id, _) in &rows_info {
                if self.requests[id].poisoned {
                    b.logits.view_mut().narrow0(*row, 1)?.fill_bytes(&self.gpu, 0xFF)?;
                }
            }
            let mut logits = b.logits.view_mut().narrow0(0, rows)?;
            self.sampler
                .sample(&self.gpu, self.env.sampling_class, &mut logits, &mut out)?;
            // Tokens, log-probs and statuses (and the top alternatives) come home in one
            // queued copy, to the readback slot the step before did not use.
            let slot = self.next_readback;
            self.next_readback ^= 1;
            let b = &self.buffers;
            let mut srcs = vec![b.sampled.view().narrow0(0, 3 * rows)?];
            if top_n > 0 {
                srcs.push(b.top_ids.view().narrow0(0, rows * top_n)?);
                srcs.push(b.top_logprobs.view().narrow0(0, rows * top_n)?);
            }
            self.readback[slot].enqueue(&self.gpu, &srcs)?;
            readback = Some(slot);
        }
        ended.record(self.gpu.stream()).op("cuEventRecord")?;
        let tm = &mut self.timings;
        tm.prepare_s += (t1 - t0).as_secs_f64();
        tm.launch_s += t1.elapsed().as_secs_f64();
        Ok(InFlight {
            rows: rows_info.iter().map(|r| (r.0, r.1)).collect(),
            plan,
            top_n,
            graph_batch,
            readback,
            can_plan_ahead,
            started,
            ended,
        })
    }

    /// Inputs of a step planned ahead: each row's token is the one the step before sampled
    /// in its row `prev_row`. Copied on the GPU into the packed step's ids after the upload
    /// and before the forward, one copy per run of consecutive rows (usually one in all).
    fn copy_sampled_tokens(&self, plan: &SchedulerOutput, layout: &StepLayout) -> Result<()> {
        const I32: usize = 4;
        let ids = self.buffers.meta.view().device_ptr() + (layout.ids_offset() * I32) as u64;
        let sampled = self.buffers.sampled.view().device_ptr();
        let mut i = 0;
        while i < plan.scheduled.len() {
            let first = plan.scheduled[i]
                .prev_row
                .ok_or_else(|| Error::invalid("step", "a row planned ahead without its previous row"))?;
            let mut len = 1;
            while plan.scheduled.get(i + len).and_then(|e| e.prev_row) == Some(first + len) {
                len += 1;
            }
            // SAFETY: `meta` holds the packed step, whose ids start at `ids_offset` and have
            // a slot per row; `sampled` starts with the previous step's tokens, one per
            // logits row, and `prev_row` indexes them. Both copies are stream-ordered after
            // the writes they read and before the forward that reads them.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    ids + (i * I32) as u64,
                    sampled + (first * I32) as u64,
                    len * I32,
                    self.gpu.stream().cu_stream(),
                )
            }
            .op("cuMemcpyDtoDAsync")?;
            i += len;
        }
        Ok(())
    }

    /// Waits for a launched step's tokens, checks them, updates the scheduler, and returns
    /// the step's outputs. Rows of sequences that are gone (aborted since the launch, or
    /// finished by the step before one planned ahead) are dropped.
    fn finish(&mut self, step: InFlight) -> Result<Vec<StepOutput>> {
        let t2 = Instant::now();
        let rows = step.rows.len();
        let top_n = step.top_n;
        let (mut tokens, mut logprobs, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
        let (mut top_ids, mut top_lps) = (Vec::new(), Vec::new());
        match step.readback {
            Some(slot) => {
                let parts = self.readback[slot].wait()?;
                let sampled: &[i32] = bytemuck::cast_slice(parts[0]);
                tokens.extend_from_slice(&sampled[..rows]);
                logprobs.extend(sampled[rows..2 * rows].iter().map(|&b| f32::from_bits(b as u32)));
                statuses.extend_from_slice(&sampled[2 * rows..3 * rows]);
                if top_n > 0 {
                    top_ids.extend_from_slice(bytemuck::cast_slice::<u8, i32>(parts[1]));
                    top_lps.extend_from_slice(bytemuck::cast_slice::<u8, f32>(parts[2]));
                }
            }
            // A step of prefill chunks that all stop mid-prompt: nothing to sample, but the
            // forward must finish before the next step reuses the buffers.
            None => self.gpu.synchronize()?,
        }
        self.timings.wait_s += t2.elapsed().as_secs_f64();
        // Both events have completed: everything queued before the results has.
        if let Some(prev_end) = self.last_step_end.take() {
            let idle_ms = prev_end.elapsed_ms(&step.started).op("cuEventElapsedTime")?;
            self.timings.gpu_idle_s += f64::from(idle_ms.max(0.0)) / 1e3;
        }
        // A graph step's inputs are tokens the sampler drew, always in range; other steps
        // carry prompt tokens, which the gather checks on the device.
        if step.graph_batch.is_none() {
            take_embedding_error(&self.gpu, &mut self.embed_error.view_mut(), self.cfg.text.vocab_size)?;
        }
        let t3 = Instant::now();
        let mut outputs = Vec::with_capacity(rows);
        let mut sampled = Vec::with_capacity(rows);
        let failed_before = self.failed.len();
        for &(row, id) in &step.rows {
            let Some(request) = self.requests.get(&id) else {
                continue;
            };
            if statuses[row] != STATUS_OK {
                // This request's fault alone: it ends here, the rest of the step goes on.
                self.failed.push((
                    id,
                    format!(
                        "request {id}: sampler status {} (non-finite logits or bad parameters)",
                        statuses[row]
                    ),
                ));
                continue;
            }
            let top = (0..request.top_logprobs)
                .map(|j| (top_ids[row * top_n + j] as u32, top_lps[row * top_n + j]))
                .collect();
            sampled.push((id, tokens[row] as u32));
            outputs.push(StepOutput {
                request_id: id,
                token: tokens[row] as u32,
                logprob: logprobs[row],
                top,
                finished: None,
            });
        }
        if self.failed.len() > failed_before {
            for &(id, _) in &self.failed[failed_before..] {
                self.requests.remove(&id);
                self.scheduler.abort(id);
            }
            // A step planned ahead took the failed rows' token (-1) as input; its gather
            // flagged it as out of range. Graph steps carry no other ids, so clear the flag
            // once that step is done, or the next eager step would fail everyone.
            if self.in_flight.is_some() {
                self.embed_error.view_mut().fill_bytes(&self.gpu, 0)?;
            }
        }
        let update = self.scheduler.update(&step.plan, &sampled);
        for (id, img) in &update.freed_encoder_outputs {
            if let Some(r) = self.requests.get_mut(id) {
                r.features.remove(img);
            }
        }
        for seq in &update.finished {
            self.requests.remove(&seq.id());
            if let Some(o) = outputs.iter_mut().rev().find(|o| o.request_id == seq.id()) {
                o.finished = seq.finish_reason();
            }
        }
        let tm = &mut self.timings;
        tm.steps += 1;
        tm.update_s += t3.elapsed().as_secs_f64();
        // Idle time with no work to do is not a gap between steps.
        if self.in_flight.is_some() || self.scheduler.has_unfinished() {
            self.last_step_end = Some(step.ended);
        }
        Ok(outputs)
    }

    /// Each row's recent output tokens when any row has penalties, else nothing (the sampler
    /// then skips them). Rows share `PENALTY_HISTORY_CAPACITY` equally when over it.
    fn penalty_histories(&self, rows: &[(usize, u64, SamplingParams)]) -> Vec<Vec<i32>> {
        if !rows.iter().any(|r| r.2.has_penalties()) {
            return Vec::new();
        }
        let share = PENALTY_HISTORY_CAPACITY / rows.len().max(1);
        rows.iter()
            .map(|r| {
                let out = self.scheduler.sequence(r.1).map_or(&[][..], |s| s.output_token_ids());
                out[out.len().saturating_sub(share)..]
                    .iter()
                    .map(|&t| t as i32)
                    .collect()
            })
            .collect()
    }

    /// Encodes, in one packed vision pass, every image the plan needs that is not encoded.
    fn encode_images(&mut self, plan: &SchedulerOutput) -> Result<()> {
        let todo: Vec<(u64, usize)> = plan
            .encoder_inputs
            .iter()
            .filter(|(id, img)| self.requests.get(id).is_some_and(|r| !r.features.contains_key(img)))
            .copied()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let grids: Vec<(usize, usize)> = todo
            .iter()
            .map(|(id, img)| self.requests[id].images[*img].grid)
            .collect();
        let batch = VisionBatch::upload(&self.gpu, VisionBatchHost::new(&grids)?)?;
        let p = batch.host.num_patches();
        // Each image's pixels go straight from the request into the staging buffer and on
        // to its rows of the packed pixel tensor.
        let mut dpix = DeviceTensor::alloc(&self.gpu, DType::BF16, &[p, self.cfg.vision.patch_dim()])?;
        let mut parts = Vec::with_capacity(todo.len());
        let mut rest = dpix.view_mut();
        for (id, img) in &todo {
            let im = &self.requests[id].images[*img];
            let n = im.grid.0 * im.grid.1;
            let (head, tail) = rest.split_at0(n)?;
            parts.push((bytemuck::cast_slice::<bf16, u8>(&im.pixels), head));
            rest = tail;
        }
        self.buffers.pixels.upload_parts(&self.gpu, &mut parts)?;
        drop(parts);
        let mut out = DeviceTensor::alloc(&self.gpu, DType::BF16, &[p / 4, self.cfg.text.hidden_size])?;
        self.ws.reset();
        vision::encode(
            &self.gpu,
            &mut self.gemm,
            &self.ws,
            &self.cfg,
            &self.weights,
            &batch,
            &dpix.view(),
            &mut out.view_mut(),
        )?;
        self.images_encoded += todo.len() as u64;
        self.image_patches_encoded += p as u64;
        let out = Rc::new(out);
        let mut row = 0;
        for ((id, img), &(h, w)) in todo.iter().zip(&grids) {
            if let Some(r) = self.requests.get_mut(id) {
                r.features.insert(*img, (out.clone(), row));
            }
            row += h * w / 4;
        }
        Ok(())
    }

    /// The step's chunks (positions, image slots) and its image features in slot order.
    fn build_step(&self, plan: &SchedulerOutput) -> Result<(HostStep, Option<DeviceTensor>)> {
        let mut chunks = Vec::with_capacity(plan.scheduled.len());
        // (packed tensor, first row, rows) pieces to concatenate, in slot order.
        let mut pieces: Vec<(Rc<DeviceTensor>, usize, usize)> = Vec::new();
        let mut offset = 0;
        for e in &plan.scheduled {
            let seq = self
                .scheduler
                .sequence(e.seq_id)
                .ok_or_else(|| Error::invalid("step", "a scheduled sequence vanished"))?;
            let r = &self.requests[&e.seq_id];
            let (a, b) = (e.start, e.start + e.num_tokens);
            let prompt_len = seq.num_prompt_tokens();
            let mut positions: [Vec<i32>; 3] = Default::default();
            for (axis, dst) in positions.iter_mut().enumerate() {
                dst.extend((a..b).map(|t| {
                    if t < prompt_len {
                        r.positions[axis * prompt_len + t]
                    } else {
                        t as i32 + r.rope_delta
                    }
                }));
            }
            let mut image_slots = Vec::new();
            for (i, span) in seq.images().iter().enumerate() {
                let (lo, hi) = (span.start.max(a), (span.start + span.len).min(b));
                if lo >= hi {
                    continue;
                }
                let (tensor, first) = r.features.get(&i).ok_or_else(|| {
                    Error::invalid("step", format!("image {i} of request {} is not encoded", e.seq_id))
                })?;
                image_slots.extend((lo..hi).map(|t| t - a));
                pieces.push((tensor.clone(), first + lo - span.start, hi - lo));
            }
            chunks.push(SeqChunk {
                ids: plan.input_ids[offset..offset + e.num_tokens].to_vec(),
                positions,
                start: e.start,
                block_table: e.block_table.iter().map(|&x| x as i32).collect(),
                is_decode: e.is_decode,
                wants_logits: e.needs_logits,
                image_slots,
            });
            offset += e.num_tokens;
        }
        let host = HostStep::build(&chunks, BLOCK_SIZE)?;
        if pieces.is_empty() {
            return Ok((host, None));
        }
        // Image slots are in chunk order, which `HostStep::build` keeps for prefill chunks
        // (decodes never hold image tokens).
        let total: usize = pieces.iter().map(|p| p.2).sum();
        let mut feats = DeviceTensor::alloc(&self.gpu, DType::BF16, &[total, self.cfg.text.hidden_size])?;
        let mut row = 0;
        for (t, first, n) in &pieces {
            let src = t.view().narrow0(*first, *n)?;
            feats.view_mut().narrow0(row, *n)?.copy_from_view(&self.gpu, &src)?;
            row += n;
        }
        Ok((host, Some(feats)))
    }
}

/// Says once per process which attention kernels run and why (FLAGS_flash_attn_version).
fn log_attention_choice(gpu: &Gpu, env: EnvFlags, chosen: AttentionVersion) {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| {
        let why = match (env.flash_attn_version, fa3_unavailable_reason(gpu)) {
            (FlashAttnVersion::Auto, Some(reason)) => {
                format!("FLAGS_flash_attn_version unset; FA3 unavailable: {reason}")
            }
            (FlashAttnVersion::Auto, None) => {
                "FLAGS_flash_attn_version unset; FA3 is built and the GPU is sm_90".into()
            }
            (v, _) => format!(
                "FLAGS_flash_attn_version={}",
                if v == FlashAttnVersion::Fa2 { 2 } else { 3 }
            ),
        };
        if std::env::var_os("OCRVL_QUIET").is_none() {
            eprintln!("ocrvl: attention {chosen:?} ({why})");
        }
    });
}
