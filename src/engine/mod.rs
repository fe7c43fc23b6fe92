//! The serving engine: requests in, tokens out (docs/ARCHITECTURE.md draws the whole path).
//!
//! - [`engine`]: [`Engine`], one step = schedule → execute → update.
//! - [`request`]: what goes in and out (requests, images, step outputs, stats, timings).
//! - [`scheduler`]: the per-step plan (continuous batching, chunked prefill, preempt-by-
//!   recompute, prefix-cache reuse, the encoder budget) and the bookkeeping after a step.
//! - [`kv_cache_manager`]: which blocks hold each sequence's KV (prefix-cache hits,
//!   allocation, registration of full blocks, freeing), over [`block_pool`] (the blocks,
//!   their reference counts, the prefix cache) and [`prefix_hash`] (a full block's chained
//!   content hash, the prefix cache's key).
//! - [`sequence`]: one request's tokens, image spans, stop conditions and KV state, with
//!   [`stop_tokens`] (its stop token ids as a hashed set: a constant-cost check per token).
//! - [`model_runner`]: the GPU side of a step (device buffers, launch, sampling, readback,
//!   KV cache sizing), with [`cuda_graphs`] for decode steps; it sees the model only through
//!   `model::family::ModelFamily`.
//!
//! Only the model runner touches the GPU: the scheduler's output (token ids, slot mapping,
//! block tables, encoder inputs) is what it turns into device buffers.

pub mod block_pool;
pub mod cuda_graphs;
#[allow(clippy::module_inception)]
pub mod engine;
pub mod kv_cache_manager;
pub mod model_runner;
pub mod prefix_hash;
pub mod request;
pub mod scheduler;
pub mod sequence;
pub mod stop_tokens;

pub use block_pool::BlockPool;
pub use cuda_graphs::graph_batch_sizes;
pub use engine::Engine;
pub use kv_cache_manager::KvCacheManager;
pub use model_runner::{ModelRunner, BLOCK_SIZE, ENCODER_PATCHES_PER_STEP};
pub use prefix_hash::BlockHash;
pub use request::{EngineImage, EngineRequest, EngineStats, StepOutput, StepTimings};
pub use scheduler::{
    AdmissionError, ScheduledSeq, Scheduler, SchedulerConfig, SchedulerOutput, SchedulerStats, UpdateOutput,
};
pub use sequence::{FinishReason, ImageSpan, Sequence, SequenceStatus, StopConditions};
pub use stop_tokens::StopTokenSet;
