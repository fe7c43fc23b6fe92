#!/usr/bin/env python3
"""Replays PaddleOCR's document pipeline traffic against a running `serve` (issue 14).

PaddleX 3.x sends one chat request per layout region to a `vllm-server` backend through
`AsyncOpenAI` (up to 200 in flight, `Authorization: Bearer null`, JPEG data URIs), with
`temperature: 0`, `max_completion_tokens`, `skip_special_tokens: true` and
`mm_processor_kwargs: {"min_pixels": 112896, "max_pixels": 1003520}` (1605632 for spotting),
and reads `choices[0].message.content`. This script sends the same bodies for N synthetic
regions of the kinds a page yields (text lines, paragraphs, tables, spotting pages, plus a
kind with smaller custom bounds), drawn with PIL at typical sizes, and checks:

- every answer is HTTP 200 with a non-empty `choices[0].message`;
- the resize honoured each request's own pixel bounds: `usage.prompt_tokens` minus the image
  tokens expected from `smart_resize` (MODEL_SPEC §5.2, computed here exactly) with that
  request's min/max pixels must be one constant per task prompt (the template and task text).
  A server that ignored the bounds would give other image token counts for the regions where
  the bounds decide the size (small lines are scaled up to min_pixels, spotting pages are
  capped at 1605632 rather than 1003520, the custom kind at 200704), and the per-task constant
  would split.

Run on the GPU host against e.g. `serve PaddlePaddle/PaddleOCR-VL` (or the synthetic model
with `--served-model-name PaddleOCR-VL-1.5-0.9B`):

    python3 tools/gpu/pipeline_replay.py --url http://127.0.0.1:8000/v1 -n 2000

Needs `openai` and `Pillow`. With a random-weight model each request runs to
`--max-completion-tokens` (64 by default keeps 2000 regions to about 3 minutes on an H100).
Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import asyncio
import base64
import io
import math
import random
import statistics
import sys
import time

from PIL import Image, ImageDraw

try:
    from openai import APIStatusError, AsyncOpenAI
except ImportError:  # pragma: no cover - reported clearly
    sys.exit("pipeline_replay.py needs the `openai` package (pip install openai)")

FACTOR = 28  # patch 14 x merge 2: one image token per 28x28 block
MIN_PIXELS = 112896
MAX_PIXELS = 1003520
SPOTTING_MAX_PIXELS = 1605632

# kind: (share of the requests, task prompt, (min_pixels, max_pixels), width range, height range)
KINDS = {
    "text_line": (0.45, "OCR:", (MIN_PIXELS, MAX_PIXELS), (160, 1400), (20, 64)),
    "paragraph": (0.25, "OCR:", (MIN_PIXELS, MAX_PIXELS), (400, 1500), (120, 700)),
    "table": (0.15, "Table Recognition:", (MIN_PIXELS, MAX_PIXELS), (500, 1700), (200, 1100)),
    "spotting": (0.10, "Spotting:", (MIN_PIXELS, SPOTTING_MAX_PIXELS), (900, 2100), (1100, 2900)),
    "custom_bounds": (0.05, "OCR:", (3136, 200704), (300, 1600), (100, 1200)),
}


def py_round(x):
    """Python's round(): half to even (what the reference uses)."""
    return round(x)


def smart_resize(height, width, min_pixels, max_pixels, factor=FACTOR):
    """MODEL_SPEC §5.2, operation for operation."""
    if height < factor:
        width = py_round(width * factor / height)
        height = factor
    if width < factor:
        height = py_round(height * factor / width)
        width = factor
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio over 200: {height}x{width}")
    h_bar = py_round(height / factor) * factor
    w_bar = py_round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_tokens(height, width, bounds):
    h, w = smart_resize(height, width, *bounds)
    return (h // FACTOR) * (w // FACTOR)


def draw_region(kind, width, height, rng):
    """A white region with dark text-like strokes; tables get a ruled grid."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    line_h = max(12, min(40, height // 3)) if kind == "text_line" else rng.randint(18, 32)
    y = 4
    while y + line_h <= height:
        x = rng.randint(4, 20)
        while x < width - 20:
            word = rng.randint(10, 80)
            d.rectangle([x, y + line_h // 4, min(width - 4, x + word), y + line_h - line_h // 4], fill=(30, 30, 30))
            x += word + rng.randint(6, 18)
        y += line_h + (0 if kind == "text_line" else rng.randint(4, 12))
        if kind == "text_line":
            break
    if kind == "table":
        rows, cols = rng.randint(3, 12), rng.randint(2, 7)
        for r in range(rows + 1):
            yy = r * (height - 1) // rows
            d.line([0, yy, width, yy], fill=(0, 0, 0), width=2)
        for c in range(cols + 1):
            xx = c * (width - 1) // cols
            d.line([xx, 0, xx, height], fill=(0, 0, 0), width=2)
    return img


def jpeg_data_uri(img):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def plan(n, seed):
    rng = random.Random(seed)
    names = list(KINDS)
    weights = [KINDS[k][0] for k in names]
    jobs = []
    for i in range(n):
        kind = rng.choices(names, weights)[0]
        _, task, bounds, (w0, w1), (h0, h1) = KINDS[kind]
        w, h = rng.randint(w0, w1), rng.randint(h0, h1)
        jobs.append({"i": i, "kind": kind, "task": task, "bounds": bounds, "w": w, "h": h, "seed": rng.random()})
    return jobs


async def one(client, sem, job, args, results):
    async with sem:
        img = await asyncio.to_thread(draw_region, job["kind"], job["w"], job["h"], random.Random(job["seed"]))
        url = await asyncio.to_thread(jpeg_data_uri, img)
        t0 = time.monotonic()
        rec = dict(job)
        try:
            r = await client.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": job["task"]},
                ]}],
                temperature=0,
                max_completion_tokens=args.max_completion_tokens,
                extra_body={
                    "skip_special_tokens": True,
                    "mm_processor_kwargs": {"min_pixels": job["bounds"][0], "max_pixels": job["bounds"][1]},
                },
            )
            rec["status"] = 200
            rec["prompt_tokens"] = r.usage.prompt_tokens if r.usage else None
            rec["has_content"] = bool(r.choices) and r.choices[0].message is not None
        except APIStatusError as e:
            rec["status"] = e.status_code
            rec["error"] = str(e)[:300]
        except Exception as e:  # connection errors, timeouts
            rec["status"] = "exception"
            rec["error"] = f"{type(e).__name__}: {e}"[:300]
        rec["seconds"] = time.monotonic() - t0
        results.append(rec)


async def main_async(args):
    jobs = plan(args.num_requests, args.seed)
    client = AsyncOpenAI(base_url=args.url, api_key="null", timeout=args.timeout, max_retries=0)
    sem = asyncio.Semaphore(args.concurrency)
    results = []
    t0 = time.monotonic()
    await asyncio.gather(*(one(client, sem, j, args, results) for j in jobs))
    wall = time.monotonic() - t0
    await client.close()
    return results, wall


def verdict(results, wall, args):
    ok = True
    # The fixed part of the prompt per task: prompt_tokens - expected image tokens.
    fixed = {}
    for r in results:
        if r["status"] == 200 and r.get("prompt_tokens") is not None:
            r["image_tokens"] = image_tokens(r["h"], r["w"], r["bounds"])
            r["fixed"] = r["prompt_tokens"] - r["image_tokens"]
            fixed.setdefault(r["task"], {}).setdefault(r["fixed"], 0)
            fixed[r["task"]][r["fixed"]] += 1
    # The constant is the most common value per task; anything else is a mismatch.
    mode = {t: max(v.items(), key=lambda kv: kv[1])[0] for t, v in fixed.items()}

    print(f"\n{len(results)} requests, {args.concurrency} in flight, model {args.model}, "
          f"max_completion_tokens {args.max_completion_tokens}: {wall:.1f} s, {len(results) / wall:.1f} req/s\n")
    print("| kind | task | bounds | requests | HTTP 200 | other status | token mismatches | image tokens min-max | p50 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        rs = [r for r in results if r["kind"] == kind]
        if not rs:
            continue
        good = [r for r in rs if r["status"] == 200 and r.get("has_content")]
        bad_status = len(rs) - len(good)
        mism = [r for r in good if r.get("fixed") != mode.get(r["task"])]
        toks = [r["image_tokens"] for r in good if "image_tokens" in r]
        p50 = statistics.median(r["seconds"] for r in rs)
        print(f"| {kind} | {rs[0]['task']} | {rs[0]['bounds'][0]}..{rs[0]['bounds'][1]} | {len(rs)} | {len(good)} | "
              f"{bad_status} | {len(mism)} | {min(toks) if toks else '-'}-{max(toks) if toks else '-'} | {p50:.2f} |")
        ok &= bad_status == 0 and not mism
    print()
    for task, values in fixed.items():
        print(f"fixed prompt tokens for {task!r}: {dict(sorted(values.items()))} (must be one value)")
        ok &= len(values) == 1
    errors = [r for r in results if r["status"] != 200]
    for r in errors[:5]:
        print(f"  error: region {r['i']} ({r['kind']} {r['w']}x{r['h']}): {r['status']} {r.get('error', '')}")
    mism = [r for r in results if r.get("fixed") is not None and r["fixed"] != mode.get(r["task"])]
    for r in mism[:5]:
        print(f"  mismatch: region {r['i']} ({r['kind']} {r['w']}x{r['h']}, bounds {r['bounds']}): prompt_tokens "
              f"{r['prompt_tokens']}, expected {mode[r['task']]} + {r['image_tokens']}")
    if len(results) != args.num_requests:
        print(f"only {len(results)} of {args.num_requests} requests finished")
        ok = False
    print("\nVERDICT:", "PASS" if ok else "FAIL")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="PaddleOCR-VL-1.5-0.9B", help="the name PaddleX sends")
    p.add_argument("-n", "--num-requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=200, help="requests in flight (PaddleX: 200)")
    p.add_argument("--max-completion-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    results, wall = asyncio.run(main_async(args))
    sys.exit(0 if verdict(results, wall, args) else 1)


if __name__ == "__main__":
    main()
