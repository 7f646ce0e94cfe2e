"""bench/decode.py's throughput window: only the time where every request decodes counts."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from decode import decode_window  # noqa: E402


def test_the_window_runs_from_the_last_first_token_to_the_first_last_token():
    # Request a starts at step 0, b at step 3 (its prefill came later); one token per step of 10 ms.
    a = [0.01 * i for i in range(10)]           # tokens at 0 .. 90 ms
    b = [0.01 * i for i in range(3, 13)]        # tokens at 30 .. 120 ms
    r = decode_window([a, b])
    assert r["decode_s"] == pytest.approx(0.06)  # 30 ms .. 90 ms
    assert r["window_tokens"] == 12              # 6 steps after the window opens, two requests each
    assert r["tok_s"] == pytest.approx(200.0)    # two tokens per 10 ms step


def test_no_common_window_is_an_error_not_a_number():
    with pytest.raises(RuntimeError, match="no window"):
        decode_window([[0.0, 0.01], [0.02, 0.03]])
