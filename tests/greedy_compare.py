"""Comparing two greedy runs of the engine whose arithmetic differs slightly (another backend, a
tensor-parallel split): logits within a tolerance relative to their largest magnitude, tokens
identical except where the reference run itself saw a near tie (its two best logits closer than
twice that tolerance) — after that the runs feed different tokens and stop being comparable.
Returns the steps the two runs agreed for."""
from __future__ import annotations

import numpy as np


def assert_same_greedy(ref, got, prompt_len: int, rel_tol: float, min_steps: int,
                       names: tuple[str, str] = ("reference", "run")) -> int:
    scale = float(np.abs(ref.logits).max())
    atol = rel_tol * scale
    agree = 0
    while agree < len(ref.token_ids) and ref.token_ids[agree] == got.token_ids[agree]:
        agree += 1
    if agree < len(ref.token_ids):
        top2 = np.sort(ref.logits[prompt_len - 1 + agree])[-2:]
        assert top2[1] - top2[0] <= 2 * atol, (
            f"greedy tokens differ at step {agree} without a near tie: {names[0]} {ref.token_ids} "
            f"{names[1]} {got.token_ids}")
    upto = prompt_len + agree
    err = float(np.abs(ref.logits[:upto] - got.logits[:upto]).max())
    print(f"max |logit error| {err:.3g} = {err / scale:.3g} x max|logit|; greedy agreed {agree}/{len(ref.token_ids)}")
    assert err <= atol, f"logits differ by {err:.4g} > {atol:.4g}"
    assert agree >= min_steps, f"greedy agreed for only {agree} steps"
    return agree
