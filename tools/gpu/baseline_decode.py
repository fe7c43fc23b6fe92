#!/usr/bin/env python3
"""Torch baseline for benches/decode.rs: decode attention (one query token per sequence) with
torch.nn.functional.scaled_dot_product_attention on contiguous K/V, at the bench's shapes:
256 x 1024, 256 x 4096 and 1 x 16384 keys, 16 query heads over 2 kv heads, head_dim 128, bf16.

GQA through enable_gqa=True where the backend takes it, else with the kv heads repeated 8x
(marked "repeat_kv"; that really reads 8x the K/V, but bytes are counted the same way). Bytes
are what benches/decode.rs counts: K and V read once, q read and o written once. CUDA events,
warm-up, median of reps; the 1 x 16384 case rotates 8 copies (134 MB, past the 50 MB L2).
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

COPY_GBPS = 2960.0
HQ, HKV, D = 16, 2, 128


def time_us(fn, sets, reps=30):
    for i in range(2 * len(sets)):
        fn(sets[i % len(sets)])
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


def main():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    backends = [
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
    ]
    for b, ctx, n_sets in [(256, 1024, 1), (256, 4096, 1), (1, 16384, 8)]:
        nbytes = b * ctx * HKV * D * 2 * 2 + 2 * b * HQ * D * 2
        sets = [
            (
                torch.rand(b, HQ, 1, D, device=dev, dtype=torch.bfloat16) * 2 - 1,
                torch.rand(b, HKV, ctx, D, device=dev, dtype=torch.bfloat16) * 2 - 1,
                torch.rand(b, HKV, ctx, D, device=dev, dtype=torch.bfloat16) * 2 - 1,
            )
            for _ in range(n_sets)
        ]
        for name, backend in backends:
            for gqa in (True, False):
                if gqa:
                    fn = lambda st: F.scaled_dot_product_attention(st[0], st[1], st[2], enable_gqa=True)
                    use = sets
                    tag = "enable_gqa"
                else:
                    use = [(q, k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1))
                           for q, k, v in sets]
                    fn = lambda st: F.scaled_dot_product_attention(st[0], st[1], st[2])
                    tag = "repeat_kv"
                try:
                    with sdpa_kernel([backend]):
                        us = time_us(fn, use)
                except RuntimeError as err:
                    msg = str(err).strip().splitlines()[0][:90] if str(err).strip() else type(err).__name__
                    print(f"torch sdpa_{name} {tag} decode {b}x{ctx}: unsupported ({msg})")
                    continue
                finally:
                    if not gqa:
                        del use
                gbps = nbytes / (us * 1e-6) / 1e9
                print(f"torch sdpa_{name} {tag} decode {b}x{ctx}: {us:.1f} us, {gbps:.0f} GB/s "
                      f"({100 * gbps / COPY_GBPS:.0f}% of {COPY_GBPS:.0f} GB/s copy)")
                if gqa:
                    break  # the backend takes GQA directly: the repeated form adds nothing
        del sets
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
