"""Calibration data: offline sources, seeded windows, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vlmserve.errors import InvalidArgumentError, NotFoundError
from vlmserve.lite.calibration import calibration_set, sample_windows
from vlmserve.lite.datasets import builtin_path, load_text, tokenize


def test_windows_are_seeded_disjoint_and_distinct():
    ids = list(range(10_000))
    a = sample_windows(ids, 16, 100, seed=3)
    b = sample_windows(ids, 16, 100, seed=3)
    c = sample_windows(ids, 16, 100, seed=4)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert not np.array_equal(a.input_ids, c.input_ids)
    assert a.input_ids.shape == (16, 100) and not a.note
    starts = sorted(a.input_ids[:, 0].tolist())
    assert all(s % 100 == 0 for s in starts) and len(set(starts)) == 16
    assert all((row == np.arange(row[0], row[0] + 100)).all() for row in a.input_ids)


def test_short_text_gives_overlapping_windows_with_a_note():
    cal = sample_windows(list(range(250)), 8, 100, seed=0)
    assert cal.input_ids.shape == (8, 100) and "overlap" in cal.note
    assert cal.input_ids.max() < 250


@pytest.mark.parametrize("ids,msg", [([], "empty"), (list(range(99)), "too short: 99 tokens")])
def test_empty_or_too_short_is_an_error(ids, msg):
    with pytest.raises(InvalidArgumentError, match=msg):
        sample_windows(ids, 4, 100, seed=0)


def test_jsonl_text_and_token_ids(tmp_path, byte_tokenizer):
    p = tmp_path / "cal.jsonl"
    p.write_text("\n".join([json.dumps({"text": "The lobster is blue."}), json.dumps("A plain string."), "",
                            json.dumps({"input_ids": [5, 6, 7]})]))
    src = load_text(str(p), "calibration")
    assert src.documents == ["The lobster is blue.", "A plain string."] and src.token_ids == [[5, 6, 7]]
    ids = tokenize(src, byte_tokenizer)
    assert ids[-3:] == [5, 6, 7] and len(ids) > 10


def test_bad_sources(tmp_path, byte_tokenizer):
    with pytest.raises(NotFoundError, match="neither a built-in name"):
        load_text(str(tmp_path / "nope.txt"), "calibration")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 1}\n')
    with pytest.raises(InvalidArgumentError, match="bad.jsonl:1"):
        load_text(str(bad), "calibration")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(InvalidArgumentError, match="empty"):
        calibration_set(load_text(str(empty), "calibration"), byte_tokenizer, 4, 16, 0)
    big_ids = tmp_path / "ids.jsonl"
    big_ids.write_text(json.dumps({"input_ids": list(range(1000))}))
    with pytest.raises(InvalidArgumentError, match="beyond the model's vocabulary of 320"):
        calibration_set(load_text(str(big_ids), "calibration"), None, 4, 16, 0, vocab_size=320)


def test_builtin_wikitext2_splits_are_the_shipped_files(byte_tokenizer):
    cal, ev = builtin_path("wikitext2", "calibration"), builtin_path("wikitext2", "evaluation")
    assert cal.name == "wiki.valid.tokens" and ev.name == "wiki.test.raw"
    src = load_text("wikitext2", "calibration")
    assert src.documents[0][:40] == cal.read_text(encoding="utf-8")[:40]
    windows = calibration_set(src, byte_tokenizer, 4, 512, seed=0, vocab_size=320)
    assert windows.input_ids.shape == (4, 512) and windows.total_tokens > 100_000
