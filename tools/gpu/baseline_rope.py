#!/usr/bin/env python3
"""Torch baseline for benches/rope.rs: rotate-half rope as transformers applies it, with cos and
sin precomputed, on q and k column views of a fused qkv buffer, at the bench's shapes.

  text M-RoPE: cos/sin [tokens, 128] in bf16 (HF casts them to the activation dtype), q [T,16,128]
               and k [T,2,128] in bf16: q*cos + rotate_half(q)*sin (apply_multimodal_rotary_pos_emb)
  vision rope: cos/sin [tokens, 72] in f32, q and k [T,16,72] cast to f32, rotated, cast back
               (apply_rotary_pos_emb_vision)

GB/s counts q and k read once and written once, as the bench does (torch moves more).
Run on the GPU host: python3 tools/gpu/baseline_rope.py
"""
import torch

COPY_GBPS = 2960.0


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def text_apply(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def vision_apply(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    qf, kf = q.float(), k.float()
    q_out = qf * cos + rotate_half(qf) * sin
    k_out = kf * cos + rotate_half(kf) * sin
    return q_out.to(q.dtype), k_out.to(k.dtype)


def time_us(fn, n_inputs, reps=50, warmup=5):
    for i in range(warmup):
        fn(i % n_inputs)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i, (a, b) in enumerate(events):
        a.record()
        fn(i % n_inputs)
        b.record()
    torch.cuda.synchronize()
    return sorted(a.elapsed_time(b) for a, b in events)[reps // 2] * 1e3


def case(name, tokens, q_heads, kv_heads, head_dim, theta, vision, copies):
    dev = torch.device("cuda")
    width = (q_heads + 2 * kv_heads) * head_dim
    qkvs = [torch.randn(tokens, width, device=dev, dtype=torch.bfloat16) for _ in range(copies)]
    views = []
    for qkv in qkvs:
        q = qkv[:, : q_heads * head_dim].view(tokens, q_heads, head_dim)
        k = qkv[:, q_heads * head_dim : (q_heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
        views.append((q, k))
    half = head_dim // 2
    if vision:
        quarter = head_dim // 4
        inv = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float, device=dev) / half))
        rows = torch.randint(0, 100, (tokens,), device=dev).float()
        cols = torch.randint(0, 100, (tokens,), device=dev).float()
        ang = torch.cat([rows[:, None] * inv, cols[:, None] * inv], dim=-1)  # [T, half]
        assert ang.shape[-1] == 2 * quarter
        emb = torch.cat([ang, ang], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        apply = vision_apply
    else:
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=dev).float() / head_dim))
        pos = torch.randint(0, 16384, (3, tokens), device=dev).float()
        axis = torch.tensor([0] * 16 + [1] * 24 + [2] * 24, device=dev)
        ang = pos[axis, :].T * inv  # [T, 64]
        emb = torch.cat([ang, ang], dim=-1)
        cos, sin = emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)
        apply = text_apply
    us = time_us(lambda i: apply(views[i][0], views[i][1], cos, sin), copies)
    nbytes = tokens * (q_heads + kv_heads) * head_dim * 2 * 2
    gbps = nbytes / (us * 1e-6) / 1e9
    print(f"torch {name} [{tokens} tok, {q_heads}+{kv_heads} heads x {head_dim}]: {us:.1f} us, "
          f"{gbps:.0f} GB/s ({100 * gbps / COPY_GBPS:.0f}% of {COPY_GBPS:.0f} GB/s copy)")


def main():
    torch.manual_seed(0)
    case("mrope_prefill", 16384, 16, 2, 128, 500000.0, False, 1)
    case("mrope_decode", 256, 16, 2, 128, 500000.0, False, 1)
    # 4 buffers so that the 50 MB L2 does not serve the 46 MB the vision case moves.
    case("vision_rope", 5040, 16, 16, 72, 10000.0, True, 4)


if __name__ == "__main__":
    main()
