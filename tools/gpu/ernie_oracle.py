#!/usr/bin/env python3
"""Oracle for ERNIE-4.5-VL-28B-A3B fidelity tests (issue 18), run on the GPU host.

Builds a seeded random `Ernie4_5_VLMoeForConditionalGeneration` from a config (no download, no
network), saves it with `save_pretrained`, lists every parameter and every saved tensor (names,
shapes, dtypes: checks docs/ERNIE_4_5_VL_SPEC.md section 4), runs one forward on an image + text
prompt in fp32 and in bf16, and writes the logits and the inputs as .npy for ocrvl's tests.

Variants:
  tiny     a few MB, shaped for ocrvl's kernels: 3 LM layers (dense + 2 MoE, 8+8 experts of 96 / 32,
           top-2), hidden 640 as 5 query heads and 1 KV head of 128, 2 ViT blocks of width 160 (2
           heads of 80), vocabulary 1024 with the image and video ids moved to 1000..1005
           (TINY_IDS). ocrvl's GPU fidelity test (tests/gpu/ernie_oracle.rs) runs it.
  reduced  full width (2560 / 1280, 64+64 experts, real head sizes), 3 LM layers (layer 0 dense,
           1-2 MoE), 2 ViT blocks. About 2.6B parameters: ~10.5 GB in fp32 on the GPU.
  full     the real 28B-A3B shapes (28 layers, 32 ViT blocks), random. bf16 only (--no-f32 is
           implied): ~59 GB, needs the 80 GB card. Use --generate N for greedy tokens.

Usage (GPU host, transformers >= 5 with the ernie4_5_vl_moe model built in):
  python3 tools/gpu/ernie_oracle.py --variant reduced --out /tmp/ernie_oracle_reduced
  python3 tools/gpu/ernie_oracle.py --variant tiny --out /tmp/ernie_oracle_tiny [--device cpu]
  python3 tools/gpu/ernie_oracle.py --variant full --generate 32 --out /tmp/ernie_oracle_full
  add --start-end-text to route <|IMAGE_START|>/<|IMAGE_END|> to the text experts (FastDeploy's
  choice) instead of the vision experts (transformers' choice); compare the two logits files.

Outputs in --out: model/ (save_pretrained, bf16 weights, every value bf16-exact), params_model.tsv
(parameters of the reloaded bf16 model), params_saved.tsv (tensors in the saved files), inputs.npz
(input_ids, pixel_values, image_grid_thw, mm_token_type_ids, moe_mm_token_type_ids; also one .npy
each), position_ids.npy
([3, 1, S] from get_rope_index), image_<i>.npy (uint8 HxWx3), logits_bf16.npy and logits_f32.npy
([S, vocab] float32), image_embeds_f32.npy (resampler output), generated_bf16.npy (--generate),
report.json (versions, spec checks, f32-vs-bf16 error).
"""
import argparse
import json
import os
import time

import numpy as np
import torch

# Special ids of ERNIE-4.5-VL (transformers config defaults; spec section 6.2). The random model
# only cares about the image ids (they go in the config); the rest of the prompt is random text ids.
# The tiny variant moves them into a 1024-token vocabulary so that its files stay small.
REAL_IDS = dict(vocab=103424, bos=100273, image=100295, start=101304, end=101305, text_max=100000)
TINY_IDS = dict(vocab=1024, bos=1, image=1000, start=1001, end=1002, text_max=1000,
                video_start=1003, video_end=1004, video=1005)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
PATCH = 14
MERGE = 2


def special_ids(variant):
    return TINY_IDS if variant == "tiny" else REAL_IDS


def configs(variant):
    """(text_config, vision_config, image sizes HxW) for a variant. Image sizes are multiples of
    28 inside the pixel bounds, so smart_resize is the identity and no resampling is involved."""
    if variant == "tiny":
        # Head sizes as in the real model (text 128, vision 80): the ones ocrvl's kernels build.
        text = dict(hidden_size=640, intermediate_size=384, num_hidden_layers=3, num_attention_heads=5,
                    num_key_value_heads=1, moe_intermediate_size=[96, 32], moe_k=2, moe_num_experts=8,
                    mrope_section=[22, 22, 20])
        vision = dict(depth=2, hidden_size=160, intermediate_size=640, num_heads=2)
        images = [(56, 84), (84, 56)]
    else:
        text = dict(hidden_size=2560, intermediate_size=12288, num_attention_heads=20, num_key_value_heads=4,
                    moe_intermediate_size=[1536, 512], moe_k=6, moe_num_experts=64, mrope_section=[22, 22, 20],
                    num_hidden_layers=28 if variant == "full" else 3)
        vision = dict(depth=32 if variant == "full" else 2, hidden_size=1280, intermediate_size=5120, num_heads=16)
        images = [(280, 336), (140, 196)]
    layers = text["num_hidden_layers"]
    section = text.pop("mrope_section")
    text.update(vocab_size=special_ids(variant)["vocab"], hidden_act="silu", max_position_embeddings=131072,
                rms_norm_eps=1e-5, use_bias=False, tie_word_embeddings=True, moe_num_shared_experts=2,
                moe_norm_min=1e-12,
                mlp_layer_types=["dense"] + ["sparse"] * (layers - 1),
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0, "mrope_section": section})
    vision.update(hidden_act="quick_gelu", in_channels=3, patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_merge_size=2, rms_norm_eps=1e-6)
    return text, vision, images


def build_model(args, device):
    from transformers import Ernie4_5_VLMoeConfig, Ernie4_5_VLMoeForConditionalGeneration

    text, vision, images = configs(args.variant)
    sid = special_ids(args.variant)
    video = {f"{k}_token_id": sid[k] for k in ("video_start", "video_end", "video") if k in sid}
    cfg = Ernie4_5_VLMoeConfig(text_config=text, vision_config=vision, image_token_id=sid["image"],
                               image_start_token_id=sid["start"], image_end_token_id=sid["end"],
                               tie_word_embeddings=True, **video)
    torch.manual_seed(args.seed)
    build_dtype = torch.bfloat16 if args.variant == "full" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(build_dtype)
    try:
        with torch.device(device):
            model = Ernie4_5_VLMoeForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(previous)
    randomize_(model, args.seed)
    return model.eval(), images


@torch.no_grad()
def randomize_(model, seed):
    """Make the parts that the default init leaves trivial matter, then round every value to bf16
    so that the fp32 and bf16 runs use the same weights. Norm weights 1 + 0.1 N, LayerNorm and Linear
    biases 0.02 N, correction biases 0.01 N (router probabilities are ~1/64, so the bias really
    changes which experts are chosen)."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)

    def noise(t, std):
        return (torch.randn(t.shape, generator=gen) * std).to(t.device, t.dtype)

    for module in model.modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.LayerNorm) or kind.endswith("RMSNorm"):
            module.weight.copy_(1.0 + noise(module.weight, 0.1))
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(noise(module.bias, 0.02))
        elif isinstance(module, torch.nn.Linear) and module.bias is not None:
            module.bias.copy_(noise(module.bias, 0.02))
    for name, param in model.named_parameters():
        if name.endswith("e_score_correction_bias"):
            param.copy_(noise(param, 0.01))
    for param in model.parameters():
        param.copy_(param.to(torch.bfloat16).to(param.dtype))


def save(model, model_dir, report):
    """save_pretrained (v5 may apply the reverse of the hub->native conversion, spec section 4.3).
    If that fails, fall back to the native state dict so that the forward runs still happen, and say
    so in the report."""
    try:
        model.save_pretrained(model_dir, max_shard_size="4GB")
        report["save"] = "save_pretrained"
    except Exception as e:
        from safetensors.torch import save_file

        report["save"] = "fallback: native state dict (save_pretrained failed: " + repr(e) + ")"
        os.makedirs(model_dir, exist_ok=True)
        model.config.save_pretrained(model_dir)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
                 if k != "lm_head.weight"}
        save_file(state, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})


def write_saved_table(model_dir, out):
    """Every tensor the saved files hold (name, shape, dtype, file): the layout save_pretrained wrote."""
    from safetensors import safe_open

    rows = []
    for fname in sorted(os.listdir(model_dir)):
        if fname.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, fname), framework="pt") as st:
                for key in st.keys():
                    sl = st.get_slice(key)
                    rows.append(f"{key}\t{list(sl.get_shape())}\t{sl.get_dtype()}\t{fname}\n")
    with open(os.path.join(out, "params_saved.tsv"), "w") as f:
        f.writelines(sorted(rows))
    return len(rows)


def write_model_table(model, out):
    """Every parameter of the loaded bf16 model (the fp32-kept router weights show as float32)."""
    with open(os.path.join(out, "params_model.tsv"), "w") as f:
        for name, p in model.named_parameters():
            f.write(f"{name}\t{list(p.shape)}\t{str(p.dtype).replace('torch.', '')}\n")


def make_image(h, w, index):
    """Deterministic RGB uint8 image with structure in both axes and every channel."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 127.5 + 127.5 * np.sin(x / (7.0 + index) + y / 23.0)
    g = 127.5 + 127.5 * np.cos(y / (5.0 + index) - x / 31.0)
    b = (x * 3 + y * 5 + 40 * index) % 256
    return np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8)


def manual_pixels(img):
    """Spec section 5.3: /255, CLIP mean/std, 14x14 patches in 2x2-merge-block order, (c, ky, kx)."""
    h, w = img.shape[0] // PATCH, img.shape[1] // PATCH
    x = (img.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD          # [H, W, 3]
    x = x.transpose(2, 0, 1).reshape(3, h // MERGE, MERGE, PATCH, w // MERGE, MERGE, PATCH)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)                                   # (bh, bw, r, c, C, ky, kx)
    return x.reshape(h * w, 3 * PATCH * PATCH), (1, h, w)


def processor_check(images, manual):
    """Run transformers' image processor (if it can be built offline) and compare with the manual
    pixels. Returns a dict for the report; never raises."""
    import transformers

    names = ("Ernie4_5_VLMoeImageProcessor", "Ernie4_5_VLMoeImageProcessorFast", "Ernie4_5_VLMoeImageProcessorPil")
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        try:
            proc = cls(image_mean=CLIP_MEAN.tolist(), image_std=CLIP_STD.tolist())
            got = proc(images=[torch.from_numpy(i).permute(2, 0, 1) for i in images], return_tensors="pt")
            pv = got["pixel_values"].float().numpy()
            same_shape = pv.shape == manual.shape
            return {"class": name, "shape": list(pv.shape), "grid": got["image_grid_thw"].tolist(),
                    "max_abs_diff": float(np.abs(pv - manual).max()) if same_shape else None,
                    "looks_unnormalised": bool(pv.max() > 10.0)}
        except Exception as e:  # report, do not fail: the oracle uses the manual pixels
            return {"class": name, "error": repr(e)}
    return {"error": "no Ernie4_5_VLMoe image processor class in this transformers"}


def build_prompt(grids, rng, start_end_text, sid):
    """<bos> "User: " { "Picture n:" <start> placeholders <end> } question "\\nAssistant: " think-block,
    with random ids standing for the text (spec section 6.3)."""

    def text(n):
        return rng.integers(3, sid["text_max"], size=n).tolist()

    ids = [sid["bos"]] + text(3)
    for _, h, w in grids:
        ids += text(4) + [sid["start"]] + [sid["image"]] * (h * w // MERGE**2) + [sid["end"]]
    ids += text(12) + text(4) + text(5)
    ids = np.array([ids], dtype=np.int64)
    mm = (ids == sid["image"]).astype(np.int64)
    moe = mm.copy()
    if not start_end_text:
        moe[(ids == sid["start"]) | (ids == sid["end"])] = 1
    return ids, mm, moe


def load(model_dir, dtype, device):
    """Reload the saved directory with eager attention (and eager experts where the version knows
    the option), so the fp32 run is the plain reference computation."""
    from transformers import Ernie4_5_VLMoeForConditionalGeneration as Cls

    errors = []
    for extra in ({"experts_implementation": "eager"}, {}):
        for dkey in ("dtype", "torch_dtype"):
            try:
                model = Cls.from_pretrained(model_dir, attn_implementation="eager", **{dkey: dtype}, **extra)
                return model.to(device).eval()
            except (TypeError, ValueError) as e:
                errors.append(repr(e))
    raise RuntimeError("could not load the saved model: " + " | ".join(errors))


def implementations(model):
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return {"attn": getattr(cfg, "_attn_implementation", None),
            "experts": getattr(cfg, "_experts_implementation", None)
            or getattr(text, "_experts_implementation", None)}


@torch.no_grad()
def forward(model, inputs, device):
    t = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
    out = model(input_ids=t["input_ids"], attention_mask=torch.ones_like(t["input_ids"]),
                pixel_values=t["pixel_values"], image_grid_thw=t["image_grid_thw"],
                mm_token_type_ids=t["mm_token_type_ids"], moe_mm_token_type_ids=t["moe_mm_token_type_ids"],
                use_cache=False)
    feats = model.model.get_image_features(t["pixel_values"], t["image_grid_thw"])
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats
    return out.logits[0].float().cpu().numpy(), feats.float().cpu().numpy()


@torch.no_grad()
def check_router(model, inputs, device):
    """Spec section 3.12 on MoE layer 1, both pools: softmax in fp32, top-k of (p + bias), weights =
    p at the chosen experts renormalised. Compares the chosen sets and the weights with the gate."""
    seen = {}

    def hook(name):
        def fn(module, args, output):
            seen[name] = (module, args[0].detach(), output)
        return fn

    mlp = model.model.language_model.layers[1].mlp
    handles = [mlp.text_moe.gate.register_forward_hook(hook("text")),
               mlp.vision_moe.gate.register_forward_hook(hook("vision"))]
    try:
        forward(model, inputs, device)
    finally:
        for h in handles:
            h.remove()
    result = {}
    for name, (gate, x, output) in seen.items():
        if not (isinstance(output, tuple) and len(output) == 3):
            result[name] = f"gate output is {type(output).__name__}, not (logits, weights, experts)"
            continue
        _, weights, experts = output
        p = torch.softmax(x.float() @ gate.weight.float().T, -1)
        bias = gate.moe_statics.e_score_correction_bias.float().reshape(-1)
        sel = torch.topk(p + bias, gate.top_k, dim=-1).indices
        w = p.gather(-1, sel)
        w = w / w.sum(-1, keepdim=True).clamp(min=gate.norm_min)
        order_spec, order_hf = sel.sort(-1), experts.sort(-1)
        same = (order_spec.values == order_hf.values).all(-1)
        w_spec = w.gather(-1, order_spec.indices)
        w_hf = weights.float().gather(-1, order_hf.indices)
        w_diff = float((w_spec - w_hf)[same].abs().max()) if same.any() else None
        result[name] = {"tokens": int(x.shape[0]), "same_experts_fraction": float(same.float().mean()),
                        "weight_max_abs_diff_where_same": w_diff}
    return result


@torch.no_grad()
def check_rope(model, inputs, device):
    """Spec section 3.10: pair i uses f_i = theta^(-i/64); axis H (even i < hw), W (odd i < hw), T."""
    lm = model.model.language_model
    ids = torch.from_numpy(inputs["input_ids"]).to(device)
    mm = torch.from_numpy(inputs["mm_token_type_ids"]).to(device)
    grid = torch.from_numpy(inputs["image_grid_thw"]).to(device)
    pos, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid)
    dummy = torch.zeros(1, ids.shape[1], lm.config.hidden_size, device=device)
    cos, sin = lm.rotary_emb(dummy, pos)
    sec = lm.config.rope_parameters["mrope_section"]
    theta = lm.config.rope_parameters["rope_theta"]
    half = sum(sec)
    t_pos, h_pos, w_pos = (pos[a, 0].double().cpu() for a in range(3))
    freq = theta ** (-torch.arange(half, dtype=torch.float64) / half)
    hw = sec[0] + sec[1]
    axis = [h_pos if i % 2 == 0 else w_pos for i in range(hw)] + [t_pos] * (half - hw)
    angle = torch.stack([axis[i] * freq[i] for i in range(half)], -1).repeat_interleave(2, -1)
    positions = pos.cpu().numpy()
    return {"rope_cos_max_abs_diff": float((cos[0].double().cpu() - angle.cos()).abs().max()),
            "rope_sin_max_abs_diff": float((sin[0].double().cpu() - angle.sin()).abs().max()),
            "h_equals_w_sections": sec[0] == sec[1],
            "positions_match_spec": bool(np.array_equal(positions[:, 0], spec_positions(inputs))),
            "positions": positions}


def spec_positions(inputs):
    """Spec section 3.9: text advances all axes by 1; an image block of gh x gw tokens gets
    (cur, cur + r, cur + c) and then cur += max(gh, gw)."""
    ids = inputs["input_ids"][0]
    grids = iter(inputs["image_grid_thw"].tolist())
    out, cur, i = [], 0, 0
    while i < len(ids):
        if inputs["mm_token_type_ids"][0, i] == 1:
            _, h, w = next(grids)
            gh, gw = h // MERGE, w // MERGE
            out += [(cur, cur + r, cur + c) for r in range(gh) for c in range(gw)]
            i, cur = i + gh * gw, cur + max(gh, gw)
        else:
            out.append((cur, cur, cur))
            i, cur = i + 1, cur + 1
    return np.array(out, dtype=np.int64).T


def check_vision_positions(grids):
    """Spec section 3.3: patch p -> row 2*(b//gw) + q//2, col 2*(b%gw) + q%2 with b = p//4, q = p%4."""
    try:
        from transformers.vision_utils import get_vision_position_ids
    except ImportError:
        return {"vision_positions": "transformers.vision_utils.get_vision_position_ids not found"}
    got = get_vision_position_ids(torch.tensor(grids), MERGE).numpy()
    want = []
    for _, h, w in grids:
        p = np.arange(h * w)
        b, q, gw = p // 4, p % 4, w // 2
        want.append(np.stack([2 * (b // gw) + q // 2, 2 * (b % gw) + q % 2], -1))
    return {"vision_positions_match": bool(np.array_equal(got, np.concatenate(want)))}


def guarded(check, *args):
    """Run a spec check; a failure (API drift between transformers versions) becomes a report entry."""
    try:
        result = check(*args)
        return result if isinstance(result, dict) else {check.__name__: result}
    except Exception as e:
        return {check.__name__ + "_error": repr(e)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=["tiny", "reduced", "full"], default="reduced")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-f32", action="store_true", help="skip the fp32 reference run (implied by --variant full)")
    ap.add_argument("--generate", type=int, default=0, help="greedy-decode N tokens with the bf16 model")
    ap.add_argument("--start-end-text", action="store_true", help="route image start/end tokens to the text pool")
    args = ap.parse_args()
    no_f32 = args.no_f32 or args.variant == "full"
    import transformers

    os.makedirs(args.out, exist_ok=True)
    model_dir = os.path.join(args.out, "model")
    report = {"variant": args.variant, "seed": args.seed, "torch": torch.__version__,
              "transformers": transformers.__version__, "device": args.device,
              "start_end_routing": "text" if args.start_end_text else "vision"}
    t0 = time.time()
    model, sizes = build_model(args, args.device)
    save(model.to(torch.bfloat16), model_dir, report)
    report["saved_tensors"] = write_saved_table(model_dir, args.out)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["config"] = model.config.to_dict()
    report["build_and_save_s"] = round(time.time() - t0, 1)

    rng = np.random.default_rng(args.seed)
    images = [make_image(h, w, i) for i, (h, w) in enumerate(sizes)]
    pix, grids = zip(*(manual_pixels(i) for i in images))
    ids, mm, moe = build_prompt(grids, rng, args.start_end_text, special_ids(args.variant))
    inputs = {"input_ids": ids, "pixel_values": np.concatenate(pix).astype(np.float32),
              "image_grid_thw": np.array(grids, dtype=np.int64), "mm_token_type_ids": mm,
              "moe_mm_token_type_ids": moe}
    np.savez(os.path.join(args.out, "inputs.npz"), **inputs)
    for name, value in inputs.items():  # one .npy each as well, for ocrvl's Rust test
        np.save(os.path.join(args.out, f"{name}.npy"), value)
    for i, img in enumerate(images):
        np.save(os.path.join(args.out, f"image_{i}.npy"), img)
    report["sequence_length"] = int(ids.shape[1])
    report["image_tokens"] = int(mm.sum())
    report["processor_check"] = processor_check(images, inputs["pixel_values"])
    report.update(guarded(check_vision_positions, [list(g) for g in grids]))

    if args.variant == "full":  # 59 GB: keep the in-memory bf16 model instead of reloading it
        bf16 = model
        for name, param in bf16.named_parameters():  # as from_pretrained would: routers stay fp32
            if name.endswith("gate.weight") or "moe_statics" in name:
                param.data = param.data.float()
        try:
            bf16.set_attn_implementation("eager")
        except Exception as e:
            report["set_attn_implementation_error"] = repr(e)
    else:
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        bf16 = load(model_dir, torch.bfloat16, args.device)
    write_model_table(bf16, args.out)
    report["implementations"] = implementations(bf16)
    rope = guarded(check_rope, bf16, inputs, args.device)
    if "positions" in rope:
        np.save(os.path.join(args.out, "position_ids.npy"), rope.pop("positions"))
    report.update(rope)
    logits_bf16, _ = forward(bf16, inputs, args.device)
    np.save(os.path.join(args.out, "logits_bf16.npy"), logits_bf16)
    if args.generate:
        t = {k: torch.from_numpy(v).to(args.device) for k, v in inputs.items()}
        gen = bf16.generate(**t, attention_mask=torch.ones_like(t["input_ids"]), max_new_tokens=args.generate,
                            do_sample=False)
        np.save(os.path.join(args.out, "generated_bf16.npy"), gen[0, ids.shape[1]:].cpu().numpy())
    if no_f32:
        report["router_check_bf16"] = guarded(check_router, bf16, inputs, args.device)
    del bf16

    if not no_f32:
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        f32 = load(model_dir, torch.float32, args.device)
        logits_f32, feats = forward(f32, inputs, args.device)
        np.save(os.path.join(args.out, "logits_f32.npy"), logits_f32)
        np.save(os.path.join(args.out, "image_embeds_f32.npy"), feats)
        report["router_check_f32"] = guarded(check_router, f32, inputs, args.device)
        diff = np.abs(logits_f32 - logits_bf16)
        report.update(bf16_vs_f32_max_abs=float(diff.max()), bf16_vs_f32_mean_abs=float(diff.mean()),
                      f32_logit_std=float(logits_f32.std()),
                      argmax_agreement=float((logits_f32.argmax(-1) == logits_bf16.argmax(-1)).mean()))
    report["total_s"] = round(time.time() - t0, 1)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2, default=str))


if __name__ == "__main__":
    main()
