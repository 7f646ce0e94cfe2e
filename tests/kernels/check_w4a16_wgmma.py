"""Run in a subprocess by test_w4a16_wgmma.py with VLM_W4A16_WGMMA unset (the default: the strip form from 17 to
128 rows), 1 or 2 (that form at every M; the library reads it once per process), and VLM_W4A16_WGMMA_CLUSTER
unset (the plan decides how K slices are summed), 1 (always in thread-block clusters) or 0 (always from fp32
partials): the w4a16 GEMM against the float32 reference on ragged shapes, both group sizes and dtypes, with and
without the residual; which form each row count routes to, with proof from the profiler that the wgmma kernel
ran where it should and not where it should not, and that its K slices were summed as the plan says; identical
results on repeated calls. Prints one line per failure and exits 1 if any."""
from __future__ import annotations

import os
import sys

import numpy as np

from w4a16_reference import random_layer, report, shapes_failures

# Token tiles of 32 (17-32 rows) and 64 (ragged last tiles), N of 1-86 strips (not always a multiple of
# 256: the last block's spare warps), K from one slice to many (uneven split-K), the engine's layer shapes.
SHAPES = [(17, 256, 512, 64), (32, 64, 1024, 128), (33, 320, 2048, 128), (40, 4096, 5504 // 128 * 128, 128),
          (64, 2048, 2048, 128), (65, 768, 4224, 64), (100, 1280, 1024, 64), (127, 4096, 2048, 128),
          (128, 16384, 2048, 128), (200, 2048, 8192, 128), (256, 5504, 4096, 128), (300, 512, 11008 // 64 * 64, 64)]


def kernels_run(m: int, n: int, k: int, group: int) -> set[str]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from vlmserve.kernels import w4a16_gemm

    _, packed, sz = random_layer(n, k, group, "float16", 0)
    a = torch.randn(m, k, device="cuda", dtype=torch.float16)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        w4a16_gemm(a, packed, sz, n, group)
        torch.cuda.synchronize()
    return {e.name for e in prof.events() if e.device_type.name == "CUDA"}


def deterministic(m: int, n: int, k: int, group: int) -> bool:
    import torch

    from vlmserve.kernels import w4a16_gemm

    _, packed, sz = random_layer(n, k, group, "bfloat16", 1)
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    first = w4a16_gemm(a, packed, sz, n, group)
    return all(torch.equal(w4a16_gemm(a, packed, sz, n, group), first) for _ in range(3))


FORCED = os.environ.get("VLM_W4A16_WGMMA", "")
CLUSTER = os.environ.get("VLM_W4A16_WGMMA_CLUSTER", "")  # "": the plan decides; "1" always clusters; "0" never
ROUTING_ROWS = (1, 16, 17, 64, 128, 129, 256, 2048)


def expected_form(m: int) -> int:
    if m <= 16:  # the decode-size kernel's rows
        return 0
    return int(FORCED) if FORCED else (2 if m <= 128 else 0)


def main() -> int:
    from vlmserve.kernels import w4a16_dequant_gemm_min_rows, w4a16_wgmma_form, w4a16_wgmma_plan

    checks, lines = shapes_failures(SHAPES)
    if w4a16_dequant_gemm_min_rows() != 129:  # the engine's dequantize + cuBLAS takes over above the strip form
        lines.append(f"the engine dequantizes from {w4a16_dequant_gemm_min_rows()} rows, expected 129")
    for m in ROUTING_ROWS:
        form = w4a16_wgmma_form(m, 768, 4224, 64)
        if form != expected_form(m):
            lines.append(f"{m} rows route to wgmma form {form}, expected {expected_form(m)}")
    for m in (65, 200):
        names = kernels_run(m, 768, 4224, 64)
        ran = any("w4a16_wgmma_kernel" in name for name in names)
        if ran != (expected_form(m) != 0):
            lines.append(f"{m} rows: the wgmma kernel {'ran' if ran else 'did not run'}, expected form "
                         f"{expected_form(m)}")
        # 3 column blocks over K = 4224: split K. Its slices are summed by a second kernel, or in clusters.
        splits, cluster = w4a16_wgmma_plan(m, 768, 4224, 64)
        summed_apart = any("splitk_reduce" in name for name in names)
        if ran and (splits < 2 or summed_apart != (not cluster)):
            lines.append(f"{m} rows: {splits} K slices planned, in clusters: {cluster}; the second kernel "
                         f"{'ran' if summed_apart else 'did not run'}")
        if ran and CLUSTER in ("0", "1") and cluster != (CLUSTER == "1"):
            lines.append(f"{m} rows: clusters {cluster} with VLM_W4A16_WGMMA_CLUSTER={CLUSTER}")
    # The engine's layers: the plan of each (for the record), and that the library runs what it plans.
    for n, k in ((4096, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (12288, 4096), (22016, 4096)):
        for m in (32, 64, 128):
            if expected_form(m):
                print(f"plan {m}x{n}x{k}: {w4a16_wgmma_plan(m, n, k, 128)}")
    for m, n, k in ((64, 16384, 2048), (64, 4096, 2048)):
        if not expected_form(m):
            continue
        splits, cluster = w4a16_wgmma_plan(m, n, k, 128)
        names = kernels_run(m, n, k, 128)
        if splits > 1 and any("splitk_reduce" in name for name in names) == cluster:
            lines.append(f"{m}x{n}x{k}: {splits} slices planned in clusters {cluster}, kernels {sorted(names)}")
    if not deterministic(40, 4096, 5504 // 128 * 128, 128):
        lines.append("repeated calls gave different results")
    checks += len(ROUTING_ROWS) + 10
    return report(checks, lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
