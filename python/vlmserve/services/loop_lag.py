"""How late the event loop runs a callback that is due: a task sleeps a fixed
interval and records by how much it overslept. Every gRPC message, accepted
call and token of a service passes through its event loop, so this lag is
what each of them waits on top of its own work; under load it says whether
the loop itself is the bottleneck. A service served by several event loops
(ServerConfig.event_loops) runs one such task on each, into the same histogram."""
from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Histogram

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class LoopLagMonitor:
    def __init__(self, registry: CollectorRegistry, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.lag = Histogram("vlmserve_event_loop_lag_seconds",
                             f"how late a callback due every {interval_s * 1e3:g} ms ran on the service's "
                             "event loop(s)",
                             buckets=_BUCKETS, registry=registry)
        self._tasks: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}  # one a loop, each touched on its own

    def start(self) -> None:
        """Starts measuring the running loop (once per loop)."""
        loop = asyncio.get_running_loop()
        if loop not in self._tasks:
            self._tasks[loop] = loop.create_task(self._run(), name="event-loop-lag")

    async def stop(self) -> None:
        """Stops measuring the running loop."""
        task = self._tasks.pop(asyncio.get_running_loop(), None)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.lag.observe(max(0.0, time.perf_counter() - due))
