"""`vlmserve serve vision` flags: every one has a VLMSERVE_* twin, and the flag wins."""
from __future__ import annotations

import pytest

from vlmserve.cli import build_parser
from vlmserve.cli.serve import server_config_from_args


def test_every_flag_has_an_environment_twin(monkeypatch):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    vision = next(a for a in sub._actions if a.dest == "service").choices["vision"]
    for action in vision._actions:
        if action.option_strings and action.dest != "help":
            env = "VLMSERVE_" + action.option_strings[0].lstrip("-").replace("-", "_").upper()
            assert env in action.help, f"{action.option_strings[0]} does not name {env}"


def test_environment_sets_defaults_and_flags_win(monkeypatch, tmp_path):
    monkeypatch.setenv("VLMSERVE_VISION_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("VLMSERVE_PORT", "6001")
    monkeypatch.setenv("VLMSERVE_TRUST_REMOTE_CODE", "true")
    monkeypatch.setenv("VLMSERVE_METRICS_PORT", "-1")
    monkeypatch.setenv("VLMSERVE_MODEL", str(tmp_path))
    monkeypatch.setenv("VLMSERVE_GRPC_ACCEPTORS", "3")
    a = build_parser().parse_args(["serve", "vision", "--port", "7001"])
    assert (a.model, a.vision_max_batch_size, a.port, a.trust_remote_code) == (str(tmp_path), 3, 7001, True)
    assert server_config_from_args(a).metrics_port is None and server_config_from_args(a).acceptors == 3
    lm = build_parser().parse_args(["serve", "lm", "/ckpt", "--grpc-acceptors", "4"])
    assert server_config_from_args(lm).acceptors == 4
    b = build_parser().parse_args(["serve", "vision", "/ckpt", "--no-trust-remote-code"])
    assert b.model == "/ckpt" and b.trust_remote_code is False


def test_without_a_model_the_built_in_one_is_served(monkeypatch):
    from vlmserve.cli.serve import _resolve_model
    from vlmserve.default_model import default_vlm_checkpoint

    monkeypatch.delenv("VLMSERVE_MODEL", raising=False)
    for service in ("vision", "lm", "stack"):
        a = build_parser().parse_args(["serve", service])
        assert a.model is None
        assert _resolve_model(a) == str(default_vlm_checkpoint())


def test_the_gil_switch_interval_is_set_for_the_process(monkeypatch):
    import sys

    from vlmserve.cli.serve import DEFAULT_SWITCH_INTERVAL_MS, apply_process_settings
    from vlmserve.errors import InvalidArgumentError

    before = sys.getswitchinterval()
    try:
        a = build_parser().parse_args(["serve", "vision", "/ckpt"])
        assert a.gil_switch_interval_ms == DEFAULT_SWITCH_INTERVAL_MS
        monkeypatch.setenv("VLMSERVE_GIL_SWITCH_INTERVAL_MS", "2")
        b = build_parser().parse_args(["serve", "lm", "/ckpt"])
        apply_process_settings(b)
        assert sys.getswitchinterval() == pytest.approx(0.002)
        for bad in ("0", "-1", "1000", "nan"):
            c = build_parser().parse_args(["serve", "stack", "/ckpt", "--gil-switch-interval-ms", bad])
            with pytest.raises(InvalidArgumentError, match="gil-switch-interval-ms"):
                apply_process_settings(c)
        assert sys.getswitchinterval() == pytest.approx(0.002)  # a refused value changes nothing
    finally:
        sys.setswitchinterval(before)
