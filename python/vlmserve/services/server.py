"""What every vlmserve gRPC server has, whatever it serves: the grpc.aio server
with message-size and keepalive options, optional TLS, the interceptors, the
standard health service (NOT_SERVING until the owner says it is ready), server
reflection, the Prometheus endpoint (with the event loop's lag), and a graceful
stop on SIGTERM/SIGINT (health goes NOT_SERVING, new calls are refused, calls in
flight get shutdown_grace_s to finish).

Acceptors: grpc.aio starts a server's new calls one at a time, each through
about five iterations of the event loop (grpc 1.85: a request task starts, its
completion arrives, the task ends, asyncio.wait wakes, the next task is made;
bench/grpc_accept.py). A loop busy with many streams (1.6 ms iterations in the LM
service at concurrency 256) so starts at most ~125 calls a second, and a burst
of calls waits for its headers in a queue. With acceptors > 1, that many grpc.aio
servers with the same handlers, interceptors and health state listen on the port
(SO_REUSEPORT: the kernel spreads the connections over them), each starting
calls in a chain of its own on the same loop. The port is first checked free
without SO_REUSEPORT, so a second process cannot silently share it."""
from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from vlmserve.errors import InvalidArgumentError
from vlmserve.services.interceptors import BearerAuthInterceptor, ErrorStatusInterceptor, ObservabilityInterceptor
from vlmserve.services.loop_lag import LoopLagMonitor
from vlmserve.services.metrics import RpcMetrics, serve_http

log = logging.getLogger("vlmserve.server")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidArgumentError(message)


@dataclass
class ServerConfig:
    """port 0 binds an ephemeral port; metrics_port None turns the endpoint off; acceptors: grpc.aio servers
    sharing the port, each starting new calls on its own (see the module doc)."""

    host: str = "0.0.0.0"
    port: int = 50052
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = 9092
    tls_cert: str | None = None
    tls_key: str | None = None
    bearer_token: str | None = None
    max_message_bytes: int = 64 * 1024 * 1024
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    shutdown_grace_s: float = 30.0
    acceptors: int = 1

    def __post_init__(self) -> None:
        _require(isinstance(self.port, int) and 0 <= self.port < 65536,
                 f"port must be in [0, 65535], got {self.port!r}")
        _require(self.metrics_port is None or (isinstance(self.metrics_port, int) and 0 <= self.metrics_port < 65536),
                 f"metrics_port must be in [0, 65535], got {self.metrics_port!r}")
        _require((self.tls_cert is None) == (self.tls_key is None), "TLS needs both a certificate and a key")
        for path in (self.tls_cert, self.tls_key):
            _require(path is None or Path(path).is_file(), f"TLS file {path} does not exist")
        _require(self.bearer_token is None or len(self.bearer_token) > 0, "the bearer token must not be empty")
        _require(isinstance(self.max_message_bytes, int) and self.max_message_bytes >= 1024,
                 f"max_message_bytes must be >= 1024, got {self.max_message_bytes!r}")
        _require(self.keepalive_time_s > 0 and self.keepalive_timeout_s > 0, "keepalive times must be > 0")
        _require(self.shutdown_grace_s >= 0, f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s!r}")
        _require(isinstance(self.acceptors, int) and not isinstance(self.acceptors, bool)
                 and 1 <= self.acceptors <= 64, f"acceptors must be an integer in [1, 64], got {self.acceptors!r}")


def _port_is_free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host` without SO_REUSEPORT: nobody listens there, reusing or not."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds: TIME_WAIT does not count
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class GrpcServer:
    """Owners register their servicers with add_to_each() before start(), then call set_serving()."""

    def __init__(self, config: ServerConfig, service_names: list[str], registry: CollectorRegistry):
        self.config = config
        self.service_names = service_names
        self.registry = registry
        interceptors = [ObservabilityInterceptor(RpcMetrics(registry))]
        if config.bearer_token:
            interceptors.append(BearerAuthInterceptor(config.bearer_token))
        interceptors.append(ErrorStatusInterceptor())
        ms = config.max_message_bytes
        options = [
            ("grpc.max_receive_message_length", ms),
            ("grpc.max_send_message_length", ms),
            ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            # Let clients ping as often as every 10 s without being sent GOAWAY.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # One server alone never shares its port; several share it with each other only (start() checks).
            ("grpc.so_reuseport", int(config.acceptors > 1)),
        ]
        self.servers = [grpc.aio.server(interceptors=interceptors, options=options) for _ in range(config.acceptors)]
        self.health = health.aio.HealthServicer()  # one health state, answered by every acceptor
        self.add_to_each(lambda server: health_pb2_grpc.add_HealthServicer_to_server(self.health, server))
        self.add_to_each(lambda server: reflection.enable_server_reflection(
            [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server))
        self.loop_lag = LoopLagMonitor(registry)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_http = None

    def add_to_each(self, register: Callable[[grpc.aio.Server], object]) -> None:
        """register(server) for every acceptor: the same servicer objects behind each."""
        for server in self.servers:
            register(server)

    async def start(self) -> int:
        """Binds and starts serving (health NOT_SERVING); returns the bound port."""
        c = self.config
        if len(self.servers) > 1 and c.port != 0 and not _port_is_free(c.host, c.port):
            raise InvalidArgumentError(f"cannot bind {c.host}:{c.port}: the port is in use")
        creds = (grpc.ssl_server_credentials([(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())])
                 if c.tls_cert else None)
        port = c.port
        for server in self.servers:  # the first binds (port 0: picks one), the others join it
            address = f"{c.host}:{port}"
            bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
            if not bound:
                raise InvalidArgumentError(f"cannot bind {address}")
            port = bound
        self.port = port
        await self.set_serving(False)
        for server in self.servers:
            await server.start()
        self.loop_lag.start()
        if c.metrics_port is not None:
            self._metrics_http, self.metrics_port = serve_http(self.registry, c.metrics_port, c.metrics_host)
        log.info("listening", extra={"fields": {"port": self.port, "metrics_port": self.metrics_port,
                                                "acceptors": len(self.servers),
                                                "tls": bool(c.tls_cert), "auth": bool(c.bearer_token),
                                                "services": self.service_names}})
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self) -> None:
        """Health NOT_SERVING, refuse new calls, give calls in flight the grace period."""
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"fields": {"grace_s": self.config.shutdown_grace_s}})
        await asyncio.gather(*(server.stop(self.config.shutdown_grace_s) for server in self.servers))
        await self.loop_lag.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http = None


async def serve_until_signal(start, load, stop) -> None:
    """The life of a service process: start (bound, NOT_SERVING), load (then SERVING),
    serve until SIGTERM/SIGINT, stop (drain). A signal while loading stops at once;
    a load failure stops and is raised."""
    await start()
    signalled = asyncio.ensure_future(wait_for_signal())
    loading = asyncio.ensure_future(load())
    try:
        await asyncio.wait({signalled, loading}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # raises a load failure
            sig = await signalled
        else:
            sig = signalled.result()
            loading.cancel()
        log.info("signal received", extra={"fields": {"signal": sig.name}})
    finally:
        signalled.cancel()
        await stop()


async def wait_for_signal() -> signal.Signals:
    """Returns when SIGTERM or SIGINT arrives."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: received.done() or received.set_result(s))
    try:
        return await received
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
