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


def test_int4_on_the_cuda_cores_against_the_reference():
    """The int4 cases above through the CUDA-core kernel (VLM_DECODE_ATTENTION_MMA_INT4=0: what bf16 activations
    and other head sizes take; read once per process, hence a process of its own running them), so both kernels
    stay checked now that the tensor cores take the fp16 / 128-dim int4 cases by default."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, VLM_DECODE_ATTENTION_MMA_INT4="0")
    # The kernel those cases then run (else they would pass on the tensor cores again, unnoticed).
    form = subprocess.run([sys.executable, "-c", "from vlmserve.kernels import decode_attention_form as f; "
                           "print(f(32, 8, 128, kv_dtype='int4'), f(16, 16, 128, kv_dtype='int4'), sep=';')"],
                          cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert form.returncode == 0, form.stderr[-2000:]
    assert form.stdout.strip() == "cuda cores;cuda cores", form.stdout
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", __file__,
                           "-k", "test_matches_reference and int4"], cwd=root, capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout, done.stdout[-2000:]


def test_int4_takes_the_tensor_cores_by_default():
    from vlmserve.kernels import decode_attention_form

    if os.environ.get("VLM_DECODE_ATTENTION_MMA_INT4", "1") == "0":
        pytest.skip("VLM_DECODE_ATTENTION_MMA_INT4=0 in this process: the default is not what runs here")
    assert decode_attention_form(32, 8, 128, kv_dtype="int4") == "tensor cores"
    assert decode_attention_form(32, 8, 128, kv_dtype="int8") == "tensor cores"
    assert decode_attention_form(32, 8, 64, kv_dtype="int8") == "cuda cores"  # the tensor-core form: 128 dims
    assert decode_attention_form(32, 8, 128, kv_dtype="int4", act_dtype="bfloat16") == "cuda cores"


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


# Batch-1-like shapes of the tensor-core kernel and the key slices its plan gives them (min 64 keys a slice,
# the grid filled once; these counts on GPUs of 114-132 SMs): up to 8 slices are merged inside a thread-block
# cluster, more through global memory.
MERGE_CASES = [  # kv_dtype, heads, kv_heads, positions (the context is the largest + 1), slices
    ("int8", 16, 8, [511], 8),          # 2B heads at batch 1, context 512
    ("int4", 16, 8, [511], 8),
    ("int8", 32, 32, [299], 4),         # 7B heads
    ("int8", 16, 8, [0, 499, 250], 7),  # ragged rows: the one-key row leaves six slices empty
    ("int8", 8, 1, [699], 10),          # 10 slices: more than a cluster holds, merged through global memory
]


def _merge_runs():
    """Each MERGE_CASES case on fresh random inputs from a fixed seed: (output, reference, whether the kernel wrote
    the workspace's partials region: the global merge does, the cluster merge leaves it untouched)."""
    import torch

    from vlmserve.kernels import decode_attention_workspace_bytes

    results = []
    for kv_dtype, heads, kv_heads, positions, _ in MERGE_CASES:
        rng = np.random.default_rng(len(positions) * 1000 + heads + kv_heads)
        rows, head_dim = len(positions), 128
        max_blocks = max(positions) // BLOCK + 1
        blocks = rows * max_blocks + 2
        tables_np = rng.permutation(blocks)[: rows * max_blocks].reshape(rows, max_blocks).astype(np.int32)
        kc, ksz, kf = make_cache(rng, kv_dtype, blocks, kv_heads, head_dim)
        vc, vsz, vf = make_cache(rng, kv_dtype, blocks, kv_heads, head_dim)
        q = torch.from_numpy(rng.normal(size=(rows, heads * head_dim)).astype(np.float32)).to("cuda", torch.float16)
        pos = torch.tensor(positions, dtype=torch.int32, device="cuda")
        tables = torch.from_numpy(tables_np).cuda()
        ws = torch.zeros(decode_attention_workspace_bytes(rows, heads, kv_heads, head_dim, max(positions) + 1),
                         dtype=torch.uint8, device="cuda")
        out = torch.full_like(q, float("nan"))
        decode_attention(q, kc, vc, pos, tables, out=out, workspace=ws, kv_dtype=kv_dtype, kv_heads=kv_heads,
                         head_dim=head_dim, block_size=BLOCK, k_scale_zero=ksz, v_scale_zero=vsz)
        torch.cuda.synchronize()
        partials_from = (rows * kv_heads * 4 + 15) // 16 * 16 + (rows * 8 + 15) // 16 * 16  # vlm_decode_attention's layout
        ref = reference(q, kf, vf, np.array(positions), tables, kv_heads, head_dim, 0)
        results.append((out.cpu(), ref.cpu(), bool(ws[partials_from:].any().item())))
    return results


def test_slices_merged_in_a_cluster_give_the_global_merges_bits():
    """Up to 8 key slices of a (row, KV head) merge inside a thread-block cluster (through distributed shared
    memory): the same bits as the merge through global memory (VLM_ATTENTION_CLUSTER_MERGE=0, read once per
    process, hence a process of its own), within the reference's tolerance, and only the cases of more slices
    write the global partials."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import torch

    if os.environ.get("VLM_ATTENTION_CLUSTER_MERGE", "1") == "0":
        pytest.skip("VLM_ATTENTION_CLUSTER_MERGE=0 in this process: the cluster merge is not what runs here")
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("thread-block clusters need compute capability 9.0: the global merge runs on this GPU")
    here = Path(__file__).resolve().parent
    mine = _merge_runs()
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "global.pt"
        env = dict(os.environ, VLM_ATTENTION_CLUSTER_MERGE="0")
        done = subprocess.run([sys.executable, "-c", "import sys, torch; sys.path.insert(0, sys.argv[1]); "
                               "from test_decode_attention import _merge_runs; torch.save(_merge_runs(), sys.argv[2])",
                               str(here), str(saved)], cwd=here.parents[1], capture_output=True, text=True,
                              timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        theirs = torch.load(saved)
    for case, (out, ref, wrote), (g_out, _, g_wrote) in zip(MERGE_CASES, mine, theirs):
        slices = case[-1]
        assert not torch.isnan(out).any(), f"{case}: some outputs were never written"
        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
        assert err < TOL["float16"], f"{case}: max error {err:.2e} of the largest output"
        assert torch.equal(out, g_out), f"{case}: the cluster merge's bits differ from the global merge's"
        assert g_wrote, f"{case}: the global merge left its partials unwritten"
        assert wrote == (slices > 8), f"{case}: {slices} slices, partials written: {wrote}"
