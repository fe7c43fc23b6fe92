//! The model boundary: what the engine asks of a model, as the [`ModelFamily`] trait. The
//! engine (scheduler, KV blocks, CUDA graphs, sampling, async scheduling) is written against
//! it alone, so a second family plugs in as a second implementation, not a second engine.
//!
//! What a family answers:
//! - prompts: where each image's placeholder tokens sit and the rotary position of every
//!   token ([`ModelFamily::layout_prompt`], [`PromptLayout`]); how many tokens an image of a
//!   given patch grid becomes ([`ModelFamily::image_tokens`], from the config's merge size);
//! - the image encoder: a packed batch of images in, one feature row per image token out;
//! - the decoder: the forward of one step's flat batch over the paged KV cache
//!   ([`StepInputs`]: ids, 3 position rows, slots, decode/prefill split, image rows), its
//!   vocabulary and end-of-sequence token, the cache's geometry, and the workspace both
//!   passes need;
//! - its weights' inventory (the tensors a checkpoint must hold) and their device size.
//!
//! Two implementations: PaddleOCR-VL ([`super::paddleocr_vl::PaddleOcrVl`]) and ERNIE-4.5-VL
//! ([`ErnieVl`]: its own vision encoder and resampler, 3D rotary sections in the same 3
//! position rows of [`StepInputs`], MoE feed-forward layers); docs/ARCHITECTURE.md.

use std::ops::Range;
use std::path::Path;

use super::ernie_vl::family::ErnieVl;
use super::names::TensorSpec;
use super::paddleocr_vl::PaddleOcrVl;
use super::text::{KvCache, StepInputs};
use crate::config::{FamilyConfig, LoadFormat, ModelConfig, Quantization};
use crate::error::{Error, Result};
use crate::kernels::attention::AttentionKernels;
use crate::preprocess::image::ImageGrid;
use crate::preprocess::{MropePositions, PreprocessError};
use crate::runtime::{DeviceTensor, Gemm, Gpu, TensorViewMut, Workspace};

/// A tokenised prompt as the model lays it out: the rotary position of each token and where
/// each image's placeholder tokens are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptLayout {
    /// `[3, prompt_len]` positions, the decode offset, and the image spans.
    pub positions: MropePositions,
}

impl PromptLayout {
    /// The (T, H, W) rotary position of the token at sequence index `index`, prompt or
    /// generated: the one formula every step uses.
    pub fn position(&self, index: usize) -> [i32; 3] {
        self.positions.of_token(index)
    }

    /// Per image, in order, the range of its placeholder tokens in the prompt.
    pub fn image_spans(&self) -> &[Range<usize>] {
        &self.positions.image_spans
    }
}

/// Writes a packed batch's pixel values into the encoder's input: bf16
/// `[patches, patch_values]`, images in batch order. The engine stages them from page-locked
/// memory; the model only says where they go.
pub type PixelWriter<'a> = dyn FnMut(&mut TensorViewMut<'_>) -> Result<()> + 'a;

/// What the engine asks of a model family (see the module doc).
pub trait ModelFamily {
    /// The family's name, for logs.
    fn name(&self) -> &'static str;

    /// PaddleOCR-VL's configuration (for callers that report it or build its workloads; the
    /// engine asks the methods below); None for another family.
    fn config(&self) -> Option<&ModelConfig>;

    /// Logits per token.
    fn vocab_size(&self) -> usize;

    /// The end-of-sequence token generation stops at, if any.
    fn eos_token_id(&self) -> Option<u32>;

    /// The rotary positions and image spans of `ids`, whose image placeholders (the model's
    /// image token) are expanded in place for `grids` (one per image, in order). Errors name
    /// a placeholder run that does not match its grid.
    fn layout_prompt(&self, ids: &[u32], grids: &[ImageGrid]) -> std::result::Result<PromptLayout, PreprocessError>;

    /// Placeholder tokens (and encoder output rows) of an image of `grid` patches.
    fn image_tokens(&self, grid: ImageGrid) -> usize;

    /// Values of one patch in an image's pixels.
    fn patch_values(&self) -> usize;

    /// Width of one image token's features (the decoder's hidden size).
    fn feature_width(&self) -> usize;

    /// Workspace bytes of [`ModelFamily::forward`] and of [`ModelFamily::encode_images`] at
    /// these sizes, whichever is larger.
    fn workspace_bytes(&self, tokens: usize, logit_rows: usize, decode_seqs: usize, encoder_patches: usize) -> usize;

    /// Encodes a packed batch of images: `write_pixels` fills the encoder's input; the result
    /// is bf16 `[Σ image_tokens, text hidden]`, images in order. The caller resets `ws`.
    fn encode_images(
        &self,
        gpu: &Gpu,
        gemm: &mut Gemm,
        ws: &Workspace,
        grids: &[ImageGrid],
        write_pixels: &mut PixelWriter<'_>,
    ) -> Result<DeviceTensor>;

    /// Allocates what the family's steps need beyond the workspace for steps of up to
    /// `max_tokens` tokens (ERNIE-4.5-VL: the MoE block's scratch), before the engine sizes
    /// the KV cache from the memory left, so a step never allocates. Default: nothing.
    fn reserve(&self, gpu: &Gpu, max_tokens: usize) -> Result<()> {
        let _ = (gpu, max_tokens);
        Ok(())
    }

    /// Bytes one KV block of `block_size` tokens takes over all layers.
    fn kv_bytes_per_block(&self, block_size: usize) -> usize;

    /// KV heads per layer (the decode kernel's split heuristic reads it).
    fn num_kv_heads(&self) -> usize;

    /// The paged KV cache of every layer.
    fn new_kv_cache(&self, gpu: &Gpu, num_blocks: usize, block_size: usize) -> Result<KvCache>;

    /// One decoder step over the paged cache: f32 logits `[S, vocab]` of `inputs.logits_rows`
    /// into `logits`; `embed_error` (i32 `[1]`) gets an out-of-range token id if any. The
    /// caller resets `ws`.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        gpu: &Gpu,
        gemm: &mut Gemm,
        ws: &Workspace,
        cache: &mut KvCache,
        inputs: &StepInputs<'_>,
        embed_error: &mut TensorViewMut<'_>,
        logits: &mut TensorViewMut<'_>,
    ) -> Result<()>;

    /// The tensors a checkpoint of this model must hold, names and shapes.
    fn weights_inventory(&self) -> Vec<TensorSpec>;

    /// Bytes of the weights on the device.
    fn weight_bytes(&self) -> usize;
}

/// Loads the model in `dir`, whose config `cfg` is ([`FamilyConfig::from_dir`]), with the
/// attention kernels `attention`, the weights from `format`, stored as `quantization` says
/// (`wint8` exists for ERNIE-4.5-VL's experts; PaddleOCR-VL, which has none, refuses it).
pub fn load(
    gpu: &Gpu,
    dir: &Path,
    cfg: FamilyConfig,
    attention: AttentionKernels,
    format: LoadFormat,
    quantization: Quantization,
) -> Result<Box<dyn ModelFamily>> {
    check_quantization(&cfg, quantization)?;
    Ok(match cfg {
        FamilyConfig::PaddleOcrVl(cfg) => Box::new(PaddleOcrVl::load_with(gpu, dir, cfg, attention, format)?),
        FamilyConfig::ErnieVl(_) => Box::new(ErnieVl::load_quantized(gpu, dir, attention, format, quantization)?),
    })
}

/// Whether the model in `cfg` can be stored as `quantization` says: `wint8` quantises MoE
/// experts, which PaddleOCR-VL does not have.
pub fn check_quantization(cfg: &FamilyConfig, quantization: Quantization) -> Result<()> {
    match (cfg, quantization) {
        (FamilyConfig::PaddleOcrVl(_), Quantization::ExpertsInt8) => Err(Error::invalid(
            "--quantization",
            "wint8 stores MoE experts as int8, and PaddleOCR-VL has none: run it without --quantization",
        )),
        _ => Ok(()),
    }
}
