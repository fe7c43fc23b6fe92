//! Paged decode attention in GB/s against the measured copy rate. Bytes counted are the minimum:
//! every sequence's K and V read once (2 kv heads x 128 dims x 2 bytes each per key), q read
//! and o written once; the split-KV workspace traffic is not counted (it is overhead).
//!
//! Shapes: 256 sequences at 1024 and 4096 keys (the serving shape; 268 MB and 1.07 GB of K/V,
//! far beyond the 50 MB L2), and 1 sequence of 16384 keys, which needs split-KV to fill the
//! GPU; its 16.8 MB would sit in L2, so 8 copies of it in disjoint blocks are rotated
//! (134 MB); and 16 sequences of 4096 keys (67 MB, 2 rotations), a small batch that splits.
//! Block size 64, blocks in a shuffled order, non-zero random data. Each case prints the
//! heuristic's split count and a few others around it.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use ocrvl::kernels::decode::{decode_num_splits, decode_paged, decode_workspace_bytes, PagedKv};
use ocrvl::runtime::{DType, DeviceTensor, Gpu, GpuTimer};
use rand::seq::SliceRandom;
use rand::SeedableRng;

const HQ: usize = 16;
const HKV: usize = 2;
const D: usize = 128;
const BLOCK: usize = 64;

struct Pool {
    k: DeviceTensor,
    v: DeviceTensor,
    /// A shuffled order of all blocks; tables take consecutive runs of it.
    order: Vec<i32>,
}

fn pool(gpu: &Gpu, num_blocks: usize) -> Pool {
    let n = num_blocks * HKV * BLOCK * D;
    // Non-zero, varied values in [-1, 1]; one host buffer serves K and V.
    let vals: Vec<bf16> = (0..n)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2654435761) >> 8;
            bf16::from_f32((h % 2001) as f32 / 1000.0 - 1.0)
        })
        .collect();
    let dims = [num_blocks, HKV, BLOCK, D];
    let k = DeviceTensor::from_host(gpu, &dims, &vals).unwrap();
    let v = DeviceTensor::from_host(gpu, &dims, &vals).unwrap();
    let mut order: Vec<i32> = (0..num_blocks as i32).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
    Pool { k, v, order }
}

struct Case {
    num_seqs: usize,
    ctx: usize,
    /// Block tables [num_seqs, ctx / BLOCK], one per rotation.
    tables: Vec<DeviceTensor>,
    seq_lens: DeviceTensor,
    q: DeviceTensor,
}

fn case(gpu: &Gpu, p: &Pool, num_seqs: usize, ctx: usize, rotations: usize) -> Case {
    let per_seq = ctx / BLOCK;
    let tables = (0..rotations)
        .map(|r| {
            let run = &p.order[r * num_seqs * per_seq..(r + 1) * num_seqs * per_seq];
            DeviceTensor::from_host(gpu, &[num_seqs, per_seq], run).unwrap()
        })
        .collect();
    let lens = vec![ctx as i32; num_seqs];
    let q: Vec<bf16> = (0..num_seqs * HQ * D)
        .map(|i| bf16::from_f32(((i * 37) % 101) as f32 / 50.0 - 1.0))
        .collect();
    Case {
        num_seqs,
        ctx,
        tables,
        seq_lens: DeviceTensor::from_host(gpu, &[num_seqs], &lens).unwrap(),
        q: DeviceTensor::from_host(gpu, &[num_seqs, HQ, D], &q).unwrap(),
    }
}

fn bytes(c: &Case) -> usize {
    let kv = c.num_seqs * c.ctx * HKV * D * 2 * 2;
    let qo = 2 * c.num_seqs * HQ * D * 2;
    kv + qo
}

/// Times the case at `splits` (None: the heuristic) and prints its GB/s line.
fn measure(gpu: &Gpu, p: &Pool, c: &Case, name: &str, splits: Option<usize>) {
    let used = splits.unwrap_or_else(|| decode_num_splits(c.num_seqs, HKV, c.ctx, gpu.sm_count()));
    let ws_bytes = decode_workspace_bytes(c.num_seqs, HQ, D, used);
    let mut ws = DeviceTensor::alloc(gpu, DType::F32, &[ws_bytes.div_ceil(4).max(1)]).unwrap();
    let mut o = DeviceTensor::alloc(gpu, DType::BF16, &[c.num_seqs, HQ, D]).unwrap();
    let mut i = 0;
    let ms = GpuTimer::time_mean_ms(gpu, 3, 50, || {
        let kv = PagedKv {
            k_cache: p.k.view(),
            v_cache: p.v.view(),
            block_tables: c.tables[i % c.tables.len()].view(),
            seq_lens: c.seq_lens.view(),
            max_seq_len: c.ctx,
        };
        i += 1;
        decode_paged(
            gpu,
            &mut o.view_mut(),
            &c.q.view(),
            &kv,
            0.088388,
            splits,
            Some(&mut ws.view_mut()),
        )?;
        Ok(())
    })
    .unwrap();
    let b = bytes(c);
    common::report_gbps(&format!("decode {name} ({used} splits)"), b, ms);
}

fn decode_benches(cr: &mut Criterion) {
    let gpu = common::gpu();
    // 256 x 4096 keys: 16384 blocks of 64, 537 MB each for K and V.
    let p = pool(&gpu, 256 * 4096 / BLOCK);
    let cases = [
        ("b256_ctx1024", case(&gpu, &p, 256, 1024, 1)),
        ("b256_ctx4096", case(&gpu, &p, 256, 4096, 1)),
        ("b1_ctx16384", case(&gpu, &p, 1, 16384, 8)),
        ("b16_ctx4096", case(&gpu, &p, 16, 4096, 2)),
    ];
    if std::env::var_os("OCRVL_DECODE_SWEEP").is_some() {
        // Tuning aid for the split heuristic (not part of the regular run): batch x splits.
        for &n in &[32usize, 64, 100, 128, 200] {
            let c = case(&gpu, &p, n, 2048, 1);
            for s in [1usize, 2, 3, 4, 8] {
                measure(&gpu, &p, &c, &format!("sweep b{n}_ctx2048"), Some(s));
            }
            println!(
                "sweep b{n}_ctx2048 heuristic: {}",
                decode_num_splits(n, HKV, 2048, gpu.sm_count())
            );
        }
    }
    let mut group = cr.benchmark_group("decode");
    for (name, c) in &cases {
        measure(&gpu, &p, c, name, None);
        // The split choice, around the heuristic's pick.
        let alternatives: &[usize] = match c.num_seqs {
            1 => &[16, 32, 128],
            16 => &[1, 4, 16],
            _ => &[2],
        };
        for &s in alternatives {
            measure(&gpu, &p, c, name, Some(s));
        }
        group.throughput(Throughput::Bytes(bytes(c) as u64));
        let used = decode_num_splits(c.num_seqs, HKV, c.ctx, gpu.sm_count());
        let mut ws = DeviceTensor::alloc(
            &gpu,
            DType::F32,
            &[decode_workspace_bytes(c.num_seqs, HQ, D, used).div_ceil(4).max(1)],
        )
        .unwrap();
        let mut o = DeviceTensor::alloc(&gpu, DType::BF16, &[c.num_seqs, HQ, D]).unwrap();
        let mut i = 0;
        let mut run = || {
            let kv = PagedKv {
                k_cache: p.k.view(),
                v_cache: p.v.view(),
                block_tables: c.tables[i % c.tables.len()].view(),
                seq_lens: c.seq_lens.view(),
                max_seq_len: c.ctx,
            };
            i += 1;
            decode_paged(
                &gpu,
                &mut o.view_mut(),
                &c.q.view(),
                &kv,
                0.088388,
                None,
                Some(&mut ws.view_mut()),
            )
            .unwrap();
        };
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| common::time_gpu(&gpu, iters, &mut run))
        });
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = decode_benches }
criterion_main!(benches);
