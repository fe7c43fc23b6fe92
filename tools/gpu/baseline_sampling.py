#!/usr/bin/env python3
"""Torch baseline for benches/sampling.rs: sort-based top-k/top-p sampling (temperature,
softmax, sort, cumsum, mask, renormalise, multinomial; vLLM's pre-FlashInfer recipe) and
torch.argmax, on f32 logits [batch, 103424] at batch 1, 32 and 256 with top_k = 50,
top_p = 0.9, temperature 0.7, timed with CUDA events (warm-up, median of 20 runs). GB/s counts
one read of the logits, as the bench does. Prints `torch <op> b<batch>: X us, Y GB/s (Z% of
2960 GB/s copy)` lines."""
import torch

VOCAB = 103424
H100_COPY_GBPS = 2960.0


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


def top_k_top_p_sample(logits, temperature, top_k, top_p):
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, sorted_idx = torch.sort(probs, dim=-1, descending=True)
    ranks = torch.arange(probs.shape[-1], device=probs.device)
    cum = torch.cumsum(sorted_probs, dim=-1)
    # Keep the top k, and every token whose mass above it is below top_p.
    keep = (ranks < top_k) & (cum - sorted_probs < top_p)
    sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    choice = torch.multinomial(sorted_probs, 1)
    return torch.gather(sorted_idx, -1, choice)


def main():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for batch in (1, 32, 256):
        logits = 2.0 * torch.randn(batch, VOCAB, device=dev, dtype=torch.float32)
        nbytes = logits.numel() * 4
        for name, fn in [
            ("top_k_top_p", lambda: top_k_top_p_sample(logits, 0.7, 50, 0.9)),
            ("argmax", lambda: torch.argmax(logits, dim=-1)),
        ]:
            ms = median_ms(fn)
            gbps = nbytes / (ms * 1e-3) / 1e9
            print(f"torch {name} b{batch}: {ms * 1e3:.1f} us, {gbps:.0f} GB/s "
                  f"({100 * gbps / H100_COPY_GBPS:.0f}% of {H100_COPY_GBPS:.0f} GB/s copy)")


if __name__ == "__main__":
    main()
