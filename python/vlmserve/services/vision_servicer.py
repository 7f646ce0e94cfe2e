"""vlm.v1.VisionService: Encode and Info.

Encode validates the request, decodes and preprocesses its images in the
preprocessing pool (worker processes or threads, never on the event loop),
submits every image's tiles to the shared batcher at once, then streams per
image a header and raw-byte chunks. Errors are raised as vlmserve errors; the
ErrorStatus interceptor turns them into statuses."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from vlmserve.errors import InternalError, InvalidArgumentError, VlmError
from vlmserve.services import protos, tensors
from vlmserve.vision.image_source import ImageSource
from vlmserve.vision.preprocess_pool import PreprocessPool
from vlmserve.vision.tiles import PreparedImage

if TYPE_CHECKING:
    from vlmserve.services.vision_server import VisionServer

DEFAULT_CHUNK_BYTES = 1 << 20
MIN_CHUNK_BYTES = 1024  # smaller chunks only multiply messages
FAMILY_ENUM = {"llava": 1, "idefics3": 2, "internvl": 3}  # vlm.v1.VisionFamily


class VisionServicer:
    def __init__(self, owner: "VisionServer"):
        self.owner = owner
        self.pb = protos.vision()
        self.common = protos.common()

    async def Encode(self, request, context):
        start = time.perf_counter_ns()
        owner = self.owner
        encoder, batcher, pool = owner.ready_parts()
        limits = encoder.config
        if not request.images:
            raise InvalidArgumentError("the request has no images")
        if len(request.images) > limits.max_images_per_request:
            raise InvalidArgumentError(f"the request has {len(request.images)} images; at most "
                                       f"{limits.max_images_per_request} are accepted per request")
        out_dtype = encoder.dtype if request.dtype == 0 else tensors.torch_dtype(request.dtype, "dtype")
        chunk = min(max(request.max_chunk_bytes or DEFAULT_CHUNK_BYTES, MIN_CHUNK_BYTES), owner.max_chunk_bytes)
        sources = [self._source(i, img) for i, img in enumerate(request.images)]

        # Announced before preparing, so a batch being collected waits for these images rather than closing.
        with batcher.expect(len(sources)) as expected:
            prepared = await asyncio.gather(*(self._prepare(pool, i, s) for i, s in enumerate(sources)))
            preprocessed = time.perf_counter_ns()
            # All images at once, so a request's own tiles share batches too.
            features = await asyncio.gather(*(batcher.submit(p.tiles, expected) for p in prepared))
        encoded = time.perf_counter_ns()

        total_tokens = 0
        for index, (image, feats) in enumerate(zip(prepared, features)):
            rows = feats.reshape(-1, feats.shape[-1]).to(out_dtype)
            data = tensors.to_bytes(rows)
            total_tokens += rows.shape[0]
            yield self.pb.EncodeResponse(header=self.pb.EmbeddingHeader(
                image_index=index, dtype=tensors.wire_dtype(out_dtype), shape=list(rows.shape),
                num_tokens=rows.shape[0], num_bytes=len(data), layout=self._layout(image),
                family=FAMILY_ENUM[encoder.family.name]))
            for offset in range(0, len(data), chunk):
                yield self.pb.EncodeResponse(chunk=self.pb.EmbeddingChunk(
                    image_index=index, offset=offset, data=bytes(data[offset:offset + chunk])))
        owner.metrics.preprocess_seconds.observe((preprocessed - start) / 1e9)
        owner.metrics.batched_encode_seconds.observe((encoded - preprocessed) / 1e9)
        owner.metrics.images.inc(len(prepared))
        owner.metrics.tiles.inc(sum(len(p.tiles) for p in prepared))
        end = time.perf_counter_ns()
        owner.metrics.encode_seconds.observe((end - start) / 1e9)
        yield self.pb.EncodeResponse(summary=self.pb.EncodeSummary(
            num_images=len(prepared), num_tokens=total_tokens, preprocess_ns=preprocessed - start,
            encode_ns=encoded - preprocessed, total_ns=end - start))

    async def Info(self, request, context):
        encoder, _, _ = self.owner.ready_parts()
        c = encoder.config
        return self.pb.VisionInfoResponse(
            model=str(encoder.directory), model_type=encoder.model_type,
            family=FAMILY_ENUM[encoder.family.name], dtype=tensors.wire_dtype(encoder.dtype),
            hidden_size=encoder.hidden_size, device=str(encoder.device), max_batch_size=c.max_batch_size,
            max_images_per_request=c.max_images_per_request, max_image_pixels=c.max_image_pixels,
            min_image_size=c.min_image_size, max_message_bytes=self.owner.server_config.max_message_bytes,
            max_chunk_bytes=self.owner.max_chunk_bytes, url_fetch_enabled=bool(c.allowed_url_hosts))

    @staticmethod
    def _source(index: int, image) -> ImageSource:
        kind = image.WhichOneof("source")
        if kind == "data":
            return ImageSource(data=image.data, mime_type=image.mime_type)
        if kind == "url":
            return ImageSource(url=image.url, mime_type=image.mime_type)
        raise InvalidArgumentError(f"images[{index}] has neither data nor url")

    async def _prepare(self, pool: PreprocessPool, index: int, source: ImageSource) -> PreparedImage:
        try:
            return await pool.prepare(source)
        except VlmError as e:
            if not isinstance(e, InternalError):  # the image's fault (or its URL's), not ours
                self.owner.metrics.rejected_images.inc()
            raise type(e)(f"images[{index}]: {e}") from None

    def _layout(self, image: PreparedImage):
        lay = image.layout
        return self.common.ImageLayout(
            num_tokens=lay.num_tokens, num_tiles=lay.num_tiles, tokens_per_tile=lay.tokens_per_tile,
            grid_rows=lay.grid_rows, grid_cols=lay.grid_cols, has_global_tile=lay.has_global_tile,
            image_width=lay.image_width, image_height=lay.image_height)
