"""The engine's residual update and RMSNorm kernel (vlm_add_rms_norm) against a
float32 torch reference on fresh random inputs: the vectorised form (rows of up to
8192 elements, a multiple of 4) and the general one (longer rows, or lengths not a
multiple of 4), fp16 and bf16, with and without an update, poisoned outputs.
Needs a CUDA GPU."""
from __future__ import annotations

import pytest

from vlmserve.kernels import add_rms_norm

pytestmark = pytest.mark.gpu

# Relative error of one output element: its rounding to the act dtype (half an ulp: 2^-11 for fp16,
# 2^-8 for bf16) and the fp32 sum of squares in another order (a few fp32 ulps of 1 / rms).
RTOL = {"float16": 1e-3, "bfloat16": 8e-3}


@pytest.mark.parametrize("rows,hidden", [(1, 2048), (3, 4096), (5, 1000), (2, 8192), (64, 2048), (4, 11008),
                                         (3, 1022), (1, 7)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("with_delta", [False, True])
def test_matches_reference(rows, hidden, dtype, with_delta):
    import torch

    gen = torch.Generator().manual_seed(hash((rows, hidden, dtype, with_delta)) % 2**31)
    tdtype = getattr(torch, dtype)
    h = (torch.randn(rows, hidden, generator=gen) * 3).cuda()
    delta = torch.randn(rows, hidden, generator=gen).to("cuda", tdtype) if with_delta else None
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).cuda()
    eps = 1e-5
    expected_h = h + delta.float() if with_delta else h.clone()
    out = torch.full((rows, hidden), float("nan"), dtype=tdtype, device="cuda")  # poisoned
    add_rms_norm(h, delta, weight, eps, out=out, dtype=tdtype)
    torch.cuda.synchronize()
    assert torch.equal(h, expected_h), "h + delta is one fp32 addition per element"
    assert not torch.isnan(out).any(), "some outputs were never written"
    x = expected_h
    ref = weight * (x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps))
    torch.testing.assert_close(out.float(), ref, rtol=RTOL[dtype], atol=1e-5)


def test_refused_calls():
    import torch

    from vlmserve.errors import VlmError

    h = torch.zeros(2, 64, device="cuda")
    with pytest.raises(VlmError, match="eps"):
        add_rms_norm(h, None, torch.ones(64, device="cuda"), -1.0)
