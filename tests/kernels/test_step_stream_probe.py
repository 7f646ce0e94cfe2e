"""The step-streaming probe (vlm_step_stream_probe, bench/step_stream_probe.py) reads every byte of every phase
once in each of its forms: the XOR of the words its blocks fold into a poisoned sink equals the XOR of all
32-bit words of a fresh random buffer, for phases of one step to many per warp, ragged against the grid, at every
ring depth. Bad input is refused at the C ABI before any GPU work (that test runs on every machine)."""
from __future__ import annotations

import ctypes
import functools

import numpy as np
import pytest

from vlmserve import _native
from vlmserve.errors import InvalidArgumentError, check
from vlmserve.kernels import step_probe_grid, step_stream_probe


def _probe(*, phases, mode=0, blocks_per_sm=1, ring_stages=8, counters=16):
    sizes = (ctypes.c_int64 * max(len(phases), 1))(*phases)
    return _native.lib().vlm_step_stream_probe(16, sizes, len(phases), mode, blocks_per_sm, ring_stages, 16,
                                               counters, None)


def test_bad_input_is_refused_before_any_gpu_work():
    lib = _native.lib()
    with pytest.raises(InvalidArgumentError, match="multiple of 512"):
        check(_probe(phases=[512, 100]))
    with pytest.raises(InvalidArgumentError, match="multiple of 512"):
        check(_probe(phases=[0]))
    with pytest.raises(InvalidArgumentError, match="phases must be 1 to 256"):
        check(_probe(phases=[]))
    with pytest.raises(InvalidArgumentError, match="mode must be"):
        check(_probe(phases=[512], mode=4))
    with pytest.raises(InvalidArgumentError, match="NULL counters"):
        check(_probe(phases=[512], mode=1, counters=None))
    with pytest.raises(InvalidArgumentError, match="ring_stages must be 4, 8 or 16"):
        check(_probe(phases=[512], ring_stages=12))
    with pytest.raises(InvalidArgumentError, match="blocks_per_sm must be"):
        check(_probe(phases=[512], blocks_per_sm=0))
    with pytest.raises(InvalidArgumentError, match="NULL device pointer"):
        check(lib.vlm_step_stream_probe(None, (ctypes.c_int64 * 1)(512), 1, 0, 1, 8, 16, 16, None))
    with pytest.raises(InvalidArgumentError, match="NULL output"):
        check(lib.vlm_step_probe_grid(1, 8, None))


def _xor(words: np.ndarray) -> np.uint32:
    return functools.reduce(np.bitwise_xor, words.view(np.uint32), np.uint32(0))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["chain", "persistent", "persistent_no_waits", "chain_exclusive"])
@pytest.mark.parametrize("blocks_per_sm,ring_stages", [(1, 16), (2, 8), (4, 4)])
def test_every_byte_of_every_phase_is_read_once(mode, blocks_per_sm, ring_stages):
    import torch

    grid = step_probe_grid(blocks_per_sm, ring_stages)
    assert grid > 0
    warps = grid * 8
    # One step; fewer steps than warps; a ragged count over the warps; several ring passes per warp.
    phases = [512, 512 * (warps // 3 + 1), 512 * (warps * 5 + 7), 512 * (warps * ring_stages * 3 + 11)]
    total = sum(phases)
    rng = np.random.default_rng(blocks_per_sm * 100 + ring_stages)
    words = rng.integers(0, 2**32, size=total // 4 + 64, dtype=np.uint32)  # + words past the phases, not read
    buf = torch.from_numpy(words.view(np.int32)).cuda()
    sink = torch.from_numpy(rng.integers(-2**31, 2**31 - 1, size=grid, dtype=np.int32)).cuda()
    poison = sink.cpu().numpy()
    counters = torch.full((len(phases),), 12345, dtype=torch.int32, device="cuda")  # zeroed by the call
    step_stream_probe(buf, phases, mode, blocks_per_sm, ring_stages, sink, counters)
    torch.cuda.synchronize()
    assert _xor(sink.cpu().numpy()) ^ _xor(poison) == _xor(words[:total // 4])
    if mode == "persistent":  # every block counted itself in after each phase but the last
        assert counters.cpu().tolist()[:-1] == [grid] * (len(phases) - 1)


@pytest.mark.gpu
def test_the_python_wrapper_refuses_what_the_probe_cannot_read():
    import torch

    buf = torch.zeros(1024, dtype=torch.int32, device="cuda")
    sink = torch.zeros(step_probe_grid(1, 8), dtype=torch.int32, device="cuda")
    counters = torch.zeros(4, dtype=torch.int32, device="cuda")
    with pytest.raises(InvalidArgumentError, match="the phases take 8192 bytes"):
        step_stream_probe(buf, [4096, 4096], "chain", 1, 8, sink, counters)
    with pytest.raises(InvalidArgumentError, match="mode must be one of"):
        step_stream_probe(buf, [512], "fast", 1, 8, sink, counters)
    with pytest.raises(InvalidArgumentError, match="counters needs 5 words"):
        step_stream_probe(buf, [512] * 5, "persistent", 1, 8, sink, counters)
    with pytest.raises(InvalidArgumentError, match="contiguous CUDA tensor"):
        step_stream_probe(buf.cpu(), [512], "chain", 1, 8, sink, counters)
