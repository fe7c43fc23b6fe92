//! What one request may ask for, checked once in [`super::Service::submit`] so the server, the
//! C ABI and `ocr` all refuse the same requests with the same messages, before any image is
//! decoded or anything reaches the engine thread.
//!
//! Two kinds of check live here:
//! - value ranges of the sampling parameters, as vLLM enforces them ([`check_sampling`]; the
//!   server calls it too, before it loads any image, so a bad value is a 400 at once);
//! - sizes that bound what a request can cost ([`RequestLimits`]): images, decoded pixels,
//!   stop strings and stop token ids (scanned on the engine thread every step), top_logprobs,
//!   the prompt text.
//!
//! Every failure is an [`Error::Request`] naming the field in the OpenAI API's spelling, which
//! the server turns into a 400 with that `param`.

use crate::error::{Error, Result};
use crate::kernels::sampling::SamplingParams;

use super::OcrRequest;

/// The default upper end of `temperature` (vLLM's); a server flag may raise it.
pub const DEFAULT_MAX_TEMPERATURE: f32 = 2.0;

/// The decoded-pixel cap is this many times the processor's `max_pixels`. PaddleOCR-VL's
/// processor resizes every image to at most `max_pixels` (1 003 520 on the hub, about a
/// 1000x1000 image) before the vision tower sees it, so pixels beyond that only cost decode
/// memory and time. 16x (4x along each side, about 16 Mpx on the hub config: an A4 page
/// scanned at 400 dpi) keeps every realistic document while bounding one decode at about
/// 16 Mpx x (4 bytes decoded + 3 bytes RGB) = 112 MB, so a pool of one decode per core stays
/// within a few GB however many such images arrive.
pub const DECODED_PIXELS_PER_MAX_PIXELS: u64 = 16;

/// Inside vLLM's (0, 2], the smallest `repetition_penalty` accepted: a positive logit is
/// divided by the penalty, and below about 1e-36 a logit of 100 overflows f32 to infinity,
/// which can only end the request in an error. 1e-6 keeps logits below 1e8, far from that.
pub const MIN_REPETITION_PENALTY: f32 = 1e-6;

/// Most stop strings per request (OpenAI allows 4; vLLM has no limit). Every generated
/// token's text is searched for each of them.
pub const MAX_STOP_STRINGS: usize = 32;
/// Longest stop string, in bytes.
pub const MAX_STOP_STRING_BYTES: usize = 512;
/// Most stop token ids per request.
pub const MAX_STOP_TOKEN_IDS: usize = 1024;
/// Most alternatives reported per token (the sampler's limit and OpenAI's).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// The prompt text may hold at most this many bytes per token of `max_model_len`: text much
/// longer than the context cannot fit, and tokenising megabytes only to say so costs CPU.
pub const PROMPT_BYTES_PER_TOKEN: usize = 16;

/// A field error: the API's name of the field and what is wrong with it.
fn bad(field: &'static str, msg: String) -> Error {
    Error::Request { field, msg }
}

/// The vLLM ranges of the sampling parameters (after the API's spelling is mapped: `top_k`
/// -1 is 0 here, "off"). `max_temperature` is [`DEFAULT_MAX_TEMPERATURE`] unless the server
/// widened it.
pub fn check_sampling(p: &SamplingParams, max_temperature: f32) -> Result<()> {
    // NaN fails every comparison below, so it is refused by each check.
    if !(p.temperature >= 0.0 && p.temperature <= max_temperature) {
        return Err(bad(
            "temperature",
            format!("must be in [0, {max_temperature}] (got {})", p.temperature),
        ));
    }
    check_top_p(p.top_p)?;
    if p.top_k < 0 {
        return Err(bad("top_k", format!("must be -1 (off) or >= 1 (got {})", p.top_k)));
    }
    if !(p.repetition_penalty > 0.0 && p.repetition_penalty <= 2.0) {
        return Err(bad(
            "repetition_penalty",
            format!("must be in (0, 2] (got {})", p.repetition_penalty),
        ));
    }
    if p.repetition_penalty < MIN_REPETITION_PENALTY {
        return Err(bad(
            "repetition_penalty",
            format!(
                "must be at least {MIN_REPETITION_PENALTY:e} (got {}): dividing the logits by less \
                 overflows them to infinity",
                p.repetition_penalty
            ),
        ));
    }
    for (field, v) in [
        ("frequency_penalty", p.frequency_penalty),
        ("presence_penalty", p.presence_penalty),
    ] {
        if !(-2.0..=2.0).contains(&v) {
            return Err(bad(field, format!("must be in [-2, 2] (got {v})")));
        }
    }
    Ok(())
}

/// The one place `top_p` is range-checked: (0, 1] as vLLM. (A request-level exception, such
/// as FastDeploy's `top_p: 0` meaning greedy, is mapped before this check by the caller.)
pub fn check_top_p(top_p: f32) -> Result<()> {
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad("top_p", format!("must be in (0, 1] (got {top_p})")));
    }
    Ok(())
}

/// The sizes one request may reach. Built by the service from its config and the model.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestLimits {
    /// `--limit-mm-per-prompt`.
    pub max_images: usize,
    /// Largest `width * height` an image's header may announce; checked before decoding.
    pub max_decoded_pixels: u64,
    /// The processor's own `max_pixels` (what images are resized to at most).
    pub processor_max_pixels: u64,
    /// The processor's resize factor (patch size times merge): `min_pixels` must be at least
    /// its square.
    pub resize_factor: u64,
    pub max_stop_strings: usize,
    pub max_stop_string_bytes: usize,
    pub max_stop_token_ids: usize,
    /// Stop token ids must be below this.
    pub vocab_size: usize,
    pub max_top_logprobs: usize,
    pub max_prompt_bytes: usize,
    pub max_temperature: f32,
}

impl RequestLimits {
    /// The limits for a model whose processor resizes to at most `processor_max_pixels` with
    /// sides in multiples of `resize_factor`, and the given vocabulary, context and image count.
    pub fn new(
        max_images: usize,
        processor_max_pixels: u64,
        resize_factor: u64,
        vocab_size: usize,
        max_model_len: usize,
    ) -> RequestLimits {
        RequestLimits {
            max_images,
            max_decoded_pixels: processor_max_pixels.saturating_mul(DECODED_PIXELS_PER_MAX_PIXELS),
            processor_max_pixels,
            resize_factor,
            max_stop_strings: MAX_STOP_STRINGS,
            max_stop_string_bytes: MAX_STOP_STRING_BYTES,
            max_stop_token_ids: MAX_STOP_TOKEN_IDS,
            vocab_size,
            max_top_logprobs: MAX_TOP_LOGPROBS,
            max_prompt_bytes: max_model_len.saturating_mul(PROMPT_BYTES_PER_TOKEN),
            max_temperature: DEFAULT_MAX_TEMPERATURE,
        }
    }

    /// Everything about `req` that needs no decoding: counts, sizes, ids, sampling ranges.
    /// (Each image's pixel count is checked from its header by the decoder, against
    /// `max_decoded_pixels`.)
    pub fn check(&self, req: &OcrRequest) -> Result<()> {
        if req.images.len() > self.max_images {
            return Err(bad(
                "messages",
                format!(
                    "{} images in one request; at most {} are allowed (--limit-mm-per-prompt)",
                    req.images.len(),
                    self.max_images
                ),
            ));
        }
        let text_bytes = match &req.prompt {
            super::PromptInput::Text(t) => t.len(),
            super::PromptInput::Chat(turns) => turns
                .iter()
                .flat_map(|t| t.parts.iter())
                .map(|p| match p {
                    super::ChatPart::Text(t) => t.len(),
                    super::ChatPart::Image => 0,
                })
                .sum::<usize>(),
            super::PromptInput::Task(_) => 0,
        };
        if text_bytes > self.max_prompt_bytes {
            return Err(bad(
                "messages",
                format!(
                    "the prompt text is {text_bytes} bytes; at most {} fit --max-model-len",
                    self.max_prompt_bytes
                ),
            ));
        }
        self.check_stop(&req.stop)?;
        self.check_stop_token_ids(&req.stop_token_ids)?;
        if req.top_logprobs > self.max_top_logprobs {
            return Err(bad(
                "top_logprobs",
                format!("must be in 0..={} (got {})", self.max_top_logprobs, req.top_logprobs),
            ));
        }
        if req.max_tokens == Some(0) {
            return Err(bad("max_tokens", "must be at least 1 (got 0)".into()));
        }
        check_sampling(&req.sampling, self.max_temperature)
    }

    pub fn check_stop(&self, stop: &[String]) -> Result<()> {
        if stop.len() > self.max_stop_strings {
            return Err(bad(
                "stop",
                format!(
                    "{} stop strings; at most {} are allowed",
                    stop.len(),
                    self.max_stop_strings
                ),
            ));
        }
        if let Some((i, s)) = stop
            .iter()
            .enumerate()
            .find(|(_, s)| s.len() > self.max_stop_string_bytes)
        {
            return Err(bad(
                "stop",
                format!(
                    "stop string {i} is {} bytes; at most {} are allowed",
                    s.len(),
                    self.max_stop_string_bytes
                ),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(bad("stop", "a stop string is empty".into()));
        }
        Ok(())
    }

    pub fn check_stop_token_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.len() > self.max_stop_token_ids {
            return Err(bad(
                "stop_token_ids",
                format!(
                    "{} stop token ids; at most {} are allowed",
                    ids.len(),
                    self.max_stop_token_ids
                ),
            ));
        }
        if let Some(id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(bad(
                "stop_token_ids",
                format!("token id {id} is not below the vocabulary size {}", self.vocab_size),
            ));
        }
        Ok(())
    }

    /// Per-request `mm_processor_kwargs.min_pixels` / `max_pixels`: the effective
    /// `(min_pixels, max_pixels)` for this request, the processor's where not given. Both must
    /// be at least one merge block (`resize_factor`²), `min <= max`, and `max_pixels` at most
    /// the processor's own (more would only make the vision tokens outgrow the context).
    pub fn check_mm_pixels(&self, min: Option<u64>, max: Option<u64>, default_min: u64) -> Result<(u64, u64)> {
        let floor = self.resize_factor.saturating_mul(self.resize_factor).max(1);
        let max_px = max.unwrap_or(self.processor_max_pixels);
        let min_px = min.unwrap_or(default_min.min(max_px));
        const MIN: &str = "mm_processor_kwargs.min_pixels";
        const MAX: &str = "mm_processor_kwargs.max_pixels";
        if !(floor..=self.processor_max_pixels).contains(&max_px) {
            return Err(bad(
                MAX,
                format!("must be in [{floor}, {}] (got {max_px})", self.processor_max_pixels),
            ));
        }
        if !(floor..=max_px).contains(&min_px) {
            return Err(bad(
                MIN,
                format!("must be in [{floor}, max_pixels {max_px}] (got {min_px})"),
            ));
        }
        Ok((min_px, max_px))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::PromptInput;

    fn limits() -> RequestLimits {
        RequestLimits::new(2, 1_003_520, 28, 1000, 4096)
    }

    fn field(e: Error) -> &'static str {
        match e {
            Error::Request { field, .. } => field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn sampling_ranges_name_the_field() {
        let ok = SamplingParams::greedy();
        check_sampling(&ok, 2.0).unwrap();
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: 2.5, ..ok }, "temperature"),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..ok
                },
                "temperature",
            ),
            (SamplingParams { top_p: 0.0, ..ok }, "top_p"),
            (SamplingParams { top_p: 1.01, ..ok }, "top_p"),
            (SamplingParams { top_k: -1, ..ok }, "top_k"),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..ok
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    repetition_penalty: 2.5,
                    ..ok
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: -2.1,
                    ..ok
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: f32::INFINITY,
                    ..ok
                },
                "presence_penalty",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(field(check_sampling(&p, 2.0).unwrap_err()), want, "{p:?}");
        }
        // A wider flag admits more.
        check_sampling(&SamplingParams { temperature: 2.5, ..ok }, 5.0).unwrap();
        // The edges are inside.
        check_sampling(
            &SamplingParams {
                temperature: 2.0,
                top_p: 1.0,
                repetition_penalty: 2.0,
                frequency_penalty: -2.0,
                presence_penalty: 2.0,
                ..ok
            },
            2.0,
        )
        .unwrap();
    }

    #[test]
    fn sizes_name_the_field() {
        let l = limits();
        let base = OcrRequest::new(vec![], PromptInput::Text("x".into()));
        l.check(&base).unwrap();
        let with = |f: &dyn Fn(&mut OcrRequest)| {
            let mut r = base.clone();
            f(&mut r);
            l.check(&r).map_err(field)
        };
        assert_eq!(with(&|r| r.images = vec![vec![]; 3]), Err("messages"));
        assert_eq!(
            with(&|r| r.prompt = PromptInput::Text("x".repeat(4096 * 16 + 1))),
            Err("messages")
        );
        assert_eq!(with(&|r| r.stop = vec!["a".into(); 33]), Err("stop"));
        assert_eq!(with(&|r| r.stop = vec!["a".repeat(513)]), Err("stop"));
        assert_eq!(with(&|r| r.stop = vec![String::new()]), Err("stop"));
        assert_eq!(with(&|r| r.stop = vec!["a".repeat(512); 32]), Ok(()));
        assert_eq!(with(&|r| r.stop_token_ids = vec![1; 1025]), Err("stop_token_ids"));
        assert_eq!(with(&|r| r.stop_token_ids = vec![999; 1024]), Ok(()));
        assert_eq!(with(&|r| r.stop_token_ids = vec![1000]), Err("stop_token_ids"));
        assert_eq!(with(&|r| r.top_logprobs = 21), Err("top_logprobs"));
        assert_eq!(with(&|r| r.max_tokens = Some(0)), Err("max_tokens"));
        assert_eq!(
            with(&|r| r.sampling.repetition_penalty = 1e-38),
            Err("repetition_penalty")
        );
        assert_eq!(with(&|r| r.sampling.repetition_penalty = 1e-6), Ok(()));
        assert_eq!(
            with(&|r| r.sampling.repetition_penalty = 0.0),
            Err("repetition_penalty")
        );
        assert_eq!(l.max_decoded_pixels, 16 * 1_003_520);
    }

    #[test]
    fn per_request_pixel_bounds() {
        let l = limits();
        assert_eq!(l.check_mm_pixels(None, None, 112_896).unwrap(), (112_896, 1_003_520));
        assert_eq!(
            l.check_mm_pixels(Some(784), Some(200_000), 112_896).unwrap(),
            (784, 200_000)
        );
        // A max below the default min pulls the default min down with it.
        assert_eq!(
            l.check_mm_pixels(None, Some(50_000), 112_896).unwrap(),
            (50_000, 50_000)
        );
        assert_eq!(
            field(l.check_mm_pixels(None, Some(2_000_000), 112_896).unwrap_err()),
            "mm_processor_kwargs.max_pixels"
        );
        assert_eq!(
            field(l.check_mm_pixels(Some(10), None, 112_896).unwrap_err()),
            "mm_processor_kwargs.min_pixels"
        );
        assert_eq!(
            field(l.check_mm_pixels(Some(300_000), Some(200_000), 112_896).unwrap_err()),
            "mm_processor_kwargs.min_pixels"
        );
    }
}
