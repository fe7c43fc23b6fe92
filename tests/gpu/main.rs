//! GPU tests, in one test target so the GPU bundle ships one executable for them.
//! Every test is `#[ignore = "needs GPU"]`: `cargo test` on a machine without a GPU passes
//! honestly, and the GPU host runs them with `--include-ignored`.

#[path = "../common/mod.rs"]
mod common;

mod cast;
mod gemm;
mod model;
mod fidelity;
mod engine;
mod norm;
mod rope;
mod kv_cache;
mod activation;
mod embedding;
mod attention;
mod decode;
mod sampling;
