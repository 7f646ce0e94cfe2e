"""The serving benchmark's load generator opens one client connection per --streams-per-connection streams, in one
client process and across several: a fake LM service on a real port counts the distinct connections (peers) its
calls came on. The LM's front processes share the port by connection, so this count is what spreads the load."""
from __future__ import annotations

import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from serving.load import run_level  # noqa: E402
from vlmserve.services import protos  # noqa: E402


class FakeLm:
    """LmService.Chat answering two tokens; records the peer (client address and port) of every call."""

    def __init__(self):
        self.peers: set[str] = set()
        self._lock = threading.Lock()
        pb = protos.lm()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))

        def chat(raw, context):
            with self._lock:
                self.peers.add(context.peer())
            context.send_initial_metadata(())
            yield pb.GenerateResponse(token_ids=[1])
            yield pb.GenerateResponse(token_ids=[2])

        chat_handler = grpc.unary_stream_rpc_method_handler(chat,
                                                            response_serializer=pb.GenerateResponse.SerializeToString)
        handler = grpc.method_handlers_generic_handler("vlm.v1.LmService", {"Chat": chat_handler})
        self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def stop(self):
        self.server.stop(None)


@pytest.fixture
def lm():
    server = FakeLm()
    yield server
    server.stop()


def _request():
    return protos.lm().ChatRequest(messages=[protos.lm().ChatMessage(role=protos.lm().ROLE_USER)])


@pytest.mark.parametrize("per_connection, connections", [(1, 4), (2, 2), (4, 1), (32, 1)])
def test_one_process_opens_a_connection_per_streams_per_connection(lm, per_connection, connections):
    result = run_level(lm.address, _request(), concurrency=4, n_requests=16, timeout_s=30,
                       streams_per_connection=per_connection)
    assert [r.error for r in result.records] == [None] * 16
    assert all(r.tokens == 2 for r in result.records)
    assert len(lm.peers) == connections, lm.peers


@pytest.mark.parametrize("per_connection, connections", [(1, 4), (2, 2)])
def test_client_processes_open_their_own_connections(lm, per_connection, connections):
    """Concurrency 4 from two client processes of two streams each."""
    result = run_level(lm.address, _request(), concurrency=4, n_requests=8, timeout_s=30, streams_per_process=2,
                       streams_per_connection=per_connection)
    assert result.client_processes == 2
    assert [r.error for r in result.records] == [None] * 8
    assert len(lm.peers) == connections, lm.peers


def test_a_connection_needs_a_stream(lm):
    with pytest.raises(ValueError, match="at least 1"):
        run_level(lm.address, _request(), concurrency=2, n_requests=2, timeout_s=30, streams_per_connection=0)
