"""The Hopper wgmma w4a16 GEMM (native/cuda/w4a16_wgmma.cu: by default its strip form from 17 to 128 rows;
VLM_W4A16_WGMMA=0 off, 1 its block form and 2 its strip form at every M; VLM_W4A16_WGMMA_CLUSTER=1 sums K slices
in thread-block clusters) against the float32 reference, in a subprocess because the library reads the settings
once per process. Needs a Hopper GPU and a library built for sm_90a (the default architecture list and
bench/gpu_session.sh build so). Without one, nothing may route to the kernel: that part runs everywhere."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmserve import _native
from vlmserve.errors import InvalidArgumentError
from vlmserve.kernels import w4a16_wgmma_form

HERE = Path(__file__).resolve().parent


def _env(form: str | None, cluster: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VLM_W4A16_WGMMA", "VLM_W4A16_WGMMA_CLUSTER")}
    if form is not None:
        env["VLM_W4A16_WGMMA"] = form
    if cluster:  # K slices summed in thread-block clusters instead of fp32 partials
        env["VLM_W4A16_WGMMA_CLUSTER"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1] / "python"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.gpu
@pytest.mark.parametrize("form,cluster", [(None, False), ("1", False), ("2", False), (None, True), ("1", True)],
                         ids=["default", "block_form", "strip_form", "default_cluster_sum", "block_form_cluster_sum"])
def test_wgmma_kernel_matches_reference(form, cluster):
    import torch

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip(f"the wgmma kernel is for Hopper (sm_90a); this GPU is sm_"
                    f"{''.join(map(str, torch.cuda.get_device_capability()))}")
    proc = subprocess.run([sys.executable, str(HERE / "check_w4a16_wgmma.py")], env=_env(form, cluster),
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_no_wgmma_form_without_a_hopper_gpu():
    # Forcing a form must not route a GPU that cannot run the kernel's code to it (it would trap).
    if _native.lib().vlm_cuda_device_count() > 0:
        import torch

        if torch.cuda.get_device_capability() == (9, 0):
            pytest.skip("a Hopper GPU is here: test_wgmma_kernel_matches_reference checks the routing")
    # ...and the engine's dequantize + cuBLAS keeps its general threshold (CUDA builds; else unsupported).
    code = ("from vlmserve.kernels import w4a16_wgmma_form as f, w4a16_dequant_gemm_min_rows as d\n"
            "print([f(m, 768, 4224, 64) for m in (1, 17, 64, 128, 256, 2048)])\n"
            "try:\n    print(d())\nexcept Exception as e:\n    print(type(e).__name__)")
    for form in (None, "1", "2"):
        out = subprocess.run([sys.executable, "-c", code], env=_env(form), capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()
        assert out[0:6] == ["[0,", "0,", "0,", "0,", "0,", "0]"], (form, out)
        assert out[6] in ("256", "UnsupportedError"), (form, out)


def test_form_query_refuses_bad_shapes():
    with pytest.raises(InvalidArgumentError, match="multiple of 64"):
        w4a16_wgmma_form(64, 100, 256, 64)
    with pytest.raises(InvalidArgumentError, match="group size"):
        w4a16_wgmma_form(64, 256, 256, 32)
