"""CUDA graphs of the vision encoder's forward, one per batch size.

An eager forward of a ViT launches a few hundred kernels, each from Python with
the GIL held. In the stack process the GIL is also wanted by the gRPC threads,
the token streams and the engine's poller, so under load an eager forward waits
on Python far longer than on the GPU. A replay is one launch.

Graphs are captured at warm-up for the model's standard tile shape: every batch
size up to 8, then multiples of 8 up to the batch limit (a batch of n tiles
replays the smallest graph of at least n tiles; the padding rows hold earlier
tiles and their outputs are dropped, as every tile is encoded on its own). Tiles
of any other shape, and larger batches, run eagerly. All graphs of a replica read
one input buffer and share one memory pool; that is safe because a replica's
forwards run one at a time on one thread and each graph keeps its output alive."""
from __future__ import annotations

import logging
from typing import Callable

import torch

from vlmserve.errors import ModelLoadError
from vlmserve.vision.tiles import Tiles

log = logging.getLogger(__name__)

# Every size up to here gets its own graph; above it, multiples of this.
_EXACT_SIZES = 8


def graph_sizes(max_tiles: int) -> list[int]:
    """The batch sizes captured for a batch limit of max_tiles tiles."""
    sizes = list(range(1, min(max_tiles, _EXACT_SIZES) + 1))
    sizes += list(range(2 * _EXACT_SIZES, max_tiles + 1, _EXACT_SIZES))
    if sizes[-1] != max_tiles:
        sizes.append(max_tiles)
    return sizes


class GraphedForward:
    """forward(tiles) by graph replay on one device and stream; run() returns None for what has no graph."""

    def __init__(self, features: Callable[[dict], torch.Tensor], example: Tiles, max_tiles: int,
                 device: torch.device, dtype: torch.dtype, stream: torch.cuda.Stream):
        self.shape_key = example.shape_key
        self.stream = stream
        self.sizes = graph_sizes(max_tiles)
        largest = self.sizes[-1]
        # One input buffer for every graph: graph n reads its first n rows. Filled with the example tile so
        # padding rows always hold a real, finite image.
        self._inputs = {k: _to_device(v[:1], device, dtype).repeat(largest, *([1] * (v.dim() - 1)))
                        for k, v in example.tensors.items()}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = None
        with torch.cuda.stream(stream):
            # Largest first: the shared pool grows to the largest graph's needs once, the smaller ones fit in it.
            for size in reversed(self.sizes):
                inputs = {k: v[:size] for k, v in self._inputs.items()}
                # Eager runs first: lazy initialisation (cuBLAS handles, workspaces) must not happen in a capture.
                for _ in range(2):
                    features(inputs)
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                try:
                    # thread_local: the engine's own CUDA calls on other threads of this process stay legal.
                    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                        output = features(inputs)
                except Exception as e:
                    raise ModelLoadError(f"the vision encoder's forward cannot be captured in a CUDA graph "
                                         f"({type(e).__name__}: {e}); start the service with "
                                         f"--no-vision-cuda-graphs to run it eagerly") from None
                pool = graph.pool()
                self._graphs[size] = (graph, output)
        stream.synchronize()

    def run(self, tiles: Tiles) -> torch.Tensor | None:
        """The encoder's output for these tiles, on the device (valid until the next run), or None when no
        graph covers them (other tile shape, or more tiles than the largest graph)."""
        n = len(tiles)
        if tiles.shape_key != self.shape_key:
            return None
        size = next((s for s in self.sizes if s >= n), None)
        if size is None:
            return None
        graph, output = self._graphs[size]
        with torch.cuda.stream(self.stream):
            for k, v in tiles.tensors.items():
                self._inputs[k][:n].copy_(v, non_blocking=v.is_pinned())
            graph.replay()
        return output[:n]


def _to_device(v: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return v.to(device, dtype) if v.is_floating_point() else v.to(device)
