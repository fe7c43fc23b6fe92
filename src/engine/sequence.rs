//! One request as the scheduler sees it: its tokens (prompt, then generated output), the
//! image placeholder spans in the prompt, when to stop, and how far its KV cache is filled.
//!
//! The KV state is one number, `num_computed_tokens`: tokens `0..num_computed_tokens` have
//! their KV written in the blocks of `block_table` (the token at position `p` lives in block
//! `block_table[p / block_size]` at offset `p % block_size`). Prefill, chunked prefill,
//! decode and recompute after preemption are all "compute the tokens from
//! `num_computed_tokens` to the end of the known tokens", as in vLLM v1; a sequence decodes
//! once exactly one token (the last sampled one) is left.

use super::prefix_hash::{self, BlockHash};
use super::stop_tokens::StopTokenSet;

/// The placeholder tokens of one image in the prompt: `len` tokens from `start`, one per
/// merged vision token. Their embeddings come from the vision encoder, not the token table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSpan {
    /// Index of the first placeholder token in the prompt.
    pub start: usize,
    /// Number of placeholder tokens.
    pub len: usize,
    /// Hash of the image's content, given by the caller; it must cover everything that
    /// determines the image's features and grid (see `prefix_hash`). 128 bits: a collision
    /// would serve one image's KV for another.
    pub content_hash: u128,
    /// Patches the vision encoder processes for this image (before the 2x2 merge), the unit
    /// of the scheduler's per-step encoder budget.
    pub num_patches: usize,
}

impl ImageSpan {
    /// One past the last placeholder token.
    pub fn end(&self) -> usize {
        self.start + self.len
    }

    /// Whether the span shares a token with `start..end`.
    pub fn intersects(&self, start: usize, end: usize) -> bool {
        self.start < end && start < self.end()
    }
}

/// When a sequence stops generating (vLLM's `SamplingParams` stop fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopConditions {
    /// Most tokens to generate (at least 1).
    pub max_tokens: usize,
    /// The model's end-of-sequence token, if any.
    pub eos_token_id: Option<u32>,
    /// More tokens that end the sequence; they apply even with `ignore_eos`. The sequence
    /// checks them through a hashed set built once ([`StopTokenSet`]), not this list.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past `eos_token_id` (benchmarks fix output lengths this way).
    pub ignore_eos: bool,
}

impl StopConditions {
    /// Exactly `max_tokens` tokens, no stop tokens.
    pub fn max_tokens(max_tokens: usize) -> Self {
        StopConditions {
            max_tokens,
            eos_token_id: None,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Generated the end-of-sequence token or a stop token (which is kept in the output).
    Stop,
    /// Reached `max_tokens` or `max_model_len`.
    Length,
    /// Aborted by the caller.
    Aborted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceStatus {
    /// Queued: holds no blocks and has no computed tokens (new, or preempted).
    Waiting,
    /// Admitted: holds the blocks of its computed (and scheduled) tokens.
    Running,
    Finished(FinishReason),
}

#[derive(Clone, Debug)]
pub struct Sequence {
    id: u64,
    /// Prompt tokens followed by generated tokens: one vector, so that a block's tokens are a
    /// plain slice whether they are prompt or output (both are recomputed after preemption).
    token_ids: Vec<u32>,
    num_prompt_tokens: usize,
    images: Vec<ImageSpan>,
    stop: StopConditions,
    /// `stop.stop_token_ids` as a hashed set: the per-token check costs the same for any
    /// list length (it runs on the engine thread, for every sequence of every step).
    stop_ids: StopTokenSet,
    pub(super) status: SequenceStatus,
    pub(super) num_computed_tokens: usize,
    pub(super) block_table: Vec<u32>,
    /// Admission order, set by the scheduler; preemption keeps it, so a preempted sequence
    /// resumes ahead of later arrivals.
    pub(super) arrival: u64,
    /// Prefix-cache hashes of this sequence's first full blocks (a prefix of the chain;
    /// extended lazily). Content-determined, so kept across preemption.
    pub(super) block_hashes: Vec<BlockHash>,
    /// Per image: its encoder output is held by the engine (encoded in an earlier or the
    /// current step, and its span not yet fully computed).
    pub(super) image_encoded: Vec<bool>,
    /// Decode tokens scheduled by `Scheduler::schedule_ahead` whose step `update` has not
    /// taken yet (0 or 1 between steps): their blocks are allocated, their KV is being
    /// written, their input token is still on the GPU.
    pub(super) num_scheduled_ahead: usize,
}

impl Sequence {
    /// A new waiting sequence. The scheduler validates it at admission (`Scheduler::add`).
    pub fn new(id: u64, prompt_token_ids: Vec<u32>, images: Vec<ImageSpan>, stop: StopConditions) -> Self {
        let num_images = images.len();
        Sequence {
            id,
            num_prompt_tokens: prompt_token_ids.len(),
            token_ids: prompt_token_ids,
            images,
            stop_ids: StopTokenSet::from_ids(stop.stop_token_ids.iter().copied()),
            stop,
            status: SequenceStatus::Waiting,
            num_computed_tokens: 0,
            block_table: Vec::new(),
            arrival: 0,
            block_hashes: Vec::new(),
            image_encoded: vec![false; num_images],
            num_scheduled_ahead: 0,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Prompt then output tokens.
    pub fn token_ids(&self) -> &[u32] {
        &self.token_ids
    }

    pub fn prompt_token_ids(&self) -> &[u32] {
        &self.token_ids[..self.num_prompt_tokens]
    }

    pub fn output_token_ids(&self) -> &[u32] {
        &self.token_ids[self.num_prompt_tokens..]
    }

    pub fn num_prompt_tokens(&self) -> usize {
        self.num_prompt_tokens
    }

    pub fn num_output_tokens(&self) -> usize {
        self.token_ids.len() - self.num_prompt_tokens
    }

    /// Prompt plus output tokens: every token whose id is known.
    pub fn total_len(&self) -> usize {
        self.token_ids.len()
    }

    pub fn images(&self) -> &[ImageSpan] {
        &self.images
    }

    pub fn stop_conditions(&self) -> &StopConditions {
        &self.stop
    }

    pub fn status(&self) -> SequenceStatus {
        self.status
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        match self.status {
            SequenceStatus::Finished(reason) => Some(reason),
            _ => None,
        }
    }

    /// Tokens whose KV is in the cache.
    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }

    /// Known tokens whose KV is not yet in the cache; the last one yields the next token's
    /// logits. 1 for a decoding sequence.
    pub fn num_tokens_to_compute(&self) -> usize {
        self.total_len() - self.num_computed_tokens
    }

    /// Whether the whole prompt's KV is in the cache (from then on, steps are decodes).
    pub fn is_prompt_computed(&self) -> bool {
        self.num_computed_tokens >= self.num_prompt_tokens
    }

    pub fn block_table(&self) -> &[u32] {
        &self.block_table
    }

    pub fn arrival(&self) -> u64 {
        self.arrival
    }

    /// Images whose encoder output the engine holds for this sequence.
    pub fn encoded_images(&self) -> impl Iterator<Item = usize> + '_ {
        self.image_encoded
            .iter()
            .enumerate()
            .filter(|(_, &e)| e)
            .map(|(i, _)| i)
    }

    /// Extends `block_hashes` to this sequence's first `num_blocks` full blocks.
    pub(super) fn extend_block_hashes(&mut self, block_size: usize, num_blocks: usize) {
        prefix_hash::extend_block_hashes(
            &mut self.block_hashes,
            &self.token_ids,
            &self.images,
            block_size,
            num_blocks,
        );
    }

    /// Forgets the encoder outputs of images whose spans are fully computed (of every image
    /// with `all`, when the sequence releases its KV), listing them in `freed` as
    /// `(seq_id, image_index)`.
    pub(super) fn release_encoder_outputs(&mut self, all: bool, freed: &mut Vec<(u64, usize)>) {
        for (index, (span, held)) in self.images.iter().zip(&mut self.image_encoded).enumerate() {
            if *held && (all || span.end() <= self.num_computed_tokens) {
                *held = false;
                freed.push((self.id, index));
            }
        }
    }

    /// Appends a sampled token and says whether the sequence is now finished, and why. EOS
    /// and stop tokens are checked before the length limits: a stop token generated as the
    /// last allowed token still reports `Stop`, as in vLLM.
    pub(super) fn append_token(&mut self, token: u32, max_model_len: usize) -> Option<FinishReason> {
        self.token_ids.push(token);
        let stop = &self.stop;
        if (!stop.ignore_eos && stop.eos_token_id == Some(token)) || self.stop_ids.contains(&token) {
            return Some(FinishReason::Stop);
        }
        if self.reached_length(0, max_model_len) {
            return Some(FinishReason::Length);
        }
        None
    }

    /// Whether the sequence is at `max_tokens` or `max_model_len` with `extra` more tokens
    /// appended (a finish by length, known before the tokens themselves).
    pub(super) fn reached_length(&self, extra: usize, max_model_len: usize) -> bool {
        self.num_output_tokens() + extra >= self.stop.max_tokens || self.total_len() + extra >= max_model_len
    }
}
