//! ERNIE-4.5-VL-28B-A3B's MoE block (src/model/ernie_vl/moe_block.rs) at full size, against
//! the ceilings: two pools of 64 experts (text SwiGLU 1536, vision 512) over hidden 2560, top-6,
//! shared experts of 3072.
//!
//! - decode, 256 tokens (90% text): nearly every expert's weights are read once, so the block
//!   is weight-streaming: reported in GB/s of the weights of the experts the routing used
//!   (read back once) against the copy rate.
//! - prefill, 8192 tokens (70% text, 30% vision): reported in TFLOP/s of the routed and shared
//!   GEMMs against cuBLAS's bf16 rate.
//! - decode 128 text tokens (the ERNIE decode workload's step: ~127 sequences);
//! - the text pool's gate/up and down grouped GEMMs alone at decode 128 and 256, in GB/s;
//! - the router logits alone at 1 to 8192 tokens, in GB/s;
//! - each pool's gate/up and down grouped GEMMs alone at prefill (1024 to 8192 tokens, all in
//!   that pool), with each kernel (mma.sync and the four wgmma rings), in TFLOP/s of the
//!   live pairs: printed lines only (`prefill_gemm ...`), from 20 timed runs after 3 warm-ups.
//!
//! `OCRVL_MOE_GEMM=mma|wgmma|wgmma2|wgmma-inflight|wgmma-inflight5` replaces the grouped GEMM's
//! automatic choice (the block rows), for an A/B in the same call.
//! `OCRVL_MOE_ROUTER_TILED=1` runs the router's tiled kernel at every size, for an A/B in the
//! same call.
//!
//! Weights are filled with one non-zero byte pattern on the device (2 GB: a host pattern would
//! take longer than the bench); the router is random so the routing spreads as a trained one.

mod common;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use ocrvl::kernels::moe::{self, Epilogue, ExpertWeight, GemmKernel, BLOCK_M};
use ocrvl::model::ernie_vl::moe_block::{moe_block, ExpertPoolWeights, MoeBlockShape, MoeBlockWeights, MoeScratch};
use ocrvl::runtime::{DType, DeviceTensor, Gemm, Gpu};

const HIDDEN: usize = 2560;
const EXPERTS: usize = 64;
const TOP_K: usize = 6;
const INTER: [usize; 2] = [1536, 512];
const SHARED_INTER: usize = 3072;

fn filled(gpu: &Gpu, dims: &[usize], byte: u8) -> DeviceTensor {
    let mut t = DeviceTensor::alloc(gpu, DType::BF16, dims).unwrap();
    t.view_mut().fill_bytes(gpu, byte).unwrap();
    t
}

/// Deterministic values in [-scale, scale).
fn pattern_f32(n: usize, salt: u32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ salt).wrapping_mul(2654435761) >> 8;
            (h as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn pattern_bf16(n: usize, salt: u32) -> Vec<half::bf16> {
    pattern_f32(n, salt, 1.0)
        .into_iter()
        .map(half::bf16::from_f32)
        .collect()
}

/// Weight bytes of the experts a routing used (global ids) plus the shared experts and the
/// router.
fn weight_bytes_used(experts_used: &[i32]) -> usize {
    let mut used = [false; 2 * EXPERTS];
    for &e in experts_used.iter().filter(|&&e| e >= 0) {
        used[e as usize] = true;
    }
    let per_expert = |pool: usize| 3 * INTER[pool] * HIDDEN * 2;
    let routed: usize = (0..2 * EXPERTS)
        .filter(|&e| used[e])
        .map(|e| per_expert(e / EXPERTS))
        .sum();
    routed + 3 * SHARED_INTER * HIDDEN * 2 + 2 * EXPERTS * HIDDEN * 4
}

/// Token rows (a pattern salted by `salt`), token t in expert pool `pools[t]`, routed by the
/// real router and bias (`ids`, global expert ids) and sorted into tiles by `align`: what the
/// MoE block and the grouped GEMM take.
struct Routed {
    x: DeviceTensor,
    pools: DeviceTensor,
    ids: DeviceTensor,
    sorted: DeviceTensor,
    tile_expert: DeviceTensor,
    tiles: usize,
}

fn route(gpu: &Gpu, router: &DeviceTensor, bias: &DeviceTensor, pools: &[i32], salt: u32) -> Routed {
    let tokens = pools.len();
    let x = DeviceTensor::from_host(gpu, &[tokens, HIDDEN], &pattern_bf16(tokens * HIDDEN, salt)).unwrap();
    let mut logits = DeviceTensor::alloc(gpu, DType::F32, &[tokens, 2 * EXPERTS]).unwrap();
    let mut ids = DeviceTensor::alloc(gpu, DType::I32, &[tokens, TOP_K]).unwrap();
    let mut w = DeviceTensor::alloc(gpu, DType::F32, &[tokens, TOP_K]).unwrap();
    let tiles = moe::max_tiles(tokens * TOP_K, 2 * EXPERTS);
    let mut sorted = DeviceTensor::alloc(gpu, DType::I32, &[tiles * BLOCK_M]).unwrap();
    let mut pair_slot = DeviceTensor::alloc(gpu, DType::I32, &[tokens * TOP_K]).unwrap();
    let mut tile_expert = DeviceTensor::alloc(gpu, DType::I32, &[tiles]).unwrap();
    moe::router_logits(gpu, &mut logits.view_mut(), &x.view(), &router.view()).unwrap();
    let pools = DeviceTensor::from_host(gpu, &[tokens], pools).unwrap();
    let (pv, bv) = (pools.view(), bias.view());
    moe::topk(
        gpu,
        &mut ids.view_mut(),
        &mut w.view_mut(),
        &logits.view(),
        Some(&pv),
        Some(&bv),
        EXPERTS,
        1e-12,
    )
    .unwrap();
    moe::align(
        gpu,
        &mut sorted.view_mut(),
        &mut pair_slot.view_mut(),
        &mut tile_expert.view_mut(),
        &ids.view(),
        2 * EXPERTS,
    )
    .unwrap();
    Routed {
        x,
        pools,
        ids,
        sorted,
        tile_expert,
        tiles,
    }
}

/// Times `run` (the mean of 50 after 3 warm-ups), prints its GB/s line as `label` for `bytes`
/// moved once per run, and registers it with criterion as `name`.
fn bench_gbps(
    group: &mut BenchmarkGroup<'_, WallTime>,
    gpu: &Gpu,
    name: &str,
    label: &str,
    bytes: usize,
    mut run: impl FnMut(),
) {
    let ms = common::mean_ms(gpu, 3, 50, &mut run);
    common::report_gbps(label, bytes, ms);
    group.bench_function(name, |b| b.iter_custom(|iters| common::time_gpu(gpu, iters, &mut run)));
}

fn moe_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut gemm = Gemm::new(&gpu).unwrap();
    let shape = MoeBlockShape {
        hidden: HIDDEN,
        experts_per_pool: EXPERTS,
        pool_inter: INTER.to_vec(),
        shared_inter: SHARED_INTER,
        top_k: TOP_K,
        norm_min: 1e-12,
    };
    let pools: Vec<(DeviceTensor, DeviceTensor)> = INTER
        .iter()
        .map(|&i| {
            (
                filled(&gpu, &[EXPERTS, 2 * i, HIDDEN], 0x3C),
                filled(&gpu, &[EXPERTS, HIDDEN, i], 0x3B),
            )
        })
        .collect();
    let router = DeviceTensor::from_host(
        &gpu,
        &[2 * EXPERTS, HIDDEN],
        &pattern_f32(2 * EXPERTS * HIDDEN, 7, 0.05),
    )
    .unwrap();
    let bias = DeviceTensor::from_host(&gpu, &[2, EXPERTS], &pattern_f32(2 * EXPERTS, 9, 0.01)).unwrap();
    let shared_gate_up = filled(&gpu, &[2 * SHARED_INTER, HIDDEN], 0x3C);
    let shared_down = filled(&gpu, &[HIDDEN, SHARED_INTER], 0x3B);
    let weights = MoeBlockWeights {
        router: router.view(),
        correction_bias: bias.view(),
        pools: pools
            .iter()
            .map(|(gu, d)| ExpertPoolWeights {
                gate_up: gu.view(),
                down: d.view(),
                scales: None,
            })
            .collect(),
        shared_gate_up: Some(shared_gate_up.view()),
        shared_down: Some(shared_down.view()),
    };
    let mut scratch = MoeScratch::new(&gpu, &shape, 8192).unwrap();
    let mut group = c.benchmark_group("moe");

    // vision_every: every n-th token is a vision token (0: none, a text decode step).
    for (name, tokens, vision_every) in [
        ("block_decode_128_text", 128usize, 0usize),
        ("block_decode_256", 256, 10),
        ("block_prefill_8192", 8192, 3),
    ] {
        let token_pools: Vec<i32> = (0..tokens)
            .map(|t| i32::from(vision_every > 0 && t % vision_every == 0))
            .collect();
        let Routed {
            x, pools: pool, ids, ..
        } = route(&gpu, &router, &bias, &token_pools, tokens as u32);
        let mut out = DeviceTensor::alloc(&gpu, DType::BF16, &[tokens, HIDDEN]).unwrap();
        let mut step = || {
            moe_block(
                &gpu,
                &mut gemm,
                &mut out.view_mut(),
                &x.view(),
                &pool.view(),
                &weights,
                &mut scratch,
            )
            .unwrap();
        };
        let ms = common::mean_ms(&gpu, 3, 20, &mut step);
        // The routing of the timed runs (the same every run): which experts, how many pairs.
        let ids: Vec<i32> = ids.to_host(&gpu).unwrap();
        let mut experts_used: Vec<i32> = ids.clone();
        experts_used.sort();
        experts_used.dedup();
        let bytes = weight_bytes_used(&experts_used);
        let flops: f64 = ids
            .iter()
            .map(|&e| 2.0 * 3.0 * (INTER[e as usize / EXPERTS] * HIDDEN) as f64)
            .sum::<f64>()
            + tokens as f64 * 2.0 * 3.0 * (SHARED_INTER * HIDDEN) as f64;
        println!(
            "{name}: {:.1} us; {} experts used; weights {:.0} MB at {:.0} GB/s ({:.0}% of {} GB/s copy); {:.1} TFLOP/s ({:.0}% of {} bf16)",
            ms * 1e3,
            experts_used.len(),
            bytes as f64 / 1e6,
            bytes as f64 / (ms * 1e-3) / 1e9,
            100.0 * bytes as f64 / (ms * 1e-3) / 1e9 / common::H100_COPY_GBPS,
            common::H100_COPY_GBPS,
            flops / (ms * 1e-3) / 1e12,
            100.0 * flops / (ms * 1e-3) / 1e12 / common::H100_BF16_TFLOPS,
            common::H100_BF16_TFLOPS
        );
        group.bench_function(name, |b| {
            b.iter_custom(|iters| common::time_gpu(&gpu, iters, &mut step))
        });
    }

    // The text pool as `--quantization wint8` stores it: int8 weights (a fixed byte) and f32
    // row scales, for the int8 rows below.
    let filled_int8 = |dims: &[usize]| {
        let mut t = DeviceTensor::alloc(&gpu, DType::I8, dims).unwrap();
        t.view_mut().fill_bytes(&gpu, 0x05).unwrap();
        t
    };
    let text_int8 = (
        filled_int8(&[EXPERTS, 2 * INTER[0], HIDDEN]),
        filled_int8(&[EXPERTS, HIDDEN, INTER[0]]),
        DeviceTensor::from_host(
            &gpu,
            &[EXPERTS, 2 * INTER[0]],
            &pattern_f32(EXPERTS * 2 * INTER[0], 3, 1e-3),
        )
        .unwrap(),
        DeviceTensor::from_host(&gpu, &[EXPERTS, HIDDEN], &pattern_f32(EXPERTS * HIDDEN, 4, 1e-3)).unwrap(),
    );

    // The text pool's two grouped GEMMs alone at decode (128 and 256 text tokens), each in GB/s
    // of the weights of the experts used: the step's floor is these weights streamed once.
    // Then the same with int8 weights (the bytes counted are the int8 weights and scales).
    for tokens in [128usize, 256] {
        let Routed {
            x,
            sorted,
            tile_expert,
            tiles,
            ..
        } = route(&gpu, &router, &bias, &vec![0; tokens], 5);
        let mut h = DeviceTensor::alloc(&gpu, DType::BF16, &[tiles * BLOCK_M, INTER[0]]).unwrap();
        let mut y = DeviceTensor::alloc(&gpu, DType::BF16, &[tiles * BLOCK_M, HIDDEN]).unwrap();
        let used: Vec<i32> = tile_expert.to_host(&gpu).unwrap();
        let mut used: Vec<i32> = used.into_iter().filter(|&e| e >= 0).collect();
        used.dedup();
        let (gu16, d16) = (pools[0].0.view(), pools[0].1.view());
        let (gu8, d8, gu8_scales, d8_scales) = (
            text_int8.0.view(),
            text_int8.1.view(),
            text_int8.2.view(),
            text_int8.3.view(),
        );
        // (row suffix, gate/up, down, weight bytes per element, scale bytes per row)
        let kinds = [
            ("", ExpertWeight::Bf16(&gu16), ExpertWeight::Bf16(&d16), 2, 0),
            (
                "_int8",
                ExpertWeight::Int8 {
                    weight: &gu8,
                    scales: &gu8_scales,
                },
                ExpertWeight::Int8 {
                    weight: &d8,
                    scales: &d8_scales,
                },
                1,
                4,
            ),
        ];
        for (suffix, gate_up_weight, down_weight, elem, scale) in kinds {
            let mut gate_up = || {
                moe::grouped_gemm(
                    &gpu,
                    &mut h.view_mut(),
                    &x.view(),
                    &sorted.view(),
                    Some(TOP_K),
                    gate_up_weight,
                    &tile_expert.view(),
                    0..EXPERTS,
                    Epilogue::SwiGlu,
                )
                .unwrap();
            };
            bench_gbps(
                &mut group,
                &gpu,
                &format!("gate_up_text_decode_{tokens}{suffix}"),
                &format!("gate_up_text_decode_{tokens}{suffix} ({} experts)", used.len()),
                used.len() * 2 * INTER[0] * (HIDDEN * elem + scale),
                &mut gate_up,
            );
            let mut down = || {
                moe::grouped_gemm(
                    &gpu,
                    &mut y.view_mut(),
                    &h.view(),
                    &sorted.view(),
                    None,
                    down_weight,
                    &tile_expert.view(),
                    0..EXPERTS,
                    Epilogue::None,
                )
                .unwrap();
            };
            bench_gbps(
                &mut group,
                &gpu,
                &format!("down_text_decode_{tokens}{suffix}"),
                &format!("down_text_decode_{tokens}{suffix} ({} experts)", used.len()),
                used.len() * HIDDEN * (INTER[0] * elem + scale),
                &mut down,
            );
        }
    }

    // Each pool's grouped GEMMs alone at prefill sizes, every kernel on the same routing.
    for (pool, tokens) in [
        (0usize, 1024usize),
        (0, 2048),
        (0, 4096),
        (0, 8192),
        (1, 2048),
        (1, 8192),
    ] {
        let inter = INTER[pool];
        let Routed {
            x,
            sorted,
            tile_expert,
            tiles,
            ..
        } = route(&gpu, &router, &bias, &vec![pool as i32; tokens], 13);
        let mut h = DeviceTensor::alloc(&gpu, DType::BF16, &[tiles * BLOCK_M, inter]).unwrap();
        let mut y = DeviceTensor::alloc(&gpu, DType::BF16, &[tiles * BLOCK_M, HIDDEN]).unwrap();
        let experts = pool * EXPERTS..(pool + 1) * EXPERTS;
        let (gu, d) = (pools[pool].0.view(), pools[pool].1.view());
        let pairs = (tokens * TOP_K) as f64;
        for kernel in std::iter::once(GemmKernel::Mma).chain(GemmKernel::WGMMA) {
            let mut gate_up = || {
                moe::grouped_gemm_with(
                    &gpu,
                    kernel,
                    &mut h.view_mut(),
                    &x.view(),
                    &sorted.view(),
                    Some(TOP_K),
                    &gu,
                    &tile_expert.view(),
                    experts.clone(),
                    Epilogue::SwiGlu,
                )
                .unwrap();
            };
            let ms_gu = common::mean_ms(&gpu, 3, 20, &mut gate_up);
            let mut down = || {
                moe::grouped_gemm_with(
                    &gpu,
                    kernel,
                    &mut y.view_mut(),
                    &h.view(),
                    &sorted.view(),
                    None,
                    &d,
                    &tile_expert.view(),
                    experts.clone(),
                    Epilogue::None,
                )
                .unwrap();
            };
            let ms_d = common::mean_ms(&gpu, 3, 20, &mut down);
            let tflops = |ms: f64, n: usize, k: usize| 2.0 * pairs * (n * k) as f64 / (ms * 1e-3) / 1e12;
            println!(
                "prefill_gemm pool {pool} tokens {tokens} {kernel:?}: gate/up {:.1} us {:.0} TFLOP/s; down {:.1} us {:.0} TFLOP/s ({:.0}% / {:.0}% of {} bf16)",
                ms_gu * 1e3,
                tflops(ms_gu, 2 * inter, HIDDEN),
                ms_d * 1e3,
                tflops(ms_d, HIDDEN, inter),
                100.0 * tflops(ms_gu, 2 * inter, HIDDEN) / common::H100_BF16_TFLOPS,
                100.0 * tflops(ms_d, HIDDEN, inter) / common::H100_BF16_TFLOPS,
                common::H100_BF16_TFLOPS
            );
        }
    }

    // The router logits alone, from one decode token to a long prefill chunk, in GB/s of what
    // it must read and write once (x, the f32 router, the logits): the split-k kernel up to
    // OCRVL_MOE_ROUTER_SPLIT_K_MAX_TOKENS tokens, the tiled kernel above (or everywhere with
    // OCRVL_MOE_ROUTER_TILED=1).
    for tokens in [1usize, 128, 256, 1024, 4096, 8192] {
        let x = DeviceTensor::from_host(&gpu, &[tokens, HIDDEN], &pattern_bf16(tokens * HIDDEN, 11)).unwrap();
        let mut logits = DeviceTensor::alloc(&gpu, DType::F32, &[tokens, 2 * EXPERTS]).unwrap();
        let mut route = || moe::router_logits(&gpu, &mut logits.view_mut(), &x.view(), &router.view()).unwrap();
        let name = format!("router_logits_{tokens}");
        let bytes = tokens * HIDDEN * 2 + 2 * EXPERTS * HIDDEN * 4 + tokens * 2 * EXPERTS * 4;
        bench_gbps(&mut group, &gpu, &name, &name, bytes, &mut route);
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = moe_benches }
criterion_main!(benches);
