//! 3-D M-RoPE position ids of one sequence (MODEL_SPEC §3.9, the Qwen2-VL `get_rope_index`).
//!
//! Walking the prompt with a running position `cur` (starting at 0):
//! - a text token gets `(cur, cur, cur)` and advances `cur` by 1;
//! - an image of `gh × gw` merged tokens (raster order, token k at row `k / gw`, column
//!   `k % gw`) gets `(cur, cur + row, cur + col)`: the temporal stream stays constant because
//!   an image has t = 1. After the block `cur` advances by `max(gh, gw)`, i.e. the next text
//!   token continues at (largest position in the image) + 1.
//!
//! `rope_delta = max position + 1 − prompt_len` (≤ 0 for image prompts). A token generated
//! at sequence index `s ≥ prompt_len` gets `s + rope_delta` on all three axes, so decode
//! needs only this one number per sequence.

use std::ops::Range;

use super::image::ImageGrid;
use super::{PreprocessError, Result};

/// Position ids of one prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MropePositions {
    /// `[3, seq_len]` row-major: the T, H and W streams.
    pub positions: Vec<i32>,
    pub seq_len: usize,
    /// Add to a generated token's sequence index to get its position (all three axes).
    pub rope_delta: i32,
    /// Per image, in order, the range of its placeholder tokens: the walk finds them anyway,
    /// and they are the ranges `Prompt::image_spans` holds for the same prompt.
    pub image_spans: Vec<Range<usize>>,
}

impl MropePositions {
    /// One stream: 0 = temporal, 1 = height, 2 = width.
    pub fn axis(&self, axis: usize) -> &[i32] {
        &self.positions[axis * self.seq_len..(axis + 1) * self.seq_len]
    }

    /// The (T, H, W) position of token `index` of the prompt.
    pub fn at(&self, index: usize) -> [i32; 3] {
        [0, 1, 2].map(|a| self.positions[a * self.seq_len + index])
    }

    /// The (T, H, W) position of the token at sequence index `index`: the prompt's own, or
    /// [`decode_position`] on all three axes for a generated token (the one rule for both).
    pub fn of_token(&self, index: usize) -> [i32; 3] {
        if index < self.seq_len {
            self.at(index)
        } else {
            [decode_position(index, self.rope_delta); 3]
        }
    }
}

/// Position of the token at sequence index `seq_index` (≥ the prompt length) during decode,
/// the same on all three axes.
pub fn decode_position(seq_index: usize, rope_delta: i32) -> i32 {
    seq_index as i32 + rope_delta
}

/// Computes the positions of `ids`, where runs of `image_token_id` are the images' merged
/// tokens, in order. Image `i` takes the next `grids[i].num_merged_tokens(merge)` placeholder
/// tokens; two images may sit back to back in one run. Errors when the placeholders and the
/// grids do not account for each other exactly.
pub fn mrope_positions(ids: &[u32], image_token_id: u32, grids: &[ImageGrid], merge: usize) -> Result<MropePositions> {
    let seq_len = ids.len();
    if seq_len > i32::MAX as usize {
        return Err(PreprocessError::Positions(format!(
            "sequence of {seq_len} tokens is too long for i32 positions"
        )));
    }
    if merge == 0 {
        return Err(PreprocessError::Positions("merge size is 0".into()));
    }
    let mut t = Vec::with_capacity(seq_len);
    let mut h = Vec::with_capacity(seq_len);
    let mut w = Vec::with_capacity(seq_len);
    let mut cur: i64 = 0;
    let mut next_image = 0;
    let mut image_spans = Vec::with_capacity(grids.len());
    let mut i = 0;
    while i < seq_len {
        if ids[i] != image_token_id {
            t.push(cur);
            h.push(cur);
            w.push(cur);
            cur += 1;
            i += 1;
            continue;
        }
        let Some(grid) = grids.get(next_image) else {
            return Err(PreprocessError::Positions(format!(
                "image placeholder at index {i} but only {} image grids were given",
                grids.len()
            )));
        };
        grid.check(next_image, merge)?;
        let (gh, gw) = grid.merged_hw(merge);
        let n = gh * gw;
        let run = ids[i..].iter().take(n).take_while(|&&id| id == image_token_id).count();
        if run != n {
            return Err(PreprocessError::Positions(format!(
                "image {next_image} (merged grid {gh}x{gw}) needs {n} placeholder tokens from index {i}, found {run}"
            )));
        }
        for k in 0..n {
            t.push(cur);
            h.push(cur + (k / gw) as i64);
            w.push(cur + (k % gw) as i64);
        }
        cur += gh.max(gw) as i64;
        image_spans.push(i..i + n);
        i += n;
        next_image += 1;
    }
    if next_image != grids.len() {
        return Err(PreprocessError::Positions(format!(
            "{} image grids given but the sequence holds placeholders for {next_image}",
            grids.len()
        )));
    }
    // `cur` is one past the largest position: both kinds of block end there.
    let rope_delta = cur - seq_len as i64;
    let to_i32 = |v: i64| v as i32; // every value is below seq_len, checked above
    let mut positions = Vec::with_capacity(3 * seq_len);
    positions.extend(t.into_iter().map(to_i32));
    positions.extend(h.into_iter().map(to_i32));
    positions.extend(w.into_iter().map(to_i32));
    Ok(MropePositions {
        positions,
        seq_len,
        rope_delta: rope_delta as i32,
        image_spans,
    })
}
