"""bench/step_stream_probe.py's arithmetic without a GPU: the bytes of a layer's phases (4-bit weights with their
group records, the int8 KV cache with its scales) and the document it writes from a run's rows."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
torch = pytest.importorskip("torch")  # the script imports it at the top
import step_stream_probe as probe  # noqa: E402


def test_a_layers_phases_are_its_weights_and_cache_in_the_engines_bytes():
    # ANCHORS.md: 0.53125 bytes a weight at groups of 128; the 2B-shaped model's q/k/v is 4096 x 2048, o 2048 x 2048,
    # gate_up 16384 x 2048, down 2048 x 8192; its int8 cache 8 KV heads of 128 with an fp16 (scale, zero) a token.
    phases = dict(probe.layer_phases("2b", 512))
    assert phases == {"qkv": 4096 * 2048 * 17 // 32, "attention": 2 * 8 * 512 * (128 + 4), "o": 2048 * 2048 * 17 // 32,
                      "gate_up": 16384 * 2048 * 17 // 32, "down": 2048 * 8192 * 17 // 32}
    seven = dict(probe.layer_phases("7b", 512))
    assert seven["qkv"] == 12288 * 4096 * 17 // 32 and seven["down"] == 4096 * 11008 * 17 // 32
    assert seven["attention"] == 2 * 32 * 512 * (128 + 4)
    for model in probe.MODELS:  # the probe reads whole 512-byte steps
        assert all(b % 512 == 0 for _, b in probe.layer_phases(model, 512))


def test_the_document_has_a_column_a_form_and_a_row_a_shape():
    rows = [{"model": "2b", "mode": m, "row": r, "blocks_per_sm": 2, "ring_stages": 8, "grid": 264,
             "layer_us": 10.0 + i, "fraction_of_copy_bandwidth": 0.5} for i, (m, r) in enumerate(probe.VARIANTS)]
    doc = {"gpu": "GPU", "bandwidth_tb_s": 3.0, "date": "today", "revision": "abc", "context": 512,
           "command": "python bench/step_stream_probe.py", "settings": {}, "rows": rows}
    text = probe.render(doc)
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert header.count("|") - 1 == 3 + len(probe.VARIANTS)
    assert "chain + row" in header and "persistent_no_waits + row" not in header
    line = next(line for line in text.splitlines() if line.startswith("| 2b"))
    assert "| 2 × 8 | 264 | 10.00 (50 %) | 11.00 (50 %) |" in line
