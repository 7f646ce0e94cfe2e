"""The LM service's vision client over several replicas: an Encode call that a replica ends UNAVAILABLE before
answering (it died or is draining) is tried again on the next replica, so the request is not lost; other errors
are not retried; with every replica unavailable the call fails UNAVAILABLE after its attempts.

The replicas are fake VisionService servers on real ports (gRPC's own round_robin and retry machinery runs):
one answers with a 2 × 4 embedding, another ends every call with a chosen status."""
from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from vlmserve.errors import InvalidArgumentError, UnavailableError
from vlmserve.services import protos, tensors
from vlmserve.services.vision_client import ENCODE_ATTEMPTS, RETRY_BUFFER_BYTES, VisionClient

ROWS = np.arange(8, dtype=np.float16).reshape(2, 4)


class FakeReplica(protos.vision_grpc().VisionServiceServicer):
    """Answers Encode with ROWS, or ends every call with `status` (counting the calls either way)."""

    def __init__(self, status: grpc.StatusCode | None = None):
        self.status = status
        self.calls = 0

    async def Encode(self, request, context):
        self.calls += 1
        if self.status is not None:
            await context.abort(self.status, "this replica fails")
        pb, common = protos.vision(), protos.common()
        layout = common.ImageLayout(num_tokens=2, num_tiles=1, tokens_per_tile=2)
        yield pb.EncodeResponse(header=pb.EmbeddingHeader(image_index=0, dtype=tensors.FLOAT16, shape=[2, 4],
                                                          num_tokens=2, num_bytes=ROWS.nbytes, layout=layout))
        yield pb.EncodeResponse(chunk=pb.EmbeddingChunk(image_index=0, offset=0, data=ROWS.tobytes()))


async def _serve(replica: FakeReplica) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    protos.vision_grpc().add_VisionServiceServicer_to_server(replica, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _encode_many(replicas: list[FakeReplica], calls: int) -> list:
    """`calls` Encode calls, one after another, through one client of all the replicas: each call's images or
    the error it raised."""
    servers = [await _serve(r) for r in replicas]
    client = VisionClient(",".join(f"127.0.0.1:{port}" for _, port in servers))
    image = protos.common().ImageInput(data=b"an image", mime_type="image/png")
    out = []
    try:
        await asyncio.wait_for(client.channel.channel_ready(), 10)
        for i in range(calls):
            try:
                images, _ = await client.encode([image], timeout=10, request_id=f"r{i}")
                out.append(images)
            except Exception as e:  # noqa: BLE001 - the test looks at which
                out.append(e)
    finally:
        await client.close()
        for server, _ in servers:
            await server.stop(None)
    return out


def test_a_replica_ending_calls_unavailable_loses_no_request():
    failing, good = FakeReplica(grpc.StatusCode.UNAVAILABLE), FakeReplica()
    results = asyncio.run(_encode_many([failing, good], calls=8))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    for images in results:
        assert len(images) == 1 and images[0].layout.num_tokens == 2
        np.testing.assert_array_equal(images[0].rows, ROWS)
    assert good.calls == 8
    assert failing.calls >= 1  # the calls were spread over both: some first went to the failing one


def test_errors_other_than_unavailable_are_not_retried():
    first, second = FakeReplica(grpc.StatusCode.INVALID_ARGUMENT), FakeReplica(grpc.StatusCode.INVALID_ARGUMENT)
    results = asyncio.run(_encode_many([first, second], calls=2))
    assert all(isinstance(r, InvalidArgumentError) for r in results), results
    assert first.calls + second.calls == 2  # one attempt a call


def test_with_every_replica_unavailable_the_call_fails_unavailable_after_its_attempts():
    replicas = [FakeReplica(grpc.StatusCode.UNAVAILABLE), FakeReplica(grpc.StatusCode.UNAVAILABLE)]
    results = asyncio.run(_encode_many(replicas, calls=1))
    assert isinstance(results[0], UnavailableError)
    assert "this replica fails" in str(results[0])
    assert sum(r.calls for r in replicas) == ENCODE_ATTEMPTS


@pytest.mark.parametrize("size", [17 * 1024, RETRY_BUFFER_BYTES + (1 << 20)])
def test_a_large_request_is_still_sent(size):
    """Requests larger than the retry buffer go out once, not refused (the buffer is an upper bound on what is
    kept for a retry)."""
    good = FakeReplica()

    async def main():
        server, port = await _serve(good)
        client = VisionClient(f"127.0.0.1:{port}")
        image = protos.common().ImageInput(data=bytes(size), mime_type="image/png")
        try:
            images, _ = await client.encode([image], timeout=10, request_id="big")
        finally:
            await client.close()
            await server.stop(None)
        return images

    images = asyncio.run(main())
    np.testing.assert_array_equal(images[0].rows, ROWS)
