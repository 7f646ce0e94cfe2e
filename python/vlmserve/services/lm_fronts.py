"""LM front processes: the LM service's port served by several processes around
one engine.

A process starts new gRPC calls only as fast as its event loop turns (a few
iterations a call, bench/grpc_accept.py), and one loop also carries every
stream's token messages: at hundreds of streams, calls wait before their handler
for most of a second. A second event loop in the same process shares the
interpreter lock and the gRPC completion queue's dispatch with the first; a
second process shares neither. With front_processes = N the service's first
process loads the engine and serves the port as before, and N - 1 further front
processes (started here, with "spawn") serve it beside it (SO_REUSEPORT: the
kernel spreads the connections). A front does all of a call's work but the
engine's: parsing, the vision service call, the chat template and tokenizer,
detokenizing and streaming; its requests go to the engine over a pipe
(engine_host.py, remote_engine.py).

Life: the fronts start once the engine is loaded and warmed up; the service
reports SERVING once every front is. At stop each front drains its calls (the
same grace) while the engine still runs; then the engine closes. A front that
dies has its requests aborted in the engine and is logged; its connections'
clients reconnect to the others. An engine process that dies ends every front's
calls UNAVAILABLE and the fronts stop.

Metrics: each front sends a snapshot of its registry to the first process every
METRICS_INTERVAL_S and when it stops; the first process's /metrics serves its
own metrics (the engine's gauges among them) and the fronts', summed
(metrics_merge.py)."""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass

from vlmserve.config import EngineConfig
from vlmserve.model_spec import ModelSpec
from vlmserve.outputs import EngineStats
from vlmserve.services.engine_host import FrontLink

log = logging.getLogger("vlmserve.lm")

READY_TIMEOUT_S = 300.0  # a front loads only the tokenizer and binds; this bounds a stuck start
METRICS_INTERVAL_S = 1.0  # how stale a front's share of /metrics may be


@dataclass
class FrontSettings:
    """What a front process is started with (pickled to it)."""

    index: int
    model: str
    limits: object          # LmLimits
    server_config: object   # ServerConfig: the first process's, joining its bound port, no metrics endpoint
    spec: ModelSpec
    engine_config: EngineConfig
    engine_stats: EngineStats
    log_level: str
    switch_interval_s: float


def front_main(engine_conn, control_conn, settings: FrontSettings) -> None:
    """A front process's life: serve until SIGTERM/SIGINT (then drain) or until the engine process is gone."""
    from vlmserve.services import log as service_log

    service_log.configure(settings.log_level)
    sys.setswitchinterval(settings.switch_interval_s)
    try:
        asyncio.run(_serve_front(engine_conn, control_conn, settings))
    except KeyboardInterrupt:
        pass


async def _serve_front(engine_conn, control_conn, s: FrontSettings) -> None:
    from vlmserve.services.lm_server import LmServer
    from vlmserve.services.remote_engine import RemoteEngine
    from vlmserve.services.server import wait_for_signal

    loop = asyncio.get_running_loop()
    signalled = asyncio.ensure_future(wait_for_signal())
    lost = asyncio.Event()
    engine = RemoteEngine(engine_conn, s.spec, s.engine_config, s.engine_stats,
                          on_lost=lambda: loop.call_soon_threadsafe(lost.set))
    server = LmServer(s.model, s.engine_config, s.limits, s.server_config, engine=engine)
    try:
        await server.start()
        await server.load()
    except BaseException as e:
        control_conn.send(("failed", f"{type(e).__name__}: {e}"))
        await server.stop()
        signalled.cancel()
        return
    control_conn.send(("ready", os.getpid()))
    lost_wait = asyncio.ensure_future(lost.wait())

    def send_metrics() -> None:
        try:
            control_conn.send(("metrics", list(server.registry.collect())))
        except (OSError, ValueError):
            pass  # the first process is gone: the engine link says so too

    async def report_metrics() -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            send_metrics()

    reporting = asyncio.ensure_future(report_metrics())
    try:
        await asyncio.wait({signalled, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        lost_wait.cancel()
        reporting.cancel()
        await server.stop()
        send_metrics()  # the calls it drained counted
        control_conn.close()


class LmFronts:
    """The first process's handle on its further front processes and their links to its engine."""

    def __init__(self, count: int):
        self.count = count  # further processes (front_processes - 1)
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list = []
        self._links: list[FrontLink] = []
        self._reporters: list[threading.Thread] = []

    async def start(self, engine, make_settings, on_metrics) -> None:
        """Starts the fronts, each with make_settings(index), and waits until every one serves; raises (after
        stopping those started) when one fails or does not report within READY_TIMEOUT_S. on_metrics(index,
        families): a front's metrics snapshot, from a thread of this object."""
        controls = []
        started = False
        try:
            for i in range(1, self.count + 1):
                engine_here, engine_there = self._ctx.Pipe(duplex=True)
                control_here, control_there = self._ctx.Pipe(duplex=True)
                proc = self._ctx.Process(target=front_main, args=(engine_there, control_there, make_settings(i)),
                                         name=f"vlmserve-lm-front-{i}", daemon=False)
                proc.start()
                engine_there.close()
                control_there.close()
                link = FrontLink(engine, engine_here, f"front-{i}")
                link.start()
                self._procs.append(proc)
                self._links.append(link)
                controls.append(control_here)
            loop = asyncio.get_running_loop()
            for i, control in enumerate(controls, start=1):
                ready = await loop.run_in_executor(None, control.poll, READY_TIMEOUT_S)
                if not ready:
                    raise RuntimeError(f"LM front process {i} did not report within {READY_TIMEOUT_S:.0f} s")
                try:
                    msg = control.recv()
                except EOFError:
                    raise RuntimeError(f"LM front process {i} exited while starting "
                                       f"(exit code {self._procs[i - 1].exitcode})") from None
                if msg[0] != "ready":
                    raise RuntimeError(f"LM front process {i} failed to start: {msg[1]}")
            for i, control in enumerate(controls, start=1):
                reporter = threading.Thread(target=_read_reports, args=(control, i, on_metrics),
                                            name=f"front-{i}-metrics", daemon=True)
                reporter.start()
                self._reporters.append(reporter)
            started = True
            log.info("front processes serving", extra={"fields": {"fronts": self.count,
                                                                  "pids": [p.pid for p in self._procs]}})
        except BaseException:
            await self.stop(grace_s=0.0)
            raise
        finally:
            if not started:
                for control in controls:
                    control.close()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to every front (each drains its calls within grace_s); those still running after it are
        killed; then the links close."""
        for proc in self._procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        for proc in self._procs:
            await loop.run_in_executor(None, proc.join, grace_s + 10.0)
            if proc.is_alive():
                log.error("LM front process did not stop: killed", extra={"fields": {"pid": proc.pid}})
                proc.kill()
                await loop.run_in_executor(None, proc.join, 5.0)
        for reporter in self._reporters:  # each ends at its front's last snapshot (the pipe closes)
            await loop.run_in_executor(None, reporter.join, 5.0)
        for link in self._links:
            link.close()
        self._procs, self._links, self._reporters = [], [], []

    def alive(self) -> list[bool]:
        return [p.is_alive() for p in self._procs]


def _read_reports(control, index: int, on_metrics) -> None:
    """A front's metric snapshots, until its pipe closes."""
    try:
        while True:
            msg = control.recv()
            if msg[0] == "metrics":
                on_metrics(index, msg[1])
    except (EOFError, OSError, TypeError):
        pass
    finally:
        control.close()
