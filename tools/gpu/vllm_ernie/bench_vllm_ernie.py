#!/usr/bin/env python3
"""vLLM on ocrvl's ERNIE-4.5-VL bench workloads (src/bin/bench/workloads.rs, ERNIE_IMAGES).

    python3 bench_vllm_ernie.py --model DIR [--workload all|decode,image-qa,multi-image]
        [--num-requests decode=512,image-qa=256,multi-image=128] [--ocrvl-json bench_ernie.json]
        [--load-format dummy] [--max-num-seqs 256] [--max-model-len 16384]
        [--max-num-batched-tokens 8192] [--gpu-memory-utilization 0.9] [--enforce-eager] [--json F]

DIR comes from prepare_vllm_ernie_dir.py (vLLM loads the config and processor through
trust_remote_code, as it loads Baidu's). The workloads, as in ocrvl's bench:
- image-qa: one 1024x768 picture (1036x756 after smart_resize, 999 image tokens), "Describe
  this picture in detail.", 512 tokens out;
- multi-image: three 1000x1400 pages (1800 image tokens each), "Summarise what these pages say
  and how they differ.", 256 tokens out;
- decode: --prompt-len random ids, --output-len out.
The prompt is the text ocrvl's chat template renders with thinking on:
"<|begin_of_sentence|>User: Picture 1:<|IMAGE_START|>" image "<|IMAGE_END|>...QUESTION\\nAssistant: <think>".
Greedy, ignore_eos, every request checked for its exact length; each image gets its own
multi_modal_uuid, so no cache is shared between requests (ocrvl gives each its own hash).

The measuring loop is the peer kit's (bench_vllm.py, found beside this file or in --kit-dir):
warm-up, rendering before the clock, per-shape prompt counts against ocrvl's (--ocrvl-json,
the JSON ocrvl's bench wrote for the same directory).
"""
import argparse
import json
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))

WORKLOADS = ["decode", "image-qa", "multi-image"]
# (kind, width, height, question, output tokens, share, images per request)
SHAPES = {
    "image-qa": ("picture", 1024, 768, "Describe this picture in detail.", 512, 1.0, 1),
    "multi-image": ("pages", 1000, 1400, "Summarise what these pages say and how they differ.", 256, 1.0, 3),
}


def load_kit(kit_dir):
    for d in (kit_dir, HERE, os.path.join(HERE, "..")):
        if d and os.path.exists(os.path.join(d, "bench_vllm.py")):
            sys.path.insert(0, d)
            import bench_vllm

            return bench_vllm
    raise SystemExit("bench_vllm.py (the peer kit's) not found: give --kit-dir")


def install_ernie_workloads(kit, ocrvl_prompt_tokens):
    """Points the kit's run_workload at ERNIE's shapes and prompts."""
    import numpy as np

    def build_shapes(name, args):
        if name == "decode":
            return [kit.Shape("text", 0, 0, None, args.output_len, 1.0, None)]
        kind, w, h, question, out, share, count = SHAPES[name]
        rng = np.random.default_rng(7)
        pages = [kit.synthetic_page(w, h, False, rng) for _ in range(count)]
        return [kit.Shape(kind, w, h, question, out, share, pages)]

    def make_prompt(shape, rng, vocab, prompt_len, tag):
        if shape.image is None:
            lo = min(1000, vocab // 4)
            hi = max(vocab - 4000, lo + 1)
            return {"prompt_token_ids": rng.integers(lo, hi, size=prompt_len).tolist()}
        pictures = "".join(f"Picture {i + 1}:<|IMAGE_START|><|image@placeholder|><|IMAGE_END|>"
                           for i in range(len(shape.image)))
        return {
            "prompt": f"<|begin_of_sentence|>User: {pictures}{shape.task}\nAssistant: <think>",
            "multi_modal_data": {"image": list(shape.image)},
            "multi_modal_uuids": {"image": [f"{tag}-{i}" for i in range(len(shape.image))]},
        }

    kit.build_shapes = build_shapes
    kit.make_prompt = make_prompt
    kit.OCRVL_PROMPT_TOKENS = ocrvl_prompt_tokens


def ocrvl_prompt_tokens(path):
    """(width, height) -> ocrvl's prompt tokens, from ocrvl bench's JSON for the same directory."""
    if not path or not os.path.exists(path):
        print(f"no ocrvl bench JSON at {path}: prompt counts not compared", flush=True)
        return {}
    with open(path) as f:
        report = json.load(f)
    out = {}
    for w in report.get("workloads", []):
        for s in w.get("shapes", []):
            image = s.get("image")
            if image and "prompt_tokens" in s:
                width, height = (int(x) for x in image.split("x"))
                out[(width, height)] = s["prompt_tokens"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--workload", default="all")
    ap.add_argument("--num-requests", default="decode=512,image-qa=256,multi-image=128")
    ap.add_argument("--ocrvl-json", default=None)
    ap.add_argument("--kit-dir", default=None)
    ap.add_argument("--load-format", default="auto", help="dummy: vLLM's own random weights (no weight files)")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=1024)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--no-enable-prefix-caching", action="store_true")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--include-preprocessing", action="store_true")
    ap.add_argument("--detokenize", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    kit = load_kit(args.kit_dir)
    workloads = WORKLOADS if args.workload == "all" else args.workload.split(",")
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"--workload: unknown {w!r} (one of {WORKLOADS} or all)")
    nreq = {}
    for pair in args.num_requests.split(","):
        w, n = pair.split("=", 1)
        nreq[w] = int(n)
    install_ernie_workloads(kit, ocrvl_prompt_tokens(args.ocrvl_json))

    t_import = time.perf_counter()
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.outputs import RequestOutput

    kit.log(f"vllm {vllm.__version__}, torch {torch.__version__}, GPU {kit.gpu_name()}; model {args.model}, "
            f"load_format {args.load_format}")
    t_init = time.perf_counter()
    llm = LLM(
        model=args.model,
        tokenizer=args.model,
        trust_remote_code=True,
        dtype="bfloat16",
        load_format=args.load_format,
        seed=args.seed,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=not args.no_enable_prefix_caching,
        enforce_eager=args.enforce_eager,
        limit_mm_per_prompt={"image": 3, "video": 0},
    )
    init_s = time.perf_counter() - t_init
    vc = llm.llm_engine.vllm_config
    cc = vc.compilation_config
    engine = {
        "max_num_seqs": vc.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": vc.scheduler_config.max_num_batched_tokens,
        "max_model_len": vc.model_config.max_model_len,
        "gpu_memory_utilization": vc.cache_config.gpu_memory_utilization,
        "enable_prefix_caching": vc.cache_config.enable_prefix_caching,
        "num_gpu_blocks": vc.cache_config.num_gpu_blocks,
        "block_size": vc.cache_config.block_size,
        "enforce_eager": vc.model_config.enforce_eager,
        "async_scheduling": vc.scheduler_config.async_scheduling,
        "compilation_mode": str(getattr(cc, "mode", None)),
        "cudagraph_mode": str(getattr(cc, "cudagraph_mode", None)),
        "load_format": args.load_format,
    }
    try:
        probe = llm.collective_rpc(kit._probe_worker)[0]
    except Exception as e:  # noqa: BLE001
        probe = {"error": repr(e)}
    kit.log(f"engine ready in {init_s:.1f} s (imports {t_init - t_import:.1f} s): {json.dumps(engine, default=str)}")
    kit.log(f"attention: {json.dumps(probe, default=str)}")
    result = {"engine_name": "vllm", "vllm_version": vllm.__version__, "gpu": kit.gpu_name(), "model": args.model,
              "engine": engine, "attention": probe, "engine_init_seconds": init_s, "workloads": []}

    def dump():
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump(result, f, indent=2, default=str)
            os.replace(args.json + ".tmp", args.json)

    dump()
    nonce = uuid.uuid4().hex[:12]
    for w in workloads:
        r = kit.run_workload(llm, w, nreq.get(w, 256), args, nonce, SamplingParams, RequestOutput)
        result["workloads"].append(r)
        dump()
    kit.log("\nsummary:")
    for r in result["workloads"]:
        kit.log(f"  {r['workload']:>11}: {r['requests']} req in {r['seconds']:.1f} s, {r['requests_per_s']:.2f} req/s, "
                f"{r['input_tokens_per_s']:.0f} input tok/s, {r['output_tokens_per_s']:.0f} output tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
