//! GPU tests, in one test target so the GPU bundle ships one executable for them.
//! Every test is `#[ignore = "needs GPU"]`: `cargo test` on a machine without a GPU passes
//! honestly, and the GPU host runs them with `--include-ignored`.

#[path = "../common/mod.rs"]
mod common;

mod activation;
mod attention;
mod attention_d80;
mod attention_fa3;
mod cast;
mod checkpoint_v1_5;
mod decode;
mod decode_gqa;
mod embedding;
mod engine;
mod engine_isolation;
mod engine_paths;
mod ernie_family;
mod ernie_full_greedy;
mod ernie_oracle;
mod ernie_service;
mod ernie_wint8;
mod fidelity;
mod gemm;
mod kv_cache;
mod model;
mod moe;
mod moe_block;
mod norm;
mod rope;
mod rope_cache;
mod sampling;
mod sampling_greedy;
mod sentencepiece_oracle;
