//! Host-side preprocessing: everything between a user's request (image bytes and a task) and
//! the tensors the model consumes (MODEL_SPEC §3.8, §3.9, §5, §6).
//!
//! - [`image`] decodes any supported format to RGB8 (alpha composited on white), computes
//!   `smart_resize`, resizes with the PIL-exact bicubic of [`resample`], rescales, normalises
//!   and patchifies.
//! - [`processor_config`] reads `processor_config.json` (its `image_processor` part) or
//!   `preprocessor_config.json`.
//! - [`prompt`] loads `tokenizer.json` and the chat template, renders the task prompts and
//!   expands the image placeholders.
//! - [`sentencepiece`] builds the tokenizer from a SentencePiece `tokenizer.model` where a
//!   directory has no `tokenizer.json`.
//! - [`mrope`] computes the 3-D M-RoPE position ids and `rope_delta` of one sequence.
//!
//! Everything here is plain CPU code with no CUDA dependency, so it is tested in CI.

pub mod ernie_layout;
pub mod image;
pub mod mrope;
mod patchify;
pub mod processor_config;
pub mod prompt;
pub mod resample;
mod resample_kernels;
pub mod sentencepiece;

pub use self::image::{
    decode_rgb, smart_resize, ImageGrid, ImageProcessor, ProcessedImage, Rgb8Image, DEFAULT_MAX_DECODED_PIXELS,
};
pub use ernie_layout::ImageLayout;
pub use mrope::{decode_position, mrope_positions, MropePositions};
pub use processor_config::ProcessorConfig;
pub use prompt::{Prompt, PromptBuilder, Task};
pub use resample::{resize_bicubic, resize_bicubic_with_order, PassOrder};

use std::path::PathBuf;

/// Every failure of preprocessing. Each variant says what was wrong with which input, so that a
/// request can be rejected with a message the user can act on.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bytes match no supported image format (PNG, JPEG, WebP, BMP, TIFF, GIF).
    #[error("unrecognised image format (supported: PNG, JPEG, WebP, BMP, TIFF, GIF)")]
    UnknownImageFormat,

    /// A format the `image` crate recognises but this build does not decode (AVIF, EXR, ...).
    #[error("unsupported image format {format} (supported: PNG, JPEG, WebP, BMP, TIFF, GIF)")]
    UnsupportedImageFormat { format: String },

    /// Truncated or corrupt data, or a feature of the format the decoder does not handle.
    #[error("cannot decode {format} image: {message}")]
    Decode { format: String, message: String },

    #[error("image has zero size ({width}x{height})")]
    ZeroSizedImage { width: u64, height: u64 },

    /// Checked on the header's dimensions before any pixel is decoded (decompression bombs).
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {limit} decoded pixels")]
    TooManyPixels {
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },

    /// The reference raises for `max(h, w) / min(h, w) > 200` (MODEL_SPEC §5.2).
    #[error("image aspect ratio {ratio:.2} ({height}x{width} after the min-side adjustment) is over the limit of 200")]
    AspectRatio { height: u64, width: u64, ratio: f64 },

    /// `smart_resize` floored a side to zero: only possible with a `max_pixels` far below the
    /// hub value, where the reference itself would crash.
    #[error("smart_resize of {height}x{width} (min_pixels {min_pixels}, max_pixels {max_pixels}) gives an empty side")]
    ResizeToZero {
        height: u64,
        width: u64,
        min_pixels: u64,
        max_pixels: u64,
    },

    /// `do_resize` is off and the image is not already a multiple of the patch grid.
    #[error("image {height}x{width} is not a multiple of {factor} and do_resize is false")]
    NotResizedToGrid { height: u64, width: u64, factor: u64 },

    /// A bad value in `preprocessor_config.json` (or one that disagrees with config.json).
    #[error("{origin}: `{field}` {reason}")]
    ProcessorConfig {
        origin: String,
        field: String,
        reason: String,
    },

    /// `tokenizer.json` (or `tokenizer.model`) missing, unreadable, or failing to encode.
    #[error("tokenizer ({origin}): {message}")]
    Tokenizer { origin: String, message: String },

    /// The tokenizer does not know a special token the config names, or maps it elsewhere.
    #[error("tokenizer ({origin}): special token {role} has id {config_id} in config.json but {found}")]
    SpecialTokenMismatch {
        origin: String,
        role: &'static str,
        config_id: u32,
        found: String,
    },

    /// The chat template failed to parse or render.
    #[error("chat template ({origin}): {message}")]
    ChatTemplate { origin: String, message: String },

    /// The tokenised prompt holds a different number of image placeholders than images given.
    #[error("prompt has {found} image placeholder tokens (id {token_id}) but {expected} images were given")]
    PlaceholderCount {
        expected: usize,
        found: usize,
        token_id: u32,
    },

    /// An image grid that is not one frame of whole merge blocks.
    #[error("image {image}: grid (t {t}, h {h}, w {w}) is not one frame of whole {merge}x{merge} merge blocks")]
    InvalidGrid {
        image: usize,
        t: usize,
        h: usize,
        w: usize,
        merge: usize,
    },

    /// Position ids: the image tokens in the sequence do not match the image grids.
    #[error("M-RoPE positions: {0}")]
    Positions(String),
}

pub type Result<T, E = PreprocessError> = std::result::Result<T, E>;
