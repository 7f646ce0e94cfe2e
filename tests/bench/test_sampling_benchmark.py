"""bench/sampling.py's harness at toy size on the CPU (numbers not asserted): every kind of request runs at every
batch size and the report records them with the regime of the draws."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sampling_benchmark_reports_every_kind_and_batch(tmp_path):
    out = tmp_path / "sampling.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sampling.py"), "--vocab", "512", "--batches", "1,3",
                           "--new-tokens", "4", "--kinds", "greedy,top_p,top_k", "--work", str(tmp_path / "work"),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["kind"], r["batch"]) for r in report["rows"]] == [
        (k, b) for k in ("greedy", "top_p", "top_k") for b in (1, 3)]
    assert all(r["out_tok_s"] > 0 for r in report["rows"])
    assert report["vocab"] == 512 and report["device"] == "cpu" and report["distribution_at_t0.7"]["nucleus_0.9_tokens"] >= 1
    assert report["prompt_scoring"]["prompt_tokens"] == 256 and report["prompt_scoring"]["seconds"] > 0


def test_bad_arguments_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sampling.py"), "--kinds", "greedy,nucleus",
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown kinds ['nucleus']" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sampling.py"), "--prompt-tokens", "4096",
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--prompt-tokens must be in [0, 1024)" in proc.stderr
