"""Image preprocessing in worker processes: the same tiles and layout as the
service process computes itself (through the result pipe and through shared
memory), bad images failing alone with their own error, a worker that dies
costing a pool, not the service, and no shared-memory block left behind."""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time

import grpc
import pytest
import torch
from PIL import Image

import vision_client as vc
from conftest import image_bytes
from vlmserve.errors import InternalError, InvalidArgumentError
from vlmserve.vision import VisionConfig, VisionEncoder
from vlmserve.vision.image_source import ImageSource
from vlmserve.vision.preprocess_pool import SHM_DIR, PreprocessPool, remove_orphan_blocks

PHOTOS = (("rocket.jpg", "image/jpeg"), ("chelsea.png", "image/png"), ("camera.png", "image/png"))


def _encoder(directory) -> VisionEncoder:
    enc = VisionEncoder(directory, VisionConfig(device="cpu", preprocess_threads=2))
    enc.warmup()
    return enc


def _our_blocks() -> list:
    return sorted(SHM_DIR.glob(f"vlm-tiles-{os.getpid()}-*"))


@contextlib.contextmanager
def _running_pool(enc: VisionEncoder, local: bool = False, transfer: str = "shared"):
    """Worker processes only; with local, also the one image at a time in the service process. Closed after.
    transfer "shared": every array through shared memory (the test models' tiles are smaller than the
    threshold), "pipe": every array through the result pipe."""
    pool = PreprocessPool(enc.directory, enc.config, enc.tokens_per_tile, enc.preparer if local else None,
                          processes=True, shared_tiles=transfer == "shared")
    if transfer == "shared":
        assert pool.shared_from is not None, "this machine has no /dev/shm"
        pool.shared_from = 0
    try:
        pool.start()
        yield pool
    finally:
        pool.close()


async def _together(pool: PreprocessPool, sources: list[ImageSource]):
    return await asyncio.gather(*(pool.prepare(s) for s in sources))


def _prepare(pool: PreprocessPool, data: bytes, mime: str):
    return asyncio.run(pool.prepare(ImageSource(data=data, mime_type=mime)))


@pytest.mark.parametrize("transfer", ["shared", "pipe"])
@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_worker_processes_prepare_what_the_service_process_prepares(vlm_dir, family, transfer):
    enc = _encoder(vlm_dir(family))
    with _running_pool(enc, transfer=transfer) as pool:
        assert pool.processes and pool.workers == 2
        for name, mime in PHOTOS:
            got = _prepare(pool, image_bytes(name), mime)
            want = enc.preparer.prepare_source(ImageSource(data=image_bytes(name), mime_type=mime))
            assert got.layout == want.layout
            assert got.tiles.tensors.keys() == want.tiles.tensors.keys()
            for k, v in want.tiles.tensors.items():
                assert torch.equal(got.tiles.tensors[k], v), (name, k)
        assert _our_blocks() == []  # each block unlinked once its tiles arrived


def test_images_whose_requests_went_away_leave_no_shared_memory(vlm_dir):
    enc = _encoder(vlm_dir("internvl"))
    sources = [ImageSource(data=image_bytes(name), mime_type=mime) for name, mime in PHOTOS * 4]

    async def give_up_early(pool):
        tasks = [asyncio.ensure_future(pool.prepare(s)) for s in sources]
        await asyncio.sleep(0.05)  # some are in the workers by now, the rest queued
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    with _running_pool(enc) as pool:
        asyncio.run(give_up_early(pool))
        pool._pool.shutdown(wait=True)  # the images the workers had started arrive, and nobody takes them
    assert _our_blocks() == []


def test_left_over_blocks_are_removed_and_fresh_ones_kept(tmp_path):
    old, fresh, other = (tmp_path / "vlm-tiles-4242-ab12", tmp_path / f"vlm-tiles-{os.getpid()}-cd34",
                         tmp_path / "psm_12345")
    for f in (old, fresh, other):
        f.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for f in (old, other):
        os.utime(f, (hour_ago, hour_ago))
    assert remove_orphan_blocks(tmp_path) == 1
    assert not old.exists() and fresh.exists() and other.exists()


def test_an_array_goes_through_the_pipe_when_shared_memory_has_no_room(monkeypatch):
    import numpy as np

    from vlmserve.vision import preprocess_pool as pp

    array = np.arange(1 << 16, dtype=np.float32).reshape(1, 256, 256)
    monkeypatch.setattr(pp, "_owner_pid", os.getpid())
    monkeypatch.setattr(pp, "_shm_free_bytes", lambda: array.nbytes)  # less than the array and the headroom
    assert pp._to_shared(array, 0) is array
    monkeypatch.setattr(pp, "_shm_free_bytes", lambda: 1 << 40)
    shared = pp._to_shared(array, 0)
    assert isinstance(shared, tuple)
    back = pp._from_shared({"pixel_values": shared})["pixel_values"]
    assert torch.equal(back, torch.from_numpy(array)) and _our_blocks() == []


def test_a_lone_image_stays_in_the_service_process_and_the_rest_go_to_workers(vlm_dir):
    enc = _encoder(vlm_dir("internvl"))
    calls = []
    real = enc.preparer.prepare_source
    enc.preparer.prepare_source = lambda source: calls.append(source) or real(source)
    sources = [ImageSource(data=image_bytes(name), mime_type=mime) for name, mime in PHOTOS]

    with _running_pool(enc, local=True) as pool:
        alone = _prepare(pool, image_bytes("rocket.jpg"), "image/jpeg")
        assert len(calls) == 1  # prepared here, not sent to a worker
        outs = asyncio.run(_together(pool, sources))
    assert len(calls) == 2  # of three at once, one here and two in workers
    for source, out in zip(sources, outs):
        want = real(source)
        assert out.layout == want.layout and torch.equal(out.tiles.tensors["pixel_values"],
                                                         want.tiles.tensors["pixel_values"])
    assert alone.layout == outs[0].layout


def test_a_bad_image_fails_alone_with_its_own_error(vlm_dir):
    enc = _encoder(vlm_dir("llava"))
    with _running_pool(enc) as pool:
        with pytest.raises(InvalidArgumentError, match="cannot be decoded|not a valid|decode"):
            _prepare(pool, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")
        with pytest.raises(InvalidArgumentError, match="unsupported image MIME type"):
            _prepare(pool, image_bytes("rocket.jpg"), "image/tiff")
        good = _prepare(pool, image_bytes("rocket.jpg"), "image/jpeg")
        assert len(good.tiles) >= 1 and pool.replaced == 0


def test_a_worker_that_dies_costs_its_pool_not_the_service(vlm_dir):
    enc = _encoder(vlm_dir("llava"))
    with _running_pool(enc) as pool:
        # A task that kills its worker, as a crash inside a decoder would: tried on a second pool, then failed.
        with pytest.raises(InternalError, match="stopped unexpectedly twice"):
            asyncio.run(pool._run(os._exit, 3))
        assert pool.replaced == 2
        after = _prepare(pool, image_bytes("chelsea.png"), "image/png")
        assert after.layout.num_tokens == enc.tokens_per_tile * after.layout.num_tiles


def test_the_default_is_threads_on_the_cpu(vlm_dir):
    enc = _encoder(vlm_dir("llava"))
    pool = PreprocessPool.for_encoder(enc)
    assert not pool.processes
    pool.close()
    with pytest.raises(InvalidArgumentError, match="preprocess_processes"):
        VisionConfig(preprocess_processes="yes")


def test_the_service_encodes_through_worker_processes(start_server, vlm_dir):
    server = start_server("internvl", preprocess_processes=True, preprocess_threads=2)
    jpeg = image_bytes("rocket.jpg")
    with grpc.insecure_channel(server.address) as channel:
        stub = vc.stub(channel)
        out, _ = vc.encode(stub, [vc.image_input(jpeg, "image/jpeg")])
        with pytest.raises(grpc.RpcError) as bad:
            vc.encode(stub, [vc.image_input(b"not an image", "image/png")])
        again, _ = vc.encode(stub, [vc.image_input(jpeg, "image/jpeg")])
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "images[0]" in bad.value.details()
    want = _encoder(vlm_dir("internvl")).encode([Image.open(io.BytesIO(jpeg)).convert("RGB")])[0]
    for got in (out[0], again[0]):
        assert got.header.num_tokens == want.layout.num_tokens
        torch.testing.assert_close(got.embeddings, want.embeddings, atol=1e-5, rtol=1e-5)
