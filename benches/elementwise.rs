//! The elementwise kernels, in GB/s (bytes read + written) against the measured copy rate.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use ocrvl::kernels::elementwise::{bias_add, cast_scale, gelu, silu_mul, Gelu};
use ocrvl::runtime::{DType, DeviceTensor};

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
        let run = || cast_scale(&gpu, &mut out.view_mut(), &x.view(), 0.5).unwrap();
        common::bench_gbps(&mut group, &gpu, name, bytes, 50, run);
    }
    group.finish();
}

fn activation_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("activation");

    // SwiGLU: a 16k-token prefill, and one decode step of 256 sequences.
    for (name, tokens) in [("silu_mul_16384x3072", 16384usize), ("silu_mul_256x3072", 256)] {
        let inter = 3072;
        let bytes = tokens * inter * 2 * 3;
        let sets = common::sets_for(bytes);
        let ins: Vec<DeviceTensor> = (0..sets)
            .map(|_| common::filled(&gpu, &[tokens, 2 * inter], 0))
            .collect();
        let mut outs: Vec<DeviceTensor> = (0..sets).map(|_| common::filled(&gpu, &[tokens, inter], 0)).collect();
        common::bench_rotating(&mut group, &gpu, name, bytes, sets, |k| {
            silu_mul(&gpu, &mut outs[k].view_mut(), &ins[k].view()).unwrap()
        });
    }

    // GELU at the vision MLP's fc1 output for a 5040-patch page, out of place.
    for (name, kind) in [("gelu_tanh_5040x4304", Gelu::Tanh), ("gelu_erf_5040x4304", Gelu::Erf)] {
        let (rows, width) = (5040usize, 4304);
        let bytes = rows * width * 2 * 2;
        let sets = common::sets_for(bytes);
        let ins: Vec<DeviceTensor> = (0..sets).map(|_| common::filled(&gpu, &[rows, width], 0)).collect();
        let mut outs: Vec<DeviceTensor> = (0..sets).map(|_| common::filled(&gpu, &[rows, width], 0)).collect();
        common::bench_rotating(&mut group, &gpu, name, bytes, sets, |k| {
            gelu(&gpu, &mut outs[k].view_mut(), &ins[k].view(), kind).unwrap()
        });
    }

    // Bias plus residual over a 16k-token prefill of the LM width.
    {
        let (rows, width) = (16384usize, 1024);
        let bytes = rows * width * 2 * 3 + width * 2;
        let sets = common::sets_for(bytes);
        let xs: Vec<DeviceTensor> = (0..sets).map(|_| common::filled(&gpu, &[rows, width], 0)).collect();
        let res: Vec<DeviceTensor> = (0..sets).map(|_| common::filled(&gpu, &[rows, width], 0)).collect();
        let mut outs: Vec<DeviceTensor> = (0..sets).map(|_| common::filled(&gpu, &[rows, width], 0)).collect();
        let b = common::filled(&gpu, &[width], 0);
        common::bench_rotating(&mut group, &gpu, "bias_add_residual_16384x1024", bytes, sets, |k| {
            bias_add(
                &gpu,
                &mut outs[k].view_mut(),
                &xs[k].view(),
                &b.view(),
                Some(&res[k].view()),
            )
            .unwrap()
        });
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = elementwise_benches, activation_benches }
criterion_main!(benches);
