"""Test tiles whose values say where they came from, and a check that concurrent
submissions to a TileBatcher each get exactly their own rows (shared by the
batcher and vision-replica tests)."""
from __future__ import annotations

import asyncio

import torch

from vlmserve.vision.tiles import Tiles


def tiles(first: int, count: int = 1) -> Tiles:
    # Row i holds the value first + i everywhere, so every output row says which tile it came from.
    values = torch.arange(first, first + count, dtype=torch.float32)
    return Tiles({"pixel_values": values[:, None, None, None].expand(count, 3, 2, 2).clone()})


def rows(t: Tiles) -> torch.Tensor:
    """What the test forwards return: 10 × each tile's value, [tiles, 1]."""
    return t.tensors["pixel_values"][:, :1, 0, 0] * 10.0


async def submit_and_check_rows(batcher, sizes: list[int]) -> None:
    """Submits images of `sizes` tiles at once, closes the batcher, asserts each caller got its own rows."""
    firsts = [sum(sizes[:i]) * 100 for i in range(len(sizes))]
    outs = await asyncio.gather(*(batcher.submit(tiles(f, n)) for f, n in zip(firsts, sizes)))
    await batcher.close()
    for f, n, out in zip(firsts, sizes, outs):
        assert out.flatten().tolist() == [10.0 * (f + i) for i in range(n)]
