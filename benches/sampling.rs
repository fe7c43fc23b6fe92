//! The sampling kernel at the model's vocab (103424), f32 logits: both classes at batch 1, 32
//! and 256 with top_k = 50, top_p = 0.9, temperature 0.7, and greedy, in GB/s counting one read
//! of the logits against the measured copy rate.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ocrvl::config::SamplingClass;
use ocrvl::kernels::sampling::{Sampler, SamplingOutputs, SamplingParams};
use ocrvl::runtime::{DType, DeviceTensor};

const VOCAB: usize = 103424;

/// The setting: temperature 0.7, top_k 50, top_p 0.9.
const TOPK_TOPP: SamplingParams = SamplingParams {
    temperature: 0.7,
    top_k: 50,
    top_p: 0.9,
    seed: 0,
    step: 7,
    repetition_penalty: 1.0,
    frequency_penalty: 0.0,
    presence_penalty: 0.0,
};

/// Logits like a language model's: a standard-normal bulk from a hash (not zeros: timing on
/// zeros is not timing real data), scaled by 2 so that the softmax is peaked but not one-hot.
fn logits(batch: usize) -> Vec<f32> {
    (0..batch * VOCAB)
        .map(|i| {
            let mut h = (i as u64).wrapping_mul(0x9E3779B97F4A7C15);
            h ^= h >> 29;
            h = h.wrapping_mul(0xBF58476D1CE4E5B9);
            h ^= h >> 32;
            // Sum of 4 uniforms, centred: close enough to a normal for a benchmark.
            let u = (0..4).map(|k| ((h >> (16 * k)) & 0xFFFF) as f32 / 65536.0).sum::<f32>() - 2.0;
            2.0 * u * 1.732
        })
        .collect()
}

fn sampling_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("sampling");
    let mut sampler = Sampler::new(&gpu, 256, 0).unwrap();
    for batch in [1usize, 32, 256] {
        let host = logits(batch);
        let mut x = DeviceTensor::from_host(&gpu, &[batch, VOCAB], &host).unwrap();
        let mut token = DeviceTensor::alloc(&gpu, DType::I32, &[batch]).unwrap();
        let mut logprob = DeviceTensor::alloc(&gpu, DType::F32, &[batch]).unwrap();
        let mut status = DeviceTensor::alloc(&gpu, DType::I32, &[batch]).unwrap();
        let bytes = batch * VOCAB * 4;
        group.throughput(Throughput::Bytes(bytes as u64));
        // The configuration for both classes (criterion-measured too), then greedy and
        // three cheaper or simpler settings for context (printed only).
        let configs: [(&str, SamplingClass, SamplingParams, usize, bool); 6] = [
            ("exact", SamplingClass::Base, TOPK_TOPP, 0, true),
            ("rejection", SamplingClass::Rejection, TOPK_TOPP, 0, true),
            ("greedy", SamplingClass::Base, SamplingParams::greedy(), 0, true),
            ("greedy+top5", SamplingClass::Base, SamplingParams::greedy(), 5, false),
            (
                "exact top_k=50 only",
                SamplingClass::Base,
                SamplingParams {
                    top_p: 1.0,
                    ..TOPK_TOPP
                },
                0,
                false,
            ),
            (
                "temperature only",
                SamplingClass::Base,
                SamplingParams {
                    top_k: 0,
                    top_p: 1.0,
                    ..TOPK_TOPP
                },
                0,
                false,
            ),
        ];
        for (name, class, base, n_top, criterion) in configs {
            let params: Vec<SamplingParams> = (0..batch)
                .map(|b| SamplingParams {
                    seed: 1234 + b as u64,
                    ..base
                })
                .collect();
            sampler.set_batch(&gpu, &params, &[]).unwrap();
            let mut top = (n_top > 0).then(|| {
                (
                    DeviceTensor::alloc(&gpu, DType::I32, &[batch, n_top]).unwrap(),
                    DeviceTensor::alloc(&gpu, DType::F32, &[batch, n_top]).unwrap(),
                )
            });
            let mut run = || {
                let mut out = SamplingOutputs {
                    token: token.view_mut(),
                    logprob: logprob.view_mut(),
                    status: status.view_mut(),
                    top: top.as_mut().map(|(a, b)| (a.view_mut(), b.view_mut())),
                };
                sampler.sample(&gpu, class, &mut x.view_mut(), &mut out).unwrap();
            };
            let ms = common::mean_ms(&gpu, 3, 50, &mut run);
            common::report_gbps(&format!("sampling {name} b{batch}"), bytes, ms);
            if criterion {
                group.bench_function(format!("{name}_b{batch}"), |b| {
                    b.iter_custom(|iters| common::time_gpu(&gpu, iters, &mut run))
                });
            }
        }
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = sampling_benches }
criterion_main!(benches);
