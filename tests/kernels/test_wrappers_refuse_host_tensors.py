"""The GPU kernels' Python wrappers refuse host tensors and wrong shapes with a clear error before anything reaches
the library (a host pointer handed to a kernel would fault on the device), so this runs without a GPU."""
import ctypes

import pytest
import torch

from vlmserve.errors import InvalidArgumentError
from vlmserve.kernels import draw_rows, stream_read


def test_draw_rows_refuses_host_tensors_and_wrong_shapes():
    f, k = torch.ones(2), torch.zeros(2, dtype=torch.int32)
    u, tokens = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.int32)
    with pytest.raises(InvalidArgumentError, match="argument 0 must be a contiguous torch.float32 CUDA tensor"):
        draw_rows(torch.zeros(2, 8), f, k, f, f, u, tokens)
    with pytest.raises(InvalidArgumentError, match=r"logits must be \[rows, vocab\], got shape \(8,\)"):
        draw_rows(torch.zeros(8), f, k, f, f, u, tokens)


def test_stream_read_refuses_host_tensors():
    with pytest.raises(InvalidArgumentError, match="contiguous CUDA tensor"):
        stream_read(torch.zeros(64, dtype=torch.int32), None)


def test_decode_plan_query_refuses_bad_shapes():
    from vlmserve import _native
    from vlmserve.kernels import w4a16_decode_plan

    with pytest.raises(InvalidArgumentError):
        w4a16_decode_plan(1, 2048, 2000, 128)  # K not a multiple of the group
    if _native.lib().vlm_cuda_device_count() == 0:  # no GPU here: no decode kernel runs any shape
        assert w4a16_decode_plan(1, 2048, 2048, 128) == (0, 0, 0, 0)


def test_attention_form_query_refuses_bad_arguments():
    from vlmserve import _native
    from vlmserve.kernels import decode_attention_form

    with pytest.raises(InvalidArgumentError, match="multiple of kv_heads"):
        decode_attention_form(12, 8, 128, kv_dtype="int8")
    with pytest.raises(InvalidArgumentError, match="power of two"):
        decode_attention_form(32, 8, 128, kv_dtype="int8", block_size=24)
    with pytest.raises(InvalidArgumentError, match="kv_dtype one of"):
        decode_attention_form(32, 8, 128, kv_dtype="int3")
    if _native.lib().vlm_cuda_device_count() == 0:  # no GPU here: neither kernel runs
        assert decode_attention_form(32, 8, 128, kv_dtype="int8") == "other"


def test_column_tile_gemm_refuses_host_tensors_and_bad_shapes():
    from vlmserve import _native
    from vlmserve.kernels import w4a16_gemv, w4a16_gemv_k_parts, w4a16_gemv_repack

    with pytest.raises(InvalidArgumentError, match="packed must be a contiguous CUDA tensor"):
        w4a16_gemv_repack(torch.zeros(64, dtype=torch.uint8), 64, 64)
    with pytest.raises(InvalidArgumentError, match="a must be a contiguous CUDA tensor"):
        w4a16_gemv(torch.zeros(1, 64, dtype=torch.float16), None, None, 64, 64)
    with pytest.raises(InvalidArgumentError):
        w4a16_gemv_k_parts(1, 2048, 2000, 128)  # K not a multiple of the group
    if _native.lib().vlm_cuda_device_count() == 0:  # no GPU here: the kernel runs no shape
        assert w4a16_gemv_k_parts(1, 2048, 2048, 128) == 0


@pytest.mark.parametrize("k_parts, k", [(3, 512), (-1, 512), (16, 2048), (8, 256)])
def test_column_tile_gemm_refuses_a_bad_number_of_k_parts(k_parts, k):
    # Checked before any device pointer is used (these are not device pointers), GPU or not (a library built
    # without CUDA refuses every call as unsupported).
    from vlmserve import _native
    from vlmserve.errors import check
    from vlmserve.kernels import _act_dtype

    message = f"k_parts must be 0 .* got {k_parts} at K={k}"
    fake = ctypes.c_void_p(16)
    with pytest.raises(InvalidArgumentError, match=message):
        check(_native.lib().vlm_w4a16_gemv(fake, fake, fake, None, fake, 1, 64, k, 64, _act_dtype(False), 0,
                                           k_parts, None))
    weight = (ctypes.c_float * 1)()
    with pytest.raises(InvalidArgumentError, match=message):
        check(_native.lib().vlm_w4a16_gemv_rms_norm(fake, None, ctypes.addressof(weight), 1e-6, None, fake, fake,
                                                    fake, 1, 64, k, 64, _act_dtype(False), k_parts, None))
