"""The torch group quantizer is awq_format.quantize_rtn, bit for bit; clipping search."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmserve.awq_format import dequantize, quantize_rtn
from vlmserve.lite.quantizer import fake_quantize, quantize_groups, search_clip


@pytest.mark.parametrize("group", [32, 64, 128])
def test_codes_and_packing_equal_quantize_rtn(group):
    rng = np.random.default_rng(group)
    w = (rng.normal(size=(48, 256)) * rng.lognormal(size=(1, 256))).astype(np.float32)
    w[3, :group] = 0.25  # a constant group: range clamped to 1e-5
    codes = quantize_groups(torch.from_numpy(w), group)
    for ours, theirs in zip(codes.pack(), quantize_rtn(w, group)):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(codes.dequantize().numpy(), dequantize(*quantize_rtn(w, group)))


def test_fake_quantize_keeps_dtype_and_is_within_a_step():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(0))
    q = fake_quantize(w.half(), 64)
    assert q.dtype == torch.float16
    codes = quantize_groups(w, 64)
    step = codes.scales.float().repeat_interleave(64, dim=1)
    assert ((codes.dequantize() - w).abs() <= step + 1e-6).all()


def test_clip_search_never_increases_the_group_output_error():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g)
    w[:, 7] *= 8  # outliers that clipping can trade away
    x = torch.randn(300, 256, generator=g)
    clip = search_clip(w, x, 64, n_grid=20)
    assert clip.shape == (64, 4) and (clip <= 1).all() and (clip >= 0.55).all()
    assert (clip < 1).any()

    def group_err(q):
        xs, ws = x.view(-1, 4, 64), q.view(64, 4, 64)
        return (torch.einsum("tgk,ogk->otg", xs, ws) - torch.einsum("tgk,ogk->otg", xs, w.view(64, 4, 64))
                ).pow(2).mean(1)

    plain = group_err(fake_quantize(w, 64))
    clipped = group_err(quantize_groups(w, 64, clip).dequantize())
    assert (clipped <= plain * (1 + 1e-5) + 1e-6).all()
    assert clipped.sum() < plain.sum()
