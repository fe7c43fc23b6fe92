#!/usr/bin/env python3
"""Torch baseline for benches/attention.rs: scaled_dot_product_attention with the flash and the
cuDNN backends at the same shapes, timed with CUDA events (warm-up, median of 20 runs).
FLOPs as FlashAttention counts them: 4 * s_q * s_k * heads * d per sequence, halved when
causal, d = 72 counted as 72. Prints `torch sdpa <backend> <case>: X us, Y TFLOP/s` lines.

Equal-length sequences run as one batch (what varlen packing of equal lengths costs). GQA
(16 query heads over 2 kv heads) uses enable_gqa=True where the backend takes it, else k/v
repeated to 16 heads (the line says so)."""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H100_BF16_TFLOPS = 798.0

# name, batch, seqlen, q heads, kv heads, head_dim, causal
CASES = [
    ("prefill_causal_1x8192", 1, 8192, 16, 2, 128, True),
    ("prefill_causal_4x2048", 4, 2048, 16, 2, 128, True),
    ("prefill_noncausal_1x8192", 1, 8192, 16, 2, 128, False),
    ("prefill_noncausal_4x2048", 4, 2048, 16, 2, 128, False),
    ("vision_4x5040_d72", 4, 5040, 16, 16, 72, False),
    ("vision_1x576_d72", 1, 576, 16, 16, 72, False),
]
BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]


def median_ms(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def main():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for name, b, s, hq, hkv, d, causal in CASES:
        q = torch.randn(b, hq, s, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(b, hkv, s, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn(b, hkv, s, d, device=dev, dtype=torch.bfloat16)
        flops = 4.0 * b * s * s * hq * d * (0.5 if causal else 1.0)
        for bname, backend in BACKENDS:
            note = ""
            try:
                with sdpa_kernel(backend):
                    if hq != hkv:
                        try:
                            F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                        except RuntimeError:
                            kr = k.repeat_interleave(hq // hkv, dim=1)
                            vr = v.repeat_interleave(hq // hkv, dim=1)
                            fn = lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=causal)
                            note = " (k/v repeated to 16 heads)"
                    else:
                        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    ms = median_ms(fn)
            except RuntimeError as e:
                print(f"torch sdpa {bname} {name}: unavailable ({str(e).splitlines()[0][:100]})")
                continue
            tflops = flops / (ms * 1e-3) / 1e12
            print(
                f"torch sdpa {bname} {name}: {ms * 1e3:.1f} us, {tflops:.1f} TFLOP/s "
                f"({100 * tflops / H100_BF16_TFLOPS:.0f}% of {H100_BF16_TFLOPS:.0f} TFLOP/s bf16){note}"
            )
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
