"""Several grpc.aio servers on one port (ServerConfig.acceptors): each of them answers calls, with the shared
health state; the port is refused when anything else holds it, so no other process can silently share it."""
from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health_pb2

from echo_server import call_on_new_connection, held_port, make_echo_server
from vlmserve.errors import InvalidArgumentError
from vlmserve.services.server import ServerConfig


def make_server(acceptors: int, port: int = 0):
    return make_echo_server(port, acceptors=acceptors)


def test_every_acceptor_answers_calls_and_health():
    async def only_one_listening(keep: int) -> None:
        # A grpc.aio server cannot be restarted, so each acceptor gets a stack of its own, whose other acceptors
        # are stopped: new connections can only reach the one kept.
        server = make_server(acceptors=3)
        port = await server.start()
        await server.set_serving(True)
        try:
            await asyncio.gather(*(s.stop(0) for i, s in enumerate(server.servers) if i != keep))
            for _ in range(4):
                said, status = await call_on_new_connection(port)
                assert said == b"hello" and status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop()

    async def main():
        for keep in range(3):
            await only_one_listening(keep)

    asyncio.run(main())


def test_acceptors_refuse_a_port_another_socket_holds():
    async def main(port):
        with pytest.raises(InvalidArgumentError, match="in use"):
            await make_server(acceptors=2, port=port).start()

    with held_port() as port:
        asyncio.run(main(port))


def test_a_second_stack_cannot_join_a_port_shared_by_acceptors():
    # Without the check, a second server with SO_REUSEPORT would be handed half the new connections.
    async def main():
        first = make_server(acceptors=2)
        port = await first.start()
        try:
            with pytest.raises(InvalidArgumentError, match="in use"):
                await make_server(acceptors=2, port=port).start()
            said, _ = await call_on_new_connection(port)
            assert said == b"hello"
        finally:
            await first.stop()

    asyncio.run(main())


@pytest.mark.parametrize("bad", [0, 65, True, 2.0, "4"])
def test_acceptors_out_of_range_are_refused(bad):
    with pytest.raises(InvalidArgumentError, match="acceptors"):
        ServerConfig(acceptors=bad)
