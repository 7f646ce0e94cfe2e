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
dies has its requests aborted in the engine and is started again (logged, and
counted in vlmserve_lm_front_restarts); its connections' clients reconnect to
the other processes meanwhile. An engine process that dies ends every front's
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

    def engine_lost() -> None:  # the link's reader thread; also at this front's own stop, after its loop closed
        try:
            loop.call_soon_threadsafe(lost.set)
        except RuntimeError:
            pass

    engine = RemoteEngine(engine_conn, s.spec, s.engine_config, s.engine_stats, on_lost=engine_lost)
    server = LmServer(s.model, s.engine_config, s.limits, s.server_config, engine=engine)
    try:
        await server.start()
        await server.load()
    except BaseException as e:
        control_conn.send(("failed", f"{type(e).__name__}: {e}"))
        await server.stop()
        signalled.cancel()
        return
    def send_metrics() -> None:
        try:
            control_conn.send(("metrics", list(server.registry.collect())))
        except (OSError, ValueError):
            pass  # the first process is gone: the engine link says so too

    control_conn.send(("ready", os.getpid()))
    send_metrics()  # at once: this front is in /metrics (its share of the calls too) from when the service serves
    lost_wait = asyncio.ensure_future(lost.wait())

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


@dataclass
class _Front:
    index: int
    proc: object              # multiprocessing.Process
    link: FrontLink
    control: object           # this end of its control pipe
    reporter: threading.Thread | None = None
    retired: bool = False     # it stopped cleanly (a signal of its own, e.g. Ctrl-C to the process group)


class LmFronts:
    """The first process's handle on its further front processes and their links to its engine. A front that
    dies while the service runs is replaced (its requests were aborted in the engine when its pipe closed); one
    that stopped cleanly (exit code 0: it was signalled and drained) is not."""

    WATCH_INTERVAL_S = 0.5

    def __init__(self, count: int):
        self.count = count  # further processes (front_processes - 1)
        self._ctx = multiprocessing.get_context("spawn")
        self._fronts: list[_Front] = []
        self._watching: asyncio.Task | None = None
        self._stopping = False

    def processes(self) -> list:
        return [f.proc for f in self._fronts]

    async def start(self, engine, make_settings, on_metrics, on_restart=None) -> None:
        """Starts the fronts, each with make_settings(index), and waits until every one serves; raises (after
        stopping those started) when one fails or does not report within READY_TIMEOUT_S. on_metrics((index, pid),
        families): a front's metrics snapshot, from a thread of this object; on_restart(): a front was replaced."""
        self._engine, self._make_settings, self._on_metrics, self._on_restart = (engine, make_settings, on_metrics,
                                                                                 on_restart)
        try:
            for i in range(1, self.count + 1):
                self._fronts.append(self._spawn(i))
            for front in self._fronts:
                await self._await_ready(front)
        except BaseException:
            await self.stop(grace_s=0.0)
            raise
        for front in self._fronts:
            self._start_reporter(front)
        self._watching = asyncio.ensure_future(self._watch())
        log.info("front processes serving", extra={"fields": {"fronts": self.count,
                                                              "pids": [f.proc.pid for f in self._fronts]}})

    def _spawn(self, index: int) -> _Front:
        engine_here, engine_there = self._ctx.Pipe(duplex=True)
        control_here, control_there = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=front_main, args=(engine_there, control_there, self._make_settings(index)),
                                 name=f"vlmserve-lm-front-{index}", daemon=False)
        proc.start()
        engine_there.close()
        control_there.close()
        link = FrontLink(self._engine, engine_here, f"front-{index}")
        link.start()
        return _Front(index, proc, link, control_here)

    async def _await_ready(self, front: _Front) -> None:
        loop = asyncio.get_running_loop()
        i = front.index
        if not await loop.run_in_executor(None, front.control.poll, READY_TIMEOUT_S):
            raise RuntimeError(f"LM front process {i} did not report within {READY_TIMEOUT_S:.0f} s")
        try:
            msg = front.control.recv()
        except EOFError:
            await loop.run_in_executor(None, front.proc.join, 5.0)
            raise RuntimeError(f"LM front process {i} exited while starting (exit code {front.proc.exitcode})") \
                from None
        if msg[0] != "ready":
            raise RuntimeError(f"LM front process {i} failed to start: {msg[1]}")

    def _start_reporter(self, front: _Front) -> None:
        # Snapshots keyed by the process, not its slot: a replacement's counters start from 0, and its
        # predecessor's last snapshot stays in the sums (metrics_merge.py).
        source = (front.index, front.proc.pid)
        front.reporter = threading.Thread(target=_read_reports, args=(front.control, source, self._on_metrics),
                                          name=f"front-{front.index}-metrics", daemon=True)
        front.reporter.start()

    async def _watch(self) -> None:
        """Replaces fronts that die while the service runs; a replacement that fails to start is tried again
        after a pause that doubles (up to 30 s)."""
        pause: dict[int, float] = {}
        while not self._stopping:
            await asyncio.sleep(self.WATCH_INTERVAL_S)
            for k, front in enumerate(self._fronts):
                if self._stopping or front.retired or front.proc.is_alive():
                    continue
                if front.proc.exitcode == 0:
                    front.retired = True
                    log.warning("LM front process stopped on a signal of its own: not started again",
                                extra={"fields": {"front": front.index, "pid": front.proc.pid}})
                    continue
                try:
                    await self._replace(k, front, pause)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the watch goes on whatever one replacement did
                    log.exception("replacing an LM front process failed", extra={"fields": {"front": front.index}})

    async def _replace(self, k: int, front: _Front, pause: dict[int, float]) -> None:
        loop = asyncio.get_running_loop()
        log.error("LM front process died: starting another",
                  extra={"fields": {"front": front.index, "pid": front.proc.pid, "exit_code": front.proc.exitcode}})
        front.link.close()
        if front.reporter is not None:  # it ends at the pipe's close, and closes it
            await loop.run_in_executor(None, front.reporter.join, 5.0)
        else:
            front.control.close()
        replacement = self._spawn(front.index)
        self._fronts[k] = replacement
        try:
            await self._await_ready(replacement)
        except Exception as e:
            wait = pause.get(front.index, 1.0)
            pause[front.index] = min(30.0, wait * 2)
            log.error("LM front process failed to start again",
                      extra={"fields": {"front": front.index, "error": str(e), "retry_in_s": wait}})
            if replacement.proc.is_alive():
                replacement.proc.kill()
            await asyncio.sleep(wait)  # then the watch sees it dead and tries again
            return
        pause.pop(front.index, None)
        self._start_reporter(replacement)
        if self._on_restart is not None:
            self._on_restart()
        log.info("LM front process replaced", extra={"fields": {"front": front.index, "pid": replacement.proc.pid}})

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to every front (each drains its calls within grace_s); those still running after it are
        killed; then the links close."""
        self._stopping = True
        if self._watching is not None:
            self._watching.cancel()
            try:
                await self._watching
            except (asyncio.CancelledError, Exception):
                pass
            self._watching = None
        for front in self._fronts:
            if front.proc.is_alive():
                os.kill(front.proc.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        for front in self._fronts:
            await loop.run_in_executor(None, front.proc.join, grace_s + 10.0)
            if front.proc.is_alive():
                log.error("LM front process did not stop: killed", extra={"fields": {"pid": front.proc.pid}})
                front.proc.kill()
                await loop.run_in_executor(None, front.proc.join, 5.0)
        for front in self._fronts:  # each reporter ends at its front's last snapshot (the pipe closes)
            if front.reporter is not None:
                await loop.run_in_executor(None, front.reporter.join, 5.0)
            else:
                front.control.close()
            front.link.close()
        self._fronts = []


def _read_reports(control, source: tuple[int, int], on_metrics) -> None:
    """A front's metric snapshots, until its pipe closes; source: (its index, its pid)."""
    try:
        while True:
            msg = control.recv()
            if msg[0] == "metrics":
                on_metrics(source, msg[1])
    except (EOFError, OSError, TypeError):
        pass
    finally:
        control.close()
