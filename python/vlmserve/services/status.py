"""The one exception → gRPC status mapping of every service.

vlmserve's errors carry a status name (vlmserve.errors); this maps each to a
gRPC code. Anything else is a bug: INTERNAL with a generic message (the details
go to the log under the request id, not to the caller)."""
from __future__ import annotations

import grpc

from vlmserve import errors
from vlmserve.errors import VlmError

_CODES = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "OUT_OF_RANGE": grpc.StatusCode.OUT_OF_RANGE,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "OUT_OF_MEMORY": grpc.StatusCode.RESOURCE_EXHAUSTED,
    # A feature the request asks for that this model or server does not have.
    "UNSUPPORTED": grpc.StatusCode.INVALID_ARGUMENT,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "INVALID_HANDLE": grpc.StatusCode.INTERNAL,
    "INTERNAL": grpc.StatusCode.INTERNAL,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
}


# Re-exported: the services raise it while warming up or draining.
UnavailableError = errors.UnavailableError


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for the caller."""
    if isinstance(exc, VlmError):
        return _CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc) or type(exc).__name__
    return grpc.StatusCode.INTERNAL, "internal error (see the server log for this request id)"
