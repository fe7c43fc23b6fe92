#!/usr/bin/env python3
"""Torch baselines for benches/norm.rs, at the same shapes, counted the same way.

Times torch.nn.functional.rms_norm and layer_norm, and the unfused `r = x + r; rms_norm(r)` /
`layer_norm(r)` that the fused kernels replace, with CUDA events (warm-up, median of reps).
Bytes are the same minimum benches/norm.rs counts (rows read and written once, plus weight and
bias), so the percentages compare directly; the unfused pair really moves 5 row passes where the
minimum is 4. Prefill shapes rotate over buffer sets about 3x the 50 MB L2; decode runs warm.
"""
import torch
import torch.nn.functional as F

COPY_GBPS = 2960.0


def time_us(fn, sets, reps=60):
    for i in range(3 * len(sets)):
        fn(sets[i % len(sets)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for st in sets:
            fn(st)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3 / len(sets))
    times.sort()
    return times[len(times) // 2]


def main():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    cases = [
        ("rms_norm", 16384, 1024, True),
        ("x+r, rms_norm", 16384, 1024, True),
        ("layer_norm", 5040, 1152, True),
        ("x+r, layer_norm", 5040, 1152, True),
        ("rms_norm warm_l2", 256, 1024, False),
        ("x+r, rms_norm warm_l2", 256, 1024, False),
    ]
    for op, tokens, hidden, hbm in cases:
        fused = op.startswith("x+r")
        layer = "layer_norm" in op
        row_bytes = tokens * hidden * 2
        nbytes = (4 if fused else 2) * row_bytes + (2 if layer else 1) * hidden * 2
        n_sets = -(-(150 << 20) // nbytes) if hbm else 1
        w = 1 + 0.1 * torch.randn(hidden, device=dev, dtype=torch.bfloat16)
        b = 0.5 * torch.randn(hidden, device=dev, dtype=torch.bfloat16)
        sets = [
            (
                torch.rand(tokens, hidden, device=dev, dtype=torch.bfloat16) * 2 - 1,
                torch.rand(tokens, hidden, device=dev, dtype=torch.bfloat16) * 2 - 1,
            )
            for _ in range(n_sets)
        ]

        def norm(t):
            if layer:
                return F.layer_norm(t, (hidden,), w, b, 1e-6)
            return F.rms_norm(t, (hidden,), w, 1e-5)

        def step(st):
            x, r = st
            if fused:
                r.add_(x)
                return norm(r)
            return norm(x)

        us = time_us(step, sets)
        gbps = nbytes / (us * 1e-6) / 1e9
        print(f"torch {op} {tokens}x{hidden}: {us:.1f} us, {gbps:.0f} GB/s "
              f"({100 * gbps / COPY_GBPS:.0f}% of {COPY_GBPS:.0f} GB/s copy)")


if __name__ == "__main__":
    main()
