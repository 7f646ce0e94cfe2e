"""A paged KV cache of random rows in the engine's layout, and attention over it in
float32 torch: the reference of the decode and prefill attention kernel tests."""
from __future__ import annotations

import numpy as np

BLOCK = 16
# Largest |error| / largest |reference|: fp16 (bf16) rounding of q and of the output, fp32
# softmax and accumulation; the cache values themselves are the reference's inputs.
TOL = {"float16": 2e-3, "bfloat16": 1.6e-2}


def make_cache(rng, kv_dtype, blocks, kv_heads, head_dim):
    """Random cache rows in the engine's layout and their float32 values [blocks, kv_heads, BLOCK, head_dim]."""
    import torch

    shape = (blocks, kv_heads, BLOCK, head_dim)
    if kv_dtype in ("float32", "float16", "bfloat16"):
        values = torch.from_numpy(rng.normal(size=shape).astype(np.float32)).to(getattr(torch, kv_dtype))
        return values.cuda(), None, values.float().cuda()
    levels = 256 if kv_dtype == "int8" else 16
    codes = rng.integers(0, levels, size=shape).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, size=shape[:3]).astype(np.float16)
    zero = rng.uniform(-1, 1, size=shape[:3]).astype(np.float16)
    values = codes.astype(np.float32) * scale.astype(np.float32)[..., None] + zero.astype(np.float32)[..., None]
    raw = codes if kv_dtype == "int8" else (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    sz = np.stack([scale, zero], axis=-1)  # (scale, zero) fp16 pair per row
    return (torch.from_numpy(np.ascontiguousarray(raw)).cuda(), torch.from_numpy(sz.view(np.int16)).cuda(),
            torch.from_numpy(values).cuda())


def reference(q, k, v, positions, tables, kv_heads, head_dim, window):
    import torch

    rows, width = q.shape
    heads = width // head_dim
    group = heads // kv_heads
    out = torch.empty(rows, heads, head_dim, dtype=torch.float32, device=q.device)
    for r in range(rows):
        pos = int(positions[r])
        lo = max(0, pos - window + 1) if window else 0
        keys = torch.arange(lo, pos + 1, device=q.device)
        blocks = tables[r][keys // BLOCK].long()
        kr = k[blocks, :, keys % BLOCK]  # [n, kv_heads, head_dim]
        vr = v[blocks, :, keys % BLOCK]
        for h in range(heads):
            qh = q[r, h * head_dim:(h + 1) * head_dim].float()
            p = torch.softmax(kr[:, h // group] @ qh / head_dim ** 0.5, dim=0)
            out[r, h] = p @ vr[:, h // group]
    return out.reshape(rows, width)
