//! Splitting a thinking model's output into `reasoning_content` and `content`
//! (`--reasoning-parser`, docs/ERNIE_4_5_VL_SPEC.md §7), as FastDeploy's `ernie-45-vl` parser
//! intends it:
//!
//! - The model's status comes from the prompt: the last of `<think>` / `</think>` in the prompt
//!   ids decides. An open `<think>` (thinking on) means the output starts as reasoning; a closed
//!   block or neither means it is all content. (`ernie-45-vl-thinking`, for the Thinking model,
//!   has no prompt status: its output always starts as reasoning.)
//! - The output switches to content at its first `</think>`, which goes to neither field. The
//!   marker is recognised as the `</think>` token id (its text is skipped with the special
//!   tokens) or as the literal text `</think>`, which may arrive split across deltas.
//! - Without a `</think>` in a reasoning output, everything is reasoning and content is empty.
//!
//! [`ReasoningSplitter`] does it incrementally for streams; [`split_completion`] for a whole
//! output. Both give the same fields for the same tokens and texts.

use crate::error::{Error, Result};

const END_MARKER: &str = "</think>";

/// The parsers `--reasoning-parser` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningParser {
    /// `ernie-45-vl` (FastDeploy's name; `ernie45`, vLLM's, is an alias): status from the prompt.
    Ernie45Vl,
    /// `ernie-45-vl-thinking`: the output always starts as reasoning.
    Ernie45VlThinking,
}

impl ReasoningParser {
    /// The parser a command line names; an unknown name is an error listing the known ones.
    pub fn from_name(name: &str) -> Result<ReasoningParser> {
        match name {
            "ernie-45-vl" | "ernie45" => Ok(ReasoningParser::Ernie45Vl),
            "ernie-45-vl-thinking" => Ok(ReasoningParser::Ernie45VlThinking),
            other => Err(Error::invalid(
                "--reasoning-parser",
                format!("unknown parser `{other}` (known: ernie-45-vl, ernie45, ernie-45-vl-thinking)"),
            )),
        }
    }
}

/// The ids of the think markers in the model's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinkTokens {
    pub start: u32,
    pub end: u32,
}

/// Whether the output starts as reasoning, from the prompt (see the module comment).
pub fn starts_reasoning(parser: ReasoningParser, tokens: ThinkTokens, prompt_ids: &[u32]) -> bool {
    match parser {
        ReasoningParser::Ernie45VlThinking => true,
        ReasoningParser::Ernie45Vl => prompt_ids
            .iter()
            .rev()
            .find(|&&t| t == tokens.start || t == tokens.end)
            .is_some_and(|&t| t == tokens.start),
    }
}

/// One piece of output, split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitText {
    pub reasoning: String,
    pub content: String,
}

/// The incremental splitter of one request's output.
#[derive(Clone, Debug)]
pub struct ReasoningSplitter {
    end_token: u32,
    in_reasoning: bool,
    /// Reasoning text held back because it ends with a prefix of `</think>`.
    held: String,
}

impl ReasoningSplitter {
    pub fn new(tokens: ThinkTokens, starts_reasoning: bool) -> ReasoningSplitter {
        ReasoningSplitter {
            end_token: tokens.end,
            in_reasoning: starts_reasoning,
            held: String::new(),
        }
    }

    /// One generated token and the text that came with it.
    pub fn push(&mut self, token: u32, text: &str) -> SplitText {
        if !self.in_reasoning {
            return SplitText {
                reasoning: String::new(),
                content: text.to_string(),
            };
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(text);
        if let Some(i) = buf.find(END_MARKER) {
            self.in_reasoning = false;
            return SplitText {
                reasoning: buf[..i].to_string(),
                content: buf[i + END_MARKER.len()..].to_string(),
            };
        }
        if token == self.end_token {
            // The marker's own text was skipped with the special tokens (or held back: a
            // literal prefix of it in `buf` is the marker's and is dropped).
            self.in_reasoning = false;
            let keep = buf.len() - marker_prefix_suffix(&buf);
            buf.truncate(keep);
            return SplitText {
                reasoning: buf,
                content: String::new(),
            };
        }
        let hold = marker_prefix_suffix(&buf);
        self.held = buf.split_off(buf.len() - hold);
        SplitText {
            reasoning: buf,
            content: String::new(),
        }
    }

    /// The end of the output: `text` is the last text handed out with the finish, if any.
    pub fn finish(&mut self, text: &str) -> SplitText {
        // Text after the last token cannot complete a marker token, only a literal one.
        let mut out = self.push(u32::MAX, text);
        if self.in_reasoning {
            out.reasoning.push_str(&std::mem::take(&mut self.held));
        }
        out
    }

    pub fn in_reasoning(&self) -> bool {
        self.in_reasoning
    }
}

/// The longest suffix of `s` (in bytes, on a char boundary) that is a proper prefix of
/// `</think>`: text that may be the start of a marker split across deltas.
fn marker_prefix_suffix(s: &str) -> usize {
    (1..END_MARKER.len())
        .rev()
        .find(|&n| n <= s.len() && s.is_char_boundary(s.len() - n) && END_MARKER.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// A whole output split: `token_ids` and `text` as the completion has them. The marker is the
/// first literal `</think>` in the text or, when its text was skipped, the `</think>` token;
/// there the text is cut where the tokens before it end, which the caller gives as
/// `text_before_end_token` (None: the output has no `</think>` token).
pub fn split_completion(starts_reasoning: bool, text: &str, text_before_end_token: Option<usize>) -> SplitText {
    if !starts_reasoning {
        return SplitText {
            reasoning: String::new(),
            content: text.to_string(),
        };
    }
    if let Some(i) = text.find(END_MARKER) {
        if text_before_end_token.is_none_or(|t| i <= t) {
            return SplitText {
                reasoning: text[..i].to_string(),
                content: text[i + END_MARKER.len()..].to_string(),
            };
        }
    }
    match text_before_end_token {
        Some(t) if t <= text.len() && text.is_char_boundary(t) => SplitText {
            reasoning: text[..t].to_string(),
            content: text[t..].to_string(),
        },
        _ => SplitText {
            reasoning: text.to_string(),
            content: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ThinkTokens = ThinkTokens { start: 7, end: 8 };

    /// Streams (token, text) pairs through a splitter; returns the joined fields.
    fn stream(starts: bool, pieces: &[(u32, &str)], last: &str) -> SplitText {
        let mut s = ReasoningSplitter::new(T, starts);
        let mut all = SplitText::default();
        for &(tok, text) in pieces {
            let o = s.push(tok, text);
            all.reasoning += &o.reasoning;
            all.content += &o.content;
        }
        let o = s.finish(last);
        all.reasoning += &o.reasoning;
        all.content += &o.content;
        all
    }

    #[test]
    fn status_comes_from_the_last_marker_in_the_prompt() {
        let p = ReasoningParser::Ernie45Vl;
        assert!(starts_reasoning(p, T, &[1, 2, 7]));
        assert!(starts_reasoning(p, T, &[8, 1, 7, 3])); // an open <think> after a closed one
        assert!(!starts_reasoning(p, T, &[1, 7, 5, 8, 4])); // the thinking-off template
        assert!(!starts_reasoning(p, T, &[1, 2, 3])); // no marker: responding
        assert!(starts_reasoning(ReasoningParser::Ernie45VlThinking, T, &[1, 2, 3]));
    }

    #[test]
    fn parser_names() {
        assert_eq!(
            ReasoningParser::from_name("ernie-45-vl").unwrap(),
            ReasoningParser::Ernie45Vl
        );
        assert_eq!(
            ReasoningParser::from_name("ernie45").unwrap(),
            ReasoningParser::Ernie45Vl
        );
        assert_eq!(
            ReasoningParser::from_name("ernie-45-vl-thinking").unwrap(),
            ReasoningParser::Ernie45VlThinking
        );
        let err = ReasoningParser::from_name("deepseek_r1").unwrap_err().to_string();
        assert!(err.contains("deepseek_r1") && err.contains("ernie-45-vl"), "{err}");
    }

    #[test]
    fn the_end_token_splits_when_its_text_is_skipped() {
        // "Let me see." then </think> (text skipped) then "\n\nA cat."
        let pieces = [(1, "Let me"), (2, " see."), (8, ""), (3, "\n\nA cat.")];
        let want = SplitText {
            reasoning: "Let me see.".into(),
            content: "\n\nA cat.".into(),
        };
        assert_eq!(stream(true, &pieces, ""), want);
        assert_eq!(split_completion(true, "Let me see.\n\nA cat.", Some(11)), want);
    }

    #[test]
    fn a_literal_marker_split_across_deltas_is_found_and_dropped() {
        let pieces = [(1, "Hmm </th"), (2, "in"), (3, "k>Yes"), (4, ", a dog.")];
        let want = SplitText {
            reasoning: "Hmm ".into(),
            content: "Yes, a dog.".into(),
        };
        assert_eq!(stream(true, &pieces, ""), want);
        assert_eq!(split_completion(true, "Hmm </think>Yes, a dog.", None), want);
    }

    #[test]
    fn a_false_start_of_the_marker_stays_reasoning() {
        // "</th" then other text: held back, then released as reasoning.
        let pieces = [(1, "a </th"), (2, "ree"), (3, " b</")];
        let got = stream(true, &pieces, "");
        assert_eq!(got.reasoning, "a </three b</");
        assert_eq!(got.content, "");
    }

    #[test]
    fn no_marker_means_all_reasoning_and_responding_means_all_content() {
        let pieces = [(1, "still "), (2, "thinking")];
        assert_eq!(
            stream(true, &pieces, " ..."),
            SplitText {
                reasoning: "still thinking ...".into(),
                content: String::new()
            }
        );
        // Responding: even a literal marker is content, as FastDeploy leaves it.
        let pieces = [(1, "plain "), (2, "</think> text")];
        assert_eq!(stream(false, &pieces, "").content, "plain </think> text");
        assert_eq!(
            split_completion(false, "plain </think> text", None).content,
            "plain </think> text"
        );
    }

    #[test]
    fn only_the_first_marker_splits() {
        let text = "r</think>c1</think>c2";
        let want = SplitText {
            reasoning: "r".into(),
            content: "c1</think>c2".into(),
        };
        assert_eq!(split_completion(true, text, None), want);
        assert_eq!(stream(true, &[(1, "r</think>c1"), (2, "</think>c2")], ""), want);
    }

    #[test]
    fn multibyte_text_is_never_cut_inside_a_character() {
        let pieces = [(1, "思考<"), (2, "/"), (3, "think>答案")];
        assert_eq!(
            stream(true, &pieces, ""),
            SplitText {
                reasoning: "思考".into(),
                content: "答案".into()
            }
        );
        assert_eq!(marker_prefix_suffix("思"), 0);
    }
}
