"""Run in a subprocess by test_w4a16_wgmma.py with VLM_W4A16_WGMMA unset (the default: the strip form from 17 to
128 rows), 1 or 2 (that form at every M; the library reads it once per process), and VLM_W4A16_WGMMA_CLUSTER
unset or 1 (split-K sums in thread-block clusters): the w4a16 GEMM against the
float32 reference on ragged shapes, both group sizes and dtypes, with and without the residual; which form
each row count routes to, with proof from the profiler that the wgmma kernel ran where it should and not
where it should not; identical results on repeated calls. Prints one line per failure and exits 1 if any."""
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
CLUSTER = os.environ.get("VLM_W4A16_WGMMA_CLUSTER", "") not in ("", "0")
ROUTING_ROWS = (1, 16, 17, 64, 128, 129, 256, 2048)


def expected_form(m: int) -> int:
    if m <= 16:  # the decode-size kernel's rows
        return 0
    return int(FORCED) if FORCED else (2 if m <= 128 else 0)


def main() -> int:
    from vlmserve.kernels import w4a16_dequant_gemm_min_rows, w4a16_wgmma_form

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
        summed_apart = any("splitk_reduce" in name for name in names)
        if ran and summed_apart == CLUSTER:
            lines.append(f"{m} rows: split-K sum {'in a second kernel' if summed_apart else 'not seen'} with "
                         f"VLM_W4A16_WGMMA_CLUSTER={'1' if CLUSTER else 'unset'}")
    if not deterministic(40, 4096, 5504 // 128 * 128, 128):
        lines.append("repeated calls gave different results")
    checks += len(ROUTING_ROWS) + 6
    return report(checks, lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
