"""The prefill-size w4a16 GEMM through CUTLASS's mixed-input kernel (native/cuda/w4a16_cutlass.cu) against a
float32 reference on fresh random inputs: its own copy of each layer made from the packed layout on the device,
a poisoned output, ragged M, both group sizes, fp16/bf16. The GPU tests need a CUDA GPU and a library built
with CUTLASS for sm_90a; the first test (bad input at the C ABI) runs everywhere."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vlmserve import _native
from vlmserve.awq_format import dequantize, quantize_rtn, unpack_int4
from vlmserve.errors import InvalidArgumentError, check
from vlmserve.kernels import (CutlassTiles, pack_w4a16, w4a16_cutlass_built, w4a16_cutlass_engine_takes,
                              w4a16_cutlass_gemm, w4a16_cutlass_prepare, w4a16_cutlass_tiles)

# N a multiple of 128 (the kernel's tile of weight rows: w4a16_cutlass_applies); ragged M, K of 1 to 86 groups,
# K = 64, 128, 640 (not a multiple of 256: the codes' reordering once overran such rows). By default (tile_n_for and
# tile_m_for in w4a16_cutlass.cu, on a GPU of 132 SMs) the small layers take tiles of 64 weight rows, 129 x 2048 x
# 11008 and 65 x 5504 x 4096 tiles of 128 rows by 64 tokens (stream-K), 2048 x 1024 x 1024 128 by 128 tokens,
# 200 x 8448 x 512 128 by 128 tokens at fewer than 256 rows, 600 x 12288 x 256 128 by 128 tokens (256-token tiles
# would pad its rows to 768), 1000 x 8192 x 1024 128 by 256 tokens (on GPUs of up to 256 SMs) and 144 x 4096 x
# 11008 (the 7B down layer) 128 by 128 tokens, K above 4,096 with a nearly empty last tile; K tiles of 128 on
# the shapes of groups of 128 at up to 256 rows with fewer 128-row tiles than SMs; gpu_session.sh's cutlass_tests
# also runs every shape on each tile and schedule forced.
SHAPES = [(17, 128, 128, 64), (64, 512, 2048, 128), (100, 384, 256, 128), (129, 2048, 11008, 128),
          (256, 4096, 2048, 128), (300, 768, 512, 64), (65, 5504, 4096, 128), (2048, 1024, 1024, 128),
          (1, 256, 256, 128), (7, 384, 640, 64), (33, 128, 64, 64), (300, 256, 640, 128), (200, 8448, 512, 64),
          (600, 12288, 256, 64), (1000, 8192, 1024, 128), (144, 4096, 11008, 128)]


def test_bad_input_is_refused_before_any_gpu_work():
    # The C ABI checks pointers, dtype and shape first, on every build and machine, with clear errors.
    lib = _native.lib()
    assert isinstance(w4a16_cutlass_built(), bool)
    with pytest.raises(InvalidArgumentError, match="NULL device pointer"):
        check(lib.vlm_w4a16_cutlass_prepare(None, 1, 1, 1, 256, 256, 128, _native.DTYPE_F16, None))
    with pytest.raises(InvalidArgumentError, match="act_dtype"):
        check(lib.vlm_w4a16_cutlass_gemm(1, 1, 1, 4, 256, 256, 128, 99, None, 0, None))
    with pytest.raises(InvalidArgumentError, match="multiple of 64"):
        check(lib.vlm_w4a16_cutlass_gemm(1, 1, 1, 4, 100, 256, 128, _native.DTYPE_F16, None, 0, None))
    if w4a16_cutlass_built():  # N of whole 64-column strips but not whole 128-row tiles: the kernel's own rule
        with pytest.raises(InvalidArgumentError, match="multiple of 128"):
            check(lib.vlm_w4a16_cutlass_gemm(1, 1, 1, 4, 192, 640, 64, _native.DTYPE_F16, None, 0, None))
    with pytest.raises(InvalidArgumentError, match="group size"):
        check(lib.vlm_w4a16_cutlass_prepare(1, 1, 1, 1, 256, 256, 32, _native.DTYPE_F16, None))


@pytest.mark.parametrize("query,inputs,outputs", [("engine_takes", [256, 256, 256, 128], 1),
                                                  ("tiles", [256, 256, 256, 128, 0], 4)])
def test_the_shape_queries_refuse_bad_shapes_and_are_off_where_the_kernel_cannot_run(query, inputs, outputs):
    # vlm_w4a16_cutlass_engine_takes (whether the engine runs a layer through the kernel) and
    # vlm_w4a16_cutlass_tiles (what the kernel runs it with): falsy where the kernel does not take the shape.
    ask = {"engine_takes": w4a16_cutlass_engine_takes, "tiles": w4a16_cutlass_tiles}[query]
    with pytest.raises(InvalidArgumentError, match="multiple of 64"):
        ask(256, 100, 256, 128)
    with pytest.raises(InvalidArgumentError, match="group size"):
        ask(256, 256, 256, 32)
    with pytest.raises(InvalidArgumentError, match="NULL output"):
        check(getattr(_native.lib(), f"vlm_w4a16_cutlass_{query}")(*inputs, *[None] * outputs))
    assert not ask(64, 192, 640, 64)  # whole 64-column strips, not whole 128-row tiles
    if query == "tiles":
        with pytest.raises(InvalidArgumentError, match="num_sms -1"):
            w4a16_cutlass_tiles(256, 256, 256, 128, num_sms=-1)
        assert not w4a16_cutlass_tiles(64, 192, 640, 64, num_sms=132)
    if _native.lib().vlm_cuda_device_count() == 0 or not w4a16_cutlass_built():
        # No GPU or no kernel here: the engine never routes a GEMM to it, and no call has tiles.
        assert not any(ask(m, 4096, 4096, 128) for m in (1, 64, 256, 2048))


# (m, n, k, group) -> the tiles on a GPU of 132 SMs (H100 SXM, H200), each the rule's documented choice
# (w4a16_cutlass.cu): 7B q/k/v, o, gate_up, down and 2B o shapes.
EXPECTED_TILES = {
    (64, 12288, 4096, 128): CutlassTiles(128, 64, 128, True),   # 96 tiles: stream-K, K tiles of 128
    (64, 4096, 4096, 128): CutlassTiles(64, 64, 128, False),    # 32 tiles: 64-row ping-pong, K tiles of 128
    (64, 4096, 4096, 64): CutlassTiles(64, 64, 64, False),      # groups of 64: K tiles of 64
    (64, 22016, 4096, 128): CutlassTiles(128, 64, 64, True),    # 172 tiles, more than the SMs: K tiles of 64
    (64, 4096, 11008, 128): CutlassTiles(128, 64, 64, True),    # K > 4096: stream-K, K tiles of 64
    (128, 12288, 4096, 128): CutlassTiles(128, 128, 128, True),  # 128 tokens: 96 tiles still half the SMs
    (144, 12288, 4096, 128): CutlassTiles(128, 64, 128, True),   # a last 128-token tile of 16 rows: 64 tokens
    (160, 12288, 4096, 128): CutlassTiles(128, 64, 128, True),   # of 32 rows: 64 tokens
    (176, 22016, 4096, 128): CutlassTiles(128, 128, 64, True),   # of 48 rows: 128 tokens, 344 tiles, K tiles of 64
    (192, 12288, 4096, 128): CutlassTiles(128, 128, 128, True),  # a last tile half full: 128 tokens
    (144, 4096, 11008, 128): CutlassTiles(128, 128, 64, True),   # long K, 64 tiles of 128 tokens: 128 tokens
    (160, 2048, 8192, 128): CutlassTiles(128, 64, 64, True),     # long K, but 32 such tiles: 64 tokens
    (256, 12288, 4096, 128): CutlassTiles(128, 256, 64, True),  # 256 tokens (no padding), K tiles of 64
    (256, 4096, 4096, 128): CutlassTiles(64, 128, 128, False),  # 32 tiles of 256 tokens too few: 128 tokens
    (384, 12288, 4096, 128): CutlassTiles(128, 128, 64, True),  # 256-token tiles would pad 384 rows to 512
    (384, 2048, 2048, 128): CutlassTiles(64, 128, 64, False),   # the same, 48 tiles: 64-row ping-pong
    (512, 12288, 4096, 128): CutlassTiles(128, 256, 64, True),  # 256 divides the rows
    (2048, 4096, 4096, 128): CutlassTiles(128, 256, 64, True),
}


def _in_a_process(query: str, calls: list[list[int]], env: dict[str, str]) -> list:
    """vlmserve.kernels.<query>(*call) for each call, JSON-encoded, in a fresh process with `env` added (the library
    reads its settings once per process)."""
    code = (f"import json, sys\nfrom vlmserve.kernels import {query} as q\n"
            "print(json.dumps([q(*c) for c in json.loads(sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(calls)], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


def _tiles_in_a_process(env: dict[str, str], num_sms: int = 132) -> list[list]:
    return _in_a_process("w4a16_cutlass_tiles", [[*shape, num_sms] for shape in EXPECTED_TILES], env)


def _require_kernel_on_this_gpu():
    import torch

    _require_kernel()
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the kernel's code is sm_90a: a compute capability 9.0 GPU runs it, this one does not")


def test_the_tiles_follow_the_layer_and_the_settings():
    # The rule on a GPU of 132 SMs, asked without one (num_sms): it needs only a library with the kernel.
    _require_kernel()
    assert _tiles_in_a_process({}) == [list(t) for t in EXPECTED_TILES.values()]
    # Each setting pins its part: K tiles of 64; 256 tokens (on 128 rows, stream-K); no stream-K.
    assert [t[2] for t in _tiles_in_a_process({"VLM_W4A16_CUTLASS_TILE_K": "64"})] == [64] * len(EXPECTED_TILES)
    assert all(t[:2] == [128, 256] and t[3] for t in _tiles_in_a_process({"VLM_W4A16_CUTLASS_TILE_N": "256"}))
    assert _tiles_in_a_process({"VLM_W4A16_CUTLASS_STREAMK": "0"}) == \
        [_without_stream_k(t) for t in EXPECTED_TILES.values()]


@pytest.mark.gpu
def test_the_tiles_on_this_gpu_are_the_rule_on_its_sm_count():
    import torch

    _require_kernel_on_this_gpu()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = [list(shape) for shape in EXPECTED_TILES]
    assert _in_a_process("w4a16_cutlass_tiles", shapes, {}) == _tiles_in_a_process({}, num_sms=sms)


def _without_stream_k(t: CutlassTiles) -> list:
    if t.tile_n == 256 or t.tile_m == 64:  # the 256-token kernel is stream-K only; 64-row tiles are data-parallel
        return list(t)
    return [t.tile_m, t.tile_n, 64, False]  # data-parallel tiles of 128 rows: K tiles of 64 alone


def _takes_in_a_process(env: dict[str, str]) -> list[bool]:
    """The engine rule at 7B o (4096) and q/k/v (12288) shapes for 16/32/64/200/256/2048 rows."""
    calls = [[m, n, 4096, 128] for n in (4096, 12288) for m in (16, 32, 64, 200, 256, 2048)]
    return _in_a_process("w4a16_cutlass_engine_takes", calls, env)


@pytest.mark.gpu
def test_the_engine_rule_follows_its_settings():
    # On by default: from 32 rows on wide layers (N >= 8192), from 97 on the others (w4a16_cutlass_rows.cpp),
    # with no upper limit; VLM_W4A16_CUTLASS=0 turns it off, the row settings move the window.
    _require_kernel_on_this_gpu()
    rows = (16, 32, 64, 200, 256, 2048)
    assert _takes_in_a_process({}) == [m >= 97 for m in rows] + [m >= 32 for m in rows]
    assert _takes_in_a_process({"VLM_W4A16_CUTLASS": "0"}) == [False] * 12
    assert _takes_in_a_process({"VLM_W4A16_CUTLASS_MAX_ROWS": "256", "VLM_W4A16_CUTLASS_MIN_ROWS": "64",
                                "VLM_W4A16_CUTLASS_WIDE_MIN_ROWS": "16"}) == \
        [64 <= m <= 256 for m in rows] + [16 <= m <= 256 for m in rows]


def _require_kernel():
    if not w4a16_cutlass_built():
        pytest.skip("this library has no CUTLASS w4a16 GEMM (built without CUTLASS's headers or without sm_90a)")


def _layer(n: int, k: int, group: int, dtype: str, seed: int):
    """A random 4-bit layer on the GPU: (W as (q - z) s in float32, W as the kernel rounds it: s q + b with the
    offset b = -s z rounded to the activation type and the sum rounded once, packed codes, packed scales/zeros)."""
    import torch

    w = np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32) * 0.05
    qweight, qzeros, scales = quantize_rtn(w, group)
    bf16 = dtype == "bfloat16"
    packed, sz = pack_w4a16(qweight, qzeros, scales, group, bf16=bf16)
    tdtype = getattr(torch, dtype)
    q = torch.from_numpy(unpack_int4(qweight).astype(np.float32)).T            # [N, K]
    z = torch.from_numpy(unpack_int4(qzeros).astype(np.float32)).T.repeat_interleave(group, 1)
    s = torch.from_numpy(scales.astype(np.float32)).to(tdtype).float().T.repeat_interleave(group, 1)
    offset = (-s * z).to(tdtype).float()
    as_kernel = (s * q + offset).to(tdtype).float()  # s q is exact in float32; one rounding of the sum
    dev = torch.device("cuda")
    return (torch.from_numpy(dequantize(qweight, qzeros, scales)).to(dev), as_kernel.to(dev),
            torch.from_numpy(packed).to(dev), torch.from_numpy(sz.view(np.int16)).to(dev))


# Relative error against the weights as the kernel rounds them: float32 sums in another order, one rounding of
# the output. Against the (q - z) s weights the offset's rounding adds up to half a unit in the last place of s z a
# weight, the same for a whole group of a column: up to ~2e-3 (fp16) / ~1.5e-2 (bf16) of the output here.
TOL_AS_KERNEL = {"float16": 1e-3, "bfloat16": 8e-3}
TOL_EXACT_WEIGHTS = {"float16": 4e-3, "bfloat16": 2.5e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m,n,k,group", SHAPES)
def test_matches_reference(m, n, k, group, dtype):
    import torch

    _require_kernel()
    seed = hash(("cutlass", m, n, k, group, dtype)) % 2**31
    w_exact, w_kernel, packed, sz = _layer(n, k, group, dtype, seed)
    dev, tdtype = w_exact.device, getattr(torch, dtype)
    prepared = w4a16_cutlass_prepare(packed, sz, n, k, group, bf16=dtype == "bfloat16")
    a = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dev, tdtype)
    out = torch.full((m, n), float("nan"), dtype=tdtype, device=dev)  # poisoned
    w4a16_cutlass_gemm(a, prepared, n, group, out=out)
    torch.cuda.synchronize()
    assert not torch.isnan(out).any(), "outputs never written"
    errors = {}
    for name, w in (("as kernel", w_kernel), ("exact weights", w_exact)):
        ref = a.float() @ w.T
        errors[name] = ((out.float() - ref).norm() / ref.norm()).item()
    assert errors["as kernel"] < TOL_AS_KERNEL[dtype] and errors["exact weights"] < TOL_EXACT_WEIGHTS[dtype], \
        f"relative errors {errors}"


@pytest.mark.gpu
def test_results_are_deterministic():
    import torch

    _require_kernel()
    m, n, k, group = 300, 1024, 8192, 128  # tiles of 128 rows whose K the stream-K scheduler splits over idle SMs
    _, _, packed, sz = _layer(n, k, group, "float16", 7)
    prepared = w4a16_cutlass_prepare(packed, sz, n, k, group)
    a = torch.randn(m, k, device=packed.device, dtype=torch.float16)
    first = w4a16_cutlass_gemm(a, prepared, n, group)
    for _ in range(3):
        assert torch.equal(w4a16_cutlass_gemm(a, prepared, n, group), first)


@pytest.mark.gpu
def test_a_short_workspace_is_refused():
    import torch

    from vlmserve.kernels import w4a16_cutlass_workspace_bytes

    _require_kernel()
    m, n, k, group = 64, 512, 8192, 128  # 4 tiles of 128 rows for 132 SMs: the stream-K scheduler splits K
    need = w4a16_cutlass_workspace_bytes(m, n, k, group)
    if need == 0:
        pytest.skip("the scheduler needs no workspace for this shape on this GPU")
    _, _, packed, sz = _layer(n, k, group, "float16", 3)
    prepared = w4a16_cutlass_prepare(packed, sz, n, k, group)
    a = torch.randn(m, k, device=packed.device, dtype=torch.float16)
    short = torch.empty(need - 1, dtype=torch.uint8, device=packed.device)
    with pytest.raises(InvalidArgumentError, match="workspace"):
        w4a16_cutlass_gemm(a, prepared, n, group, workspace=short)


@pytest.mark.gpu
def test_bad_shapes_are_refused():
    import torch

    _require_kernel()
    dev = torch.device("cuda")
    junk = torch.zeros(1 << 16, dtype=torch.uint8, device=dev)
    with pytest.raises(InvalidArgumentError, match="multiple of 64"):
        w4a16_cutlass_prepare(junk, junk, 100, 256, 128)
    with pytest.raises(InvalidArgumentError, match="group size"):
        w4a16_cutlass_gemm(torch.zeros(4, 256, device=dev, dtype=torch.float16), junk, 256, 32)
