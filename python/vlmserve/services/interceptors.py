"""Server interceptors shared by the services, outermost first:

  Observability  request id (x-request-id metadata, or a new one) for the logs and
                 echoed back; one log line and the metrics of every call by status code
  BearerAuth     `authorization: Bearer <token>` or UNAUTHENTICATED (health is exempt,
                 so orchestrators can probe without the secret)
  ErrorStatus    the one place exceptions become gRPC statuses (services.status)

Each wraps the method handler's behavior, whatever its streaming kind."""
from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
import uuid

import grpc

from vlmserve.services import log as slog
from vlmserve.services.metrics import RpcMetrics
from vlmserve.services.status import to_status

logger = logging.getLogger("vlmserve.rpc")

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REQUEST_ID_KEY = "x-request-id"

_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _wrap(handler, method: str, around):
    """Rebuilds `handler` with its behavior run inside `around(method, context, call)`,
    an async generator that yields the responses of `call()` (an async iterator)."""
    if handler is None:
        return None
    for kind, factory in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is None:
            continue
        streaming_response = kind.endswith("_stream")

        if streaming_response:
            async def wrapped(request, context, _b=behavior):
                async for item in around(method, context, lambda: _as_aiter(_b(request, context))):
                    yield item
        else:
            async def wrapped(request, context, _b=behavior):
                result = None
                async for item in around(method, context, lambda: _as_aiter(_b(request, context))):
                    result = item
                return result
        return factory(wrapped, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)
    return handler


async def _as_aiter(result):
    """A behavior returns an awaitable (unary response) or an (async) iterator of responses."""
    if inspect.isawaitable(result):
        yield await result
    elif hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in result:
            yield item


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        return _wrap(handler, details.method, self._around)

    async def _around(self, method: str, context, call):
        metadata = dict(context.invocation_metadata() or ())
        rid = str(metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex)[:128]
        slog.request_id.set(rid)  # each RPC runs in its own task, hence its own context: no reset needed
        # Read now: a call torn down by a stop without grace must not be touched from `finally`.
        peer = context.peer()
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        self.metrics.in_flight.inc()
        try:
            await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
            async for item in call():
                yield item
            code = context.code() or grpc.StatusCode.OK
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.in_flight.dec()
            self.metrics.calls.labels(method, code.name).inc()
            self.metrics.seconds.labels(method).observe(elapsed)
            if not method.startswith(HEALTH_PREFIX):
                logger.info("rpc finished", extra={"fields": {
                    "method": method, "code": code.name, "duration_ms": round(elapsed * 1e3, 3),
                    "peer": peer}})


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if details.method.startswith(HEALTH_PREFIX):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return handler
        message = "missing bearer token" if not given else "invalid bearer token"
        return _wrap(handler, details.method, lambda m, context, call: _deny(context, message))


async def _deny(context, message: str):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
    yield  # pragma: no cover (an async generator that never yields)


class ErrorStatusInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        return _wrap(handler, details.method, self._around)

    @staticmethod
    async def _around(method: str, context, call):
        try:
            async for item in call():
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            code, message = to_status(e)
            if code == grpc.StatusCode.INTERNAL:
                logger.exception("rpc failed", extra={"fields": {"method": method}})
            else:
                logger.info("rpc rejected", extra={"fields": {"method": method, "code": code.name,
                                                              "error": message}})
            await context.abort(code, message)
