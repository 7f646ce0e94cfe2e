"""The AutoAWQ "gemm" tensor layout, and round-to-nearest quantization into it.

A linear layer W [out, in] becomes
  qweight int32 [in, out/8]  : 8 four-bit codes per int32, column order 0,2,4,6,1,3,5,7
  qzeros  int32 [in/g, out/8]: zero points, packed the same way
  scales  fp16  [in/g, out]
with W[n, k] ≈ (q[k, n] - z[k//g, n]) * s[k//g, n].
"""
from __future__ import annotations

import numpy as np

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an int32 holds column 8*c + AWQ_PACK_ORDER[i]


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """codes [rows, cols] in 0..15 -> int32 [rows, cols/8] in AutoAWQ order."""
    codes = np.asarray(codes)
    rows, cols = codes.shape
    if cols % 8:
        raise ValueError(f"AWQ packing needs a multiple of 8 columns, got {cols}")
    if codes.min() < 0 or codes.max() > 15:
        raise ValueError("4-bit codes must lie in [0, 15]")
    c = codes.astype(np.uint32)
    packed = np.zeros((rows, cols // 8), dtype=np.uint32)
    for i, col in enumerate(AWQ_PACK_ORDER):
        packed |= c[:, col::8] << np.uint32(4 * i)
    return packed.view(np.int32)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """int32 [rows, cols/8] -> uint8 codes [rows, cols]."""
    p = np.asarray(packed).view(np.uint32)
    rows, pc = p.shape
    codes = np.zeros((rows, pc * 8), dtype=np.uint8)
    for i, col in enumerate(AWQ_PACK_ORDER):
        codes[:, col::8] = (p >> np.uint32(4 * i)) & np.uint32(15)
    return codes


def quantize_rtn(weight: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit round-to-nearest of W [out, in] per group of `group_size` inputs.

    Returns (qweight, qzeros, scales) in the AutoAWQ layout. Codes are computed
    with the fp16-rounded scales, so dequantize() reproduces exactly what an
    AWQ engine sees."""
    w = np.asarray(weight, dtype=np.float32)
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"group size {group_size} does not divide in_features {in_f}")
    g = w.reshape(out_f, in_f // group_size, group_size)
    wmax, wmin = g.max(axis=2), g.min(axis=2)
    scales = (np.maximum(wmax - wmin, 1e-5) / 15.0).astype(np.float16)
    s = scales.astype(np.float32)
    zeros = np.clip(np.round(-wmin / s), 0, 15)
    codes = np.clip(np.round(g / s[:, :, None]) + zeros[:, :, None], 0, 15).astype(np.uint8)
    qweight = pack_int4(codes.reshape(out_f, in_f).T)
    qzeros = pack_int4(zeros.astype(np.uint8).T)
    return qweight, qzeros, np.ascontiguousarray(scales.T)


def dequantize(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """AutoAWQ tensors -> W [out, in] float32."""
    q = unpack_int4(qweight).astype(np.float32)            # [in, out]
    z = unpack_int4(qzeros).astype(np.float32)             # [in/g, out]
    s = np.asarray(scales, dtype=np.float32)               # [in/g, out]
    group = q.shape[0] // s.shape[0]
    w = (q - np.repeat(z, group, axis=0)) * np.repeat(s, group, axis=0)
    return np.ascontiguousarray(w.T)
