"""Single kernels of libvlmcore on torch tensors, for kernel tests and
benchmarks (vlmcore_kernels.h). Serving code goes through Engine instead."""
from __future__ import annotations

import ctypes

import numpy as np

from vlmserve import _native
from vlmserve.errors import check


def pack_w4a16(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int,
               bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """AutoAWQ tensors -> (packed weights uint8, packed scales/zeros uint16) in the tensor-core layout."""
    k, n8 = qweight.shape
    n = n8 * 8
    wb, szb = ctypes.c_int64(), ctypes.c_int64()
    check(_native.lib().vlm_w4a16_packed_sizes(n, k, group_size, ctypes.byref(wb), ctypes.byref(szb)))
    packed = np.zeros(wb.value, dtype=np.uint8)
    sz = np.zeros(szb.value // 2, dtype=np.uint16)
    qweight = np.ascontiguousarray(qweight, dtype=np.int32)
    qzeros = np.ascontiguousarray(qzeros, dtype=np.int32)
    scales = np.ascontiguousarray(scales, dtype=np.float16)
    dtype = _native.DTYPE_BF16 if bf16 else _native.DTYPE_F16
    check(_native.lib().vlm_w4a16_pack(qweight.ctypes.data, qzeros.ctypes.data, scales.ctypes.data, n, k,
                                       group_size, dtype, packed.ctypes.data, sz.ctypes.data))
    return packed, sz


def w4a16_workspace_bytes(m: int, n: int, k: int, group_size: int) -> int:
    out = ctypes.c_int64()
    check(_native.lib().vlm_w4a16_workspace_bytes(m, n, k, group_size, ctypes.byref(out)))
    return out.value


def w4a16_gemm(a, packed, scale_zero, n: int, group_size: int, residual=None, out=None, workspace=None):
    """a [M, K] fp16/bf16 CUDA tensor -> [M, N] on torch's current stream."""
    import torch

    m, k = a.shape
    bf16 = a.dtype == torch.bfloat16
    if out is None:
        out = torch.empty(m, n, dtype=a.dtype, device=a.device)
    if workspace is None:
        ws = w4a16_workspace_bytes(m, n, k, group_size)
        workspace = torch.zeros(max(ws, 1), dtype=torch.uint8, device=a.device)
    check(_native.lib().vlm_w4a16_gemm(
        a.data_ptr(), packed.data_ptr(), scale_zero.data_ptr(),
        residual.data_ptr() if residual is not None else None, out.data_ptr(), m, n, k, group_size,
        _native.DTYPE_BF16 if bf16 else _native.DTYPE_F16, workspace.data_ptr(),
        ctypes.c_void_p(torch.cuda.current_stream(a.device).cuda_stream)))
    return out
