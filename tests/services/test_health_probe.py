"""The container health probe speaks the gRPC health protocol."""
from __future__ import annotations

from conftest import ServerThread
from vlmserve.health_probe import main


def test_probe_reports_not_serving_then_serving(vlm_dir, capsys):
    s = ServerThread(vlm_dir("llava"), load=False)
    try:
        assert main([s.address]) == 1
        s.load()
        assert main([s.address]) == 0
        assert main([s.address, "--service", "vlm.v1.VisionService"]) == 0
    finally:
        s.stop()
    assert main([s.address, "--timeout", "0.5"]) == 1  # nothing listening
