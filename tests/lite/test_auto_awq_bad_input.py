"""Bad input to `vlmserve lite auto_awq` is refused with a clear message and exit
code 2, before any weight is loaded."""
from __future__ import annotations

import json
import os

import pytest

from conftest import small_options
from vlmserve.awq_checkpoint import write_awq_checkpoint
from vlmserve.awq_format import quantize_rtn
from vlmserve.cli import main

SMALL = ["--calib-samples", "4", "--calib-seqlen", "32"]


@pytest.fixture(autouse=True)
def no_long_work(monkeypatch):
    """Any of these cases reaching the weights is a failure."""
    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr("vlmserve.lite.auto_awq.load_decoder", refuse)


def _cli(capsys, *argv) -> str:
    assert main(["lite", "auto_awq", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars of fixtures
    assert err.startswith("vlmserve: error: ")
    return err


def test_missing_model_directory(capsys, tmp_path):
    err = _cli(capsys, str(tmp_path / "nope"), "--work-dir", str(tmp_path / "out"), *SMALL)
    assert "does not exist" in err


def test_unsupported_architecture(capsys, tmp_path, lite_model):
    d = tmp_path / "gpt2"
    d.mkdir()
    for f in lite_model("llama_mqa").iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    err = _cli(capsys, str(d), "--work-dir", str(tmp_path / "out"), *SMALL)
    assert "model_type 'gpt2' is not supported" in err


def test_already_quantized(capsys, tmp_path, lite_model):
    awq = write_awq_checkpoint(lite_model("llama_mqa"), tmp_path / "awq", 64, lambda k, w: quantize_rtn(w, 64))
    err = _cli(capsys, str(awq), "--work-dir", str(tmp_path / "out"), *SMALL)
    assert "already quantized (awq, 4-bit)" in err


def test_group_size_that_does_not_divide_k(capsys, tmp_path, lite_model):
    d = lite_model("llama_mqa", intermediate_size=320)
    err = _cli(capsys, str(d), "--work-dir", str(tmp_path / "out"), "--w-group-size", "128", *SMALL)
    assert "--w-group-size 128 does not divide" in err and "intermediate_size (down_proj input) = 320" in err
    assert "group sizes that fit: [32, 64]" in err


def test_unsupported_group_size_and_bits(capsys, tmp_path, lite_model):
    d = str(lite_model("llama_mqa"))
    assert "the engine takes (32, 64, 128)" in _cli(capsys, d, "--work-dir", str(tmp_path / "o"), "--w-group-size", "96")
    assert "only 4-bit" in _cli(capsys, d, "--work-dir", str(tmp_path / "o"), "--w-bits", "8")


@pytest.mark.parametrize("content,msg", [("", "is empty"), ("\n  \n", "is empty"),
                                         ("The lobster.", "too short")])
def test_empty_or_too_short_calibration_file(capsys, tmp_path, lite_model, content, msg):
    f = tmp_path / "cal.txt"
    f.write_text(content)
    err = _cli(capsys, str(lite_model("llama_mqa")), "--work-dir", str(tmp_path / "out"),
               "--calib-dataset", str(f), *SMALL)
    assert msg in err


def test_missing_calibration_file(capsys, tmp_path, lite_model):
    err = _cli(capsys, str(lite_model("llama_mqa")), "--work-dir", str(tmp_path / "out"),
               "--calib-dataset", str(tmp_path / "none.txt"), *SMALL)
    assert "neither a built-in name" in err


def test_unwritable_work_dir(capsys, tmp_path, lite_model):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    err = _cli(capsys, str(lite_model("llama_mqa")), "--work-dir", str(blocker / "out"), *SMALL)
    assert "is not writable" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only directories")
def test_read_only_work_dir_parent(capsys, tmp_path, lite_model):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    err = _cli(capsys, str(lite_model("llama_mqa")), "--work-dir", str(ro / "out"), *SMALL)
    assert "is not writable" in err


def test_work_dir_that_holds_something_else(capsys, tmp_path, lite_model):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    err = _cli(capsys, str(lite_model("llama_mqa")), "--work-dir", str(other), *SMALL)
    assert "not empty and holds no model" in err
    assert (other / "cat.jpg").is_file()


def test_no_cuda_device(capsys, tmp_path, lite_model, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    err = _cli(capsys, str(lite_model("llama_mqa")), "--work-dir", str(tmp_path / "out"), "--device", "cuda", *SMALL)
    assert "sees no CUDA device" in err


def test_options_are_validated():
    from vlmserve.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="--batch-size must be a positive integer"):
        small_options(batch_size=0)
