"""bench/front_link.py: every stream gets all its tokens both ways, and the delays it reports are ordered and never
negative."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_run_counts_every_token_and_times_them(tmp_path):
    out = tmp_path / "link.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "front_link.py"), "--rows", "1,3", "--tokens", "6",
                          "--step-ms", "2", "--stream-interval", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["rows"] for r in rows] == [1, 3]
    for r in rows:
        for way in ("local", "remote"):
            got = r[way]
            assert got["tokens"] == got["received"] == r["rows"] * 6
            assert 0 <= got["delay_ms_p50"] <= got["delay_ms_p99"] < 1000
    assert "through the link" in run.stdout
