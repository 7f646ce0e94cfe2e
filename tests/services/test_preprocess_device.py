"""The image processor on the GPU (VisionConfig.preprocess_device): where it is
chosen and refused, and on a GPU that tiles prepared there match the host's and
encode to the same embeddings, alone, batched with others and through the
service.

Tolerances: the GPU resizes in floating point where the host's torchvision may
resize 8-bit pixels with integer rounding, so a normalized pixel value may
differ by about one level of 255 over the normalization's std (~0.02); the pixel
check allows 0.05 with at most 1 % of values off by more than 0.02. Embeddings
of the tiny float32 checkpoints move with them (a network of random weights
amplifies pixel differences).

Measured on the H200 (2026-12-04, transformers 5.17, torchvision): the tiny
checkpoints' 32-pixel tiles within the pixel check, embeddings up to 0.038
apart (llava 0.029) on 1-8 of 2,048-4,096 values; so embeddings are compared
with atol = rtol = 5e-2. The InternVL-2B processor (448 pixels) upscaling the
64×64 noise probe differed by up to 0.327: there auto stays on the host."""
from __future__ import annotations

import asyncio
import io
import types

import grpc
import pytest
import torch
from PIL import Image

import vision_client as vc
from conftest import IMAGES, image_bytes
from vlmserve.cli import build_parser
from vlmserve.cli.serve import vision_config_from_args
from vlmserve.errors import InvalidArgumentError, ModelLoadError
from vlmserve.vision import VisionConfig, VisionEncoder
from vlmserve.vision.image_source import ImageSource
from vlmserve.vision.preparer import MAX_DEVICE_DIFFERENCE
from vlmserve.vision.preprocess_pool import PreprocessPool
from vlmserve.vision.tiles import Tiles

FAMILIES = ["llava", "internvl", "idefics3"]
PIXEL_ATOL = 0.05
EMB_TOL = dict(atol=5e-2, rtol=5e-2)


def test_the_setting_is_validated_and_reaches_the_config():
    assert VisionConfig().preprocess_device == "cpu"  # the GPU only when asked for, until measured in serving
    with pytest.raises(InvalidArgumentError, match="preprocess_device"):
        VisionConfig(preprocess_device="gpu")
    with pytest.raises(InvalidArgumentError, match="cannot be combined with preprocess_processes"):
        VisionConfig(preprocess_device="cuda", preprocess_processes=True)
    parser = build_parser()
    for service in ("vision", "stack"):
        assert vision_config_from_args(parser.parse_args(["serve", service])).preprocess_device == "cpu"
        chosen = parser.parse_args(["serve", service, "--preprocess-device", "auto"])
        assert vision_config_from_args(chosen).preprocess_device == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "vision", "--preprocess-device", "tpu"])


def test_on_the_cpu_auto_prepares_on_the_host(vlm_dir):
    enc = VisionEncoder(vlm_dir("internvl"), VisionConfig(device="cpu", preprocess_device="auto"))
    enc.warmup()
    assert enc.preparer.device is None
    tiles = enc.prepare(Image.open(IMAGES / "chelsea.png").convert("RGB")).tiles
    assert all(v.device.type == "cpu" for v in tiles.tensors.values())


def test_cuda_preprocessing_without_a_cuda_encoder_fails_the_load(vlm_dir):
    enc = VisionEncoder(vlm_dir("llava"), VisionConfig(device="cpu", preprocess_device="cuda"))
    with pytest.raises(ModelLoadError, match="needs the encoder on CUDA"):
        enc.warmup()


def test_a_processor_that_cannot_run_there_stays_on_the_host(vlm_dir):
    enc = VisionEncoder(vlm_dir("llava"), VisionConfig(device="cpu"))
    enc.warmup()
    probe = Image.open(IMAGES / "chelsea.png").convert("RGB")
    preparer = enc.preparer
    if not torch.cuda.is_available():  # no stream to queue on: the probe's own failure must leave the host
        assert "failed there" in preparer.use_device(torch.device("cuda", 0), probe)
        assert preparer.device is None
        preparer._stream = lambda: _NoStream()  # from here on, only the processor's answer decides
    # A processor that ignores the device (as a PIL-backed one does) returns tiles on the host: refused.
    real = preparer.image_processor
    preparer.image_processor = lambda images, device=None, **kw: real(images=images, **kw)
    try:
        assert "ignores the device" in preparer.use_device(torch.device("cuda", 0), probe)
    finally:
        preparer.image_processor = real
    assert preparer.device is None
    assert all(v.device.type == "cpu" for v in enc.prepare(probe).tiles.tensors.values())


class _NoStream:
    """Stands in for a CUDA stream where there is none (torch.cuda.stream of it is a no-op)."""

    def synchronize(self) -> None:
        pass


def test_tiles_on_different_devices_never_share_a_batch():
    host = Tiles({"pixel_values": torch.zeros(1, 3, 8, 8)})
    meta = Tiles({"pixel_values": torch.zeros(1, 3, 8, 8, device="meta")})
    assert host.shape_key == meta.shape_key  # the same inputs for a forward's graph...
    assert host.batch_key != meta.batch_key  # ...but never concatenated together


def test_gpu_preprocessing_prepares_in_threads_of_the_service(vlm_dir):
    enc = VisionEncoder(vlm_dir("llava"), VisionConfig(device="cpu"))
    enc.warmup()
    # What for_encoder sees of an encoder whose processor runs on a GPU.
    on_gpu = types.SimpleNamespace(config=VisionConfig(), device=torch.device("cuda"), directory=enc.directory,
                                   tokens_per_tile=enc.tokens_per_tile,
                                   preparer=types.SimpleNamespace(device=torch.device("cuda")))
    pool = PreprocessPool.for_encoder(on_gpu)
    try:
        assert not pool.processes
    finally:
        pool.close()


# -- on a GPU -----------------------------------------------------------------------------------------

def _pair(directory, **kw) -> tuple[VisionEncoder, VisionEncoder]:
    """The same checkpoint with its image processor on the GPU and on the host."""
    gpu = VisionEncoder(directory, VisionConfig(device="cuda", preprocess_device="cuda", **kw))
    host = VisionEncoder(directory, VisionConfig(device="cuda", preprocess_device="cpu", **kw))
    gpu.warmup()
    host.warmup()
    return gpu, host


def _assert_pixels_close(got: Tiles, want: Tiles) -> None:
    assert got.shape_key == want.shape_key
    for k, w in want.tensors.items():
        g = got.tensors[k].cpu()
        if not w.is_floating_point():
            assert torch.equal(g, w), k
            continue
        diff = (g.double() - w.double()).abs()
        assert float(diff.max()) <= PIXEL_ATOL, (k, float(diff.max()), float(diff.mean()))
        assert float((diff > 0.02).double().mean()) <= 0.01, (k, float((diff > 0.02).double().mean()))


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_tiles_prepared_on_the_gpu_match_the_hosts(vlm_dir, family):
    from transformers.image_utils import PILImageResampling

    directory = vlm_dir(family)
    host = VisionEncoder(directory, VisionConfig(device="cuda", preprocess_device="cpu"))
    host.warmup()
    if getattr(host.image_processor, "resample", None) == PILImageResampling.LANCZOS:
        # No GPU form of Lanczos resampling (the GPU would resample otherwise): auto stays on the host (on the
        # H200, 2026-12-04 19:30, it did).
        auto = VisionEncoder(directory, VisionConfig(device="cuda", preprocess_device="auto"))
        auto.warmup()
        assert auto.preparer.device is None
        # Asked for, it runs there all the same with the difference said, or, where the processor cannot take
        # the device at all, the load fails saying so.
        forced = VisionEncoder(directory, VisionConfig(device="cuda", preprocess_device="cuda"))
        try:
            forced.warmup()
        except ModelLoadError as e:
            assert "cannot run on cuda" in str(e) and "differ" not in str(e)
        else:
            assert forced.preparer.device.type == "cuda"
            assert forced.preparer.device_difference > MAX_DEVICE_DIFFERENCE
        return
    gpu = VisionEncoder(directory, VisionConfig(device="cuda", preprocess_device="cuda"))
    gpu.warmup()
    assert gpu.preparer.device.type == "cuda" and host.preparer.device is None
    # Real photos of several sizes and aspect ratios (tiling differs between them for InternVL and Idefics3).
    photo = Image.open(IMAGES / "chelsea.png").convert("RGB")
    images = [photo, photo.resize((512, 512)), photo.crop((0, 0, 300, 120)), photo.resize((900, 400)),
              Image.open(IMAGES / "rocket.jpg").convert("RGB")]
    for image in images:
        got, want = gpu.prepare(image), host.prepare(image)
        assert got.layout == want.layout
        assert all(v.device == gpu.preparer.device for v in got.tiles.tensors.values())
        _assert_pixels_close(got.tiles, want.tiles)
        torch.testing.assert_close(gpu.forward(got.tiles), host.forward(want.tiles), **EMB_TOL)


@pytest.mark.gpu
def test_a_processor_whose_values_differ_there_stays_on_the_host(vlm_dir):
    enc = VisionEncoder(vlm_dir("llava"), VisionConfig(device="cuda", preprocess_device="cpu"))
    enc.warmup()
    real = enc.preparer.image_processor

    def shifted(images, **kw):  # as if another resampling filter ran there
        out = real(images=images, **kw)
        out["pixel_values"] = out["pixel_values"] + (0.5 if kw.get("device") is not None else 0.0)
        return out

    enc.preparer.image_processor = shifted
    probe = Image.open(IMAGES / "chelsea.png").convert("RGB")
    assert "differ from the host's by up to 0.5" in enc.preparer.use_device(enc.device, probe)
    assert enc.preparer.device is None
    assert enc.preparer.use_device(enc.device, probe, exact=False) is None  # what preprocess_device "cuda" asks
    # 0.5 on top of the GPU's own difference from the host (within the pixel tolerance)
    assert enc.preparer.device == enc.device and 0.5 <= enc.preparer.device_difference <= 0.5 + PIXEL_ATOL


@pytest.mark.gpu
def test_gpu_tiles_batch_together_and_each_keeps_its_own_encoding(vlm_dir):
    gpu, host = _pair(vlm_dir("internvl"), max_batch_size=16)
    photo = Image.open(IMAGES / "chelsea.png").convert("RGB")
    crops = [photo.crop((7 * i, 5 * i, photo.width - 3 * i, photo.height - 2 * i)) for i in range(6)]
    parts = [gpu.prepare(c).tiles for c in crops]
    together = gpu.forward(Tiles.cat(parts))  # joined on the GPU, replayed from a graph
    offset = 0
    for crop, part in zip(crops, parts):
        n = len(part)
        torch.testing.assert_close(together[offset:offset + n], gpu.forward(part), atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(together[offset:offset + n], host.forward(host.prepare(crop).tiles), **EMB_TOL)
        offset += n


def test_the_service_reports_where_its_image_processor_runs(start_server):
    server = start_server("llava", device="cpu")
    assert "vlmserve_vision_preprocess_on_gpu 0.0" in server.metrics_text()


@pytest.mark.gpu
def test_the_service_encodes_images_prepared_on_the_gpu(start_server, vlm_dir):
    server = start_server("internvl", device="cuda", preprocess_device="cuda", preprocess_threads=4)
    pool = server.server.preprocess_pool
    assert not pool.processes and server.server.encoder.preparer.device.type == "cuda"
    assert "vlmserve_vision_preprocess_on_gpu 1.0" in server.metrics_text()
    jpeg = image_bytes("rocket.jpg")
    many = [image_bytes("chelsea.png")] * 5
    with grpc.insecure_channel(server.address) as channel:
        stub = vc.stub(channel)
        one, _ = vc.encode(stub, [vc.image_input(jpeg, "image/jpeg")])
        with pytest.raises(grpc.RpcError) as bad:
            vc.encode(stub, [vc.image_input(b"not an image", "image/png")])
        several, _ = vc.encode(stub, [vc.image_input(d, "image/png") for d in many])
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "images[0]" in bad.value.details()
    host = VisionEncoder(vlm_dir("internvl"), VisionConfig(device="cuda", preprocess_device="cpu"))
    host.warmup()
    want = host.encode([Image.open(io.BytesIO(jpeg)).convert("RGB")])[0]
    assert one[0].header.num_tokens == want.layout.num_tokens
    torch.testing.assert_close(one[0].embeddings.float(), want.embeddings.float(), **EMB_TOL)
    want_many = host.encode([Image.open(io.BytesIO(many[0])).convert("RGB")])[0]
    for got in several:
        torch.testing.assert_close(got.embeddings.float(), want_many.embeddings.float(), **EMB_TOL)


@pytest.mark.gpu
def test_concurrent_preparing_threads_get_their_own_results(vlm_dir):
    gpu, _ = _pair(vlm_dir("llava"))
    pool = PreprocessPool.for_encoder(gpu)
    sources = [ImageSource(data=image_bytes(n), mime_type=m)
               for n, m in (("rocket.jpg", "image/jpeg"), ("chelsea.png", "image/png"),
                            ("camera.png", "image/png"))] * 4
    try:
        outs = asyncio.run(_gather(pool, sources))
    finally:
        pool.close()
    for source, out in zip(sources, outs):
        want = gpu.preparer.prepare_source(source)
        for k, v in want.tiles.tensors.items():
            assert torch.equal(out.tiles.tensors[k], v), k


async def _gather(pool, sources):
    return await asyncio.gather(*(pool.prepare(s) for s in sources))
