//! A request's images, from encoded bytes to what the engine takes: the processor with the
//! request's resize bounds ([`PixelBounds`]), then decode, resize, normalise and patchify, or
//! the same pixels from the preprocessed-image cache ([`super::ImageCache`]).

use std::borrow::Cow;

use super::image_cache::{CachedImage, ImageKey};
use super::{Frontend, PixelBounds};
use crate::engine::prefix_hash::image_content_hash;
use crate::engine::EngineImage;
use crate::error::{Error, Result};
use crate::preprocess::image::ImageProcessor;

impl Frontend {
    /// The processor to use for a request: the model's, or a copy with the request's bounds.
    pub(super) fn processor_for(&self, bounds: Option<PixelBounds>) -> Result<Cow<'_, ImageProcessor>> {
        let Some(b) = bounds else {
            return Ok(Cow::Borrowed(&self.processor));
        };
        let c = &self.processor.config;
        let b = b.resolve((c.min_pixels, c.max_pixels));
        b.check(c.factor(), self.max_model_len, ("min_pixels", "max_pixels"))
            .map_err(|e| Error::invalid("submit", e))?;
        let mut p = self.processor.clone();
        p.config.min_pixels = b.min_pixels;
        p.config.max_pixels = b.max_pixels;
        Ok(Cow::Owned(p))
    }

    /// Decode, resize, normalise and patchify one image, or take it from the cache.
    pub(super) fn preprocess(
        &self,
        processor: &ImageProcessor,
        bytes: &[u8],
    ) -> std::result::Result<EngineImage, String> {
        let key = ImageKey {
            content_hash: image_content_hash(bytes),
            min_pixels: processor.config.min_pixels,
            max_pixels: processor.config.max_pixels,
        };
        let image = match self.image_cache.get(&key, bytes) {
            Some(hit) => hit,
            None => {
                // Straight to bf16: the same bits as process_bytes + pixel_values_bf16
                // (tests/cpu/preprocess_fast_paths.rs), without the f32 image between.
                let p = processor.process_bytes_bf16(bytes).map_err(|e| e.to_string())?;
                let image = CachedImage {
                    pixels: p.pixel_values.into(),
                    grid: p.grid,
                };
                self.image_cache.insert(key, bytes, image.clone());
                image
            }
        };
        Ok(EngineImage {
            pixels: image.pixels,
            grid: (image.grid.h, image.grid.w),
            // The prefix cache's identity of the image: the same bytes resized with other
            // bounds are other pixels, so the bounds are part of it.
            content_hash: key_hash(&key),
        })
    }
}

/// The prefix cache's identity of an image as resized: the keyed 128-bit hash of its bytes
/// and the bounds it was resized with (the same bytes under other bounds are other pixels).
fn key_hash(key: &ImageKey) -> u128 {
    let mut parts = [0u8; 32];
    parts[..16].copy_from_slice(&key.content_hash.to_le_bytes());
    parts[16..24].copy_from_slice(&key.min_pixels.to_le_bytes());
    parts[24..].copy_from_slice(&key.max_pixels.to_le_bytes());
    image_content_hash(&parts)
}
