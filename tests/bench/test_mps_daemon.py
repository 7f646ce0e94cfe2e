"""bench/serve.py --mps: the harness's own MPS control daemon, against a stand-in for nvidia-cuda-mps-control
that keeps the real one's protocol (`-d` forks a daemon that writes its pid to nvidia-cuda-mps-control.pid in
the pipe directory; without arguments, one command on stdin; a failing status when no daemon answers). The
stand-in reports a server once a file says a client connected, and that server's clients from another file, so
the check that the services really went through MPS can be seen to pass and to fail."""
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

from serving.mps import MpsDaemon, _alive  # noqa: E402  (_alive: a zombie counts as gone)

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
    (pipe / "nvidia-cuda-mps-control.pid").write_text(f"{os.getpid()}\n")
    (log / "control.log").write_text("Starting control daemon\n")
    if mode == "mute":
        time.sleep(60)
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
elif command == "get_client_list 4242":
    if (pipe / "clients").exists():
        print((pipe / "clients").read_text().strip())
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
        # A server runs, but the services must be its clients, both of them.
        (pipe / "clients").write_text("101\n")
        with pytest.raises(RuntimeError, match=r"processes \[202\] are not clients of the MPS server\(s\) \[4242\]"):
            daemon.require_clients([101, 202])
        (pipe / "clients").write_text("101\n202\n")
        assert daemon.require_clients([101, 202]) == [4242]
        assert daemon.daemon_pid() == pid
        assert daemon.client_env["CUDA_VISIBLE_DEVICES"] is None  # clients leave it unset (NVIDIA's MPS guide)
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


def test_daemon_that_never_answers_times_out_and_is_killed(stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_MODE", "mute")
    daemon = MpsDaemon(start_timeout_s=1, stop_timeout_s=1)
    pids = []
    real_kill = daemon._kill

    def kill_and_note():
        pids.append(daemon.daemon_pid())
        real_kill()

    daemon._kill = kill_and_note
    with pytest.raises(RuntimeError, match="did not answer within 1 s"):
        daemon.start()
    assert not list(stand_in.glob("vlm-mps-*"))
    assert pids and pids[0] is not None and not _alive(pids[0])  # not left running without its folder


def test_mps_needs_the_services_layout(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench/serve.py"), "--smoke", "--mps", "--out-dir",
                           str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--mps applies to --layout services only" in proc.stderr


def test_mps_refuses_the_cpu_engine(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench/serve.py"), "--layout", "services", "--mps",
                           "--engine-device", "cpu", "--out-dir", str(tmp_path / "out"), "--work", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--mps shares a GPU" in proc.stderr


def test_services_that_cannot_use_the_gpu_abort_the_run(stand_in, tmp_path):
    # Under --mps both services are told to use CUDA (no silent fall-back to the CPU under the MPS label); here,
    # without a GPU, they cannot start: the run stops, says why with the service's log, stops what it started,
    # and leaves no daemon.
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/serve.py"), "--smoke", "--layout", "services", "--mps",
                           "--no-peer", "--out-dir", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    import re

    assert re.search(r"ABORTED: the (stack|vision service) exited with status \d+ \(log: [^)]*\):\n.*(CUDA|cuda)",
                     proc.stderr), proc.stderr[-3000:]  # the reason, from the service's own log
    r = json.loads((out / "internvl-tiny.json").read_text())
    assert "exited with status" in r["aborted"] and not r["variants"]
    assert "**Run aborted:**" in (out / "internvl-tiny.md").read_text()
    assert not list(stand_in.glob("vlm-mps-*"))


def test_a_terminated_run_stops_its_services_and_daemon(stand_in, tmp_path):
    # A step's time limit sends SIGTERM: the run ends like an error (reason written) and stops what it started.
    import signal

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench/serve.py"), "--smoke", "--layout", "services",
                             "--no-peer", "--out-dir", str(out), "--work", str(tmp_path / "work")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    log_dir = out / "logs"
    while time.monotonic() < deadline and not list(log_dir.glob("*_vision.log")):  # services starting
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "ABORTED: terminated by signal 15" in err
    r = json.loads((out / "internvl-tiny.json").read_text())
    assert r["aborted"].startswith("terminated by signal 15")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out / "logs") not in ps and "internvl-tiny" not in ps  # no service left behind
