"""Several event loops serving one port (ServerConfig.event_loops): each loop's server answers calls and health,
the handlers run on the loop of the call's connection, stop() drains every loop and closes the further ones; the
LM service with two loops chats with images (one vision client a loop, closed at stop); bad settings are refused."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from grpc_health.v1 import health_pb2

from echo_server import call_on_new_connection, held_port, make_echo_server
from vlmserve.errors import InvalidArgumentError
from vlmserve.services.server import ServerConfig


def make_server(event_loops: int, handled: list, port: int = 0):
    def record():  # where each call ran
        handled.append((threading.current_thread().name, id(asyncio.get_running_loop())))

    return make_echo_server(port, on_call=record, event_loops=event_loops)


def loop_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("grpc-loop-")]


def test_every_loop_answers_calls_and_health_and_stop_closes_them():
    handled: list = []

    async def main():
        server = make_server(event_loops=3, handled=handled)
        port = await server.start()
        try:
            assert len(loop_threads()) == 2  # the caller's loop and two more
            assert len(server.loop_lag._tasks) == 3  # every loop's lag measured, into one histogram
            await server.set_serving(True)
            # 30 connections over 3 loops: all on one loop would happen about once in 10^14 runs.
            for _ in range(30):
                said, status = await call_on_new_connection(port)
                assert said == b"hello" and status == health_pb2.HealthCheckResponse.SERVING
            await server.set_serving(False)
            _, status = await call_on_new_connection(port)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            cleaned: list = []

            async def cleanup():
                cleaned.append(id(asyncio.get_running_loop()))

            await server.stop(cleanup=cleanup)
        assert len(set(cleaned)) == 3  # the owner's cleanup ran once on every loop
        assert loop_threads() == [] and server.loop_lag._tasks == {}

    asyncio.run(main())
    assert len(handled) == 31
    assert len({loop for _, loop in handled}) >= 2, handled
    assert {name for name, _ in handled} <= {"MainThread", "grpc-loop-1", "grpc-loop-2"}


def test_a_port_another_socket_holds_is_refused():
    async def main(port):
        with pytest.raises(InvalidArgumentError, match="in use"):
            await make_server(event_loops=2, handled=[], port=port).start()

    with held_port() as port:
        asyncio.run(main(port))
    assert loop_threads() == []


@pytest.mark.parametrize("bad", [0, 17, True, 1.5, "2"])
def test_bad_event_loop_counts_are_refused(bad):
    with pytest.raises(InvalidArgumentError, match="event_loops"):
        ServerConfig(event_loops=bad)


def test_the_vision_service_refuses_more_than_one_loop(tmp_path):
    from vlmserve.services.vision_server import VisionServer

    with pytest.raises(InvalidArgumentError, match="one event loop"):
        VisionServer(tmp_path, server_config=ServerConfig(port=0, metrics_port=None, event_loops=2))


def test_the_lm_service_chats_with_images_on_two_loops():
    from lm_stack import LmServerThread, image_chat_request, new_connection_stub, start_vision
    from vlmserve.default_model import default_vlm_checkpoint

    model = default_vlm_checkpoint()
    vision = start_vision(model, max_images_per_request=2)
    lm = LmServerThread(model, vision.address, max_images_per_request=2, event_loops=2)
    request = image_chat_request()

    def chat(_):
        channel, stub = new_connection_stub(lm.address)  # the kernel may hand it to either loop
        with channel:
            ids = []
            for msg in stub.Chat(request, timeout=300):
                ids += list(msg.token_ids)
            return ids

    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(chat, range(16)))
        # greedy on one engine: every connection, on either loop, gets the same tokens
        assert all(r == results[0] for r in results) and len(results[0]) == 4, results
        # 16 connections over 2 loops: all on one would happen about once in 30,000 runs
        assert len(lm.server._vision_clients) == 2
    finally:
        lm.stop()
        vision.stop()
    assert lm.server._vision_clients == {}
    assert loop_threads() == []
