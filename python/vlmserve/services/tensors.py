"""Tensors on the wire: vlm.v1.TensorDtype values, raw little-endian row-major
bytes, and back (the LM service reads EmbeddingSpan and Encode chunks with
from_bytes)."""
from __future__ import annotations

import sys

import numpy as np
import torch

from vlmserve.errors import InvalidArgumentError

# vlm.v1.TensorDtype numbers (common.proto).
FLOAT32, FLOAT16, BFLOAT16 = 1, 2, 3
TORCH_DTYPES = {FLOAT32: torch.float32, FLOAT16: torch.float16, BFLOAT16: torch.bfloat16}
WIRE_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("vlmserve's wire format is little-endian; big-endian hosts are not supported")


def torch_dtype(value: int, field: str = "dtype") -> torch.dtype:
    try:
        return TORCH_DTYPES[value]
    except KeyError:
        raise InvalidArgumentError(f"{field} has unknown value {value}: expected TENSOR_DTYPE_FLOAT32, "
                                   f"TENSOR_DTYPE_FLOAT16 or TENSOR_DTYPE_BFLOAT16") from None


def wire_dtype(dtype: torch.dtype) -> int:
    return WIRE_DTYPES[dtype]


def to_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's raw bytes (a view when it is already contiguous on the CPU)."""
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.view(torch.uint8).numpy()).cast("B")


def from_bytes(data: bytes | bytearray, dtype: int, shape: list[int], field: str = "tensor") -> torch.Tensor:
    """The tensor in `data`: a view of it when it is a bytearray (the caller's buffer, no copy), a copy of
    immutable bytes."""
    tdtype = torch_dtype(dtype, f"{field}.dtype")
    if not shape or any(d <= 0 for d in shape):
        raise InvalidArgumentError(f"{field}.shape must be non-empty with positive sizes, got {list(shape)}")
    itemsize = torch.empty((), dtype=tdtype).element_size()
    expected = int(np.prod(shape)) * itemsize
    if len(data) != expected:
        raise InvalidArgumentError(f"{field} has {len(data)} bytes; shape {list(shape)} of "
                                   f"{str(tdtype).replace('torch.', '')} needs {expected}")
    raw = torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data), dtype=torch.uint8)
    return raw.view(tdtype).reshape(list(shape))
