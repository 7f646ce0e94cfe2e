"""The decode-size w4a16 kernel (native/cuda/w4a16_decode.cu, M <= 4 on sm_90+)
in every arrangement its plan can pick — strips per block S and cluster size C
pinned through VLM_W4A16_DECODE_S / _C — with the K slices' sum pulled from the
cluster's blocks (VLM_W4A16_DECODE_PUSH=0) or pushed to its owners (the default),
and the general kernel it replaces at these sizes (VLM_W4A16_DECODE=0, what pre-Hopper GPUs run), each against the
float32 reference in a fresh process. Needs a CUDA GPU."""
from __future__ import annotations

import pytest

from w4a16_reference import output_digest, run_shape_checks as run_checks

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("s,c", [(4, 1), (4, 3), (2, 8), (1, 8), (1, 5)])
def test_every_plan_arrangement_matches_reference(s, c):
    run_checks({"VLM_W4A16_DECODE_S": str(s), "VLM_W4A16_DECODE_C": str(c)})


@pytest.mark.parametrize("s,c", [(4, 0), (1, 8), (2, 3)])
def test_the_deeper_ring_matches_reference(s, c):
    # 16 ring stages a warp (VLM_W4A16_DECODE_RING=16): another instantiation, another shared-memory layout.
    run_checks({"VLM_W4A16_DECODE_RING": "16", "VLM_W4A16_DECODE_S": str(s), "VLM_W4A16_DECODE_C": str(c)})


@pytest.mark.parametrize("s,c,ring", [(4, 3, 8), (2, 8, 8), (1, 8, 8), (1, 5, 8), (1, 8, 16)])
def test_the_pulled_cluster_sum_matches_reference(s, c, ring):
    run_checks({"VLM_W4A16_DECODE_PUSH": "0", "VLM_W4A16_DECODE_S": str(s), "VLM_W4A16_DECODE_C": str(c),
                "VLM_W4A16_DECODE_RING": str(ring)})


@pytest.mark.parametrize("s,c", [(1, 8), (2, 3), (4, 5)])
def test_the_pushed_cluster_sum_changes_no_bits(s, c):
    # Each owner adds the slices in rank order, as the pulled sum does: the same bits on every decode shape.
    pins = {"VLM_W4A16_DECODE_S": str(s), "VLM_W4A16_DECODE_C": str(c)}
    pushed = output_digest({**pins, "VLM_W4A16_DECODE_PUSH": "1"})
    assert pushed == output_digest({**pins, "VLM_W4A16_DECODE_PUSH": "0"})


def test_one_shapes_pinned_plan_matches_reference():
    # VLM_W4A16_DECODE_PLANS pins the plan of single layer shapes (the others keep the rule); the check script
    # also requires the library to report those plans for those shapes.
    run_checks({"VLM_W4A16_DECODE_PLANS": "2048x2048:1,1,16;1280x1024:2,3,8;5504x4096:1,2,0"})


def test_general_kernel_matches_reference_at_decode_sizes():
    run_checks({"VLM_W4A16_DECODE": "0"})
