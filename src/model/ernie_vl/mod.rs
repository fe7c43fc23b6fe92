//! ERNIE-4.5-VL (docs/ERNIE_4_5_VL_SPEC.md), the second model family, in parts:
//! - [`names`]: the hub checkpoint's tensor inventory; [`checkpoint`] checks a directory
//!   against it; [`synthetic`] writes random-weight checkpoints with the real names and shapes;
//! - [`image`]: image preprocessing (FastDeploy's resize, merge-block patch order);
//! - [`token_pools`]: which prompt tokens go to the text or the vision experts;
//! - [`moe_weights`]: an MoE layer's tensors in the MoE kernels' layout; [`moe_block`] runs one
//!   MoE block on the GPU.
//!
//! The 3D rope and the ViT's rope are kernels (`kernels::rope`). The ViT blocks, the resampler
//! and the layer loop are not written yet; `family::load` says so for an ERNIE directory.

pub mod checkpoint;
pub mod decoder;
pub mod image;
pub mod moe_block;
pub mod moe_weights;
pub mod names;
pub mod synthetic;
pub mod text_weights;
pub mod token_pools;
pub mod vision;
