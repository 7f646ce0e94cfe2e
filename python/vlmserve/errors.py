"""One map from library status codes to Python exceptions."""
from __future__ import annotations


class VlmError(Exception):
    """Base of every error raised by vlmserve."""

    status = "INTERNAL"


class InvalidArgumentError(VlmError, ValueError):
    status = "INVALID_ARGUMENT"


class OutOfRangeError(VlmError, ValueError):
    status = "OUT_OF_RANGE"


class NotFoundError(VlmError, LookupError):
    status = "NOT_FOUND"


class OutOfMemoryError(VlmError, MemoryError):
    status = "OUT_OF_MEMORY"


class UnsupportedError(VlmError, NotImplementedError):
    status = "UNSUPPORTED"


class FailedPreconditionError(VlmError, RuntimeError):
    status = "FAILED_PRECONDITION"


class InvalidHandleError(VlmError, RuntimeError):
    status = "INVALID_HANDLE"


class InternalError(VlmError, RuntimeError):
    status = "INTERNAL"


class ModelLoadError(VlmError, ValueError):
    """A checkpoint that is missing, corrupt or not what its config says."""

    status = "INVALID_ARGUMENT"


class UnavailableError(VlmError):
    """The server cannot take the request now (warming up, draining, a dependency down): retry later."""

    status = "UNAVAILABLE"


class DeadlineExceededError(VlmError):
    """The caller's deadline passed before the work finished."""

    status = "DEADLINE_EXCEEDED"


class RequestFailedError(VlmError, RuntimeError):
    """A request that the engine accepted but could not finish."""

    status = "INTERNAL"


_BY_CODE = {
    1: InvalidArgumentError,
    2: OutOfRangeError,
    3: NotFoundError,
    4: OutOfMemoryError,
    5: UnsupportedError,
    6: FailedPreconditionError,
    7: InvalidHandleError,
    99: InternalError,
}


def check(status: int) -> None:
    """Raises the exception for a non-zero library status, with its message."""
    if status == 0:
        return
    from vlmserve import _native

    message = _native.lib().vlm_last_error().decode("utf-8", "replace")
    raise _BY_CODE.get(status, InternalError)(message)
