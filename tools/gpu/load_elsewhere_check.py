#!/usr/bin/env python3
"""Issue 14, item 6: a directory `synth-model` writes loads in transformers 5 as it is.

    python3 tools/gpu/load_elsewhere_check.py DIR [DIR ...] [--device cuda|cpu]

For each DIR (say `synth-model --tiny --out /tmp/v1` and `synth-model --tiny --version 1.5
--out /tmp/v15`), with no edit to the directory:
  1. AutoProcessor.from_pretrained (with the PIL image backend where torchvision is
     missing): the processor needs tokenizer.image_token (from tokenizer_config.json's
     extra_special_tokens), and reads the image settings from preprocessor_config.json (v1)
     or processor_config.json (1.5);
  2. AutoConfig: tie_word_embeddings is false at the top and in the text config (a flat
     config alone reads as true in transformers 5);
  3. AutoModelForImageTextToText.from_pretrained (else PaddleOCRVLForConditionalGeneration):
     lm_head is not tied to the token embedding (different storage, different values) and
     holds the checkpoint's lm_head.weight, not a fresh initialisation;
  4. one forward on a small image through the processor's chat template: the prompt holds
     one placeholder per merged patch and the logits are finite, of the vocabulary's width.
Prints one PASS/FAIL line per check and exits 1 if any failed. About 30 s per tiny directory
(most of it importing torch); a full-size directory adds its load time.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

import transformers
from transformers import AutoConfig, AutoProcessor

FAILED = []
# Image settings passed to the PIL image processor when it is built by hand.
PROCESSOR_KEYS = ("min_pixels", "max_pixels", "image_mean", "image_std", "resample", "patch_size", "merge_size",
                  "temporal_patch_size", "do_resize", "do_rescale", "rescale_factor", "do_normalize",
                  "do_convert_rgb")


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILED.append(name)
    return ok


def image_settings(d):
    """The directory's image settings: processor_config.json's image_processor, else
    preprocessor_config.json."""
    combined = os.path.join(d, "processor_config.json")
    if os.path.exists(combined):
        with open(combined) as f:
            part = json.load(f).get("image_processor")
        if isinstance(part, dict):
            return part
    with open(os.path.join(d, "preprocessor_config.json")) as f:
        return json.load(f)


def load_processor(d):
    """AutoProcessor as a user calls it; where the host lacks torchvision (transformers 5's
    default image backend), the PIL backend; failing that, the processor built by hand from the
    directory's own files (its tokenizer loaded as it is: no image token passed in)."""
    try:
        return AutoProcessor.from_pretrained(d), "AutoProcessor"
    except ImportError as e:
        if "orchvision" not in str(e):
            raise
        print(f"note: AutoProcessor needs torchvision here ({str(e).strip().splitlines()[0]})")
    try:
        return AutoProcessor.from_pretrained(d, backend="pil"), "AutoProcessor(backend='pil')"
    except (ImportError, TypeError, ValueError) as e:
        print(f"note: AutoProcessor(backend='pil') failed ({e!r}); building the processor by hand")
    from transformers import AutoTokenizer, PaddleOCRVLProcessor
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

    pc = image_settings(d)
    image_processor = PaddleOCRVLImageProcessorPil(**{k: pc[k] for k in PROCESSOR_KEYS if k in pc})
    tokenizer = AutoTokenizer.from_pretrained(d)
    with open(os.path.join(d, "chat_template.jinja")) as f:
        template = f.read()
    processor = PaddleOCRVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    return processor, "PaddleOCRVLProcessor by hand (PIL image processor)"


def load_model(d, device):
    try:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.bfloat16)
    except Exception as e:  # an older auto mapping: the class itself
        print(f"note: AutoModelForImageTextToText failed ({e!r}); trying the class")
        from transformers import PaddleOCRVLForConditionalGeneration

        model = PaddleOCRVLForConditionalGeneration.from_pretrained(d, dtype=torch.bfloat16)
    return model.to(device).eval()


def checkpoint_lm_head(d):
    """lm_head.weight as the directory stores it (single file or shards)."""
    from safetensors import safe_open

    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            file = json.load(f)["weight_map"]["lm_head.weight"]
    else:
        file = "model.safetensors"
    with safe_open(os.path.join(d, file), framework="pt") as f:
        return f.get_tensor("lm_head.weight")


def check_dir(d, device):
    tag = os.path.basename(os.path.normpath(d))
    print(f"== {d} (transformers {transformers.__version__})")

    # 1. The processor, unchanged directory.
    try:
        processor, how = load_processor(d)
        image_token = getattr(processor.tokenizer, "image_token", None)
        check(f"{tag}: processor loads", True, f"{type(processor).__name__} via {how}")
        check(f"{tag}: tokenizer.image_token", image_token == "<|IMAGE_PLACEHOLDER|>", repr(image_token))
        ip = processor.image_processor
        bounds = (getattr(ip, "min_pixels", None), getattr(ip, "max_pixels", None))
        size = getattr(ip, "size", None)
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        edges = (get("shortest_edge"), get("longest_edge"))
        check(f"{tag}: image processor pixel bounds", (112896, 1003520) in (bounds, edges),
              f"min/max {bounds}, size edges {edges}")
    except Exception as e:
        check(f"{tag}: processor loads", False, repr(e))
        processor = None

    # 2. The config's tie flag as transformers reads it.
    cfg = AutoConfig.from_pretrained(d)
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    check(f"{tag}: config.tie_word_embeddings is false", cfg.tie_word_embeddings is False, str(cfg.tie_word_embeddings))
    check(
        f"{tag}: text config tie_word_embeddings is false",
        getattr(text_cfg, "tie_word_embeddings", None) is False,
        str(getattr(text_cfg, "tie_word_embeddings", None)),
    )

    # 3. The model and its head.
    model = load_model(d, device)
    head = model.get_output_embeddings().weight
    emb = model.get_input_embeddings().weight
    check(f"{tag}: lm_head has its own storage", head.data_ptr() != emb.data_ptr())
    check(f"{tag}: lm_head differs from the embedding", not torch.equal(head.cpu(), emb.cpu()))
    stored = checkpoint_lm_head(d).to(head.dtype)
    check(f"{tag}: lm_head is the checkpoint's", torch.equal(head.cpu(), stored), f"shape {tuple(head.shape)}")

    # 4. One forward through the chat template.
    if processor is None:
        check(f"{tag}: forward", False, "no processor")
        return
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (392, 448, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "OCR:"}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(device)
    ids = inputs["input_ids"][0]
    grid = inputs["image_grid_thw"][0].tolist()
    expected = grid[0] * grid[1] * grid[2] // 4
    placeholders = int((ids == cfg.image_token_id).sum())
    check(f"{tag}: one placeholder per merged patch", placeholders == expected, f"{placeholders} for grid {grid}")
    text = processor.tokenizer.decode(ids)
    check(f"{tag}: prompt ends with the generation prompt", text.endswith("OCR:\nAssistant:\n"), repr(text[-40:]))
    with torch.no_grad():
        out = model(**inputs)
    logits = out.logits
    check(
        f"{tag}: forward logits",
        logits.shape[-1] == text_cfg.vocab_size and bool(torch.isfinite(logits.float()).all()),
        f"shape {tuple(logits.shape)}",
    )
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    for d in args.dirs:
        try:
            check_dir(d, args.device)
        except Exception as e:
            check(f"{d}: loads", False, repr(e))
    print(f"{len(FAILED)} failed" if FAILED else "all passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
