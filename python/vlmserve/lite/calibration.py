"""Calibration windows: `samples` windows of `seqlen` tokens drawn with a
fixed seed from the tokenized calibration text.

Where the text holds at least `samples` disjoint windows, distinct disjoint
windows are drawn; otherwise windows start at random offsets and overlap
(reported in `note`). Fewer tokens than one window is an error."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmserve.errors import InvalidArgumentError
from vlmserve.lite.datasets import TextSource, tokenize


@dataclass
class CalibrationSet:
    input_ids: np.ndarray  # int64 [samples, seqlen]
    source: str
    total_tokens: int
    note: str = ""


def sample_windows(token_ids: list[int], samples: int, seqlen: int, seed: int, source: str = "") -> CalibrationSet:
    total = len(token_ids)
    if total == 0:
        raise InvalidArgumentError(f"calibration data {source} is empty (no tokens)")
    if total < seqlen:
        raise InvalidArgumentError(f"calibration data {source} is too short: {total} tokens, but --calib-seqlen "
                                   f"{seqlen} needs at least {seqlen} (use a longer file or a shorter --calib-seqlen)")
    ids = np.asarray(token_ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    blocks = total // seqlen
    note = ""
    if blocks >= samples:
        starts = rng.choice(blocks, size=samples, replace=False) * seqlen
    else:
        starts = rng.integers(0, total - seqlen + 1, size=samples)
        note = (f"{total} tokens hold only {blocks} disjoint windows of {seqlen}: "
                f"{samples} windows drawn at random offsets overlap")
    windows = np.stack([ids[s:s + seqlen] for s in starts])
    return CalibrationSet(windows, source, total, note)


def calibration_set(source: TextSource, tokenizer, samples: int, seqlen: int, seed: int,
                    vocab_size: int | None = None) -> CalibrationSet:
    if source.empty:
        raise InvalidArgumentError(f"calibration data {source.name} is empty")
    ids = tokenize(source, tokenizer)
    cal = sample_windows(ids, samples, seqlen, seed, source.name)
    if vocab_size is not None and int(cal.input_ids.max()) >= vocab_size:
        raise InvalidArgumentError(f"calibration data {source.name} holds token id {int(cal.input_ids.max())}, "
                                   f"beyond the model's vocabulary of {vocab_size}")
    return cal
