//! Criterion helpers for GPU kernels: device-event timing inside `iter_custom`, and the
//! ceilings that results are reported against.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;
use ocrvl::runtime::{Gpu, GpuTimer};

/// Measured on the H100 of the GPU host (GPU_WORKFLOW.md): device-to-device copy, bytes read
/// plus written, and cuBLAS bf16 GEMM on random data. Benches print their fraction of these.
pub const H100_COPY_GBPS: f64 = 2960.0;
pub const H100_BF16_TFLOPS: f64 = 798.0;

pub fn gpu() -> Gpu {
    Gpu::new(0).unwrap_or_else(|e| panic!("benchmarks need a GPU: {e}"))
}

/// Short runs: GPU time on the host is scarce and device-event timings are steady.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

/// Times `iters` runs of `f` on the GPU's stream with events.
pub fn time_gpu(gpu: &Gpu, iters: u64, mut f: impl FnMut()) -> Duration {
    let t = GpuTimer::new(gpu).unwrap();
    t.start(gpu).unwrap();
    for _ in 0..iters {
        f();
    }
    t.stop(gpu).unwrap();
    Duration::from_secs_f64(t.elapsed_ms().unwrap() as f64 * 1e-3)
}
