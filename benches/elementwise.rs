//! The elementwise kernels, in GB/s (bytes read + written) against the measured copy rate.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ocrvl::kernels::elementwise::cast_scale;
use ocrvl::runtime::{DType, DeviceTensor, GpuTimer};

fn elementwise_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("elementwise");
    // 16k x 1024 rows (a long prefill) and the 103424-wide logits of 256 sequences: both far
    // beyond the 50 MB L2, so the numbers are HBM numbers.
    for (name, n, din, dout) in [
        ("cast_bf16_to_f32_16Mi", 16usize << 20, DType::BF16, DType::F32),
        ("cast_f32_to_bf16_logits_b256", 256 * 103424, DType::F32, DType::BF16),
    ] {
        // Non-zero data: zeros can hide unwritten outputs and time faster than real data.
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let src = DeviceTensor::from_host(&gpu, &[n], &vals).unwrap();
        let mut x = DeviceTensor::alloc(&gpu, din, &[n]).unwrap();
        cast_scale(&gpu, &mut x.view_mut(), &src.view(), 1.0).unwrap();
        drop(src);
        let mut out = DeviceTensor::alloc(&gpu, dout, &[n]).unwrap();
        let bytes = n * (din.size_bytes() + dout.size_bytes());
        group.throughput(Throughput::Bytes(bytes as u64));
        let mut run = || cast_scale(&gpu, &mut out.view_mut(), &x.view(), 0.5).unwrap();
        let ms = GpuTimer::time_mean_ms(&gpu, 3, 50, || {
            run();
            Ok(())
        })
        .unwrap();
        let gbps = bytes as f64 / (ms * 1e-3) / 1e9;
        println!(
            "{name}: {:.1} us, {gbps:.0} GB/s ({:.0}% of {} GB/s copy)",
            ms * 1e3,
            100.0 * gbps / common::H100_COPY_GBPS,
            common::H100_COPY_GBPS
        );
        group.bench_function(name, |b| b.iter_custom(|iters| common::time_gpu(&gpu, iters, &mut run)));
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = elementwise_benches }
criterion_main!(benches);
