//! Model-specific knowledge: tensor names and shapes, host-side weight loading and synthetic
//! checkpoints. Model quirks live here, never inside kernel dispatch.

pub mod device_weights;
pub mod gpu_weights;
pub mod names;
pub mod prompt_logits;
pub mod step;
pub mod synthetic;
pub mod synthetic_tokenizer;
pub mod text;
pub mod vision;
pub mod weights;
