#!/usr/bin/env python3
"""Torch baseline for benches/elementwise.rs and benches/embedding.rs, at the same shapes and
with the same byte counts (each input read once, each output written once):

  silu_mul      F.silu(gate) * up on the two halves of a [tokens, 6144] tensor, 16384 and 256 tokens
  gelu          F.gelu(x, approximate="tanh" / "none") at 5040 x 4304
  bias_add      x + bias + residual at 16384 x 1024
  embedding     F.embedding(ids, table[103424, 1024]) at 16384 and 256 tokens
  pos_embed     F.interpolate(table viewed 27x27, size=(72, 70), bilinear, align_corners=False)
                then x += it, at 5040 x 1152 (what the hub does; two kernels and a temporary)

Like the Rust benches, each case cycles through enough input/output sets to touch at least
200 MB per pass, so shapes that fit in the 50 MB L2 are not timed from L2. CUDA events around
a pass over all sets, median of the reps. bf16 throughout.
"""
import torch
import torch.nn.functional as F

COPY_GBPS = 2960.0


def sets_for(nbytes):
    return max(1, min(64, -(-200_000_000 // nbytes)))


def time_us(fn, sets, reps=20):
    for st in sets:
        fn(st)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for st in sets:
            fn(st)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3 / len(sets))
    times.sort()
    return times[len(times) // 2]


def report(name, nbytes, us):
    gbps = nbytes / (us * 1e-6) / 1e9
    print(f"torch {name}: {us:.1f} us, {gbps:.0f} GB/s ({100 * gbps / COPY_GBPS:.0f}% of {COPY_GBPS:.0f} GB/s copy)")


def rand(*shape):
    return torch.rand(*shape, device="cuda", dtype=torch.bfloat16) * 8 - 4


def main():
    torch.manual_seed(0)
    with torch.inference_mode():
        for tokens in (16384, 256):
            inter = 3072
            nbytes = tokens * inter * 2 * 3
            sets = [rand(tokens, 2 * inter) for _ in range(sets_for(nbytes))]
            fn = lambda gu: F.silu(gu[:, :inter]) * gu[:, inter:]
            report(f"silu_mul {tokens}x{inter}", nbytes, time_us(fn, sets))

        rows, width = 5040, 4304
        nbytes = rows * width * 2 * 2
        sets = [rand(rows, width) for _ in range(sets_for(nbytes))]
        for approx, name in (("tanh", "gelu_tanh"), ("none", "gelu_erf")):
            fn = lambda x, a=approx: F.gelu(x, approximate=a)
            report(f"{name} {rows}x{width}", nbytes, time_us(fn, sets))

        rows, width = 16384, 1024
        nbytes = rows * width * 2 * 3 + width * 2
        bias = rand(width)
        sets = [(rand(rows, width), rand(rows, width)) for _ in range(sets_for(nbytes))]
        fn = lambda st: torch.add(st[0] + bias, st[1])
        report(f"bias_add_residual {rows}x{width} (2 kernels)", nbytes, time_us(fn, sets))

        vocab, hidden = 103424, 1024
        table = rand(vocab, hidden)
        for tokens in (16384, 256):
            nbytes = tokens * hidden * 2 * 2 + tokens * 4
            sets = [torch.randint(0, vocab, (tokens,), device="cuda") for _ in range(sets_for(nbytes))]
            fn = lambda ids: F.embedding(ids, table)
            report(f"embedding {tokens}x{hidden} (int64 ids)", nbytes, time_us(fn, sets))

        side, dim, h, w = 27, 1152, 72, 70
        nbytes = h * w * dim * 2 * 2 + side * side * dim * 2
        pos = rand(side * side, dim)
        sets = [rand(h * w, dim) for _ in range(sets_for(nbytes))]

        def pos_add(x):
            grid = pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
            r = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            x += r.reshape(dim, h * w).t()

        report(f"pos_embed_resample_add {h * w}x{dim} (interpolate + add)", nbytes, time_us(pos_add, sets))


if __name__ == "__main__":
    main()
