//! Prefill attention in TFLOP/s, FLOPs counted as FlashAttention does: 4 · s_q · s_k · heads · d
//! per sequence, halved when causal, d = 72 counted as 72 (not the padded width), against the
//! measured bf16 GEMM rate. Text: 16 query heads over 2 kv heads, d = 128, q a column slice
//! of the fused qkv buffer, K/V in the paged cache (block_size 64). Vision: 16 heads, d = 72,
//! q/k/v column slices of the fused [total, 3456] buffer.
//! `tools/gpu/baseline_attention.py` times torch's SDPA (flash and cuDNN) on the same shapes.
//! Each case runs the FA2 path, then (on an sm_90 GPU with an sm_90a build) the FA3 path with
//! each mainloop: `<case>_fa3` (the default, ping-pong), `<case>_fa3_overlap` (intra-warpgroup
//! overlap only) and `<case>_fa3_v1` (the first, serial mainloop); elsewhere a line says why the
//! FA3 rows are missing. The vision `qk80_fa3` rows run each FA3 vision tile (`Fa3VisionTile`),
//! named by a suffix before the mainloop's: none for M128 (kBlockM 128, 2 K/V stages), `_s3` for
//! M128Stages3 (3 stages), `_m192` for M192 (kBlockM 192, 3 consumer warpgroups); e.g.
//! `vision_4x5040_d72_qk80_fa3_m192_overlap`. The `pv128` rows run M128 only. The
//! `vision_1x7200_d80` rows are ERNIE-4.5-VL's ViT on one page (16 heads of 80): FA2, then FA3
//! M128 and M192 with every mainloop.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;
use ocrvl::kernels::attention::{
    fa3_unavailable_reason, prefill_paged_with, vision_varlen_with, AttentionKernels, AttentionVersion, Fa3Mainloop,
    Fa3VisionTile, PagedKv, PrefillOptions, Varlen, VisionQkv, VisionTile,
};
use ocrvl::runtime::{DeviceTensor, Gpu};

const HQ: usize = 16;
const HKV: usize = 2;
const D: usize = 128;
const BLOCK_SIZE: usize = 64;
const HV: usize = 16;
const DV: usize = 72;

/// Deterministic non-zero values in [-1, 1) (zeros would time unlike real data).
fn filler(n: usize, salt: u32) -> Vec<bf16> {
    (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(salt.wrapping_mul(40503))
                >> 8;
            bf16::from_f32((h % 2001) as f32 / 1000.0 - 1.0)
        })
        .collect()
}

fn cu_seqlens(lens: &[usize]) -> Vec<i32> {
    let mut cu = vec![0i32];
    for &l in lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    cu
}

/// Times `run`, prints its TFLOP/s line and registers the criterion bench.
fn measure(c: &mut Criterion, gpu: &Gpu, name: &str, flops: f64, mut run: impl FnMut()) {
    let ms = common::mean_ms(gpu, 3, 20, &mut run);
    common::report_tflops(&format!("attention {name}"), flops, ms, "TFLOP/s bf16");
    c.bench_function(name, |b| b.iter_custom(|iters| common::time_gpu(gpu, iters, &mut run)));
}

/// Fresh prompts (q_len == seqused_k) of `lens`, identity block tables.
fn bench_text(c: &mut Criterion, gpu: &Gpu, name: &str, lens: &[usize], causal: bool, kernels: AttentionKernels) {
    let total: usize = lens.iter().sum();
    let fused_cols = (HQ + 2 * HKV) * D;
    let qkv = DeviceTensor::from_host(gpu, &[total, fused_cols], &filler(total * fused_cols, 1)).unwrap();
    let blocks_per_seq: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).collect();
    let num_blocks: usize = blocks_per_seq.iter().sum();
    let max_blocks = blocks_per_seq.iter().copied().max().unwrap();
    let cache_len = num_blocks * HKV * BLOCK_SIZE * D;
    let dims = [num_blocks, HKV, BLOCK_SIZE, D];
    let kc = DeviceTensor::from_host(gpu, &dims, &filler(cache_len, 2)).unwrap();
    let vc = DeviceTensor::from_host(gpu, &dims, &filler(cache_len, 3)).unwrap();
    let mut tables = vec![0i32; lens.len() * max_blocks];
    let mut next = 0;
    for (s, &nb) in blocks_per_seq.iter().enumerate() {
        for j in 0..nb {
            tables[s * max_blocks + j] = next;
            next += 1;
        }
    }
    let bt = DeviceTensor::from_host(gpu, &[lens.len(), max_blocks], &tables).unwrap();
    let used: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let used = DeviceTensor::from_host(gpu, &[lens.len()], &used).unwrap();
    let cu = DeviceTensor::from_host(gpu, &[lens.len() + 1], &cu_seqlens(lens)).unwrap();
    let mut out = DeviceTensor::alloc(gpu, ocrvl::runtime::DType::BF16, &[total, HQ * D]).unwrap();
    let q = qkv.view().columns(0, HQ * D).unwrap();
    let kv = PagedKv {
        k_cache: kc.view(),
        v_cache: vc.view(),
        block_tables: bt.view(),
        seqused_k: used.view(),
    };
    let queries = Varlen {
        cu_seqlens: cu.view(),
        max_seqlen: lens.iter().copied().max().unwrap(),
    };
    let opts = PrefillOptions {
        scale: 1.0 / (D as f32).sqrt(),
        causal,
        kernels,
    };
    let run = || prefill_paged_with(gpu, &mut out.view_mut(), None, &q, &queries, &kv, opts).unwrap();
    let flops: f64 = lens
        .iter()
        .map(|&l| 4.0 * (l * l * HQ * D) as f64 * if causal { 0.5 } else { 1.0 })
        .sum();
    measure(c, gpu, name, flops, run);
}

#[allow(clippy::too_many_arguments)]
fn bench_vision(
    c: &mut Criterion,
    gpu: &Gpu,
    name: &str,
    lens: &[usize],
    head_dim: usize,
    tile: VisionTile,
    kernels: AttentionKernels,
) {
    let total: usize = lens.iter().sum();
    let cols = HV * head_dim;
    let qkv = DeviceTensor::from_host(gpu, &[total, 3 * cols], &filler(total * 3 * cols, 4)).unwrap();
    let cu = DeviceTensor::from_host(gpu, &[lens.len() + 1], &cu_seqlens(lens)).unwrap();
    let mut out = DeviceTensor::alloc(gpu, ocrvl::runtime::DType::BF16, &[total, cols]).unwrap();
    let all = qkv.view();
    let views = VisionQkv {
        q: all.columns(0, cols).unwrap(),
        k: all.columns(cols, cols).unwrap(),
        v: all.columns(2 * cols, cols).unwrap(),
        num_heads: HV,
    };
    let images = Varlen {
        cu_seqlens: cu.view(),
        max_seqlen: lens.iter().copied().max().unwrap(),
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    let run = || vision_varlen_with(gpu, &mut out.view_mut(), &views, &images, scale, tile, kernels).unwrap();
    let flops: f64 = lens.iter().map(|&l| 4.0 * (l * l * HV * head_dim) as f64).sum();
    measure(c, gpu, name, flops, run);
}

/// Row-name suffix of an FA3 mainloop.
fn mainloop_suffix(m: Fa3Mainloop) -> &'static str {
    match m {
        Fa3Mainloop::PingPong => "",
        Fa3Mainloop::Overlap => "_overlap",
        Fa3Mainloop::Serial => "_v1",
    }
}

/// Row-name suffix of an FA3 vision tile.
fn vision_tile_suffix(t: Fa3VisionTile) -> &'static str {
    match t {
        Fa3VisionTile::M128 => "",
        Fa3VisionTile::M128Stages3 => "_s3",
        Fa3VisionTile::M192 => "_m192",
    }
}

fn attention_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let fa3 = match fa3_unavailable_reason(&gpu) {
        None => true,
        Some(why) => {
            println!("attention: FA3 rows skipped: {why}");
            false
        }
    };
    let text: [(&str, &[usize], bool); 4] = [
        ("prefill_causal_1x8192", &[8192], true),
        ("prefill_causal_4x2048", &[2048; 4], true),
        ("prefill_noncausal_1x8192", &[8192], false),
        ("prefill_noncausal_4x2048", &[2048; 4], false),
    ];
    for (name, lens, causal) in text {
        bench_text(c, &gpu, name, lens, causal, AttentionVersion::Fa2.into());
        if fa3 {
            for m in Fa3Mainloop::ALL {
                let row = format!("{name}_fa3{}", mainloop_suffix(m));
                bench_text(c, &gpu, &row, lens, causal, AttentionKernels::fa3(m, None));
            }
        }
    }
    let vision: [(&str, &[usize], VisionTile, AttentionVersion); 7] = [
        (
            "vision_4x5040_d72_qk80",
            &[5040; 4],
            VisionTile::Qk80,
            AttentionVersion::Fa2,
        ),
        (
            "vision_4x5040_d72_pad96",
            &[5040; 4],
            VisionTile::Pad96,
            AttentionVersion::Fa2,
        ),
        (
            "vision_4x5040_d72_qk80_fa3",
            &[5040; 4],
            VisionTile::Qk80,
            AttentionVersion::Fa3,
        ),
        (
            "vision_4x5040_d72_pv128_fa3",
            &[5040; 4],
            VisionTile::Pv128,
            AttentionVersion::Fa3,
        ),
        ("vision_1x576_d72_qk80", &[576], VisionTile::Qk80, AttentionVersion::Fa2),
        (
            "vision_1x576_d72_qk80_fa3",
            &[576],
            VisionTile::Qk80,
            AttentionVersion::Fa3,
        ),
        (
            "vision_1x576_d72_pv128_fa3",
            &[576],
            VisionTile::Pv128,
            AttentionVersion::Fa3,
        ),
    ];
    for (name, lens, tile, version) in vision {
        if version == AttentionVersion::Fa2 {
            bench_vision(c, &gpu, name, lens, DV, tile, version.into());
        } else if fa3 {
            let tiles: &[Fa3VisionTile] = if tile == VisionTile::Qk80 {
                &Fa3VisionTile::ALL
            } else {
                &[Fa3VisionTile::M128]
            };
            for &t in tiles {
                for m in Fa3Mainloop::ALL {
                    let row = format!("{name}{}{}", vision_tile_suffix(t), mainloop_suffix(m));
                    bench_vision(c, &gpu, &row, lens, DV, tile, AttentionKernels::fa3(m, Some(t)));
                }
            }
        }
    }
    // ERNIE-4.5-VL's ViT: 16 heads of 80, one 1000x1400 page (100 x 72 patches): FA2, then FA3
    // with the tiles built at d 80 (M128, the default; M192) and every mainloop.
    let page = [7200usize];
    bench_vision(
        c,
        &gpu,
        "vision_1x7200_d80",
        &page,
        80,
        VisionTile::Qk80,
        AttentionVersion::Fa2.into(),
    );
    if fa3 {
        for t in [Fa3VisionTile::M128, Fa3VisionTile::M192] {
            for m in Fa3Mainloop::ALL {
                let row = format!("vision_1x7200_d80_fa3{}{}", vision_tile_suffix(t), mainloop_suffix(m));
                bench_vision(
                    c,
                    &gpu,
                    &row,
                    &page,
                    80,
                    VisionTile::Qk80,
                    AttentionKernels::fa3(m, Some(t)),
                );
            }
        }
    }
}

criterion_group! { name = benches; config = common::criterion(); targets = attention_benches }
criterion_main!(benches);
