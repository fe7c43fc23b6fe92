#!/usr/bin/env python3
"""Issue 14, item 6: vLLM loads a directory `synth-model` writes as it is.

    PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 python3 tools/gpu/vllm_load_check.py DIR [DIR ...]

For each DIR (say `synth-model --tiny --out /tmp/v1` and `... --version 1.5 --out /tmp/v15`),
with none of the vLLM kit's two workarounds (no `fix_model_dir.py`, no `hf_overrides`):
  1. the directory's files hash the same before and after (nothing was edited to make it load);
  2. `LLM(model=DIR)` starts; its text config reads tie_word_embeddings false;
  3. in the worker, lm_head and embed_tokens are separate tensors, and lm_head holds the
     checkpoint's `lm_head.weight` (float64 sums of its first rows equal those of the file),
     so vLLM did not tie the head and drop the checkpoint's tensor;
  4. `LLM.chat` with an image and the task text, through the directory's own chat template and
     processor: the prompt holds one image placeholder per merged patch (vLLM's prompt token
     count minus the text-only prompt's equals the patch count / 4) and 8 greedy tokens come back.
Prints one PASS/FAIL line per check; exits 1 if any failed. vLLM's start takes 40-65 s per
directory (its engine core runs in a subprocess; each directory gets a fresh process).
"""
import argparse
import base64
import hashlib
import io
import json
import math
import os
import subprocess
import sys

FAILED = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILED.append(name)
    return ok


def tree_digest(d):
    """sha256 over (relative path, content) of every file under d, in sorted order."""
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(d)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, d).encode())
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def checkpoint_row_sums(d, name, rows):
    """float64 sums of the first `rows` rows of tensor `name` in the directory's safetensors."""
    import numpy as np
    from safetensors import safe_open

    files = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    for f in files:
        with safe_open(os.path.join(d, f), framework="pt") as st:
            if name in st.keys():
                t = st.get_slice(name)[:rows]
                return np.asarray(t.float().sum(dim=1).double().numpy())
    return None


def _inspect_worker(worker, rows):
    """Runs in vLLM's worker: lm_head and embed_tokens storage and row sums."""
    model = worker.get_model()
    out = {}
    for name, p in model.named_parameters():
        for key in ("lm_head.weight", "embed_tokens.weight"):
            if name.endswith(key) and key not in out:
                out[key] = {
                    "name": name,
                    "ptr": p.data_ptr(),
                    "shape": list(p.shape),
                    "row_sums": p[:rows].float().sum(dim=1).double().cpu().tolist(),
                }
    return out


def image_data_uri(width, height):
    from PIL import Image

    img = Image.new("RGB", (width, height), (255, 255, 255))
    for x in range(0, width, 7):
        for y in range(0, height, 5):
            img.putpixel((x, y), ((x * 3) % 256, (y * 5) % 256, (x + y) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def smart_resize_patches(h, w, cfg):
    """PaddleOCR-VL's resize (the processor's min/max pixels, factor patch*merge): patch count."""
    factor = cfg["patch_size"] * cfg["merge_size"]
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > cfg["max_pixels"]:
        beta = math.sqrt(h * w / cfg["max_pixels"])
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < cfg["min_pixels"]:
        beta = math.sqrt(cfg["min_pixels"] / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return (hb // cfg["patch_size"]) * (wb // cfg["patch_size"])


def image_settings(d):
    p = os.path.join(d, "processor_config.json")
    if os.path.exists(p):
        with open(p) as f:
            part = json.load(f).get("image_processor")
        if isinstance(part, dict):
            return part
    with open(os.path.join(d, "preprocessor_config.json")) as f:
        return json.load(f)


def check_one(d):
    """Runs in a fresh process per directory (vLLM keeps global state between LLMs)."""
    import numpy as np
    import vllm
    from vllm import LLM, SamplingParams

    tag = os.path.basename(d.rstrip("/"))
    before = tree_digest(d)
    print(f"vllm {vllm.__version__}: {d}", flush=True)
    try:
        llm = LLM(model=d, dtype="bfloat16", max_model_len=4096, max_num_seqs=8, enforce_eager=True,
                  gpu_memory_utilization=0.25, limit_mm_per_prompt={"image": 1}, seed=0)
    except Exception as e:  # noqa: BLE001
        check(f"{tag}: LLM(model=DIR) starts", False, repr(e)[:400])
        return
    check(f"{tag}: LLM(model=DIR) starts", True)
    text_cfg = llm.llm_engine.model_config.hf_config.get_text_config()
    check(f"{tag}: text config tie_word_embeddings false", text_cfg.tie_word_embeddings is False,
          f"read {text_cfg.tie_word_embeddings!r}")

    rows = 64
    got = llm.collective_rpc(_inspect_worker, args=(rows,))[0]
    head, emb = got.get("lm_head.weight"), got.get("embed_tokens.weight")
    if check(f"{tag}: worker has lm_head and embed_tokens", head is not None and emb is not None, str(list(got))):
        check(f"{tag}: lm_head is its own tensor", head["ptr"] != emb["ptr"],
              f"{head['name']} @ {head['ptr']:#x}, {emb['name']} @ {emb['ptr']:#x}")
        want = checkpoint_row_sums(d, "lm_head.weight", rows)
        have = np.asarray(head["row_sums"])
        ok = want is not None and want.shape == have.shape and np.allclose(have, want, rtol=1e-6, atol=1e-6)
        err = float(np.max(np.abs(have - want))) if ok or (want is not None and want.shape == have.shape) else None
        check(f"{tag}: lm_head holds the checkpoint's lm_head.weight", ok,
              f"first {rows} row sums, max |diff| {err}" if err is not None else "lm_head.weight missing")

    cfg = image_settings(d)
    w, h = 448, 308
    uri = image_data_uri(w, h)
    sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": "OCR:"}]}]
    text_only = [{"role": "user", "content": [{"type": "text", "text": "OCR:"}]}]
    try:
        out = llm.chat([msgs], sp, use_tqdm=False)[0]
        plain = llm.chat([text_only], sp, use_tqdm=False)[0]
    except Exception as e:  # noqa: BLE001
        check(f"{tag}: chat with an image through the directory's template", False, repr(e)[:400])
    else:
        patches = smart_resize_patches(h, w, cfg)
        want = patches // (cfg["merge_size"] ** 2)
        extra = len(out.prompt_token_ids) - len(plain.prompt_token_ids)
        # The image adds its placeholders plus the start/end markers the template puts around them.
        check(f"{tag}: chat with an image through the directory's template",
              len(out.outputs[0].token_ids) == 8 and want <= extra <= want + 2,
              f"{len(out.prompt_token_ids)} prompt tokens ({extra} for the image; {want} merged patches), "
              f"{len(out.outputs[0].token_ids)} tokens out")
    del llm
    check(f"{tag}: directory unchanged", tree_digest(d) == before)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        check_one(a.dirs[0])
        sys.exit(1 if FAILED else 0)
    rc = 0
    for d in a.dirs:
        # A fresh interpreter per directory: its PASS/FAIL lines pass through.
        r = subprocess.run([sys.executable, __file__, "--one", d])
        if r.returncode != 0:
            print(f"FAIL {d}: exit {r.returncode}", flush=True)
            rc = 1
    sys.exit(rc)


if __name__ == "__main__":
    main()
