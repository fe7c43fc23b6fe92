//! The model runner: everything of a step that touches the GPU. It owns the model (behind
//! [`ModelFamily`]), the KV cache tensors, the device buffers a step reads and writes, the
//! captured decode graphs ([`super::cuda_graphs`]), the sampler and the readback of sampled
//! tokens, and sizes the KV cache from the memory left. The engine hands it a scheduler plan;
//! `ModelRunner::launch` encodes the images the plan needs, packs and uploads the step,
//! queues the forward (a graph replay for decode-only steps), the sampler and the copy of the
//! tokens home, and returns without waiting; `ModelRunner::collect` waits for them.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use half::bf16;

use super::cuda_graphs::DecodeGraph;
use super::request::{Requests, StepTimings};
use super::scheduler::{Scheduler, SchedulerOutput};
use crate::config::{EngineConfig, EnvFlags, FamilyConfig, SamplingClass};
use crate::error::{DriverResultExt, Error, Result};
use crate::kernels::attention::{AttentionKernels, AttentionVersion};
use crate::kernels::embedding::take_embedding_error;
use crate::kernels::sampling::{Sampler, SamplingOutputs, SamplingParams};
use crate::model::family::{self, ModelFamily};
use crate::model::step::{DecodeRow, HostStep, SeqChunk, StepLayout};
use crate::model::text::KvCache;
use crate::preprocess::image::ImageGrid;
use crate::runtime::{DType, DeviceTensor, Gemm, Gpu, PinnedReadback, PinnedStaging, Workspace};

/// Tokens per KV block (kernels/include/kv_cache.h says why 64).
pub const BLOCK_SIZE: usize = 64;
/// Most image patches encoded in one step: a few full pages.
pub const ENCODER_PATCHES_PER_STEP: usize = 16384;
/// Most top alternatives per token (the sampler's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Penalty history tokens the sampler holds per step, over all rows; a row's history is its
/// most recent output tokens, cut to an equal share when the batch would exceed this.
const PENALTY_HISTORY_CAPACITY: usize = 1 << 20;

/// Buffers that live as long as the engine, so that steps allocate nothing and a captured
/// graph finds its inputs at the addresses it was captured with.
pub(super) struct StepBuffers {
    /// i32: the packed step (HostStep::pack_into), at most `meta_capacity` elements.
    pub meta: DeviceTensor,
    pub staging: PinnedStaging,
    /// Page-locked staging for a step's image pixels (up to `ENCODER_PATCHES_PER_STEP`
    /// patches): an async DMA instead of a pageable copy that holds the host (and the GPU,
    /// which has nothing queued yet) for several milliseconds per page image.
    pub pixels: PinnedStaging,
    pub packed: Vec<i32>,
    /// f32 [max_num_seqs, vocab]: one logits row per sequence at most.
    pub logits: DeviceTensor,
    /// i32 [3 * max_num_seqs]: a step's tokens, log-probs (f32 bits) and statuses, each
    /// `rows` long and back to back, so that one copy brings them home.
    pub sampled: DeviceTensor,
    /// [max_num_seqs * 20] ids and log-probs of the top alternatives.
    pub top_ids: DeviceTensor,
    pub top_logprobs: DeviceTensor,
}

/// A launched step whose tokens are on their way to the host: what `collect` and the
/// engine's update need.
pub(super) struct InFlight {
    pub plan: SchedulerOutput,
    /// `(logits row, sequence)` of each sampled row, in row order.
    pub rows: Vec<(usize, u64)>,
    /// Top alternatives copied per row (the most any row asked for).
    pub top_n: usize,
    /// The captured graph's batch size, for a graph step.
    pub graph_batch: Option<usize>,
    /// The readback slot the results land in (`None`: nothing sampled).
    readback: Option<usize>,
    /// The next step may be planned ahead of this one's tokens: no row uses penalties.
    pub can_plan_ahead: bool,
    /// Timing events at the step's first command and after its last, and after its vision
    /// pass when it has one.
    started: CudaEvent,
    vision_ended: Option<CudaEvent>,
    pub ended: CudaEvent,
}

/// The sampler's launch for a step: its rows, and where their results will land.
struct QueuedSampling {
    /// `(logits row, sequence)` of each sampled row, in row order.
    rows: Vec<(usize, u64)>,
    /// Top alternatives copied per row (the most any row asked for).
    top_n: usize,
    /// No row uses penalties, so the next step may be planned ahead of these tokens.
    can_plan_ahead: bool,
    /// The readback slot (`None`: nothing sampled).
    readback: Option<usize>,
}

/// A step's sampled rows on the host, indexed by logits row.
pub(super) struct Sampled {
    pub tokens: Vec<i32>,
    pub logprobs: Vec<f32>,
    pub statuses: Vec<i32>,
    /// `[rows, top_n]` ids and log-probs of the top alternatives.
    pub top_ids: Vec<i32>,
    pub top_logprobs: Vec<f32>,
}

pub struct ModelRunner {
    pub(super) gpu: Gpu,
    pub(super) model: Box<dyn ModelFamily>,
    pub(super) gemm: Gemm,
    ws: Workspace,
    pub(super) cache: KvCache,
    sampler: Sampler,
    sampling_class: SamplingClass,
    /// Time the GEMM candidates while warming up the decode graphs (`OCRVL_GEMM_AUTOTUNE`).
    pub(super) gemm_autotune: bool,
    embed_error: DeviceTensor,
    pub(super) buffers: StepBuffers,
    /// Blocks of the cache sequences may own (the scheduler's pool).
    num_kv_blocks: usize,
    /// Block-table width of graph steps: max_model_len / BLOCK_SIZE, rounded up.
    pub(super) table_width: usize,
    /// The cache block no sequence owns (index `num_kv_blocks`): padding rows of a graph
    /// step write their K/V there and attend to it.
    pub(super) scratch_block: i32,
    /// Captured decode graphs by padded batch size (empty with --enforce-eager).
    pub(super) graphs: BTreeMap<usize, DecodeGraph>,
    pub(super) timings: StepTimings,
    /// Two landing slots for sampled tokens: a step's results arrive in one while the step
    /// planned ahead of it already has its copy queued into the other.
    readback: [PinnedReadback; 2],
    next_readback: usize,
    /// The end event of the step finished last, while steps follow each other.
    last_step_end: Option<CudaEvent>,
    pub(super) images_encoded: u64,
    pub(super) image_patches_encoded: u64,
}

impl ModelRunner {
    /// Loads the model in `dir` with the attention kernels `FLAGS_flash_attn_version` gives,
    /// allocates the step buffers, and sizes the KV cache from `--gpu-memory-utilization`.
    pub fn new(gpu: Gpu, dir: &Path, engine: &EngineConfig, env: EnvFlags) -> Result<ModelRunner> {
        let cfg = FamilyConfig::from_dir(dir)?;
        engine.validate(cfg.max_position_embeddings())?;
        let attention = env.flash_attn_version.resolve(&gpu)?;
        let load_start = Instant::now();
        let model = family::load(
            &gpu,
            dir,
            cfg,
            AttentionKernels::from(attention),
            engine.load_format,
            engine.quantization,
        )?;
        let load_s = load_start.elapsed().as_secs_f64();
        log_attention_choice(&gpu, env, attention);
        let gemm = Gemm::new(&gpu)?;
        let (t, s) = (engine.max_num_batched_tokens, engine.max_num_seqs);
        let ws = Workspace::new(&gpu, model.workspace_bytes(t, s, s, ENCODER_PATCHES_PER_STEP))?;
        model.reserve(&gpu, t)?;
        let mut sampler = Sampler::new(&gpu, s, PENALTY_HISTORY_CAPACITY)?;
        sampler.set_greedy_kernel(env.greedy_kernel);
        let embed_error = DeviceTensor::zeros(&gpu, DType::I32, &[1])?;
        let table_width = engine.max_model_len.div_ceil(BLOCK_SIZE);
        // Packed step bound: ids, 3 position rows, slots and image rows per token; a table row,
        // a length and a few offsets per sequence (HostStep::pack_into).
        let meta_capacity = 6 * t + s * table_width + 4 * s + 1;
        let vocab = model.vocab_size();
        let buffers = StepBuffers {
            meta: DeviceTensor::zeros(&gpu, DType::I32, &[meta_capacity])?,
            staging: PinnedStaging::new(&gpu, meta_capacity * 4)?,
            // Every image has at least 4 patches; each part is placed at a 256-byte offset.
            pixels: PinnedStaging::new(
                &gpu,
                ENCODER_PATCHES_PER_STEP * (model.patch_values() * 2) + ENCODER_PATCHES_PER_STEP / 4 * 256,
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
        let num_kv_blocks = kv_cache_blocks(&gpu, engine, model.kv_bytes_per_block(BLOCK_SIZE))?;
        // One extra block is the padding rows' scratch.
        let cache = model.new_kv_cache(&gpu, num_kv_blocks + 1, BLOCK_SIZE)?;
        // Where start-up goes (ERNIE-4.5-VL-28B-A3B took 83 s in round 8 with no breakdown).
        crate::log::info(format!(
            "ocrvl: weights on the GPU in {load_s:.1} s, buffers and KV cache in {:.1} s",
            load_start.elapsed().as_secs_f64() - load_s
        ));
        Ok(ModelRunner {
            gpu,
            model,
            gemm,
            ws,
            cache,
            sampler,
            sampling_class: env.sampling_class,
            gemm_autotune: env.gemm_autotune,
            embed_error,
            buffers,
            num_kv_blocks,
            table_width,
            scratch_block: num_kv_blocks as i32,
            graphs: BTreeMap::new(),
            timings: StepTimings::default(),
            readback,
            next_readback: 0,
            last_step_end: None,
            images_encoded: 0,
            image_patches_encoded: 0,
        })
    }

    pub fn model(&self) -> &dyn ModelFamily {
        self.model.as_ref()
    }

    /// KV blocks the scheduler may hand out (the cache holds one more, the scratch block).
    pub fn pool_blocks(&self) -> usize {
        self.num_kv_blocks
    }

    /// Encodes the plan's images, packs and uploads its inputs, and queues the forward, the
    /// sampler and the copy of the sampled tokens to the host, without waiting for any.
    /// `t0`: when planning the step began (its prepare time).
    pub(super) fn launch(
        &mut self,
        plan: SchedulerOutput,
        t0: Instant,
        requests: &mut Requests,
        scheduler: &Scheduler,
    ) -> Result<InFlight> {
        let ctx = self.gpu.context().clone();
        let event = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).op("cuEventCreate");
        let (started, ended) = (event()?, event()?);
        // The step's first command: the vision pass when there is one, else the upload.
        if !plan.encoder_inputs.is_empty() {
            started.record(self.gpu.stream()).op("cuEventRecord")?;
        }
        self.encode_images(&plan, requests)?;
        let vision_ended = match plan.encoder_inputs.is_empty() {
            true => None,
            false => {
                let e = event()?;
                e.record(self.gpu.stream()).op("cuEventRecord")?;
                Some(e)
            }
        };
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
            Some(batch) => (
                self.pack_graph_step(&plan, requests, batch)?,
                None,
                (0..n).map(Some).collect(),
            ),
            None => {
                let (host, features) = self.build_step(&plan, requests, scheduler)?;
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
        self.run_forward(&layout, features.as_ref(), graph_batch)?;
        let sampling = self.sample(&plan, &logits_index, requests, scheduler)?;
        ended.record(self.gpu.stream()).op("cuEventRecord")?;
        let tm = &mut self.timings;
        tm.prepare_s += (t1 - t0).as_secs_f64();
        tm.launch_s += t1.elapsed().as_secs_f64();
        Ok(InFlight {
            rows: sampling.rows,
            plan,
            top_n: sampling.top_n,
            graph_batch,
            readback: sampling.readback,
            can_plan_ahead: sampling.can_plan_ahead,
            started,
            vision_ended,
            ended,
        })
    }

    /// Packs a decode-only step into the layout of the graph captured for `batch` rows.
    fn pack_graph_step(&mut self, plan: &SchedulerOutput, requests: &Requests, batch: usize) -> Result<StepLayout> {
        let rows: Vec<DecodeRow> = plan
            .scheduled
            .iter()
            .enumerate()
            .map(|(i, e)| DecodeRow {
                id: plan.input_ids[i],
                positions: requests[&e.seq_id].position(e.start),
                start: e.start,
                block_table: &e.block_table,
            })
            .collect();
        let g = &self.graphs[&batch];
        g.layout
            .pack_decode(&mut self.buffers.packed, &rows, BLOCK_SIZE, self.scratch_block)?;
        Ok(g.layout.clone())
    }

    /// Queues the step's forward over the uploaded inputs: the captured graph's replay, or an
    /// eager forward writing the first `layout.logits_len()` logits rows.
    fn run_forward(
        &mut self,
        layout: &StepLayout,
        features: Option<&DeviceTensor>,
        graph_batch: Option<usize>,
    ) -> Result<()> {
        if let Some(batch) = graph_batch {
            self.graphs[&batch].graph.launch().op("cuGraphLaunch")?;
            self.timings.graph_steps += 1;
            return Ok(());
        }
        self.eager_forward(layout, features, layout.logits_len(), None)
    }

    /// The model's forward over the packed step at the start of `meta` (and `features`, the
    /// image rows), writing `logits_rows` logits rows; `decode_splits` fixes the decode
    /// kernel's split count (a graph's), `None` lets its heuristic choose.
    pub(super) fn eager_forward(
        &mut self,
        layout: &StepLayout,
        features: Option<&DeviceTensor>,
        logits_rows: usize,
        decode_splits: Option<usize>,
    ) -> Result<()> {
        self.ws.reset();
        let mut inputs = layout.inputs(self.buffers.meta.view(), features.map(DeviceTensor::view))?;
        inputs.decode_splits = decode_splits;
        let mut logits = self.buffers.logits.view_mut().narrow0(0, logits_rows)?;
        self.model.forward(
            &self.gpu,
            &mut self.gemm,
            &self.ws,
            &mut self.cache,
            &inputs,
            &mut self.embed_error.view_mut(),
            &mut logits,
        )
    }

    /// Samples the rows that need logits and queues the copy of the results home. The step
    /// position seeds each row's random stream, so a request's tokens do not depend on the
    /// batch it ran in. Real rows come first in the logits (padding rows of a graph step
    /// follow them).
    fn sample(
        &mut self,
        plan: &SchedulerOutput,
        logits_index: &[Option<usize>],
        requests: &Requests,
        scheduler: &Scheduler,
    ) -> Result<QueuedSampling> {
        let mut rows_info: Vec<(usize, u64, SamplingParams)> = plan
            .scheduled
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                logits_index[i].map(|row| {
                    let mut p = requests[&e.seq_id].sampling;
                    p.step = (e.start + e.num_tokens) as u64;
                    (row, e.seq_id, p)
                })
            })
            .collect();
        rows_info.sort_by_key(|r| r.0);
        let rows = rows_info.len();
        let top_n = rows_info.iter().map(|r| requests[&r.1].top_logprobs).max().unwrap_or(0);
        // A step planned ahead samples before this step's tokens are home, so its rows
        // could not see them in a penalty history.
        let can_plan_ahead = rows_info.iter().all(|r| !r.2.has_penalties());
        let mut readback = None;
        if rows > 0 {
            if rows_info.iter().enumerate().any(|(i, r)| r.0 != i) {
                return Err(Error::invalid("step", "logits rows are not the first rows of the step"));
            }
            let ordered: Vec<SamplingParams> = rows_info.iter().map(|r| r.2).collect();
            let histories = penalty_histories(&rows_info, scheduler);
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
                if requests[id].poisoned {
                    b.logits.view_mut().narrow0(*row, 1)?.fill_bytes(&self.gpu, 0xFF)?;
                }
            }
            let mut logits = b.logits.view_mut().narrow0(0, rows)?;
            self.sampler
                .sample(&self.gpu, self.sampling_class, &mut logits, &mut out)?;
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
        Ok(QueuedSampling {
            rows: rows_info.iter().map(|r| (r.0, r.1)).collect(),
            top_n,
            can_plan_ahead,
            readback,
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

    /// Waits for a launched step's sampled rows and checks the step's prompt tokens (the
    /// embedding gather reports an out-of-range id).
    pub(super) fn collect(&mut self, step: &InFlight) -> Result<Sampled> {
        let t2 = Instant::now();
        let rows = step.rows.len();
        let mut s = Sampled {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            statuses: Vec::new(),
            top_ids: Vec::new(),
            top_logprobs: Vec::new(),
        };
        match step.readback {
            Some(slot) => {
                let parts = self.readback[slot].wait()?;
                let sampled: &[i32] = bytemuck::cast_slice(parts[0]);
                s.tokens.extend_from_slice(&sampled[..rows]);
                s.logprobs
                    .extend(sampled[rows..2 * rows].iter().map(|&b| f32::from_bits(b as u32)));
                s.statuses.extend_from_slice(&sampled[2 * rows..3 * rows]);
                if step.top_n > 0 {
                    s.top_ids.extend_from_slice(bytemuck::cast_slice::<u8, i32>(parts[1]));
                    s.top_logprobs
                        .extend_from_slice(bytemuck::cast_slice::<u8, f32>(parts[2]));
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
        self.add_gpu_time(step)?;
        // A graph step's inputs are tokens the sampler drew, always in range; other steps
        // carry prompt tokens, which the gather checks on the device.
        if step.graph_batch.is_none() {
            let vocab = self.model.vocab_size();
            take_embedding_error(&self.gpu, &mut self.embed_error.view_mut(), vocab)?;
        }
        Ok(s)
    }

    /// Adds the collected step's GPU time to its parts in the timings: its vision pass, then the
    /// rest as a mixed or a decode-only step.
    fn add_gpu_time(&mut self, step: &InFlight) -> Result<()> {
        // The end event follows the readback the caller waited for; this returns at once.
        step.ended.synchronize().op("cuEventSynchronize")?;
        let secs = |a: &CudaEvent, b: &CudaEvent| -> Result<f64> {
            Ok(f64::from(a.elapsed_ms(b).op("cuEventElapsedTime")?.max(0.0)) / 1e3)
        };
        let forward_from = match &step.vision_ended {
            Some(v) => {
                self.timings.vision_gpu_s += secs(&step.started, v)?;
                v
            }
            None => &step.started,
        };
        let forward = secs(forward_from, &step.ended)?;
        if step.plan.scheduled.iter().all(|e| e.is_decode) {
            self.timings.decode_gpu_s += forward;
        } else {
            self.timings.mixed_gpu_s += forward;
            self.timings.mixed_steps += 1;
        }
        Ok(())
    }

    /// Clears the device's out-of-range-token flag. A step planned ahead takes a failed row's
    /// token (-1) as input and its gather flags it; graph steps carry no other ids, so once
    /// that step is collected the flag is stale, and left set it would fail the next eager
    /// step for everyone.
    pub fn clear_embedding_error(&mut self) -> Result<()> {
        self.embed_error.view_mut().fill_bytes(&self.gpu, 0)
    }

    /// Records the end of a collected step: the GPU's idle time before the next step counts
    /// from it while `more` work follows (idle time with no work to do is not a gap).
    pub(super) fn end_step(&mut self, ended: CudaEvent, more: bool) {
        if more {
            self.last_step_end = Some(ended);
        }
    }

    /// Encodes, in one packed vision pass, every image the plan needs that is not encoded.
    fn encode_images(&mut self, plan: &SchedulerOutput, requests: &mut Requests) -> Result<()> {
        let todo: Vec<(u64, usize)> = plan
            .encoder_inputs
            .iter()
            .filter(|(id, img)| requests.get(id).is_some_and(|r| !r.features.contains_key(img)))
            .copied()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let grids: Vec<ImageGrid> = todo
            .iter()
            .map(|(id, img)| {
                let (h, w) = requests[id].images[*img].grid;
                ImageGrid { t: 1, h, w }
            })
            .collect();
        // Each image's pixels go straight from the request into the staging buffer and on
        // to its rows of the packed pixel tensor.
        let (gpu, staging, reqs) = (&self.gpu, &mut self.buffers.pixels, &*requests);
        let mut write_pixels = |dst: &mut crate::runtime::TensorViewMut<'_>| -> Result<()> {
            let mut parts = Vec::with_capacity(todo.len());
            let mut rest = dst.reborrow();
            for (id, img) in &todo {
                let im = &reqs[id].images[*img];
                let (head, tail) = rest.split_at0(im.grid.0 * im.grid.1)?;
                parts.push((bytemuck::cast_slice::<bf16, u8>(&im.pixels), head));
                rest = tail;
            }
            staging.upload_parts(gpu, &mut parts)
        };
        self.ws.reset();
        let out = self
            .model
            .encode_images(gpu, &mut self.gemm, &self.ws, &grids, &mut write_pixels)?;
        self.images_encoded += todo.len() as u64;
        self.image_patches_encoded += grids.iter().map(ImageGrid::num_patches).sum::<usize>() as u64;
        let out = Rc::new(out);
        let mut row = 0;
        for ((id, img), &grid) in todo.iter().zip(&grids) {
            if let Some(r) = requests.get_mut(id) {
                r.features.insert(*img, (out.clone(), row));
            }
            row += self.model.image_tokens(grid);
        }
        Ok(())
    }

    /// The step's chunks (positions, image slots) and its image features in slot order.
    fn build_step(
        &self,
        plan: &SchedulerOutput,
        requests: &Requests,
        scheduler: &Scheduler,
    ) -> Result<(HostStep, Option<DeviceTensor>)> {
        let mut chunks = Vec::with_capacity(plan.scheduled.len());
        // (packed tensor, first row, rows) pieces to concatenate, in slot order.
        let mut pieces: Vec<(Rc<DeviceTensor>, usize, usize)> = Vec::new();
        let mut offset = 0;
        for e in &plan.scheduled {
            let seq = scheduler
                .sequence(e.seq_id)
                .ok_or_else(|| Error::invalid("step", "a scheduled sequence vanished"))?;
            let r = &requests[&e.seq_id];
            let (a, b) = (e.start, e.start + e.num_tokens);
            let mut positions: [Vec<i32>; 3] = Default::default();
            for t in a..b {
                let p = r.position(t);
                for (dst, v) in positions.iter_mut().zip(p) {
                    dst.push(v);
                }
            }
            let mut image_slots = Vec::new();
            for (i, span) in seq.images().iter().enumerate() {
                let (lo, hi) = (span.start.max(a), span.end().min(b));
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
        let hidden = self.model.feature_width();
        let mut feats = DeviceTensor::alloc(&self.gpu, DType::BF16, &[total, hidden])?;
        let mut row = 0;
        for (t, first, n) in &pieces {
            let src = t.view().narrow0(*first, *n)?;
            feats.view_mut().narrow0(row, *n)?.copy_from_view(&self.gpu, &src)?;
            row += n;
        }
        Ok((host, Some(feats)))
    }
}

/// Each row's recent output tokens when any row has penalties, else nothing (the sampler
/// then skips them). Rows share `PENALTY_HISTORY_CAPACITY` equally when over it.
fn penalty_histories(rows: &[(usize, u64, SamplingParams)], scheduler: &Scheduler) -> Vec<Vec<i32>> {
    if !rows.iter().any(|r| r.2.has_penalties()) {
        return Vec::new();
    }
    let share = PENALTY_HISTORY_CAPACITY / rows.len().max(1);
    rows.iter()
        .map(|r| {
            let out = scheduler.sequence(r.1).map_or(&[][..], |s| s.output_token_ids());
            out[out.len().saturating_sub(share)..]
                .iter()
                .map(|&t| t as i32)
                .collect()
        })
        .collect()
}

/// KV blocks sequences may own: what the utilisation target leaves after everything
/// allocated so far, with 512 MiB kept back for the step's transient buffers (image features,
/// encoder outputs) and the graphs, less the scratch block; or `--num-gpu-blocks-override`.
/// Errors when one sequence of `--max-model-len` would not fit.
fn kv_cache_blocks(gpu: &Gpu, engine: &EngineConfig, per_block: usize) -> Result<usize> {
    let (free, total) = gpu.memory_info()?;
    let used = total - free;
    let budget = (total as f64 * engine.gpu_memory_utilization) as usize;
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
    Ok(num_blocks)
}

/// Says once per process which attention kernels run and why (FLAGS_flash_attn_version).
fn log_attention_choice(gpu: &Gpu, env: EnvFlags, chosen: AttentionVersion) {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| {
        let why = env.flash_attn_version.explain(gpu);
        crate::log::info(format!("ocrvl: attention {chosen:?} ({why})"));
    });
}
