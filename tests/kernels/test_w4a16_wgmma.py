"""The Hopper wgmma w4a16 GEMM (native/cuda/w4a16_wgmma.cu: by default its strip form from 17 to 128 rows;
VLM_W4A16_WGMMA=0 off, 1 its block form and 2 its strip form at every M; K slices summed in thread-block clusters
or from fp32 partials as the plan decides, VLM_W4A16_WGMMA_CLUSTER=1 always clusters and 0 always partials)
against the float32 reference, in a subprocess because the library reads the settings
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
from vlmserve.kernels import w4a16_wgmma_form, w4a16_wgmma_plan

HERE = Path(__file__).resolve().parent


def _env(form: str | None, cluster: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VLM_W4A16_WGMMA", "VLM_W4A16_WGMMA_CLUSTER")}
    if form is not None:
        env["VLM_W4A16_WGMMA"] = form
    if cluster is not None:  # "1": K slices always summed in thread-block clusters, "0": always from fp32 partials
        env["VLM_W4A16_WGMMA_CLUSTER"] = cluster
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1] / "python"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.gpu
@pytest.mark.parametrize("form,cluster", [(None, None), ("1", None), ("2", None), (None, "1"), ("1", "1"), (None, "0")],
                         ids=["default", "block_form", "strip_form", "default_cluster_sum", "block_form_cluster_sum",
                              "default_partial_sum"])
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
    code = ("from vlmserve.kernels import w4a16_wgmma_form as f, w4a16_dequant_gemm_min_rows as d, "
            "w4a16_wgmma_plan as p\n"
            "print([f(m, 768, 4224, 64) for m in (1, 17, 64, 128, 256, 2048)])\n"
            "print(all(p(m, 768, 4224, 64) == (0, False) for m in (1, 17, 64, 128, 256, 2048)))\n"
            "try:\n    print(d())\nexcept Exception as e:\n    print(type(e).__name__)")
    for form, cluster in ((None, None), ("1", None), ("2", "1")):
        out = subprocess.run([sys.executable, "-c", code], env=_env(form, cluster), capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()
        assert out[0:6] == ["[0,", "0,", "0,", "0,", "0,", "0]"], (form, out)
        assert out[6] == "True", (form, out)  # no K-slice plan either
        assert out[7] in ("256", "UnsupportedError"), (form, out)


def test_form_and_plan_queries_refuse_bad_shapes():
    for query in (w4a16_wgmma_form, w4a16_wgmma_plan):
        with pytest.raises(InvalidArgumentError, match="multiple of 64"):
            query(64, 100, 256, 64)
        with pytest.raises(InvalidArgumentError, match="group size"):
            query(64, 256, 256, 32)
