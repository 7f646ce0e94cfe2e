"""Vision encoder replicas (--tp on the vision side): the batcher runs one forward
per replica at once and routes every result to its own callers, a failed
forward fails only its own batch, and closing fails batches in flight; the
encoder loads identical copies, one per device; --tp reaches VisionConfig.

Concurrency is observed with threading barriers and events, never timings: a
test that needs two forwards in flight at once can only pass if they are."""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from PIL import Image

from conftest import IMAGES
from tile_batches import rows as _rows
from tile_batches import submit_and_check_rows
from tile_batches import tiles as _tiles
from vlmserve.cli import build_parser
from vlmserve.cli.serve import engine_config_from_flags, vision_config_from_args
from vlmserve.errors import FailedPreconditionError, InternalError, InvalidArgumentError, ModelLoadError
from vlmserve.vision import VisionConfig, VisionEncoder
from vlmserve.vision.batcher import TileBatcher
from vlmserve.vision.loader import replica_devices
from vlmserve.vision.tiles import Tiles

WAIT_S = 30  # only ever reached when a test is about to fail


def _values(tiles: Tiles) -> list[int]:
    return [int(v) for v in tiles.tensors["pixel_values"][:, 0, 0, 0]]


# -- batcher ----------------------------------------------------------------------------------------

def test_two_replicas_run_forwards_at_once_and_results_reach_their_callers():
    both_running = threading.Barrier(2, timeout=WAIT_S)  # breaks unless two forwards are in flight together
    seen: list[tuple[int, str, list[int]]] = []

    def forward(tiles: Tiles, replica: int) -> torch.Tensor:
        seen.append((replica, threading.current_thread().name, _values(tiles)))
        both_running.wait()
        return _rows(tiles) + 0.5 * replica

    async def main():
        b = TileBatcher(forward, max_tiles=1, window_s=0.0, parallel=2)
        b.start()
        outs = await asyncio.gather(b.submit(_tiles(3)), b.submit(_tiles(7)))
        await b.close()
        return outs

    outs = asyncio.run(main())
    assert sorted(r for r, _, _ in seen) == [0, 1]
    assert len({thread for _, thread, _ in seen}) == 2  # each replica in its own thread
    by_value = {values[0]: replica for replica, _, values in seen}
    assert [o.item() for o in outs] == [30.0 + 0.5 * by_value[3], 70.0 + 0.5 * by_value[7]]


def test_many_callers_over_two_replicas_get_their_own_rows():
    batches: list[tuple[int, int]] = []

    def forward(tiles: Tiles, replica: int) -> torch.Tensor:
        batches.append((replica, len(tiles)))
        return _rows(tiles)

    async def main():
        b = TileBatcher(forward, max_tiles=4, window_s=0.01, parallel=2)
        b.start()
        await submit_and_check_rows(b, [1, 3, 2, 1, 5, 1, 2, 4, 1, 1, 6, 2])

    asyncio.run(main())
    assert sum(n for _, n in batches) == 29 and max(n for _, n in batches) <= 4
    assert {r for r, _ in batches} <= {0, 1}


def test_a_failed_forward_fails_only_its_own_batch():
    both_running = threading.Barrier(2, timeout=WAIT_S)
    replica_of: dict[int, int] = {}
    observed: list[int] = []

    def forward(tiles: Tiles, replica: int) -> torch.Tensor:
        replica_of[_values(tiles)[0]] = replica
        both_running.wait()
        if replica == 1:
            raise RuntimeError("replica 1 failed")
        return _rows(tiles)

    async def main():
        b = TileBatcher(forward, max_tiles=1, window_s=0.0, parallel=2,
                        on_batch=lambda n, s: observed.append(n))
        b.start()
        results = await asyncio.gather(b.submit(_tiles(3)), b.submit(_tiles(7)), return_exceptions=True)
        # Both replicas serve again after the failure.
        b._forward = lambda tiles, replica: _rows(tiles)
        again = await asyncio.gather(b.submit(_tiles(5)), b.submit(_tiles(6)))
        await b.close()
        return results, again

    results, again = asyncio.run(main())
    failed = {v for v, r in zip((3, 7), results) if isinstance(r, Exception)}
    assert failed == {v for v, r in replica_of.items() if r == 1} and len(failed) == 1
    ok = ({3, 7} - failed).pop()
    assert [r for r in results if not isinstance(r, Exception)][0].item() == 10.0 * ok
    assert [str(r) for r in results if isinstance(r, Exception)] == ["replica 1 failed"]
    assert [o.item() for o in again] == [50.0, 60.0]
    assert observed == [1, 1, 1]  # on_batch sees each successful forward, not the failed one


def test_a_batch_is_collected_only_once_a_replica_is_free():
    started = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]
    batches: list[tuple[int, list[int]]] = []

    def forward(tiles: Tiles, replica: int) -> torch.Tensor:
        batches.append((replica, _values(tiles)))
        started[replica].set()
        assert release[replica].wait(WAIT_S)
        return _rows(tiles)

    async def main():
        b = TileBatcher(forward, max_tiles=8, window_s=0.0, parallel=2)
        b.start()
        first = asyncio.ensure_future(b.submit(_tiles(0)))
        assert await asyncio.to_thread(started[0].wait, WAIT_S)
        second = asyncio.ensure_future(b.submit(_tiles(1)))
        assert await asyncio.to_thread(started[1].wait, WAIT_S)
        # Both replicas are busy: these queue (no window to wait out) and go as one batch to the first freed.
        later = [asyncio.ensure_future(b.submit(_tiles(v))) for v in (2, 3, 4)]
        await asyncio.sleep(0)
        release[0].set()
        assert [o.item() for o in await asyncio.gather(first, *later)] == [0.0, 20.0, 30.0, 40.0]
        release[1].set()
        assert (await second).item() == 10.0
        await b.close()

    asyncio.run(main())
    assert batches == [(0, [0]), (1, [1]), (0, [2, 3, 4])]


def test_close_fails_batches_in_flight_and_queued():
    started = [threading.Event(), threading.Event()]
    release = threading.Event()

    def forward(tiles: Tiles, replica: int) -> torch.Tensor:
        started[replica].set()
        assert release.wait(WAIT_S)
        return _rows(tiles)

    async def main():
        b = TileBatcher(forward, max_tiles=1, window_s=0.0, parallel=2)
        b.start()
        running = [asyncio.ensure_future(b.submit(_tiles(v))) for v in (0, 1)]
        for event in started:
            assert await asyncio.to_thread(event.wait, WAIT_S)
        queued = asyncio.ensure_future(b.submit(_tiles(2)))
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(b.close())
        # The callers hear at once; close() itself returns once the running forwards have.
        results = await asyncio.gather(*running, queued, return_exceptions=True)
        assert not closing.done()
        release.set()
        await closing
        with pytest.raises(FailedPreconditionError, match="not running"):
            await b.submit(_tiles(5))
        return results

    results = asyncio.run(main())
    assert [type(r) for r in results] == [FailedPreconditionError] * 3
    assert all("shut down" in str(r) for r in results)


# -- encoder ----------------------------------------------------------------------------------------

def _prepared_tiles(encoder: VisionEncoder) -> Tiles:
    image = Image.open(IMAGES / "chelsea.png").convert("RGB")
    return encoder.prepare(image).tiles


def test_cpu_replicas_are_separate_identical_copies(vlm_dir):
    d = vlm_dir("llava")
    one = VisionEncoder(d, VisionConfig(device="cpu"))
    one.warmup()
    two = VisionEncoder(d, VisionConfig(device="cpu", replicas=2))
    calls = [0, 0]
    for r, model in enumerate(two.models):
        model.multi_modal_projector.register_forward_hook(lambda *_, r=r: calls.__setitem__(r, calls[r] + 1))
    two.warmup()
    assert calls == [1, 1]  # warmup touched every replica
    assert (two.replicas, two.devices, two.device) == (2, [torch.device("cpu")] * 2, torch.device("cpu"))
    assert two.model is two.models[0] and two.models[0] is not two.models[1]
    p0, p1 = (dict(m.named_parameters()) for m in two.models)
    assert p0.keys() == p1.keys() and all(p0[k].data_ptr() != p1[k].data_ptr() for k in p0)

    tiles = _prepared_tiles(two)
    want = one.forward(tiles)
    for r in range(2):
        got = two.forward(tiles, r)
        assert got.device.type == "cpu"
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(InternalError, match="replica 2"):
        two.forward(tiles, 2)


def test_the_service_batches_over_every_replica(start_server):
    server = start_server("llava", device="cpu", replicas=2)
    encoder, batcher, _ = server.server.ready_parts()
    assert (encoder.replicas, batcher.parallel) == (2, 2)
    tiles = _prepared_tiles(encoder)

    async def both():
        return await asyncio.gather(batcher.submit(tiles), batcher.submit(tiles))

    for out in server.run(both()):
        torch.testing.assert_close(out, encoder.forward(tiles), atol=0, rtol=0)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_config_rejects_a_bad_replica_count(bad):
    with pytest.raises(InvalidArgumentError, match="replicas must be a positive integer"):
        VisionConfig(replicas=bad)


def test_cuda_replicas_without_a_gpu_are_a_load_error(vlm_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="torch sees no CUDA device"):
        VisionEncoder(vlm_dir("llava"), VisionConfig(device="cuda", replicas=2))


def test_more_replicas_than_visible_gpus_fail_before_any_weights_load(vlm_dir, monkeypatch):
    def load(*args):
        raise AssertionError("weights were read before the GPU count was checked")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("vlmserve.vision.encoder.load_encoder", load)
    with pytest.raises(ModelLoadError, match=r"2 vision encoder replica\(s\) need cuda:0..cuda:1, but torch sees 1"):
        VisionEncoder(vlm_dir("llava"), VisionConfig(device="cuda", replicas=2))
    with pytest.raises(ModelLoadError, match="need cuda:1, but torch sees 1"):
        VisionEncoder(vlm_dir("llava"), VisionConfig(device="cuda:1"))


def test_replica_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cuda = [torch.device("cuda", i) for i in range(4)]
    assert replica_devices(torch.device("cuda"), 2) == cuda[:2]
    assert replica_devices(torch.device("cuda:1"), 3) == cuda[1:]
    assert replica_devices(torch.device("cpu"), 3) == [torch.device("cpu")] * 3
    with pytest.raises(ModelLoadError, match="need cuda:2..cuda:4, but torch sees 4"):
        replica_devices(torch.device("cuda:2"), 3)


# -- CLI --------------------------------------------------------------------------------------------

def test_tp_sets_vision_replicas_and_in_the_stack_the_engine_split_too(monkeypatch):
    monkeypatch.delenv("VLMSERVE_TP", raising=False)
    vision = build_parser().parse_args(["serve", "vision", "--tp", "2"])
    assert vision_config_from_args(vision).replicas == 2
    stack = build_parser().parse_args(["serve", "stack", "--tp", "2"])
    assert vision_config_from_args(stack).replicas == 2 and engine_config_from_flags(stack).tp == 2
    lm = build_parser().parse_args(["serve", "lm", "--tp", "2"])
    assert engine_config_from_flags(lm).tp == 2
    assert vision_config_from_args(build_parser().parse_args(["serve", "vision"])).replicas == 1

    monkeypatch.setenv("VLMSERVE_TP", "2")
    stack = build_parser().parse_args(["serve", "stack"])
    assert vision_config_from_args(stack).replicas == 2 and engine_config_from_flags(stack).tp == 2
    assert build_parser().parse_args(["serve", "stack", "--tp", "1"]).tp == 1


def test_the_stack_has_one_tp_flag():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    services = next(a for a in sub._actions if a.dest == "service").choices
    for name in ("vision", "lm", "stack"):
        assert [a.dest for a in services[name]._actions if "--tp" in a.option_strings] == ["tp"], name
    stack_tp = next(a for a in services["stack"]._actions if "--tp" in a.option_strings)
    assert "language model" in stack_tp.help and "vision encoder" in stack_tp.help


# -- GPU --------------------------------------------------------------------------------------------

def check_cuda_replicas(directory) -> None:
    """Two fp16 replicas on cuda:0 and cuda:1: each one's weights on its own GPU, the same embeddings from both
    (and through a batcher running both at once)."""
    enc = VisionEncoder(directory, VisionConfig(device="cuda", dtype="float16", replicas=2))
    enc.warmup()
    assert enc.devices == [torch.device("cuda", 0), torch.device("cuda", 1)] and enc.device == enc.devices[0]
    for i, model in enumerate(enc.models):
        assert {p.device for p in model.parameters()} == {torch.device("cuda", i)}
    tiles = _prepared_tiles(enc)
    first, second = enc.forward(tiles, 0), enc.forward(tiles, 1)
    assert first.dtype == torch.float16 and first.device.type == "cpu"
    torch.testing.assert_close(second, first, atol=2e-3, rtol=2e-3)

    async def batched():
        b = TileBatcher(enc.forward, max_tiles=len(tiles), window_s=0.0, parallel=2)
        b.start()
        outs = await asyncio.gather(*(b.submit(tiles) for _ in range(8)))
        await b.close()
        return outs

    for out in asyncio.run(batched()):
        torch.testing.assert_close(out, first, atol=2e-3, rtol=2e-3)


@pytest.mark.gpu
def test_cuda_replicas_one_per_gpu(vlm_dir):
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < 2:
        pytest.skip(f"needs 2 CUDA GPUs for 2 vision encoder replicas: torch sees {visible}")
    check_cuda_replicas(vlm_dir("llava"))
