//! ocrvl: an inference engine for PaddleOCR-VL-0.9B with hand-written CUDA kernels.
//!
//! Layers, from the bottom up:
//! - `sys`: bindgen output for the pure-C kernel launchers in `kernels/include/`.
//! - `kernels`: safe wrappers that check shapes and dtypes, then call `sys`.
//! - `runtime`: CUDA context and streams (cudarc, loaded at run time), typed device tensors,
//!   a workspace arena, event timing and the cuBLASLt GEMM.
//! - `config` and `model`: the hub config, engine flags, weights and synthetic checkpoints;
//!   `model::family` is the boundary the engine sees a model through.
//! - `engine`, `service`, then `server`, `ffi` and the binaries; docs/ARCHITECTURE.md draws
//!   the whole path of a request.
//! - `hub`: `--model` as a directory or a hub repo id (caches, download).

pub mod config;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod hub;
pub mod kernels;
pub mod log;
pub mod model;
pub mod postprocess;
pub mod preprocess;
pub mod runtime;
pub mod server;
pub mod service;
pub mod sys;

pub use error::{Error, Result};
