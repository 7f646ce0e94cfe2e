"""The filters' support, checked the same way for every place tokens are drawn (the host sampler,
tests/engine/test_sampling.py; the GPU draw, tests/engine/test_device_sampling.py): one-token requests under many
seeds only ever produce tokens the filter keeps, computed from transformers' own logits."""
from __future__ import annotations

import torch

from tiny_models import load_hf
from vlmserve import GenerationConfig


def sampled_set(eng, prompt, n=60, **kw) -> set[int]:
    return {eng.generate(prompt, GenerationConfig(max_new_tokens=1, seed=seed, **kw)).token_ids[0] for seed in range(n)}


def assert_filters_restrict_the_support(eng, model, prompt, n=60) -> None:
    hf = load_hf(model)
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0, -1].double()
    probs = torch.softmax(logits, -1)
    order = torch.argsort(probs, descending=True).tolist()
    top5 = set(order[:5])
    assert sampled_set(eng, prompt, n, temperature=1.0, top_k=5) <= top5
    # top_p: the smallest prefix with mass >= 0.5
    cum = torch.cumsum(probs[order], 0)
    nucleus = set(order[: int((cum < 0.5).sum()) + 1])
    assert sampled_set(eng, prompt, n, temperature=1.0, top_p=0.5) <= nucleus
    # min_p: tokens with p >= 0.3 * p_max
    allowed = {i for i in range(len(probs)) if probs[i] >= 0.3 * probs.max()}
    assert sampled_set(eng, prompt, n, temperature=1.0, min_p=0.3) <= allowed
    # an unfiltered draw at a high temperature reaches beyond all of those
    assert len(sampled_set(eng, prompt, n, temperature=3.0)) > len(top5)
