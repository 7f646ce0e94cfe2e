"""Run in a subprocess by test_w4a16_decode.py: checks decode-size w4a16 GEMMs
against the reference under whatever VLM_W4A16_* settings the environment holds
(the library reads them once per process), and where the decode kernel runs
(M <= 4, not VLM_W4A16_DECODE=0) its fused RMSNorm input. Prints one line per
failure and exits 1 if there was any."""
from __future__ import annotations

import os
import sys

from w4a16_reference import report, rms_norm_gemm_failures, shapes_failures

from vlmserve.kernels import w4a16_decode_plan

# Rows 1-4 take the decode kernel on Hopper, the rest the general kernel (ragged row counts of both).
# With VLM_W4A16_GEMM_CODES=1 rows up to 16 take its codes form, whose batches of 8 steps hold a group of
# 128 or two of 64 (K a multiple of 128), of 4 steps one of 64 (K = 192, 320; and 12-16 rows at group 64).
SHAPES = [(1, 64, 128, 64), (1, 2048, 2048, 128), (3, 320, 4224, 64), (4, 1280, 1024, 128), (2, 4096, 512, 128),
          (4, 768, 11008, 64), (1, 5504, 4096, 128), (8, 1280, 1024, 128), (7, 2048, 4096, 128),
          (9, 1280, 1024, 128), (12, 320, 4224, 64), (16, 768, 11008, 64), (16, 5504, 4096, 128),
          (17, 1280, 2048, 128), (6, 512, 192, 64), (14, 512, 320, 64), (11, 2048, 8192, 128)]


def plan_failures() -> tuple[int, list[str]]:
    """The plan the library reports is the one the settings ask for (bench/decode_plan_sweep.py relies on it):
    none with VLM_W4A16_DECODE=0 or above 4 rows, the pinned strips and slices where pinned."""
    decode_on = os.environ.get("VLM_W4A16_DECODE", "1") != "0"
    every = [int(os.environ.get(f"VLM_W4A16_DECODE_{v}", "0") or 0) for v in ("S", "C", "RING")]
    shape_pins = {}  # VLM_W4A16_DECODE_PLANS="NxK:S,C,R;...": one shape's plan
    for entry in filter(None, os.environ.get("VLM_W4A16_DECODE_PLANS", "").split(";")):
        shape, values = entry.split(":")
        shape_pins[tuple(map(int, shape.split("x")))] = [int(v) for v in values.split(",")]
    checks, lines, planned = 0, [], 0
    for m, n, k, group in SHAPES:
        plan = w4a16_decode_plan(m, n, k, group)
        checks += 1
        if not decode_on or m > 4:
            if plan != (0, 0, 0, 0):
                lines.append(f"plan {plan} at M={m} {n}x{k} where the decode kernel should not run")
            continue
        if plan[0] == 0:
            continue  # does not apply (shared memory): the general kernel runs, and was checked above
        planned += 1
        pinned = [p or e for p, e in zip(shape_pins.get((n, k), [0, 0, 0]), every)]
        pinned[2] = 16 if pinned[2] == 16 else 8  # the ring: 8 unless 16 is asked
        for want, got, name in zip(pinned, (plan[0], plan[1], plan[3]), ("S", "C", "ring")):
            if want and got != want:
                lines.append(f"plan {plan} at M={m} {n}x{k}: {name} {got}, pinned {want}")
    if decode_on and planned == 0:
        lines.append("no shape of up to 4 rows has a decode plan: the decode kernel never ran")
    return checks, lines


def main() -> int:
    checks, lines = shapes_failures(SHAPES)
    more, failed = plan_failures()
    checks, lines = checks + more, lines + failed
    if os.environ.get("VLM_W4A16_DECODE", "1") != "0":  # the decode kernel's fused norm
        for m, n, k, group in SHAPES:
            for dtype in ("float16", "bfloat16"):
                if m <= 4:
                    checks += 1
                    lines += rms_norm_gemm_failures(m, n, k, group, dtype)
    return report(checks, lines)


if __name__ == "__main__":
    sys.exit(main())
