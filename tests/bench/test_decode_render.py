"""bench/decode.py --render: one document from one run's JSON, or (--merge) from several runs on the same GPU
(the 2B and 7B matrices take a device call each)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_json(model: str, gpu: str, bandwidth: float, tok_s: float, date: str) -> dict:
    meta = {"gpu": gpu, "gpus": 1, "torch": "2.11", "date": date, "command": f"python3 bench/decode.py --models {model}",
            "new_tokens": 64, "prompt": 512, "hbm_bytes_per_s": bandwidth, "bandwidth_measured": True,
            "greedy_check": 0, "library_settings": {}}
    rows = [{"model": model, "weights": w, "kv": "int8", "batch": 1, "tp": 1, "engine": "vlmserve",
             "tok_s": tok_s * (2 if w == "w4a16" else 1), "pct_floor": 40.0} for w in ("fp16", "w4a16")]
    rows.append({"model": model, "weights": "fp16", "kv": "fp16", "batch": 1, "engine": "transformers",
                 "tok_s": tok_s / 10})
    return {"meta": meta, "rows": rows, "greedy": []}


def render(tmp_path: Path, runs: list[dict]) -> subprocess.CompletedProcess:
    paths = []
    for i, r in enumerate(runs):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(r))
    merge = [arg for p in paths[1:] for arg in ("--merge", str(p))]
    return subprocess.run([sys.executable, str(ROOT / "bench/decode.py"), "--render", str(tmp_path / "doc.md"),
                           "--out", str(paths[0]), *merge], capture_output=True, text=True, timeout=120)


def test_merged_runs_make_one_document(tmp_path):
    proc = render(tmp_path, [run_json("2b", "NVIDIA H200", 4.21e12, 900, "2026-12-06 01:00 UTC"),
                             run_json("7b", "NVIDIA H200", 4.19e12, 450, "2026-12-06 01:10 UTC")])
    assert proc.returncode == 0, proc.stderr
    doc = (tmp_path / "doc.md").read_text()
    # every row of both runs, each against its own model's transformers figure
    assert "| 2b | w4a16 | int8 | 1 | 1,800 | 40.0% | 90 | 20.00× |" in doc
    assert "| 7b | fp16 | int8 | 1 | 450 | 40.0% | 45 | 10.00× |" in doc
    assert "date 2026-12-06 01:00 UTC; 2026-12-06 01:10 UTC" in doc
    assert "--models 2b ; python3 bench/decode.py --models 7b" in doc
    assert "at 4.21 / 4.19 TB/s (measured in each run" in doc
    # the targets read both runs' rows: 7B w4a16 batch 1 is measured (with int8 KV)
    assert "7b w4a16 batch 1 ≥ 550 tok/s (measured with int8 KV): 900 tok/s — **met**" in doc


def test_single_run_renders_as_before(tmp_path):
    proc = render(tmp_path, [run_json("2b", "NVIDIA H100 80GB HBM3", 2.93e12, 500, "2026-12-06 01:00 UTC")])
    assert proc.returncode == 0, proc.stderr
    doc = (tmp_path / "doc.md").read_text()
    assert "at 2.93 TB/s (measured in this run" in doc and "7b w4a16 batch 1 ≥ 550 tok/s: **not measured**" in doc


def test_runs_on_different_gpus_are_refused(tmp_path):
    proc = render(tmp_path, [run_json("2b", "NVIDIA H200", 4.2e12, 900, "a"),
                             run_json("7b", "NVIDIA H100 80GB HBM3", 2.9e12, 450, "b")])
    assert proc.returncode != 0 and "runs on different GPUs" in proc.stderr
    assert not (tmp_path / "doc.md").exists()


def test_merge_needs_render(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench/decode.py"), "--out", str(tmp_path / "a.json"),
                           "--merge", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--merge goes with --render" in proc.stderr


def test_the_document_says_whether_the_library_had_cutlass(tmp_path):
    without = run_json("2b", "NVIDIA H100 80GB HBM3", 2.93e12, 500, "2026-12-07 07:58 UTC")
    without["meta"]["cutlass_built"] = False
    proc = render(tmp_path, [without])
    assert proc.returncode == 0, proc.stderr
    assert "- Native library built without CUTLASS's headers" in (tmp_path / "doc.md").read_text()

    with_it = run_json("7b", "NVIDIA H100 80GB HBM3", 2.93e12, 250, "2026-12-07 08:01 UTC")
    with_it["meta"]["cutlass_built"] = True
    proc = render(tmp_path, [with_it])
    assert proc.returncode == 0, proc.stderr
    assert "- Native library built with CUTLASS's headers" in (tmp_path / "doc.md").read_text()

    # merged runs of different builds say which was which; runs of one build say it once
    proc = render(tmp_path, [without, with_it])
    assert proc.returncode == 0, proc.stderr
    assert "run by run: without / with (" in (tmp_path / "doc.md").read_text()
    also_without = run_json("7b", "NVIDIA H100 80GB HBM3", 2.93e12, 250, "2026-12-07 08:01 UTC")
    also_without["meta"]["cutlass_built"] = False
    proc = render(tmp_path, [without, also_without])
    assert proc.returncode == 0, proc.stderr
    doc = (tmp_path / "doc.md").read_text()
    assert doc.count("built without CUTLASS's headers") == 1 and "run by run" not in doc


def test_a_run_that_did_not_record_its_build_says_nothing_of_it(tmp_path):
    proc = render(tmp_path, [run_json("2b", "NVIDIA H100 80GB HBM3", 2.93e12, 500, "2026-11-25 04:19 UTC")])
    assert proc.returncode == 0, proc.stderr
    assert "CUTLASS" not in (tmp_path / "doc.md").read_text()
