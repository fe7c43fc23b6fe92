//! The engine: requests in, tokens out. One [`Engine::step`] is schedule → encode the images
//! the step needs (one packed vision pass) → one decoder forward over decodes and prefill
//! chunks → sample → update the scheduler → the step's outputs.
//!
//! Not here yet (the engine issue lists them): CUDA-graph capture of decode steps, overlap of
//! the next step's CPU work with the GPU, and detokenisation and streaming to clients (the C
//! ABI and the server sit on top of `step`).

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use half::bf16;

use super::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
use super::sequence::{FinishReason, ImageSpan, Sequence, StopConditions};
use crate::config::{EngineConfig, EnvFlags, ModelConfig};
use crate::error::{Error, Result};
use crate::kernels::embedding::take_embedding_error;
use crate::kernels::sampling::{Sampler, SamplingOutputs, SamplingParams, STATUS_OK};
use crate::model::gpu_weights::ModelWeights;
use crate::model::step::{HostStep, SeqChunk};
use crate::model::text::{self, KvCache};
use crate::model::vision::{self, VisionBatch, VisionBatchHost};
use crate::model::weights::Checkpoint;
use crate::runtime::{DType, DeviceTensor, Gemm, Gpu, Workspace};

/// Tokens per KV block (kernels/include/kv_cache.h says why 64).
pub const BLOCK_SIZE: usize = 64;
/// Most image patches encoded in one step: a few full pages.
pub const ENCODER_PATCHES_PER_STEP: usize = 16384;

/// One image, preprocessed: bf16 pixel values `[patches, 3·14·14]` and the patch grid.
#[derive(Clone, Debug)]
pub struct EngineImage {
    pub pixels: Vec<bf16>,
    pub grid: (usize, usize),
    /// Identifies the content for the prefix cache (e.g. a hash of the image bytes).
    pub content_hash: u64,
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
    /// Projected image tokens of each image once encoded: (packed output, first row).
    features: HashMap<usize, (Rc<DeviceTensor>, usize)>,
}

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
}

impl Engine {
    /// Loads the model in `dir` and sizes the KV cache from `--gpu-memory-utilization`.
    pub fn new(gpu: Gpu, dir: &Path, engine: &EngineConfig, env: EnvFlags) -> Result<Engine> {
        let cfg = ModelConfig::from_dir(dir)?;
        engine.validate(&cfg)?;
        let ckpt = Checkpoint::open(dir)?;
        let weights = ModelWeights::upload(&gpu, &cfg, &ckpt.validate(&cfg)?)?;
        let gemm = Gemm::new(&gpu)?;
        let (t, s) = (engine.max_num_batched_tokens, engine.max_num_seqs);
        let ws_bytes =
            text::workspace_bytes(&cfg, t, s, s).max(vision::workspace_bytes(&cfg, ENCODER_PATCHES_PER_STEP));
        let ws = Workspace::new(&gpu, ws_bytes)?;
        let sampler = Sampler::new(&gpu, s, 1)?;
        let embed_error = DeviceTensor::zeros(&gpu, DType::I32, &[1])?;
        // The KV cache takes what the utilisation target leaves after everything above, with
        // 512 MiB kept back for the step's transient buffers (logits, metadata, encoder outputs).
        let (free, total) = gpu.memory_info()?;
        let used = total - free;
        let budget = (total as f64 * engine.gpu_memory_utilization) as usize;
        let per_block = KvCache::bytes_per_block(&cfg, BLOCK_SIZE);
        let num_blocks = budget.saturating_sub(used + (512 << 20)) / per_block;
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
        let cache = KvCache::new(&gpu, &cfg, num_blocks, BLOCK_SIZE)?;
        let scheduler = Scheduler::new(SchedulerConfig::from_engine(
            engine,
            BLOCK_SIZE,
            num_blocks,
            ENCODER_PATCHES_PER_STEP,
        ))?;
        Ok(Engine {
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
        })
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
                features: HashMap::new(),
            },
        );
        Ok(id)
    }

    /// Aborts a request in any state; its blocks return to the pool.
    pub fn abort(&mut self, id: u64) -> bool {
        self.requests.remove(&id);
        self.scheduler.abort(id).is_some()
    }

    /// Runs one engine step; returns the tokens it produced.
    pub fn step(&mut self) -> Result<Vec<StepOutput>> {
        let plan = self.scheduler.schedule();
        for (id, img) in &plan.freed_encoder_outputs {
            if let Some(r) = self.requests.get_mut(id) {
                r.features.remove(img);
            }
        }
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        self.encode_images(&plan)?;
        let (host, features) = self.build_step(&plan)?;
        self.ws.reset();
        let step = host.upload(&self.gpu)?;
        let inputs = step.inputs(features.as_ref().map(DeviceTensor::view))?;
        let rows = host.logits_rows.len();
        let mut logits = DeviceTensor::alloc(&self.gpu, DType::F32, &[rows, self.cfg.text.vocab_size])?;
        text::forward(
            &self.gpu,
            &mut self.gemm,
            &self.ws,
            &self.cfg,
            &self.weights,
            &mut self.cache,
            &inputs,
            &mut self.embed_error.view_mut(),
            &mut logits.view_mut(),
        )?;
        take_embedding_error(&self.gpu, &mut self.embed_error.view_mut(), self.cfg.text.vocab_size)?;

        // Sample the rows that need logits; the step position seeds each row's random stream,
        // so a request's tokens do not depend on the batch it ran in.
        let mut rows_info: Vec<(usize, u64, SamplingParams)> = plan
            .scheduled
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                host.logits_index[i].map(|row| {
                    let mut p = self.requests[&e.seq_id].sampling;
                    p.step = (e.start + e.num_tokens) as u64;
                    (row, e.seq_id, p)
                })
            })
            .collect();
        rows_info.sort_by_key(|r| r.0);
        let mut sampled = Vec::new();
        let mut outputs = Vec::new();
        if rows > 0 {
            let ordered: Vec<SamplingParams> = rows_info.iter().map(|r| r.2).collect();
            self.sampler.set_batch(&self.gpu, &ordered, &[])?;
            let mut token = DeviceTensor::alloc(&self.gpu, DType::I32, &[rows])?;
            let mut logprob = DeviceTensor::alloc(&self.gpu, DType::F32, &[rows])?;
            let mut status = DeviceTensor::alloc(&self.gpu, DType::I32, &[rows])?;
            let mut out = SamplingOutputs {
                token: token.view_mut(),
                logprob: logprob.view_mut(),
                status: status.view_mut(),
                top: None,
            };
            self.sampler
                .sample(&self.gpu, self.env.sampling_class, &mut logits.view_mut(), &mut out)?;
            let tokens = token.to_host::<i32>(&self.gpu)?;
            let logprobs = logprob.to_host::<f32>(&self.gpu)?;
            let statuses = status.to_host::<i32>(&self.gpu)?;
            for &(row, id, _) in &rows_info {
                if statuses[row] != STATUS_OK {
                    return Err(Error::invalid(
                        "sampling",
                        format!(
                            "request {id}: sampler status {} (non-finite logits or bad parameters)",
                            statuses[row]
                        ),
                    ));
                }
                sampled.push((id, tokens[row] as u32));
                outputs.push(StepOutput {
                    request_id: id,
                    token: tokens[row] as u32,
                    logprob: logprobs[row],
                    top: Vec::new(),
                    finished: None,
                });
            }
        }
        let update = self.scheduler.update(&plan, &sampled);
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
        Ok(outputs)
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
        let mut grids = Vec::new();
        let mut pixels: Vec<bf16> = Vec::new();
        for (id, img) in &todo {
            let im = &self.requests[id].images[*img];
            grids.push(im.grid);
            pixels.extend_from_slice(&im.pixels);
        }
        let batch = VisionBatch::upload(&self.gpu, VisionBatchHost::new(&grids)?)?;
        let p = batch.host.num_patches();
        let dpix = DeviceTensor::from_host(&self.gpu, &[p, self.cfg.vision.patch_dim()], &pixels)?;
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
