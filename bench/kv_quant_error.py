#!/usr/bin/env python3
"""How hard SmolLM2-135M's keys and values are to quantize per token and KV head (the engine's
int4/int8 KV scheme): relative error |q(x) - x| / |x| of every layer's K and V rows (k_proj /
v_proj outputs, before RoPE, which rotates channel pairs and keeps their magnitude) on the first
512 tokens of wiki.test.raw, and how far the largest channel stands out (its max |x| over the
median channel's mean |x|, per KV head, the largest head of each layer).

    .venv/bin/python bench/kv_quant_error.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    from reference import kv_fake_quant
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlmserve.default_model import smollm2_checkpoint
    from vlmserve.lite.datasets import builtin_path

    d = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(d)
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    hd = m.config.head_dim if getattr(m.config, "head_dim", None) else m.config.hidden_size // m.config.num_attention_heads
    ids = tok(builtin_path("wikitext2", "evaluation").read_text()[:20000], return_tensors="pt").input_ids[:, :512]
    rows: dict[str, dict[int, torch.Tensor]] = {"K": {}, "V": {}}
    for i, layer in enumerate(m.model.layers):
        layer.self_attn.k_proj.register_forward_hook(lambda _m, _a, o, i=i: rows["K"].__setitem__(i, o[0]))
        layer.self_attn.v_proj.register_forward_hook(lambda _m, _a, o, i=i: rows["V"].__setitem__(i, o[0]))
    with torch.no_grad():
        m(ids)
    for name, per_layer in rows.items():
        err = {bits: [] for bits in (8, 4)}
        outlier = []
        for x in per_layer.values():
            x = x.view(x.shape[0], -1, hd)
            for bits in err:
                err[bits].append(float((kv_fake_quant(x, bits) - x).norm() / x.norm()))
            med = x.abs().mean(0).median(dim=-1, keepdim=True).values
            outlier.append(float((x.abs().amax(0) / med).max()))
        print(f"{name}: int8 rel. error mean {np.mean(err[8]):.4f}; int4 rel. error mean {np.mean(err[4]):.3f} "
              f"(max layer {max(err[4]):.3f}); largest channel / median channel: median over layers "
              f"{np.median(outlier):.1f}, max {max(outlier):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
