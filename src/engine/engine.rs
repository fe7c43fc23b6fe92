//! The engine: requests in, tokens out. One [`Engine::step`] is schedule → execute →
//! update: the [`Scheduler`] plans which sequences compute which tokens, the
//! [`ModelRunner`] runs the plan on the GPU (images encoded, one forward, tokens sampled), and
//! the sampled tokens update the scheduler and become the step's outputs.
//!
//! Async scheduling: after launching a graph decode step, the engine plans the next decode
//! step and launches it too before reading the first one's tokens (their ids are copied on
//! the GPU into the next step's inputs), so the GPU does not idle while the host reads
//! tokens, updates the scheduler and packs the next step. Detokenisation and streaming run
//! on the service's side (src/service/), not here.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use super::model_runner::{InFlight, ModelRunner, BLOCK_SIZE, ENCODER_PATCHES_PER_STEP, MAX_TOP_LOGPROBS};
use super::request::{EngineRequest, EngineStats, RequestState, Requests, StepOutput, StepTimings};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::sequence::{ImageSpan, Sequence, StopConditions};
use crate::config::{EngineConfig, EnvFlags, ModelConfig};
use crate::error::{Error, Result};
use crate::kernels::sampling::STATUS_OK;
use crate::preprocess::image::ImageGrid;
use crate::runtime::Gpu;

pub struct Engine {
    runner: ModelRunner,
    scheduler: Scheduler,
    requests: Requests,
    next_id: u64,
    async_scheduling: bool,
    /// The step planned ahead and launched, whose tokens the next `step` collects.
    in_flight: Option<InFlight>,
    /// Requests ended by a fault of their own (a logits row the sampler refused), with why,
    /// until [`Engine::take_failed`] collects them.
    failed: Vec<(u64, String)>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // A step planned ahead may still be writing into buffers about to be freed.
        if self.in_flight.is_some() {
            let _ = self.runner.gpu.synchronize();
        }
    }
}

impl Engine {
    /// Loads the model in `dir`, sizes the KV cache from `--gpu-memory-utilization`, and
    /// captures the decode graphs (unless `--enforce-eager`).
    pub fn new(gpu: Gpu, dir: &Path, engine: &EngineConfig, env: EnvFlags) -> Result<Engine> {
        let mut runner = ModelRunner::new(gpu, dir, engine, env)?;
        let scheduler = Scheduler::new(SchedulerConfig::from_engine(
            engine,
            BLOCK_SIZE,
            runner.pool_blocks(),
            ENCODER_PATCHES_PER_STEP,
        ))?;
        if !engine.enforce_eager {
            runner.capture_decode_graphs(engine.max_num_seqs)?;
        }
        Ok(Engine {
            runner,
            scheduler,
            requests: HashMap::new(),
            next_id: 1,
            async_scheduling: engine.async_scheduling,
            in_flight: None,
            failed: Vec::new(),
        })
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
        let model = self.runner.model();
        let grids: Vec<ImageGrid> = req
            .images
            .iter()
            .map(|im| ImageGrid {
                t: 1,
                h: im.grid.0,
                w: im.grid.1,
            })
            .collect();
        let layout = model
            .layout_prompt(&req.prompt_ids, &grids)
            .map_err(|e| Error::invalid(OP, e.to_string()))?;
        // Image spans: each image's run of placeholders, in order, as the layout found them.
        let mut spans = Vec::with_capacity(req.images.len());
        for (im, span) in req.images.iter().zip(layout.image_spans()) {
            let num_patches = im.grid.0 * im.grid.1;
            if im.pixels.len() != num_patches * model.patch_values() {
                return Err(Error::invalid(
                    OP,
                    format!("image pixels do not match its {:?} grid", im.grid),
                ));
            }
            spans.push(ImageSpan {
                start: span.start,
                len: span.len(),
                content_hash: im.content_hash,
                num_patches,
            });
        }
        let id = self.next_id;
        let stop = StopConditions {
            max_tokens: req.max_tokens,
            eos_token_id: model.eos_token_id(),
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
        let state = RequestState {
            images: req.images,
            layout,
            sampling,
            top_logprobs: req.top_logprobs,
            features: HashMap::new(),
            poisoned: false,
        };
        self.requests.insert(id, state);
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
            None => match self.schedule_and_execute()? {
                Some(step) => step,
                None => return Ok(Vec::new()),
            },
        };
        if self.async_scheduling && current.graph_batch.is_some() && current.can_plan_ahead {
            let t0 = Instant::now();
            if let Some(plan) = self.scheduler.schedule_ahead(&current.plan) {
                let ahead = self.runner.launch(plan, t0, &mut self.requests, &self.scheduler)?;
                self.in_flight = Some(ahead);
                self.runner.timings.ahead_steps += 1;
            }
        }
        self.update(current)
    }

    /// Plans a step and launches it; `None` when nothing is queued or running.
    fn schedule_and_execute(&mut self) -> Result<Option<InFlight>> {
        let t0 = Instant::now();
        let plan = self.scheduler.schedule();
        self.drop_features(&plan.freed_encoder_outputs);
        if plan.is_empty() {
            return Ok(None);
        }
        self.runner
            .launch(plan, t0, &mut self.requests, &self.scheduler)
            .map(Some)
    }

    /// Waits for a launched step's tokens, checks them, updates the scheduler, and returns
    /// the step's outputs. Rows of sequences that are gone (aborted since the launch, or
    /// finished by the step before one planned ahead) are dropped.
    fn update(&mut self, step: InFlight) -> Result<Vec<StepOutput>> {
        let s = self.runner.collect(&step)?;
        let t3 = Instant::now();
        let top_n = step.top_n;
        let mut outputs = Vec::with_capacity(step.rows.len());
        let mut sampled = Vec::with_capacity(step.rows.len());
        let failed_before = self.failed.len();
        for &(row, id) in &step.rows {
            let Some(request) = self.requests.get(&id) else {
                continue;
            };
            if s.statuses[row] != STATUS_OK {
                // This request's fault alone: it ends here, the rest of the step goes on.
                self.failed.push((
                    id,
                    format!(
                        "request {id}: sampler status {} (non-finite logits or bad parameters)",
                        s.statuses[row]
                    ),
                ));
                continue;
            }
            let top = (0..request.top_logprobs)
                .map(|j| (s.top_ids[row * top_n + j] as u32, s.top_logprobs[row * top_n + j]))
                .collect();
            sampled.push((id, s.tokens[row] as u32));
            outputs.push(StepOutput {
                request_id: id,
                token: s.tokens[row] as u32,
                logprob: s.logprobs[row],
                top,
                finished: None,
            });
        }
        if self.failed.len() > failed_before {
            for &(id, _) in &self.failed[failed_before..] {
                self.requests.remove(&id);
                self.scheduler.abort(id);
            }
            if self.in_flight.is_some() {
                self.runner.clear_embedding_error()?;
            }
        }
        let update = self.scheduler.update(&step.plan, &sampled);
        self.drop_features(&update.freed_encoder_outputs);
        for seq in &update.finished {
            self.requests.remove(&seq.id());
            if let Some(o) = outputs.iter_mut().rev().find(|o| o.request_id == seq.id()) {
                o.finished = seq.finish_reason();
            }
        }
        let tm = &mut self.runner.timings;
        tm.steps += 1;
        tm.update_s += t3.elapsed().as_secs_f64();
        let more = self.in_flight.is_some() || self.scheduler.has_unfinished();
        self.runner.end_step(step.ended, more);
        Ok(outputs)
    }

    /// Drops the image features the scheduler no longer needs, `(request, image)`.
    fn drop_features(&mut self, freed: &[(u64, usize)]) {
        for (id, img) in freed {
            if let Some(r) = self.requests.get_mut(id) {
                r.features.remove(img);
            }
        }
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
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
            images_encoded: self.runner.images_encoded,
            image_patches_encoded: self.runner.image_patches_encoded,
        }
    }

    /// Host-time breakdown of the steps so far.
    pub fn step_timings(&self) -> StepTimings {
        self.runner.timings.clone()
    }

    /// Batch sizes with a captured decode graph.
    pub fn graph_batch_sizes(&self) -> Vec<usize> {
        self.runner.graph_batch_sizes()
    }

    /// The model's PaddleOCR-VL configuration; None for another family.
    pub fn config(&self) -> Option<&ModelConfig> {
        self.runner.model().config()
    }

    pub fn gpu(&self) -> &Gpu {
        &self.runner.gpu
    }

    pub fn num_kv_blocks(&self) -> usize {
        self.runner.cache.num_blocks
    }
}
