"""The stack under test, on free ports, until stopped: `vlmserve serve stack` (both services in one
process), or the two services as separate processes (`serve vision`, `serve lm --vision-addr`), the
layout of the compose file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc

from vlmserve.free_ports import free_ports

CLI = [sys.executable, "-c", "import sys; from vlmserve.cli import main; sys.exit(main())"]


def _stat_cpu_seconds(stat: Path, reaped_children: bool = False) -> float | None:
    """utime + stime of a /proc stat file (a process's or one thread's), with cutime + cstime (children it has
    waited for) if asked; None where unreadable (e.g. gone)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped_children else 0)
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _schedstat_cpu_seconds(schedstat: Path) -> float | None:
    """Time on a CPU of a /proc schedstat file (a thread's), counted in nanoseconds: a short level's threads
    would read 0 in the stat file's clock ticks (10 ms); None where the kernel does not keep it."""
    try:
        return int(schedstat.read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    """Live child processes of a process (every thread's /proc children list); empty where unreadable."""
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return out


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process, all its threads, and of its child processes, live (e.g. the
    vision service's image preprocessing workers) or ended (Linux /proc); None where unreadable."""
    own = _stat_cpu_seconds(Path(f"/proc/{pid}/stat"), reaped_children=True)
    if own is None:
        return None
    return own + sum(t for t in map(process_cpu_seconds, _children(pid)) if t is not None)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time of each live thread of a process (Linux /proc), keyed "main" for the main thread
    (the services' asyncio loop) and "<name>#<tid>" for the others (Python threads all carry the interpreter's
    name; grpc's own threads name themselves); empty where unreadable."""
    out: dict[str, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended between the listing and the read
        seconds = _schedstat_cpu_seconds(task / "schedstat")
        if seconds is None:
            seconds = _stat_cpu_seconds(task / "stat")
        if seconds is not None:
            out["main" if task.name == str(pid) else f"{name}#{task.name}"] = seconds
    return out


def host_cpu_seconds(stat: Path = Path("/proc/stat")) -> dict[str, float] | None:
    """The whole machine's CPU time so far (the "cpu" line of /proc/stat, all cores): "busy" (user, nice, system,
    irq, softirq), "idle" (idle, iowait) and "steal" (time a virtual machine's CPUs waited for the host: other
    tenants); None where unreadable. Differences over a level say how loaded the host was while it ran, the
    services and the clients included."""
    try:
        fields = stat.read_text().splitlines()[0].split()
        if fields[0] != "cpu":
            return None
        t = [int(x) for x in fields[1:9]] + [0] * max(0, 9 - len(fields))
    except (OSError, IndexError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = t[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "idle": (idle + iowait) / tick,
            "steal": steal / tick}


# The fields of /proc/stat's "cpu" line that host_cpu_seconds() adds into "busy".
_BUSY_FIELDS = 5


def host_load(before: dict[str, float] | None, after: dict[str, float] | None, wall_s: float) -> dict | None:
    """Cores of the machine busy and stolen over an interval of wall_s seconds, out of how many, and
    "tick_error_cores": how far busy_cores may be off from the counters alone: each core reports each busy field
    in whole clock ticks, so a difference of two reads may be short or long by up to a tick a field and core, which
    over a short level is a visible share of a core (a fully busy 2-core machine read 2.12 over a smoke level)."""
    if before is None or after is None or wall_s <= 0:
        return None
    cores = os.cpu_count()
    return {"cores": cores, "busy_cores": (after["busy"] - before["busy"]) / wall_s,
            "steal_cores": (after["steal"] - before["steal"]) / wall_s,
            "tick_error_cores": cores * _BUSY_FIELDS / (os.sysconf("SC_CLK_TCK") * wall_s)}


class StackProcess:
    """Starts the vision + LM services; `address` and the metrics URLs are valid once started."""

    def __init__(self, model: Path, flags: list[str], log_path: Path, ready_timeout_s: float = 900,
                 env: dict[str, str | None] | None = None):
        self.model, self.flags, self.log_path, self.ready_timeout_s = model, flags, log_path, ready_timeout_s
        # The services' environment: this process's, with `env`'s changes (a None value removes the variable).
        self.env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
        self.port, self.vision_port, self.metrics_port, self.vision_metrics_port = free_ports(4)
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def vision_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.vision_metrics_port}/metrics"

    @property
    def lm_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def scrape_vision(self) -> dict[str, float]:
        """The vision service's samples (summed over its processes where it has several)."""
        return self.scrape(self.vision_metrics_url)

    def start(self) -> "StackProcess":
        cmd = CLI + ["serve", "stack", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                     "--metrics-port", str(self.metrics_port), "--vision-port", str(self.vision_port),
                     "--vision-metrics-port", str(self.vision_metrics_port), *self.flags]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        self._wait_serving(self.address)
        return self

    def _wait_serving(self, address: str) -> None:
        """Returns once `address` answers SERVING; otherwise stops every process started (a service that died
        while another still starts, a timeout, or a signal's exception) and raises."""
        try:
            self._wait_serving_or_raise(address)
        except BaseException:
            self.stop()
            raise

    def _wait_serving_or_raise(self, address: str) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + self.ready_timeout_s
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise RuntimeError(f"the stack did not become SERVING within {self.ready_timeout_s:.0f} s "
                           f"(log: {self.log_path}):\n" + self.log_tail())

    def processes(self) -> dict[str, subprocess.Popen]:
        return {"stack": self.proc} if self.proc is not None else {}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time each service process has used so far, by name (empty where /proc is not readable)."""
        out = {}
        for name, proc in self.processes().items():
            t = process_cpu_seconds(proc.pid)
            if t is not None:
                out[name] = t
        return out

    def thread_cpu_seconds(self) -> dict[str, dict[str, float]]:
        """thread_cpu_seconds() of each service process, by process name."""
        return {name: thread_cpu_seconds(proc.pid) for name, proc in self.processes().items()}

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the stack exited with status {self.proc.returncode} (log: {self.log_path}):\n"
                               + self.log_tail())

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def scrape(self, url: str) -> dict[str, float]:
        """Prometheus samples by name{labels} -> value (empty when the endpoint is unreachable)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return {}
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "StackProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServicesProcesses(StackProcess):
    """The vision service and the LM service, each in its own process (vision_flags to the first, lm_flags to
    the second); the same interface as StackProcess. Stopped LM first, so it drains while vision answers.

    vision_processes > 1: that many vision services (replicas, each on ports of its own, all on the same
    GPU), the LM's --vision-addr listing them all (its client spreads the calls round-robin); their metrics are
    summed."""

    def __init__(self, model: Path, vision_flags: list[str], lm_flags: list[str], log_path: Path,
                 ready_timeout_s: float = 900, env: dict[str, str | None] | None = None, vision_processes: int = 1):
        super().__init__(model, lm_flags, log_path, ready_timeout_s, env)
        if vision_processes < 1:
            raise ValueError(f"vision_processes must be >= 1, got {vision_processes}")
        self.vision_flags = vision_flags
        more = free_ports(2 * (vision_processes - 1)) if vision_processes > 1 else []
        self.vision_ports = [self.vision_port, *more[0::2]]
        self.vision_metrics_ports = [self.vision_metrics_port, *more[1::2]]
        self.vision_procs: list[subprocess.Popen] = []
        self.vision_log_paths = [log_path.with_name(log_path.stem + "_vision" + (f"{i + 1}" if i else "")
                                                    + log_path.suffix) for i in range(vision_processes)]
        self.vision_log_path = self.vision_log_paths[0]
        self._vision_logs: list = []

    @property
    def vision_proc(self) -> subprocess.Popen | None:
        return self.vision_procs[0] if self.vision_procs else None

    def start(self) -> "ServicesProcesses":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for port, metrics_port, path in zip(self.vision_ports, self.vision_metrics_ports, self.vision_log_paths):
            log = open(path, "w")
            self._vision_logs.append(log)
            self.vision_procs.append(subprocess.Popen(
                CLI + ["serve", "vision", str(self.model), "--host", "127.0.0.1", "--port", str(port),
                       "--metrics-port", str(metrics_port), *self.vision_flags],
                stdout=log, stderr=subprocess.STDOUT, env=self.env))
        self._log = open(self.log_path, "w")
        vision_addr = ",".join(f"127.0.0.1:{p}" for p in self.vision_ports)
        self.proc = subprocess.Popen(
            CLI + ["serve", "lm", str(self.model), "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port",
                   str(self.metrics_port), "--vision-addr", vision_addr, *self.flags],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        for port in self.vision_ports:
            self._wait_serving(f"127.0.0.1:{port}")
        self._wait_serving(self.address)
        return self

    def processes(self) -> dict[str, subprocess.Popen]:
        named = [("lm", self.proc)] + [("vision" + (f"{i + 1}" if i else ""), p)
                                       for i, p in enumerate(self.vision_procs)]
        return {name: p for name, p in named if p is not None}

    def scrape_vision(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for port in self.vision_metrics_ports:
            for k, v in self.scrape(f"http://127.0.0.1:{port}/metrics").items():
                total[k] = total.get(k, 0.0) + v
        return total

    def check_alive(self) -> None:
        super().check_alive()
        for proc, path in zip(self.vision_procs, self.vision_log_paths):
            if proc.poll() is not None:
                raise RuntimeError(f"the vision service exited with status {proc.returncode} "
                                   f"(log: {path}):\n" + _tail(path))

    def vision_log_tail(self, lines: int = 20) -> str:
        return _tail(self.vision_log_path, lines)

    def stop(self) -> None:
        super().stop()
        for proc in self.vision_procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.vision_procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._vision_logs:
            log.close()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
