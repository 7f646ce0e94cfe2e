"""The stack under test: `vlmserve serve stack` in its own process, on free ports, until stopped."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StackProcess:
    """Starts the vision + LM services; `address` and the metrics URLs are valid once started."""

    def __init__(self, model: Path, flags: list[str], log_path: Path, ready_timeout_s: float = 900):
        self.model, self.flags, self.log_path, self.ready_timeout_s = model, flags, log_path, ready_timeout_s
        self.port, self.vision_port = free_port(), free_port()
        self.metrics_port, self.vision_metrics_port = free_port(), free_port()
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

    def start(self) -> "StackProcess":
        cmd = [sys.executable, "-c", "import sys; from vlmserve.cli import main; sys.exit(main())", "serve", "stack",
               str(self.model), "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port",
               str(self.metrics_port), "--vision-port", str(self.vision_port), "--vision-metrics-port",
               str(self.vision_metrics_port), *self.flags]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))
        self._wait_serving()
        return self

    def _wait_serving(self) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + self.ready_timeout_s
        with grpc.insecure_channel(self.address) as channel:
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
        self.stop()
        raise RuntimeError(f"the stack did not become SERVING within {self.ready_timeout_s:.0f} s "
                           f"(log: {self.log_path})")

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
