"""bench/grpc_stream.py's harness on the CPU (numbers not asserted): every message of every stream arrives
and is counted, and the server's CPU time is divided by what was sent."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from grpc_stream import measure  # noqa: E402


@pytest.mark.parametrize("k", [1, 3])
def test_every_message_arrives_and_is_counted(k):
    r = measure(k, streams=4, tokens=30)
    assert r["messages"] == 4 * (30 // k) and r["tokens"] == r["messages"] * k
    assert r["server_cpu_s"] > 0 and r["us_per_token"] == pytest.approx(r["us_per_message"] / k)
