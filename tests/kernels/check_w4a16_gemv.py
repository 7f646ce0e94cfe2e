"""Run in a subprocess by test_w4a16_gemv.py: the column-tile w4a16 kernel (native/cuda/w4a16_gemv.cu) on its own
copy of each layer against the float32 reference, once with each number of warps a tile in VLM_W4A16_GEMV_CHECK_PARTS
(comma-separated, 0 the kernel's own choice; default 0) on the same layer, under whatever ring VLM_W4A16_GEMV_RING /
VLM_W4A16_GEMV_SHARED_RING set (the library reads them once per process): plain, with a residual, with silu(gate) * up
as input, and with the fused RMSNorm, whose outputs must equal the norm kernel followed by the same GEMM bit for bit.
Prints one line per failure and exits 1 if there was any."""
from __future__ import annotations

import os
import sys

import torch

from w4a16_reference import TOL, random_layer, report, rms_norm_gemm_failures

from vlmserve.kernels import w4a16_gemv, w4a16_gemv_k_parts, w4a16_gemv_repack

# Rows 1-4; ragged parts of K (K = 4224: 66 chunks, 11008: 172); tiles a block 1 (8 parts), 2, 4 and 8 (1 part:
# 17408 columns are more tiles than the GPU's warps hold at 2 parts).
SHAPES = [(1, 64, 512, 64), (1, 2048, 2048, 128), (3, 320, 4224, 64), (4, 1280, 1024, 128), (2, 4096, 512, 128),
          (4, 768, 11008, 64), (1, 5504, 4096, 128), (1, 12288, 1024, 128), (2, 17408, 512, 64), (1, 2048, 8192, 128)]


def rel(out, ref) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item() if not torch.isnan(out).any() else float("inf")


def shape_failures(m: int, n: int, k: int, group: int, dtype: str, k_parts: list[int]) -> list[str]:
    seed = hash(("gemv", m, n, k, group, dtype)) % 2**31
    w_ref, packed, sz = random_layer(n, k, group, dtype, seed)
    gemv_w = w4a16_gemv_repack(packed, n, k)
    dev, tdtype = w_ref.device, getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen).to(dev, tdtype)
    residual = torch.randn(m, n, generator=gen).to(dev, tdtype)
    # silu(gate) * up of [gate | up] rows, rounded to the act dtype as a separate pass would.
    gate_up = torch.randn(m, 2 * k, generator=gen).to(dev, tdtype)
    g, u = gate_up[:, :k].float(), gate_up[:, k:].float()
    a_su = (g / (1 + torch.exp(-g)) * u).to(tdtype)
    failures = []
    for p in k_parts:
        what = f"M={m} N={n} K={k} group={group} {dtype} ({p or 'own choice of'} warps a tile)"
        for res in (None, residual):
            out = torch.full((m, n), float("nan"), dtype=tdtype, device=dev)  # poisoned
            w4a16_gemv(a, gemv_w, sz, n, group, residual=res, out=out, k_parts=p)
            ref = a.float() @ w_ref.T + (res.float() if res is not None else 0)
            if not (err := rel(out, ref)) < TOL[dtype]:
                failures.append(f"{what} {'with' if res is not None else 'without'} residual: relative error {err:.2e}")
        out = torch.full((m, n), float("nan"), dtype=tdtype, device=dev)
        w4a16_gemv(gate_up, gemv_w, sz, n, group, out=out, gate_up_input=True, k_parts=p)
        if not (err := rel(out, a_su.float() @ w_ref.T)) < TOL[dtype]:
            failures.append(f"{what} silu(gate) * up input: relative error {err:.2e}")
    # The fused norm against the norm kernel + the same GEMM, and against the reference.
    return failures + rms_norm_gemm_failures(m, n, k, group, dtype, column_tiles=True, k_parts=tuple(k_parts))


def main() -> int:
    asked = [int(p) for p in os.environ.get("VLM_W4A16_GEMV_CHECK_PARTS", "0").split(",") if p.strip()]
    checks, lines, ran = 0, [], 0
    for m, n, k, group in SHAPES:
        checks += 1
        if w4a16_gemv_k_parts(m, n, k, group) == 0:
            lines.append(f"M={m} {n}x{k}: the kernel does not run the shape")
            continue
        # A part keeps at least one chunk of 64 inputs: K = 512 has 8 chunks, so every asked number runs there.
        parts = [p for p in asked if k // 64 >= p]
        if not parts:
            continue
        ran += 1
        for dtype in ("float16", "bfloat16"):
            checks += 6 * len(parts)
            lines += shape_failures(m, n, k, group, dtype, parts)
    if ran == 0:
        lines.append("no shape ran")
    return report(checks, lines)


if __name__ == "__main__":
    sys.exit(main())
