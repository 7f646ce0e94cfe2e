"""Run in a subprocess by test_decode_attention.py: prints one digest of decode attention outputs on fixed random
inputs under whatever VLM_ATTENTION_* settings the environment holds (the library reads them once per process), so
that two settings can be compared bit for bit. The cases are the merge's: one row over long contexts (up to 31 key
slices, more than the 16 or 8 that the merge loads ahead), query groups of 1, 2, 4 and 8 heads (1, 2, 4 and 8 output
elements a thread), both kernels (the tensor-core one for fp16 activations and 128-dim heads, the CUDA-core one for
bf16 or other head sizes, 32 dims among them: fewer output elements than threads), and a batch."""
from __future__ import annotations

import hashlib
import zlib

import numpy as np

from attention_reference import BLOCK, make_cache

from vlmserve.kernels import decode_attention

CASES = [  # kv_dtype, act, head_dim, heads, kv_heads, rows, longest context
    ("int8", "float16", 128, 16, 8, 1, 2000),    # group 2, 31 slices
    ("int8", "float16", 128, 32, 32, 1, 1000),   # group 1 (7B shape)
    ("int4", "float16", 128, 32, 8, 2, 900),     # group 4
    ("float16", "float16", 128, 8, 1, 1, 1500),  # group 8, the fp16 form
    ("int8", "float16", 128, 16, 8, 5, 700),     # a batch
    ("int8", "bfloat16", 128, 16, 8, 1, 1200),   # the CUDA-core kernel, 32 slices
    ("int8", "float16", 64, 8, 1, 2, 800),       # the CUDA-core kernel, group 8
    ("float16", "float16", 32, 4, 4, 1, 300),    # the CUDA-core kernel, 32 dims
]


def main() -> None:
    import torch

    digest = hashlib.sha256()
    for case in CASES:
        kv_dtype, act, head_dim, heads, kv_heads, rows, longest = case
        rng = np.random.default_rng(zlib.crc32(repr(case).encode()))  # the same in every process
        positions_np = rng.integers(longest // 2, longest, size=rows)
        positions_np[0] = longest - 1
        max_blocks = longest // BLOCK + 1
        blocks = rows * max_blocks + 3
        tables_np = rng.permutation(blocks)[: rows * max_blocks].reshape(rows, max_blocks).astype(np.int32)
        kc, ksz, _ = make_cache(rng, kv_dtype, blocks, kv_heads, head_dim)
        vc, vsz, _ = make_cache(rng, kv_dtype, blocks, kv_heads, head_dim)
        q = torch.from_numpy(rng.normal(size=(rows, heads * head_dim)).astype(np.float32)).to("cuda",
                                                                                               getattr(torch, act))
        out = decode_attention(q, kc, vc, torch.from_numpy(positions_np.astype(np.int32)).cuda(),
                               torch.from_numpy(tables_np).cuda(), kv_dtype=kv_dtype, kv_heads=kv_heads,
                               head_dim=head_dim, block_size=BLOCK, k_scale_zero=ksz, v_scale_zero=vsz)
        torch.cuda.synchronize()
        assert not torch.isnan(out).any(), case
        digest.update(out.view(torch.int16).cpu().numpy().tobytes())
    print(digest.hexdigest())


if __name__ == "__main__":
    main()
