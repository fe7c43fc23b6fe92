//! The serving engine's CPU side: which sequences run each step and where their KV lives.
//!
//! - [`block_pool`]: the KV-cache blocks, their reference counts, and the prefix cache.
//! - [`prefix_hash`]: the content hash of a full block (chained over the prefix, images
//!   included), the prefix cache's key.
//! - [`sequence`]: one request's tokens, image spans, stop conditions and KV state.
//! - [`stop_tokens`]: a request's stop token ids as a hashed set (constant-cost check).
//! - [`scheduler`]: the per-step plan (continuous batching, chunked prefill, preempt-by-
//!   recompute, prefix-cache reuse, the encoder budget) and the bookkeeping after a step.
//!
//! Nothing here touches the GPU: the scheduler's output (token ids, slot mapping, block
//! tables, encoder inputs) is what the model runner turns into device buffers.

pub mod block_pool;
pub mod prefix_hash;
pub mod runner;
pub mod scheduler;
pub mod sequence;
pub mod stop_tokens;

pub use block_pool::BlockPool;
pub use prefix_hash::BlockHash;
pub use runner::{Engine, EngineImage, EngineRequest, EngineStats, StepOutput};
pub use scheduler::{
    AdmissionError, ScheduledSeq, Scheduler, SchedulerConfig, SchedulerOutput, SchedulerStats, UpdateOutput,
};
pub use sequence::{FinishReason, ImageSpan, Sequence, SequenceStatus, StopConditions};
pub use stop_tokens::StopTokenSet;
