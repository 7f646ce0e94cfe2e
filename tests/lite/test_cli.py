"""`vlmserve lite auto_awq` and `vlmserve eval ppl` end to end, through main()."""
from __future__ import annotations

import json

import pytest

from vlmserve import Engine, EngineConfig
from vlmserve.cli import main
from vlmserve.lite.datasets import load_text, load_tokenizer, tokenize
from vlmserve.perplexity import engine_perplexity


def test_auto_awq_cli_writes_a_model_and_a_summary(lite_model, tmp_path, capsys):
    src = lite_model("llama_gqa_hd128")
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    assert main(["lite", "auto_awq", str(src), "--work-dir", str(out), "--calib-samples", "6", "--calib-seqlen", "48",
                 "--batch-size", "4", "--search-scale", "--search-samples", "2", "--device", "cpu",
                 "--summary-json", str(summary)]) == 0
    printed = capsys.readouterr()
    assert "rel.error" in printed.out and f"wrote {out}" in printed.out
    assert "calibration wikitext2: 6 x 48 tokens" in printed.err
    s = json.loads(summary.read_text())
    assert len(s["layers"]) == 2 and s["peak_rss_bytes"] > 0 and s["peak_device_bytes"] is None
    assert s["group_size"] == 128 and s["search_scale"] and s["seconds_total"] > 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == 128
    # A second run replaces the model it wrote.
    assert main(["lite", "auto_awq", str(src), "--work-dir", str(out), "--calib-samples", "2", "--calib-seqlen",
                 "16", "--device", "cpu"]) == 0
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("kv", ["auto", "int8", "int4"])
def test_eval_ppl_equals_engine_perplexity(lite_model, tmp_path, capsys, kv):
    src = lite_model("llama_gqa_hd128")
    res = tmp_path / "ppl.json"
    assert main(["eval", "ppl", str(src), "--max-tokens", "700", "--window", "128", "--stride", "64",
                 "--kv-cache-dtype", kv, "--device", "cpu", "--max-batch-size", "4", "--json", str(res)]) == 0
    assert "perplexity" in capsys.readouterr().out
    got = json.loads(res.read_text())
    tokens = tokenize(load_text("wikitext2", "evaluation"), load_tokenizer(src), add_special_tokens=True)[:700]
    with Engine(src, EngineConfig(device="cpu", kv_cache_dtype=kv, max_model_len=129, num_kv_blocks=64,
                                  max_batch_size=4)) as eng:
        ref = engine_perplexity(eng, tokens, 128, 64)
    assert got["tokens"] == 700 and got["kv_cache_dtype"] == kv and got["weights"] == "dense"
    assert got["tokens_scored"] == ref.tokens_scored == 699
    assert got["perplexity"] == pytest.approx(ref.perplexity, rel=1e-9)


def test_eval_ppl_bad_input(lite_model, tmp_path, capsys):
    src = str(lite_model("llama_gqa_hd128"))
    assert main(["eval", "ppl", src, "--window", "64", "--stride", "128"]) == 2
    assert "--stride <= --window" in capsys.readouterr().err
    assert main(["eval", "ppl", src, "--dataset", str(tmp_path / "none.txt")]) == 2
    assert "neither a built-in name" in capsys.readouterr().err
    assert main(["eval", "ppl", str(tmp_path / "nope")]) == 2
    assert "vlmserve: error:" in capsys.readouterr().err
