"""The generated gRPC modules, imported on first use.

They are produced by the build (`make proto`, i.e. python/vlmserve/proto_build.py)
into vlmserve/_proto/ and not committed; importing vlmserve never needs them."""
from __future__ import annotations

import importlib
from types import ModuleType

from vlmserve.errors import FailedPreconditionError

_HINT = ("the gRPC modules are not generated: run `make proto` "
         "(or `python python/vlmserve/proto_build.py`, which needs grpcio-tools)")


def load(name: str) -> ModuleType:
    """load("vision_pb2"), load("vision_pb2_grpc"), load("lm_pb2"), load("common_pb2")..."""
    try:
        return importlib.import_module(f"vlmserve._proto.{name}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("vlmserve._proto"):
            raise FailedPreconditionError(f"{_HINT} ({e.name} is missing)") from None
        raise


def common():
    return load("common_pb2")


def vision():
    return load("vision_pb2")


def vision_grpc():
    return load("vision_pb2_grpc")


def lm():
    return load("lm_pb2")


def lm_grpc():
    return load("lm_pb2_grpc")
