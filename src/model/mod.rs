//! Model-specific knowledge: tensor names and shapes, host-side weight loading and synthetic
//! checkpoints. Model quirks live here, never inside kernel dispatch. [`family`] is what the
//! engine sees of a model; [`paddleocr_vl`] implements it.

pub mod ernie_vl;
pub mod family;
pub mod gpu_weights;
pub mod names;
pub mod paddleocr_vl;
pub mod prompt_logits;
pub mod quantize;
pub mod random_weights;
pub mod step;
pub mod synthetic;
pub mod synthetic_tokenizer;
pub mod text;
pub mod vision;
pub mod weights;
