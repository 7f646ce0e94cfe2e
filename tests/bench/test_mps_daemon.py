"""bench/serve.py --mps: the harness's own MPS control daemon, against a stand-in for nvidia-cuda-mps-control
that keeps the real one's protocol (`-d` forks a daemon; without arguments, one command on stdin; a failing
status when no daemon answers). The stand-in reports a server once a file says a client connected, so the
check that the services really went through MPS can be seen to pass and to fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from serving.mps import MpsDaemon  # noqa: E402

STAND_IN = r'''#!PYTHON
import os, pathlib, subprocess, sys, time
pipe = pathlib.Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
log = pathlib.Path(os.environ["CUDA_MPS_LOG_DIRECTORY"])
mode = os.environ.get("STAND_IN_MODE", "ok")
if sys.argv[1:] == ["-d"]:
    if mode == "refuse":
        print("An instance of this daemon is already running", file=sys.stderr)
        sys.exit(1)
    subprocess.Popen([sys.executable, __file__, "--serve"], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sys.exit(0)
if sys.argv[1:] == ["--serve"]:
    (log / "control.log").write_text("Starting control daemon\n")
    if mode == "mute":
        time.sleep(30)
        sys.exit(0)
    time.sleep(0.3)  # answers only a while after `-d` returned, as a forking daemon may
    (pipe / "control").write_text(str(os.getpid()))
    while not (pipe / "quit").exists():
        time.sleep(0.05)
    (pipe / "control").unlink()
    sys.exit(0)
if not (pipe / "control").exists():
    print("Cannot find MPS control daemon process", file=sys.stderr)
    sys.exit(1)
command = sys.stdin.read().strip()
if command == "get_server_list":
    if (pipe / "client").exists():
        print(4242)
elif command == "quit":
    (pipe / "quit").touch()
else:
    print("unknown command", file=sys.stderr)
    sys.exit(1)
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-cuda-mps-control"
    exe.write_text(STAND_IN.replace("PYTHON", sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the daemon's folder lands here, where the test can look
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp_path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_daemon_starts_answers_requires_a_server_and_quits(stand_in):
    with MpsDaemon() as daemon:
        env = daemon.env
        pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
        assert pipe.is_dir() and Path(env["CUDA_MPS_LOG_DIRECTORY"]).is_dir() and pipe.parent.parent == stand_in
        pid = int((pipe / "control").read_text())
        assert _alive(pid)
        # No client yet: a run would measure time slices while claiming MPS.
        with pytest.raises(RuntimeError, match="did not connect through the daemon") as e:
            daemon.require_server()
        assert "control.log" in str(e.value)  # the daemon's log tail comes with it
        (pipe / "client").touch()
        assert daemon.require_server() == [4242]
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)  # quit, and waited for
    assert not list(stand_in.glob("vlm-mps-*"))  # its folder removed


def test_missing_control_command_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="nvidia-cuda-mps-control is not on PATH"):
        MpsDaemon().start()


def test_refused_start_says_why_and_leaves_nothing(stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_MODE", "refuse")
    with pytest.raises(RuntimeError, match="exited with status 1: An instance of this daemon is already running"):
        MpsDaemon().start()
    assert not list(stand_in.glob("vlm-mps-*"))


def test_daemon_that_never_answers_times_out(stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_MODE", "mute")
    with pytest.raises(RuntimeError, match="did not answer within 1 s"):
        MpsDaemon(start_timeout_s=1, stop_timeout_s=1).start()
    assert not list(stand_in.glob("vlm-mps-*"))


def test_mps_needs_the_services_layout(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench/serve.py"), "--smoke", "--mps", "--out-dir",
                           str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--mps applies to --layout services only" in proc.stderr


def test_services_that_bypass_mps_abort_the_run(stand_in, tmp_path):
    # CPU services never connect to the (stand-in) daemon: the run stops at once and says why, rather than
    # reporting numbers under the MPS label; the daemon is gone afterwards.
    env = {**os.environ}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/serve.py"), "--smoke", "--layout", "services", "--mps",
                           "--no-peer", "--out-dir", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "ABORTED: --mps: no MPS server is running after the services started" in proc.stderr
    r = json.loads((out / "internvl-tiny.json").read_text())
    assert "did not connect through the daemon" in r["aborted"] and not r["variants"]
    assert "**Run aborted:**" in (out / "internvl-tiny.md").read_text()
    assert not list(stand_in.glob("vlm-mps-*"))
