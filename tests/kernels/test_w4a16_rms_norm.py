"""The RMSNorm folded into the decode-size w4a16 GEMM (vlm_w4a16_gemm_rms_norm):
its results under every plan arrangement are checked with the GEMM's in
test_w4a16_decode.py (check_w4a16_shapes.py: the same bits as the norm kernel
followed by the GEMM, and the float32 reference); here, with the default plan,
a ragged shape of each kind, and the calls it refuses. Needs a CUDA GPU."""
from __future__ import annotations

import numpy as np
import pytest

from w4a16_reference import rms_norm_gemm_failures

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("m,n,k,group", [(1, 2048, 2048, 128), (2, 6144, 2048, 128), (3, 320, 4224, 64),
                                         (4, 22016, 4096, 128), (1, 64, 8192, 64)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_norm_is_the_norm_kernel_then_the_gemm(m, n, k, group, dtype):
    failures = rms_norm_gemm_failures(m, n, k, group, dtype)
    assert not failures, "\n".join(failures)


def test_refused_calls():
    import torch

    from vlmserve.errors import VlmError
    from vlmserve.kernels import pack_w4a16, w4a16_gemm_rms_norm

    n, k, group = 128, 256, 128
    packed, sz = pack_w4a16(np.zeros((k, n // 8), np.int32), np.zeros((k // group, n // 8), np.int32),
                            np.ones((k // group, n), np.float16), group)
    packed, sz = torch.from_numpy(packed).cuda(), torch.from_numpy(sz.view(np.int16)).cuda()
    w = torch.ones(k, device="cuda")
    h = torch.zeros(5, k, device="cuda")
    with pytest.raises(VlmError, match="decode-size"):  # 5 rows: the general kernel's, no fused norm
        w4a16_gemm_rms_norm(h, None, w, 1e-6, packed, sz, n, group)
    h = torch.zeros(1, k, device="cuda")
    with pytest.raises(VlmError, match="must not be h"):
        w4a16_gemm_rms_norm(h, None, w, 1e-6, packed, sz, n, group, h_out=h)
