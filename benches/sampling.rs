//! The sampling kernels at the model's vocab (103424), f32 logits: both classes at batch 1, 32
//! and 256 with top_k = 50, top_p = 0.9, temperature 0.7; greedy through the Sampler (the
//! one-pass fast path, kernels/sampling/greedy.cuh) and through the general kernel (its greedy
//! rows, the path before the fast one); a mixed batch (odd rows greedy, even rows top-k/top-p,
//! which keeps the general kernel); in GB/s counting one read of the logits against the
//! measured copy rate. The greedy fast path at one block per row is printed too, to check its
//! split choice at small batches.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ocrvl::config::SamplingClass;
use ocrvl::kernels::sampling::{
    greedy_workspace_bytes, sample, sample_greedy, Sampler, SamplingBatch, SamplingOutputs, SamplingParams,
    GREEDY_MAX_SPLITS,
};
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

/// Which entry point a configuration runs.
#[derive(Clone, Copy)]
enum Path {
    /// `Sampler::sample`, which picks the kernel (the engine's path).
    Sampler,
    /// The general kernel through `sample`, whatever the rows.
    General,
    /// `sample_greedy` with a forced split count.
    GreedySplits(usize),
}

/// A batch's parameters on the device, for the free functions.
struct DevParams {
    f32s: [DeviceTensor; 2],
    top_k: DeviceTensor,
    pairs: [DeviceTensor; 2],
}

impl DevParams {
    fn new(gpu: &ocrvl::runtime::Gpu, p: &[SamplingParams]) -> DevParams {
        let n = p.len();
        let words = |v: u64| [v as u32 as i32, (v >> 32) as u32 as i32];
        let f = |v: Vec<f32>| DeviceTensor::from_host(gpu, &[n], &v).unwrap();
        let w = |v: Vec<i32>| DeviceTensor::from_host(gpu, &[n, 2], &v).unwrap();
        DevParams {
            f32s: [
                f(p.iter().map(|q| q.temperature).collect()),
                f(p.iter().map(|q| q.top_p).collect()),
            ],
            top_k: DeviceTensor::from_host(gpu, &[n], &p.iter().map(|q| q.top_k).collect::<Vec<i32>>()).unwrap(),
            pairs: [
                w(p.iter().flat_map(|q| words(q.seed)).collect()),
                w(p.iter().flat_map(|q| words(q.step)).collect()),
            ],
        }
    }

    fn batch(&self) -> SamplingBatch<'_> {
        SamplingBatch {
            temperature: self.f32s[0].view(),
            top_k: self.top_k.view(),
            top_p: self.f32s[1].view(),
            seed: self.pairs[0].view(),
            step: self.pairs[1].view(),
            penalties: None,
        }
    }
}

fn greedy_rows(_: usize) -> SamplingParams {
    SamplingParams::greedy()
}

fn topk_topp_rows(_: usize) -> SamplingParams {
    TOPK_TOPP
}

/// Odd rows greedy, even rows top-k/top-p (so batch 1 is not all greedy).
fn mixed_rows(b: usize) -> SamplingParams {
    if b % 2 == 1 {
        SamplingParams::greedy()
    } else {
        TOPK_TOPP
    }
}

fn top_k_only_rows(_: usize) -> SamplingParams {
    SamplingParams {
        top_p: 1.0,
        ..TOPK_TOPP
    }
}

fn temperature_only_rows(_: usize) -> SamplingParams {
    SamplingParams {
        top_k: 0,
        top_p: 1.0,
        ..TOPK_TOPP
    }
}

type Config = (
    &'static str,
    SamplingClass,
    fn(usize) -> SamplingParams,
    usize,
    Path,
    bool,
);

fn sampling_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("sampling");
    let mut sampler = Sampler::new(&gpu, 256, 0).unwrap();
    sampler.set_greedy_kernel(true);
    let mut greedy_ws =
        DeviceTensor::alloc(&gpu, DType::I32, &[greedy_workspace_bytes(256, GREEDY_MAX_SPLITS) / 4]).unwrap();
    for batch in [1usize, 32, 256] {
        let host = logits(batch);
        let mut x = DeviceTensor::from_host(&gpu, &[batch, VOCAB], &host).unwrap();
        let mut token = DeviceTensor::alloc(&gpu, DType::I32, &[batch]).unwrap();
        let mut logprob = DeviceTensor::alloc(&gpu, DType::F32, &[batch]).unwrap();
        let mut status = DeviceTensor::alloc(&gpu, DType::I32, &[batch]).unwrap();
        let bytes = batch * VOCAB * 4;
        group.throughput(Throughput::Bytes(bytes as u64));
        // The configuration for both classes, greedy on both paths and the mixed
        // batch (criterion-measured too), then cheaper or simpler settings for context
        // (printed only).
        let configs: [Config; 9] = [
            ("exact", SamplingClass::Base, topk_topp_rows, 0, Path::Sampler, true),
            (
                "rejection",
                SamplingClass::Rejection,
                topk_topp_rows,
                0,
                Path::Sampler,
                true,
            ),
            ("greedy", SamplingClass::Base, greedy_rows, 0, Path::Sampler, true),
            (
                "greedy_general",
                SamplingClass::Base,
                greedy_rows,
                0,
                Path::General,
                true,
            ),
            ("mixed", SamplingClass::Base, mixed_rows, 0, Path::Sampler, true),
            (
                "greedy splits=1",
                SamplingClass::Base,
                greedy_rows,
                0,
                Path::GreedySplits(1),
                false,
            ),
            ("greedy+top5", SamplingClass::Base, greedy_rows, 5, Path::Sampler, false),
            (
                "exact top_k=50 only",
                SamplingClass::Base,
                top_k_only_rows,
                0,
                Path::Sampler,
                false,
            ),
            (
                "temperature only",
                SamplingClass::Base,
                temperature_only_rows,
                0,
                Path::Sampler,
                false,
            ),
        ];
        for (name, class, rows, n_top, path, criterion) in configs {
            let params: Vec<SamplingParams> = (0..batch)
                .map(|b| SamplingParams {
                    seed: 1234 + b as u64,
                    ..rows(b)
                })
                .collect();
            sampler.set_batch(&gpu, &params, &[]).unwrap();
            let dev = DevParams::new(&gpu, &params);
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
                match path {
                    Path::Sampler => sampler.sample(&gpu, class, &mut x.view_mut(), &mut out).unwrap(),
                    Path::General => sample(&gpu, class, &mut x.view_mut(), &dev.batch(), &mut out, None).unwrap(),
                    Path::GreedySplits(n) => sample_greedy(
                        &gpu,
                        &x.view(),
                        &dev.batch(),
                        &mut out,
                        Some(n),
                        Some(&mut greedy_ws.view_mut()),
                    )
                    .unwrap(),
                }
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
