"""One w4a16 GEMM call against a float32 reference on fresh random inputs, with a
poisoned output (shared by the kernel tests and their subprocess checks)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from vlmserve.awq_format import dequantize, quantize_rtn
from vlmserve.kernels import pack_w4a16, w4a16_gemm

# Relative Frobenius error vs the fp32 reference: the general kernel rounds each weight (q - z) * s to
# 16 bits once (2^-11 in fp16), the decode kernel none; fp32 accumulation, one rounding of the output.
TOL = {"float16": 2e-3, "bfloat16": 1e-2}
# Longest row the engine's norm kernel sums in the order the fused norm shares (native/cuda/rms_norm_row.cuh).
VECTORISED_NORM_MAX = 8192


def random_layer(n: int, k: int, group: int, dtype: str, seed: int):
    """A random [n, k] layer quantized to 4 bits: (its dequantized fp32 weights, packed codes, packed scales and
    zeros), on the GPU."""
    import torch

    w = np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32) * 0.05
    qweight, qzeros, scales = quantize_rtn(w, group)
    packed, sz = pack_w4a16(qweight, qzeros, scales, group, bf16=dtype == "bfloat16")
    dev = torch.device("cuda")
    return (torch.from_numpy(dequantize(qweight, qzeros, scales)).to(dev), torch.from_numpy(packed).to(dev),
            torch.from_numpy(sz.view(np.int16)).to(dev))


def relative_errors(m: int, n: int, k: int, group: int, dtype: str) -> list[float]:
    """Errors without and with the residual epilogue; inf where an output was never written."""
    import torch

    seed = hash((m, n, k, group, dtype)) % 2**31
    w_ref, packed_t, sz_t = random_layer(n, k, group, dtype, seed)
    dev, tdtype = w_ref.device, getattr(torch, dtype)
    a = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dev, tdtype)
    residual = torch.randn(m, n, generator=torch.Generator().manual_seed(seed + 1)).to(dev, tdtype)
    errors = []
    for res in (None, residual):
        out = torch.full((m, n), float("nan"), dtype=tdtype, device=dev)  # poisoned
        w4a16_gemm(a, packed_t, sz_t, n, group, residual=res, out=out)
        torch.cuda.synchronize()
        if torch.isnan(out).any():
            errors.append(float("inf"))
            continue
        ref = a.float() @ w_ref.T + (res.float() if res is not None else 0)
        errors.append(((out.float() - ref).norm() / ref.norm()).item())
    return errors


def shapes_failures(shapes, dtypes=("float16", "bfloat16")) -> tuple[int, list[str]]:
    """relative_errors() of every (m, n, k, group) shape and dtype: (checks made, a line per one over TOL)."""
    checks, lines = 0, []
    for m, n, k, group in shapes:
        for dtype in dtypes:
            for err in relative_errors(m, n, k, group, dtype):
                checks += 1
                if not err < TOL[dtype]:
                    lines.append(f"M={m} N={n} K={k} group={group} {dtype}: relative error {err:.2e}")
    return checks, lines


def report(checks: int, lines: list[str]) -> int:
    """Prints each failure and the count; the exit status of a check script."""
    for line in lines:
        print(line)
    print(f"{checks} checks, {len(lines)} failures")
    return 1 if lines else 0


def rms_norm_gemm_failures(m: int, n: int, k: int, group: int, dtype: str, column_tiles: bool = False,
                           k_parts: tuple[int, ...] = (0,)) -> list[str]:
    """The decode kernel's fused norm (w4a16_gemm_rms_norm; with column_tiles the column-tile kernel's,
    w4a16_gemv_rms_norm, on its copy of the layer, once with each of k_parts warps a tile, 0 its own choice), with
    and without a residual update, against
    (a) the engine's two-launch path, the norm kernel then the same GEMM: the same updated residual always, and
    the same output bits for rows of up to 8192 elements (longer rows the norm kernel sums in another
    order, so there the output may differ in the last bits); (b) the float32 reference within TOL.
    Returns what failed."""
    import torch

    from vlmserve.kernels import (add_rms_norm, w4a16_gemm_rms_norm, w4a16_gemv, w4a16_gemv_repack,
                                  w4a16_gemv_rms_norm)

    seed = hash(("rms", m, n, k, group, dtype)) % 2**31
    w_ref, packed_t, sz_t = random_layer(n, k, group, dtype, seed)
    if column_tiles:
        packed_t = w4a16_gemv_repack(packed_t, n, k)
        gemms = [(f" ({p or 'own choice of'} warps a tile)",
                  lambda *args, p=p, **kw: w4a16_gemv_rms_norm(*args, k_parts=p, **kw),
                  lambda *args, p=p, **kw: w4a16_gemv(*args, k_parts=p, **kw)) for p in k_parts]
    else:
        gemms = [("", w4a16_gemm_rms_norm, w4a16_gemm)]
    dev, tdtype = w_ref.device, getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(m, k, generator=gen) * 3).to(dev)
    delta = torch.randn(m, k, generator=gen).to(dev, tdtype)
    norm_w = (1 + 0.1 * torch.randn(k, generator=gen)).to(dev)
    eps = 1e-6
    failures = []
    for label, fused, plain in gemms:
        for d in (None, delta):
            out = torch.full((m, n), float("nan"), dtype=tdtype, device=dev)  # poisoned
            h_out = torch.full_like(h, float("nan"))
            fused(h, d, norm_w, eps, packed_t, sz_t, n, group, h_out=h_out if d is not None else None, out=out,
                  dtype=tdtype)
            h_two = h.clone()
            a_two = add_rms_norm(h_two, d, norm_w, eps, dtype=tdtype)
            out_two = plain(a_two, packed_t, sz_t, n, group)
            torch.cuda.synchronize()
            what = f"M={m} N={n} K={k} group={group} {dtype}{label} {'with' if d is not None else 'without'} delta"
            if d is not None and not torch.equal(h_out, h_two):
                failures.append(f"{what}: h + delta differs from the norm kernel's")
            if k <= VECTORISED_NORM_MAX and not torch.equal(out, out_two):
                diff = (out.float() - out_two.float()).abs().max().item()
                failures.append(f"{what}: output differs from norm kernel + GEMM (max |diff| {diff:.3g})")
            x = h + (d.float() if d is not None else 0)
            a_ref = (norm_w * (x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps))).to(tdtype)
            ref = a_ref.float() @ w_ref.T
            err = ((out.float() - ref).norm() / ref.norm()).item() if not torch.isnan(out).any() else float("inf")
            if not err < TOL[dtype]:
                failures.append(f"{what}: relative error {err:.2e} of the reference")
    return failures


def run_check_script(script: str, env_overrides: dict[str, str]) -> str:
    """A check script of this folder in a fresh process with these native settings (VLM_W4A16_*, VLM_ATTENTION_*:
    the library reads them once per process); its output, or a failure with its report."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ, **env_overrides)
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parents[1] / "python"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(here / script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{env_overrides}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def output_digest(env_overrides: dict[str, str]) -> str:
    """digest_w4a16_outputs.py's digest of the decode-size outputs under these settings."""
    return run_check_script("digest_w4a16_outputs.py", env_overrides).strip()


def run_shape_checks(env_overrides: dict[str, str]) -> None:
    """check_w4a16_shapes.py under these settings; fails with its report."""
    run_check_script("check_w4a16_shapes.py", env_overrides)
