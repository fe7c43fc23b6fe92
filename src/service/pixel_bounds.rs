//! Per-request resize bounds: the `min_pixels` / `max_pixels` of `smart_resize` (MODEL_SPEC
//! §5.2) a caller may set for one request, as PaddleX does through vLLM's
//! `mm_processor_kwargs` (`{"min_pixels": 112896, "max_pixels": 1003520}`, 1605632 for
//! spotting). They replace the processor config's bounds for that request's images only.

/// `smart_resize` bounds, in pixels of the resized image; one left out keeps the processor
/// config's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PixelBounds {
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
}

/// Both bounds, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResolvedBounds {
    pub min_pixels: u64,
    pub max_pixels: u64,
}

impl PixelBounds {
    /// The bounds with the processor config's `(min_pixels, max_pixels)` filling the gaps.
    pub fn resolve(&self, defaults: (u64, u64)) -> ResolvedBounds {
        ResolvedBounds {
            min_pixels: self.min_pixels.unwrap_or(defaults.0),
            max_pixels: self.max_pixels.unwrap_or(defaults.1),
        }
    }
}

impl ResolvedBounds {
    /// Checks the bounds against what the processor and the engine can do: `factor` is the
    /// side of one merged patch block (28: patch 14, merge 2), `max_model_len` the longest
    /// sequence. `names` are the request's field names for the two bounds, so the message
    /// names what the caller wrote. Errors: a max below one block (the smallest image the
    /// processor makes, where `smart_resize` gives an empty side); min above max; a max whose
    /// image tokens alone would fill `--max-model-len`.
    pub fn check(&self, factor: usize, max_model_len: usize, names: (&str, &str)) -> Result<(), String> {
        let (min_name, max_name) = names;
        let block = (factor * factor) as u64;
        if self.max_pixels < block {
            return Err(format!(
                "{max_name} ({}) is below one {factor}x{factor} block ({block} pixels), the smallest image \
                 the processor can make",
                self.max_pixels
            ));
        }
        if self.min_pixels > self.max_pixels {
            return Err(format!(
                "{min_name} ({}) is above {max_name} ({})",
                self.min_pixels, self.max_pixels
            ));
        }
        let tokens = self.max_pixels / block;
        if tokens >= max_model_len as u64 {
            return Err(format!(
                "{max_name} ({}) allows images of up to {tokens} tokens, which leaves no room in \
                 --max-model-len {max_model_len}",
                self.max_pixels
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: (&str, &str) = ("min_pixels", "max_pixels");

    fn b(min_pixels: u64, max_pixels: u64) -> ResolvedBounds {
        ResolvedBounds { min_pixels, max_pixels }
    }

    #[test]
    fn gaps_take_the_processor_values() {
        let half = PixelBounds {
            min_pixels: None,
            max_pixels: Some(1_605_632),
        };
        assert_eq!(half.resolve((112_896, 1_003_520)), b(112_896, 1_605_632));
        assert_eq!(PixelBounds::default().resolve((1, 2)), b(1, 2));
    }

    #[test]
    fn pipeline_bounds_pass() {
        for bounds in [b(112_896, 1_003_520), b(112_896, 1_605_632), b(0, 784)] {
            bounds.check(28, 16384, NAMES).unwrap();
        }
    }

    #[test]
    fn bad_bounds_name_the_field() {
        let e = b(2_000_000, 1_003_520).check(28, 16384, NAMES).unwrap_err();
        assert!(e.starts_with("min_pixels (2000000) is above max_pixels"), "{e}");
        let e = b(0, 783).check(28, 16384, NAMES).unwrap_err();
        assert!(e.starts_with("max_pixels (783) is below one 28x28 block"), "{e}");
        // 16384 tokens of 784 pixels fill --max-model-len 16384.
        let e = b(0, 16384 * 784)
            .check(28, 16384, ("size.shortest_edge", "size.longest_edge"))
            .unwrap_err();
        assert!(e.starts_with("size.longest_edge"), "{e}");
        b(0, 16383 * 784).check(28, 16384, NAMES).unwrap();
    }
}
