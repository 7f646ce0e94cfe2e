#!/usr/bin/env python3
"""How the CUTLASS w4a16 GEMM (native/cuda/w4a16_cutlass.cu) schedules its work at 32-256 rows: the same layers and
rows under each scheduler setting, each setting in a process of its own (the library reads them once per process),
against torch fp16 (cuBLAS) and the library's own tensor-core kernel (w4a16_gemm, up to 128 rows) timed in a
process before them. --rounds N (default 2) runs each setting's process N times, the settings in turn, and reports
the median and the range, so that a difference between settings can be held against the spread of one. Method as
bench/gemm.py: weights rotated over more than the L2, 20 calls a CUDA graph, median of 30 replays, group 128.

At 32-128 rows the kernel took ~13 us a call whatever the layer (H100, 2026-12-06): not its stream-K partial sums
(the settings below that split or sum otherwise changed little) but one SM converting its tiles' codes, ~0.35 us a
128 x 64 K tile whatever the tokens, which the library's choice of tiles now spreads over the SMs. The settings:

    default     the library's own choice of tiles (tile_n_for, tile_m_for, tile_k_for) and CUTLASS's stream-K
                heuristic where it runs, partial sums added in order (the engine's setting)
    splits2/4   every tile's K cut in 2 / 4 (VLM_W4A16_CUTLASS_SPLITS)
    unordered   the heuristic's units, partial sums added as they finish (VLM_W4A16_CUTLASS_UNORDERED_SUMS=1)
    dp          no K split: the persistent data-parallel scheduler (VLM_W4A16_CUTLASS_STREAMK=0)
    tile_m64    tiles of 64 weight rows, data-parallel (VLM_W4A16_CUTLASS_TILE_M=64)
    tile_m128   tiles of 128 weight rows, stream-K (VLM_W4A16_CUTLASS_TILE_M=128)
    tile_n64    tiles of 64 tokens (VLM_W4A16_CUTLASS_TILE_N=64)
    tile_n128   tiles of 128 tokens (VLM_W4A16_CUTLASS_TILE_N=128)
    tile_n256   tiles of 256 tokens (VLM_W4A16_CUTLASS_TILE_N=256; 128 weight rows, stream-K)
    tile_k64    K tiles of 64, 4 wgmmas a pipeline stage (VLM_W4A16_CUTLASS_TILE_K=64)
    tile_k128   K tiles of 128, 8 wgmmas a pipeline stage (VLM_W4A16_CUTLASS_TILE_K=128; groups of 128)
    tile_n128_k128  both
    cluster2    tiles of 128 rows in clusters of 2 that share one read of the activations
                (VLM_W4A16_CUTLASS_CLUSTER=2 with K tiles of 64; the layers of an even number of such tiles,
                stream-K)

    python3 bench/cutlass_schedules.py [--layers 2B.o,7B.qkv] [--ms 32,64] [--settings default,splits2] --out R.json

Writes R.json and R.md (per layer and M: µs under each setting with the tiles that ran, × torch fp16 for the
fastest).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
OWN_KERNEL_MAX_ROWS = 128  # above this the library's w4a16_gemm is not a tensor-core kernel of its own

SETTINGS = {
    "default": {},
    "splits2": {"VLM_W4A16_CUTLASS_SPLITS": "2"},
    "splits4": {"VLM_W4A16_CUTLASS_SPLITS": "4"},
    "unordered": {"VLM_W4A16_CUTLASS_UNORDERED_SUMS": "1"},
    "dp": {"VLM_W4A16_CUTLASS_STREAMK": "0"},
    "tile_m64": {"VLM_W4A16_CUTLASS_TILE_M": "64"},
    "tile_m128": {"VLM_W4A16_CUTLASS_TILE_M": "128"},
    "tile_n64": {"VLM_W4A16_CUTLASS_TILE_N": "64"},
    "tile_n128": {"VLM_W4A16_CUTLASS_TILE_N": "128"},
    "tile_n256": {"VLM_W4A16_CUTLASS_TILE_N": "256"},
    "tile_k64": {"VLM_W4A16_CUTLASS_TILE_K": "64"},
    "tile_n128_k128": {"VLM_W4A16_CUTLASS_TILE_N": "128", "VLM_W4A16_CUTLASS_TILE_K": "128"},
    "tile_k128": {"VLM_W4A16_CUTLASS_TILE_K": "128"},
    "cluster2": {"VLM_W4A16_CUTLASS_CLUSTER": "2", "VLM_W4A16_CUTLASS_TILE_K": "64"},
}


def child(layers: list[str], ms: list[int], peers: bool) -> None:
    """Times the CUTLASS GEMM on each layer and M, or with peers torch fp16 and w4a16_gemm instead; one JSON line
    each. Peers run in a process of their own: timed in the same process, between the CUTLASS calls, they left the
    CUTLASS times 1-17 % above those of the same tiles timed in a process without them (H100, 2026-12-06 10:50)."""
    import numpy as np
    import torch

    from gemm import GROUP, LAYERS, copies_for, random_packed_layer, time_graph
    from vlmserve.kernels import (w4a16_cutlass_gemm, w4a16_cutlass_prepare, w4a16_cutlass_tiles,
                                  w4a16_cutlass_workspace_bytes, w4a16_gemm, w4a16_workspace_bytes)

    rng = np.random.default_rng(0)
    dev = torch.device("cuda")
    for name in layers:
        n, k = LAYERS[name]
        packed, sz = random_packed_layer(n, k, rng)
        packed_d = torch.from_numpy(packed).to(dev)
        sz_d = torch.from_numpy(sz.view(np.int16)).to(dev)
        if peers:
            own = [packed_d] + [packed_d.clone() for _ in range(copies_for(packed_d.numel()) - 1)]
            w16 = (torch.randn(n, k, device=dev) * 0.02).half()
            fp16 = [w16] + [w16.clone() for _ in range(copies_for(w16.numel() * 2) - 1)]
        else:
            first = w4a16_cutlass_prepare(packed_d, sz_d, n, k, GROUP)
            prepared = [first] + [first.clone() for _ in range(copies_for(first.numel()) - 1)]
        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            out = torch.empty(m, n, device=dev, dtype=torch.float16)
            row = {"layer": name, "n": n, "k": k, "m": m}
            if peers:
                row["torch_fp16_us"] = 1e6 * time_graph(lambda i: torch.nn.functional.linear(x, fp16[i % len(fp16)]))
                if m <= OWN_KERNEL_MAX_ROWS:
                    ow = torch.zeros(max(1, w4a16_workspace_bytes(m, n, k, GROUP)), dtype=torch.uint8, device=dev)
                    row["own_kernel_us"] = 1e6 * time_graph(
                        lambda i: w4a16_gemm(x, own[i % len(own)], sz_d, n, GROUP, out=out, workspace=ow))
            else:
                t = w4a16_cutlass_tiles(m, n, k, GROUP)  # what this process's settings run
                row["tiles"] = f"{t.tile_m}x{t.tile_n}x{t.tile_k} {'sk' if t.stream_k else 'dp'}"
                work = torch.empty(max(1, w4a16_cutlass_workspace_bytes(m, n, k, GROUP)), dtype=torch.uint8,
                                   device=dev)
                row["cutlass_us"] = 1e6 * time_graph(
                    lambda i: w4a16_cutlass_gemm(x, prepared[i % len(prepared)], n, GROUP, out=out, workspace=work))
            print(json.dumps(row), flush=True)
        if peers:
            del own, fp16
        else:
            del prepared, first
        torch.cuda.empty_cache()


def spread(runs: list[float]) -> str:
    """' [lo-hi]' of several processes' times, '' of one."""
    return f" [{min(runs):.1f}-{max(runs):.1f}]" if len(runs) > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="2B.qkv,2B.o,2B.gate_up,2B.down,7B.qkv,7B.o,7B.gate_up,7B.down")
    ap.add_argument("--ms", default="32,64,128,256")
    ap.add_argument("--settings", default="default,splits2,splits4,unordered,dp,tile_m64,tile_n128")
    ap.add_argument("--rounds", type=int, default=2,
                    help="times each setting's process runs, the settings taken in turn; the median is reported "
                         "with the range where there are several")
    ap.add_argument("--out", help="R.json (required)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--peers", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    layers, ms = args.layers.split(","), [int(m) for m in args.ms.split(",")]
    if args.child:
        child(layers, ms, args.peers)
        return
    if not args.out:
        ap.error("--out is required")
    from vlmserve.kernels import w4a16_cutlass_built

    if not w4a16_cutlass_built():
        sys.exit("this library was built without the CUTLASS GEMM (CUTLASS's headers not found at build time)")
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        sys.exit("the CUTLASS GEMM runs on a compute capability 9.0 GPU (its code is sm_90a); none is visible here")
    names = args.settings.split(",")
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        sys.exit(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    rows: dict[tuple[str, int], dict] = {}

    def run_child(label: str, extra_env: dict, peers: bool) -> list[dict]:
        env = {**os.environ, **extra_env}
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "python"), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, __file__, "--child", "--layers", args.layers, "--ms", args.ms]
        cmd += ["--peers"] if peers else []
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{label}: failed ({run.returncode}): {run.stderr.strip()[-2000:]}", file=sys.stderr)
            return []
        print(f"{label}: done", file=sys.stderr)
        found = []
        for line in run.stdout.splitlines():
            r = json.loads(line)
            found.append((rows.setdefault((r["layer"], r["m"]), {k: r[k] for k in ("layer", "n", "k", "m")}), r))
        return found

    for row, r in run_child("torch fp16 and own kernel", {}, peers=True):
        row.update({key: r[key] for key in ("torch_fp16_us", "own_kernel_us") if key in r})
    for round_ in range(args.rounds):
        for name in names:
            for row, r in run_child(f"{name} (round {round_ + 1})", SETTINGS[name], peers=False):
                row.setdefault(f"{name}_runs", []).append(r["cutlass_us"])
                row[name] = statistics.median(row[f"{name}_runs"])
                row[f"{name}_tiles"] = r["tiles"]
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "rounds": args.rounds, "settings": {n: SETTINGS[n] for n in names}, "rows": list(rows.values())}
    result["device"] = torch.cuda.get_device_name(0)
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1))
    lines = [f"# CUTLASS w4a16 GEMM schedules, {result['device']}, {result['date']}", "",
             "µs a call (20 calls a CUDA graph, median of 30 replays, weights rotated over > 200 MB, group 128); "
             f"each setting in {args.rounds} processes of its own taken in turn (their median; in square brackets "
             "the range of the processes' times), the peers in one process before them; in round brackets the "
             "tiles that ran: weight rows x tokens x K, stream-K (sk) or data-parallel (dp)", "",
             "| layer | M | torch fp16 | own kernel | " + " | ".join(names) + " | fastest × fp16 |",
             "|---|---|---|---|" + "---|" * len(names) + "---|"]
    for r in rows.values():
        times = {n: r[n] for n in names if n in r}
        best = min(times, key=times.get) if times else None
        fp16 = r.get("torch_fp16_us")
        cells = " | ".join(f"{r[n]:.1f}{spread(r[n + '_runs'])} ({r[n + '_tiles']})" if n in r else "—"
                           for n in names)
        ratio = f"{fp16 / times[best]:.2f} ({best})" if best and fp16 else "—"
        own = f"{r['own_kernel_us']:.1f}" if "own_kernel_us" in r else "—"
        lines.append(f"| {r['layer']} | {r['m']} | {fp16:.1f} | {own} | {cells} | {ratio} |" if fp16 else
                     f"| {r['layer']} | {r['m']} | — | {own} | {cells} | {ratio} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
