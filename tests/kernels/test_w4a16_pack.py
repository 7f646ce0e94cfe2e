"""The tensor-core weight layout (host side, runs everywhere): unpacking it the
way the kernel reads fragments gives back every code, scale and zero."""
from __future__ import annotations

import numpy as np
import pytest

from vlmserve.awq_format import quantize_rtn, unpack_int4
from vlmserve.kernels import pack_w4a16


def fragment_codes(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """Reads codes back as the kernel does: lane (g, t), word w, tile 2w+j, bits 8j + {0, 16, 4, 20}."""
    words = packed.view(np.uint32).reshape(n // 64, k // 16, 32, 4)
    codes = np.zeros((k, n), dtype=np.uint8)
    for lane in range(32):
        g, t = divmod(lane, 4)
        for w in range(4):
            for j in range(2):
                col = np.arange(n // 64)[:, None] * 64 + (2 * w + j) * 8 + g
                kk = np.arange(k // 16)[None, :] * 16 + 2 * t
                word = words[:, :, lane, w]
                for dk, bit in ((0, 0), (1, 16), (8, 4), (9, 20)):
                    codes[kk + dk, col] = (word >> (8 * j + bit)) & 15
    return codes


@pytest.mark.parametrize("n,k,group,bf16", [(64, 128, 64, False), (256, 512, 128, False), (192, 256, 64, True)])
def test_pack_roundtrip(n, k, group, bf16):
    rng = np.random.default_rng(n + k)
    qweight, qzeros, scales = quantize_rtn(rng.normal(size=(n, k)).astype(np.float32), group)
    packed, sz = pack_w4a16(qweight, qzeros, scales, group, bf16=bf16)
    assert packed.nbytes == n * k // 2
    np.testing.assert_array_equal(fragment_codes(packed, n, k), unpack_int4(qweight))
    # scales then (magic + zero) per strip and group, column 8j+g at g*8+j
    sz = sz.reshape(n // 64, k // group, 2, 64)
    perm = np.array([(p % 8) * 8 + p // 8 for p in range(64)])
    as_f32 = (lambda u: (u.astype(np.uint32) << 16).view(np.float32)) if bf16 else (
        lambda u: u.view(np.float16).astype(np.float32))
    got_scales = as_f32(sz[:, :, 0, perm]).transpose(1, 0, 2).reshape(k // group, n)
    got_zeros = as_f32(sz[:, :, 1, perm]).transpose(1, 0, 2).reshape(k // group, n) - (128 if bf16 else 1024)
    want_scales = scales.astype(np.float32)
    if bf16:
        np.testing.assert_allclose(got_scales, want_scales, rtol=2 ** -8)
    else:
        np.testing.assert_array_equal(got_scales, want_scales)
    np.testing.assert_array_equal(got_zeros, unpack_int4(qzeros).astype(np.float32))


def test_pack_rejects_bad_shapes():
    from vlmserve.errors import InvalidArgumentError

    qweight, qzeros, scales = quantize_rtn(np.ones((96, 128), np.float32), 64)
    with pytest.raises(InvalidArgumentError, match="multiple of 64"):
        pack_w4a16(qweight, qzeros, scales, 64)
