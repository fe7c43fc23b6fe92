//! A request's images, from encoded bytes to what the engine takes: the processor with the
//! request's resize bounds ([`PixelBounds`]), then decode, resize, normalise and patchify, or
//! the same pixels from the preprocessed-image cache ([`super::ImageCache`]).

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use super::image_cache::{CachedImage, ImageKey};
use super::{Frontend, PixelBounds};
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
            content_hash: content_hash(bytes),
            min_pixels: processor.config.min_pixels,
            max_pixels: processor.config.max_pixels,
        };
        let image = match self.image_cache.get(&key, bytes) {
            Some(hit) => hit,
            None => {
                let p = processor.process_bytes(bytes).map_err(|e| e.to_string())?;
                let image = CachedImage {
                    pixels: p.pixel_values_bf16().into(),
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

/// A stable content hash of image bytes (the prefix cache's image identity).
fn content_hash(bytes: &[u8]) -> u64 {
    // SipHash with fixed keys: stable within a build, which is all the cache needs.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6f63_7276_6c00_0001, 0x696d_6167_6500_0002);
    bytes.hash(&mut h);
    h.finish()
}

fn key_hash(key: &ImageKey) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6f63_7276_6c00_0003, 0x626f_756e_6473_0004);
    key.hash(&mut h);
    h.finish()
}
