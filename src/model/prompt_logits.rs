//! One sequence's whole prompt through the model in a single prefill step, with logits for
//! every position: the path the fidelity checks against transformers use (teacher forcing).

use half::bf16;

use super::gpu_weights::ModelWeights;
use super::step::{HostStep, SeqChunk};
use super::text::{self, KvCache};
use super::vision::{self, VisionBatch, VisionBatchHost};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::embedding::take_embedding_error;
use crate::runtime::{DType, DeviceTensor, Gemm, Gpu, Workspace};

/// Block size of the throw-away cache used here.
const BLOCK_SIZE: usize = 64;

/// f32 logits `[ids.len(), vocab]`, row-major.
///
/// - `positions`: M-RoPE ids `[3, S]` row-major (T, H, W rows).
/// - `pixels`: bf16 `[patches, 3·14·14]` of the images in prompt order; `grids`: (h, w) in
///   patches. The image placeholders of `ids` (the config's image token) take the projected
///   image tokens in order.
pub fn prompt_logits(
    gpu: &Gpu,
    cfg: &ModelConfig,
    weights: &ModelWeights,
    ids: &[u32],
    positions: &[i32],
    pixels: &[bf16],
    grids: &[(usize, usize)],
) -> Result<Vec<f32>> {
    const OP: &str = "prompt logits";
    let s = ids.len();
    if s == 0 || positions.len() != 3 * s {
        return Err(Error::invalid(
            OP,
            format!("{s} ids with {} position values", positions.len()),
        ));
    }
    let mut gemm = Gemm::new(gpu)?;
    let vision_host = VisionBatchHost::new(grids)?;
    let p = vision_host.num_patches();
    if pixels.len() != p * cfg.vision.patch_dim() {
        return Err(Error::invalid(
            OP,
            format!("{} pixel values for {p} patches", pixels.len()),
        ));
    }
    let slots: Vec<usize> = (0..s).filter(|&t| ids[t] == cfg.tokens.image_token_id).collect();
    if slots.len() != p / 4 {
        return Err(Error::invalid(
            OP,
            format!("{} image placeholders for {} image tokens", slots.len(), p / 4),
        ));
    }
    let ws_bytes = vision::workspace_bytes(cfg, p).max(text::workspace_bytes(cfg, s, s, 0));
    let mut ws = Workspace::new(gpu, ws_bytes)?;
    let image_tokens = if p > 0 {
        let batch = VisionBatch::upload(gpu, vision_host)?;
        let dpix = DeviceTensor::from_host(gpu, &[p, cfg.vision.patch_dim()], pixels)?;
        let mut out = DeviceTensor::alloc(gpu, DType::BF16, &[p / 4, cfg.text.hidden_size])?;
        vision::encode(
            gpu,
            &mut gemm,
            &ws,
            cfg,
            weights,
            &batch,
            &dpix.view(),
            &mut out.view_mut(),
        )?;
        Some(out)
    } else {
        None
    };
    ws.reset();

    let blocks = s.div_ceil(BLOCK_SIZE);
    let mut cache = KvCache::new(gpu, cfg, blocks, BLOCK_SIZE)?;
    let chunk = SeqChunk {
        ids: ids.to_vec(),
        positions: [0, 1, 2].map(|a| positions[a * s..(a + 1) * s].to_vec()),
        start: 0,
        block_table: (0..blocks as i32).collect(),
        is_decode: false,
        wants_logits: true,
        image_slots: slots,
    };
    let mut host = HostStep::build(&[chunk], BLOCK_SIZE)?;
    host.logits_rows = (0..s as i32).collect();
    let step = host.upload(gpu)?;
    let inputs = step.inputs(image_tokens.as_ref().map(DeviceTensor::view))?;
    let mut err = DeviceTensor::zeros(gpu, DType::I32, &[1])?;
    let mut logits = DeviceTensor::alloc(gpu, DType::F32, &[s, cfg.text.vocab_size])?;
    text::forward(
        gpu,
        &mut gemm,
        &ws,
        cfg,
        weights,
        &mut cache,
        &inputs,
        &mut err.view_mut(),
        &mut logits.view_mut(),
    )?;
    take_embedding_error(gpu, &mut err.view_mut(), cfg.text.vocab_size)?;
    logits.to_host::<f32>(gpu)
}
