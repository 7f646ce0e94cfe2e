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
without SO_REUSEPORT, so a second process cannot silently share it.

Event loops: how fast a process starts new calls is set by its event loop's
iterations, and more servers on the same loop do not raise it (bench/grpc_accept.py:
~95-105 calls a second at 1.6 ms iterations with 1 or 4 servers; a second loop
serves the same 256 streams as fast as they ask, on a 2-core CPU). In the LM
service on the H100 host a second loop did less (the wait before the handler at
256 streams 755 -> 564 ms, throughput the same): both loops share the
interpreter lock and gRPC's completion-queue dispatch, which runs on the first.
Separate processes share neither: lm_fronts.py (71 ms there). With event_loops > 1 the
first loop is the caller's and each further one runs in a thread of its own with
its own servers (and health servicer) on the same port; the owners' handlers are
registered on every loop's servers and run on the loop of the call's connection."""
from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
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
    sharing the port on each event loop, each starting new calls on its own; event_loops: loops serving the port,
    the caller's and each further one in a thread (see the module doc); processes: processes serving the port
    (the LM service's front processes, lm_fronts.py); join_port: this is one of a service's further processes,
    joining the port its first process bound (SO_REUSEPORT, no check that the port is free)."""

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
    event_loops: int = 1
    processes: int = 1
    join_port: bool = False

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
        _require(isinstance(self.event_loops, int) and not isinstance(self.event_loops, bool)
                 and 1 <= self.event_loops <= 16,
                 f"event_loops must be an integer in [1, 16], got {self.event_loops!r}")
        _require(isinstance(self.processes, int) and not isinstance(self.processes, bool) and 1 <= self.processes <= 64,
                 f"processes must be an integer in [1, 64], got {self.processes!r}")
        _require(not self.join_port or self.port != 0, "a process joining a service's port needs the port's number")

    @property
    def shares_port(self) -> bool:
        """Whether several servers listen on the port (SO_REUSEPORT among themselves)."""
        return self.acceptors > 1 or self.event_loops > 1 or self.processes > 1 or self.join_port


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


class _LoopThread:
    """An asyncio event loop running in a thread of its own, for a further set of servers on the port."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, make: Callable[[], Awaitable]):
        """Runs the coroutine make() on this loop and waits for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self.loop.close()


class _LoopServers:
    """One event loop's servers on the port and the health servicer they answer from."""

    def __init__(self, servers: list, health_servicer):
        self.servers = servers
        self.health = health_servicer


class GrpcServer:
    """Owners register their servicers with add_to_each() before start(), then call set_serving()."""

    def __init__(self, config: ServerConfig, service_names: list[str], registry: CollectorRegistry):
        self.config = config
        self.service_names = service_names
        self.registry = registry
        self._interceptors = [ObservabilityInterceptor(RpcMetrics(registry))]
        if config.bearer_token:
            self._interceptors.append(BearerAuthInterceptor(config.bearer_token))
        self._interceptors.append(ErrorStatusInterceptor())
        ms = config.max_message_bytes
        self._options = [
            ("grpc.max_receive_message_length", ms),
            ("grpc.max_send_message_length", ms),
            ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            # Let clients ping as often as every 10 s without being sent GOAWAY.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # One server alone never shares its port; several share it with each other only (start() checks).
            ("grpc.so_reuseport", int(config.shares_port)),
        ]
        self._registrations: list[Callable[[grpc.aio.Server], object]] = []
        # The caller's loop: its servers are made now (the others' on their own loops, at start()).
        self.servers = self._make_servers()
        self.health = health.aio.HealthServicer()  # one health state, answered by every acceptor of this loop
        self._register_common(self.servers, self.health)
        self._further: list[tuple[_LoopThread, _LoopServers]] = []
        self.loop_lag = LoopLagMonitor(registry)
        self.exported_metrics = registry  # what /metrics collects from (a service of several processes: merged)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_http = None

    def _make_servers(self) -> list:
        return [grpc.aio.server(interceptors=self._interceptors, options=self._options)
                for _ in range(self.config.acceptors)]

    def _register_common(self, servers: list, health_servicer) -> None:
        names = [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        for server in servers:
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(names, server)

    def add_to_each(self, register: Callable[[grpc.aio.Server], object]) -> None:
        """register(server) for every acceptor of every event loop: the same servicer objects behind each (their
        handlers must not hold state of one loop). Before start()."""
        self._registrations.append(register)
        for server in self.servers:
            register(server)

    def _bind(self, servers: list, port: int, creds) -> int:
        for server in servers:  # the first binds (port 0: picks one), the others join it
            address = f"{self.config.host}:{port}"
            bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
            if not bound:
                raise InvalidArgumentError(f"cannot bind {address}")
            port = bound
        return port

    async def _start_further_loop(self, port: int, creds) -> _LoopServers:
        """On a further loop: its servers and health servicer, registered, bound to the port, NOT_SERVING, started."""
        servers = self._make_servers()
        health_servicer = health.aio.HealthServicer()
        self._register_common(servers, health_servicer)
        for register in self._registrations:
            for server in servers:
                register(server)
        self._bind(servers, port, creds)
        await self._set_health(health_servicer, False)
        for server in servers:
            await server.start()
        self.loop_lag.start()  # this loop's lag, into the service's one histogram
        return _LoopServers(servers, health_servicer)

    async def start(self) -> int:
        """Binds and starts serving (health NOT_SERVING); returns the bound port."""
        c = self.config
        if c.shares_port and not c.join_port and c.port != 0 and not _port_is_free(c.host, c.port):
            raise InvalidArgumentError(f"cannot bind {c.host}:{c.port}: the port is in use")
        creds = (grpc.ssl_server_credentials([(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())])
                 if c.tls_cert else None)
        self.port = self._bind(self.servers, c.port, creds)
        await self.set_serving(False)
        for server in self.servers:
            await server.start()
        for i in range(1, c.event_loops):
            thread = _LoopThread(f"grpc-loop-{i}")
            try:
                self._further.append((thread, await thread.run(lambda: self._start_further_loop(self.port, creds))))
            except BaseException:
                thread.close()
                raise
        self.loop_lag.start()
        if c.metrics_port is not None:
            self._metrics_http, self.metrics_port = serve_http(self.exported_metrics, c.metrics_port, c.metrics_host)
        log.info("listening", extra={"fields": {"port": self.port, "metrics_port": self.metrics_port,
                                                "acceptors": len(self.servers), "event_loops": c.event_loops,
                                                "tls": bool(c.tls_cert), "auth": bool(c.bearer_token),
                                                "services": self.service_names}})
        return self.port

    async def _set_health(self, health_servicer, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await health_servicer.set(name, status)

    async def set_serving(self, serving: bool) -> None:
        await self._set_health(self.health, serving)
        for thread, loop_servers in self._further:
            await thread.run(lambda h=loop_servers.health: self._set_health(h, serving))

    async def on_each_loop(self, make: Callable[[], Awaitable]) -> None:
        """Runs make() on every event loop serving the port (the caller's first), one after another."""
        await make()
        for thread, _ in self._further:
            await thread.run(make)

    async def stop(self, cleanup: Callable[[], Awaitable] | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, give calls in flight the grace period; then cleanup() on every
        event loop (what the owner made on it, e.g. client channels) and the further loops closed."""
        grace = self.config.shutdown_grace_s

        async def drain(servers: list, health_servicer) -> None:
            await health_servicer.enter_graceful_shutdown()
            await asyncio.gather(*(server.stop(grace) for server in servers))

        log.info("draining", extra={"fields": {"grace_s": grace}})
        await asyncio.gather(drain(self.servers, self.health),
                             *(thread.run(lambda ls=ls: drain(ls.servers, ls.health)) for thread, ls in self._further))
        try:
            if cleanup is not None:
                await self.on_each_loop(cleanup)
        finally:
            for thread, _ in self._further:
                try:
                    await thread.run(self.loop_lag.stop)
                finally:
                    thread.close()
            self._further = []
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
