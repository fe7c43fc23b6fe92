//! Incremental detokenisation never splits a character: multi-byte text (CJK, emoji, accents)
//! whose UTF-8 bytes are spread over tokens comes out piece by piece with every piece whole,
//! the pieces add up to the full decode, and U+FFFD appears only for bytes that are invalid or
//! left unfinished at the very end.

use ocrvl::service::IncrementalDetokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TEXT: &str = "Mixed 中文文本 with emoji 🙂🚀, accents ñé and Ω≈ç; 表格 end.";

/// A tokenizer whose token `i` is the byte string `pieces[i]`; decoding joins the bytes and
/// replaces invalid UTF-8 with U+FFFD, as a byte-fallback tokenizer does.
struct BytePieces {
    pieces: Vec<Vec<u8>>,
}

impl BytePieces {
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.pieces[i as usize].clone()).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// `text`'s bytes cut into tokens of 1..=max_len bytes at random places (inside characters
/// too); returns the tokenizer and the ids spelling the text.
fn split(text: &[u8], max_len: usize, seed: u64) -> (BytePieces, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let n = rng.random_range(1..=max_len).min(text.len() - at);
        pieces.push(text[at..at + n].to_vec());
        at += n;
    }
    let ids = (0..pieces.len() as u32).collect();
    (BytePieces { pieces }, ids)
}

/// Feeds the ids one at a time; returns the piece each token released and the flushed rest.
fn stream<E: std::fmt::Debug>(ids: &[u32], decode: impl Fn(&[u32]) -> Result<String, E>) -> (Vec<String>, String) {
    let mut d = IncrementalDetokenizer::new();
    let mut pieces = Vec::new();
    for n in 1..=ids.len() {
        pieces.push(d.step(&ids[..n], &decode).unwrap());
    }
    let rest = d.flush(ids, &decode).unwrap();
    assert_eq!(d.pending(ids), 0);
    (pieces, rest)
}

#[test]
fn bytes_split_across_tokens_come_out_as_whole_characters() {
    for (max_len, seed) in [(1, 0), (2, 1), (3, 2), (5, 3), (7, 4)] {
        let (tok, ids) = split(TEXT.as_bytes(), max_len, seed);
        let (pieces, rest) = stream(&ids, |ids| tok.decode(ids));
        let mut sofar = String::new();
        for (k, p) in pieces.iter().enumerate() {
            assert!(
                !p.contains('\u{FFFD}'),
                "token {k} (pieces up to {max_len} bytes): {p:?}"
            );
            sofar.push_str(p);
            assert!(TEXT.starts_with(&sofar), "after token {k}: {sofar:?}");
        }
        assert_eq!(rest, "", "nothing is left once the text is complete");
        assert_eq!(sofar, TEXT);
    }
}

#[test]
fn an_unfinished_character_at_the_end_is_replaced_only_there() {
    // The text, then the first two of the four bytes of 🙂, one byte per token.
    let mut bytes = TEXT.as_bytes().to_vec();
    bytes.extend_from_slice(&"🙂".as_bytes()[..2]);
    let (tok, ids) = split(&bytes, 1, 0);
    let (pieces, rest) = stream(&ids, |ids| tok.decode(ids));
    let streamed: String = pieces.concat();
    assert!(!streamed.contains('\u{FFFD}'), "{streamed:?}");
    assert_eq!(streamed, TEXT);
    // Flushed at the end: the lossy decode's replacement, and nothing else.
    assert!(rest.chars().all(|c| c == '\u{FFFD}') && !rest.is_empty(), "{rest:?}");
    assert_eq!(streamed + &rest, String::from_utf8_lossy(&bytes));
}

#[test]
fn invalid_bytes_mid_text_are_replaced_where_they_are() {
    // 0xFF is never valid UTF-8: it becomes U+FFFD in place, and the text goes on.
    let mut bytes = b"ab".to_vec();
    bytes.push(0xFF);
    bytes.extend_from_slice("中c".as_bytes());
    let (tok, ids) = split(&bytes, 1, 0);
    let (pieces, rest) = stream(&ids, |ids| tok.decode(ids));
    assert_eq!(pieces.concat() + &rest, "ab\u{FFFD}中c");
}

/// A window decoded alone renders differently from the same tokens inside a longer window
/// (SentencePiece strips the space that starts a decode): the old window's text is then not a
/// prefix of the new one's, and the cut must still fall on a character boundary.
#[test]
fn a_window_that_renders_differently_never_splits_a_character() {
    let text = " 中 文 🙂 x é 表 y";
    for seed in 0..20 {
        let (tok, ids) = split(text.as_bytes(), 3, seed);
        let strip = |ids: &[u32]| tok.decode(ids).map(|s| s.strip_prefix(' ').unwrap_or(&s).to_string());
        // Must not panic, and each piece is a whole-character string (it is a `String`).
        let (pieces, rest) = stream(&ids, strip);
        let all = pieces.concat() + &rest;
        assert!(!all.is_empty());
        assert!(!pieces.concat().contains('\u{FFFD}'), "seed {seed}: {pieces:?}");
    }
}

/// A real `tokenizers` byte-fallback tokenizer (the kind the model ships: SentencePiece BPE
/// with `<0xNN>` byte pieces, `▁` for spaces, the leading space stripped).
#[test]
fn a_byte_fallback_tokenizer_streams_cjk_and_emoji_whole() {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), (1 + b).into());
    }
    vocab.insert("▁Hello".into(), 257.into());
    vocab.insert("▁world".into(), 258.into());
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    let tok: tokenizers::Tokenizer = json.to_string().parse().unwrap();
    let byte_ids = |s: &str| s.bytes().map(|b| 1 + b as u32).collect::<Vec<_>>();
    let mut ids = vec![257];
    ids.extend(byte_ids(" 中文"));
    ids.push(258);
    ids.extend(byte_ids(" 🙂🚀 表格"));
    let decode = |ids: &[u32]| tok.decode(ids, true);
    let full = decode(&ids).unwrap();
    assert_eq!(full, "Hello 中文 world 🙂🚀 表格");
    let (pieces, rest) = stream(&ids, decode);
    for p in &pieces {
        assert!(!p.contains('\u{FFFD}'), "{pieces:?}");
    }
    assert_eq!(pieces.concat() + &rest, full);
    assert_eq!(rest, "");
    // Cut inside 表 (3 bytes, 2 given): streamed text stops before it, the end shows U+FFFD.
    let cut = &ids[..ids.len() - 4];
    let (pieces, rest) = stream(cut, decode);
    assert_eq!(pieces.concat(), "Hello 中文 world 🙂🚀 ");
    assert!(
        rest.starts_with('\u{FFFD}') && rest.chars().all(|c| c == '\u{FFFD}'),
        "{rest:?}"
    );
}
