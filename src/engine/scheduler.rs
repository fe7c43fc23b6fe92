//! The scheduler: which sequences run in the next step, and how many tokens each computes.
//! It keeps the policy; the blocks themselves (prefix-cache hits, allocation, registration,
//! freeing) are the [`KvCacheManager`]'s.
//!
//! vLLM v1's model, kept nano-vllm small. There are no separate prefill and decode phases:
//! each running sequence computes the known tokens it has not computed yet (its
//! `num_tokens_to_compute`), and a step has one token budget (`max_num_batched_tokens`)
//! shared by all. A decode is the case of one token left; a long prompt is prefilled in
//! chunks over several steps (chunked prefill).
//!
//! One step, in [`Scheduler::schedule`]:
//! 1. Running sequences, in arrival order: a decode takes 1 token, an unfinished prefill a
//!    chunk of `min(remaining, budget left)`. The blocks for the scheduled tokens are
//!    allocated; when the pool runs dry, the most recently arrived running sequence is
//!    preempted (all its blocks freed, its computed count reset, back to the front of the
//!    waiting queue: preempt-by-recompute, which keeps its generated tokens and recomputes
//!    them with the prompt), until the allocation fits or the sequence preempted itself.
//! 2. Unless something was preempted this step (the pool is too tight to grow), waiting
//!    sequences are admitted first come first served while the budget, `max_num_seqs` and
//!    the free blocks allow. With prefix caching, an admitted sequence first reuses the
//!    cached blocks of its longest cached prefix of full blocks and starts computing after
//!    them; at least one token is always left to compute, so the step yields its logits.
//!    Admission stops at the first sequence that does not fit, so that a long prompt is not
//!    starved by short ones behind it.
//!
//! Because preemption always takes the latest arrival and admission is first come first
//! served, every running sequence arrived before every waiting one, and the oldest request
//! always makes progress (no livelock: admission rejects a sequence the whole pool could not
//! hold).
//!
//! Images: a chunk may split an image's placeholder span. The image's encoder output must
//! then exist when the chunk runs, so the step lists `(seq_id, image_index)` in
//! `encoder_inputs` for every image whose span meets a scheduled chunk and that is not yet
//! encoded; the engine encodes them in that step and keeps the features until the scheduler
//! reports the image in a `freed_encoder_outputs` list (its span fully computed, or its
//! sequence preempted or finished). Encoding is limited to `max_encoder_patches_per_step`
//! patches a step; a chunk that would need an image beyond that budget stops before the
//! image's span.
//!
//! Lifecycle of the engine's calls: `add` any time; then per step `schedule`, run the model
//! on its output, `update` with the sampled tokens; `abort` any time (a sequence aborted
//! between `schedule` and `update` is skipped by `update`).
//!
//! Scheduling ahead (async scheduling): while a decode step runs on the GPU, the engine may
//! plan and launch the next one before the step's tokens reach the host, so that the GPU
//! never waits for the CPU. [`Scheduler::schedule_ahead`] plans that step from the running
//! one alone: the same sequences, one position further, each input token taken on the GPU
//! from the running step's sampled row (`ScheduledSeq::prev_row`). It leaves out what it can
//! tell will finish (the running step's token reaches `max_tokens` or `max_model_len`),
//! and declines (returns `None`, and the engine waits for the tokens and calls `schedule`)
//! when the step is not all decodes, when a waiting sequence could be admitted, or when a
//! block is missing and only preemption would free one. A sequence that the running step
//! finishes by EOS or a stop token still has its row in the step ahead: the row's KV goes
//! to the sequence's own (now freed) blocks before any later step can reuse them, and
//! `update` skips it as it skips an aborted one. Then `update(running)`, then
//! `update(ahead)`, in launch order.

use std::collections::{HashMap, VecDeque};

use super::block_pool::BlockPool;
use super::kv_cache_manager::{kv_slot, KvCacheManager};
use super::sequence::{FinishReason, ImageSpan, Sequence, SequenceStatus};
use crate::config::EngineConfig;
use crate::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Longest sequence, prompt plus output, admitted.
    pub max_model_len: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one step, decodes and prefill chunks together.
    pub max_num_batched_tokens: usize,
    pub enable_prefix_caching: bool,
    /// Tokens per KV block (a power of two; the GPU kernels accept 16..=256).
    pub block_size: usize,
    /// Blocks in the KV cache.
    pub num_blocks: usize,
    /// Most image patches the vision encoder processes in one step. An image with more
    /// patches than this is rejected at admission.
    pub max_encoder_patches_per_step: usize,
}

impl SchedulerConfig {
    /// The scheduler's share of the engine flags, plus what the engine decides at start-up:
    /// the block size, how many blocks fit in memory, and the encoder's per-step budget.
    pub fn from_engine(
        engine: &EngineConfig,
        block_size: usize,
        num_blocks: usize,
        max_encoder_patches_per_step: usize,
    ) -> Self {
        SchedulerConfig {
            max_model_len: engine.max_model_len,
            max_num_seqs: engine.max_num_seqs,
            max_num_batched_tokens: engine.max_num_batched_tokens,
            enable_prefix_caching: engine.enable_prefix_caching,
            block_size,
            num_blocks,
            max_encoder_patches_per_step,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::invalid("scheduler config", msg));
        if !self.block_size.is_power_of_two() {
            return bad(format!("block_size {} is not a power of two", self.block_size));
        }
        if self.num_blocks == 0 {
            return bad(
                "the KV cache has no blocks; lower --max-model-len or --max-num-seqs, or raise \
                        --gpu-memory-utilization"
                    .into(),
            );
        }
        // Slots (block * block_size + offset) travel to the GPU as i32.
        if self.num_blocks.saturating_mul(self.block_size) > i32::MAX as usize + 1 {
            return bad(format!(
                "{} blocks of {} tokens exceed the 2^31 slots an i32 slot mapping can address",
                self.num_blocks, self.block_size
            ));
        }
        for (name, v) in [
            ("max_model_len", self.max_model_len),
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Why a sequence was refused at admission; the message names the numbers to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    #[error("prompt of {prompt_len} tokens plus max_tokens {max_tokens} exceeds --max-model-len {max_model_len}")]
    TooLong {
        prompt_len: usize,
        max_tokens: usize,
        max_model_len: usize,
    },
    #[error(
        "prompt of {prompt_len} tokens plus max_tokens {max_tokens} needs {needed} KV blocks of {block_size} \
         tokens, but the whole cache holds {num_blocks}; lower max_tokens or --max-model-len, or raise \
         --gpu-memory-utilization"
    )]
    ExceedsCache {
        prompt_len: usize,
        max_tokens: usize,
        needed: usize,
        block_size: usize,
        num_blocks: usize,
    },
    #[error("image {index}: placeholder span {start}..{end} {reason} (prompt of {prompt_len} tokens)")]
    BadImageSpan {
        index: usize,
        start: usize,
        end: usize,
        prompt_len: usize,
        reason: &'static str,
    },
    #[error("image {index} has {num_patches} patches, more than the encoder's {budget} patches per step")]
    ImageOverEncoderBudget {
        index: usize,
        num_patches: usize,
        budget: usize,
    },
    #[error("a sequence with id {0} is already queued or running")]
    DuplicateId(u64),
}

/// Counters since the scheduler was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub num_preemptions: u64,
    /// Tokens of admitted sequences looked up in the prefix cache.
    pub prefix_cache_queried_tokens: u64,
    /// Of those, tokens whose KV came from cached blocks.
    pub prefix_cache_hit_tokens: u64,
}

/// One sequence's share of a step: tokens `start..start + num_tokens` (positions in the
/// sequence), whose KV goes to the slots of `block_table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub seq_id: u64,
    /// Tokens already computed; the first position this step computes.
    pub start: usize,
    pub num_tokens: usize,
    /// One token, the last known one, with the prompt computed: the paged decode kernel
    /// runs it. Every decode needs logits.
    pub is_decode: bool,
    /// The chunk reaches the end of the known tokens: the last token's logits are sampled.
    pub needs_logits: bool,
    /// The sequence's blocks, covering at least `start + num_tokens` tokens.
    pub block_table: Vec<u32>,
    /// Planned by `schedule_ahead`: the input token is the one the previous step sampled in
    /// its logits row `prev_row` (and `SchedulerOutput::input_ids` holds 0 for it).
    pub prev_row: Option<usize>,
}

/// Everything the GPU side needs for one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// Decodes first (`num_decodes` of them), then prefill chunks; each group in arrival
    /// order. `input_ids` and `slot_mapping` follow this order.
    pub scheduled: Vec<ScheduledSeq>,
    pub num_decodes: usize,
    /// The token ids of all scheduled tokens, concatenated (placeholder ids for image
    /// tokens, whose embeddings come from the encoder outputs).
    pub input_ids: Vec<u32>,
    /// The KV slot of every scheduled token: `block_table[p / block_size] * block_size + p %
    /// block_size` for position `p`.
    pub slot_mapping: Vec<i32>,
    /// `(seq_id, image_index)`: images to run through the vision encoder this step, because
    /// a scheduled chunk meets their placeholder span. Keep each output until it is freed.
    pub encoder_inputs: Vec<(u64, usize)>,
    /// `(seq_id, image_index)`: encoder outputs to drop, of sequences preempted this step.
    /// Never also in this step's `encoder_inputs`.
    pub freed_encoder_outputs: Vec<(u64, usize)>,
    /// Sequences preempted this step, now waiting to be recomputed.
    pub preempted: Vec<u64>,
}

impl SchedulerOutput {
    /// Scheduled tokens, the batch's length.
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }

    /// For each entry that needs logits, in order, the index of its last token in the
    /// batch: the rows to take from the final hidden states for the LM head.
    pub fn logits_token_indices(&self) -> Vec<usize> {
        let mut end = 0;
        let mut rows = Vec::new();
        for e in &self.scheduled {
            end += e.num_tokens;
            if e.needs_logits {
                rows.push(end - 1);
            }
        }
        rows
    }
}

/// What `update` changed.
#[derive(Debug, Default)]
pub struct UpdateOutput {
    /// Sequences that finished this step, their blocks already back in the pool.
    pub finished: Vec<Sequence>,
    /// `(seq_id, image_index)`: encoder outputs to drop, their spans fully computed or
    /// their sequences finished.
    pub freed_encoder_outputs: Vec<(u64, usize)>,
}

pub struct Scheduler {
    config: SchedulerConfig,
    /// The blocks: prefix-cache hits, allocation, registration, freeing.
    kv: KvCacheManager,
    /// Every queued or running sequence, by id.
    seqs: HashMap<u64, Sequence>,
    /// Arrival order; preempted sequences are pushed back at the front.
    waiting: VecDeque<u64>,
    /// Arrival order (see the module doc for why it stays sorted).
    running: Vec<u64>,
    next_arrival: u64,
    stats: SchedulerStats,
}

/// How much of one sequence a step computes: tokens `start..start + num_tokens`, and the
/// images it must encode for them, `patches` patches in all.
struct ChunkPlan {
    start: usize,
    num_tokens: usize,
    encode: Vec<usize>,
    patches: usize,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Scheduler {
            kv: KvCacheManager::new(config.num_blocks, config.block_size, config.enable_prefix_caching),
            config,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_arrival: 0,
            stats: SchedulerStats::default(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn pool(&self) -> &BlockPool {
        self.kv.pool()
    }

    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Whether any sequence is queued or running.
    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// A queued or running sequence.
    pub fn sequence(&self, id: u64) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// Queues a sequence after checking that it can ever run: a non-empty prompt, at least one
    /// token to generate, prompt plus `max_tokens` within `max_model_len` and within the whole
    /// KV cache, image spans inside the prompt, ordered, and each within the encoder budget.
    pub fn add(&mut self, mut seq: Sequence) -> Result<(), AdmissionError> {
        let prompt_len = seq.num_prompt_tokens();
        let max_tokens = seq.stop_conditions().max_tokens;
        if prompt_len == 0 {
            return Err(AdmissionError::EmptyPrompt);
        }
        if max_tokens == 0 {
            return Err(AdmissionError::ZeroMaxTokens);
        }
        let max_model_len = self.config.max_model_len;
        if prompt_len.saturating_add(max_tokens) > max_model_len {
            return Err(AdmissionError::TooLong {
                prompt_len,
                max_tokens,
                max_model_len,
            });
        }
        // The last generated token is sampled but never fed back, so its KV is never needed.
        let needed = (prompt_len + max_tokens - 1).div_ceil(self.config.block_size);
        if needed > self.config.num_blocks {
            return Err(AdmissionError::ExceedsCache {
                prompt_len,
                max_tokens,
                needed,
                block_size: self.config.block_size,
                num_blocks: self.config.num_blocks,
            });
        }
        check_images(seq.images(), prompt_len, self.config.max_encoder_patches_per_step)?;
        if self.seqs.contains_key(&seq.id()) {
            return Err(AdmissionError::DuplicateId(seq.id()));
        }
        // Sequences come from `Sequence::new`, or back from `update` or `abort` with their
        // blocks and encoder records already released; either way only the status may differ.
        debug_assert!(seq.num_computed_tokens == 0 && seq.block_table.is_empty());
        seq.status = SequenceStatus::Waiting;
        seq.arrival = self.next_arrival;
        self.next_arrival += 1;
        self.waiting.push_back(seq.id());
        self.seqs.insert(seq.id(), seq);
        Ok(())
    }

    /// Plans the next step (see the module doc). The output is empty only when no sequence
    /// is queued or running: admission guarantees that the oldest sequence fits the whole
    /// pool and that each of its images fits the encoder budget, so it always gets a chunk.
    pub fn schedule(&mut self) -> SchedulerOutput {
        debug_assert!(
            self.running.iter().all(|id| self.seqs[id].num_scheduled_ahead == 0),
            "Scheduler::schedule with a step planned ahead still to update"
        );
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        let mut encoder_budget = self.config.max_encoder_patches_per_step;
        let mut chunks: Vec<(u64, ChunkPlan)> = Vec::new();

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let start = seq.num_computed_tokens;
            let plan = plan_chunk(seq, start, seq.num_tokens_to_compute().min(budget), encoder_budget);
            if plan.num_tokens == 0 {
                i += 1; // its next image is over this step's encoder budget
                continue;
            }
            let needed = self.kv.blocks_needed(seq, start + plan.num_tokens);
            let mut preempted_self = false;
            while self.kv.num_free() < needed {
                let victim = self.running.pop().expect("the sequence being scheduled is running");
                self.preempt(victim, &mut out);
                if victim == id {
                    preempted_self = true;
                    break;
                }
            }
            if preempted_self {
                break; // it was the last running sequence
            }
            let seq = self.seqs.get_mut(&id).expect("running sequences are stored");
            self.kv.allocate_slots(seq, start + plan.num_tokens);
            encoder_budget -= plan.patches;
            budget -= plan.num_tokens;
            mark_encoded(seq, &plan, &mut out);
            chunks.push((id, plan));
            i += 1;
        }

        if out.preempted.is_empty() {
            while budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(&id) = self.waiting.front() else { break };
                let Some(plan) = self.admit(id, budget, encoder_budget) else {
                    break;
                };
                let seq = self.seqs.get_mut(&id).expect("waiting sequences are stored");
                encoder_budget -= plan.patches;
                budget -= plan.num_tokens;
                mark_encoded(seq, &plan, &mut out);
                self.waiting.pop_front();
                self.running.push(id);
                chunks.push((id, plan));
            }
        }

        self.fill_output(&mut out, &chunks);
        out
    }

    /// Plans the decode step that follows `running` (the latest step planned, launched, and
    /// not yet updated) before its tokens are known; see the module doc. `None` changes
    /// nothing. Rows keep `running`'s order; each entry's `prev_row` is its logits row there.
    pub fn schedule_ahead(&mut self, running: &SchedulerOutput) -> Option<SchedulerOutput> {
        if running.scheduled.is_empty() || running.scheduled.iter().any(|e| !e.needs_logits) {
            return None; // a prefill chunk mid-prompt: the next chunk is `schedule`'s to plan
        }
        let max_model_len = self.config.max_model_len;
        // (seq_id, position, prev_row, needs a block) of every sequence that continues.
        let mut rows = Vec::with_capacity(running.scheduled.len());
        for (prev_row, e) in running.scheduled.iter().enumerate() {
            let Some(seq) = self.seqs.get(&e.seq_id) else {
                continue; // aborted since
            };
            // `running` is not updated yet: its token is the sequence's next one.
            debug_assert_eq!(seq.num_computed_tokens, e.start);
            if seq.reached_length(1, max_model_len) {
                continue; // that token is its last
            }
            let position = e.start + e.num_tokens;
            let new_block = self.kv.blocks_needed(seq, position + 1) > 0;
            rows.push((e.seq_id, position, prev_row, new_block));
        }
        let new_blocks = rows.iter().filter(|r| r.3).count();
        if rows.is_empty() || new_blocks > self.kv.num_free() {
            return None; // nothing continues, or preemption needed: `schedule` decides
        }
        // The oldest waiting sequence would be admitted by `schedule` (a free seat, and its
        // first chunk fits the budget and the blocks left): leave the step to `schedule`.
        if let Some(&head) = self.waiting.front() {
            if self.running.len() < self.config.max_num_seqs {
                let budget = self.config.max_num_batched_tokens.saturating_sub(self.running.len());
                let encoder_budget = self.config.max_encoder_patches_per_step;
                let fits = self
                    .plan_admission(head, budget, encoder_budget)
                    .is_some_and(|(_, _, _, takes)| takes + new_blocks <= self.kv.num_free());
                if fits {
                    return None;
                }
            }
        }
        let bs = self.config.block_size;
        let mut out = SchedulerOutput {
            num_decodes: rows.len(),
            ..SchedulerOutput::default()
        };
        for (id, position, prev_row, new_block) in rows {
            let seq = self.seqs.get_mut(&id).expect("looked up above");
            if new_block {
                self.kv.allocate_slots(seq, position + 1);
            }
            seq.num_scheduled_ahead += 1;
            out.input_ids.push(0);
            out.slot_mapping.push(kv_slot(&seq.block_table, position, bs));
            out.scheduled.push(ScheduledSeq {
                seq_id: id,
                start: position,
                num_tokens: 1,
                is_decode: true,
                needs_logits: true,
                block_table: seq.block_table.clone(),
                prev_row: Some(prev_row),
            });
        }
        Some(out)
    }

    /// Takes the step's results: advances every scheduled sequence by its chunk, appends the
    /// sampled token of each that needed logits (`sampled` holds `(seq_id, token)` for
    /// exactly those), registers newly full blocks in the prefix cache, and finishes
    /// sequences on EOS, a stop token, `max_tokens` or `max_model_len`, freeing their blocks.
    ///
    /// Panics if `output` is not the latest `schedule` result or a needed token is missing:
    /// both are engine bugs that would corrupt the KV bookkeeping.
    pub fn update(&mut self, output: &SchedulerOutput, sampled: &[(u64, u32)]) -> UpdateOutput {
        let sampled: HashMap<u64, u32> = sampled.iter().copied().collect();
        let mut result = UpdateOutput::default();
        for entry in &output.scheduled {
            // Missing: aborted after `schedule`.
            let Some(seq) = self.seqs.get_mut(&entry.seq_id) else {
                continue;
            };
            assert!(
                seq.status == SequenceStatus::Running && seq.num_computed_tokens == entry.start,
                "Scheduler::update: sequence {} is not where the output left it (update called twice?)",
                entry.seq_id
            );
            if entry.prev_row.is_some() {
                seq.num_scheduled_ahead -= 1;
            }
            let old = seq.num_computed_tokens;
            let new = old + entry.num_tokens;
            seq.num_computed_tokens = new;
            self.kv.register_full_blocks(seq, old, new);
            seq.release_encoder_outputs(false, &mut result.freed_encoder_outputs);
            let token = sampled.get(&entry.seq_id).copied();
            if !entry.needs_logits {
                assert!(
                    token.is_none(),
                    "Scheduler::update: sequence {} sampled mid-prefill",
                    entry.seq_id
                );
                continue;
            }
            let token = token.unwrap_or_else(|| {
                panic!(
                    "Scheduler::update: no sampled token for sequence {}, which needed logits",
                    entry.seq_id
                )
            });
            if let Some(reason) = seq.append_token(token, self.config.max_model_len) {
                let mut seq = self.seqs.remove(&entry.seq_id).expect("looked up above");
                self.running.retain(|&r| r != entry.seq_id);
                self.release(&mut seq, &mut result.freed_encoder_outputs);
                seq.status = SequenceStatus::Finished(reason);
                result.finished.push(seq);
            }
        }
        result
    }

    /// Ends a sequence in any state, freeing all its blocks. Returns it (status
    /// `Finished(Aborted)`), or `None` if no queued or running sequence has this id. The
    /// engine drops any encoder outputs it holds for the sequence; they are not listed in a
    /// later `freed_encoder_outputs`.
    pub fn abort(&mut self, id: u64) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&id)?;
        match seq.status {
            SequenceStatus::Waiting => self.waiting.retain(|&w| w != id),
            _ => self.running.retain(|&r| r != id),
        }
        self.release(&mut seq, &mut Vec::new());
        seq.status = SequenceStatus::Finished(FinishReason::Aborted);
        Some(seq)
    }

    /// Checks the scheduler's and the pool's invariants with a full walk. Call between steps
    /// (after `update`); for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.pool().check_invariants()?;
        let bs = self.config.block_size;
        if self.running.len() > self.config.max_num_seqs {
            return Err(format!(
                "{} running > max_num_seqs {}",
                self.running.len(),
                self.config.max_num_seqs
            ));
        }
        if self.seqs.len() != self.running.len() + self.waiting.len() {
            return Err(format!(
                "{} stored sequences, {} running + {} waiting",
                self.seqs.len(),
                self.running.len(),
                self.waiting.len()
            ));
        }
        let mut last_arrival = None;
        for (id, expect_running) in self
            .running
            .iter()
            .map(|&r| (r, true))
            .chain(self.waiting.iter().map(|&w| (w, false)))
        {
            let seq = self
                .seqs
                .get(&id)
                .ok_or_else(|| format!("queued id {id} has no sequence"))?;
            if last_arrival.is_some_and(|a| a >= seq.arrival) {
                return Err(format!("sequence {id} is out of arrival order"));
            }
            last_arrival = Some(seq.arrival);
            if expect_running {
                if seq.status != SequenceStatus::Running {
                    return Err(format!("running sequence {id} has status {:?}", seq.status));
                }
                let covered = seq.num_computed_tokens + seq.num_scheduled_ahead;
                if seq.block_table.len() != covered.div_ceil(bs) {
                    return Err(format!(
                        "sequence {id}: {} blocks for {} computed tokens and {} scheduled ahead",
                        seq.block_table.len(),
                        seq.num_computed_tokens,
                        seq.num_scheduled_ahead
                    ));
                }
                if seq.num_scheduled_ahead > 1 {
                    return Err(format!("sequence {id}: {} steps ahead", seq.num_scheduled_ahead));
                }
                if seq.num_tokens_to_compute() == 0 {
                    return Err(format!("running sequence {id} has nothing to compute"));
                }
            } else if seq.status != SequenceStatus::Waiting
                || seq.num_computed_tokens != 0
                || !seq.block_table.is_empty()
            {
                return Err(format!("waiting sequence {id} holds KV state"));
            }
            for (index, span) in seq.images().iter().enumerate() {
                let computed = seq.num_computed_tokens;
                if seq.image_encoded[index] && !(span.start < computed && computed < span.end()) {
                    return Err(format!(
                        "sequence {id}: image {index} held but its span is not in progress"
                    ));
                }
            }
        }
        let queued = self.running.iter().chain(&self.waiting);
        self.kv.check_ref_counts(queued.map(|id| &self.seqs[id]))
    }

    /// Plans the first chunk of the waiting sequence `id` and, when it fits, commits it:
    /// takes the prefix-cache hits and allocates the other blocks. `None` leaves everything
    /// untouched.
    fn admit(&mut self, id: u64, budget: usize, encoder_budget: usize) -> Option<ChunkPlan> {
        let (plan, hits, new_blocks, takes) = self.plan_admission(id, budget, encoder_budget)?;
        if self.kv.num_free() < takes {
            return None;
        }
        let seq = &self.seqs[&id];
        let start = hits * self.config.block_size;
        if self.config.enable_prefix_caching {
            self.stats.prefix_cache_queried_tokens += seq.total_len() as u64;
            self.stats.prefix_cache_hit_tokens += start as u64;
        }
        let seq = self.seqs.get_mut(&id).expect("waiting sequences are stored");
        self.kv.allocate_with_prefix(seq, hits, new_blocks);
        seq.num_computed_tokens = start;
        seq.status = SequenceStatus::Running;
        Some(plan)
    }

    /// The first chunk `admit` would give the waiting sequence `id`: the chunk, its
    /// prefix-cache hits (full blocks), the blocks to allocate, and the free blocks it takes
    /// in all (new ones and cached ones on the free list). `None`: no token fits.
    fn plan_admission(
        &mut self,
        id: u64,
        budget: usize,
        encoder_budget: usize,
    ) -> Option<(ChunkPlan, usize, usize, usize)> {
        let seq = self.seqs.get_mut(&id).expect("waiting sequences are stored");
        let hits = self.kv.computed_blocks(seq);
        let seq = &self.seqs[&id];
        let start = hits * self.config.block_size;
        let plan = plan_chunk(seq, start, (seq.total_len() - start).min(budget), encoder_budget);
        if plan.num_tokens == 0 {
            return None;
        }
        let new_blocks = self.kv.blocks_for(start + plan.num_tokens) - hits;
        // Cached blocks that are free leave the free list when reused.
        let reused_free = self.kv.cached_blocks_on_free_list(seq, hits);
        Some((plan, hits, new_blocks, new_blocks + reused_free))
    }

    /// Preempt-by-recompute: frees every block of a running sequence (already removed from
    /// `running`) and queues it at the front of `waiting` with nothing computed. Its
    /// generated tokens stay in `token_ids` and are recomputed with the prompt.
    fn preempt(&mut self, id: u64, out: &mut SchedulerOutput) {
        let mut seq = self.seqs.remove(&id).expect("running sequences are stored");
        self.release(&mut seq, &mut out.freed_encoder_outputs);
        seq.status = SequenceStatus::Waiting;
        self.seqs.insert(id, seq);
        self.waiting.push_front(id);
        out.preempted.push(id);
        self.stats.num_preemptions += 1;
    }

    /// Returns a sequence's blocks to the pool, resets its computed count, and lists its held
    /// encoder outputs in `freed`.
    fn release(&mut self, seq: &mut Sequence, freed: &mut Vec<(u64, usize)>) {
        self.kv.free(seq);
        seq.release_encoder_outputs(true, freed);
        seq.num_computed_tokens = 0;
        seq.num_scheduled_ahead = 0;
    }

    /// Lays out the scheduled chunks as the GPU step consumes them: decodes first, then
    /// prefill chunks, each group in scheduling order. The model runs one varlen batch, and
    /// the attention dispatch runs the paged decode kernel on the leading one-token entries
    /// and the prefill kernel on the rest; that split needs the decodes contiguous at the
    /// front (vLLM v1 reorders its batch the same way).
    fn fill_output(&self, out: &mut SchedulerOutput, chunks: &[(u64, ChunkPlan)]) {
        let bs = self.config.block_size;
        let entries = chunks.iter().map(|(id, plan)| {
            let seq = &self.seqs[id];
            let end = plan.start + plan.num_tokens;
            let needs_logits = end == seq.total_len();
            let is_decode = plan.num_tokens == 1 && needs_logits && plan.start >= seq.num_prompt_tokens();
            (seq, plan, is_decode, needs_logits)
        });
        let (decodes, prefills): (Vec<_>, Vec<_>) = entries.partition(|e| e.2);
        out.num_decodes = decodes.len();
        for (seq, plan, is_decode, needs_logits) in decodes.into_iter().chain(prefills) {
            let end = plan.start + plan.num_tokens;
            out.input_ids.extend_from_slice(&seq.token_ids()[plan.start..end]);
            out.slot_mapping
                .extend((plan.start..end).map(|p| kv_slot(&seq.block_table, p, bs)));
            out.scheduled.push(ScheduledSeq {
                seq_id: seq.id(),
                start: plan.start,
                num_tokens: plan.num_tokens,
                is_decode,
                needs_logits,
                block_table: seq.block_table.clone(),
                prev_row: None,
            });
        }
    }
}

/// Clips the chunk `start..start + max_tokens` of `seq` at the first image it meets that is
/// not encoded and does not fit the encoder budget left; lists the images to encode.
fn plan_chunk(seq: &Sequence, start: usize, max_tokens: usize, encoder_budget: usize) -> ChunkPlan {
    let mut plan = ChunkPlan {
        start,
        num_tokens: max_tokens,
        encode: Vec::new(),
        patches: 0,
    };
    for (index, span) in seq.images().iter().enumerate() {
        if span.start >= start + plan.num_tokens {
            break; // sorted by start: no later image meets the chunk
        }
        if span.end() <= start || seq.image_encoded[index] {
            continue;
        }
        if plan.patches + span.num_patches <= encoder_budget {
            plan.patches += span.num_patches;
            plan.encode.push(index);
        } else {
            plan.num_tokens = span.start.saturating_sub(start);
            break;
        }
    }
    plan
}

/// Records that the step encodes the plan's images and lists them for the engine.
fn mark_encoded(seq: &mut Sequence, plan: &ChunkPlan, out: &mut SchedulerOutput) {
    for &index in &plan.encode {
        seq.image_encoded[index] = true;
        out.encoder_inputs.push((seq.id(), index));
    }
}

/// Image spans must be non-empty, inside the prompt, ordered and disjoint (the prompt
/// builder's `image_spans`), and each image within the encoder's per-step budget, or it
/// could never be scheduled.
fn check_images(images: &[ImageSpan], prompt_len: usize, budget: usize) -> Result<(), AdmissionError> {
    let mut prev_end = 0;
    for (index, span) in images.iter().enumerate() {
        let bad = |reason| AdmissionError::BadImageSpan {
            index,
            start: span.start,
            end: span.end(),
            prompt_len,
            reason,
        };
        if span.len == 0 {
            return Err(bad("is empty"));
        }
        if span.end() > prompt_len {
            return Err(bad("ends past the prompt"));
        }
        if span.start < prev_end {
            return Err(bad("overlaps or precedes the previous image"));
        }
        if span.num_patches > budget {
            return Err(AdmissionError::ImageOverEncoderBudget {
                index,
                num_patches: span.num_patches,
                budget,
            });
        }
        prev_end = span.end();
    }
    Ok(())
}
