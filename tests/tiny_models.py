"""Tiny seeded-random checkpoints of every family the engine serves, written
with transformers' own save_pretrained so the file layout is the real one."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

VOCAB = 320

# name -> (config class, model class, config overrides)
TEXT_FAMILIES = {
    "llama_mha_hd64": (LlamaConfig, LlamaForCausalLM,
                       dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4, head_dim=64)),
    "llama_gqa_hd128": (LlamaConfig, LlamaForCausalLM,
                        dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                             rope_theta=500000.0)),
    "llama_mqa": (LlamaConfig, LlamaForCausalLM,
                  dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=1, head_dim=32)),
    "llama3_rope_scaling": (LlamaConfig, LlamaForCausalLM,
                            dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 64})),
    "llama_tied": (LlamaConfig, LlamaForCausalLM,
                   dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=2, head_dim=64,
                        tie_word_embeddings=True)),
    "mistral_sliding": (MistralConfig, MistralForCausalLM,
                        dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                             sliding_window=12)),
    "qwen2_bias_tied": (Qwen2Config, Qwen2ForCausalLM,
                        dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=True, rope_theta=1000000.0)),
}


def text_config(family: str, **overrides):
    cfg_cls, _, extra = TEXT_FAMILIES[family]
    kwargs = dict(vocab_size=VOCAB, intermediate_size=256, num_hidden_layers=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  tie_word_embeddings=False)
    kwargs.update(extra)
    kwargs.update(overrides)
    return cfg_cls(**kwargs)


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that logits are well separated (HF's 0.02 init makes near-ties)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def write_text_model(directory: Path, family: str, seed: int = 0, dtype=torch.float32, **overrides) -> Path:
    _, model_cls, _ = TEXT_FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(text_config(family, **overrides))
    randomize_(model, seed)
    model = model.to(dtype)
    model.save_pretrained(directory)
    return directory


def load_hf(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()


def greedy_tokens(model, n: int, input_ids: list[int] | None = None, inputs_embeds=None) -> list[int]:
    """n tokens of plain argmax decoding with a full forward each step: the greedy
    reference. (generate() is not: min_new_tokens masks EOS, which the engine's
    ignore_eos keeps selectable, and its cached steps may round differently.)"""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            if inputs_embeds is None:
                logits = model(torch.tensor([list(input_ids) + out])).logits
            else:
                emb = inputs_embeds
                if out:
                    emb = torch.cat([emb, model.get_input_embeddings()(torch.tensor([out]))], dim=1)
                logits = model(inputs_embeds=emb).logits
            out.append(int(logits[0, -1].argmax()))
    return out
