"""The tile batcher: concurrent submissions share forwards up to the tile limit,
every caller gets exactly its own rows, large images span batches, and a
cancelled caller's tiles are dropped."""
from __future__ import annotations

import asyncio

import torch
from tile_batches import rows, submit_and_check_rows
from tile_batches import tiles as _tiles

from vlmserve.vision.batcher import TileBatcher
from vlmserve.vision.tiles import Tiles


def _forward_recording(batches: list[int]):
    def forward(tiles: Tiles, replica: int) -> torch.Tensor:
        assert replica == 0
        batches.append(len(tiles))
        return rows(tiles)
    return forward


def test_concurrent_submissions_batch_and_get_their_own_rows():
    batches: list[int] = []

    async def main():
        b = TileBatcher(_forward_recording(batches), max_tiles=8, window_s=0.05)
        b.start()
        await submit_and_check_rows(b, [1, 3, 2, 1, 5, 1, 2, 4, 1, 1])

    asyncio.run(main())
    assert sum(batches) == 21 and max(batches) <= 8 and len(batches) < 10


def test_an_image_larger_than_a_batch_spans_several():
    batches: list[int] = []

    async def main():
        b = TileBatcher(_forward_recording(batches), max_tiles=4, window_s=0.0)
        b.start()
        out = await b.submit(_tiles(0, 11))
        await b.close()
        assert out.flatten().tolist() == [10.0 * i for i in range(11)]

    asyncio.run(main())
    assert batches == [4, 4, 3]


def test_cancelled_callers_are_dropped_and_errors_reach_every_waiter():
    batches: list[int] = []

    async def main():
        b = TileBatcher(_forward_recording(batches), max_tiles=8, window_s=0.1)
        b.start()
        doomed = asyncio.ensure_future(b.submit(_tiles(0, 3)))
        kept = asyncio.ensure_future(b.submit(_tiles(100, 2)))
        await asyncio.sleep(0.01)
        doomed.cancel()
        assert (await kept).flatten().tolist() == [1000.0, 1010.0]
        await b.close()

    asyncio.run(main())
    assert batches == [2]

    async def failing():
        def boom(tiles, replica):
            raise RuntimeError("kernel failed")
        b = TileBatcher(boom, max_tiles=8, window_s=0.02)
        b.start()
        results = await asyncio.gather(b.submit(_tiles(0, 1)), b.submit(_tiles(1, 1)), return_exceptions=True)
        assert [str(r) for r in results] == ["kernel failed", "kernel failed"]
        # The batcher survives a failed forward.
        b._forward = _forward_recording([])
        assert (await b.submit(_tiles(7, 1))).item() == 70.0
        await b.close()

    asyncio.run(failing())


def test_early_close_waits_for_announced_images_only():
    # A window far longer than the test: any batch that waited for it would time the test out.
    batches: list[int] = []

    async def main():
        b = TileBatcher(_forward_recording(batches), max_tiles=8, window_s=60.0, early_close=True)
        b.start()
        # Nothing else announced: the lone image is encoded without waiting for the window.
        lone = b.expect(1)
        assert (await asyncio.wait_for(b.submit(_tiles(5, 1), lone), 10)).item() == 50.0
        # Two announced: the first waits for the second, and both share one forward.
        pair = b.expect(2)
        first = asyncio.ensure_future(b.submit(_tiles(1, 2), pair))
        await asyncio.sleep(0.05)
        assert not first.done()
        second = await asyncio.wait_for(b.submit(_tiles(10, 1), pair), 10)
        assert (await first).flatten().tolist() == [10.0, 20.0] and second.item() == 100.0
        # An announced image withdrawn (its preparation failed) releases the batch waiting for it.
        with b.expect(2) as failing:
            waiting = asyncio.ensure_future(b.submit(_tiles(3, 1), failing))
            await asyncio.sleep(0.05)
            assert not waiting.done()
        assert (await asyncio.wait_for(waiting, 10)).item() == 30.0
        await b.close()

    asyncio.run(main())
    assert batches == [1, 3, 1]
