"""The prefill-size w4a16 GEMM through CUTLASS's mixed-input kernel (native/cuda/w4a16_cutlass.cu) against a
float32 reference on fresh random inputs: its own copy of each layer made from the packed layout on the device,
a poisoned output, ragged M, both group sizes, fp16/bf16. The GPU tests need a CUDA GPU and a library built
with CUTLASS for sm_90a; the first test (bad input at the C ABI) runs everywhere."""
from __future__ import annotations

import numpy as np
import pytest

from vlmserve import _native
from vlmserve.kernels import w4a16_cutlass_built, w4a16_cutlass_gemm, w4a16_cutlass_prepare
from w4a16_reference import TOL, random_layer

SHAPES = [(17, 64, 128, 64), (64, 512, 2048, 128), (100, 320, 256, 128), (129, 2048, 11008, 128),
          (256, 4096, 2048, 128), (300, 768, 512, 64), (65, 5504, 4096, 128), (2048, 1024, 1024, 128),
          (1, 256, 256, 128), (7, 192, 640, 64)]


def test_bad_input_is_refused_before_any_gpu_work():
    # The C ABI checks pointers, dtype and shape first, on every build and machine, with clear errors.
    from vlmserve.errors import InvalidArgumentError, check

    lib = _native.lib()
    assert isinstance(w4a16_cutlass_built(), bool)
    with pytest.raises(InvalidArgumentError, match="NULL device pointer"):
        check(lib.vlm_w4a16_cutlass_prepare(None, 1, 1, 1, 256, 256, 128, _native.DTYPE_F16, None))
    with pytest.raises(InvalidArgumentError, match="act_dtype"):
        check(lib.vlm_w4a16_cutlass_gemm(1, 1, 1, 4, 256, 256, 128, 99, None))
    with pytest.raises(InvalidArgumentError, match="multiple of 64"):
        check(lib.vlm_w4a16_cutlass_gemm(1, 1, 1, 4, 100, 256, 128, _native.DTYPE_F16, None))
    with pytest.raises(InvalidArgumentError, match="group size"):
        check(lib.vlm_w4a16_cutlass_prepare(1, 1, 1, 1, 256, 256, 32, _native.DTYPE_F16, None))


def _require_kernel():
    if not w4a16_cutlass_built():
        pytest.skip("this library has no CUTLASS w4a16 GEMM (built without CUTLASS's headers or without sm_90a)")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m,n,k,group", SHAPES)
def test_matches_reference(m, n, k, group, dtype):
    import torch

    _require_kernel()
    seed = hash(("cutlass", m, n, k, group, dtype)) % 2**31
    w_ref, packed, sz = random_layer(n, k, group, dtype, seed)
    dev, tdtype = w_ref.device, getattr(torch, dtype)
    prepared = w4a16_cutlass_prepare(packed, sz, n, k, group, bf16=dtype == "bfloat16")
    a = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dev, tdtype)
    out = torch.full((m, n), float("nan"), dtype=tdtype, device=dev)  # poisoned
    w4a16_cutlass_gemm(a, prepared, n, group, out=out)
    torch.cuda.synchronize()
    assert not torch.isnan(out).any(), "outputs never written"
    ref = a.float() @ w_ref.T
    err = ((out.float() - ref).norm() / ref.norm()).item()
    # The kernel rounds each weight s q + (-s z) to 16 bits with the offset rounded once before: within the
    # general kernel's tolerance (one 16-bit rounding a weight).
    assert err < TOL[dtype], f"relative error {err:.2e}"


@pytest.mark.gpu
def test_results_are_deterministic():
    import torch

    _require_kernel()
    m, n, k, group = 300, 1024, 4096, 128
    _, packed, sz = random_layer(n, k, group, "float16", 7)
    prepared = w4a16_cutlass_prepare(packed, sz, n, k, group)
    a = torch.randn(m, k, device=packed.device, dtype=torch.float16)
    first = w4a16_cutlass_gemm(a, prepared, n, group)
    for _ in range(3):
        assert torch.equal(w4a16_cutlass_gemm(a, prepared, n, group), first)


@pytest.mark.gpu
def test_bad_shapes_are_refused():
    import torch

    from vlmserve.errors import InvalidArgumentError

    _require_kernel()
    dev = torch.device("cuda")
    junk = torch.zeros(1 << 16, dtype=torch.uint8, device=dev)
    with pytest.raises(InvalidArgumentError, match="multiple of 64"):
        w4a16_cutlass_prepare(junk, junk, 100, 256, 128)
    with pytest.raises(InvalidArgumentError, match="group size"):
        w4a16_cutlass_gemm(torch.zeros(4, 256, device=dev, dtype=torch.float16), junk, 256, 32)
