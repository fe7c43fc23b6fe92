//! Incremental detokenisation: generated token ids to text, a piece per token, never cutting
//! a character in two.
//!
//! Decoding one token alone is wrong for tokenizers whose pieces merge (byte fallback, where
//! a character's UTF-8 bytes are separate tokens; leading-space markers), and decoding the
//! whole output every token is quadratic. So two offsets are kept, as in vLLM: text is decoded
//! from `prefix` (a few tokens back, for context) to the end, and the part past the text of
//! `prefix..read` is new.
//!
//! Characters are never split: a decode that ends in U+FFFD (the tokenizer's mark for an
//! incomplete UTF-8 sequence) is held back until a later token completes it, and the new part
//! is cut at a character boundary even when the old window's text is not a prefix of the new
//! one (a tokenizer that strips a leading space renders a window differently once it grows).
//! U+FFFD reaches the text only for bytes that are really invalid, or at the true end
//! ([`IncrementalDetokenizer::flush`]), when the last tokens left a character unfinished.

/// Tokens of context decoded before the new ones.
const CONTEXT_TOKENS: usize = 6;

/// The two offsets into a request's generated ids (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IncrementalDetokenizer {
    /// First token of the decode window.
    prefix: usize,
    /// Tokens up to here have their text handed out.
    read: usize,
}

impl IncrementalDetokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens whose text is held back (an unfinished character).
    pub fn pending(&self, ids: &[u32]) -> usize {
        ids.len() - self.read
    }

    /// The text that the tokens appended to `ids` since the last call complete; empty while a
    /// character is unfinished (or the tokens decode to nothing). `decode` turns ids into
    /// text, special tokens skipped.
    pub fn step<E>(&mut self, ids: &[u32], mut decode: impl FnMut(&[u32]) -> Result<String, E>) -> Result<String, E> {
        if self.read >= ids.len() {
            return Ok(String::new());
        }
        let before = decode(&ids[self.prefix..self.read])?;
        let after = decode(&ids[self.prefix..])?;
        if after.len() <= before.len() || after.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = new_part(&before, &after).to_string();
        self.prefix = self.read.max(ids.len().saturating_sub(CONTEXT_TOKENS));
        self.read = ids.len();
        Ok(new)
    }

    /// At the end of the request: the text of the tokens still held back, U+FFFD included for
    /// a character the output never finished.
    pub fn flush<E>(&mut self, ids: &[u32], mut decode: impl FnMut(&[u32]) -> Result<String, E>) -> Result<String, E> {
        if self.read >= ids.len() {
            return Ok(String::new());
        }
        let before = decode(&ids[self.prefix..self.read])?;
        let after = decode(&ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = ids.len();
        Ok(new_part(&before, &after).to_string())
    }
}

/// What `after` (the grown window's text) adds to `before` (the old window's text): the rest
/// after `before` when it is a prefix, else everything after as many characters as `before`
/// has (vLLM's rule), which is always a character boundary.
fn new_part<'a>(before: &str, after: &'a str) -> &'a str {
    if let Some(rest) = after.strip_prefix(before) {
        return rest;
    }
    let skip = before.chars().count();
    match after.char_indices().nth(skip) {
        Some((at, _)) => &after[at..],
        None => "",
    }
}
