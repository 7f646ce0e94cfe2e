"""Decode attention (one query row per request over the paged, possibly quantized
KV cache) against a float32 torch reference on fresh random inputs: every cache
type, head dims of the vectorised kernel (32-256) and of the general one (80),
query groups 1-16, ragged contexts from 1 key, shuffled block tables, sliding
windows, poisoned outputs, and bit-identical repeats. Needs a CUDA GPU."""
from __future__ import annotations

import os

import numpy as np
import pytest

from attention_reference import BLOCK, TOL, make_cache, reference

from vlmserve.kernels import decode_attention

pytestmark = pytest.mark.gpu

CASES = [  # kv_dtype, act, head_dim, heads, kv_heads, rows, window
    ("float16", "float16", 128, 16, 8, 3, 0),
    ("int8", "float16", 128, 16, 8, 5, 0),
    ("int4", "float16", 128, 16, 8, 4, 0),
    ("int8", "float16", 64, 8, 1, 2, 0),        # group 8
    ("int4", "float16", 32, 4, 1, 3, 0),        # group 4, 32 dims
    ("float16", "float16", 256, 4, 4, 2, 0),    # group 1, 256 dims
    ("bfloat16", "bfloat16", 128, 8, 2, 3, 0),
    ("int8", "bfloat16", 64, 16, 4, 4, 0),
    ("int8", "float16", 128, 32, 32, 2, 0),     # 7B shape
    ("float16", "float16", 64, 8, 4, 3, 37),    # sliding window
    ("int8", "float16", 128, 16, 8, 64, 0),     # a batch: few slices per row
    # int8 cache, fp16, 128 dims: the tensor-core kernel (decode_attention_mma.cu) in every group size
    ("int8", "float16", 128, 32, 8, 6, 0),      # group 4
    ("int8", "float16", 128, 8, 1, 3, 0),       # group 8
    ("int8", "float16", 128, 16, 8, 4, 37),     # sliding window: tiles cut on both sides
    ("int8", "float16", 128, 16, 8, 128, 0),    # batch 128: one slice per row
    ("int8", "bfloat16", 128, 16, 8, 3, 0),     # bf16 at 128 dims: the CUDA-core kernel
    # int4 cache, fp16, 128 dims: the CUDA-core kernel, and (VLM_DECODE_ATTENTION_MMA_INT4=1, the test below)
    # the tensor-core kernel's nibble form
    ("int4", "float16", 128, 32, 8, 6, 0),      # group 4
    ("int4", "float16", 128, 8, 1, 3, 0),       # group 8
    ("int4", "float16", 128, 32, 32, 2, 0),     # group 1 (7B shape)
    ("int4", "float16", 128, 16, 8, 4, 37),     # sliding window
    ("int4", "float16", 128, 16, 8, 128, 0),    # batch 128
    ("int4", "bfloat16", 128, 16, 8, 3, 0),     # bf16: the CUDA-core kernel
    # fp16 cache, fp16, 128 dims (with the group-2 case at the top): the tensor-core kernel's fp16 form, and
    # (VLM_DECODE_ATTENTION_MMA_FP16=0, the test below) the CUDA-core kernel
    ("float16", "float16", 128, 32, 8, 6, 0),   # group 4
    ("float16", "float16", 128, 8, 1, 3, 0),    # group 8
    ("float16", "float16", 128, 32, 32, 2, 0),  # group 1 (7B shape)
    ("float16", "float16", 128, 16, 8, 4, 37),  # sliding window
    ("float16", "float16", 128, 16, 8, 128, 0),  # batch 128
    ("float32", "float16", 64, 4, 2, 2, 0),     # general kernel: fp32 cache
    ("float16", "float16", 80, 4, 2, 2, 0),     # general kernel: head_dim 80
    ("int8", "float16", 64, 16, 1, 2, 0),       # general kernel: group 16
]


@pytest.mark.parametrize("kv_dtype,act,head_dim,heads,kv_heads,rows,window", CASES)
def test_matches_reference(kv_dtype, act, head_dim, heads, kv_heads, rows, window):
    import torch

    rng = np.random.default_rng(hash((kv_dtype, act, head_dim, heads, rows, window)) % 2**31)
    positions_np = rng.integers(0, 700, size=rows)
    positions_np[0] = 0  # a row with a single key
    if rows > 1:
        positions_np[1] = 699
    max_blocks = 700 // BLOCK + 1
    blocks = rows * max_blocks + 3
    tables_np = rng.permutation(blocks)[: rows * max_blocks].reshape(rows, max_blocks).astype(np.int32)
    kc, ksz, kf = make_cache(rng, kv_dtype, blocks, kv_heads, head_dim)
    vc, vsz, vf = make_cache(rng, kv_dtype, blocks, kv_heads, head_dim)
    q = torch.from_numpy(rng.normal(size=(rows, heads * head_dim)).astype(np.float32)).to("cuda", getattr(torch, act))
    positions = torch.from_numpy(positions_np.astype(np.int32)).cuda()
    tables = torch.from_numpy(tables_np).cuda()
    kwargs = dict(kv_dtype=kv_dtype, kv_heads=kv_heads, head_dim=head_dim, block_size=BLOCK, k_scale_zero=ksz,
                  v_scale_zero=vsz, sliding_window=window)
    out = torch.full_like(q, float("nan"))  # poisoned
    decode_attention(q, kc, vc, positions, tables, out=out, **kwargs)
    again = decode_attention(q, kc, vc, positions, tables, **kwargs)
    torch.cuda.synchronize()
    assert not torch.isnan(out).any(), "some outputs were never written"
    ref = reference(q, kf, vf, positions_np, tables, kv_heads, head_dim, window)
    err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    assert err < TOL[act], f"max error {err:.2e} of the largest output"
    assert torch.equal(out, again)  # deterministic: slices merge in a fixed order


def cases_in_a_process_of_their_own(settings: dict[str, str], forms: str, expected_forms: str, cases: str,
                                    passed: int) -> None:
    """Runs test_matches_reference's `cases` (a -k expression) in a process with these native settings (the
    library reads them once per process). `forms` (decode_attention_form calls, `f`, joined by ';') must first
    print `expected_forms` there: the kernel those cases then run, else they would pass on the other kernel
    again, unnoticed."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, **settings)
    form = subprocess.run([sys.executable, "-c", "from vlmserve.kernels import decode_attention_form as f; "
                           f"print({forms}, sep=';')"], cwd=root, capture_output=True, text=True, timeout=300,
                          env=env)
    assert form.returncode == 0, form.stderr[-2000:]
    assert form.stdout.strip() == expected_forms, form.stdout
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", __file__,
                           "-k", f"test_matches_reference and {cases}"], cwd=root, capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{passed} passed" in done.stdout, done.stdout[-2000:]


def test_int4_on_the_cuda_cores_against_the_reference():
    """The int4 cases above through the CUDA-core kernel (VLM_DECODE_ATTENTION_MMA_INT4=0: what bf16 activations
    and other head sizes take), so both kernels stay checked now that the tensor cores take the fp16 / 128-dim
    int4 cases by default."""
    cases_in_a_process_of_their_own({"VLM_DECODE_ATTENTION_MMA_INT4": "0"},
                                    "f(32, 8, 128, kv_dtype='int4'), f(16, 16, 128, kv_dtype='int4')",
                                    "cuda cores;cuda cores", "int4", 8)


def test_fp16_cache_on_the_cuda_cores_against_the_reference():
    """The fp16-cache cases of 128 dims through the CUDA-core kernel (VLM_DECODE_ATTENTION_MMA_FP16=0: what bf16
    activations and other head sizes take), so both kernels stay checked now that the tensor cores take them by
    default."""
    cases_in_a_process_of_their_own({"VLM_DECODE_ATTENTION_MMA_FP16": "0"},
                                    "f(32, 8, 128, kv_dtype='float16'), f(16, 16, 128, kv_dtype='float16')",
                                    "cuda cores;cuda cores", "float16-float16-128", 6)


# The batch-1 latency cuts, off by default until measured: the merge through one release-acquire addition with its
# loads in one trip, q loaded straight after the wait, no more slices than one wave of resident blocks.
LATENCY_CUTS = {"VLM_ATTENTION_RELEASE_MERGE": "1", "VLM_ATTENTION_Q_FIRST": "1"}
ONE_WAVE = {"VLM_ATTENTION_ONE_WAVE": "1"}


def test_every_case_against_the_reference_with_the_latency_cuts():
    """All of test_matches_reference's cases, both kernels, in a process with the release merge, q first and one
    wave of slices (its batch of 5 rows: 40 (row, KV head) pairs at 7 slices, 280 blocks for the 264 places of 132
    SMs, round down to 6)."""
    cases_in_a_process_of_their_own(
        dict(LATENCY_CUTS, **ONE_WAVE),
        "f(32, 8, 128, kv_dtype='int8'), f(16, 8, 128, kv_dtype='int8', act_dtype='bfloat16')",
        "tensor cores;cuda cores", "(float16 or bfloat16)", len(CASES))


def test_the_release_merge_and_q_first_change_no_bits():
    """The release merge and q loaded first do the same sums in the same order: the outputs of one row over
    contexts of up to 31 slices, every query group and both kernels (digest_decode_attention_outputs.py) are the
    same bits with them as without."""
    from w4a16_reference import run_check_script

    plain = run_check_script("digest_decode_attention_outputs.py", {}).strip()
    cut = run_check_script("digest_decode_attention_outputs.py", LATENCY_CUTS).strip()
    assert len(plain) == 64, plain
    assert cut == plain


def test_the_tensor_cores_take_every_cache_of_128_dims_by_default():
    from vlmserve.kernels import decode_attention_form

    for setting in ("VLM_DECODE_ATTENTION_MMA", "VLM_DECODE_ATTENTION_MMA_INT4", "VLM_DECODE_ATTENTION_MMA_FP16"):
        if os.environ.get(setting, "1") == "0":
            pytest.skip(f"{setting}=0 in this process: the default is not what runs here")
    for kv in ("int8", "int4", "float16"):
        assert decode_attention_form(32, 8, 128, kv_dtype=kv) == "tensor cores", kv
        assert decode_attention_form(16, 16, 128, kv_dtype=kv) == "tensor cores", kv  # group 1
        assert decode_attention_form(32, 8, 64, kv_dtype=kv) == "cuda cores", kv  # the tensor-core form: 128 dims
        assert decode_attention_form(32, 8, 128, kv_dtype=kv, act_dtype="bfloat16") == "cuda cores", kv


def test_bad_shapes_are_refused():
    import torch

    from vlmserve.errors import VlmError

    q = torch.zeros(1, 64, dtype=torch.float16, device="cuda")
    kc = torch.zeros(16, dtype=torch.float16, device="cuda")
    pos = torch.zeros(1, dtype=torch.int32, device="cuda")
    tables = torch.zeros(1, 1, dtype=torch.int32, device="cuda")
    with pytest.raises(VlmError, match="multiple of kv_heads"):
        decode_attention(q, kc, kc, pos, tables, kv_dtype="float16", kv_heads=3, head_dim=16, block_size=16)
    with pytest.raises(VlmError, match="scale/zero"):
        decode_attention(q, kc, kc, pos, tables, kv_dtype="int8", kv_heads=1, head_dim=64, block_size=16)
    with pytest.raises(VlmError, match="power of two"):
        decode_attention(q, kc, kc, pos, tables, kv_dtype="float16", kv_heads=1, head_dim=64, block_size=24)
