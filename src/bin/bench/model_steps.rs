//! The model steps of `bench`: one vision pass, one decode step and one prefill step, timed
//! with CUDA events against their floors, on weights loaded for the purpose and freed after.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use ocrvl::config::{EnvFlags, ModelConfig};
use ocrvl::model::gpu_weights::ModelWeights;
use ocrvl::model::names::expected_tensors;
use ocrvl::model::random_weights::open_checkpoint;
use ocrvl::model::step::{HostStep, SeqChunk};
use ocrvl::model::text::{self, KvCache};
use ocrvl::model::vision::{self, VisionBatch, VisionBatchHost};
use ocrvl::runtime::{DType, DeviceTensor, Gemm, Gpu, GpuTimer, Workspace};

use crate::decode_overlap::decode_overlap;
use crate::BenchArgs;

/// The ceilings measured on the GPU host's H100 (GPU_WORKFLOW.md, KINDS.md).
const H100_COPY_GBPS: f64 = 2960.0;
const H100_BF16_TFLOPS: f64 = 798.0;

fn random_bf16(gpu: &Gpu, dims: &[usize], seed: u64) -> anyhow::Result<DeviceTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<bf16> = (0..n).map(|_| bf16::from_f32(rng.random_range(-1.0..1.0))).collect();
    Ok(DeviceTensor::from_host(gpu, dims, &v)?)
}

/// An even×even patch grid with `patches` patches, as square as possible.
fn grid_for(patches: usize) -> anyhow::Result<(usize, usize)> {
    let mut h = (patches as f64).sqrt() as usize;
    while h >= 2 {
        if h % 2 == 0 && patches % h == 0 && (patches / h) % 2 == 0 {
            return Ok((patches / h, h));
        }
        h -= 1;
    }
    bail!("--vision-patches {patches}: no even x even patch grid has that many patches")
}

/// Random token ids, decode or prefill chunks of `n` sequences of `context` cached tokens each.
fn chunks(
    n: usize,
    context: usize,
    decode: bool,
    block_size: usize,
    vocab: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<SeqChunk> {
    let len = if decode { 1 } else { context };
    let start = if decode { context } else { 0 };
    let blocks = (start + len).div_ceil(block_size);
    (0..n)
        .map(|s| SeqChunk {
            ids: (0..len).map(|_| rng.random_range(0..vocab as u32)).collect(),
            positions: [0, 1, 2].map(|_| (start..start + len).map(|p| p as i32).collect()),
            start,
            block_table: ((s * blocks) as i32..((s + 1) * blocks) as i32).collect(),
            is_decode: decode,
            wants_logits: true,
            image_slots: Vec::new(),
        })
        .collect()
}

/// The model steps against their floors; prints a table and returns the JSON fields. Frees
/// everything it allocated before returning, so that the engine sizes its KV cache from the
/// memory left.
pub(crate) fn model_steps(args: &BenchArgs, gpu: &Gpu, cfg: &ModelConfig, dir: &Path) -> anyhow::Result<Value> {
    let t = Instant::now();
    let ckpt = open_checkpoint(dir, &expected_tensors(cfg), args.engine.load_format)?;
    let valid = ckpt.validate(cfg)?;
    let mut weights = ModelWeights::upload(gpu, cfg, &valid)?;
    // The attention kernels the engine would pick (FLAGS_flash_attn_version).
    let env = EnvFlags::from_env()?;
    weights.attention = env.flash_attn_version.resolve(gpu)?.into();
    gpu.synchronize()?;
    let load_s = t.elapsed().as_secs_f64();
    println!(
        "weights: {:.2} GB on the GPU in {load_s:.2} s",
        weights.total_bytes() as f64 / 1e9
    );

    let mut gemm = Gemm::new(gpu)?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (b, c) = (args.engine.max_num_seqs, args.context);
    let block_size = 64;
    let prefill_seqs = (args.engine.max_num_batched_tokens / c).max(1);
    let prefill_tokens = prefill_seqs * c;
    let p = args.vision_patches;
    let ws_bytes = vision::workspace_bytes(cfg, p)
        .max(text::workspace_bytes(cfg, b, b, b))
        .max(text::workspace_bytes(cfg, prefill_tokens, prefill_seqs, 0));
    let mut ws = Workspace::new(gpu, ws_bytes)?;

    // Vision: one image of `p` patches (values do not change the speed of dense kernels, but
    // random data keeps the GEMMs honest).
    let (gh, gw) = grid_for(p)?;
    let batch = VisionBatch::upload(gpu, VisionBatchHost::new(&[(gh, gw)])?)?;
    let pixels = random_bf16(gpu, &[p, cfg.vision.patch_dim()], 3)?;
    let mut image_tokens = DeviceTensor::alloc(gpu, DType::BF16, &[p / 4, cfg.text.hidden_size])?;
    let vision_ms = GpuTimer::time_mean_ms(gpu, 2, 10, || {
        ws.reset();
        vision::encode(
            gpu,
            &mut gemm,
            &ws,
            cfg,
            &weights,
            &batch,
            &pixels.view(),
            &mut image_tokens.view_mut(),
        )
    })?;
    let v = &cfg.vision;
    let linear_per_patch = 2.0
        * (v.patch_dim() * v.hidden_size
            + v.num_hidden_layers * (4 * v.hidden_size * v.hidden_size + 2 * v.hidden_size * v.intermediate_size))
            as f64;
    let attn = 4.0 * (p * p * v.hidden_size * v.num_hidden_layers) as f64;
    let proj = 2.0 * (p / 4) as f64 * (v.merged_width() * (v.merged_width() + cfg.text.hidden_size)) as f64;
    let vision_tflops = (linear_per_patch * p as f64 + attn + proj) / (vision_ms * 1e-3) / 1e12;

    // Decoder: a cache for `b` sequences of c + 1 tokens (or the prefill batch, if larger),
    // filled with a constant (attention's speed does not depend on the values).
    let decode_blocks = (c + 1).div_ceil(block_size);
    let num_blocks = (b * decode_blocks).max(prefill_seqs * c.div_ceil(block_size));
    let mut cache = KvCache::new(gpu, cfg, num_blocks, block_size)?;
    for t in cache.k.iter_mut().chain(cache.v.iter_mut()) {
        t.view_mut().fill_bytes(gpu, 0x3C)?;
    }
    let mut err = DeviceTensor::zeros(gpu, DType::I32, &[1])?;
    let vocab = cfg.text.vocab_size;
    let mut time_step = |gemm: &mut Gemm, chunks: &[SeqChunk]| -> anyhow::Result<f64> {
        let host = HostStep::build(chunks, block_size)?;
        let step = host.upload(gpu)?;
        let inputs = step.inputs(None)?;
        let mut logits = DeviceTensor::alloc(gpu, DType::F32, &[host.logits_rows.len(), vocab])?;
        Ok(GpuTimer::time_mean_ms(gpu, 2, 10, || {
            ws.reset();
            text::forward(
                gpu,
                gemm,
                &ws,
                cfg,
                &weights,
                &mut cache,
                &inputs,
                &mut err.view_mut(),
                &mut logits.view_mut(),
            )
        })?)
    };
    // The decode step's GEMMs tuned as the engine's decode graphs tune them (the warm-up
    // calls time the candidates; OCRVL_GEMM_AUTOTUNE as for the engine).
    gemm.set_autotune(if env.gemm_autotune { usize::MAX } else { 0 });
    let decode_chunks = chunks(b, c, true, block_size, vocab, &mut rng);
    let decode_ms = time_step(&mut gemm, &decode_chunks)?;
    gemm.set_autotune(0);
    let prefill_ms = time_step(&mut gemm, &chunks(prefill_seqs, c, false, block_size, vocab, &mut rng))?;
    drop(ws);
    // The same decode step as captured graphs: whole, and as two halves in turn or side by
    // side on two streams (a batch of one has no halves).
    let overlap = match b >= 2 {
        true => Some(decode_overlap(
            gpu,
            cfg,
            &weights,
            &mut cache,
            &decode_chunks,
            block_size,
            env.gemm_autotune,
        )?),
        false => None,
    };

    let text_weight_bytes = weights
        .text
        .iter()
        .map(|l| l.qkv_w.nbytes() + l.o_w.nbytes() + l.gate_up_w.nbytes() + l.down_w.nbytes())
        .sum::<usize>()
        + weights.lm_head().numel() * 2;
    let kv_bytes = b * (c + 1) * KvCache::bytes_per_block(cfg, 1);
    let decode_floor_ms = (text_weight_bytes + kv_bytes) as f64 / (H100_COPY_GBPS * 1e9) * 1e3;

    println!();
    println!("| measurement | time | rate | floor / ceiling |");
    println!("|---|---|---|---|");
    println!(
        "| vision tower + projector, one {gh}x{gw}-patch image ({p} patches) | {vision_ms:.3} ms | {:.1} images/s, {vision_tflops:.0} TFLOP/s | {:.0}% of {H100_BF16_TFLOPS} TFLOP/s |",
        1e3 / vision_ms,
        100.0 * vision_tflops / H100_BF16_TFLOPS
    );
    println!(
        "| decoder decode step, batch {b}, {c} cached tokens each | {decode_ms:.3} ms | {:.0} tokens/s | {decode_floor_ms:.3} ms to read weights + KV once at {H100_COPY_GBPS} GB/s ({:.0}%) |",
        b as f64 / (decode_ms * 1e-3),
        100.0 * decode_floor_ms / decode_ms
    );
    println!(
        "| decoder prefill step, {prefill_seqs} x {c} tokens | {prefill_ms:.3} ms | {:.0} tokens/s | |",
        prefill_tokens as f64 / (prefill_ms * 1e-3)
    );
    if let Some(overlap) = &overlap {
        let (h1, h2) = (b / 2, b - b / 2);
        for (what, ms) in [
            (format!("batch {b}, one graph"), overlap.whole_ms),
            (
                format!("halves {h1} + {h2} in turn, one stream"),
                overlap.halves_serial_ms,
            ),
            (
                format!("halves {h1} + {h2} side by side, two streams"),
                overlap.halves_parallel_ms,
            ),
        ] {
            println!(
                "| decode step graph replay, {what} | {ms:.3} ms | {:.0} tokens/s | {:.0}% of the floor's speed |",
                b as f64 / (ms * 1e-3),
                100.0 * decode_floor_ms / ms
            );
        }
    }
    println!("| weight load (open, validate, fuse, upload) | {load_s:.2} s | | |");
    Ok(json!({
        "max_num_seqs": b,
        "context": c,
        "vision_patches": p,
        "weights_gb": weights.total_bytes() as f64 / 1e9,
        "load_s": load_s,
        "vision_ms": vision_ms,
        "vision_tflops": vision_tflops,
        "decode_step_ms": decode_ms,
        "decode_step_floor_ms": decode_floor_ms,
        "decode_graph_whole_ms": overlap.as_ref().map(|o| o.whole_ms),
        "decode_graph_halves_serial_ms": overlap.as_ref().map(|o| o.halves_serial_ms),
        "decode_graph_halves_parallel_ms": overlap.as_ref().map(|o| o.halves_parallel_ms),
        "decode_tokens_per_s": b as f64 / (decode_ms * 1e-3),
        "prefill_step_ms": prefill_ms,
        "prefill_tokens": prefill_tokens,
    }))
}
