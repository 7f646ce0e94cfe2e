"""The step-streaming probe (vlm_step_stream_probe, bench/step_stream_probe.py) reads every byte of every phase
once in each of its forms: the XOR of the words its blocks fold into a poisoned sink equals the XOR of all
32-bit words of a fresh random buffer, for phases of one step to many per warp, ragged against the grid, at every
ring depth. Bad input is refused at the C ABI before any GPU work (that test runs on every machine)."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from vlmserve import _native
from vlmserve.errors import InvalidArgumentError, check
from vlmserve.kernels import step_probe_grid, step_stream_probe


def _probe(*, phases, mode=0, blocks_per_sm=1, ring_stages=8, counters=16, rows=None, row_halves=0):
    sizes = (ctypes.c_int64 * max(len(phases), 1))(*phases)
    return _native.lib().vlm_step_stream_probe(16, sizes, len(phases), mode, blocks_per_sm, ring_stages, 16,
                                               counters, rows, row_halves, None)


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
    with pytest.raises(InvalidArgumentError, match="row_halves must be a multiple of 8"):
        check(_probe(phases=[512], rows=16, row_halves=12))
    with pytest.raises(InvalidArgumentError, match="rows must be a 16-byte aligned device pointer"):
        check(_probe(phases=[512], rows=None, row_halves=2048))
    with pytest.raises(InvalidArgumentError, match="NULL device pointer"):
        check(lib.vlm_step_stream_probe(None, (ctypes.c_int64 * 1)(512), 1, 0, 1, 8, 16, 16, None, 0, None))
    with pytest.raises(InvalidArgumentError, match="NULL output"):
        check(lib.vlm_step_probe_grid(1, 8, None))


def _xor(words: np.ndarray) -> np.uint32:
    return np.bitwise_xor.reduce(words.view(np.uint32), initial=np.uint32(0))


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
@pytest.mark.parametrize("mode", ["chain", "persistent", "chain_exclusive"])
def test_the_rows_chain_through_the_phases_as_rms_norms(mode):
    # Phase p writes (p + 1) / rms(the row phase p - 1 wrote) into row p % 2 (phase 0: 1), every block its share,
    # after reading the whole previous row: a block that read nothing, or too early, would leave another value. The
    # bytes are still all read once.
    import torch

    grid = step_probe_grid(2, 8)
    phases = [512 * (grid * 8 + 3)] * 5
    words = np.random.default_rng(5).integers(0, 2**32, size=sum(phases) // 4, dtype=np.uint32)
    buf = torch.from_numpy(words.view(np.int32)).cuda()
    sink = torch.zeros(grid, dtype=torch.int32, device="cuda")
    counters = torch.zeros(len(phases), dtype=torch.int32, device="cuda")
    rows = torch.full((2, 2048), float("nan"), dtype=torch.float16, device="cuda")  # poisoned
    step_stream_probe(buf, phases, mode, 2, 8, sink, counters, rows)
    torch.cuda.synchronize()
    assert _xor(sink.cpu().numpy()) == _xor(words)
    written = [np.float16(1.0)]
    for p in range(1, len(phases)):
        prev = np.float32(written[-1])
        written.append(np.float16(np.float32(p + 1) / np.sqrt(prev * prev + np.float32(1e-6))))
    got = rows.float().cpu().numpy()
    np.testing.assert_allclose(got[0], np.full(2048, written[4], dtype=np.float32), rtol=2e-3)
    np.testing.assert_allclose(got[1], np.full(2048, written[3], dtype=np.float32), rtol=2e-3)


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
