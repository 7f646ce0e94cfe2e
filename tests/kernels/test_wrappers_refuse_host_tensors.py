"""The GPU kernels' Python wrappers refuse host tensors and wrong shapes with a clear error before anything reaches
the library (a host pointer handed to a kernel would fault on the device), so this runs without a GPU."""
import pytest
import torch

from vlmserve.errors import InvalidArgumentError
from vlmserve.kernels import draw_rows, stream_read


def test_draw_rows_refuses_host_tensors_and_wrong_shapes():
    f, k = torch.ones(2), torch.zeros(2, dtype=torch.int32)
    u, tokens = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.int32)
    with pytest.raises(InvalidArgumentError, match="argument 0 must be a contiguous torch.float32 CUDA tensor"):
        draw_rows(torch.zeros(2, 8), f, k, f, f, u, tokens)
    with pytest.raises(InvalidArgumentError, match=r"logits must be \[rows, vocab\], got shape \(8,\)"):
        draw_rows(torch.zeros(8), f, k, f, f, u, tokens)


def test_stream_read_refuses_host_tensors():
    with pytest.raises(InvalidArgumentError, match="contiguous CUDA tensor"):
        stream_read(torch.zeros(64, dtype=torch.int32), None)
