#!/usr/bin/env python3
"""transformers baseline for `bench`'s request workloads (src/bin/bench.rs), on the same GPU and
the same model directory (the bench writes its full-size synthetic one first; pass it as --model).

transformers' own `generate`, bf16, SDPA attention, greedy, fixed output lengths
(min_new_tokens = max_new_tokens: EOS can never stop a sequence early, like ignore_eos). Each
workload runs whole batches until --seconds is spent (at least one batch of each shape) and
reports throughput from the completed batches; a warm-up batch (same inputs, 4 tokens out)
comes first and is not counted.

Workloads, as the bench defines them:
  decode       text-only prompts of --prompt-len random ids, --output-len tokens out, batch
               --decode-batch (256; halved until it fits when memory runs out)
  page-1080p   one 1920x1080 synthetic page, "OCR:", 128 tokens out, batch --page-batch (32)
  page-360p    one 640x360 synthetic page, "OCR:", 512 tokens out, batch --page-batch
  crops        text-line 800x48 / 32 out, paragraph 800x400 / 256 out, table 1000x700 /
               512 out ("Table Recognition:"), 50 / 35 / 15 % of the requests. Each kind runs
               in batches of its own (no padding across kinds, no paying 512 steps for a
               32-token line: the most favourable batching for generate); the mix's rate is
               1 / sum(share * batch time / batch).

Pages are white with dark text-like bars (the content does not change the speed, the size does),
preprocessed by transformers' PIL image processor built from the directory's
preprocessor_config.json and tokenised with its tokenizer.json, with the prompt the chat
template renders. Preprocessing happens once, before timing, as in the bench.

Prints one line per workload,
  transformers <workload>: X req/s, Y output tok/s (batch B, N requests, T s)
and with --bench-json (the bench's --json files from the same run, repeatable) the ratio of
ocrvl's numbers to these where a bench run has the same shapes. Offline only: nothing is
fetched from the hub. Without --model it prints that it was skipped (run.sh runs every
tools/*.py without arguments).

    python3 baseline_engine.py --model DIR [--workloads decode,page-1080p,page-360p,crops]
        [--seconds 60] [--decode-batch 256] [--page-batch 32] [--prompt-len 1024]
        [--output-len 1024] [--json FILE] [--bench-json FILE ...] [--device cuda|cpu] [--tiny]
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

WORKLOADS = ("decode", "page-1080p", "page-360p", "crops")
# (kind, width, height, task, output tokens, share): the bench's shapes.
SHAPES = {
    "page-1080p": [("page", 1920, 1080, "OCR:", 128, 1.0)],
    "page-360p": [("page", 640, 360, "OCR:", 512, 1.0)],
    "crops": [
        ("text-line", 800, 48, "OCR:", 32, 0.50),
        ("paragraph", 800, 400, "OCR:", 256, 0.35),
        ("table", 1000, 700, "Table Recognition:", 512, 0.15),
    ],
}
# What src/preprocess/prompt.rs's chat template renders for one image and a task.
PROMPT = "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>{task}\nAssistant:\n"
PROCESSOR_KEYS = ("min_pixels", "max_pixels", "image_mean", "image_std", "resample", "patch_size", "merge_size",
                  "temporal_patch_size", "do_resize", "do_rescale", "rescale_factor", "do_normalize",
                  "do_convert_rgb")


def synthetic_page(width, height, table, rng):
    """A white page with dark text-like bars in lines (and a ruled grid for a table)."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    glyph = min(max(height // 3, 4), 18)
    margin = max(width // 16, 2)
    y = max(height // 12, glyph // 2)
    while y + glyph <= max(height - glyph // 2, glyph):
        x = margin
        while x + 4 < width - margin:
            w = int(rng.integers(glyph, glyph * 6))
            d.rectangle([x, y, min(x + w, width - margin) - 1, y + glyph - 1], fill=(int(rng.integers(0, 90)),) * 3)
            x += w + int(rng.integers(glyph // 2, glyph + 1))
        if table:
            rule = y + glyph + glyph // 2
            d.rectangle([margin, rule, width - margin - 1, rule + 1], fill=(0, 0, 0))
        y += 2 * glyph
    if table:
        for k in range(5):
            x = margin + k * (width - 2 * margin - 2) // 4
            d.rectangle([x, height // 12, x + 1, min(y, height) - 1], fill=(0, 0, 0))
    return img


def load(model_dir, device):
    from transformers import AutoTokenizer, PaddleOCRVLForConditionalGeneration, PaddleOCRVLProcessor
    # The PIL processor: the default (torchvision) one needs a package the GPU host may not have.
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

    model = PaddleOCRVLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation="sdpa", local_files_only=True).to(device).eval()
    with open(os.path.join(model_dir, "preprocessor_config.json")) as f:
        pc = json.load(f)
    image_processor = PaddleOCRVLImageProcessorPil(**{k: pc[k] for k in PROCESSOR_KEYS if k in pc})
    # The hub tokenizer_config names the image token; the synthetic one does not, and the
    # processor needs it.
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                        extra_special_tokens={"image_token": "<|IMAGE_PLACEHOLDER|>"})
    tok.padding_side = "left"
    processor = PaddleOCRVLProcessor(image_processor=image_processor, tokenizer=tok)
    return model, processor


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generate(model, inputs, n_out, device):
    """One generate call; returns its wall time. Checks that every sequence got n_out tokens."""
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=n_out, min_new_tokens=n_out,
                             pad_token_id=model.config.text_config.pad_token_id or 0)
    sync(device)
    dt = time.perf_counter() - t
    got = out.shape[1] - inputs["input_ids"].shape[1]
    if got != n_out:
        raise RuntimeError(f"generate returned {got} new tokens, expected {n_out}")
    return dt


def decode_inputs(model, batch, prompt_len, device, rng):
    vocab = model.config.text_config.vocab_size
    lo = min(1000, vocab // 4)
    hi = max(vocab - 4000, lo + 1)
    ids = torch.from_numpy(rng.integers(lo, hi, (batch, prompt_len))).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def image_inputs(processor, shape, batch, device, rng):
    kind, width, height, task, _, _ = shape
    img = synthetic_page(width, height, kind == "table", rng)
    enc = processor(text=[PROMPT.format(task=task)] * batch, images=[img] * batch, return_tensors="pt",
                    padding=True)
    enc = {k: v.to(device) for k, v in enc.items()}
    enc["pixel_values"] = enc["pixel_values"].to(torch.bfloat16)
    return enc


def run_shape(model, inputs, n_out, budget, device):
    """A warm-up batch (4 tokens out), then whole batches until `budget` seconds are spent, at
    least one. Returns the batch times."""
    generate(model, inputs, min(4, n_out), device)
    times = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < budget:
        times.append(generate(model, inputs, n_out, device))
    return times


def with_fallback(fn, batch, device, label):
    """Runs fn(batch), halving the batch while CUDA runs out of memory."""
    while True:
        try:
            return fn(batch), batch
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            print(f"  {label}: out of memory at batch {batch}, trying {batch // 2}", file=sys.stderr)
            batch //= 2
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def run_workload(name, a, model, processor, device, rng):
    if name == "decode":
        shapes = [("text", None, None, None, a.output_len, 1.0)]
        batch0 = a.decode_batch
    else:
        shapes = SHAPES[name]
        batch0 = a.page_batch
    kinds = []
    batch = batch0
    for shape in shapes:
        kind, width, height, _, n_out, share = shape
        if a.tiny:
            n_out = min(n_out, 4)

        def measure(b, shape=shape, n_out=n_out, share=share):
            if shape[0] == "text":
                inputs = decode_inputs(model, b, a.prompt_len, device, rng)
            else:
                inputs = image_inputs(processor, shape, b, device, rng)
            # The budget is split between the kinds by share (at least one batch each).
            times = run_shape(model, inputs, n_out, a.seconds * share, device)
            return times, int(inputs["attention_mask"][0].sum())

        (times, prompt_tokens), batch = with_fallback(measure, batch, device, f"{name} {kind}")
        kinds.append({"kind": kind, "image": None if width is None else f"{width}x{height}",
                      "prompt_tokens": prompt_tokens, "output_tokens": n_out, "share": share, "batch": batch,
                      "batches": len(times), "batch_s_mean": float(np.mean(times)), "batch_s": times})
    # Seconds per request of the mix, each kind at its own batch.
    s_per_req = sum(k["share"] * k["batch_s_mean"] / k["batch"] for k in kinds)
    req_s = 1.0 / s_per_req
    out_per_req = sum(k["share"] * k["output_tokens"] for k in kinds)
    in_per_req = sum(k["share"] * k["prompt_tokens"] for k in kinds)
    requests = sum(k["batch"] * k["batches"] for k in kinds)
    seconds = sum(sum(k["batch_s"]) for k in kinds)
    r = {"workload": name, "batch": batch, "requests": requests, "seconds": seconds, "requests_per_s": req_s,
         "output_tokens_per_s": req_s * out_per_req, "input_tokens_per_s": req_s * in_per_req, "shapes": kinds}
    batch_txt = str(batch) if len(kinds) == 1 else f"{batch} per kind"
    print(f"transformers {name}: {req_s:.3g} req/s, {r['output_tokens_per_s']:.0f} output tok/s "
          f"(batch {batch_txt}, {requests} requests, {seconds:.1f} s)", flush=True)
    return r


def same_shapes(ours, theirs):
    """Whether the bench's workload and ours ran the same shapes (image size, tokens in and out)."""
    a = [(s.get("image"), s.get("output_tokens"), s.get("share", 1.0)) for s in ours.get("shapes", [])]
    b = [(s["image"], s["output_tokens"], s["share"]) for s in theirs["shapes"]]
    if a != b:
        return False
    if ours["workload"] == "decode":
        return [s.get("prompt_tokens") for s in ours["shapes"]] == [s["prompt_tokens"] for s in theirs["shapes"]]
    return True


def print_ratios(bench_jsons, results):
    """For each of our workloads, the ratio to the first bench run of the same shapes."""
    runs = []
    for path in bench_jsons:
        with open(path) as f:
            runs += [(path, w) for w in json.load(f).get("workloads", [])]
    for r in results:
        same = [(p, o) for p, o in runs if o["workload"] == r["workload"] and same_shapes(o, r)]
        if not same:
            print(f"ratio ocrvl/transformers {r['workload']}: no bench run of the same shapes in "
                  f"{', '.join(bench_jsons)}")
            continue
        path, o = same[0]
        print(f"ratio ocrvl/transformers {r['workload']}: {o['requests_per_s'] / r['requests_per_s']:.1f}x req/s, "
              f"{o['output_tokens_per_s'] / r['output_tokens_per_s']:.1f}x output tok/s "
              f"(ocrvl {o['requests_per_s']:.2f} req/s, {o['output_tokens_per_s']:.0f} output tok/s, "
              f"{o['requests']} requests; {os.path.basename(path)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="the model directory (the bench's --synthetic-dir); required")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--seconds", type=float, default=60.0, help="time budget per workload (at least one batch)")
    ap.add_argument("--decode-batch", type=int, default=256)
    ap.add_argument("--page-batch", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=1024)
    ap.add_argument("--json", default=None)
    ap.add_argument("--bench-json", action="append", default=[],
                    help="a bench --json file of the same run (repeatable): print ocrvl/transformers ratios")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true",
                    help="a smoke test (e.g. on the CPU with a tiny model): batch 2, 32-token prompts, 4 tokens out")
    a = ap.parse_args()
    if a.model is None:
        # run.sh runs every tools/*.py without arguments: this one runs minutes, and only when
        # asked, with the model directory the bench wrote.
        print("baseline_engine.py: needs --model DIR (the bench's --synthetic-dir); skipped")
        return
    model_dir = a.model
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        sys.exit(f"baseline_engine.py: no config.json in {model_dir}")
    if a.tiny:
        a.decode_batch, a.page_batch, a.prompt_len, a.seconds = 2, 2, 32, 0.0
    workloads = [w for w in a.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"--workloads: `{w}` is not one of {', '.join(WORKLOADS)}")

    import transformers
    t = time.perf_counter()
    model, processor = load(model_dir, a.device)
    gpu = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {gpu}; {model_dir} loaded in "
          f"{time.perf_counter() - t:.1f} s; bf16, sdpa, greedy, min_new_tokens = max_new_tokens", flush=True)
    rng = np.random.default_rng(11)
    results = [run_workload(w, a, model, processor, a.device, rng) for w in workloads]
    out = {"gpu": gpu, "transformers": transformers.__version__, "torch": torch.__version__, "model": model_dir,
           "dtype": "bfloat16", "attn_implementation": "sdpa", "seconds_budget": a.seconds, "workloads": results}
    if a.device.startswith("cuda"):
        out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    if a.bench_json:
        print_ratios(a.bench_json, results)


if __name__ == "__main__":
    main()
