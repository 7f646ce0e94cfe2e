"""Image preprocessing in worker processes: the same tiles and layout as the
service process computes itself, bad images failing alone with their own error,
and a worker that dies costing a pool, not the service."""
from __future__ import annotations

import asyncio
import contextlib
import io
import os

import grpc
import pytest
import torch
from PIL import Image

import vision_client as vc
from conftest import image_bytes
from vlmserve.errors import InternalError, InvalidArgumentError
from vlmserve.vision import VisionConfig, VisionEncoder
from vlmserve.vision.image_source import ImageSource
from vlmserve.vision.preprocess_pool import PreprocessPool

PHOTOS = (("rocket.jpg", "image/jpeg"), ("chelsea.png", "image/png"), ("camera.png", "image/png"))


def _encoder(directory) -> VisionEncoder:
    enc = VisionEncoder(directory, VisionConfig(device="cpu", preprocess_threads=2))
    enc.warmup()
    return enc


@contextlib.contextmanager
def _running_pool(enc: VisionEncoder, local: bool = False):
    """Worker processes only; with local, also the one image at a time in the service process. Closed after."""
    pool = PreprocessPool(enc.directory, enc.config, enc.tokens_per_tile, enc.preparer if local else None,
                          processes=True)
    try:
        pool.start()
        yield pool
    finally:
        pool.close()


async def _together(pool: PreprocessPool, sources: list[ImageSource]):
    return await asyncio.gather(*(pool.prepare(s) for s in sources))


def _prepare(pool: PreprocessPool, data: bytes, mime: str):
    return asyncio.run(pool.prepare(ImageSource(data=data, mime_type=mime)))


@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_worker_processes_prepare_what_the_service_process_prepares(vlm_dir, family):
    enc = _encoder(vlm_dir(family))
    with _running_pool(enc) as pool:
        assert pool.processes and pool.workers == 2
        for name, mime in PHOTOS:
            got = _prepare(pool, image_bytes(name), mime)
            want = enc.preparer.prepare_source(ImageSource(data=image_bytes(name), mime_type=mime))
            assert got.layout == want.layout
            assert got.tiles.tensors.keys() == want.tiles.tensors.keys()
            for k, v in want.tiles.tensors.items():
                assert torch.equal(got.tiles.tensors[k], v), (name, k)


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
