"""Prefill attention (several rows per request, causal, over the paged and possibly
quantized KV cache: the engine's row-tiled kernel, in its tensor-core form for head
dims 64 and 128 and its CUDA-core form otherwise, and the CUDA-core form for every
case in a second process) against a float32 torch reference on fresh random inputs:
every cache type, query groups 1-16, head dims 64/80/128, ragged requests (one row, a
chunk after a cached prefix, whole prompts longer than a tile), several requests in
one call, shuffled block tables, a sliding window and poisoned outputs. Needs a CUDA
GPU."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from attention_reference import BLOCK, TOL, make_cache, reference

from vlmserve.kernels import prefill_attention

pytestmark = pytest.mark.gpu

CASES = [  # kv_dtype, act, head_dim, heads, kv_heads, requests as (last position + 1, rows), window
    ("int8", "float16", 128, 16, 8, [(300, 300)], 0),                    # a whole image prompt
    ("int8", "float16", 128, 16, 8, [(1, 1), (40, 17), (700, 64), (33, 33)], 0),  # ragged, with prefixes
    ("int4", "float16", 128, 16, 8, [(90, 90), (200, 50)], 0),
    ("float16", "float16", 64, 8, 1, [(130, 130)], 0),                   # group 8
    ("bfloat16", "bfloat16", 128, 8, 2, [(77, 77), (150, 20)], 0),
    ("float16", "float16", 64, 8, 4, [(100, 60), (45, 45)], 37),         # sliding window
    ("int8", "float16", 128, 32, 32, [(129, 129)], 0),                   # 7B shape
    ("float16", "float16", 80, 4, 2, [(65, 65)], 0),                     # head_dim 80
    ("int8", "float16", 64, 16, 1, [(70, 70)], 0),                       # group 16: two head chunks
    ("float32", "float16", 64, 4, 2, [(50, 50)], 0),
]


def run_case(kv_dtype, act, head_dim, heads, kv_heads, requests, window, seed):
    import torch

    rng = np.random.default_rng(seed)
    max_blocks = max(end for end, _ in requests) // BLOCK + 1
    blocks = len(requests) * max_blocks + 3
    tables_np = rng.permutation(blocks)[: len(requests) * max_blocks].reshape(len(requests), max_blocks)
    tables_np = tables_np.astype(np.int32)
    kc, ksz, kf = make_cache(rng, kv_dtype, blocks, kv_heads, head_dim)
    vc, vsz, vf = make_cache(rng, kv_dtype, blocks, kv_heads, head_dim)
    positions_np = np.concatenate([np.arange(end - n, end) for end, n in requests]).astype(np.int32)
    row_tables = np.concatenate([np.repeat(tables_np[i:i + 1], n, axis=0) for i, (_, n) in enumerate(requests)])
    rows = len(positions_np)
    q = torch.from_numpy(rng.normal(size=(rows, heads * head_dim)).astype(np.float32)).to("cuda", getattr(torch, act))
    out = torch.full_like(q, float("nan"))  # poisoned
    prefill_attention(q, kc, vc, torch.from_numpy(positions_np).cuda(), torch.from_numpy(tables_np).cuda(),
                      [n for _, n in requests], kv_dtype=kv_dtype, kv_heads=kv_heads, head_dim=head_dim,
                      block_size=BLOCK, k_scale_zero=ksz, v_scale_zero=vsz, sliding_window=window, out=out)
    torch.cuda.synchronize()
    ref = reference(q, kf, vf, positions_np, torch.from_numpy(row_tables).cuda(), kv_heads, head_dim, window)
    return out, ref


@pytest.mark.parametrize("kv_dtype,act,head_dim,heads,kv_heads,requests,window", CASES)
def test_matches_reference(kv_dtype, act, head_dim, heads, kv_heads, requests, window):
    import torch

    seed = hash((kv_dtype, act, head_dim, heads, str(requests), window)) % 2**31
    out, ref = run_case(kv_dtype, act, head_dim, heads, kv_heads, requests, window, seed)
    assert not torch.isnan(out).any(), "some outputs were never written"
    err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    assert err < TOL[act], f"max error {err:.2e} of the largest output"


def test_bad_calls_are_refused():
    import torch

    from vlmserve.errors import VlmError

    q = torch.zeros(4, 64, dtype=torch.float16, device="cuda")
    kc = torch.zeros(16 * 64, dtype=torch.float16, device="cuda")
    pos = torch.arange(4, dtype=torch.int32, device="cuda")
    tables = torch.zeros(2, 1, dtype=torch.int32, device="cuda")
    kwargs = dict(kv_dtype="float16", kv_heads=1, head_dim=64, block_size=16)
    with pytest.raises(VlmError, match="sum to"):
        prefill_attention(q, kc, kc, pos, tables, [1, 2], **kwargs)
    with pytest.raises(VlmError, match="rows"):
        prefill_attention(q, kc, kc, pos, tables, [4, 0], **kwargs)
    with pytest.raises(VlmError, match="power of two"):
        prefill_attention(q, kc, kc, pos, tables, [2, 2], **dict(kwargs, block_size=12))


@pytest.mark.skipif(os.environ.get("VLM_PREFILL_ATTENTION") == "simt", reason="this run is the CUDA-core form's")
def test_cuda_core_form_matches_reference_too():
    """The same cases with VLM_PREFILL_ATTENTION=simt (the library reads it once per process): the
    CUDA-core form, which the tensor-core one replaces for head dims 64 and 128, stays right."""
    env = dict(os.environ, VLM_PREFILL_ATTENTION="simt")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                           "matches_reference"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
