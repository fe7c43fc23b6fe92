#!/usr/bin/env python3
"""Before/after table for run.sh's `ab` part: reads LOGDIR/ab_{before,after}_{1,2}.json (the
bench binary's --json output) and prints, per workload and model step, each run's figure and
the after/before ratio of the means.

    python3 ab_table.py LOGDIR
"""
import glob
import json
import os
import sys


def figures(path):
    """The headline figures of one bench --json file: each workload's rates and the model
    steps' times (top-level keys ending in _ms)."""
    data = json.load(open(path))
    out = {}
    for w in data.get("workloads") or []:
        for key in ("requests_per_s", "output_tokens_per_s"):
            if key in w:
                out[f"{w['workload']} {key}"] = w[key]
    for key in ("vision_ms", "decode_step_ms", "prefill_step_ms"):
        if key in data:
            out[f"step {key}"] = data[key]
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    runs = {}
    for path in sorted(glob.glob(os.path.join(sys.argv[1], "ab_*_*.json"))):
        which, rnd = os.path.basename(path)[3:-5].split("_")
        try:
            runs[(which, rnd)] = figures(path)
        except (OSError, ValueError) as e:
            print(f"unreadable {path}: {e}")
    keys = sorted({k for f in runs.values() for k in f})
    cols = sorted(runs)
    print("| figure | " + " | ".join(f"{w} {r}" for w, r in cols) + " | after/before |")
    print("|---|" + "---|" * (len(cols) + 1))
    for k in keys:
        vals = [runs[c].get(k) for c in cols]
        mean = {w: [v for (ww, _), v in zip(cols, vals) if ww == w and v is not None] for w in ("before", "after")}
        ratio = ""
        if mean["before"] and mean["after"]:
            ratio = f"{(sum(mean['after']) / len(mean['after'])) / (sum(mean['before']) / len(mean['before'])):.3f}"
        print(f"| {k} | " + " | ".join("" if v is None else f"{v:.4g}" for v in vals) + f" | {ratio} |")


if __name__ == "__main__":
    main()
