"""Summarises an `ncu --csv --metrics gpu__time_duration.sum` log: each kernel's launches and
total GPU time, largest first.

    python3 tools/gpu/ncu_summary.py LOG [TOP]

ncu --csv writes one row per kernel launch and metric ("Kernel Name", "Metric Unit", "Metric
Value"); other lines (==PROF==, the program's own output) are skipped.
"""
import csv
import sys
from collections import defaultdict

SCALE_TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def main(path, top):
    lines = (line for line in open(path, errors="replace") if line.startswith('"'))
    rows = list(csv.reader(lines))
    head = next((r for r in rows if "Kernel Name" in r and "Metric Value" in r), None)
    if head is None:
        sys.exit("no ncu CSV rows in " + path)
    k, u, v = head.index("Kernel Name"), head.index("Metric Unit"), head.index("Metric Value")
    total, calls = defaultdict(float), defaultdict(int)
    for r in rows:
        if r is head or len(r) <= v:
            continue
        try:
            us = float(r[v].replace(",", "")) * SCALE_TO_US.get(r[u], 1.0)
        except ValueError:
            continue
        name = r[k].split("(")[0][:80]
        total[name] += us
        calls[name] += 1
    grand = sum(total.values())
    print(f"ncu: {sum(calls.values())} launches, {grand:.0f} us of kernel time")
    for name in sorted(total, key=total.get, reverse=True)[:top]:
        print(f"{total[name]:10.1f} us {100 * total[name] / grand:5.1f}%  {calls[name]:4d} x  {name}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
