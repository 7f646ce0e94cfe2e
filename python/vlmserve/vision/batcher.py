"""Batches image tiles across concurrent requests into forward passes over
`parallel` encoder replicas.

A batch opens when a tile arrives and a replica is free, and closes when it
holds max_tiles tiles or window_s has passed; while every replica is busy, new
tiles queue, so under load the next batch fills at once. With early_close, callers
announce images they are still preparing (expect()), and a batch also closes as
soon as no announced image is left to come: waiting longer could only add
tiles that nobody is preparing yet, and an image takes longer to prepare than
the window, so a lone request is encoded at once instead of a window later. Up to `parallel`
forwards run at once, each in the single thread bound to its replica (one
replica never runs two forwards at once, and a forward never runs on the event
loop). Parts of an image larger than max_tiles go through as several batches.
Tiles of a cancelled request are dropped before their forward; a failed forward
fails only the requests whose tiles were in that batch."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from vlmserve.errors import FailedPreconditionError
from vlmserve.vision.tiles import Tiles

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    tiles: Tiles
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Expected:
    """Images a caller announced to the batcher and has not submitted yet (see TileBatcher.expect)."""

    def __init__(self, batcher: "TileBatcher", count: int):
        self._batcher, self.count = batcher, count

    def arrived(self) -> None:
        if self.count > 0:
            self.count -= 1
            self._batcher._expected -= 1

    def close(self) -> None:
        """Withdraws what was not submitted (a failed or cancelled request)."""
        if self.count > 0:
            self._batcher._expected -= self.count
            self.count = 0
            if self._batcher._arrived is not None:
                self._batcher._arrived.set()  # a waiting batch may close now

    def __enter__(self) -> "Expected":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TileBatcher:
    """forward(Tiles, replica) -> Tensor[tiles, ...], replica in [0, parallel); on_batch(num_tiles, seconds)
    observes each successful forward."""

    def __init__(self, forward: Callable[[Tiles, int], torch.Tensor], max_tiles: int, window_s: float,
                 on_batch: Callable[[int, float], None] | None = None, parallel: int = 1, early_close: bool = False):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self._forward = forward
        self.max_tiles = max_tiles
        self.window_s = window_s
        self.parallel = parallel
        self.early_close = early_close
        self._expected = 0  # images announced with expect() and not yet submitted
        self._on_batch = on_batch or (lambda n, s: None)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._freed: asyncio.Event | None = None
        self._free = list(range(parallel))  # replicas without a forward in flight
        self._in_flight: dict[asyncio.Task, list[_Pending]] = {}
        self._task: asyncio.Task | None = None
        self._executors = [concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"vision-forward-{i}")
                           for i in range(parallel)]

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._freed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vision-batcher")

    async def close(self) -> None:
        """Fails every waiting request, queued or with its forward in flight, then waits (off the event loop)
        for forwards already running to return, their results discarded."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        shut = FailedPreconditionError("the vision batcher is shut down")
        for batch in self._in_flight.values():
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(shut)
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(shut)
        self._queue.clear()
        for executor in self._executors:
            executor.shutdown(wait=False)
        await asyncio.to_thread(lambda: [executor.shutdown(wait=True) for executor in self._executors])

    def expect(self, images: int) -> Expected:
        """Announces images being prepared; pass the result to submit() with each, and close it (or use it as
        a context manager) once the caller submitted or gave up."""
        self._expected += images
        return Expected(self, images)

    async def submit(self, tiles: Tiles, expected: Expected | None = None) -> torch.Tensor:
        """The forward's output for these tiles, computed in whichever batches they land in."""
        if self._task is None or self._task.done():
            raise FailedPreconditionError("the vision batcher is not running")
        loop = asyncio.get_running_loop()
        parts = []
        for chunk in tiles.split(self.max_tiles):
            p = _Pending(chunk, loop.create_future())
            self._queue.append(p)
            parts.append(p.future)
        if expected is not None:
            expected.arrived()
        self._arrived.set()
        try:
            outputs = await asyncio.gather(*parts)
        except BaseException:
            for f in parts:
                f.cancel()
            raise
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        replica: int | None = None
        while True:
            if replica is None:
                replica = await self._free_replica()
            await self._next_tile()
            first = self._queue[0].enqueued
            # Collect until full, the window since the oldest waiting tile closes or (early_close) no
            # announced image is left to come.
            while self._queued_tiles() < self.max_tiles and not (self.early_close and self._expected <= 0):
                remaining = first + self.window_s - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            task = loop.create_task(self._forward_batch(batch, replica), name=f"vision-forward-{replica}")
            self._in_flight[task] = batch
            task.add_done_callback(self._forward_done)
            replica = None

    async def _forward_batch(self, batch: list[_Pending], replica: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            start = time.perf_counter()
            try:
                # Concatenated in the forward's thread: tiles prepared on a GPU are joined there, off the loop.
                out = await loop.run_in_executor(self._executors[replica], self._forward_parts,
                                                 [p.tiles for p in batch], replica)
            except Exception as e:  # every waiter of this batch gets the error; other batches go on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                return
            seconds = time.perf_counter() - start
            offset = 0
            for p in batch:
                n = len(p.tiles)
                if not p.future.done():
                    p.future.set_result(out[offset:offset + n])
                offset += n
            self._on_batch(offset, seconds)
        finally:
            self._free.append(replica)
            self._freed.set()

    def _forward_parts(self, parts: list[Tiles], replica: int) -> torch.Tensor:
        return self._forward(Tiles.cat(parts), replica)

    def _forward_done(self, task: asyncio.Task) -> None:
        self._in_flight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("a vision batch failed after its forward", exc_info=task.exception())

    async def _free_replica(self) -> int:
        """The lowest-numbered replica without a forward in flight, once there is one."""
        while not self._free:
            self._freed.clear()
            await self._freed.wait()
        replica = min(self._free)
        self._free.remove(replica)
        return replica

    async def _next_tile(self) -> None:
        while True:
            self._drop_cancelled()
            if self._queue:
                return
            self._arrived.clear()
            await self._arrived.wait()

    def _drop_cancelled(self) -> None:
        self._queue = collections.deque(p for p in self._queue if not p.future.done())

    def _queued_tiles(self) -> int:
        return sum(len(p.tiles) for p in self._queue if not p.future.done())

    def _take_batch(self) -> list[_Pending]:
        """Oldest first, while they fit and share the first one's tile shape."""
        self._drop_cancelled()
        batch: list[_Pending] = []
        total = 0
        key = self._queue[0].tiles.batch_key if self._queue else None
        keep: collections.deque[_Pending] = collections.deque()
        for p in self._queue:
            n = len(p.tiles)
            if not keep and total + n <= self.max_tiles and p.tiles.batch_key == key:
                batch.append(p)
                total += n
            else:
                keep.append(p)  # FIFO: once one waits, later ones wait too
        self._queue = keep
        return batch
