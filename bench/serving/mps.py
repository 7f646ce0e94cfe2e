"""NVIDIA's Multi-Process Service (MPS) around a run's two service processes (`bench/serve.py --mps`).

Two processes on one GPU each hold a CUDA context of their own, and without MPS the GPU runs one context's
kernels at a time, switching between contexts in time slices: while the vision service's tower forward runs,
the LM engine's step waits, and the other way round. On the H200 (2026-12-05, docs/benchmarks/serving) a
batched forward of 5.3 tiles took 29.7 ms in serving at concurrency 64 and 7.4 tiles 43.6 ms at 256, against
about 11 and 16 ms alone (bench/vision.py). Under MPS both processes' kernels go through one server and run side
by side on the multiprocessors.

MpsDaemon starts a control daemon of its own, with its pipe and log directories in a fresh temporary folder
(it neither finds nor disturbs any other daemon on the machine), gives the services its environment, checks
after they are up that each of them is a client of its server (a process that cannot reach the daemon may
fail over to the CPU or to a context of its own, and the run would measure that under the MPS label), and quits
it after them. Where the daemon does not answer or will not quit, it is killed through the pid file it writes
into its pipe directory (NVIDIA's MPS reference: nvidia-cuda-mps-control.pid), before that folder is removed:
a daemon whose folder is gone can no longer be reached.

    with MpsDaemon() as mps:
        with ServicesProcesses(..., env=mps.client_env) as stack:
            mps.require_clients(p.pid for p in stack.processes().values())
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable

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

    @property
    def client_env(self) -> dict[str, str | None]:
        """The clients' changes to their environment (None: removed). CUDA_VISIBLE_DEVICES goes: the server
        numbers the devices the daemon was given from 0, and NVIDIA's MPS guide has clients leave it unset."""
        return {**self.env, "CUDA_VISIBLE_DEVICES": None}

    def start(self) -> "MpsDaemon":
        self.exe = shutil.which(self.control)
        if self.exe is None:
            raise RuntimeError(f"--mps: {self.control} is not on PATH (NVIDIA's MPS control daemon comes with the "
                               f"driver's utilities)")
        # Short path: the daemon's sockets live in the pipe directory, and a socket path has ~100 bytes at most.
        self.folder = Path(tempfile.mkdtemp(prefix="vlm-mps-"))
        for sub in ("pipe", "log"):
            (self.folder / sub).mkdir()
        # Its output to a file, not a pipe: a forked daemon holding the pipe open would keep run() waiting.
        start_log = self.folder / "log" / "start.txt"
        try:
            with open(start_log, "w") as out:
                started = subprocess.run([self.exe, "-d"], env=self._environ(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, timeout=self.start_timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()
            self._cleanup()
            raise RuntimeError(f"--mps: `{self.control} -d` did not return within {self.start_timeout_s:.0f} s")
        if started.returncode != 0:
            detail = start_log.read_text(errors="replace").strip()[-500:]
            tail = self.log_tail()
            self._kill()
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

    def client_pids(self, server: int) -> list[int]:
        """Process ids of the CUDA processes connected to one of this daemon's servers."""
        return [int(word) for word in self.command(f"get_client_list {server}").split() if word.isdigit()]

    def require_server(self) -> list[int]:
        """The server pids; an error when there is none (the services did not connect through this daemon, so
        the run would measure time slices while saying MPS)."""
        pids = self.server_pids()
        if not pids:
            tail = self.log_tail()
            raise RuntimeError("--mps: no MPS server is running after the services started: they did not connect "
                               "through the daemon" + (f"\n{tail}" if tail else ""))
        return pids

    def require_clients(self, pids: Iterable[int]) -> list[int]:
        """The server pids, once every one of `pids` is a client of one of them; an error naming those that are
        not (a server may be listed while one service runs elsewhere: on the CPU, or in a context of its own)."""
        servers = self.require_server()
        clients = {c for s in servers for c in self.client_pids(s)}
        missing = sorted(set(pids) - clients)
        if missing:
            tail = self.log_tail()
            raise RuntimeError(f"--mps: processes {missing} are not clients of the MPS server(s) {servers} "
                               f"(clients: {sorted(clients)})" + (f"\n{tail}" if tail else ""))
        return servers

    def stop(self) -> None:
        """Quits the daemon (after its clients have exited) and waits until it no longer answers; kills it where
        it does not quit in time or does not take the command."""
        if self.running:
            self.running = False
            gone = False
            try:
                self.command("quit")
                deadline = time.monotonic() + self.stop_timeout_s
                while time.monotonic() < deadline:
                    try:
                        self.command("get_server_list")
                    except RuntimeError:
                        gone = True
                        break
                    time.sleep(0.2)
            except RuntimeError:
                pass  # no answer to quit: killed below if its pid is known and alive
            if not gone:
                self._kill()
        self._cleanup()

    def daemon_pid(self) -> int | None:
        """The control daemon's pid, from the file it writes into its pipe directory; None where unreadable."""
        if self.folder is None:
            return None
        try:
            return int((self.folder / "pipe" / "nvidia-cuda-mps-control.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _kill(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after grace_s, to the daemon (by its pid file), so none outlives its folder."""
        pid = self.daemon_pid()
        if pid is None or pid <= 1:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            except PermissionError:
                return  # not ours to signal
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return
                time.sleep(0.1)

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

    def _environ(self) -> dict[str, str]:  # the daemon's and the control command's
        return {**os.environ, **self.env}

    def _cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "MpsDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie of ours counts as gone: reaped where it is our child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child (a daemon forks away): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True
