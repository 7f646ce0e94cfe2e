"""What one persistent kernel a decode step could gain over the chain of kernels, measured on the bytes alone.

A batch-1 decode step of the 2B- and 7B-shaped models streams, layer after layer, its q/k/v weights, the KV cache
of its context (int8, with the fp16 scale and zero of each token and KV head), o, gate_up and down (4-bit codes
with an fp16 scale and zero a group of 128, 0.53125 bytes a weight, as the engine keeps them): five phases a layer,
each of which needs the whole of the one before (a GEMM's input is the previous phase's output). Those bytes, laid
out back to back (far more than the L2), are read by vlm_step_stream_probe four ways, with no arithmetic:

  chain                one dependent kernel a phase, as the engine launches its kernels: each block requests its
                       first ring stages, waits for the kernel before it, streams the rest;
  persistent           one launch of resident blocks; a block consumes a phase once every block has finished the
                       one before (a counter in global memory), with that phase's first stages requested before
                       the wait;
  persistent_no_waits  the same launch without the waits: the streaming alone;
  chain_exclusive      the chain with each kernel's blocks alone on their SMs (each asks for an SM's share of
                       shared memory), so the next kernel's blocks start and request their first stages only as
                       these exit, as with the engine's decode GEMMs (three blocks of ~58 KB an SM).

Each warp streams through a ring of cp.async stages of 512 bytes (the decode GEMM's). Each form that waits also runs
"+ row": after its wait every block reads the whole fp16 row of the model's hidden size that the phase before wrote
and reduces its sum of squares (what the fused RMSNorm of q/k/v and gate_up does before its weights), and after its
weights writes its share of its own phase's row (the GEMM's output): the dependent work around the weights. For
each (blocks an SM, ring stages) that fits, each form is timed as bench/gemm times a layer: 20 steps captured in one
CUDA graph, median of 30 replays after 50 ms of untimed ones, time a step (the 2026-12-06 16:16 run captured one
step a graph). Reported: µs a step (the layers only; the lm head, embedding and argmax are not in it), µs a layer,
and the bytes over that time as a fraction of the device-to-device copy bandwidth measured in the same run (read +
written, the anchors' floor). The gap between chain and persistent is what the kernel boundaries cost on the bytes
alone; between persistent and persistent_no_waits, what the waits cost; between chain and chain_exclusive, what the
next kernel's early start (its blocks resident beside the running kernel's) is worth; between a form and its
"+ row", what the dependent work around the weights costs.

    python bench/step_stream_probe.py [--models 2b,7b] [--context 512] [--shapes 1x16,2x8,4x4] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from vlmserve.kernels import step_probe_grid, step_stream_probe  # noqa: E402
from gemm import hbm_bandwidth, time_graph  # noqa: E402  (bench/, the script's own folder)
from run_info import git_revision, library_settings, settings_line, write_atomic  # noqa: E402

# hidden, layers, q heads, KV heads, head dim, ffn (ANCHORS.md)
MODELS = {"2b": (2048, 24, 16, 8, 128, 8192), "7b": (4096, 32, 32, 32, 128, 11008)}
GROUP = 128
MODES = ("chain", "chain_exclusive", "persistent", "persistent_no_waits")
# (mode, with the dependent row work): every form that waits with and without it
VARIANTS = [(m, r) for m in MODES for r in ((False, True) if m != "persistent_no_waits" else (False,))]


def _label(mode: str, with_row: bool) -> str:
    return mode + (" + row" if with_row else "")


def w4a16_bytes(n: int, k: int) -> int:
    """4-bit codes and an fp16 (scale, zero) pair a group of GROUP weights."""
    return n * k // 2 + (k // GROUP) * n * 4


def layer_phases(model: str, context: int) -> list[tuple[str, int]]:
    hidden, _, heads, kv_heads, head_dim, ffn = MODELS[model]
    kv = 2 * kv_heads * context * (head_dim + 4)  # K and V: int8 codes and an fp16 (scale, zero) a token and head
    return [("qkv", w4a16_bytes((heads + 2 * kv_heads) * head_dim, hidden)), ("attention", kv),
            ("o", w4a16_bytes(hidden, heads * head_dim)), ("gate_up", w4a16_bytes(2 * ffn, hidden)),
            ("down", w4a16_bytes(hidden, ffn))]


def run_model(model: str, context: int, shapes: list[tuple[int, int]], bandwidth: float) -> list[dict]:
    layers = MODELS[model][1]
    per_layer = layer_phases(model, context)
    phases = [b for _ in range(layers) for _, b in per_layer]
    total = sum(phases)
    buf = torch.randint(-2**31, 2**31 - 1, (total // 4,), dtype=torch.int32, device="cuda")
    counters = torch.zeros(len(phases), dtype=torch.int32, device="cuda")
    rows = []
    for blocks_per_sm, stages in shapes:
        grid = step_probe_grid(blocks_per_sm, stages)
        if grid == 0:
            print(f"[{model}] {blocks_per_sm} blocks an SM of {stages} ring stages do not fit: skipped", flush=True)
            continue
        sink = torch.zeros(grid, dtype=torch.int32, device="cuda")
        for mode, with_row in VARIANTS:
            hidden_rows = torch.zeros(2, MODELS[model][0], dtype=torch.float16, device="cuda") if with_row else None
            s = time_graph(lambda _i: step_stream_probe(buf, phases, mode, blocks_per_sm, stages, sink, counters,
                                                        hidden_rows))
            row = {"model": model, "mode": mode, "row": with_row, "blocks_per_sm": blocks_per_sm,
                   "ring_stages": stages, "grid": grid, "step_us": s * 1e6, "layer_us": s * 1e6 / layers,
                   "bytes": total, "fraction_of_copy_bandwidth": total / s / bandwidth}
            rows.append(row)
            print(f"[{model}] {_label(mode, with_row):25s} {blocks_per_sm} blocks/SM x {stages:2d} stages: "
                  f"{row['step_us']:8.1f} us a step, {row['layer_us']:6.2f} us a layer, "
                  f"{100 * row['fraction_of_copy_bandwidth']:5.1f} % of the copy bandwidth", flush=True)
    del buf
    torch.cuda.empty_cache()
    return rows


def render(doc: dict) -> str:
    variants = [v for v in VARIANTS if any(r["mode"] == v[0] and r.get("row", False) == v[1] for r in doc["rows"])]
    lines = ["# The step-streaming probe: a chain of kernels against one persistent launch, on the bytes alone", "",
             f"- Device: {doc['gpu']}; copy bandwidth measured {doc['bandwidth_tb_s']:.2f} TB/s (read + written)",
             f"- Date: {doc['date']}; revision {doc['revision']}; context {doc['context']} tokens (int8 KV)",
             f"- Command: `{doc['command']}`", *settings_line(doc.get("settings")), "",
             "µs a layer (in brackets: the layer's bytes over that time, % of the copy bandwidth)", "",
             "| model | blocks an SM × ring stages | grid | " + " | ".join(_label(*v) for v in variants) + " |",
             "|---|---|---|" + "---|" * len(variants)]
    by_key: dict[tuple, dict] = {}
    for r in doc["rows"]:
        key = (r["model"], r["blocks_per_sm"], r["ring_stages"], r["grid"])
        by_key.setdefault(key, {})[(r["mode"], r.get("row", False))] = r
    for (model, b, st, grid), got in by_key.items():
        cells = [f"{got[v]['layer_us']:.2f} ({100 * got[v]['fraction_of_copy_bandwidth']:.0f} %)" if v in got else "—"
                 for v in variants]
        lines.append(f"| {model} | {b} × {st} | {grid} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="2b,7b")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--shapes", default="1x16,2x8,3x8,4x4",
                    help="blocks an SM x ring stages a warp (4, 8 or 16), comma-separated")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (and a .md beside it)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("step_stream_probe: needs a CUDA GPU")
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            sys.exit(f"step_stream_probe: unknown model {m!r} (known: {', '.join(MODELS)})")
    try:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s]
        assert all(len(s) == 2 for s in shapes)
    except (ValueError, AssertionError):
        sys.exit(f"step_stream_probe: --shapes takes BLOCKSxSTAGES,... (e.g. 1x16,2x8), got {args.shapes!r}")
    bandwidth = hbm_bandwidth()
    rows = [r for m in models for r in run_model(m, args.context, shapes, bandwidth)]
    doc = {"gpu": torch.cuda.get_device_name(), "bandwidth_tb_s": bandwidth / 1e12,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "revision": git_revision(), "context": args.context, "command": "python " + " ".join(sys.argv),
           "settings": library_settings(), "rows": rows}
    text = render(doc)
    print(text)
    if args.out:
        write_atomic(args.out, json.dumps(doc, indent=1))
        write_atomic(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
