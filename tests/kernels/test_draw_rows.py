"""The GPU draw of sampled rows (vlm_draw_rows, native/cuda/draw_rows.cu) against a float64 reference of the
same filters, on fresh random rows: a stratified grid of uniform numbers walks the kept tokens in vocabulary
order (so the tokens never decrease along the grid), lands on each kept token as often as its probability says,
never on a filtered one, and a row whose temperature is 0 keeps its poisoned entry. Needs a CUDA GPU."""
from __future__ import annotations

import numpy as np
import pytest

from vlmserve.errors import InvalidArgumentError
from vlmserve.kernels import draw_rows

pytestmark = pytest.mark.gpu

GRID = 4000  # draws a row: u = (j + 0.5) / GRID


def reference(x: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Probabilities of the kept tokens (float64; 0 elsewhere), as vlm_draw_rows defines them."""
    z = (x.astype(np.float32) / np.float32(temperature)).astype(np.float64)
    w = np.exp(z - z.max())
    order = np.lexsort((np.arange(len(z)), -z))  # x descending, index ascending
    kept = np.zeros(len(z), dtype=bool)
    n = top_k if 0 < top_k < len(z) else len(z)
    kept[order[:n]] = True
    if top_p < 1.0:
        cum = np.cumsum(w[order[:n]]) / w[order[:n]].sum()
        last = int(np.searchsorted(cum, top_p))  # first position whose running share reaches top_p
        kept[:] = False
        kept[order[:last + 1]] = True
    if min_p > 0:
        kept &= w >= min_p * w.max()
    p = np.where(kept, w, 0.0)
    return p / p.sum()


def draw_grid(x: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """GRID draws of one row (the row repeated, one u each) on the GPU."""
    import torch

    dev = torch.device("cuda")
    logits = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(x.astype(np.float32), (GRID, len(x))))).to(dev)
    full = lambda v, dtype: torch.full((GRID,), v, dtype=dtype, device=dev)  # noqa: E731
    u = ((torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID).to(dev)
    tokens = full(-7, torch.int32)
    draw_rows(logits, full(temperature, torch.float32), full(top_k, torch.int32), full(top_p, torch.float32),
              full(min_p, torch.float32), u, tokens)
    torch.cuda.synchronize()
    return tokens.cpu().numpy()


def row(kind: str, vocab: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=vocab).astype(np.float32) * 3
    if kind == "peaked":
        x[rng.integers(0, vocab, 4)] += 9
    elif kind == "ties":  # a coarse grid: top-k and top-p cut inside groups of equal logits
        x = np.round(x)
    elif kind == "masked":
        x[rng.random(vocab) < 0.7] = -np.inf
    return x


CASES = [  # (kind, vocab, temperature, top_k, top_p, min_p)
    ("normal", 5000, 1.0, 0, 1.0, 0.0), ("normal", 92544, 0.7, 0, 0.9, 0.0), ("peaked", 92544, 0.7, 50, 1.0, 0.0),
    ("normal", 32000, 1.3, 40, 0.95, 0.0), ("normal", 5000, 0.8, 0, 1.0, 0.05), ("ties", 3000, 1.0, 37, 1.0, 0.0),
    ("ties", 3000, 1.0, 0, 0.6, 0.0), ("masked", 4096, 1.0, 0, 0.8, 0.0), ("peaked", 151936, 1.0, 0, 0.5, 0.02),
    ("normal", 777, 2.0, 5, 0.7, 0.1),
]


@pytest.mark.parametrize("kind,vocab,temperature,top_k,top_p,min_p", CASES)
def test_draws_follow_the_reference_distribution(kind, vocab, temperature, top_k, top_p, min_p):
    x = row(kind, vocab, seed=vocab + top_k)
    p = reference(x, temperature, top_k, top_p, min_p)
    tokens = draw_grid(x, temperature, top_k, top_p, min_p)
    assert tokens.min() >= 0 and tokens.max() < vocab, "a draw was not written or left the vocabulary"
    assert np.all(np.diff(tokens) >= 0), "the walk is not in vocabulary order"
    # The stratified grid lands on a token as often as its probability, within one grid step at each end; the
    # reference's exp and the kernel's differ by ~1e-7, so one boundary token may be in one and not the other.
    counts = np.bincount(tokens, minlength=vocab)
    expected = p * GRID
    off = np.abs(counts - expected) > 2.0 + 1e-4 * GRID
    assert off.sum() <= 2, f"tokens {np.nonzero(off)[0][:10]}: drawn {counts[off][:10]}, expected {expected[off][:10]}"
    outside = np.nonzero((counts > 0) & (p == 0))[0]
    assert len(outside) <= 1 and counts[outside].sum() <= 2, f"filtered tokens drawn: {outside[:10]}"


def test_top_k_one_and_a_cold_temperature_give_the_argmax():
    x = row("normal", 20000, seed=3)
    assert set(draw_grid(x, 1.0, 1, 1.0, 0.0)) == {int(np.argmax(x))}
    assert set(draw_grid(x, 1e-3, 0, 1.0, 0.0)) == {int(np.argmax(x))}


def test_ties_keep_the_lowest_indices():
    x = np.zeros(1000, dtype=np.float32)  # all tied: top-k keeps the first k indices, each equally often
    counts = np.bincount(draw_grid(x, 1.0, 10, 1.0, 0.0), minlength=1000)
    assert set(np.nonzero(counts)[0]) == set(range(10)) and np.all(np.abs(counts[:10] - GRID / 10) <= 1)


def test_rows_without_a_temperature_are_left_alone_and_results_repeat():
    import torch

    dev = torch.device("cuda")
    rows, vocab = 6, 50000
    logits = torch.randn(rows, vocab, device=dev) * 4
    temperature = torch.tensor([0.0, 0.7, 0.0, 1.0, 1.5, -1.0], device=dev)
    top_k = torch.tensor([0, 0, 5, 20, 0, 0], dtype=torch.int32, device=dev)
    top_p = torch.tensor([1.0, 0.9, 1.0, 1.0, 0.5, 1.0], device=dev)
    min_p = torch.zeros(rows, device=dev)
    u = torch.rand(rows, dtype=torch.float64, device=dev)
    first = draw_rows(logits, temperature, top_k, top_p, min_p, u, torch.full((rows,), -7, dtype=torch.int32,
                                                                             device=dev)).cpu()
    assert first[0] == -7 and first[2] == -7 and first[5] == -7
    assert all(0 <= int(first[i]) < vocab for i in (1, 3, 4))
    for _ in range(3):
        again = draw_rows(logits, temperature, top_k, top_p, min_p, u,
                          torch.full((rows,), -7, dtype=torch.int32, device=dev)).cpu()
        assert torch.equal(again, first)


def test_bad_arguments_are_refused():
    import torch

    dev = torch.device("cuda")
    logits = torch.zeros(2, 8, device=dev)
    f = torch.ones(2, device=dev)
    k = torch.zeros(2, dtype=torch.int32, device=dev)
    u = torch.zeros(2, dtype=torch.float64, device=dev)
    tokens = torch.zeros(2, dtype=torch.int32, device=dev)
    with pytest.raises(InvalidArgumentError, match="argument 5"):
        draw_rows(logits, f, k, f, f, u.float(), tokens)
    with pytest.raises(InvalidArgumentError, match="shape"):
        draw_rows(logits, f, k, f, f, u, torch.zeros(3, dtype=torch.int32, device=dev))
    with pytest.raises(InvalidArgumentError, match="argument 0 must be a contiguous torch.float32 CUDA tensor"):
        draw_rows(logits.cpu(), f, k, f, f, u, tokens)
    with pytest.raises(InvalidArgumentError, match=r"\[rows, vocab\]"):
        draw_rows(logits[0], f, k, f, f, u, tokens)
