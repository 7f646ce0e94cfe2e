"""Incremental detokenization against the tokenizer's own decode of the whole output: the deltas join to
exactly that text, for a real byte-level BPE tokenizer (SmolLM2's) on real text with multi-byte characters
split over tokens, and every decode reads a bounded window, not the whole output."""
from __future__ import annotations

import random

import pytest

from vlmserve.detokenizer import IncrementalDetokenizer
from vlmserve.lite.datasets import builtin_path

UNICODE = "Zürich — 東京 ŝ ✓ 🙂🚀 naïve façade. «Ça va?» Ω≈ç√"


class CountingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call saw."""

    def __init__(self, inner):
        self.inner = inner
        self.sizes: list[int] = []

    def decode(self, ids, skip_special_tokens=True):
        self.sizes.append(len(ids))
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def stream(tokenizer, ids: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer)
    return [detok.push(i) for i in ids]


def test_deltas_join_to_the_whole_decode_on_real_text(tokenizer):
    text = builtin_path("wikitext2", "calibration").read_text(encoding="utf-8")[:6000] + UNICODE
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    deltas = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in d for d in deltas)  # a character split over tokens arrives whole


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deltas_join_to_the_whole_decode_on_shuffled_pieces(tokenizer, seed):
    # Words and emoji in random order: byte-level pieces of multi-byte characters land at every offset.
    words = (UNICODE + " the of and 2024 x=3.5").split()
    rng = random.Random(seed)
    text = " ".join(rng.choice(words) for _ in range(300))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_special_tokens_are_skipped_or_kept_as_asked(tokenizer):
    ids = tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    special = tokenizer.convert_tokens_to_ids("<|im_end|>")
    seq = ids + [special] + ids
    assert "".join(stream(tokenizer, seq)) == tokenizer.decode(seq, skip_special_tokens=True)
    kept = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    assert "".join(kept.push(i) for i in seq) == tokenizer.decode(seq, skip_special_tokens=False)


def test_each_decode_reads_a_bounded_window(tokenizer):
    text = builtin_path("wikitext2", "calibration").read_text(encoding="utf-8")[:8000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    counting = CountingTokenizer(tokenizer)
    detok = IncrementalDetokenizer(counting)
    for i in ids:
        detok.push(i)
    assert len(ids) > 1000
    assert max(counting.sizes) <= 16, "a decode re-read the output instead of a window"


@pytest.mark.parametrize("seed", [0, 1])
def test_tokens_added_in_groups_give_the_same_text_with_bounded_windows(tokenizer, seed):
    # Groups of 1-6 tokens, as a stream that fell behind or sends several tokens a message delivers them.
    text = builtin_path("wikitext2", "calibration").read_text(encoding="utf-8")[:3000] + UNICODE
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    counting = CountingTokenizer(tokenizer)
    detok = IncrementalDetokenizer(counting)
    deltas, i = [], 0
    while i < len(ids):
        n = rng.randint(1, 6)
        deltas.append(detok.extend(ids[i:i + n]))
        i += n
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in d for d in deltas)
    assert max(counting.sizes) <= 16 + 6
