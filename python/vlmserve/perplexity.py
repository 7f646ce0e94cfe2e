"""Perplexity of a text under a model, computed through the engine (so it
measures our kernels and our KV cache quantization).

Strided windows as in Hugging Face's perplexity guide: windows of `window`
tokens start every `stride` tokens; each scores only the tokens the previous
window did not, with the rest of the window as context."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vlmserve.config import GenerationConfig
from vlmserve.engine import Engine


@dataclass
class PerplexityResult:
    perplexity: float
    nll_sum: float
    tokens_scored: int
    windows: int
    window: int
    stride: int


def windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: score the last `scored` tokens of [begin, end)."""
    if window < 2 or stride < 1 or stride > window:
        raise ValueError(f"need window >= 2 and 1 <= stride <= window, got window={window} stride={stride}")
    out, prev_end = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + window, num_tokens)
        scored = end - prev_end
        if begin == 0:
            scored -= 1  # the first token has no prediction
        if end - begin >= 2 and scored > 0:
            out.append((begin, end, scored))
        prev_end = end
        if end == num_tokens:
            break
    return out


def engine_perplexity(engine: Engine, token_ids: list[int], window: int = 512, stride: int = 512,
                      progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
    """All windows are queued at once, so the engine batches them."""
    spans = windows(len(token_ids), window, stride)
    gen = GenerationConfig(max_new_tokens=1, prompt_logprobs=True, ignore_eos=True)
    streams = [engine.add_request(token_ids[b:e], gen) for b, e, _ in spans]
    nll = 0.0
    count = 0
    for i, ((b, e, scored), s) in enumerate(zip(spans, streams)):
        lp = s.wait().prompt_logprobs  # log p(tok[j] | tok[:j]) for j = 1 .. len-1
        nll -= float(np.sum(lp[-scored:], dtype=np.float64))
        count += scored
        if progress:
            progress(i + 1, len(spans))
    return PerplexityResult(math.exp(nll / count), nll, count, len(spans), window, stride)
