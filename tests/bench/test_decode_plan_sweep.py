"""bench/decode_plan_sweep.py's report from its runs (the timing itself needs a GPU: bench/gpu_session.sh step
decode_plan_sweep)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import decode_plan_sweep as sweep  # noqa: E402


def _run(layer, m, pinned, plan, us):
    return {"layer": layer, "n": 2048, "k": 2048, "m": m, "plan": plan, "us": us, "pinned": pinned}


def test_summary_compares_the_default_with_the_fastest_timed_plan():
    rows = [_run("2B.o", 1, [0, 0, 0], [1, 8, 8, 8], 4.4), _run("2B.o", 1, [1, 4, 16], [1, 4, 8, 16], 3.9),
            _run("2B.o", 1, [4, 8, 8], [0, 0, 0, 0], None),  # did not fit: the general kernel would have run
            _run("2B.o", 1, [2, 2, 8], [2, 2, 8, 8], 5.0), _run("2B.o", 2, [0, 0, 0], [1, 8, 8, 8], 4.6),
            {**_run("2B.o", 2, [1, 3, 8], [1, 3, 8, 8], None), "error": "VlmError: launch failed"},
            {"layer": None, "m": None, "plan": None, "us": None, "error": "exit 1: crash", "pinned": [4, 7, 16]}]
    summary = {(s["layer"], s["m"]): s for s in sweep.summarize(rows)}
    one = summary[("2B.o", 1)]
    assert one["default_plan"] == [1, 8, 8, 8] and one["best_plan"] == [1, 4, 8, 16]
    assert one["gain"] == pytest.approx(4.4 / 3.9)
    assert summary[("2B.o", 2)]["gain"] == pytest.approx(1.0)
    md = sweep.markdown({"gpu": "GPU", "date": "d", "command": "c"}, sweep.summarize(rows), rows)
    assert "| 2B.o | 1 | S=1 C=8 U=8 R=8 | 4.4 | S=1 C=4 U=8 R=16 | 3.9 | 1.13× |" in md
    assert "no plan (general kernel)" in md
    assert "failed: VlmError: launch failed" in md and "| all | — | S=4 C=7 R=16 | — | failed: exit 1: crash |" in md


def test_refuses_bad_arguments_and_says_when_there_is_no_gpu():
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "bench" / "decode_plan_sweep.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    bad = run("--ms", "8")
    assert bad.returncode == 2 and "M within 1-4" in bad.stderr
    bad = run("--rings", "12")
    assert bad.returncode == 2 and "--rings takes 8 and/or 16" in bad.stderr
    import torch

    if not torch.cuda.is_available():
        none = run("--layers", "2B.o")
        assert none.returncode != 0 and "needs a CUDA GPU" in none.stderr
