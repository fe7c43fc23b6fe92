//! The GPU-free integration tests, in one test target: each file here was its own target, and
//! every target is a separate executable linking the whole crate (about 50 MB each in a debug
//! build), so one target keeps a clean `cargo test` within a CI machine's disk. The C-ABI
//! build test (tests/ffi_c.rs) and the server test (tests/server.rs) stay separate targets
//! because the GPU bundle ships them as their own executables.

#[path = "../ffi_support/mod.rs"]
mod ffi_support;
#[allow(dead_code)]
#[path = "../common/npy.rs"]
mod npy;
#[allow(dead_code)]
#[path = "../common/ref_model.rs"]
mod ref_model;
#[path = "../common/ref_sampling.rs"]
mod ref_sampling;

mod alloc_count;
mod bench_dry_run;
mod bindings_fresh;
mod block_pool;
mod checkpoint_layouts;
mod command_lines;
mod config;
mod detokenize;
mod ernie_vl_checkpoint;
mod ernie_vl_config;
mod ernie_vl_frontend;
mod ernie_vl_moe_weights;
mod ernie_vl_transformers;
mod ffi_header;
mod fidelity_cpu;
mod hostile_images;
mod hub;
mod hub_server;
mod kv_cache_manager;
mod load_format;
mod model_step_cpu;
mod mrope_positions;
mod ocr_args;
mod paddlex_requests;
mod preprocess;
mod preprocess_fast_paths;
mod prompt;
mod remote_and_local_media;
mod request_props;
mod runtime_cpu;
mod sampling_cpu;
mod scheduler;
mod sentencepiece;
mod spotting;
mod stop_tokens;
mod synthetic_tokenizer;
mod weights;
