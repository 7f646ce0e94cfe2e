#!/usr/bin/env python3
"""Every plan of the decode-size w4a16 kernel (native/cuda/w4a16_decode.cu, M <= 4 on Hopper) on the model
layers of bench/gemm.py: strips of 64 columns a block S, K slices a cluster C and ring stages a warp R pinned
through VLM_W4A16_DECODE_S / _C / _RING, against the plan the library picks by itself, each in a process of its own (the
library plans a shape once per process). Same method as bench/gemm.py (weights rotated over more than the L2,
20 calls a CUDA graph, median of 30 replays); only our kernel is timed. The plan each run actually used is
asked of the library (vlm_w4a16_decode_plan), so a pinned plan that does not fit is reported as such rather
than timed under its name. At M = 1 these layers run at 12-67 % of the 4-bit HBM floor (docs/benchmarks/gemm.md):
fixed costs a call, which how the work is cut changes.

    python3 bench/decode_plan_sweep.py [--layers 2B.o,7B.qkv] [--ms 1,2,4] [--s 1,2,4] [--c 1,2,4,8] [--rings 8,16]
        --out R.json

Writes R.json and R.md (per layer and M: the default plan and time, the fastest plan and time).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))


def child(layers: list[str], ms: list[int]) -> None:
    """Times our kernel on each layer and M under this process's settings; one JSON line each."""
    import numpy as np
    import torch

    from gemm import GROUP, LAYERS, copies_for, random_packed_layer, time_graph
    from vlmserve.kernels import w4a16_decode_plan, w4a16_gemm, w4a16_workspace_bytes

    rng = np.random.default_rng(0)
    dev = torch.device("cuda")
    for name in layers:
        n, k = LAYERS[name]
        packed, sz = random_packed_layer(n, k, rng)
        ws = [torch.from_numpy(packed).to(dev) for _ in range(copies_for(packed.nbytes))]
        sz_d = torch.from_numpy(sz.view(np.int16)).to(dev)
        for m in ms:
            plan = w4a16_decode_plan(m, n, k, GROUP)
            row = {"layer": name, "n": n, "k": k, "m": m, "plan": list(plan), "us": None}
            if plan[0]:  # otherwise the general kernel would run: not this kernel's plan, not timed
                x = torch.randn(m, k, device=dev, dtype=torch.float16)
                out = torch.empty(m, n, device=dev, dtype=torch.float16)
                work = torch.zeros(max(1, w4a16_workspace_bytes(m, n, k, GROUP)), dtype=torch.uint8, device=dev)
                try:
                    row["us"] = 1e6 * time_graph(lambda i: w4a16_gemm(x, ws[i % len(ws)], sz_d, n, GROUP, out=out,
                                                                      workspace=work))
                except Exception as e:  # a plan that cannot launch is a finding, not the end of the sweep
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(json.dumps(row), flush=True)
        del ws
        torch.cuda.empty_cache()


def run_config(s: int, c: int, ring: int, layers: list[str], ms: list[int]) -> list[dict]:
    env = dict(os.environ)
    for name, value in (("S", s), ("C", c), ("RING", ring)):
        env.pop(f"VLM_W4A16_DECODE_{name}", None)
        if value:
            env[f"VLM_W4A16_DECODE_{name}"] = str(value)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--layers", ",".join(layers),
                           "--ms", ",".join(map(str, ms))], env=env, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:  # reported with what it measured before; the sweep goes on
        print(f"S={s} C={c} R={ring}: the timing process failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
              file=sys.stderr)
        rows.append({"layer": None, "m": None, "plan": None, "us": None,
                     "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"})
    for r in rows:
        r["pinned"] = [s, c, ring]
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (layer, M): the default run's plan and time, and the fastest timed run's."""
    out = []
    keys = sorted({(r["layer"], r["m"]) for r in rows if r["layer"]}, key=lambda t: (t[0][:2], t[0], t[1]))
    for layer, m in keys:
        these = [r for r in rows if r["layer"] == layer and r["m"] == m]
        default = next((r for r in these if r["pinned"] == [0, 0, 0]), None)
        timed = [r for r in these if r["us"] is not None]
        best = min(timed, key=lambda r: r["us"]) if timed else None
        out.append({"layer": layer, "m": m, "default_plan": default and default["plan"],
                    "default_us": default and default["us"], "best_plan": best and best["plan"],
                    "best_us": best and best["us"],
                    "gain": (default["us"] / best["us"]) if default and default["us"] and best else None})
    return out


def markdown(meta: dict, summary: list[dict], rows: list[dict]) -> str:
    def plan(p):
        return f"S={p[0]} C={p[1]} U={p[2]} R={p[3]}" if p and p[0] else "—"

    lines = [f"# Decode-size w4a16 kernel: every plan, {meta['gpu']}", "",
             f"- Date: {meta['date']}; command: `{meta['command']}`",
             "- Method: bench/gemm.py's (weights rotated over > 200 MB, 20 calls a CUDA graph, median of 30 "
             "replays); fp16 activations, group 128; each pinned plan in a process of its own", "",
             "| layer | M | default plan | µs | fastest plan | µs | default / fastest |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        fmt = lambda v: f"{v:.1f}" if v is not None else "—"  # noqa: E731
        gain = f"{s['gain']:.2f}×" if s["gain"] else "—"
        lines.append(f"| {s['layer']} | {s['m']} | {plan(s['default_plan'])} | {fmt(s['default_us'])} | "
                     f"{plan(s['best_plan'])} | {fmt(s['best_us'])} | {gain} |")
    lines += ["", "Every run (µs; pinned S, C → the plan the library reported):", "",
              "| layer | M | pinned | plan | µs |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["layer"] or "", r["m"] or 0, r["us"] if r["us"] is not None else 1e9)):
        s_, c_, ring_ = r["pinned"]
        pin = "default" if r["pinned"] == [0, 0, 0] else f"S={s_ or '·'} C={c_ or '·'} R={ring_ or '·'}"
        us = (f"{r['us']:.1f}" if r["us"] is not None else f"failed: {r['error']}" if r.get("error")
              else "no plan (general kernel)")
        lines.append(f"| {r['layer'] or 'all'} | {r['m'] or '—'} | {pin} | {plan(r['plan'])} | {us} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="2B.qkv,2B.o,2B.gate_up,2B.down,7B.qkv,7B.o,7B.gate_up,7B.down")
    ap.add_argument("--ms", default="1,2,4", help="rows (1-4: the decode kernel's range)")
    ap.add_argument("--s", default="1,2,4", help="strips a block to pin")
    ap.add_argument("--c", default="1,2,4,6,8", help="K slices a cluster to pin")
    ap.add_argument("--rings", default="8,16", help="ring stages a warp to pin (8 or 16)")
    ap.add_argument("--out", default="decode_plan_sweep.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    layers = [x for x in args.layers.split(",") if x]
    ms = [int(x) for x in args.ms.split(",")]
    if args.child:
        child(layers, ms)
        return
    from gemm import LAYERS

    unknown = [x for x in layers if x not in LAYERS]
    if unknown or any(not 1 <= m <= 4 for m in ms):
        ap.error(f"layers must be among {sorted(LAYERS)} and M within 1-4 (got {unknown or ms})")
    rings = [int(x) for x in args.rings.split(",") if x]
    if any(r not in (8, 16) for r in rings):
        ap.error(f"--rings takes 8 and/or 16, got {rings}")
    import torch

    if not torch.cuda.is_available():
        sys.exit("decode_plan_sweep: needs a CUDA GPU (none is visible)")
    configs = [(0, 0, 0)] + [(int(s), int(c), r) for r in rings for s in args.s.split(",") for c in args.c.split(",")]
    rows: list[dict] = []
    for i, (s, c, r) in enumerate(configs):
        print(f"[{i + 1}/{len(configs)}] " + ("default plan" if not s else f"S={s} C={c} R={r}"), file=sys.stderr,
              flush=True)
        rows += run_config(s, c, r, layers, ms)
    meta = {"gpu": torch.cuda.get_device_name(), "date": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC"), "command": "python3 bench/decode_plan_sweep.py " + " ".join(sys.argv[1:])}
    summary = summarize(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "summary": summary, "runs": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(meta, summary, rows))
    for s in summary:
        if s["gain"]:
            print(f"{s['layer']} M={s['m']}: default {s['default_plan']} {s['default_us']:.1f} us, fastest "
                  f"{s['best_plan']} {s['best_us']:.1f} us ({s['gain']:.2f}x)")


if __name__ == "__main__":
    main()
