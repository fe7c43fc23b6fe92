#!/usr/bin/env python3
"""Makes the tiny-model fidelity fixture with transformers (the oracle nobody here wrote).

A seeded random PaddleOCR-VL with the real head dims (vision 72, text 128, text GQA 16/2) but
few layers and a small vocabulary with its own special-token ids, saved in the hub checkpoint
layout, with two images of different sizes, a prompt, and what transformers computes on them
in float32 (with the weights rounded to the bf16 that is saved): pixel values, grids, M-RoPE position ids, image features after the projector, the
logits of the prompt followed by 20 greedy tokens, and those tokens.

Random weights give nearly flat logits, so the final RMSNorm weight is scaled up: logits grow
by the same factor and greedy choices get margins that survive bf16 (the minimum margin is
printed and stored).

Needs torch, transformers >= 5 (PaddleOCR-VL built in), safetensors, numpy, Pillow; it runs on
the CPU in a few seconds. The committed fixture was made with transformers 5.17.0, torch 2.15
and Pillow 13.0.0:

    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install torch transformers==5.17.0 safetensors pillow numpy
    /tmp/tf/bin/python tools/make_model_fixture.py tests/fixtures/tiny_model
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration
from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

SEED = 20261123
VOCAB = 512
# Special ids of the tiny vocabulary: none equals the real model's, so an id hard-coded in the
# engine instead of read from the config fails the test.
BOS, EOS, PAD = 10, 2, 0
IMAGE, VIDEO, V_START, V_END = 500, 503, 501, 502
LOGIT_SCALE = 8.0
GREEDY_STEPS = 20
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 40


def make_images():
    rng = np.random.default_rng(SEED)
    # A noisy 150x95 RGB "page" and a 40x230 grayscale-ish "text line": different grids, one
    # downscaled and one upscaled by smart_resize.
    a = rng.integers(0, 256, size=(150, 95, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:40, 0:230]
    b = ((xx * 7 + yy * 3) % 256).astype(np.uint8)
    b = np.stack([b, 255 - b, (b // 2)], axis=-1)
    return [Image.fromarray(a, "RGB"), Image.fromarray(b, "RGB")]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "fixture"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)

    cfg = PaddleOCRVLConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=16, num_key_value_heads=2, head_dim=128, rms_norm_eps=1e-5,
            max_position_embeddings=4096, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            hidden_size=144, intermediate_size=304, num_hidden_layers=2, num_attention_heads=2,
            image_size=384, patch_size=14, layer_norm_eps=1e-6, spatial_merge_size=2,
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END,
        tie_word_embeddings=False,
    )
    model = PaddleOCRVLForConditionalGeneration(cfg).eval().float()
    # The original model resizes its position table with align_corners=False (MODEL_SPEC.md
    # §3.3, §12.1); some transformers releases (5.17 among them) use True. Pin False.
    patched = 0
    for module in model.modules():
        if hasattr(module, "interpolation_align_corners"):
            module.interpolation_align_corners = False
            patched += 1
    assert patched == 1, f"expected one vision embeddings module, found {patched}"
    with torch.no_grad():
        # transformers initialises norms to 1 and biases to 0; perturb them so that a kernel
        # that ignored a weight or bias would be caught.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name or "layernorm" in name or "pre_norm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.05 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
        model.model.language_model.norm.weight.mul_(LOGIT_SCALE)
        # transformers draws embeddings with std 0.02, which leaves the residual stream to the
        # norms' and biases' constants and makes greedy decoding repeat one token; a unit-scale
        # embedding lets each input token steer the next.
        model.model.language_model.embed_tokens.weight.normal_(0.0, 1.0)
        # The hub stores bf16: round every weight to bf16 now, so the oracle below is exactly
        # the saved checkpoint evaluated in float32.
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())

    proc = PaddleOCRVLImageProcessorPil(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        resample=3, patch_size=14, merge_size=2, temporal_patch_size=1,
    )
    images = make_images()
    for i, im in enumerate(images):
        im.save(os.path.join(out, f"image{i}.png"))
    pix = proc(images=images, return_tensors="pt")
    pixel_values = pix["pixel_values"].float()
    grid = pix["image_grid_thw"]

    # <bos>User: <start>{placeholders}<end><start>{placeholders}<end>OCR:\nAssistant:\n, with
    # made-up ids for the text pieces.
    ids = [BOS, 20, 21]
    for t, h, w in grid.tolist():
        ids += [V_START] + [IMAGE] * (t * h * w // 4) + [V_END]
    ids += [30, 31, 40, 41, 42]
    prompt_len = len(ids)

    def forward(seq):
        input_ids = torch.tensor([seq])
        mm = (input_ids == IMAGE).int()
        return model(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid,
                     mm_token_type_ids=mm, use_cache=False).logits[0]

    seq = list(ids)
    margins = []
    with torch.no_grad():
        for _ in range(GREEDY_STEPS):
            logits = forward(seq)[-1]
            top = torch.topk(logits, 2)
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
        logits = forward(seq).float().contiguous()
        input_ids = torch.tensor([seq])
        pos, delta = model.model.get_rope_index(input_ids, mm_token_type_ids=(input_ids == IMAGE).int(),
                                                image_grid_thw=grid)
        feats = model.model.get_image_features(pixel_values, grid).pooler_output
        feats = torch.cat(list(feats), dim=0).float().contiguous()

    # Hub checkpoint layout (MODEL_SPEC §4.2 renames reversed), bf16 as the hub stores it.
    state = {}
    for k, v in model.state_dict().items():
        for new, old in (("model.visual.", "visual."), ("model.projector.", "mlp_AR."), ("model.language_model.", "model.")):
            if k.startswith(new):
                k = old + k[len(new):]
                break
        state[k] = v.to(torch.bfloat16).contiguous()
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt", "fixture": "ocrvl-tiny"})
    model.config.save_pretrained(out)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump({
            "image_processor_type": "PaddleOCRVLImageProcessor", "do_convert_rgb": True, "do_resize": True,
            "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
            "patch_size": 14, "temporal_patch_size": 1, "merge_size": 2,
        }, f, indent=2)

    save_file({
        "pixel_values": pixel_values.contiguous(),
        "image_grid_thw": grid.to(torch.int64).contiguous(),
        "input_ids": torch.tensor(seq, dtype=torch.int64),
        "position_ids": pos[:, 0, :].to(torch.int64).contiguous(),
        "rope_delta": delta.reshape(-1).to(torch.int64).contiguous(),
        "image_features": feats,
        "logits": logits,
        "greedy_margins": torch.tensor(margins, dtype=torch.float32),
    }, os.path.join(out, "expected.safetensors"), metadata={"prompt_len": str(prompt_len), "greedy_steps": str(GREEDY_STEPS)})
    print(f"fixture: {out}: prompt {prompt_len} tokens, grids {grid.tolist()}, greedy {seq[prompt_len:]}, "
          f"min margin {min(margins):.3f}, logits max |.| {logits.abs().max():.2f}")


if __name__ == "__main__":
    main()
