//! What goes in and out of the engine: a request ([`EngineRequest`], its images
//! [`EngineImage`]), one generated token ([`StepOutput`]), and the engine's gauges
//! ([`EngineStats`], [`StepTimings`]); plus the engine's own state of a request
//! (`RequestState`) beside the scheduler's [`super::Sequence`].

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use half::bf16;

use super::sequence::FinishReason;
use crate::kernels::sampling::SamplingParams;
use crate::model::family::PromptLayout;
use crate::runtime::DeviceTensor;

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
    /// The GPU's time in each part of the steps (CUDA events around them): vision passes,
    /// then the forward and sampling of steps that carry prefill chunks (mixed steps), and of
    /// decode-only steps (graph or eager).
    pub vision_gpu_s: f64,
    pub mixed_gpu_s: f64,
    pub decode_gpu_s: f64,
    /// Steps that carried prefill chunks.
    pub mixed_steps: u64,
}

/// The engine's side of an admitted request (the scheduler's side is its `Sequence`): what
/// the model runner needs to build its steps.
pub(crate) struct RequestState {
    pub images: Vec<EngineImage>,
    /// The prompt's rotary positions and image spans, as the model laid them out.
    pub layout: PromptLayout,
    pub sampling: SamplingParams,
    pub top_logprobs: usize,
    /// Image features of each image once encoded: (the step's packed encoder output, first
    /// row), until the scheduler frees them.
    pub features: HashMap<usize, (Rc<DeviceTensor>, usize)>,
    /// Tests only ([`super::Engine::poison_logits_for_test`]): the request's logits rows are
    /// set to NaN before sampling, a stand-in for a model fault.
    pub poisoned: bool,
}

impl RequestState {
    /// The (T, H, W) rotary position of the token at sequence index `index`.
    pub fn position(&self, index: usize) -> [i32; 3] {
        self.layout.position(index)
    }
}

/// The engine's requests by id.
pub(crate) type Requests = HashMap<u64, RequestState>;
