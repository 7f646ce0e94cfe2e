"""Batches image tiles across concurrent requests into one forward pass.

A batch opens when a tile arrives and closes when it holds max_tiles tiles or
window_s has passed; while a forward runs, new tiles queue, so under load the
next batch fills at once. Parts of an image larger than max_tiles go through
as several batches. Tiles of a cancelled request are dropped before their
forward. The forward runs in one dedicated thread, never on the event loop."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from vlmserve.errors import FailedPreconditionError
from vlmserve.vision.tiles import Tiles


@dataclass
class _Pending:
    tiles: Tiles
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class TileBatcher:
    """forward(Tiles) -> Tensor[tiles, ...]; on_batch(num_tiles, seconds) observes each forward."""

    def __init__(self, forward: Callable[[Tiles], torch.Tensor], max_tiles: int, window_s: float,
                 on_batch: Callable[[int, float], None] | None = None):
        self._forward = forward
        self.max_tiles = max_tiles
        self.window_s = window_s
        self._on_batch = on_batch or (lambda n, s: None)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vision-forward")

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vision-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(FailedPreconditionError("the vision batcher is shut down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, tiles: Tiles) -> torch.Tensor:
        """The forward's output for these tiles, computed in whichever batches they land in."""
        if self._task is None or self._task.done():
            raise FailedPreconditionError("the vision batcher is not running")
        loop = asyncio.get_running_loop()
        parts = []
        for chunk in tiles.split(self.max_tiles):
            p = _Pending(chunk, loop.create_future())
            self._queue.append(p)
            parts.append(p.future)
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
        while True:
            await self._next_tile()
            first = self._queue[0].enqueued
            # Collect until full or the window since the oldest waiting tile closes.
            while self._queued_tiles() < self.max_tiles:
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
            start = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self._forward, Tiles.cat([p.tiles for p in batch]))
            except Exception as e:  # every waiter of the batch gets the error; the loop goes on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            self._on_batch(sum(len(p.tiles) for p in batch), time.perf_counter() - start)
            offset = 0
            for p in batch:
                n = len(p.tiles)
                if not p.future.done():
                    p.future.set_result(out[offset:offset + n])
                offset += n

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
        key = self._queue[0].tiles.shape_key if self._queue else None
        keep: collections.deque[_Pending] = collections.deque()
        for p in self._queue:
            n = len(p.tiles)
            if not keep and total + n <= self.max_tiles and p.tiles.shape_key == key:
                batch.append(p)
                total += n
            else:
                keep.append(p)  # FIFO: once one waits, later ones wait too
        self._queue = keep
        return batch
