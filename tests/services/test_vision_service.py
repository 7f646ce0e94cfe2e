"""vlm.v1.VisionService over real gRPC on loopback: Encode returns what the runner
computes, concurrent requests share batches without changing any output, and every
kind of bad input gets its status code and a clear message while good streams that
run at the same time complete unharmed."""
from __future__ import annotations

import base64
import concurrent.futures
import io
import threading

import grpc
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import vision_client as vc
from conftest import IMAGES, encoded, image_bytes, variants
from test_image_input import png_header
from vlmserve.services import protos
from vlmserve.vision import VisionConfig, VisionEncoder

# Batched and unbatched fp32 forwards may differ in the last bits (GEMM blocking depends
# on the batch size); on this CPU they are bit-identical, the tolerance is for others.
FP32_TOL = dict(atol=1e-5, rtol=1e-5)


def _reference(directory, images: list[bytes]) -> list[torch.Tensor]:
    enc = VisionEncoder(directory, VisionConfig(device="cpu"))
    enc.warmup()
    return [enc.encode([Image.open(io.BytesIO(b)).convert("RGB")])[0] for b in images]


def _metric(text: str, name: str, labels: dict | None = None) -> dict[str, float]:
    """{sample name: value} of one metric family, filtered by labels."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return {s.name + str(sorted(s.labels.items())): s.value for s in family.samples
                    if all(s.labels.get(k) == v for k, v in (labels or {}).items())}
    return {}


@pytest.mark.parametrize("family", ["llava", "idefics3", "internvl"])
def test_encode_equals_the_runner(start_server, vlm_dir, family):
    server = start_server(family)
    jpeg, png = image_bytes("rocket.jpg"), image_bytes("chelsea.png")
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    with grpc.insecure_channel(server.address) as channel:
        # A small chunk limit: the tensors arrive in several chunks.
        out, summary = vc.encode(vc.stub(channel), [vc.image_input(jpeg, "image/jpeg"), vc.image_input(url=data_url)],
                                 max_chunk_bytes=4096)
    want = _reference(vlm_dir(family), [jpeg, png])
    assert [o.header.image_index for o in out] == [0, 1]
    for got, ref in zip(out, want):
        h = got.header
        assert list(h.shape) == [ref.layout.num_tokens, ref.embeddings.shape[1]] and h.num_tokens == h.shape[0]
        assert h.dtype == 1 and h.family == {"llava": 1, "idefics3": 2, "internvl": 3}[family]
        lay = ref.layout
        assert (h.layout.num_tokens, h.layout.num_tiles, h.layout.tokens_per_tile, h.layout.grid_rows,
                h.layout.grid_cols, h.layout.has_global_tile, h.layout.image_width, h.layout.image_height) == (
            lay.num_tokens, lay.num_tiles, lay.tokens_per_tile, lay.grid_rows, lay.grid_cols, lay.has_global_tile,
            lay.image_width, lay.image_height)
        torch.testing.assert_close(got.embeddings, ref.embeddings, **FP32_TOL)
    assert summary.num_images == 2 and summary.num_tokens == sum(o.header.num_tokens for o in out)
    assert summary.total_ns >= summary.preprocess_ns + summary.encode_ns > 0


def test_output_dtype_conversion(start_server):
    server = start_server("llava")
    with grpc.insecure_channel(server.address) as channel:
        full, _ = vc.encode(vc.stub(channel), [vc.image_input(image_bytes("chelsea.png"))])
        half, _ = vc.encode(vc.stub(channel), [vc.image_input(image_bytes("chelsea.png"))], dtype=3)
    assert half[0].header.dtype == 3 and half[0].header.num_bytes * 2 == full[0].header.num_bytes
    assert torch.equal(half[0].embeddings, full[0].embeddings.to(torch.bfloat16))


def test_32_concurrent_requests_run_in_batches_with_unbatched_outputs(start_server, vlm_dir):
    server = start_server("llava", max_batch_size=8, batch_window_ms=20.0)
    images = variants(32)
    with grpc.insecure_channel(server.address) as channel:
        stub = vc.stub(channel)
        barrier = threading.Barrier(32)

        def one(data: bytes):
            barrier.wait()
            return vc.encode(stub, [vc.image_input(data)])[0][0].embeddings

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            outputs = list(pool.map(one, images))
    for got, ref in zip(outputs, _reference(vlm_dir("llava"), images)):
        torch.testing.assert_close(got, ref.embeddings, **FP32_TOL)
    sizes = _metric(server.metrics_text(), "vlmserve_vision_batch_size")
    count, total = sizes["vlmserve_vision_batch_size_count[]"], sizes["vlmserve_vision_batch_size_sum[]"]
    singles = sizes["vlmserve_vision_batch_size_bucket[('le', '1.0')]"]
    assert total == 32, "every image is one LLaVA tile"
    assert count < 32 and count - singles > 0, f"no batch held more than one tile: {sizes}"
    assert _metric(server.metrics_text(), "vlmserve_vision_images")["vlmserve_vision_images_total[]"] == 32
    # Each request's two waiting stages are recorded once, and fit inside its Encode time.
    text = server.metrics_text()
    stages = [_metric(text, f"vlmserve_vision_{n}_seconds") for n in ("preprocess", "batched_encode")]
    encode = _metric(text, "vlmserve_vision_encode_seconds")
    for m, name in zip(stages, ("preprocess", "batched_encode")):
        assert m[f"vlmserve_vision_{name}_seconds_count[]"] == 32
        assert m[f"vlmserve_vision_{name}_seconds_sum[]"] > 0
    assert sum(m[k] for m in stages for k in m if k.endswith("_sum[]")) <= encode["vlmserve_vision_encode_seconds_sum[]"]
    # The event loop's lag is sampled all along (every 10 ms while the server runs).
    lag = _metric(text, "vlmserve_event_loop_lag_seconds")
    assert lag["vlmserve_event_loop_lag_seconds_count[]"] > 0 and lag["vlmserve_event_loop_lag_seconds_sum[]"] >= 0


def test_tiled_images_count_by_tiles(start_server):
    server = start_server("idefics3", max_batch_size=4)
    with grpc.insecure_channel(server.address) as channel:
        out, _ = vc.encode(vc.stub(channel), [vc.image_input(image_bytes("rocket.jpg"), "image/jpeg")])
    assert out[0].header.layout.num_tiles == 5
    sizes = _metric(server.metrics_text(), "vlmserve_vision_batch_size")
    assert sizes["vlmserve_vision_batch_size_sum[]"] == 5 and sizes["vlmserve_vision_batch_size_count[]"] == 2


LIMITS = dict(max_images_per_request=4, max_image_pixels=100_000, max_message_bytes=1 << 20)
_big = encoded(Image.open(IMAGES / "rocket.jpg").convert("RGB"))  # 640x427 = 273,280 pixels
_small = variants(1, size=(200, 150))[0]
BAD_REQUESTS = [
    ("corrupt bytes", dict(images=[vc.image_input(b"\x89PNG\r\n\x1a\n" + b"\x13" * 400)]),
     grpc.StatusCode.INVALID_ARGUMENT, "images[0]: could not decode the image/png image"),
    ("truncated bytes", dict(images=[vc.image_input(_small[:len(_small) // 2])]),
     grpc.StatusCode.INVALID_ARGUMENT, "images[0]: could not decode the image/png image"),
    ("unsupported MIME type", dict(images=[vc.image_input(image_bytes("rocket.jpg"), "image/tiff")]),
     grpc.StatusCode.INVALID_ARGUMENT, "unsupported image MIME type 'image/tiff'"),
    ("1x1 image", dict(images=[vc.image_input(encoded(Image.new("RGB", (1, 1))))]),
     grpc.StatusCode.INVALID_ARGUMENT, "1x1 pixels; the smallest accepted is 2x2"),
    ("over the pixel limit", dict(images=[vc.image_input(_big)]),
     grpc.StatusCode.INVALID_ARGUMENT, "640x427 = 273280 pixels, over the limit of 100000"),
    ("decompression bomb header", dict(images=[vc.image_input(png_header(50000, 50000))]),
     grpc.StatusCode.INVALID_ARGUMENT, "over the limit of 100000 pixels"),
    ("too many images", dict(images=[vc.image_input(encoded(Image.new("RGB", (8, 8))))] * 5),
     grpc.StatusCode.INVALID_ARGUMENT, "the request has 5 images; at most 4 are accepted"),
    ("no images", dict(images=[]), grpc.StatusCode.INVALID_ARGUMENT, "the request has no images"),
    ("unknown dtype value", dict(images=[vc.image_input(encoded(Image.new("RGB", (8, 8))))], dtype=42),
     grpc.StatusCode.INVALID_ARGUMENT, "dtype has unknown value 42"),
    ("image without a source", dict(images=[protos.common().ImageInput(mime_type="image/png")]),
     grpc.StatusCode.INVALID_ARGUMENT, "images[0] has neither data nor url"),
    ("bad data URL", dict(images=[vc.image_input(url="data:image/png;base64,%%%")]),
     grpc.StatusCode.INVALID_ARGUMENT, "not valid base64"),
    ("URL fetching off", dict(images=[vc.image_input(url="http://10.0.0.1/x.png")]),
     grpc.StatusCode.INVALID_ARGUMENT, "fetching image URLs is disabled"),
    ("oversized message", dict(images=[vc.image_input(b"\0" * (1 << 20) + b"\0" * 4096)]),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]


def test_bad_input_gets_its_status_while_good_streams_complete(start_server, vlm_dir):
    server = start_server("idefics3", **LIMITS)
    good = variants(4, size=(120, 90))
    want = _reference(vlm_dir("idefics3"), good)
    stop = threading.Event()
    rounds = [0] * 3

    with grpc.insecure_channel(server.address) as channel:
        stub = vc.stub(channel)

        def good_streams(worker: int) -> None:
            while not stop.is_set() or rounds[worker] == 0:
                out, _ = vc.encode(stub, [vc.image_input(d) for d in good], max_chunk_bytes=1024)
                for got, ref in zip(out, want):
                    torch.testing.assert_close(got.embeddings, ref.embeddings, **FP32_TOL)
                rounds[worker] += 1

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            workers = [pool.submit(good_streams, i) for i in range(3)]
            failures = []
            for name, fields, code, message in BAD_REQUESTS:
                with pytest.raises(grpc.RpcError) as err:
                    vc.encode(stub, **fields)
                if err.value.code() != code or message not in err.value.details():
                    failures.append(f"{name}: {err.value.code()} {err.value.details()!r}")
            stop.set()
            for w in workers:
                w.result(timeout=120)  # re-raises a good stream's failure
    assert not failures, failures
    assert all(r >= 1 for r in rounds)
    handled = _metric(server.metrics_text(), "vlmserve_grpc_server_handled",
                      {"grpc_method": "/vlm.v1.VisionService/Encode"})
    assert handled["vlmserve_grpc_server_handled_total[('grpc_code', 'INVALID_ARGUMENT'), " +
                   "('grpc_method', '/vlm.v1.VisionService/Encode')]"] == 12


def test_info_and_request_id(start_server):
    server = start_server("internvl", max_batch_size=6)
    pb = protos.vision()
    with grpc.insecure_channel(server.address) as channel:
        info = vc.stub(channel).Info(pb.VisionInfoRequest())
        call = vc.stub(channel).Encode(pb.EncodeRequest(images=[vc.image_input(image_bytes("chelsea.png"))]),
                                       metadata=(("x-request-id", "req-42"),))
        list(call)
        assert dict(call.initial_metadata())["x-request-id"] == "req-42"
    assert (info.model_type, info.family, info.hidden_size, info.max_batch_size) == ("internvl", 3, 128, 6)
    assert info.dtype == 1 and info.device == "cpu" and not info.url_fetch_enabled
