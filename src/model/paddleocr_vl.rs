//! PaddleOCR-VL-0.9B behind the model boundary ([`ModelFamily`]): the SigLIP-style vision
//! tower and projector ([`super::vision`]), the ERNIE-4.5-0.3B decoder ([`super::text`]),
//! Qwen2-VL M-RoPE positions ([`crate::preprocess::mrope`]) and the hub tensor inventory
//! ([`super::names`]).

use std::path::Path;

use super::family::{ModelFamily, PixelWriter, PromptLayout};
use super::gpu_weights::ModelWeights;
use super::names::{expected_tensors, TensorSpec};
use super::random_weights::{open_checkpoint, LoadFormat};
use super::text::{self, KvCache, StepInputs};
use super::vision::{self, VisionBatch, VisionBatchHost};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kernels::attention::AttentionKernels;
use crate::preprocess::image::ImageGrid;
use crate::preprocess::{mrope_positions, PreprocessError};
use crate::runtime::{DType, DeviceTensor, Gemm, Gpu, TensorViewMut, Workspace};

/// The model: its config and its weights on the GPU (with the attention kernels they run).
pub struct PaddleOcrVl {
    cfg: ModelConfig,
    weights: ModelWeights,
}

impl PaddleOcrVl {
    /// Opens the checkpoint in `dir`, checks it against `cfg` and uploads it.
    pub fn load(gpu: &Gpu, dir: &Path, cfg: ModelConfig, attention: AttentionKernels) -> Result<PaddleOcrVl> {
        Self::load_with(gpu, dir, cfg, attention, LoadFormat::Files)
    }

    /// [`PaddleOcrVl::load`] with the weights from `format` (`--load-format dummy` makes them up).
    pub fn load_with(
        gpu: &Gpu,
        dir: &Path,
        cfg: ModelConfig,
        attention: AttentionKernels,
        format: LoadFormat,
    ) -> Result<PaddleOcrVl> {
        let ckpt = open_checkpoint(dir, &expected_tensors(&cfg), format)?;
        let mut weights = ModelWeights::upload(gpu, &cfg, &ckpt.validate(&cfg)?)?;
        weights.attention = attention;
        Ok(PaddleOcrVl { cfg, weights })
    }

    pub fn weights(&self) -> &ModelWeights {
        &self.weights
    }

    fn merge(&self) -> usize {
        self.cfg.vision.spatial_merge_size
    }
}

impl ModelFamily for PaddleOcrVl {
    fn name(&self) -> &'static str {
        "PaddleOCR-VL"
    }

    fn config(&self) -> Option<&ModelConfig> {
        Some(&self.cfg)
    }

    fn vocab_size(&self) -> usize {
        self.cfg.text.vocab_size
    }

    fn eos_token_id(&self) -> Option<u32> {
        self.cfg.tokens.eos_token_ids.first().copied()
    }

    fn layout_prompt(&self, ids: &[u32], grids: &[ImageGrid]) -> std::result::Result<PromptLayout, PreprocessError> {
        let positions = mrope_positions(ids, self.cfg.tokens.image_token_id, grids, self.merge())?;
        Ok(PromptLayout { positions })
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
        text::workspace_bytes(&self.cfg, tokens, logit_rows, decode_seqs)
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
        let hw: Vec<(usize, usize)> = grids.iter().map(|g| (g.h, g.w)).collect();
        let batch = VisionBatch::upload(gpu, VisionBatchHost::new(&hw)?)?;
        let p = batch.host.num_patches();
        let mut pixels = DeviceTensor::alloc(gpu, DType::BF16, &[p, self.patch_values()])?;
        write_pixels(&mut pixels.view_mut())?;
        let tokens: usize = grids.iter().map(|&g| self.image_tokens(g)).sum();
        let mut out = DeviceTensor::alloc(gpu, DType::BF16, &[tokens, self.feature_width()])?;
        vision::encode(
            gpu,
            gemm,
            ws,
            &self.cfg,
            &self.weights,
            &batch,
            &pixels.view(),
            &mut out.view_mut(),
        )?;
        Ok(out)
    }

    fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        KvCache::bytes_per_block(&self.cfg, block_size)
    }

    fn num_kv_heads(&self) -> usize {
        self.cfg.text.num_key_value_heads
    }

    fn new_kv_cache(&self, gpu: &Gpu, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        KvCache::new(gpu, &self.cfg, num_blocks, block_size)
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
        text::forward(
            gpu,
            gemm,
            ws,
            &self.cfg,
            &self.weights,
            cache,
            inputs,
            embed_error,
            logits,
        )
    }

    fn weights_inventory(&self) -> Vec<TensorSpec> {
        expected_tensors(&self.cfg)
    }

    fn weight_bytes(&self) -> usize {
        self.weights.total_bytes()
    }
}
