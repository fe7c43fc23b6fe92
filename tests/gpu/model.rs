//! The GPU forward (vision tower, projector, decoder over the paged cache) against the f64 CPU
//! reference forward, on a tiny random model with the real head dims (72 and 128, GQA 16/2):
//! a prompt with two images prefilled in two chunks that split an image, then decode steps.

use std::path::Path;

use half::bf16;
use rand::Rng;

use ocrvl::config::ModelConfig;
use ocrvl::model::gpu_weights::ModelWeights;
use ocrvl::model::step::{HostStep, SeqChunk};
use ocrvl::model::synthetic::{write_synthetic_model, SyntheticOptions};
use ocrvl::model::text::{self, KvCache};
use ocrvl::model::vision::{self, VisionBatch, VisionBatchHost};
use ocrvl::model::weights::Checkpoint;
use ocrvl::runtime::{DType, DeviceTensor, Gemm, Gpu, Workspace};

use crate::common::ref_model::{positions_3d, RefModel};
use crate::common::{gpu, rng};

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// bf16 activations through a few layers: the logits agree to a few percent of their range
/// and point the same way (cosine), far tighter than a wrong weight, position or mask allows.
fn assert_logits_close(what: &str, got: &[f32], want: &[f64]) {
    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite logits");
    let range = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let max_diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let cos = cosine(&got, want);
    eprintln!("{what}: max |diff| {max_diff:.4} of range {range:.3}, cosine {cos:.6}");
    assert!(cos > 0.999, "{what}: cosine {cos}");
    assert!(
        max_diff <= 0.03 * range,
        "{what}: max |diff| {max_diff} over 3% of {range}"
    );
}

struct Setup {
    cfg: ModelConfig,
    reference: RefModel,
    weights: ModelWeights,
}

fn setup(g: &Gpu, dir: &Path) -> Setup {
    let cfg = ModelConfig::tiny();
    write_synthetic_model(
        dir,
        &cfg,
        &SyntheticOptions {
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    let ckpt = Checkpoint::open(dir).unwrap();
    let valid = ckpt.validate(&cfg).unwrap();
    let weights = ModelWeights::upload(g, &cfg, &valid).unwrap();
    Setup {
        reference: RefModel::load(dir),
        cfg,
        weights,
    }
}

#[test]
#[ignore = "needs GPU"]
fn gpu_forward_matches_f64_reference_through_chunks_and_decode() {
    let g = gpu();
    let dir = tempfile::tempdir().unwrap();
    let Setup {
        cfg,
        reference,
        weights,
    } = setup(&g, dir.path());
    let mut gemm = Gemm::new(&g).unwrap();
    let mut r = rng(31);
    let tok = cfg.tokens.clone();
    let vocab = cfg.text.vocab_size;
    let hidden = cfg.text.hidden_size;

    // Two images: grids (4, 6) and (2, 8) patches: 6 and 4 image tokens.
    let grids = [(4usize, 6usize), (2usize, 8usize)];
    let host_batch = VisionBatchHost::new(&grids).unwrap();
    let p = host_batch.num_patches();
    let pd = cfg.vision.patch_dim();
    let pixels: Vec<bf16> = (0..p * pd).map(|_| bf16::from_f32(r.random_range(-1.0..1.0))).collect();

    let mut ids: Vec<u32> = vec![tok.bos_token_id.unwrap_or(1), 5, 6];
    for &(h, w) in &grids {
        ids.push(tok.vision_start_token_id);
        ids.extend(std::iter::repeat_n(tok.image_token_id, h * w / 4));
        ids.push(tok.vision_end_token_id);
    }
    ids.extend([7, 8, 9]);
    let prompt_len = ids.len();
    // Three decode steps follow; their input tokens are fixed, so the reference is one pass.
    ids.extend([11, 12, 13]);

    // Reference: all rows at once.
    let pix64: Vec<f64> = pixels.iter().map(|v| v.to_f64()).collect();
    let img_ref = reference.image_tokens(&pix64, &grids);
    let (pos, _) = positions_3d(&ids, tok.image_token_id, &grids);
    let logits_ref = reference.logits(&ids, &img_ref, &pos);

    // GPU vision.
    let ws = Workspace::new(&g, 64 << 20).unwrap();
    let batch = VisionBatch::upload(&g, host_batch).unwrap();
    let dpix = DeviceTensor::from_host(&g, &[p, pd], &pixels).unwrap();
    let mut img = DeviceTensor::alloc(&g, DType::BF16, &[p / 4, hidden]).unwrap();
    img.view_mut().fill_bytes(&g, 0xFF).unwrap();
    vision::encode(
        &g,
        &mut gemm,
        &ws,
        &cfg,
        &weights,
        &batch,
        &dpix.view(),
        &mut img.view_mut(),
    )
    .unwrap();
    let img_got: Vec<f64> = img.to_host::<bf16>(&g).unwrap().iter().map(|v| v.to_f64()).collect();
    let range = img_ref.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = img_got
        .iter()
        .zip(&img_ref)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "image tokens: max |diff| {diff:.4} of range {range:.3}, cosine {:.6}",
        cosine(&img_got, &img_ref)
    );
    assert!(
        img_got.iter().all(|v| v.is_finite()),
        "image tokens: unwritten or non-finite"
    );
    assert!(
        cosine(&img_got, &img_ref) > 0.999 && diff <= 0.03 * range,
        "image tokens differ"
    );

    // GPU decoder: a pool 3x larger than needed, block size 16, a shuffled block table.
    let block_size = 16;
    let needed = ids.len().div_ceil(block_size);
    let mut cache = KvCache::new(&g, &cfg, 3 * needed, block_size).unwrap();
    let mut blocks: Vec<i32> = (0..(3 * needed) as i32).collect();
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, r.random_range(0..=i));
    }
    let table: Vec<i32> = blocks[..needed].to_vec();
    let mut err = DeviceTensor::zeros(&g, DType::I32, &[1]).unwrap();

    // Steps: [0, 9) splits image 1 (tokens 4..10); then the rest of the prompt; then decodes.
    let mut spans = vec![(0usize, 9usize), (9, prompt_len)];
    spans.extend((prompt_len..ids.len()).map(|t| (t, t + 1)));
    let image_positions: Vec<usize> = (0..ids.len()).filter(|&t| ids[t] == tok.image_token_id).collect();
    let mut ws = ws;
    for (step, &(a, b)) in spans.iter().enumerate() {
        ws.reset();
        let slots: Vec<usize> = image_positions
            .iter()
            .filter(|&&t| t >= a && t < b)
            .map(|&t| t - a)
            .collect();
        let first_feature = image_positions.iter().filter(|&&t| t < a).count();
        let chunk = SeqChunk {
            ids: ids[a..b].to_vec(),
            positions: [0, 1, 2].map(|ax| pos[ax][a..b].iter().map(|&v| v as i32).collect()),
            start: a,
            block_table: table.clone(),
            is_decode: b - a == 1 && a >= prompt_len,
            wants_logits: true,
            image_slots: slots.clone(),
        };
        let host = HostStep::build(&[chunk], block_size).unwrap();
        let dstep = host.upload(&g).unwrap();
        let feats = if slots.is_empty() {
            None
        } else {
            Some(img.view().narrow0(first_feature, slots.len()).unwrap())
        };
        let inputs = dstep.inputs(feats).unwrap();
        let mut logits = DeviceTensor::alloc(&g, DType::F32, &[1, vocab]).unwrap();
        logits.view_mut().fill_bytes(&g, 0xFF).unwrap();
        text::forward(
            &g,
            &mut gemm,
            &ws,
            &cfg,
            &weights,
            &mut cache,
            &inputs,
            &mut err.view_mut(),
            &mut logits.view_mut(),
        )
        .unwrap();
        let got = logits.to_host::<f32>(&g).unwrap();
        let row = b - 1;
        assert_logits_close(
            &format!("step {step} (positions {a}..{b})"),
            &got,
            &logits_ref[row * vocab..(row + 1) * vocab],
        );
    }
    assert_eq!(
        err.to_host::<i32>(&g).unwrap()[0],
        0,
        "embedding reported an out-of-range id"
    );
}
