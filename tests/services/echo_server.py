"""A GrpcServer answering one echo method, and a call to it on a connection of its own: for the tests of servers
sharing a port (acceptors, event loops)."""
from __future__ import annotations

import contextlib
import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from vlmserve.services.server import GrpcServer, ServerConfig

SERVICE = "test.Echo"


def make_echo_server(port: int = 0, on_call=None, **config) -> GrpcServer:
    """An echo server on 127.0.0.1 with ServerConfig fields `config`; on_call(), if given, runs in each call."""
    server = GrpcServer(ServerConfig(host="127.0.0.1", port=port, metrics_port=None, shutdown_grace_s=0.5, **config),
                        [SERVICE], CollectorRegistry())

    async def echo(raw, context):
        if on_call is not None:
            on_call()
        return raw

    handlers = grpc.method_handlers_generic_handler(SERVICE, {"Say": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_to_each(lambda s: s.add_generic_rpc_handlers((handlers,)))
    return server


@contextlib.contextmanager
def held_port():
    """A port on 127.0.0.1 that another socket listens on (without SO_REUSEPORT) while the block runs."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]
    finally:
        holder.close()


async def call_on_new_connection(port: int) -> tuple[bytes, int]:
    """The echo of b"hello" and the service's health status, on a connection of its own (no shared subchannel):
    the kernel hands it to one of the servers listening on the port."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) \
            as channel:
        said = await channel.unary_unary(f"/{SERVICE}/Say")(b"hello", timeout=10)
        status = (await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)).status
        return said, status
