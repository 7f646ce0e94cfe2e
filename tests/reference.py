"""A plain torch LLaMA-family forward that can quantize K/V the way the
engine's KV cache does (per token and KV head, asymmetric, fp16 scale and
zero). Without quantization it is checked against transformers, so it is a
trustworthy reference for the quantized cache."""
from __future__ import annotations

import math

import torch


def kv_fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x [..., head_dim] -> what the engine reads back from an int cache."""
    qmax = float(2**bits - 1)
    mn = x.amin(dim=-1, keepdim=True)
    mx = x.amax(dim=-1, keepdim=True)
    scale = ((mx - mn) / qmax).clamp(max=65504.0).to(torch.float16).float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = mn.to(torch.float16).float()
    q = torch.clamp(torch.round((x - zero) * (1.0 / scale)), 0, qmax)
    return q * scale + zero


def _rope_tables(model, positions: torch.Tensor):
    rotary = model.model.rotary_emb
    dummy = torch.zeros(1, dtype=torch.float32)
    cos, sin = rotary(dummy, positions[None])
    return cos[0], sin[0]


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.no_grad()
def reference_logits(model, tokens: list[int], kv_bits: int | None = None,
                     embeddings: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Logits [len(tokens), vocab] of a HF Llama/Mistral/Qwen2 model, computed
    with our own loop; K/V quantized to kv_bits if given; embeddings maps a
    position to the row that replaces its token embedding."""
    cfg = model.config
    ids = torch.tensor(tokens)
    T = len(tokens)
    h = model.model.embed_tokens(ids).float()
    for pos, row in (embeddings or {}).items():
        h[pos] = row.float()
    cos, sin = _rope_tables(model, torch.arange(T))
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    window = getattr(cfg, "sliding_window", None) if cfg.model_type != "qwen2" else None
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    if window:
        mask &= ~torch.ones(T, T, dtype=torch.bool).tril(-window)
    for layer in model.model.layers:
        a = layer.self_attn
        x = layer.input_layernorm(h)
        q = a.q_proj(x).view(T, nh, hd).transpose(0, 1)
        k = a.k_proj(x).view(T, nkv, hd).transpose(0, 1)
        v = a.v_proj(x).view(T, nkv, hd).transpose(0, 1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if kv_bits:
            k, v = kv_fake_quant(k, kv_bits), kv_fake_quant(v, kv_bits)
        k = k.repeat_interleave(nh // nkv, dim=0)
        v = v.repeat_interleave(nh // nkv, dim=0)
        s = (q @ k.transpose(1, 2)) / math.sqrt(hd)
        s = s.masked_fill(~mask, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v
        h = h + a.o_proj(o.transpose(0, 1).reshape(T, nh * hd))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(model.model.norm(h))
