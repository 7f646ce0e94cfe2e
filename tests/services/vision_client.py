"""A real gRPC client of vlm.v1.VisionService, as the LM service will use it:
send images, reassemble each image's tensor from its header and chunks."""
from __future__ import annotations

from dataclasses import dataclass

import grpc
import torch

from vlmserve.services import protos, tensors


@dataclass
class EncodedImage:
    header: object          # vlm.v1.EmbeddingHeader
    embeddings: torch.Tensor


def image_input(data: bytes | None = None, mime_type: str = "image/png", url: str | None = None):
    common = protos.common()
    if url is not None:
        return common.ImageInput(url=url)
    return common.ImageInput(data=data, mime_type=mime_type)


def stub(channel: grpc.Channel):
    return protos.vision_grpc().VisionServiceStub(channel)


def encode(stub_, images: list, metadata=(), timeout: float = 60, **fields) -> tuple[list[EncodedImage], object]:
    """(images in request order, the EncodeSummary)."""
    pb = protos.vision()
    request = pb.EncodeRequest(images=images, **fields)
    out: list[EncodedImage] = []
    buf = bytearray()
    header = summary = None

    def finish():
        if header is not None:
            assert len(buf) == header.num_bytes
            out.append(EncodedImage(header, tensors.from_bytes(bytes(buf), header.dtype, list(header.shape))))

    for msg in stub_.Encode(request, metadata=metadata, timeout=timeout):
        kind = msg.WhichOneof("payload")
        if kind == "header":
            finish()
            header, buf = msg.header, bytearray()
        elif kind == "chunk":
            assert msg.chunk.image_index == header.image_index and msg.chunk.offset == len(buf)
            buf += msg.chunk.data
        else:
            summary = msg.summary
    finish()
    header = None
    assert summary is not None, "the stream ended without a summary"
    return out, summary
