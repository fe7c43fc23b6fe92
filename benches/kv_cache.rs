//! The paged KV cache writer, in GB/s against the measured copy rate. Bytes counted: the new k
//! and v rows read once and written once into the caches (slot_mapping, 4 bytes a token, is not
//! counted). Text model shapes: 2 kv heads of 128, 64-token blocks, k and v as column views of
//! the fused qkv buffer [tokens, 2560].

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;
use ocrvl::kernels::kv_cache::{write_kv, DEFAULT_BLOCK_SIZE};
use ocrvl::runtime::{DType, DeviceTensor};

fn kv_cache_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("kv_cache");
    let (heads, head_dim, bs) = (2usize, 128usize, DEFAULT_BLOCK_SIZE);
    // The 8192-token prefill chunk (the engine's default token budget) moves 16.8 MB, under the
    // 50 MB L2: the number is what the engine sees, with the fused qkv output just written and
    // still in L2; the 256-token decode step (0.5 MB) is launch-bound.
    for (name, tokens) in [("write_kv_prefill_8192", 8192usize), ("write_kv_decode_256", 256)] {
        // Non-zero inputs; the pool has twice the blocks needed, used in a scattered order.
        let fused: Vec<bf16> = (0..tokens * 2560)
            .map(|i| bf16::from_f32(((i as u32).wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0))
            .collect();
        let fused = DeviceTensor::from_host(&gpu, &[tokens, 2560], &fused).unwrap();
        let needed = tokens.div_ceil(bs);
        let pool = 2 * needed;
        let slots: Vec<i32> = (0..tokens)
            .map(|t| {
                // Distinct blocks: 7919 is prime and does not divide the pool size.
                let block = (t / bs * 7919) % pool;
                (block * bs + t % bs) as i32
            })
            .collect();
        let slots = DeviceTensor::from_host(&gpu, &[tokens], &slots).unwrap();
        let mut k_cache = DeviceTensor::zeros(&gpu, DType::BF16, &[pool, heads, bs, head_dim]).unwrap();
        let mut v_cache = DeviceTensor::zeros(&gpu, DType::BF16, &[pool, heads, bs, head_dim]).unwrap();
        let (k, v) = (
            fused.view().columns(2048, heads * head_dim).unwrap(),
            fused.view().columns(2048 + heads * head_dim, heads * head_dim).unwrap(),
        );

        let bytes = tokens * 2 * heads * head_dim * 2 * 2;
        let run = || {
            write_kv(
                &gpu,
                &mut k_cache.view_mut(),
                &mut v_cache.view_mut(),
                &k,
                &v,
                &slots.view(),
            )
            .unwrap()
        };
        common::bench_gbps(&mut group, &gpu, name, bytes, 50, run);
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = kv_cache_benches }
criterion_main!(benches);
