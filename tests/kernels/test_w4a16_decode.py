"""The decode-size w4a16 kernel (native/cuda/w4a16_decode.cu, M <= 4 on sm_90+)
in every arrangement its plan can pick — strips per block S and cluster size C
pinned through VLM_W4A16_DECODE_S / _C — and the general kernel it replaces at
these sizes (VLM_W4A16_DECODE=0, what pre-Hopper GPUs run), each against the
float32 reference in a fresh process. Needs a CUDA GPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

HERE = Path(__file__).resolve().parent


def run_checks(env_overrides: dict[str, str]) -> None:
    env = dict(os.environ, **env_overrides)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1] / "python"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(HERE / "check_w4a16_shapes.py")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{env_overrides}:\n{proc.stdout}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("s,c", [(4, 1), (4, 3), (2, 8), (1, 8), (1, 5)])
def test_every_plan_arrangement_matches_reference(s, c):
    run_checks({"VLM_W4A16_DECODE_S": str(s), "VLM_W4A16_DECODE_C": str(c)})


def test_general_kernel_matches_reference_at_decode_sizes():
    run_checks({"VLM_W4A16_DECODE": "0"})
