"""The read-only benchmark kernel (vlm_stream_read, bench/gemm's read floor) reads every byte it is given:
the XOR of the words its blocks write equals the XOR of all 32-bit words of a fresh random buffer, for
sizes from one vector to several per thread of the grid, with a poisoned sink. Needs a CUDA GPU."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from vlmserve.errors import InvalidArgumentError
from vlmserve.kernels import stream_read, stream_read_sink

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("vectors", [1, 7, 4096 * 3 + 5, 1 << 20, (8 << 20) + 3])
def test_every_word_is_read(vectors):
    import torch

    words = np.random.default_rng(vectors).integers(0, 2**32, size=vectors * 4, dtype=np.uint32)
    buf = torch.from_numpy(words.view(np.int32)).cuda()
    sink = stream_read_sink(buf.device)
    # Poisoned with distinct random words: blocks that wrote nothing would leave them (and not cancel out).
    sink.copy_(torch.randint(-2**31, 2**31 - 1, sink.shape, dtype=torch.int32))
    stream_read(buf, sink)
    got = functools.reduce(np.bitwise_xor, sink.cpu().numpy().view(np.uint32), np.uint32(0))
    assert got == np.bitwise_xor.reduce(words)


def test_bad_buffers_are_refused():
    import torch

    sink = stream_read_sink(torch.device("cuda"))
    with pytest.raises(InvalidArgumentError, match="multiple of 16"):
        stream_read(torch.zeros(3, dtype=torch.int32, device="cuda"), sink)
    with pytest.raises(InvalidArgumentError, match="contiguous CUDA tensor"):
        stream_read(torch.zeros(8, 8, dtype=torch.int32, device="cuda").t(), sink)
    with pytest.raises(InvalidArgumentError, match="contiguous CUDA tensor"):
        stream_read(torch.zeros(64, dtype=torch.int32), sink)
