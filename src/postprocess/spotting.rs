//! The `Spotting:` task's output (PaddleOCR-VL-1.5 and later): text lines, each followed by
//! its quadrilateral as 8 location tokens `<|LOC_n|>`, the four corners (x, y) in order, each
//! coordinate in thousandths of the image's width or height (n in 0..=1000; the tokenizer has
//! `<|LOC_0|>` to `<|LOC_1000|>`).
//!
//! PaddleX's pipeline accepts two spellings and so does this parser: the delimited one,
//! `<|TEXT_START|>text<|TEXT_END|><|LOC_BEGIN|>` 8 locs `<|LOC_END|>`, and the bare one, text
//! then 8 locs. The markers (and an end-of-text `</s>`) are dropped, leaving the bare form.
//!
//! The text must be decoded with special tokens kept: the LOC tokens are special tokens.

use thiserror::Error;

/// Location values run 0..=LOC_MAX; 1000 is the far edge of the image.
pub const LOC_MAX: u32 = 1000;
/// Location tokens per line: four corners, (x, y) each.
pub const LOCS_PER_LINE: usize = 8;

/// Markers of the delimited form, and end-of-text tokens a decode may leave at the end.
const DROPPED_MARKERS: [&str; 7] = [
    "<|TEXT_START|>",
    "<|TEXT_END|>",
    "<|LOC_BEGIN|>",
    "<|LOC_END|>",
    "<|LOC_SEP|>",
    "</s>",
    "<|end_of_sentence|>",
];

/// One text line and its quadrilateral in image pixels, corners in the model's order.
#[derive(Clone, Debug, PartialEq)]
pub struct SpottedLine {
    pub text: String,
    /// [x, y] per corner, in pixels of the original image.
    pub polygon: [[f64; 2]; 4],
}

/// Output that is not a sequence of (text, 8 locations); the index is the line's, from 0.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum SpottingError {
    #[error("spotting line {index} ({text:?}) has {found} location tokens; each line needs {LOCS_PER_LINE}")]
    WrongLocationCount { index: usize, text: String, found: usize },
    #[error("spotting line {index} ({text:?}) has location <|LOC_{value}|>; values run 0..={LOC_MAX}")]
    OutOfRange { index: usize, text: String, value: u64 },
    #[error("the spotting output ends with text that has no location tokens: {text:?}")]
    TrailingText { text: String },
    #[error("image size {width}x{height} cannot scale locations")]
    BadImageSize { width: u32, height: u32 },
}

/// Parses the decoded output of a `Spotting:` request for an image of `width` x `height`
/// pixels (the original image: locations are relative, so the model's resize cancels).
pub fn parse_spotting(output: &str, width: u32, height: u32) -> Result<Vec<SpottedLine>, SpottingError> {
    if width == 0 || height == 0 {
        return Err(SpottingError::BadImageSize { width, height });
    }
    let mut text = output.to_string();
    for marker in DROPPED_MARKERS {
        text = text.replace(marker, "");
    }
    let mut lines = Vec::new();
    let mut pending = String::new();
    let mut locs: Vec<u64> = Vec::new();
    let mut rest = text.as_str();
    loop {
        let next = find_loc(rest);
        let before = next.map_or(rest, |(at, _, _)| &rest[..at]);
        // Whitespace between location tokens does not end the run; other text does.
        if !locs.is_empty() && (next.is_none() || !before.trim().is_empty()) {
            lines.push(finish_line(lines.len(), &pending, &locs, width, height)?);
            pending.clear();
            locs.clear();
        }
        match next {
            None => {
                if !before.trim().is_empty() {
                    return Err(SpottingError::TrailingText {
                        text: before.trim().to_string(),
                    });
                }
                return Ok(lines);
            }
            Some((_, value, end)) => {
                if locs.is_empty() {
                    pending.push_str(before);
                }
                locs.push(value);
                rest = &rest[end..];
            }
        }
    }
}

fn finish_line(index: usize, text: &str, locs: &[u64], width: u32, height: u32) -> Result<SpottedLine, SpottingError> {
    let text = text.trim().to_string();
    if locs.len() != LOCS_PER_LINE {
        return Err(SpottingError::WrongLocationCount {
            index,
            text,
            found: locs.len(),
        });
    }
    if let Some(&value) = locs.iter().find(|&&v| v > LOC_MAX as u64) {
        return Err(SpottingError::OutOfRange { index, text, value });
    }
    let scale = |v: u64, side: u32| v as f64 * side as f64 / LOC_MAX as f64;
    let mut polygon = [[0.0; 2]; 4];
    for (corner, xy) in polygon.iter_mut().zip(locs.chunks_exact(2)) {
        *corner = [scale(xy[0], width), scale(xy[1], height)];
    }
    Ok(SpottedLine { text, polygon })
}

/// The first `<|LOC_n|>` in `s`: (start, n, end). Digits only; a value too long for u64
/// reads as u64::MAX, which the range check reports.
fn find_loc(s: &str) -> Option<(usize, u64, usize)> {
    let mut from = 0;
    while let Some(rel) = s[from..].find("<|LOC_") {
        let start = from + rel;
        let digits_at = start + "<|LOC_".len();
        let digits = s[digits_at..].bytes().take_while(u8::is_ascii_digit).count();
        let end = digits_at + digits;
        if digits > 0 && s[end..].starts_with("|>") {
            let value = s[digits_at..end].parse().unwrap_or(u64::MAX);
            return Some((start, value, end + 2));
        }
        from = digits_at;
    }
    None
}

/// Width and height of an encoded image as the model sees it: after its EXIF orientation
/// (preprocessing applies it), so a rotated phone photo scales its locations the right way.
/// Reads the header only.
pub fn oriented_size(bytes: &[u8]) -> Result<(u32, u32), String> {
    use image::metadata::Orientation as O;
    use image::ImageDecoder;
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    let turned = matches!(
        decoder.orientation().unwrap_or(O::NoTransforms),
        O::Rotate90 | O::Rotate270 | O::Rotate90FlipH | O::Rotate270FlipH
    );
    Ok(if turned { (h, w) } else { (w, h) })
}
