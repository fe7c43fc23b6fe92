//! Criterion helpers for GPU kernels: device-event timing inside `iter_custom`, and the
//! ceilings that results are reported against.
#![allow(dead_code)]

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use half::bf16;
use ocrvl::runtime::{DeviceTensor, Gpu, GpuTimer};

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

/// Mean milliseconds of one `run`: `iters` timed runs after `warmup` untimed ones.
pub fn mean_ms(gpu: &Gpu, warmup: usize, iters: usize, mut run: impl FnMut()) -> f64 {
    GpuTimer::time_mean_ms(gpu, warmup, iters, || {
        run();
        Ok(())
    })
    .unwrap()
}

/// Prints the line the GPU run scripts grep for a memory-bound kernel:
/// `{label}: {us} us, {rate} GB/s ({share}% of 2960 GB/s copy)`.
pub fn report_gbps(label: &str, bytes: usize, ms: f64) {
    let gbps = bytes as f64 / (ms * 1e-3) / 1e9;
    println!(
        "{label}: {:.1} us, {gbps:.0} GB/s ({:.0}% of {} GB/s copy)",
        ms * 1e3,
        100.0 * gbps / H100_COPY_GBPS,
        H100_COPY_GBPS
    );
}

/// Prints the line for a compute-bound kernel:
/// `{label}: {us} us, {rate} TFLOP/s ({share}% of 798 {ceiling})`.
pub fn report_tflops(label: &str, flops: f64, ms: f64, ceiling: &str) {
    let tflops = flops / (ms * 1e-3) / 1e12;
    println!(
        "{label}: {:.1} us, {tflops:.1} TFLOP/s ({:.0}% of {} {ceiling})",
        ms * 1e3,
        100.0 * tflops / H100_BF16_TFLOPS,
        H100_BF16_TFLOPS
    );
}

/// Times `run` (3 warm-up runs, then `iters`), prints its GB/s line for `bytes`, and registers
/// it as the criterion bench `name` of `group` with that throughput.
pub fn bench_gbps(
    group: &mut BenchmarkGroup<'_, WallTime>,
    gpu: &Gpu,
    name: &str,
    bytes: usize,
    iters: usize,
    mut run: impl FnMut(),
) {
    group.throughput(Throughput::Bytes(bytes as u64));
    let ms = mean_ms(gpu, 3, iters, &mut run);
    report_gbps(name, bytes, ms);
    group.bench_function(name, |b| b.iter_custom(|n| time_gpu(gpu, n, &mut run)));
}

/// Non-zero bf16 data in [-4, 4), varied by `salt`: zeros time faster than real data and hide
/// unwritten outputs.
pub fn filled(gpu: &Gpu, dims: &[usize], salt: u32) -> DeviceTensor {
    let n: usize = dims.iter().product();
    let vals: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(((i as u32 ^ salt).wrapping_mul(2654435761) % 2001) as f32 / 250.0 - 4.0))
        .collect();
    DeviceTensor::from_host(gpu, dims, &vals).unwrap()
}

/// How many input/output sets to cycle through so that one pass touches at least 200 MB: a
/// set that fits in the 50 MB L2 would otherwise be timed from L2 (the torch baseline
/// rotates the same way, so the two stay comparable).
pub fn sets_for(bytes: usize) -> usize {
    (200_000_000usize).div_ceil(bytes).clamp(1, 64)
}

/// Times `op(set index)` over `sets` rotating sets, prints the GB/s line and registers the
/// criterion bench.
pub fn bench_rotating(
    group: &mut BenchmarkGroup<'_, WallTime>,
    gpu: &Gpu,
    name: &str,
    bytes: usize,
    sets: usize,
    mut op: impl FnMut(usize),
) {
    group.throughput(Throughput::Bytes(bytes as u64));
    let mut k = 0usize;
    let mut run = || {
        op(k % sets);
        k += 1;
    };
    let ms = mean_ms(gpu, sets.max(3), 50.max(2 * sets), &mut run);
    report_gbps(name, bytes, ms);
    group.bench_function(name, |b| b.iter_custom(|iters| time_gpu(gpu, iters, &mut run)));
}
