//! ERNIE-4.5-VL (docs/ERNIE_4_5_VL_SPEC.md), the second model family: so far its CPU side
//! only. [`names`] is the hub checkpoint's tensor inventory, [`checkpoint`] checks a directory
//! against it, [`synthetic`] writes random-weight checkpoints with the real names and shapes.
//! The forward (MoE routing, grouped expert GEMMs, the ViT and resampler, the 3D rotary) is
//! not written yet; `family::load` says so for an ERNIE directory.

pub mod checkpoint;
pub mod names;
pub mod synthetic;
