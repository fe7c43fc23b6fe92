//! `tokenizer.model` read by ocrvl itself (src/preprocess/sentencepiece.rs): model files are
//! written here by a small protobuf encoder, and the ids are worked out by hand from the BPE
//! merge rules (merges ranked by the merged piece's id) and the Unigram scores.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use ocrvl::config::ErnieVlConfig;
use ocrvl::model::ernie_vl::synthetic::{special_tokens, write_synthetic_model, ErnieSyntheticOptions};
use ocrvl::preprocess::image::ImageGrid;
use ocrvl::preprocess::sentencepiece::{
    build_tokenizer, tokenizer_from_dir, ModelType, PieceKind, SentencePieceModel, TokenizerOptions,
};
use ocrvl::preprocess::PromptBuilder;
use tokenizers::Tokenizer;

// ---- protobuf encoder (wire format of sentencepiece_model.proto) --------------------------

const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;
const UNUSED: u64 = 5;
const BYTE: u64 = 6;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn fixed32_field(out: &mut Vec<u8>, field: u64, bits: u32) {
    key(out, field, 5);
    out.extend_from_slice(&bits.to_le_bytes());
}

/// One `ModelProto.SentencePiece`; the type is left out for NORMAL, as protobuf writes it.
fn piece_message(text: &str, score: f32, kind: u64) -> Vec<u8> {
    let mut m = Vec::new();
    bytes_field(&mut m, 1, text.as_bytes());
    fixed32_field(&mut m, 2, score.to_bits());
    if kind != NORMAL {
        varint_field(&mut m, 3, kind);
    }
    m
}

struct Spec {
    pieces: Vec<(String, f32, u64)>,
    model_type: u64,
    byte_fallback: bool,
    add_dummy_prefix: Option<bool>,
}

/// A whole model file, with a few fields ocrvl does not read (they must be skipped).
fn model_file(spec: &Spec) -> Vec<u8> {
    let mut out = Vec::new();
    for (text, score, kind) in &spec.pieces {
        bytes_field(&mut out, 1, &piece_message(text, *score, *kind));
    }
    let mut trainer = Vec::new();
    bytes_field(&mut trainer, 1, b"corpus.txt");
    varint_field(&mut trainer, 3, spec.model_type);
    varint_field(&mut trainer, 4, spec.pieces.len() as u64);
    fixed32_field(&mut trainer, 15, 0.75f32.to_bits());
    varint_field(&mut trainer, 35, spec.byte_fallback as u64);
    varint_field(&mut trainer, 40, 0);
    varint_field(&mut trainer, 43, (-1i64) as u64);
    bytes_field(&mut out, 2, &trainer);
    let mut normalizer = Vec::new();
    bytes_field(&mut normalizer, 1, b"identity");
    bytes_field(&mut normalizer, 2, &[0, 1, 2, 3]);
    if let Some(prefix) = spec.add_dummy_prefix {
        varint_field(&mut normalizer, 3, prefix as u64);
    }
    varint_field(&mut normalizer, 4, 0);
    bytes_field(&mut out, 3, &normalizer);
    // self_test_data, and a 64-bit extension field.
    bytes_field(&mut out, 4, &[]);
    key(&mut out, 200, 1);
    out.extend_from_slice(&[0; 8]);
    out
}

fn p(text: &str, score: f32, kind: u64) -> (String, f32, u64) {
    (text.to_string(), score, kind)
}

/// `<unk>` `<s>` `</s>` and the 256 byte pieces (ids 3 + byte).
fn base_pieces() -> Vec<(String, f32, u64)> {
    let mut v = vec![
        p("<unk>", 0.0, UNKNOWN),
        p("<s>", 0.0, CONTROL),
        p("</s>", 0.0, CONTROL),
    ];
    v.extend((0..=255u8).map(|b| p(&format!("<0x{b:02X}>"), 0.0, BYTE)));
    v
}

/// Normal BPE pieces from id 259: merged pieces first (their id is their merge rank), then
/// single characters, then added pieces.
const BPE_PIECES: [&str; 20] = [
    "▁h", "ll", "▁he", "or", "▁w", "ld", "▁hell", "▁hello", "▁wor", "▁world", "he", // 259..269
    "▁", "h", "e", "l", "o", "w", "r", "d", "!", // 270..278
];
const THINK: u32 = 279;
const END_THINK: u32 = 280;
const IMAGE: u32 = 281;

fn bpe_spec() -> Spec {
    let mut pieces = base_pieces();
    for (i, text) in BPE_PIECES.iter().enumerate() {
        pieces.push(p(text, -(i as f32), NORMAL));
    }
    pieces.push(p("<think>", 0.0, USER_DEFINED));
    pieces.push(p("</think>", 0.0, USER_DEFINED));
    pieces.push(p("<|IMAGE_PLACEHOLDER|>", 0.0, CONTROL));
    Spec {
        pieces,
        model_type: 2,
        byte_fallback: true,
        add_dummy_prefix: None,
    }
}

fn tokenizer_of(spec: &Spec, opts: &TokenizerOptions) -> Result<Tokenizer, String> {
    let model = SentencePieceModel::parse(&model_file(spec), "test/tokenizer.model").map_err(|e| e.to_string())?;
    build_tokenizer(&model, opts, "test/tokenizer.model").map_err(|e| e.to_string())
}

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).unwrap().get_ids().to_vec()
}

fn options(config: Value) -> TokenizerOptions {
    TokenizerOptions::from_configs(Some(&config), "tokenizer_config.json", None, "added_tokens.json").unwrap()
}

#[test]
fn the_model_file_is_read_field_by_field() {
    let model = SentencePieceModel::parse(&model_file(&bpe_spec()), "m").unwrap();
    assert_eq!(model.pieces.len(), 282);
    assert_eq!(model.trainer.model_type, ModelType::Bpe);
    assert!(model.trainer.byte_fallback);
    assert_eq!((model.trainer.unk_id, model.trainer.pad_id), (0, -1));
    assert_eq!(model.normalizer.name, "identity");
    assert!(model.normalizer.add_dummy_prefix, "proto default when absent");
    assert!(!model.normalizer.remove_extra_whitespaces);
    assert_eq!(model.pieces[0].kind, PieceKind::Unknown);
    assert_eq!(model.pieces[3 + 0x41].text, "<0x41>");
    assert_eq!(model.pieces[3 + 0x41].kind, PieceKind::Byte);
    assert_eq!(model.pieces[266].text, "▁hello");
    assert_eq!(model.pieces[266].score, -7.0);
    assert_eq!(model.pieces[266].kind, PieceKind::Normal);
    assert_eq!(model.pieces[THINK as usize].kind, PieceKind::UserDefined);
    assert_eq!(model.unk_id(), Some(0));
}

#[test]
fn bpe_ids_follow_the_merges_of_the_vocabulary() {
    let tok = tokenizer_of(&bpe_spec(), &TokenizerOptions::default()).unwrap();
    // ▁ h e l l o ▁ w o r l d: (▁,h) (l,l) (▁h,e) (o,r) (▁,w) (l,d) (▁he,ll) (▁hell,o)
    // (▁w,or) (▁wor,ld), in the merged pieces' id order.
    assert_eq!(ids(&tok, "hello world"), vec![266, 268]);
    // A leading space is the prefix itself: no second "▁".
    assert_eq!(ids(&tok, " hello"), vec![266]);
    assert_eq!(ids(&tok, "  hello"), vec![270, 266]);
    assert_eq!(ids(&tok, "hello!"), vec![266, 278]);
    // (▁,h) before (h,e): ranks 0 and 11; then (▁h,e) rank 3.
    assert_eq!(ids(&tok, "he"), vec![261]);
    // é is not a piece: its UTF-8 bytes C3 A9.
    assert_eq!(ids(&tok, "hé"), vec![259, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(ids(&tok, "\n"), vec![270, 3 + 0x0A]);
    // Text after an added token gets no prefix: w (o,r) (l,d), and h (l,l) (h,e) -> he ll o.
    assert_eq!(
        ids(&tok, "hello<|IMAGE_PLACEHOLDER|>world"),
        vec![266, IMAGE, 275, 262, 264]
    );
    assert_eq!(ids(&tok, "<s>hello"), vec![1, 269, 260, 274]);
    assert_eq!(
        ids(&tok, "hello <think> world</think>"),
        vec![266, 270, THINK, 268, END_THINK]
    );
    assert_eq!(ids(&tok, ""), Vec::<u32>::new());
    // CONTROL pieces are special, USER_DEFINED ones are not.
    assert_eq!(tok.decode(&[1, 266, IMAGE, THINK], true).unwrap(), "hello<think>");
}

#[test]
fn decoding_gives_back_the_text() {
    let tok = tokenizer_of(&bpe_spec(), &TokenizerOptions::default()).unwrap();
    for text in [
        "hello world",
        "hello world!",
        "hello\nworld\n",
        "a  b   c",
        "trailing ",
        "tab\there",
        "héllo wörld ✓ 日本語 😀",
        "<s>hello</s>",
        "hello <think> world</think>\n\n",
        "中文<|IMAGE_PLACEHOLDER|>文字",
    ] {
        let got = tok.decode(&ids(&tok, text), false).unwrap();
        assert_eq!(got, text, "ids {:?}", ids(&tok, text));
    }
}

#[test]
fn the_prefix_follows_legacy_and_add_prefix_space() {
    let legacy = tokenizer_of(&bpe_spec(), &options(json!({"legacy": true}))).unwrap();
    assert_eq!(ids(&legacy, "hello<s>hello"), vec![266, 1, 266]);
    let current = tokenizer_of(&bpe_spec(), &options(json!({"legacy": false}))).unwrap();
    assert_eq!(ids(&current, "hello<s>hello"), vec![266, 1, 269, 260, 274]);

    let no_prefix = tokenizer_of(&bpe_spec(), &options(json!({"add_prefix_space": false}))).unwrap();
    assert_eq!(ids(&no_prefix, "hello"), vec![269, 260, 274]);
    assert_eq!(no_prefix.decode(&[270, 266], false).unwrap(), "  hello");
    // The model's own add_dummy_prefix = false, and the config overriding it.
    let spec = Spec {
        add_dummy_prefix: Some(false),
        ..bpe_spec()
    };
    let tok = tokenizer_of(&spec, &TokenizerOptions::default()).unwrap();
    assert_eq!(ids(&tok, "hello"), vec![269, 260, 274]);
    let tok = tokenizer_of(&spec, &options(json!({"add_prefix_space": true}))).unwrap();
    assert_eq!(ids(&tok, "hello"), vec![266]);
}

#[test]
fn unigram_models_segment_by_score() {
    let mut pieces = vec![
        p("<unk>", 0.0, UNKNOWN),
        p("<s>", 0.0, CONTROL),
        p("</s>", 0.0, CONTROL),
    ];
    pieces.extend([
        p("▁", -3.0, NORMAL),   // 3
        p("a", -3.0, NORMAL),   // 4
        p("b", -3.0, NORMAL),   // 5
        p("▁a", -2.0, NORMAL),  // 6
        p("ab", -2.5, NORMAL),  // 7
        p("▁ab", -6.0, NORMAL), // 8
        p("c", -4.0, NORMAL),   // 9
        p("<sep>", 0.0, USER_DEFINED),
    ]);
    let spec = Spec {
        pieces,
        model_type: 1,
        byte_fallback: false,
        add_dummy_prefix: None,
    };
    let tok = tokenizer_of(&spec, &TokenizerOptions::default()).unwrap();
    // ▁ab: [▁a, b] -5 beats [▁, ab] -5.5, [▁ab] -6 and [▁, a, b] -9.
    assert_eq!(ids(&tok, "ab"), vec![6, 5]);
    assert_eq!(ids(&tok, "ab c"), vec![6, 5, 3, 9]);
    // Unknown characters: one fused <unk>.
    assert_eq!(ids(&tok, "azz"), vec![6, 0]);
    assert_eq!(ids(&tok, "a<sep>b"), vec![6, 10, 5]);
    assert_eq!(tok.decode(&ids(&tok, "ab c<sep>"), false).unwrap(), "ab c<sep>");
}

#[test]
fn named_special_tokens_of_the_config_are_split_out_whole() {
    let tok = tokenizer_of(&bpe_spec(), &options(json!({"mask_token": {"content": "he"}}))).unwrap();
    assert_eq!(ids(&tok, "hehe"), vec![269, 269]);
    assert_eq!(tok.decode(&[269, 266], true).unwrap(), "hello");
}

#[test]
fn added_tokens_of_the_config_files_keep_their_ids() {
    let config = json!({"added_tokens_decoder": {
        "279": {"content": "<think>", "special": true, "normalized": false},
        "282": {"content": "<|NEW_ONE|>", "special": true},
        "283": {"content": "<|NEW_TWO|>", "special": false},
    }});
    let tok = tokenizer_of(&bpe_spec(), &options(config)).unwrap();
    assert_eq!(ids(&tok, "<|NEW_TWO|><|NEW_ONE|>hello"), vec![283, 282, 269, 260, 274]);
    assert_eq!(tok.token_to_id("<think>"), Some(THINK));
    assert_eq!(tok.decode(&[THINK, 282, 283], true).unwrap(), "<|NEW_TWO|>");

    let added = json!({"<|NEW_ONE|>": 282});
    let opts = TokenizerOptions::from_configs(None, "c", Some(&added), "added_tokens.json").unwrap();
    let tok = tokenizer_of(&bpe_spec(), &opts).unwrap();
    assert_eq!(ids(&tok, "<|NEW_ONE|>"), vec![282]);
}

#[test]
fn added_token_ids_that_disagree_are_refused() {
    let refused = |config: Value, needles: &[&str]| {
        let err = tokenizer_of(&bpe_spec(), &options(config)).unwrap_err();
        for n in needles {
            assert!(err.contains(n), "{n:?} not in: {err}");
        }
        assert!(err.contains("test/tokenizer.model"), "{err}");
    };
    // The vocabulary has <think> at 279.
    refused(
        json!({"added_tokens_decoder": {"5": {"content": "<think>", "special": true}}}),
        &["\"<think>\"", "id 5", "id 279"],
    );
    // Id 270 is "▁" in the vocabulary.
    refused(
        json!({"added_tokens_decoder": {"270": {"content": "<other>"}}}),
        &["id 270", "\"<other>\"", "\"▁\""],
    );
    // A gap past the vocabulary's 282 pieces.
    refused(
        json!({"added_tokens_decoder": {"290": {"content": "<far>"}}}),
        &["\"<far>\"", "290", "282"],
    );
    // One content at two ids past the vocabulary.
    refused(
        json!({"added_tokens_decoder": {"282": {"content": "<x>"}, "283": {"content": "<x>"}}}),
        &["\"<x>\"", "282", "283"],
    );
    let added = json!({"<think>": 280});
    let opts = TokenizerOptions::from_configs(None, "c", Some(&added), "added_tokens.json").unwrap();
    let err = tokenizer_of(&bpe_spec(), &opts).unwrap_err();
    assert!(
        err.contains("added_tokens.json") && err.contains("280") && err.contains("279"),
        "{err}"
    );
}

#[test]
fn malformed_model_files_are_errors_not_panics() {
    let parse = |bytes: &[u8]| SentencePieceModel::parse(bytes, "dir/tokenizer.model").map_err(|e| e.to_string());
    let good = model_file(&bpe_spec());

    let err = parse(&good[..good.len() - 20]).unwrap_err();
    assert!(
        err.contains("dir/tokenizer.model") && err.contains("truncated"),
        "{err}"
    );
    // `pieces` as a varint.
    let err = parse(&[0x08, 0x01]).unwrap_err();
    assert!(err.contains("pieces") && err.contains("varint"), "{err}");
    // Wire type 7 does not exist.
    let err = parse(&[0x0f]).unwrap_err();
    assert!(err.contains("wire type 7"), "{err}");
    let err = parse(b"not read").unwrap_err();
    assert!(err.contains("not a valid SentencePiece model"), "{err}");

    let mut bad_utf8 = Vec::new();
    bytes_field(&mut bad_utf8, 1, &piece_message("ok", 0.0, NORMAL));
    let mut m = Vec::new();
    bytes_field(&mut m, 1, &[0xff, 0xfe]);
    bytes_field(&mut bad_utf8, 1, &m);
    let err = parse(&bad_utf8).unwrap_err();
    assert!(err.contains("piece 1") && err.contains("UTF-8"), "{err}");

    let mut empty = Vec::new();
    bytes_field(&mut empty, 2, &[0x18, 0x02]);
    let err = parse(&empty).unwrap_err();
    assert!(err.contains("empty"), "{err}");

    let word = Spec {
        model_type: 3,
        ..bpe_spec()
    };
    let err = parse(&model_file(&word)).unwrap_err();
    assert!(err.contains("WORD"), "{err}");

    let mut dup = Vec::new();
    for _ in 0..2 {
        bytes_field(&mut dup, 1, &piece_message("x", 0.0, NORMAL));
    }
    let err = parse(&dup).unwrap_err();
    assert!(err.contains("\"x\""), "{err}");

    // Every prefix of a good file, and random bytes: a result either way, never a panic.
    for n in 0..good.len() {
        if let Ok(model) = SentencePieceModel::parse(&good[..n], "m") {
            let _ = build_tokenizer(&model, &TokenizerOptions::default(), "m");
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..2000 {
        let len = rng.random_range(0..64);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) {
            // Start like a real file, so the fuzzing goes past the first key.
            bytes.splice(0..0, good[..40].iter().copied());
        }
        let _ = parse(&bytes);
    }
}

#[test]
fn a_directory_file_names_itself_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.model"), [0x08, 0x01]).unwrap();
    let err = tokenizer_from_dir(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("tokenizer.model") && err.contains("pieces"), "{err}");
    std::fs::write(dir.path().join("tokenizer.model"), model_file(&bpe_spec())).unwrap();
    std::fs::write(dir.path().join("added_tokens.json"), "[1]").unwrap();
    let err = tokenizer_from_dir(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("added_tokens.json"), "{err}");
    std::fs::remove_file(dir.path().join("added_tokens.json")).unwrap();
    let tok = tokenizer_from_dir(dir.path(), Some(&json!({"legacy": true}))).unwrap();
    assert_eq!(ids(&tok, "hello<s>hello"), vec![266, 1, 266]);
}

/// An ERNIE-4.5-VL directory as the hub ships it: `tokenizer.model` with the special tokens at
/// the config's ids (CONTROL, `<think>` and `</think>` USER_DEFINED), padded with UNUSED
/// pieces, and no `tokenizer.json`.
#[test]
fn an_ernie_directory_with_only_tokenizer_model_builds_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ErnieVlConfig::tiny();
    let mut opts = ErnieSyntheticOptions::for_model(true);
    opts.weights = false;
    write_synthetic_model(dir.path(), &cfg, &opts).unwrap();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();

    let vocab = cfg.text.vocab_size;
    let specials = special_tokens(&cfg).unwrap();
    let mut slots: Vec<Option<(String, f32, u64)>> = vec![None; vocab];
    for (i, piece) in base_pieces().into_iter().enumerate() {
        slots[i] = Some(piece);
    }
    for (id, content, _) in &specials {
        let kind = if content.contains("think") {
            USER_DEFINED
        } else {
            CONTROL
        };
        if slots[*id as usize].is_none() {
            slots[*id as usize] = Some(p(content, 0.0, kind));
        }
    }
    let mut normal: Vec<String> = ["Us", "er", "User", "▁P", "▁Pi", "▁Pic"].map(String::from).to_vec();
    normal.push("▁".into());
    normal.extend((0x21u8..0x7f).map(|c| (c as char).to_string()));
    let mut normal = normal.into_iter();
    let mut unused = 0;
    for (i, slot) in slots.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Some(match normal.next() {
                Some(text) => p(&text, -(i as f32), NORMAL),
                None => {
                    unused += 1;
                    p(&format!("<unused{unused}>"), 0.0, UNUSED)
                }
            });
        }
    }
    let spec = Spec {
        pieces: slots.into_iter().map(Option::unwrap).collect(),
        model_type: 2,
        byte_fallback: true,
        add_dummy_prefix: None,
    };
    std::fs::write(dir.path().join("tokenizer.model"), model_file(&spec)).unwrap();
    // The hub config's added_tokens_decoder, at the same ids.
    let config_path = dir.path().join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let decoder: serde_json::Map<String, Value> = specials
        .iter()
        .map(|(id, content, special)| (id.to_string(), json!({"content": content, "special": special})))
        .collect();
    config["added_tokens_decoder"] = Value::Object(decoder);
    std::fs::write(&config_path, config.to_string()).unwrap();

    let prompts = PromptBuilder::from_dir(dir.path(), &cfg).unwrap();
    let tok = prompts.tokenizer();
    let bos = tok.token_to_id("<|begin_of_sentence|>").unwrap();
    let think = tok.token_to_id("<think>").unwrap();
    assert!(specials.iter().any(|s| s.0 == bos) && specials.iter().any(|s| s.0 == think));

    let mut vars = serde_json::Map::new();
    vars.insert("enable_thinking".into(), json!(true));
    let rendered = prompts.render_with(1, "Describe it.", &vars).unwrap();
    let plain = tok.encode(rendered.as_str(), false).unwrap();
    assert_eq!(tok.decode(plain.get_ids(), false).unwrap(), rendered);
    // No prefix after the first token; (Us, er) and (▁Pi, c) merged.
    assert_eq!(
        plain.get_tokens()[..4],
        ["<|begin_of_sentence|>", "User", ":", "▁Pic"].map(String::from)
    );

    let grid = ImageGrid { t: 1, h: 4, w: 6 };
    let prompt = prompts.build_with(&[grid], "Describe it.", &vars).unwrap();
    assert_eq!(prompt.ids[0], bos);
    assert_eq!(*prompt.ids.last().unwrap(), think);
    assert!(!prompt.ids.contains(&0), "no <unk> in {:?}", prompt.ids);
    let span = prompt.image_spans[0].clone();
    assert_eq!(span.len(), 6);
    assert!(prompt.ids[span.clone()]
        .iter()
        .all(|&id| id == cfg.tokens.image_token_id));
    assert_eq!(prompt.ids[span.start - 1], cfg.tokens.image_start_token_id);
    assert_eq!(prompt.ids[span.end], cfg.tokens.image_end_token_id);
}
