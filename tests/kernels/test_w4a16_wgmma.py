"""The Hopper wgmma w4a16 GEMM (native/cuda/w4a16_wgmma.cu, opt-in with VLM_W4A16_WGMMA=1 for its block form
and 2 for its strip form) against the float32 reference, in a subprocess because the library reads the
setting once per process. Needs a Hopper GPU and a library built for sm_90a (bench/gpu_session.sh builds so)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("form", ["1", "2"], ids=["block_form", "strip_form"])
def test_wgmma_kernel_matches_reference(form):
    import torch

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip(f"the wgmma kernel is for Hopper (sm_90a); this GPU is sm_"
                    f"{''.join(map(str, torch.cuda.get_device_capability()))}")
    env = dict(os.environ, VLM_W4A16_WGMMA=form)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1] / "python"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(HERE / "check_w4a16_wgmma.py")], env=env, capture_output=True,
                          text=True, timeout=900)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
