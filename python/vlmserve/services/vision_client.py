"""The LM service's client of the vision service: one Encode call per chat
request (all its images), embeddings reassembled from their chunks.

Addresses: "host:port", several comma-separated ("h1:p1,h2:p2"), or a DNS
name ("dns:///vision:50052") whose every address is used; calls are spread
with gRPC's round_robin policy, so vision replicas scale out behind one name.
The channel fails fast while no replica is reachable (UNAVAILABLE) and
reconnects quickly once one is back.

An Encode call that a replica ends UNAVAILABLE before sending anything (it
died or is draining) is tried again by gRPC on the next replica (the channel's
retry policy, up to ENCODE_ATTEMPTS in all, within the call's deadline):
encoding is a pure function of the images, so a replica going away loses no
request while another serves."""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

import grpc
import numpy as np

from vlmserve.errors import (DeadlineExceededError, InternalError, InvalidArgumentError, OutOfRangeError,
                             UnavailableError)
from vlmserve.prompt_builder import Layout
from vlmserve.services import protos, tensors


ENCODE_ATTEMPTS = 3
# The request (its images) is kept for a retry up to this size; a larger one is sent once.
RETRY_BUFFER_BYTES = 16 * 1024 * 1024
SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "vlm.v1.VisionService", "method": "Encode"}],
    "retryPolicy": {"maxAttempts": ENCODE_ATTEMPTS, "initialBackoff": "0.02s", "maxBackoff": "0.2s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


@dataclass
class EncodedImage:
    layout: Layout
    rows: np.ndarray  # [num_tokens, hidden] float16 or float32


def channel_target(addresses: str) -> str:
    """A gRPC target for one address, a DNS name, or a comma-separated list."""
    addresses = addresses.strip()
    if addresses.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return addresses
    parts = [a.strip() for a in addresses.split(",") if a.strip()]
    if not parts:
        raise InvalidArgumentError("no vision service address given")
    if len(parts) == 1:
        return f"dns:///{parts[0]}"
    resolved = []
    for part in parts:  # the ipv4: scheme takes literal addresses only
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgumentError(f"vision address {part!r} is not host:port")
        try:
            ip = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        except socket.gaierror as e:
            raise InvalidArgumentError(f"cannot resolve vision host {host!r}: {e}") from None
        resolved.append(f"{ip}:{port}")
    return "ipv4:" + ",".join(resolved)


_MAPPED = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


class VisionClient:
    def __init__(self, addresses: str, max_message_bytes: int = 64 * 1024 * 1024, api_key: str | None = None,
                 tls_root_cert: bytes | None = None):
        self.target = channel_target(addresses)
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.service_config_disable_resolution", 1),  # ours, not one from a DNS TXT record
            ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
        ]
        if tls_root_cert is not None:
            self.channel = grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(tls_root_cert), options)
        else:
            self.channel = grpc.aio.insecure_channel(self.target, options)
        self.stub = protos.vision_grpc().VisionServiceStub(self.channel)
        self.pb = protos.vision()
        self.api_key = api_key

    async def encode(self, images: list, timeout: float | None, request_id: str) -> tuple[list[EncodedImage], int]:
        """Encodes vlm.v1.ImageInput messages; returns the images and the time it took (ns)."""
        start = time.perf_counter_ns()
        metadata = [("x-request-id", request_id)]
        if self.api_key:
            metadata.append(("authorization", f"Bearer {self.api_key}"))
        request = self.pb.EncodeRequest(images=images, dtype=tensors.FLOAT16)
        headers: dict[int, object] = {}
        buffers: dict[int, bytearray] = {}
        try:
            async for msg in self.stub.Encode(request, timeout=timeout, metadata=metadata):
                kind = msg.WhichOneof("payload")
                if kind == "header":
                    h = msg.header
                    headers[h.image_index] = h
                    buffers[h.image_index] = bytearray(h.num_bytes)
                elif kind == "chunk":
                    c = msg.chunk
                    buffers[c.image_index][c.offset:c.offset + len(c.data)] = c.data
        except grpc.aio.AioRpcError as e:
            exc = _MAPPED.get(e.code(), InternalError)
            raise exc(f"vision service: {e.details() or e.code().name}") from None
        out = []
        for i in range(len(images)):
            h = headers.get(i)
            if h is None:
                raise InternalError(f"vision service sent no embeddings for image {i}")
            rows = tensors.from_bytes(buffers[i], h.dtype, list(h.shape), f"images[{i}]")  # a view, no copy
            lay = h.layout
            out.append(EncodedImage(Layout(lay.num_tokens, lay.tokens_per_tile, lay.grid_rows, lay.grid_cols,
                                           lay.has_global_tile), _as_numpy(rows)))
        return out, time.perf_counter_ns() - start

    async def close(self) -> None:
        await self.channel.close()


def _as_numpy(rows) -> np.ndarray:
    """fp16 and fp32 go to the engine as they are; bf16 (no numpy dtype) is widened."""
    import torch

    return (rows.float() if rows.dtype == torch.bfloat16 else rows).numpy()
