"""Summarises an `ncu --csv --metrics gpu__time_duration.sum` log: each kernel's launches and
total GPU time, largest first.

    python3 tools/gpu/ncu_summary.py LOG [TOP] [--split-at NAME --phases SPEC]

ncu --csv writes one row per kernel launch and metric ("Kernel Name", "Metric Unit", "Metric
Value"); other lines (==PROF==, the program's own output) are skipped.

With --split-at, the launches are cut into segments before each launch whose kernel name
contains NAME (segment 0 is what comes before the first), and SPEC names consecutive runs of
segments: `vision:1:12,decode:12:12,prefill:12:12` is segment 0 as "vision", divided by 12
(the passes it holds), then 12 segments as "decode", divided by 12, and so on. Each phase gets
its own table of GPU time per pass. bench's model steps run 12 vision passes, then 12 decoder
forwards of each kind, each forward starting with `embedding_gather_kernel`.
"""
import argparse
import csv
from collections import defaultdict

SCALE_TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def launches(path):
    """(kernel name, us) per launch, in launch order."""
    lines = (line for line in open(path, errors="replace") if line.startswith('"'))
    rows = list(csv.reader(lines))
    head = next((r for r in rows if "Kernel Name" in r and "Metric Value" in r), None)
    if head is None:
        raise SystemExit("no ncu CSV rows in " + path)
    k, u, v = head.index("Kernel Name"), head.index("Metric Unit"), head.index("Metric Value")
    out = []
    for r in rows:
        if r is head or len(r) <= v:
            continue
        try:
            us = float(r[v].replace(",", "")) * SCALE_TO_US.get(r[u], 1.0)
        except ValueError:
            continue
        out.append((r[k].split("(")[0][:80], us))
    return out


def table(title, items, top, per=1):
    total, calls = defaultdict(float), defaultdict(int)
    for name, us in items:
        total[name] += us
        calls[name] += 1
    grand = sum(total.values())
    print(f"{title}: {len(items)} launches, {grand:.0f} us of kernel time; per pass ({per}): "
          f"{grand / per:.1f} us, {len(items) / per:.0f} launches")
    for name in sorted(total, key=total.get, reverse=True)[:top]:
        print(f"{total[name] / per:10.1f} us {100 * total[name] / max(grand, 1e-9):5.1f}%"
              f"  {calls[name] / per:6.1f} x  {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("top", nargs="?", type=int, default=25)
    ap.add_argument("--split-at")
    ap.add_argument("--phases", default="")
    a = ap.parse_args()
    items = launches(a.log)
    if not a.split_at:
        table("ncu", items, a.top)
        return
    segments = [[]]
    for name, us in items:
        if a.split_at in name:
            segments.append([])
        segments[-1].append((name, us))
    print(f"ncu: {len(items)} launches in {len(segments)} segments (split at {a.split_at!r})")
    i = 0
    for spec in filter(None, a.phases.split(",")):
        name, count, per = spec.split(":")
        count, per = int(count), int(per)
        chosen = [x for s in segments[i:i + count] for x in s]
        table(f"{name} (segments {i}..{i + count - 1})", chosen, a.top, per)
        i += count
    if i < len(segments):
        table(f"the rest (segments {i}..)", [x for s in segments[i:] for x in s], a.top)


if __name__ == "__main__":
    main()
