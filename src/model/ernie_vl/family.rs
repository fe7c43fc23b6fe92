//! ERNIE-4.5-VL behind the model boundary ([`ModelFamily`]): the ViT and resampler
//! ([`super::vision`]), the MoE language model ([`super::decoder`]), Qwen2-VL-rule 3D positions
//! with ERNIE's placeholder id (spec §3.9: the rule PaddleOCR-VL uses) and the hub inventory.
//!
//! Two things the step needs beyond [`StepInputs`]:
//! - each token's expert pool, computed on the device from the step's ids
//!   ([`crate::kernels::moe::token_pool`]: the decode tokens text, the placeholder and the
//!   image/video start/end markers vision, as transformers routes them). A prefill chunk that
//!   recomputes generated tokens (after a preemption) would route a generated marker id to the
//!   vision pool where transformers, which types generated tokens text, would not;
//! - the MoE block's scratch, allocated by [`ModelFamily::reserve`] for the engine's largest
//!   step (`--max-num-batched-tokens`) before the KV cache takes the memory left, so a step
//!   allocates nothing (and a captured graph never sees an allocation); a caller that skips
//!   `reserve` (a test) gets it allocated, and grown, on the first step that needs it.
//!
//! Not yet joined to the service: its image preprocessing (merge-block patch order,
//! [`super::image`]) and chat template are ERNIE's own, so `family::load` still refuses an
//! ERNIE directory; [`ErnieVl::load`] is what tests and tools use until then.

use std::path::Path;
use std::sync::Mutex;

use super::checkpoint::validate;
use super::decoder;
use super::moe_block::MoeScratch;
use super::names::expected_tensors;
use super::text_weights::{ErnieTextWeights, FeedForward};
use super::vision::{self, ErnieVisionBatch, ErnieVisionBatchHost, ErnieVisionWeights};
use crate::config::{ErnieVlConfig, ModelConfig, Quantization};
use crate::error::{Error, Result};
use crate::kernels::attention::AttentionKernels;
use crate::kernels::decode::decode_kernel_supports;
use crate::kernels::moe::token_pool;
use crate::model::family::{ModelFamily, PixelWriter, PromptLayout};
use crate::model::names::TensorSpec;
use crate::model::random_weights::{open_checkpoint, LoadFormat};
use crate::model::text::{DecodePath, KvCache, StepInputs};
use crate::preprocess::image::ImageGrid;
use crate::preprocess::{mrope_positions, PreprocessError};
use crate::runtime::{DType, DeviceTensor, Gemm, Gpu, TensorViewMut, Workspace};

/// The smallest MoE scratch allocated (tokens): a prefill chunk of this size needs no regrowth.
const MIN_MOE_TOKENS: usize = 2048;

pub struct ErnieVl {
    cfg: ErnieVlConfig,
    vision: ErnieVisionWeights,
    text: ErnieTextWeights,
    /// The attention kernels of the text decoder and the ViT (FA2 or FA3, from the flags).
    attention: AttentionKernels,
    /// Ids routed to the vision pool.
    vision_ids: Vec<u32>,
    moe: Mutex<Option<MoeScratch>>,
    /// i32 `[0, 1, …, n]`: the decode rows' query offsets when they go through the prefill
    /// kernel (the decode kernel builds 8 query heads per KV head only).
    iota: Mutex<Option<DeviceTensor>>,
}

impl ErnieVl {
    /// Opens the checkpoint in `dir` (config.json read there), checks it against the inventory
    /// and uploads it.
    pub fn load(gpu: &Gpu, dir: &Path, attention: AttentionKernels) -> Result<ErnieVl> {
        Self::load_with(gpu, dir, attention, LoadFormat::Files)
    }

    /// [`ErnieVl::load`] with the weights from `format` (`--load-format dummy` makes them up).
    pub fn load_with(gpu: &Gpu, dir: &Path, attention: AttentionKernels, format: LoadFormat) -> Result<ErnieVl> {
        Self::load_quantized(gpu, dir, attention, format, Quantization::None)
    }

    /// [`ErnieVl::load_with`] with the experts stored as `quantization` says (`wint8`: int8
    /// with per-row scales, quantised here from the bf16 checkpoint).
    pub fn load_quantized(
        gpu: &Gpu,
        dir: &Path,
        attention: AttentionKernels,
        format: LoadFormat,
        quantization: Quantization,
    ) -> Result<ErnieVl> {
        let cfg = ErnieVlConfig::from_dir(dir)?;
        let ckpt = open_checkpoint(dir, &expected_tensors(&cfg), format)?;
        let host = validate(&ckpt, &cfg)?;
        let vision = ErnieVisionWeights::upload(gpu, &cfg, &host)?;
        let text = ErnieTextWeights::upload(gpu, &cfg, &host, quantization)?;
        let t = &cfg.tokens;
        let mut vision_ids = vec![
            t.image_token_id,
            t.image_start_token_id,
            t.image_end_token_id,
            t.video_start_token_id,
            t.video_end_token_id,
        ];
        vision_ids.extend(t.video_token_id);
        Ok(ErnieVl {
            cfg,
            vision,
            text,
            attention,
            vision_ids,
            moe: Mutex::new(None),
            iota: Mutex::new(None),
        })
    }

    pub fn ernie_config(&self) -> &ErnieVlConfig {
        &self.cfg
    }

    fn merge(&self) -> usize {
        self.cfg.vision.spatial_merge_size
    }

    /// Whether decode rows take the paged decode kernel: head_dim 128 and a GQA group of 1..8
    /// (28B-A3B: 20 over 4). Otherwise they go through the prefill kernel, one query row each,
    /// which reads every K/V tile once per query head.
    fn decode_kernel_fits(&self) -> bool {
        let t = &self.cfg.text;
        decode_kernel_supports(t.num_attention_heads, t.num_key_value_heads, t.head_dim)
    }

    /// Makes the iota at least `[0..=rows]` long.
    fn ensure_iota(&self, gpu: &Gpu, rows: usize) -> Result<()> {
        let mut guard = self
            .iota
            .lock()
            .map_err(|_| Error::invalid("ernie iota", "the lock is poisoned"))?;
        if guard.as_ref().is_none_or(|t| t.numel() < rows + 1) {
            let n = rows.max(MIN_MOE_TOKENS);
            let values: Vec<i32> = (0..=n as i32).collect();
            *guard = Some(DeviceTensor::from_host(gpu, &[n + 1], &values)?);
        }
        Ok(())
    }

    /// The shape every MoE layer shares (the first MoE layer's; all are built alike).
    fn moe_shape(&self) -> Option<&super::moe_block::MoeBlockShape> {
        self.text.layers.iter().find_map(|l| match &l.ffn {
            FeedForward::Moe(m) => Some(&m.shape),
            FeedForward::Dense(_) => None,
        })
    }
}

/// The 3D positions and image spans of a prompt (spec §3.9): runs of `<|IMAGE_PLACEHOLDER|>`
/// are the images' merged tokens; the start/end markers are text here (they go to the vision
/// experts, which is a separate matter: `token_pools`).
pub fn layout_prompt(
    cfg: &ErnieVlConfig,
    ids: &[u32],
    grids: &[ImageGrid],
) -> std::result::Result<PromptLayout, PreprocessError> {
    let positions = mrope_positions(ids, cfg.tokens.image_token_id, grids, cfg.vision.spatial_merge_size)?;
    Ok(PromptLayout { positions })
}

impl ModelFamily for ErnieVl {
    fn name(&self) -> &'static str {
        "ERNIE-4.5-VL"
    }

    fn config(&self) -> Option<&ModelConfig> {
        None
    }

    fn vocab_size(&self) -> usize {
        self.cfg.text.vocab_size
    }

    fn eos_token_id(&self) -> Option<u32> {
        self.cfg.tokens.eos_token_ids.first().copied()
    }

    fn layout_prompt(&self, ids: &[u32], grids: &[ImageGrid]) -> std::result::Result<PromptLayout, PreprocessError> {
        layout_prompt(&self.cfg, ids, grids)
    }

    fn image_tokens(&self, grid: ImageGrid) -> usize {
        grid.num_merged_tokens(self.merge())
    }

    fn patch_values(&self) -> usize {
        self.cfg.vision.patch_dim()
    }

    fn feature_width(&self) -> usize {
        self.cfg.text.hidden_size
    }

    fn workspace_bytes(&self, tokens: usize, logit_rows: usize, decode_seqs: usize, encoder_patches: usize) -> usize {
        // The decoder's workspace plus the step's token pools.
        (decoder::workspace_bytes(&self.cfg, tokens, logit_rows, decode_seqs) + tokens * 4 + 256)
            .max(vision::workspace_bytes(&self.cfg, encoder_patches))
    }

    fn encode_images(
        &self,
        gpu: &Gpu,
        gemm: &mut Gemm,
        ws: &Workspace,
        grids: &[ImageGrid],
        write_pixels: &mut PixelWriter<'_>,
    ) -> Result<DeviceTensor> {
        if let Some(g) = grids.iter().find(|g| g.t != 1) {
            return Err(Error::invalid(
                "ernie encode",
                format!("a grid with t = {} (video input is not supported)", g.t),
            ));
        }
        let hw: Vec<(usize, usize)> = grids.iter().map(|g| (g.h, g.w)).collect();
        let batch = ErnieVisionBatch::upload(gpu, ErnieVisionBatchHost::new(&hw)?)?;
        let p = batch.host.num_patches();
        let mut pixels = DeviceTensor::alloc(gpu, DType::BF16, &[p, self.patch_values()])?;
        write_pixels(&mut pixels.view_mut())?;
        let mut out = DeviceTensor::alloc(gpu, DType::BF16, &[batch.host.num_tokens(), self.feature_width()])?;
        vision::encode(
            gpu,
            gemm,
            ws,
            &self.cfg,
            &self.vision,
            // FA3 at d 80 (M128 tiles) where the flags pick FA3: 543 against FA2's 1046 us for
            // one 7200-patch image per layer (H100, round 10, bench-attention vision_1x7200_d80).
            self.attention,
            &batch,
            &pixels.view(),
            &mut out.view_mut(),
        )?;
        Ok(out)
    }

    fn reserve(&self, gpu: &Gpu, max_tokens: usize) -> Result<()> {
        self.ensure_iota(gpu, max_tokens)?;
        let Some(shape) = self.moe_shape() else {
            return Ok(());
        };
        let mut guard = self
            .moe
            .lock()
            .map_err(|_| Error::invalid("ernie reserve", "the MoE scratch lock is poisoned"))?;
        if guard.as_ref().is_none_or(|s| s.max_tokens() < max_tokens) {
            *guard = Some(MoeScratch::new(gpu, shape, max_tokens.max(1))?);
        }
        Ok(())
    }

    fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        decoder::kv_bytes_per_block(&self.cfg, block_size)
    }

    fn num_kv_heads(&self) -> usize {
        self.cfg.text.num_key_value_heads
    }

    fn new_kv_cache(&self, gpu: &Gpu, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        decoder::new_kv_cache(gpu, &self.cfg, num_blocks, block_size)
    }

    fn forward(
        &self,
        gpu: &Gpu,
        gemm: &mut Gemm,
        ws: &Workspace,
        cache: &mut KvCache,
        inputs: &StepInputs<'_>,
        embed_error: &mut TensorViewMut<'_>,
        logits: &mut TensorViewMut<'_>,
    ) -> Result<()> {
        let tokens = inputs.ids.numel();
        let mut pools = ws.alloc(DType::I32, &[tokens.max(1)])?;
        let mut pools = pools.reborrow().narrow0(0, tokens)?;
        token_pool(gpu, &mut pools, &inputs.ids, inputs.num_decode, &self.vision_ids)?;
        let mut guard = self
            .moe
            .lock()
            .map_err(|_| Error::invalid("ernie forward", "the MoE scratch lock is poisoned"))?;
        if let Some(shape) = self.moe_shape() {
            let grow = guard.as_ref().is_none_or(|s| s.max_tokens() < tokens);
            if grow {
                *guard = Some(MoeScratch::new(gpu, shape, tokens.max(MIN_MOE_TOKENS))?);
            }
        }
        if !self.decode_kernel_fits() {
            self.ensure_iota(gpu, inputs.num_decode)?;
        }
        let iota_guard = self
            .iota
            .lock()
            .map_err(|_| Error::invalid("ernie forward", "the iota lock is poisoned"))?;
        let decode_path = match (self.decode_kernel_fits(), iota_guard.as_ref()) {
            (true, _) => DecodePath::Kernel,
            (false, Some(iota)) => DecodePath::Prefill { iota: iota.view() },
            (false, None) => return Err(Error::invalid("ernie forward", "no decode iota")),
        };
        decoder::forward(
            gpu,
            gemm,
            ws,
            &self.cfg,
            &self.text,
            self.attention,
            cache,
            inputs,
            &pools.as_view(),
            guard.as_mut(),
            decode_path,
            embed_error,
            logits,
        )
    }

    fn weights_inventory(&self) -> Vec<TensorSpec> {
        expected_tensors(&self.cfg)
    }

    fn weight_bytes(&self) -> usize {
        self.vision.total_bytes() + self.text.total_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_positions_follow_the_qwen2_vl_rule_with_ernies_ids() {
        let cfg = ErnieVlConfig::tiny();
        let t = &cfg.tokens;
        // "5" <start> 6 x <image> (a 4x6-patch image: 2x3 merged tokens) <end> "7"
        let mut ids = vec![5, t.image_start_token_id];
        ids.extend(std::iter::repeat_n(t.image_token_id, 6));
        ids.extend([t.image_end_token_id, 7]);
        let grid = ImageGrid { t: 1, h: 4, w: 6 };
        let l = layout_prompt(&cfg, &ids, &[grid]).unwrap();
        assert_eq!(l.image_spans(), std::slice::from_ref(&(2..8)));
        let at = |i| l.position(i);
        assert_eq!(at(0), [0, 0, 0]);
        assert_eq!(at(1), [1, 1, 1]);
        // Image token (r, c) of the 2x3 grid: (cur, cur + r, cur + c) with cur = 2.
        let image: Vec<[i32; 3]> = (2..8).map(at).collect();
        assert_eq!(
            image,
            vec![[2, 2, 2], [2, 2, 3], [2, 2, 4], [2, 3, 2], [2, 3, 3], [2, 3, 4]]
        );
        // After the image the text continues at cur + max(2, 3) = 5.
        assert_eq!(at(8), [5, 5, 5]);
        assert_eq!(at(9), [6, 6, 6]);
        // Generated tokens: index + rope_delta (7 - 10 = -3) on every axis.
        assert_eq!(at(10), [7, 7, 7]);
        // A placeholder run that does not match its grid is an error naming the mismatch.
        assert!(layout_prompt(&cfg, &ids, &[ImageGrid { t: 1, h: 4, w: 4 }]).is_err());
    }
}
