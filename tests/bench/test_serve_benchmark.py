"""The serving benchmark's harness on the CPU (numbers not asserted): a smoke run produces every
report file with no failed request, and a run whose requests fail exits non-zero and says so."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/serve.py"), "--smoke", "--out-dir", str(out),
                           "--work", str(tmp_path / "work"), *extra], capture_output=True, text=True, timeout=900,
                          env=env)
    return proc, out


# The second run samples (the stack's requests and the transformers peer alike); the first is greedy.
SAMPLED = ("--temperature", "0.8", "--top-p", "0.9", "--top-k", "40")


@pytest.mark.parametrize("model,image_format,sampling", [("internvl-2b", "jpeg", ()), ("llava-7b", "png", SAMPLED)])
def test_smoke_run_writes_json_markdown_and_plots(tmp_path, model, image_format, sampling):
    # A native library setting in the environment (one the CPU backend does not read) is named in the report.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLM_")}
    proc, out = run(tmp_path, "--model-name", model, "--image-format", image_format, *sampling,
                    env=dict(env, VLM_W4A16_WGMMA="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stem = model.split("-")[0] + "-tiny"
    r = json.loads((out / f"{stem}.json").read_text())
    assert r["meta"]["image_format"] == image_format and r["meta"]["image_bytes"] > 0
    assert r["meta"]["library_settings"] == {"VLM_W4A16_WGMMA": "0"}
    assert [v["name"] for v in r["variants"]] == ["fp16 vision-batch 4", "w4a16 vision-batch 4"]
    for v in r["variants"]:
        assert [lv["concurrency"] for lv in v["levels"]] == [1, 2]
        for lv in v["levels"]:
            assert lv["requests"] == 4 and lv["failed"] == 0 and lv["short_outputs"] == 0
            assert lv["out_tok_s"] > 0 and lv["ttft_p50_s"] > 0 and lv["itl_p50_s"] is not None
            assert lv["vision_batch_mean"] >= 1 and lv["mean_service_breakdown_s"]["vision"] > 0
            assert lv["vision_preprocess_on_gpu"] == 0  # the image processor ran on the host (the default)
            # the vision service's own stages fit inside its Encode call
            assert 0 < lv["vision_preprocess_mean_s"] + lv["vision_batched_encode_mean_s"] <= lv["vision_encode_mean_s"]
            # 8 tokens per request, one per decode step: some steps, each generating at least one token
            assert lv["engine_steps_per_s"] > 0 and lv["generated_tokens_per_step"] >= 1
            # the client waits at least as long as the service works on a request, and sees its first token later
            assert lv["client_e2e_mean_s"] >= lv["mean_service_breakdown_s"]["total"] > 0
            assert lv["client_ttft_mean_s"] >= lv["service_ttft_mean_s"] > 0
            # the service's headers come before its first token, and the call reaches its handler before its
            # headers leave (the handler's arrival is on the wall clock, the headers' on a monotonic one: 1 ms slack)
            assert 0 < lv["client_headers_mean_s"] <= lv["client_ttft_mean_s"]
            assert -1e-3 <= lv["client_to_handler_mean_s"] <= lv["client_headers_mean_s"] + 1e-3
            # CPU time of the one service process and of the client threads over the level
            assert set(lv["service_cpu_cores"]) == {"stack"} and lv["service_cpu_cores"]["stack"] > 0
            assert lv["client_cpu_cores"] > 0 and lv["client_processes"] == 1
            # the whole host's load over the level (how /proc/stat accounts differs between kernels and
            # sandboxes, so only its range is asserted, with the counters' whole ticks on top; over the level's
            # timed part alone instead of the span its counters bracket, a fully busy 2-core machine read 2.1-2.2)
            host = lv["host_cpu"]
            assert host["cores"] == os.cpu_count()
            assert 0 < host["busy_cores"] <= host["cores"] * 1.05 + host["tick_error_cores"]
            assert 0 <= host["steal_cores"] <= host["cores"] + host["tick_error_cores"]
    assert [p["batch"] for p in r["peer"]] == [1, 2] and all(p["out_tok_s"] > 0 for p in r["peer"])
    md = (out / f"{stem}.md").read_text()
    assert f" of {os.cpu_count()} (steal " in md
    assert "Native library settings in the environment: `VLM_W4A16_WGMMA=0`" in md
    assert "0 failed request(s)" in md and "× transformers" in md and f"sent as {image_format.upper()}" in md
    assert "Image processor: on the host." in md
    if sampling:
        assert r["meta"]["sampling"] == {"temperature": 0.8, "top_k": 40, "top_p": 0.9}
        assert "(EOS ignored), sampled at temperature 0.8, top-k 40, top-p 0.9." in md
    else:
        assert r["meta"]["sampling"] == {} and "(EOS ignored), greedy." in md
    from vlmserve.cli.serve import DEFAULT_SWITCH_INTERVAL_MS as default_switch

    assert f"GIL switch interval: stack {default_switch:g} ms." in md
    for png in (f"{stem}_throughput.png", f"{stem}_ttft.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensor_parallel_runs_beside_the_unsplit_stack(tmp_path):
    # tp=2 on the CPU: the engine's ranks are threads, the vision service runs two encoder copies.
    # One stream per client process: concurrency 2 is driven by two processes (the path of large loads).
    proc, out = run(tmp_path, "--no-peer", "--tp", "1,2", "--streams-per-process", "1", "--streams-per-connection", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "internvl-tiny.json").read_text())
    assert r["meta"]["streams_per_connection"] == 1
    assert "one HTTP/2 connection per 1 streams" in (out / "internvl-tiny.md").read_text()
    assert [v["name"] for v in r["variants"]] == ["fp16 vision-batch 4", "fp16 vision-batch 4 tp 2",
                                                  "w4a16 vision-batch 4", "w4a16 vision-batch 4 tp 2"]
    assert all("--tp" in v["flags"] for v in r["variants"])
    assert all(lv["failed"] == 0 and lv["out_tok_s"] > 0 for v in r["variants"] for lv in v["levels"])


def test_services_layout_runs_two_processes(tmp_path):
    # The full benchmark's default layout: the vision and LM services as processes of their own.
    proc, out = run(tmp_path, "--no-peer", "--layout", "services", "--streams-per-process", "1",
                    "--py-spy-after", "0", "--lm-flag=--gil-switch-interval-ms=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "internvl-tiny.json").read_text())
    assert all(lv["failed"] == 0 and lv["out_tok_s"] > 0 and lv["vision_batch_mean"] >= 1
               for v in r["variants"] for lv in v["levels"])
    assert all(set(v["flags"]) == {"vision", "lm"} for v in r["variants"])
    # each service process's CPU time, and the client processes' (one per stream here)
    assert all(set(lv["service_cpu_cores"]) == {"lm", "vision"} and min(lv["service_cpu_cores"].values()) > 0
               and lv["client_cpu_cores"] > 0 and lv["client_processes"] == lv["concurrency"]
               for v in r["variants"] for lv in v["levels"])
    # the busiest threads of each service process (the LM's event loop runs in its main thread)
    assert all(set(lv["service_thread_cores"]) == {"lm", "vision"} and "main" in lv["service_thread_cores"]["lm"]
               and min(c for t in lv["service_thread_cores"].values() for c in t.values()) > 0
               for v in r["variants"] for lv in v["levels"])
    md = (out / "internvl-tiny.md").read_text()
    assert "Services, in processes of their own" in md and "Busiest threads of the service processes" in md
    from vlmserve.cli.serve import DEFAULT_SWITCH_INTERVAL_MS as default_switch

    assert f"GIL switch interval: vision {default_switch:g} ms, lm 2 ms." in md
    # a py-spy dump of each process per level, or why there is none (py-spy is not installed here)
    for lv in r["variants"][0]["levels"]:
        for proc_name in ("lm", "vision"):
            dumps = list((out / "logs").glob(f"*_c{lv['concurrency']}_{proc_name}.pyspy.txt"))
            assert dumps and all(d.read_text().strip() for d in dumps)


def test_front_and_vision_processes(tmp_path):
    # The LM service's port served by two processes, two vision services: every process's CPU counted, and the
    # service's own figures (from /metrics, where the front's share arrives in snapshots) there for every level.
    proc, out = run(tmp_path, "--no-peer", "--layout", "services", "--vision-processes", "2",
                    "--lm-flag=--front-processes=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    variants = json.loads((out / "internvl-tiny.json").read_text())["variants"]
    assert variants and all(set(v["flags"]) == {"vision (2 processes)", "lm"} for v in variants)
    for lv in (lv for v in variants for lv in v["levels"]):
        assert lv["failed"] == 0 and lv["out_tok_s"] > 0
        assert set(lv["service_cpu_cores"]) == {"lm", "vision", "vision2"}
        assert lv["generated_tokens_per_step"] > 0 and lv["service_ttft_mean_s"] > 0
        assert lv["vision_encode_mean_s"] > 0
        # the calls each LM process finished (the front's arrive in snapshots, so the last may be missing)
        assert set(lv["lm_calls_by_process"]) == {"0", "1"}
        assert lv["requests"] - lv["concurrency"] <= sum(lv["lm_calls_by_process"].values()) <= lv["requests"]
    md = (out / "internvl-tiny.md").read_text()
    assert "vision (2 processes)" in md and "Calls by LM process" in md
    shares = md.split("Calls by LM process")[1].split("\n\n")[1].splitlines()
    assert [line.split(":")[0] for line in shares[:2]] == ["- c=1", "- c=2"]
    for line in shares[:2]:  # "- c=1: 0: 3, 1: 5": each process and its count
        counts = dict(pair.split(": ") for pair in line.split(": ", 1)[1].split(", "))
        assert set(counts) == {"0", "1"} and all(n.isdigit() for n in counts.values())


def test_vision_processes_need_the_services_layout(tmp_path):
    proc, _ = run(tmp_path, "--layout", "stack", "--vision-processes", "2")
    assert proc.returncode == 2 and "--vision-processes applies to --layout services only" in proc.stderr


def test_a_connection_needs_a_stream(tmp_path):
    proc, _ = run(tmp_path, "--streams-per-connection", "0")
    assert proc.returncode == 2
    assert "--streams-per-connection and --streams-per-process must be at least 1" in proc.stderr


def test_stack_flag_needs_the_stack_layout(tmp_path):
    proc, _ = run(tmp_path, "--layout", "services", "--stack-flag=--max-model-len")
    assert proc.returncode == 2 and "--stack-flag applies to --layout stack only" in proc.stderr


def test_failed_requests_fail_the_run_and_are_reported(tmp_path):
    # A context shorter than the image's tokens: the LM service refuses every request.
    proc, out = run(tmp_path, "--no-peer", "--stack-flag=--max-model-len", "--stack-flag=16", "--streams-per-process", "1")
    assert proc.returncode == 1
    assert "request(s) failed" in proc.stderr
    r = json.loads((out / "internvl-tiny.json").read_text())
    levels = [lv for v in r["variants"] for lv in v["levels"]]
    assert levels and all(lv["failed"] == lv["requests"] for lv in levels)
    assert all(e.startswith("OUT_OF_RANGE") for lv in levels for e in lv["errors"])
    assert "failed request(s) in this run" in (out / "internvl-tiny.md").read_text()


def test_py_spy_record_says_why_it_has_no_profile(tmp_path, monkeypatch):
    # py-spy missing from PATH: each process gets a file saying so, where the collapsed stacks would be.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from serve import py_spy_dumps

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])

    class Stack:
        def processes(self):
            return {"lm": child}

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    try:
        py_spy_dumps(Stack(), tmp_path / "run_c4", record_s=2)
    finally:
        child.kill()
        child.wait()
    assert not (tmp_path / "run_c4_lm.pyspy.folded").exists()
    assert "py-spy did not run" in (tmp_path / "run_c4_lm.pyspy.txt").read_text()
