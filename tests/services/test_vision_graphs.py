"""CUDA graphs of the vision encoder (vision/graphs.py): which batch sizes are
captured, the flag that turns them off, and on a GPU that a replayed forward
gives each tile what an eager forward gives it, for every batch size (exact
graphs and padded ones), distinct tiles in one batch, batches beyond the largest
graph, families that cannot be captured, and a forward that breaks capture.

Tolerance: graph and eager runs of one batch size use the same kernels, but a
padded batch (9 tiles in the 16-tile graph) may get other GEMM tilings, so rows
are compared with atol = rtol = 1e-3 (the tiny checkpoints compute in float32)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import IMAGES
from vlmserve.cli import build_parser
from vlmserve.cli.serve import vision_config_from_args
from vlmserve.errors import InvalidArgumentError
from vlmserve.vision import VisionConfig, VisionEncoder
from vlmserve.vision.graphs import graph_sizes
from vlmserve.vision.tiles import Tiles

TOL = dict(atol=1e-3, rtol=1e-3)
# Compiled kernels fuse chains of fp16 operations and round once where eager rounds after each.
COMPILED_TOL = dict(atol=1e-2, rtol=1e-2)
MAX_TILES = 16


def test_graph_sizes_cover_every_batch_up_to_the_limit():
    assert graph_sizes(1) == [1]
    assert graph_sizes(3) == [1, 2, 3]
    assert graph_sizes(16) == [1, 2, 3, 4, 5, 6, 7, 8, 16]
    assert graph_sizes(20) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 20]
    assert graph_sizes(32) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32]
    for limit in range(1, 70):
        sizes = graph_sizes(limit)
        assert sizes == sorted(set(sizes)) and sizes[-1] == limit
        # padding is never more than 7 tiles
        assert all(min(s for s in sizes if s >= n) - n < 8 for n in range(1, limit + 1))


def test_cuda_graphs_flag_reaches_the_config_and_is_validated():
    parser = build_parser()
    for service in ("vision", "stack"):
        on = parser.parse_args(["serve", service])
        off = parser.parse_args(["serve", service, "--no-vision-cuda-graphs"])
        assert vision_config_from_args(on).cuda_graphs is True
        assert vision_config_from_args(off).cuda_graphs is False
        assert vision_config_from_args(on).compile is False
        assert vision_config_from_args(parser.parse_args(["serve", service, "--vision-compile"])).compile is True
    with pytest.raises(InvalidArgumentError, match="cuda_graphs"):
        VisionConfig(cuda_graphs="yes")
    with pytest.raises(InvalidArgumentError, match="compile"):
        VisionConfig(compile=1)


def test_no_graphs_on_the_cpu(vlm_dir):
    enc = VisionEncoder(vlm_dir("llava"), VisionConfig(device="cpu", compile=True))
    enc.warmup()
    assert not enc.cuda_graphs
    assert not enc.compiled  # compilation is for CUDA only


# -- on a GPU -----------------------------------------------------------------------------------------

def _photo_tiles(enc: VisionEncoder, count: int) -> Tiles:
    """count distinct tiles: crops of a real photo through the model's own processor (which may cut one crop
    into several tiles)."""
    photo = Image.open(IMAGES / "chelsea.png").convert("RGB")
    parts = []
    for i in range(count):
        box = (3 * i, 2 * i, photo.width - 5 * i, photo.height - 4 * i)
        parts.append(enc.prepare(photo.crop(box)).tiles)
    return Tiles({k: v[:count] for k, v in Tiles.cat(parts).tensors.items()})


def _encoders(directory: Path) -> tuple[VisionEncoder, VisionEncoder]:
    graphed = VisionEncoder(directory, VisionConfig(device="cuda", max_batch_size=MAX_TILES))
    eager = VisionEncoder(directory, VisionConfig(device="cuda", max_batch_size=MAX_TILES, cuda_graphs=False))
    graphed.warmup()
    eager.warmup()
    return graphed, eager


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_replayed_forward_matches_eager_for_every_batch_size(vlm_dir, family):
    graphed, eager = _encoders(vlm_dir(family))
    assert graphed.cuda_graphs and not eager.cuda_graphs
    tiles = _photo_tiles(graphed, MAX_TILES + 4)
    singles = [eager.forward(t) for t in tiles.split(1)]
    # every size 1..16: the exact graphs 1-8 and the padded 16-tile graph; then 20, beyond every graph (eager)
    for n in list(range(1, MAX_TILES + 1)) + [MAX_TILES + 4]:
        batch = Tiles({k: v[:n] for k, v in tiles.tensors.items()})
        out = graphed.forward(batch)
        assert out.shape == (n, graphed.tokens_per_tile, graphed.hidden_size) and out.device.type == "cpu"
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, eager.forward(batch), **TOL)
        for i in range(n):  # each row is its own tile's encoding: no mixing with padding or neighbours
            torch.testing.assert_close(out[i:i + 1], singles[i], **TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_compiled_forward_matches_eager_for_every_batch_size(vlm_dir, family):
    directory = vlm_dir(family)
    compiled = VisionEncoder(directory, VisionConfig(device="cuda", max_batch_size=MAX_TILES, compile=True))
    eager = VisionEncoder(directory, VisionConfig(device="cuda", max_batch_size=MAX_TILES, cuda_graphs=False))
    compiled.warmup()
    eager.warmup()
    assert compiled.compiled and compiled.cuda_graphs and not eager.compiled
    tiles = _photo_tiles(compiled, MAX_TILES + 4)
    # the graphs of compiled code (1..16) and, at 20, the compiled forward run directly
    for n in [1, 2, 3, 7, 8, 11, MAX_TILES, MAX_TILES + 4]:
        batch = Tiles({k: v[:n] for k, v in tiles.tensors.items()})
        out = compiled.forward(batch)
        assert out.shape == (n, compiled.tokens_per_tile, compiled.hidden_size) and torch.isfinite(out).all()
        torch.testing.assert_close(out, eager.forward(batch), **COMPILED_TOL)


@pytest.mark.gpu
def test_a_result_survives_later_replays(vlm_dir):
    graphed, _ = _encoders(vlm_dir("internvl"))
    tiles = _photo_tiles(graphed, 3)
    first = graphed.forward(Tiles({k: v[:2] for k, v in tiles.tensors.items()}))
    kept = first.clone()
    graphed.forward(Tiles({k: v[1:3] for k, v in tiles.tensors.items()}))  # same 2-tile graph, other tiles
    graphed.forward(Tiles({k: v[:1] for k, v in tiles.tensors.items()}))
    assert torch.equal(first, kept)
    assert not torch.equal(first[0], first[1])  # distinct tiles give distinct rows


@pytest.mark.gpu
def test_families_that_cannot_be_captured_run_eagerly(vlm_dir):
    enc = VisionEncoder(vlm_dir("idefics3"), VisionConfig(device="cuda"))
    enc.warmup()
    assert not enc.cuda_graphs
    # Tiles shaped as the processor makes them, with random pixels (never all zero, which Idefics3 drops as padding).
    image = Image.fromarray(torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy())
    shaped = enc.prepare(image).tiles
    tiles = Tiles({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in shaped.tensors.items()})
    out = enc.forward(tiles)
    assert out.shape[0] == len(tiles) and torch.isfinite(out).all()


@pytest.mark.gpu
def test_a_forward_that_breaks_capture_fails_the_load_with_the_way_out(vlm_dir):
    # In a child process: a failed capture may leave CUDA state this test process should not inherit.
    script = textwrap.dedent(f"""
        import dataclasses, sys
        from vlmserve.errors import ModelLoadError
        from vlmserve.vision import VisionConfig, VisionEncoder
        enc = VisionEncoder({str(vlm_dir("llava"))!r}, VisionConfig(device="cuda"))
        real = enc.family.features
        def host_sync(model, tiles):  # .item() waits on the GPU: illegal while capturing
            out = real(model, tiles)
            return out * (out.abs().max().item() > -1)
        enc.family = dataclasses.replace(enc.family, features=host_sync)
        try:
            enc.warmup()
        except ModelLoadError as e:
            print("ModelLoadError:", e)
            sys.exit(3)
        sys.exit(0)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "cannot be captured in a CUDA graph" in done.stdout and "--no-vision-cuda-graphs" in done.stdout
