#!/usr/bin/env python3
"""transformers' ids for SentencePiece models, the oracle of tests/gpu/sentencepiece_oracle.rs.

Trains small SentencePiece models on generated text (a BPE model with byte fallback, the same
model with `legacy: true` in its config, and a Unigram model), each with user-defined and
control symbols, and writes each into its own directory under --out, as a hub checkpoint that
ships only `tokenizer.model` has it:

    OUT/<name>/tokenizer.model
    OUT/<name>/tokenizer_config.json   LlamaTokenizer settings (ERNIE-4.5's class, spec 6.1)
    OUT/<name>/cases.json              per test string: transformers' ids (AutoTokenizer on the
                                       directory, so transformers' own conversion of the model),
                                       its tokens and decoded text, and SentencePiece's own ids

Needs `sentencepiece`, `protobuf` and `transformers` (no torch, no GPU); exits non-zero without them.
Usage: python3 tools/gpu/sentencepiece_oracle.py --out DIR
"""

import argparse
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

USER_DEFINED = ["<think>", "</think>", "<|IMAGE_PLACEHOLDER|>"]
CONTROL = ["<|begin_of_sentence|>", "<|end_of_sentence|>"]
# Added by tokenizer_config.json past the end of the SentencePiece vocabulary.
NEW_TOKEN = "<|NEW_TOKEN|>"

CASES = [
    "hello world",
    "Hello World",
    "the quick brown fox jumps over the lazy dog",
    "document recognition of 12 tables",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "double  space  inside",
    "tab\tseparated",
    "line one\nline two",
    "\n\nblank lines\n\n",
    " ",
    "",
    "numbers 12345 and 3.14159",
    "文档识别 and 表格",
    "你好，世界！",
    "emoji 😀 and ✓ marks",
    "café naïve résumé",
    "rare ꙮ char",
    "▁already meta",
    "<|begin_of_sentence|>User: describe the image\nAssistant: ",
    "text <|IMAGE_PLACEHOLDER|> more text",
    "<think>\n\n</think>\n\nanswer",
    "a<think>b</think>c",
    "<s>inline bos</s>",
    "<unk> unknown marker",
    NEW_TOKEN + " added past the vocabulary",
    "<|end_of_sentence|>",
]

WORDS = (
    "the quick brown fox jumps over lazy dog hello world document page table figure text "
    "recognition model token image formula chart seal number layout reading order title"
).split()
CJK = "文档识别表格公式图片页面文字模型中文你好世界的是了在一"
PUNCT = [",", ".", ":", ";", "!", "?", "(", ")", "-"]


def corpus_lines(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(3, 14)):
            r = rng.random()
            if r < 0.7:
                w = rng.choice(WORDS)
                parts.append(w.capitalize() if rng.random() < 0.2 else w)
            elif r < 0.85:
                parts.append("".join(rng.choice(CJK) for _ in range(rng.randint(1, 4))))
            elif r < 0.95:
                parts.append(str(rng.randint(0, 99999)))
            else:
                parts.append(rng.choice(PUNCT))
        lines.append(" ".join(parts))
    return lines


def plain(text: str) -> bool:
    """Strings on which SentencePiece itself and a Metaspace("first") pipeline agree: no
    leading space (SentencePiece adds its dummy prefix even then), no symbol that the
    transformers pipeline splits out as an added token, no literal meta symbol."""
    symbols = USER_DEFINED + CONTROL + ["<s>", "</s>", "<unk>", NEW_TOKEN]
    return bool(text) and not text.startswith(" ") and "▁" not in text and not any(s in text for s in symbols)


def train(spm, corpus: Path, prefix: Path, model_type: str) -> None:
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        model_type=model_type,
        vocab_size=900,
        hard_vocab_limit=False,
        byte_fallback=True,
        user_defined_symbols=USER_DEFINED,
        control_symbols=CONTROL,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
    )


def write_case_dir(spm, transformers, model_file: Path, out: Path, model_type: str, legacy: bool) -> None:
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model_file.read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    vocab = sp.get_piece_size()
    added = {str(i): {"content": sp.id_to_piece(i), "special": sp.is_control(i)} for i in range(vocab)}
    added = {k: v for k, v in added.items() if v["content"] in USER_DEFINED + CONTROL}
    added[str(vocab)] = {"content": NEW_TOKEN, "special": True}
    for entry in added.values():
        entry.update({"lstrip": False, "rstrip": False, "single_word": False, "normalized": False})
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "cls_token": "<|begin_of_sentence|>",
        "sep_token": "<|end_of_sentence|>",
        "legacy": legacy,
        "model_max_length": 131072,
        "added_tokens_decoder": added,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    tok = AutoTokenizer.from_pretrained(str(out))
    if (out / "tokenizer.json").exists():
        sys.exit(f"{out}: transformers wrote tokenizer.json; the reader under test must see tokenizer.model alone")
    backend = json.loads(tok.backend_tokenizer.to_str())
    cases = []
    for text in CASES:
        ids = tok.encode(text, add_special_tokens=False)
        cases.append(
            {
                "text": text,
                "transformers": ids,
                "transformers_tokens": tok.convert_ids_to_tokens(ids),
                "transformers_decoded": tok.decode(ids),
                "sentencepiece": sp.encode(text),
                "plain": plain(text),
            }
        )
    report = {
        "model_type": model_type,
        "legacy": legacy,
        "transformers_version": transformers.__version__,
        "sentencepiece_version": spm.__version__,
        "tokenizer_class": type(tok).__name__,
        "backend_model": backend["model"]["type"],
        "pre_tokenizer": backend.get("pre_tokenizer"),
        "normalizer": backend.get("normalizer"),
        "decoder": backend.get("decoder"),
        "cases": cases,
    }
    (out / "cases.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"{out}: {vocab} pieces, transformers {type(tok).__name__} ({backend['model']['type']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import google.protobuf  # noqa: F401  (transformers' SentencePiece extractor reads the proto)
        import sentencepiece as spm
        import transformers
    except ImportError as e:
        sys.exit(f"sentencepiece_oracle.py needs the sentencepiece, protobuf and transformers packages: {e}")

    work = args.out / "train"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(args.seed, 4000)) + "\n", encoding="utf-8")
    for model_type in ["bpe", "unigram"]:
        train(spm, corpus, work / model_type, model_type)
    write_case_dir(spm, transformers, work / "bpe.model", args.out / "bpe", "bpe", legacy=False)
    write_case_dir(spm, transformers, work / "bpe.model", args.out / "bpe_legacy", "bpe", legacy=True)
    write_case_dir(spm, transformers, work / "unigram.model", args.out / "unigram", "unigram", legacy=False)


if __name__ == "__main__":
    main()
