"""NVIDIA's Multi-Process Service (MPS) around a run's two service processes (`bench/serve.py --mps`).

Two processes on one GPU each hold a CUDA context of their own, and without MPS the GPU runs one context's
kernels at a time, switching between contexts in time slices: while the vision service's tower forward runs,
the LM engine's step waits, and the other way round. On the H200 (2026-12-05, docs/benchmarks/serving) a
batched forward of 5.3 tiles took 29.7 ms in serving at concurrency 64 and 7.4 tiles 43.6 ms at 256, against
about 11 and 16 ms alone (bench/vision.py). Under MPS both processes' kernels go through one server and run side
by side on the multiprocessors.

MpsDaemon starts a control daemon of its own, with its pipe and log directories in a fresh temporary folder
(it neither finds nor disturbs any other daemon on the machine), gives the services its environment, checks
after they are up that they did connect through it (a server runs), and quits it after them.

    with MpsDaemon() as mps:
        with ServicesProcesses(..., env=mps.env) as stack:
            mps.require_server()
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"


class MpsDaemon:
    def __init__(self, control: str = CONTROL, start_timeout_s: float = 30.0, stop_timeout_s: float = 30.0):
        self.control = control
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.folder: Path | None = None
        self.exe: str | None = None
        self.running = False

    @property
    def env(self) -> dict[str, str]:
        """The variables through which a CUDA process (and the control command) finds this daemon."""
        if self.folder is None:
            raise RuntimeError("the MPS daemon has not been started")
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.folder / "pipe"),
                "CUDA_MPS_LOG_DIRECTORY": str(self.folder / "log")}

    def start(self) -> "MpsDaemon":
        self.exe = shutil.which(self.control)
        if self.exe is None:
            raise RuntimeError(f"--mps: {self.control} is not on PATH (NVIDIA's MPS control daemon comes with the "
                               f"driver's utilities)")
        # Short path: the daemon's sockets live in the pipe directory, and a socket path has ~100 bytes at most.
        self.folder = Path(tempfile.mkdtemp(prefix="vlm-mps-"))
        for sub in ("pipe", "log"):
            (self.folder / sub).mkdir()
        try:
            started = subprocess.run([self.exe, "-d"], env=self._environ(), capture_output=True, text=True,
                                     timeout=self.start_timeout_s)
        except subprocess.TimeoutExpired:
            self._cleanup()
            raise RuntimeError(f"--mps: `{self.control} -d` did not return within {self.start_timeout_s:.0f} s")
        if started.returncode != 0:
            detail = (started.stderr or started.stdout).strip()[-500:]
            tail = self.log_tail()
            self._cleanup()
            raise RuntimeError(f"--mps: `{self.control} -d` exited with status {started.returncode}: {detail}"
                               + (f"\n{tail}" if tail else ""))
        self.running = True
        deadline = time.monotonic() + self.start_timeout_s
        while True:  # the daemon forks and answers once its control pipe is set up
            try:
                self.command("get_server_list")
                return self
            except RuntimeError as e:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"--mps: the control daemon did not answer within "
                                       f"{self.start_timeout_s:.0f} s: {e}") from None
                time.sleep(0.2)

    def command(self, text: str) -> str:
        """Sends one command to the daemon (as `echo TEXT | nvidia-cuda-mps-control`) and returns its answer."""
        if self.exe is None:
            raise RuntimeError("the MPS daemon has not been started")
        try:
            done = subprocess.run([self.exe], input=text + "\n", env=self._environ(), capture_output=True, text=True,
                                  timeout=15)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`{text}` to the MPS control daemon got no answer within 15 s") from None
        if done.returncode != 0:
            raise RuntimeError(f"`{text}` to the MPS control daemon failed with status {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-300:]}")
        return done.stdout

    def server_pids(self) -> list[int]:
        """Process ids of the MPS servers running (one, once a client has connected)."""
        return [int(word) for word in self.command("get_server_list").split() if word.isdigit()]

    def require_server(self) -> list[int]:
        """The server pids; an error when there is none (the services did not connect through this daemon, so
        the run would measure time slices while saying MPS)."""
        pids = self.server_pids()
        if not pids:
            tail = self.log_tail()
            raise RuntimeError("--mps: no MPS server is running after the services started: they did not connect "
                               "through the daemon" + (f"\n{tail}" if tail else ""))
        return pids

    def stop(self) -> None:
        """Quits the daemon (after its clients have exited) and waits until it no longer answers."""
        if self.running:
            self.running = False
            try:
                self.command("quit")
                deadline = time.monotonic() + self.stop_timeout_s
                while time.monotonic() < deadline:
                    try:
                        self.command("get_server_list")
                    except RuntimeError:
                        break  # gone
                    time.sleep(0.2)
            except RuntimeError:
                pass  # it no longer answers: already gone
        self._cleanup()

    def log_tail(self, lines: int = 10) -> str:
        """The last lines of the daemon's logs (control.log, server.log), for error messages."""
        if self.folder is None:
            return ""
        out = []
        for name in ("control.log", "server.log"):
            path = self.folder / "log" / name
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out += [f"{name}:", *text]
        return "\n".join(out)

    def _environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "MpsDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
