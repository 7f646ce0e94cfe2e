"""The decode-size dense GEMM (native/cuda/dense_decode.cu: fp16/bf16 weights, M <= 4), what the
engine runs for unquantized models' decode steps, against a float32 reference on fresh random
inputs with poisoned outputs: plain A, the silu(gate) * up input of the down projection, and the
fused RMSNorm, which must give the same bits as the norm kernel followed by the same GEMM. Needs a
CUDA GPU (the calls it refuses are checked on CPU in tests/test_bad_input.py)."""
from __future__ import annotations

import pytest

from w4a16_reference import VECTORISED_NORM_MAX

pytestmark = pytest.mark.gpu

# Relative Frobenius error against float32 sums of the same rounded inputs: the kernel sums in fp32
# and rounds each output once, so what is left is that rounding (2^-11 fp16, 2^-8 bf16) and the
# order of the fp32 sums.
TOL = {"float16": 2e-3, "bfloat16": 8e-3}

# (M, N, K): model shapes (2B qkv / o / gate_up / down, 7B down), and ragged ones: N not a multiple
# of the warps of a block or of the grid, K not a multiple of a warp's 2048-weight chunk, K = 8.
SHAPES = [(1, 4096, 2048), (1, 2048, 2048), (2, 16384, 2048), (1, 2048, 8192), (4, 4096, 11008), (3, 4099, 2056),
          (1, 7, 8), (2, 1, 4104), (4, 333, 2048), (3, 70000, 64)]


def _tensors(m: int, n: int, k: int, dtype: str, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    tdtype = getattr(torch, dtype)
    a = torch.randn(m, k, generator=gen).to("cuda", tdtype)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to("cuda", tdtype)
    return a, w


def _rel_err(out, ref) -> float:
    import torch

    if torch.isnan(out).any():
        return float("inf")
    return ((out.float() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_matches_reference(m, n, k, dtype):
    import torch

    from vlmserve.kernels import dense_decode_gemm

    a, w = _tensors(m, n, k, dtype, seed=hash((m, n, k, dtype)) % 2**31)
    out = torch.full((m, n), float("nan"), dtype=a.dtype, device="cuda")  # poisoned
    dense_decode_gemm(a, w, out=out)
    torch.cuda.synchronize()
    assert _rel_err(out, a.float() @ w.float().T) < TOL[dtype]


@pytest.mark.parametrize("m,n,k", [(1, 2048, 8192), (4, 333, 2056), (2, 4096, 11008)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_silu_up_input(m, n, k, dtype):
    import torch
    import torch.nn.functional as F

    from vlmserve.kernels import dense_decode_gemm

    gate_up, w = _tensors(m, n, 2 * k, dtype, seed=hash(("silu", m, n, k, dtype)) % 2**31)
    w = w[:, :k].contiguous()
    out = torch.full((m, n), float("nan"), dtype=w.dtype, device="cuda")
    dense_decode_gemm(gate_up, w, gate_up_input=True, out=out)
    # silu(gate) * up rounded to the act dtype, as the separate SiLU kernel writes it.
    a = (F.silu(gate_up[:, :k].float()) * gate_up[:, k:].float()).to(w.dtype)
    torch.cuda.synchronize()
    assert _rel_err(out, a.float() @ w.float().T) < TOL[dtype]


@pytest.mark.parametrize("m,n,k", [(1, 4096, 2048), (4, 16384, 2048), (3, 1000, 4096), (2, 64, 11008)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_norm_is_the_norm_kernel_then_the_gemm(m, n, k, dtype):
    import torch

    from vlmserve.kernels import add_rms_norm, dense_decode_gemm, dense_decode_gemm_rms_norm

    gen = torch.Generator().manual_seed(hash(("norm", m, n, k, dtype)) % 2**31)
    tdtype = getattr(torch, dtype)
    h = (torch.randn(m, k, generator=gen) * 3).cuda()
    delta = torch.randn(m, k, generator=gen).to("cuda", tdtype)
    norm_w = (1 + 0.1 * torch.randn(k, generator=gen)).cuda()
    w = (torch.randn(n, k, generator=gen) / k**0.5).to("cuda", tdtype)
    eps = 1e-6
    for d in (None, delta):
        out = torch.full((m, n), float("nan"), dtype=tdtype, device="cuda")
        h_out = torch.full_like(h, float("nan"))
        dense_decode_gemm_rms_norm(h, d, norm_w, eps, w, h_out=h_out if d is not None else None, out=out)
        h_two = h.clone()
        a_two = add_rms_norm(h_two, d, norm_w, eps, dtype=tdtype)
        out_two = dense_decode_gemm(a_two, w)
        torch.cuda.synchronize()
        if d is not None:
            assert torch.equal(h_out, h_two), "h + delta differs from the norm kernel's"
        if k <= VECTORISED_NORM_MAX:
            assert torch.equal(out, out_two), "output differs from the norm kernel + GEMM"
        x = h + (d.float() if d is not None else 0)
        a_ref = (norm_w * (x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps))).to(tdtype)
        assert _rel_err(out, a_ref.float() @ w.float().T) < TOL[dtype]


# The lm head's shapes (2B vocab 92544 x 2048, 7B 32000 x 4096) and ragged ones (N not a multiple of a
# block's warps, K not of a warp's chunk).
LOGIT_SHAPES = [(1, 92544, 2048), (1, 32000, 4096), (2, 70001, 64), (4, 333, 2056), (3, 4099, 2056)]
# fp32 outputs: no rounding to the act dtype, so only the order of the fp32 sums differs from the reference.
LOGIT_TOL = 1e-5


@pytest.mark.parametrize("m,n,k", LOGIT_SHAPES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_logits_in_float32_match_reference_and_the_policy_changes_no_bits(m, n, k, dtype):
    import torch

    from vlmserve.kernels import dense_decode_gemm, dense_decode_logits

    a, w = _tensors(m, n, k, dtype, seed=hash(("logits", m, n, k, dtype)) % 2**31)
    outs = {}
    for hint in (True, False):
        outs[hint] = torch.full((m, n), float("nan"), dtype=torch.float32, device="cuda")  # poisoned
        dense_decode_logits(a, w, l2_evict_first=hint, out=outs[hint])
    rounded = dense_decode_gemm(a, w)
    torch.cuda.synchronize()
    assert _rel_err(outs[True], a.float() @ w.float().T) < LOGIT_TOL
    assert torch.equal(outs[True], outs[False]), "the L2 policy changed the logits"
    # The act-dtype form is the same sums rounded once.
    assert torch.equal(outs[True].to(a.dtype), rounded)


@pytest.mark.parametrize("n,k", [(92544, 2048), (32000, 4096), (70001, 64), (333, 2056)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_greedy_token_taken_in_the_logits_kernel_is_argmax_rows(n, k, dtype):
    """The lm head's kernel may take the greedy token in its own tail (the blocks' bests reduced by the
    last to finish): the same index and value as argmax_rows over its logits, ties to the first index, a
    NaN logit never winning, twice in a row on one workspace (its counter left at zero)."""
    import torch

    from vlmserve.kernels import argmax_rows, dense_decode_logits

    a, w = _tensors(1, n, k, dtype, seed=hash(("argmax", n, k, dtype)) % 2**31)
    best = int(torch.argmax(dense_decode_logits(a, w)).item())
    # The best row copied before and after itself: a three-way tie, which the first copy must win.
    before, after = best // 2, best + (n - best) // 2
    w[before] = w[best]
    w[after] = w[best]
    nan_row = next(r for r in (best + 1, best + 2, best + 3, 0, 1, 2) if r % n not in (best, before, after)) % n
    w[nan_row] = float("nan")
    plain = dense_decode_logits(a, w)
    for _ in range(2):
        logits, index, value = dense_decode_logits(a, w, argmax=True)
        ref_index, ref_value = argmax_rows(logits)
        torch.cuda.synchronize()
        assert torch.equal(logits.view(torch.int32), plain.view(torch.int32))  # bit for bit, the NaN too
        assert index.item() == min(best, before) == ref_index.item()
        assert torch.equal(value.view(torch.int32), ref_value.view(torch.int32))
        assert value.item() == logits[0, index.item()].item()


def test_refused_on_gpu():
    import torch

    from vlmserve.errors import InvalidArgumentError, VlmError
    from vlmserve.kernels import dense_decode_gemm, dense_decode_logits

    w = torch.zeros(64, 256, dtype=torch.float16, device="cuda")
    with pytest.raises(VlmError, match="m must be 1..4"):
        dense_decode_gemm(torch.zeros(5, 256, dtype=torch.float16, device="cuda"), w)
    with pytest.raises(VlmError, match="16-byte aligned"):
        a = torch.zeros(1, 264, dtype=torch.float16, device="cuda")[:, 1:257]
        from vlmserve import _native
        from vlmserve.errors import check
        check(_native.lib().vlm_dense_decode_gemm(a.data_ptr(), w.data_ptr(), w.data_ptr(), 1, 64, 256, 2, 0, None))
    with pytest.raises(InvalidArgumentError, match="float32 out"):
        dense_decode_logits(torch.zeros(1, 256, dtype=torch.float16, device="cuda"), w,
                            out=torch.zeros(1, 64, dtype=torch.float16, device="cuda"))
    with pytest.raises(VlmError, match="one row only"):
        dense_decode_logits(torch.zeros(2, 256, dtype=torch.float16, device="cuda"), w, argmax=True)
    with pytest.raises(VlmError, match="shared memory"):  # 4 rows of 2^20 elements: 8 MiB of A
        big = torch.zeros(4, 1 << 20, dtype=torch.float16, device="cuda")
        dense_decode_gemm(big, torch.zeros(8, 1 << 20, dtype=torch.float16, device="cuda"))
