"""The column-tile w4a16 kernel (native/cuda/w4a16_gemv.cu, M <= 4 on sm_90+) with each number of warps a tile
(8, 4, 2, 1 pinned through the GEMMs' k_parts, and the kernel's own choice) on the same layers, against the float32
reference in a fresh process (check_w4a16_gemv.py: poisoned outputs, residual, silu(gate) * up input, the fused norm
bit for bit against the norm kernel + GEMM). Needs a CUDA GPU."""
from __future__ import annotations

import pytest

from w4a16_reference import run_check_script

pytestmark = pytest.mark.gpu


def test_every_k_split_matches_reference():
    run_check_script("check_w4a16_gemv.py", {"VLM_W4A16_GEMV_CHECK_PARTS": "0,1,2,4,8"})


def test_the_shallower_register_ring_matches_reference():
    # 4 chunks in flight a lane instead of 8 (VLM_W4A16_GEMV_RING=4, read once a process): other instantiations,
    # 3 blocks an SM.
    run_check_script("check_w4a16_gemv.py", {"VLM_W4A16_GEMV_CHECK_PARTS": "0,1,8", "VLM_W4A16_GEMV_RING": "4"})


def test_the_shared_memory_ring_matches_reference():
    # The 8 chunks in flight in shared memory (VLM_W4A16_GEMV_SHARED_RING=8, cp.async; read once a process): other
    # instantiations, a warp's group record words copied by half its lanes for all of them.
    run_check_script("check_w4a16_gemv.py", {"VLM_W4A16_GEMV_CHECK_PARTS": "0,1,2,8",
                                             "VLM_W4A16_GEMV_SHARED_RING": "8"})


def test_the_deeper_shared_memory_ring_matches_reference():
    # 16 chunks in flight in shared memory (VLM_W4A16_GEMV_SHARED_RING=16): 1 part a tile streams the most chunks
    # a warp, around the ring several times.
    run_check_script("check_w4a16_gemv.py", {"VLM_W4A16_GEMV_CHECK_PARTS": "0,1",
                                             "VLM_W4A16_GEMV_SHARED_RING": "16"})
