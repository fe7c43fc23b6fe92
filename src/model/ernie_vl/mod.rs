//! ERNIE-4.5-VL (docs/ERNIE_4_5_VL_SPEC.md), the second model family, in parts:
//! - [`names`]: the hub checkpoint's tensor inventory; [`checkpoint`] checks a directory
//!   against it; [`synthetic`] writes random-weight checkpoints with the real names and shapes;
//! - [`token_pools`]: which prompt tokens go to the text or the vision experts (host side;
//!   `kernels::moe::token_pool` does the same per step on the device);
//! - [`moe_weights`]: an MoE layer's tensors in the MoE kernels' layout; [`moe_block`] runs one
//!   MoE block on the GPU;
//! - [`vision`]: the ViT (d80 attention, quick_gelu) and the resampler, weights and forward;
//! - [`text_weights`] and [`decoder`]: the language model's weights and its step over the
//!   paged KV cache (3D interleaved rope, dense layer 0, MoE layers);
//! - [`family`]: the `ModelFamily` implementation that joins them to the engine (prompt
//!   layout, image encoding, the MoE scratch).
//!
//! Image preprocessing is the shared processor's ERNIE layout (`preprocess::ernie_layout`).
//! On the GPU host the whole forward matches transformers (docs/ERNIE_4_5_VL_SPEC.md §13.1).

pub mod checkpoint;
pub mod decoder;
pub mod family;
pub mod moe_block;
pub mod moe_weights;
pub mod names;
pub mod synthetic;
pub mod text_weights;
pub mod token_pools;
pub mod vision;
