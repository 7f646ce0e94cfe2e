"""bench/grpc_accept.py's harness on the CPU (numbers not asserted): every call of every burst starts, against one
server and against two sharing the port."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from grpc_accept import measure  # noqa: E402


@pytest.mark.parametrize("servers", [1, 2])
def test_every_call_of_every_burst_starts(servers):
    r = measure(servers, calls=12, channels=3, burn_ms=0.2, burners=1, bursts=2)
    assert r["calls"] == 24 and r["servers"] == servers
    assert 0 < r["headers_p50_s"] <= r["headers_p90_s"] <= r["headers_max_s"]
    assert r["headers_mean_s"] <= r["headers_max_s"]
