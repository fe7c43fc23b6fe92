//! A SentencePiece `tokenizer.model` read directly into a [`tokenizers::Tokenizer`], for model
//! directories that ship no `tokenizer.json` (the ERNIE-4.5-VL hub checkpoints; spec §6.1).
//!
//! The file is a protobuf `ModelProto` (sentencepiece_model.proto): the pieces (text, score,
//! type) in id order, the trainer spec (model type, byte fallback, special ids) and the
//! normaliser spec. It is read here by a small wire-format reader that knows only the fields
//! used and skips the others; malformed input is an error naming the file, never a panic.
//!
//! The tokenizer is built as transformers 5 builds `LlamaTokenizer` (ERNIE-4.5's class) from a
//! `tokenizer.model` when it has no `tokenizer.json`:
//! - BPE models: the vocabulary maps piece -> id (its index); the merges are derived from the
//!   vocabulary as transformers' SentencePiece extractor derives them: every split of a piece
//!   into two pieces that are both in the vocabulary is a merge, ranked by the merged piece's
//!   id, and, for splits of one piece, by the left part's length (transformers also sorts those
//!   by the parts' ids first, but its final sort by length decides). `fuse_unk` is on.
//! - No normaliser. The pre-tokeniser is `Metaspace("▁", split = false)`, which replaces every
//!   space by "▁" and prepends one "▁" to the text: with `legacy = false` (transformers 5's
//!   default) only to the first segment of the input (text that follows an added token gets
//!   none) and not when the text already starts with a space; with `legacy = true` to every
//!   segment; never with `add_prefix_space = false`.
//! - Decoder: "▁" -> " ", byte fallback (`<0x0A>` -> "\n"), fuse, and the one leading space of
//!   the prefix stripped when a prefix is added.
//! - Added tokens: every CONTROL, USER_DEFINED and UNKNOWN piece (CONTROL and UNKNOWN special,
//!   USER_DEFINED not, none normalised), then the entries of `added_tokens.json` and of
//!   `tokenizer_config.json`'s `added_tokens_decoder`, which may also add tokens past the end
//!   of the SentencePiece vocabulary (at contiguous ids, the only ids the `tokenizers` crate
//!   can give them). The config's named special tokens (`bos_token`, `cls_token`,
//!   `extra_special_tokens`, ...) that are in the vocabulary are made special added tokens, as
//!   transformers does; names that are nowhere in the vocabulary are left out.
//! - No post-processor: ERNIE's `add_bos_token` is false and its template writes
//!   `<|begin_of_sentence|>` itself.
//!
//! Choices where transformers 5 reads less of the file than we do (none of them differs for a
//! Llama-style model such as ERNIE's, which has byte pieces, an UNKNOWN piece and
//! `add_dummy_prefix`):
//! - `byte_fallback` comes from the trainer spec (transformers' `LlamaTokenizer` always sets
//!   it; it changes nothing when the byte pieces exist), and the UNKNOWN piece is the BPE unk
//!   token (as transformers 4's converter set it).
//! - `add_prefix_space` defaults to the normaliser spec's `add_dummy_prefix` (transformers
//!   defaults it to true whatever the file says); `tokenizer_config.json` can set it.
//! - UNIGRAM models become a `tokenizers` Unigram model (pieces and scores, the unk id, byte
//!   fallback), which segments them as SentencePiece does. transformers 5.17's `LlamaTokenizer`
//!   derives BPE merges from any model file, which leaves a Unigram vocabulary mostly as single
//!   characters (seen with tools/gpu/sentencepiece_oracle.py); that is not copied.
//! - The normaliser spec's rule (`nmt_nfkc`'s charsmap) and `remove_extra_whitespaces` are read
//!   but not applied, like transformers; SentencePiece itself applies them, so a model trained
//!   with them tokenises some texts (runs of spaces, NFKC-changed characters) differently in
//!   SentencePiece than here and in transformers.
//!
//! The comparison with transformers on trained models is tests/gpu/sentencepiece_oracle.rs
//! (run with transformers 5.17.0 and sentencepiece 0.2.2 on a CPU machine: every string agrees).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::models::unigram::Unigram;
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

use super::processor_config::read_optional;
use super::{PreprocessError, Result};

/// The file name transformers and FastDeploy look for.
pub const MODEL_FILE: &str = "tokenizer.model";

/// SentencePiece's whitespace symbol (U+2581).
const META: char = '\u{2581}';

/// `ModelProto.SentencePiece.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

/// One vocabulary entry; its id is its index in [`SentencePieceModel::pieces`].
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// `TrainerSpec.ModelType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
}

/// The fields of `TrainerSpec` that shape tokenisation, with the proto's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainerSpec {
    pub model_type: ModelType,
    pub byte_fallback: bool,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        TrainerSpec {
            model_type: ModelType::Unigram,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
        }
    }
}

/// The fields of `NormalizerSpec` we read, with the proto's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalizerSpec {
    /// The rule's name (`nmt_nfkc`, `identity`, ...); empty when the file has none.
    pub name: String,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
        }
    }
}

/// A parsed `tokenizer.model`.
#[derive(Clone, Debug, PartialEq)]
pub struct SentencePieceModel {
    pub pieces: Vec<Piece>,
    pub trainer: TrainerSpec,
    pub normalizer: NormalizerSpec,
}

impl SentencePieceModel {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| PreprocessError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes, &path.display().to_string())
    }

    /// Parses the bytes of a model file; `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self> {
        parse_model(bytes).map_err(|message| tok_error(origin, format!("not a valid SentencePiece model: {message}")))
    }

    /// The id of the first UNKNOWN piece.
    pub fn unk_id(&self) -> Option<u32> {
        self.pieces
            .iter()
            .position(|p| p.kind == PieceKind::Unknown)
            .map(|i| i as u32)
    }
}

/// What `tokenizer_config.json` and `added_tokens.json` add to the model file.
#[derive(Clone, Debug, Default)]
pub struct TokenizerOptions {
    /// transformers' `legacy` (default false): prepend "▁" to every segment, not only the first.
    pub legacy: bool,
    /// transformers' `add_prefix_space`; `None` takes the model's `add_dummy_prefix`.
    pub add_prefix_space: Option<bool>,
    /// Added tokens at their ids, in the order their sources are read (later sources override
    /// the flags of earlier ones for the same content).
    pub added_tokens: Vec<AddedTokenSpec>,
    /// Contents named as special tokens (`bos_token`, `extra_special_tokens`, ...).
    pub special_names: Vec<String>,
}

/// One added token of a config file.
#[derive(Clone, Debug)]
pub struct AddedTokenSpec {
    pub id: u32,
    pub token: AddedToken,
    /// Where it was read, for error messages.
    pub source: String,
}

/// `tokenizer_config.json` keys whose value is one special token.
const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

impl TokenizerOptions {
    /// From the parsed `tokenizer_config.json` and `added_tokens.json` (either may be absent);
    /// the origins name them in errors.
    pub fn from_configs(
        config: Option<&Value>,
        config_origin: &str,
        added_tokens_json: Option<&Value>,
        added_origin: &str,
    ) -> Result<Self> {
        let mut opts = TokenizerOptions::default();
        if let Some(added) = added_tokens_json {
            let map = added
                .as_object()
                .ok_or_else(|| tok_error(added_origin, "not a JSON object of token -> id".into()))?;
            for (content, id) in map {
                let id = json_id(id).ok_or_else(|| {
                    tok_error(
                        added_origin,
                        format!("{content:?}: id {id} is not a non-negative integer"),
                    )
                })?;
                opts.added_tokens.push(AddedTokenSpec {
                    id,
                    token: AddedToken::from(content.clone(), false),
                    source: added_origin.to_string(),
                });
            }
        }
        let Some(config) = config else {
            return Ok(opts);
        };
        let bool_field = |key: &str| -> Result<Option<bool>> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(tok_error(config_origin, format!("`{key}` is {other}, not a boolean"))),
            }
        };
        opts.legacy = bool_field("legacy")?.unwrap_or(false);
        opts.add_prefix_space = bool_field("add_prefix_space")?;

        if let Some(decoder) = config.get("added_tokens_decoder") {
            let source = format!("{config_origin}: added_tokens_decoder");
            let map = decoder
                .as_object()
                .ok_or_else(|| tok_error(&source, "not a JSON object of id -> token".into()))?;
            for (key, entry) in map {
                let id: u32 = key
                    .parse()
                    .map_err(|_| tok_error(&source, format!("key {key:?} is not a token id")))?;
                let token = added_token_entry(entry).map_err(|m| tok_error(&source, format!("id {id}: {m}")))?;
                opts.added_tokens.push(AddedTokenSpec {
                    id,
                    token,
                    source: source.clone(),
                });
            }
        }

        for key in SPECIAL_TOKEN_KEYS {
            if let Some(content) = config.get(key).and_then(token_content) {
                opts.special_names.push(content);
            }
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            let values: Vec<&Value> = match config.get(key) {
                Some(Value::Array(list)) => list.iter().collect(),
                Some(Value::Object(map)) => map.values().collect(),
                _ => Vec::new(),
            };
            opts.special_names.extend(values.into_iter().filter_map(token_content));
        }
        Ok(opts)
    }
}

/// Builds the tokenizer of `dir`'s `tokenizer.model`, with `added_tokens.json` when present and
/// `tokenizer_config` (the directory's `tokenizer_config.json`, already parsed).
pub fn tokenizer_from_dir(dir: &Path, tokenizer_config: Option<&Value>) -> Result<Tokenizer> {
    let model_path = dir.join(MODEL_FILE);
    let origin = model_path.display().to_string();
    let model = SentencePieceModel::from_file(&model_path)?;
    let added_path = dir.join("added_tokens.json");
    let added_origin = added_path.display().to_string();
    let added: Option<Value> = match read_optional(&added_path)? {
        Some(text) => {
            Some(serde_json::from_str(&text).map_err(|e| tok_error(&added_origin, format!("not valid JSON: {e}")))?)
        }
        None => None,
    };
    let config_origin = dir.join("tokenizer_config.json").display().to_string();
    let opts = TokenizerOptions::from_configs(tokenizer_config, &config_origin, added.as_ref(), &added_origin)?;
    build_tokenizer(&model, &opts, &origin)
}

/// The tokenizer of `model` (see the module doc); `origin` names the model file in errors.
pub fn build_tokenizer(model: &SentencePieceModel, opts: &TokenizerOptions, origin: &str) -> Result<Tokenizer> {
    let unk_id = model.unk_id();
    let wrapper: ModelWrapper = match model.trainer.model_type {
        ModelType::Bpe => {
            let vocab: Vocab = model
                .pieces
                .iter()
                .enumerate()
                .map(|(id, p)| (p.text.clone(), id as u32))
                .collect();
            let mut builder = BPE::builder()
                .vocab_and_merges(vocab, bpe_merges(&model.pieces))
                .fuse_unk(true)
                .byte_fallback(model.trainer.byte_fallback);
            if let Some(unk) = unk_id {
                builder = builder.unk_token(model.pieces[unk as usize].text.clone());
            }
            builder
                .build()
                .map_err(|e| tok_error(origin, format!("cannot build the BPE model: {e}")))?
                .into()
        }
        ModelType::Unigram => {
            let vocab = model.pieces.iter().map(|p| (p.text.clone(), p.score as f64)).collect();
            Unigram::from(vocab, unk_id.map(|id| id as usize), model.trainer.byte_fallback)
                .map_err(|e| tok_error(origin, format!("cannot build the Unigram model: {e}")))?
                .into()
        }
    };

    let add_prefix_space = opts.add_prefix_space.unwrap_or(model.normalizer.add_dummy_prefix);
    let scheme = match (add_prefix_space, opts.legacy) {
        (false, _) => PrependScheme::Never,
        (true, true) => PrependScheme::Always,
        (true, false) => PrependScheme::First,
    };
    let replace = Replace::new(META.to_string(), " ").map_err(|e| tok_error(origin, e.to_string()))?;
    let mut decoders: Vec<DecoderWrapper> = vec![replace.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_prefix_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tokenizer = Tokenizer::new(wrapper);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(META, scheme, false)));
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

    let added = collect_added_tokens(model, opts, origin)?;
    let tokens: Vec<AddedToken> = added.values().map(|(token, _)| token.clone()).collect();
    tokenizer.add_tokens(&tokens);
    for (&id, (token, source)) in &added {
        let got = tokenizer.token_to_id(&token.content);
        if got != Some(id) {
            return Err(tok_error(
                origin,
                format!(
                    "added token {:?} of {source} should have id {id} but the tokenizer gave it {got:?}",
                    token.content
                ),
            ));
        }
    }
    Ok(tokenizer)
}

/// Merges as transformers derives them from a SentencePiece BPE vocabulary (module doc): the
/// pieces in id order, and each piece's splits from the shortest left part up.
fn bpe_merges(pieces: &[Piece]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = pieces.iter().enumerate().map(|(i, p)| (p.text.as_str(), i)).collect();
    let mut merges = Vec::new();
    for piece in pieces {
        for (at, _) in piece.text.char_indices().skip(1) {
            let (left, right) = piece.text.split_at(at);
            if ids.contains_key(left) && ids.contains_key(right) {
                merges.push((left.to_string(), right.to_string()));
            }
        }
    }
    merges
}

/// Added tokens by id and by content, refusing a content at two ids or two contents at one id.
struct AddedSet<'a> {
    by_id: BTreeMap<u32, (AddedToken, String)>,
    by_content: HashMap<String, u32>,
    origin: &'a str,
}

impl AddedSet<'_> {
    fn insert(&mut self, id: u32, token: AddedToken, source: String) -> Result<()> {
        if let Some(&prev) = self.by_content.get(&token.content) {
            if prev != id {
                return Err(tok_error(
                    self.origin,
                    format!(
                        "added token {:?} has id {prev} in {} but id {id} in {source}",
                        token.content, self.by_id[&prev].1
                    ),
                ));
            }
        }
        if let Some((other, other_source)) = self.by_id.get(&id) {
            if other.content != token.content {
                return Err(tok_error(
                    self.origin,
                    format!(
                        "id {id} is {:?} in {other_source} but {:?} in {source}",
                        other.content, token.content
                    ),
                ));
            }
        }
        self.by_content.insert(token.content.clone(), id);
        self.by_id.insert(id, (token, source));
        Ok(())
    }
}

/// Every added token at its id, checked against the SentencePiece vocabulary and each other:
/// id -> (token, source).
fn collect_added_tokens(
    model: &SentencePieceModel,
    opts: &TokenizerOptions,
    origin: &str,
) -> Result<BTreeMap<u32, (AddedToken, String)>> {
    let piece_ids: HashMap<&str, u32> = model
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.text.as_str(), i as u32))
        .collect();
    let mut set = AddedSet {
        by_id: BTreeMap::new(),
        by_content: HashMap::new(),
        origin,
    };

    for (id, piece) in model.pieces.iter().enumerate() {
        let special = match piece.kind {
            PieceKind::Control | PieceKind::Unknown => true,
            PieceKind::UserDefined => false,
            _ => continue,
        };
        let token = AddedToken::from(piece.text.clone(), special).normalized(false);
        set.insert(id as u32, token, "the SentencePiece vocabulary".into())?;
    }
    for spec in &opts.added_tokens {
        match piece_ids.get(spec.token.content.as_str()) {
            Some(&piece_id) if piece_id != spec.id => {
                return Err(tok_error(
                    origin,
                    format!(
                        "added token {:?} has id {} in {} but id {piece_id} in the SentencePiece vocabulary",
                        spec.token.content, spec.id, spec.source
                    ),
                ))
            }
            None if (spec.id as usize) < model.pieces.len() => {
                return Err(tok_error(
                    origin,
                    format!(
                        "id {} is {:?} in {} but {:?} in the SentencePiece vocabulary",
                        spec.id, spec.token.content, spec.source, model.pieces[spec.id as usize].text
                    ),
                ))
            }
            _ => set.insert(spec.id, spec.token.clone(), spec.source.clone())?,
        }
    }
    for name in &opts.special_names {
        if let Some(&id) = set.by_content.get(name) {
            let entry = set.by_id.get_mut(&id).expect("indexed with by_content");
            entry.0 = entry.0.clone().special(true);
        } else if let Some(&id) = piece_ids.get(name.as_str()) {
            let token = AddedToken::from(name.clone(), true).normalized(false);
            set.insert(id, token, "the special tokens of tokenizer_config.json".into())?;
        }
    }

    // Tokens past the vocabulary get the next free id in the order they are added, so their
    // ids must continue the vocabulary without a gap.
    let first = model.pieces.len() as u32;
    for (next, (&id, (token, source))) in (first..).zip(set.by_id.range(first..)) {
        if id != next {
            return Err(tok_error(
                origin,
                format!(
                    "added token {:?} of {source} has id {id}, but the ids past the SentencePiece \
                     vocabulary ({} pieces) must be contiguous and the next free one is {next}",
                    token.content,
                    model.pieces.len()
                ),
            ));
        }
    }
    Ok(set.by_id)
}

/// An `added_tokens_decoder` entry: `{"content": ..., "special": ..., "lstrip": ..., ...}`.
fn added_token_entry(entry: &Value) -> std::result::Result<AddedToken, String> {
    let obj = entry
        .as_object()
        .ok_or_else(|| format!("{entry} is not an added-token object"))?;
    let content = obj
        .get("content")
        .and_then(Value::as_str)
        .ok_or("no string `content`")?;
    let flag = |key: &str, default: bool| -> std::result::Result<bool, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format!("`{key}` is {other}, not a boolean")),
        }
    };
    let special = flag("special", false)?;
    Ok(AddedToken::from(content, special)
        .lstrip(flag("lstrip", false)?)
        .rstrip(flag("rstrip", false)?)
        .single_word(flag("single_word", false)?)
        .normalized(flag("normalized", !special)?))
}

/// A special token's text: a string or an added-token object's `content`.
fn token_content(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn json_id(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}

fn tok_error(origin: &str, message: String) -> PreprocessError {
    PreprocessError::Tokenizer {
        origin: origin.to_string(),
        message,
    }
}

// ---- protobuf wire format ----------------------------------------------------------------

/// One field's value, by wire type (groups, wire types 3 and 4, are not accepted).
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl Wire<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Wire::Varint(_) => "varint",
            Wire::Fixed64 => "64-bit",
            Wire::Bytes(_) => "length-delimited",
            Wire::Fixed32(_) => "32-bit",
        }
    }
}

/// Reads the fields of one message in order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The message's name, for errors.
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Fields { buf, pos: 0, what }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(format!("{}: truncated varint at byte {}", self.what, self.pos));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!(
            "{}: varint longer than 10 bytes at byte {}",
            self.what, self.pos
        ))
    }

    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(format!(
                "{}: truncated: a field needs {n} bytes at byte {} but {left} are left",
                self.what, self.pos
            ));
        }
        let out = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    /// The next (field number, value), or `None` at the end of the message.
    fn next(&mut self) -> std::result::Result<Option<(u64, Wire<'a>)>, String> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(format!("{}: field number 0 at byte {at}", self.what));
        }
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let n = self.varint()?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Wire::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            wire => {
                return Err(format!(
                    "{}: field {field} at byte {at} has wire type {wire}, which this reader does not accept",
                    self.what
                ))
            }
        };
        Ok(Some((field, value)))
    }
}

fn wrong_wire(what: &str, field: &str, got: &Wire, want: &str) -> String {
    format!("{what}: field `{field}` is {}, expected {want}", got.type_name())
}

fn varint_of(what: &str, field: &str, wire: &Wire) -> std::result::Result<u64, String> {
    match wire {
        Wire::Varint(v) => Ok(*v),
        other => Err(wrong_wire(what, field, other, "varint")),
    }
}

fn bytes_of<'a>(what: &str, field: &str, wire: &Wire<'a>) -> std::result::Result<&'a [u8], String> {
    match wire {
        Wire::Bytes(b) => Ok(b),
        other => Err(wrong_wire(what, field, other, "length-delimited")),
    }
}

/// A proto `int32`: negative values are sign-extended to 64 bits on the wire.
fn int32_of(what: &str, field: &str, wire: &Wire) -> std::result::Result<i32, String> {
    Ok(varint_of(what, field, wire)? as i64 as i32)
}

fn parse_model(bytes: &[u8]) -> std::result::Result<SentencePieceModel, String> {
    let mut pieces = Vec::new();
    let mut trainer = TrainerSpec::default();
    let mut normalizer = NormalizerSpec::default();
    let mut fields = Fields::new(bytes, "ModelProto");
    while let Some((field, wire)) = fields.next()? {
        match field {
            1 => {
                let body = bytes_of("ModelProto", "pieces", &wire)?;
                pieces.push(parse_piece(body).map_err(|m| format!("piece {}: {m}", pieces.len()))?);
            }
            2 => parse_trainer(bytes_of("ModelProto", "trainer_spec", &wire)?, &mut trainer)?,
            3 => parse_normalizer(bytes_of("ModelProto", "normalizer_spec", &wire)?, &mut normalizer)?,
            _ => {}
        }
    }
    if pieces.is_empty() {
        return Err("the vocabulary is empty (no pieces)".into());
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(pieces.len());
    for (id, piece) in pieces.iter().enumerate() {
        if let Some(first) = seen.insert(piece.text.as_str(), id) {
            return Err(format!("pieces {first} and {id} are both {:?}", piece.text));
        }
    }
    Ok(SentencePieceModel {
        pieces,
        trainer,
        normalizer,
    })
}

fn parse_piece(body: &[u8]) -> std::result::Result<Piece, String> {
    const WHAT: &str = "SentencePiece";
    let mut piece = Piece {
        text: String::new(),
        score: 0.0,
        kind: PieceKind::Normal,
    };
    let mut fields = Fields::new(body, WHAT);
    while let Some((field, wire)) = fields.next()? {
        match field {
            1 => {
                let raw = bytes_of(WHAT, "piece", &wire)?;
                piece.text = std::str::from_utf8(raw)
                    .map_err(|e| format!("the piece text {raw:?} is not UTF-8 ({e})"))?
                    .to_string();
            }
            2 => match wire {
                Wire::Fixed32(bits) => piece.score = f32::from_bits(bits),
                other => return Err(wrong_wire(WHAT, "score", &other, "32-bit")),
            },
            3 => {
                piece.kind = match varint_of(WHAT, "type", &wire)? {
                    1 => PieceKind::Normal,
                    2 => PieceKind::Unknown,
                    3 => PieceKind::Control,
                    4 => PieceKind::UserDefined,
                    5 => PieceKind::Unused,
                    6 => PieceKind::Byte,
                    other => return Err(format!("unknown piece type {other}")),
                }
            }
            _ => {}
        }
    }
    if piece.text.is_empty() {
        return Err("the piece text is empty".into());
    }
    Ok(piece)
}

fn parse_trainer(body: &[u8], spec: &mut TrainerSpec) -> std::result::Result<(), String> {
    const WHAT: &str = "TrainerSpec";
    let mut fields = Fields::new(body, WHAT);
    while let Some((field, wire)) = fields.next()? {
        match field {
            3 => {
                spec.model_type = match varint_of(WHAT, "model_type", &wire)? {
                    1 => ModelType::Unigram,
                    2 => ModelType::Bpe,
                    3 => return Err("model type WORD is not supported (only BPE and UNIGRAM are)".into()),
                    4 => return Err("model type CHAR is not supported (only BPE and UNIGRAM are)".into()),
                    other => return Err(format!("unknown model type {other}")),
                }
            }
            35 => spec.byte_fallback = varint_of(WHAT, "byte_fallback", &wire)? != 0,
            40 => spec.unk_id = int32_of(WHAT, "unk_id", &wire)?,
            41 => spec.bos_id = int32_of(WHAT, "bos_id", &wire)?,
            42 => spec.eos_id = int32_of(WHAT, "eos_id", &wire)?,
            43 => spec.pad_id = int32_of(WHAT, "pad_id", &wire)?,
            _ => {}
        }
    }
    Ok(())
}

fn parse_normalizer(body: &[u8], spec: &mut NormalizerSpec) -> std::result::Result<(), String> {
    const WHAT: &str = "NormalizerSpec";
    let mut fields = Fields::new(body, WHAT);
    while let Some((field, wire)) = fields.next()? {
        match field {
            1 => {
                let raw = bytes_of(WHAT, "name", &wire)?;
                spec.name = String::from_utf8_lossy(raw).into_owned();
            }
            3 => spec.add_dummy_prefix = varint_of(WHAT, "add_dummy_prefix", &wire)? != 0,
            4 => spec.remove_extra_whitespaces = varint_of(WHAT, "remove_extra_whitespaces", &wire)? != 0,
            _ => {}
        }
    }
    Ok(())
}
