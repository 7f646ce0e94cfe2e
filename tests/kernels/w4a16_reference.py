"""One w4a16 GEMM call against a float32 reference on fresh random inputs, with a
poisoned output (shared by the kernel tests and their subprocess checks)."""
from __future__ import annotations

import numpy as np

from vlmserve.awq_format import dequantize, quantize_rtn
from vlmserve.kernels import pack_w4a16, w4a16_gemm

# Relative Frobenius error vs the fp32 reference: fp16 products of (q - z) * s
# round once (2^-11), fp32 accumulation, one rounding of the output.
TOL = {"float16": 2e-3, "bfloat16": 1e-2}


def relative_errors(m: int, n: int, k: int, group: int, dtype: str) -> list[float]:
    """Errors without and with the residual epilogue; inf where an output was never written."""
    import torch

    seed = hash((m, n, k, group, dtype)) % 2**31
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, k)).astype(np.float32) * 0.05
    qweight, qzeros, scales = quantize_rtn(w, group)
    packed, sz = pack_w4a16(qweight, qzeros, scales, group, bf16=dtype == "bfloat16")
    dev = torch.device("cuda")
    tdtype = getattr(torch, dtype)
    a = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dev, tdtype)
    residual = torch.randn(m, n, generator=torch.Generator().manual_seed(seed + 1)).to(dev, tdtype)
    w_ref = torch.from_numpy(dequantize(qweight, qzeros, scales)).to(dev)
    packed_t, sz_t = torch.from_numpy(packed).to(dev), torch.from_numpy(sz.view(np.int16)).to(dev)
    errors = []
    for res in (None, residual):
        out = torch.full((m, n), float("nan"), dtype=tdtype, device=dev)  # poisoned
        w4a16_gemm(a, packed_t, sz_t, n, group, residual=res, out=out)
        torch.cuda.synchronize()
        if torch.isnan(out).any():
            errors.append(float("inf"))
            continue
        ref = a.float() @ w_ref.T + (res.float() if res is not None else 0)
        errors.append(((out.float() - ref).norm() / ref.norm()).item())
    return errors
