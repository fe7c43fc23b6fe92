//! ERNIE-4.5-VL (docs/ERNIE_4_5_VL_SPEC.md), the second model family. [`names`] is the hub
//! checkpoint's tensor inventory, [`checkpoint`] checks a directory against it, [`synthetic`]
//! writes random-weight checkpoints with the real names and shapes, [`image`] preprocesses
//! images (FastDeploy's resize, merge-block patch order), [`moe_weights`] puts an MoE
//! layer's tensors in the MoE kernels' layout, [`moe_block`] runs one MoE block on the GPU. The rest of the forward (the ViT and resampler, the 3D rotary, the layer
//! loop) is not written yet; `family::load` says so for an ERNIE directory.

pub mod checkpoint;
pub mod image;
pub mod moe_block;
pub mod moe_weights;
pub mod names;
pub mod synthetic;
