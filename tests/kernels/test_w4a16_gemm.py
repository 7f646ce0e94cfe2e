"""w4a16 tensor-core GEMM against a float32 reference on fresh random inputs,
with a poisoned output, many shapes (ragged M), both group sizes, fp16/bf16,
with and without the residual epilogue. Needs a CUDA GPU."""
from __future__ import annotations

import numpy as np
import pytest

from vlmserve.awq_format import quantize_rtn, unpack_int4
from vlmserve.kernels import pack_w4a16, w4a16_gemm
from w4a16_reference import TOL, relative_errors

pytestmark = pytest.mark.gpu

SHAPES = [(1, 256, 128, 64), (3, 512, 256, 128), (16, 256, 1024, 128), (17, 768, 512, 64), (33, 1280, 256, 64),
          (64, 512, 2048, 128), (100, 256, 384, 128), (257, 512, 1024, 64), (1, 4096, 4096, 128),
          (2048, 1024, 1024, 128), (5, 2048, 11008 // 128 * 128, 128),
          # N a multiple of 64 but not of 256: tensor-parallel shards (5504 = the 7B FFN over 2 ranks).
          (1, 64, 128, 64), (7, 320, 256, 128), (1, 5504, 4096, 128), (40, 4096, 5504, 128),
          # The last row count of the swapped decode form and the first after it; K of 33 units (uneven slices).
          (8, 768, 4224, 64), (9, 512, 4224, 128), (2, 2048, 8192, 128),
          # Decode batch sizes around the decode kernel's last row count (4): N of 5 and 86 strips, K of 172 groups.
          (4, 320, 2048, 64), (5, 5504, 2048, 128), (13, 1024, 11008 // 64 * 64, 64)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m,n,k,group", SHAPES)
def test_matches_reference(m, n, k, group, dtype):
    for err in relative_errors(m, n, k, group, dtype):
        assert err < TOL[dtype], f"relative error {err:.2e} (inf: outputs never written)"


def test_results_are_deterministic():
    import torch

    m, n, k, group = 4, 1024, 4096, 128
    rng = np.random.default_rng(0)
    qweight, qzeros, scales = quantize_rtn(rng.normal(size=(n, k)).astype(np.float32), group)
    packed, sz = pack_w4a16(qweight, qzeros, scales, group)
    dev = torch.device("cuda")
    a = torch.randn(m, k, device=dev, dtype=torch.float16)
    p, s = torch.from_numpy(packed).to(dev), torch.from_numpy(sz.view(np.int16)).to(dev)
    first = w4a16_gemm(a, p, s, n, group)
    for _ in range(5):
        assert torch.equal(w4a16_gemm(a, p, s, n, group), first)


def test_bad_shapes_are_refused():
    import torch

    from vlmserve.errors import InvalidArgumentError

    dev = torch.device("cuda")
    a = torch.randn(2, 128, device=dev, dtype=torch.float16)
    junk = torch.zeros(1024, dtype=torch.uint8, device=dev)
    with pytest.raises(InvalidArgumentError, match="multiple of 64"):
        w4a16_gemm(a, junk, junk, 100, 64)
    with pytest.raises(InvalidArgumentError, match="group size"):
        w4a16_gemm(a, junk, junk, 256, 32)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("n,k,group", [(64, 128, 64), (320, 256, 128), (2048, 1024, 128), (5504, 4096, 128),
                                       (768, 512, 64)])
def test_dequantize_gives_the_exact_weights(n, k, group, dtype):
    # The engine multiplies these with a dense GEMM at large M: they must be (q - z) * s rounded once, exactly.
    import torch

    from vlmserve.kernels import w4a16_dequantize

    rng = np.random.default_rng(n * 7 + k)
    qweight, qzeros, scales = quantize_rtn(rng.normal(size=(n, k)).astype(np.float32) * 0.05, group)
    bf16 = dtype == "bfloat16"
    packed, sz = pack_w4a16(qweight, qzeros, scales, group, bf16=bf16)
    dev = torch.device("cuda")
    tdtype = getattr(torch, dtype)
    # Codes and zeros [K][N]: (q - z) is exact in fp16/bf16; the product with the scale rounds once.
    q = torch.from_numpy(unpack_int4(qweight).astype(np.float32))
    z = torch.from_numpy(unpack_int4(qzeros).astype(np.float32)).repeat_interleave(group, 0)
    s = torch.from_numpy(scales.astype(np.float32)).to(tdtype).float().repeat_interleave(group, 0)
    ref = ((q - z) * s).to(tdtype).T.contiguous().to(dev)
    out = torch.full((n, k), float("nan"), dtype=tdtype, device=dev)  # poisoned
    w4a16_dequantize(torch.from_numpy(packed).to(dev), torch.from_numpy(sz.view(np.int16)).to(dev), n, k, group,
                     bf16=bf16, out=out)
    torch.cuda.synchronize()
    assert not torch.isnan(out).any(), "some weights were never written"
    assert torch.equal(out, ref)


@pytest.mark.parametrize("n,k,group,strips", [(5504, 4096, 128, (0, 3, 40, 86)), (768, 512, 64, (0, 5, 12))])
def test_dequantizing_a_stretch_of_strips_gives_those_rows(n, k, group, strips):
    """The engine with VLM_DEQUANT_CHUNK_MB dequantizes output columns a stretch of 64-column strips at a time from
    offsets into the packed weights (k * 32 bytes a strip) and scales (k / group * 256 bytes a strip): each
    stretch must be exactly those rows of the whole layer's dequantization."""
    import torch

    from vlmserve.kernels import w4a16_dequantize

    rng = np.random.default_rng(n + k)
    qweight, qzeros, scales = quantize_rtn(rng.normal(size=(n, k)).astype(np.float32) * 0.05, group)
    packed, sz = pack_w4a16(qweight, qzeros, scales, group)
    dev = torch.device("cuda")
    w8, sz8 = torch.from_numpy(packed.view(np.uint8).reshape(-1)).to(dev), torch.from_numpy(sz.view(np.uint8).reshape(-1)).to(dev)
    whole = w4a16_dequantize(w8, sz8, n, k, group)
    for s0, s1 in zip(strips, strips[1:]):
        part = torch.full(((s1 - s0) * 64, k), float("nan"), dtype=torch.float16, device=dev)  # poisoned
        w4a16_dequantize(w8[s0 * k * 32:], sz8[s0 * (k // group) * 256:], (s1 - s0) * 64, k, group, out=part)
        assert torch.equal(part, whole[s0 * 64:s1 * 64]), f"strips {s0}..{s1}"
