#!/usr/bin/env python3
"""Where a decode step's time goes on the GPU, as the engine runs it (CUDA graphs, dependent launch):
the kernels of a window of steady decode steps, recorded by CUPTI through torch.profiler.

The same random-weight models as bench/decode.py (written under --work). `batch` requests of a
512-token prompt decode; once every request has its first --skip tokens, --steps steps are recorded.
A step begins with the embedding kernel, so a step is the kernels from one embedding kernel to the last
before the next (it ends with the argmax kernel, or at one row with the lm head, which then takes the greedy
token itself). Reported per step: its span (the previous step's last end to its last end), the time at
least one kernel ran (the union of their intervals: kernels overlap under dependent launch), the idle
rest, and for each kernel name its launches, mean and total duration, and its own time: from the
later of its start and the previous kernel's end to its end (under dependent launch a kernel starts
early and waits for the one before it, so durations overlap; own times add up to the busy time). Then the
same for each kernel position of a decoder layer (norm + q/k/v, attention, o, ...), over every layer, with how
long before the previous kernel's end it started: a kernel's blocks start early only where the kernel before
leaves room on the SMs. `--from-json` reads a report this script wrote and prints it again.

    python3 bench/decode_trace.py --model 2b --weights w4a16 --kv int8 --batch 1 --out trace_b1.json
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from decode import PROMPT, SHAPES, write_model
from run_info import write_atomic


def short_name(name: str) -> str:
    """The kernel's function name, without namespaces, template arguments or parameters."""
    base = re.split(r"[<(]", name.replace("(anonymous namespace)", ""), maxsplit=1)[0]
    return base.split("::")[-1].removeprefix("void ").strip() or name[:60]


def busy_time(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def layer_positions(step_kernels: list[list[dict]], own_times: list[list[float]], layers: int) -> list[dict] | None:
    """Each kernel position of a decoder layer (norm + q/k/v, attention, ...) over every layer of every step: its
    own time, duration, and how long before the previous kernel's end it started (its early start under dependent
    launch). A step is its embedding kernel, `layers` runs of the same kernels, then the tail (final norm, lm head,
    argmax). None where a step's kernels do not split so (another number of layers than the model's)."""
    sums = None
    for ks, own in zip(step_kernels, own_times):
        per_layer = (len(ks) - 1) // layers
        names = [short_name(k["name"]) for k in ks[1:1 + layers * per_layer]]
        if per_layer == 0 or any(names[i] != names[i % per_layer] for i in range(len(names))):
            return None
        if sums is None:
            sums = [{"position": p, "kernel": names[p], "n": 0, "own": 0.0, "dur": 0.0, "early": 0.0}
                    for p in range(per_layer)]
        elif len(sums) != per_layer or any(r["kernel"] != names[r["position"]] for r in sums):
            return None
        prev_end = ks[0]["ts"] + ks[0]["dur"]  # the latest end of the kernels before i (ks is in start order)
        for i in range(1, 1 + layers * per_layer):
            r = sums[(i - 1) % per_layer]
            r["n"] += 1
            r["own"] += own[i]
            r["dur"] += ks[i]["dur"]
            r["early"] += max(0.0, prev_end - ks[i]["ts"])
            prev_end = max(prev_end, ks[i]["ts"] + ks[i]["dur"])
    return [{"position": r["position"], "kernel": r["kernel"], "own_us": r["own"] / r["n"],
             "mean_us": r["dur"] / r["n"], "early_us": r["early"] / r["n"]} for r in sums]


def analyse(kernels: list[dict], layers: int | None = None) -> dict:
    """kernels: chrome-trace kernel events (ts, dur in µs, name), in any order. layers: the model's decoder layers,
    for the table of a layer's kernel positions (layer_positions)."""
    kernels = sorted(kernels, key=lambda k: k["ts"])
    # The last kernel of each step: the one before the next step's embedding kernel.
    ends = [i - 1 for i, k in enumerate(kernels) if i > 0 and short_name(k["name"]) == "embed_kernel"]
    if len(ends) < 3:
        raise RuntimeError(f"only {len(ends) + 1} embedding kernels recorded: no whole decode step in the window")
    steps, step_kernels, own_times = [], [], []
    per_name, own = defaultdict(list), defaultdict(float)
    for a, b in zip(ends, ends[1:]):
        ks = kernels[a + 1:b + 1]
        step_kernels.append(ks)
        own_times.append([0.0] * len(ks))
        span = (kernels[b]["ts"] + kernels[b]["dur"]) - (kernels[a]["ts"] + kernels[a]["dur"])
        busy = busy_time([(k["ts"], k["ts"] + k["dur"]) for k in ks])
        steps.append({"span_us": span, "busy_us": busy, "kernels": len(ks), "kernel_sum_us": sum(k["dur"] for k in ks)})
        # A kernel started early by dependent launch spends part of its duration waiting for the one
        # before; its own time is from the later of its start and the previous kernel's end to its end.
        prev_end = kernels[a]["ts"] + kernels[a]["dur"]
        for i in sorted(range(len(ks)), key=lambda i: ks[i]["ts"] + ks[i]["dur"]):
            end = ks[i]["ts"] + ks[i]["dur"]
            own_times[-1][i] = max(0.0, end - max(ks[i]["ts"], prev_end))
            own[short_name(ks[i]["name"])] += own_times[-1][i]
            prev_end = max(prev_end, end)
        for k in ks:
            per_name[short_name(k["name"])].append(k["dur"])
    n = len(steps)
    table = sorted(({"kernel": name, "per_step": len(d) / n, "mean_us": statistics.mean(d), "per_step_us": sum(d) / n,
                     "own_per_step_us": own[name] / n} for name, d in per_name.items()),
                   key=lambda r: -r["own_per_step_us"])
    med = lambda key: statistics.median(s[key] for s in steps)  # noqa: E731
    report = {"steps": n, "span_us_median": med("span_us"), "busy_us_median": med("busy_us"),
              "kernel_sum_us_median": med("kernel_sum_us"), "kernels_per_step": med("kernels"), "by_kernel": table}
    if layers:
        report["by_layer_position"] = layer_positions(step_kernels, own_times, layers)
    return report


def print_report(report: dict) -> None:
    print(f"{report['model']} {report['weights']} kv {report['kv']} batch {report['batch']}: {report['steps']} steps, "
          f"span {report['span_us_median']:.1f} us, a kernel running {report['busy_us_median']:.1f} us, "
          f"kernel sum {report['kernel_sum_us_median']:.1f} us, {report['kernels_per_step']:.0f} kernels a step")
    print("  own us/step  duration us/step  launches x mean duration  kernel")
    for r in report["by_kernel"]:
        print(f"  {r['own_per_step_us']:11.1f}  {r['per_step_us']:16.1f}  {r['per_step']:8.1f} x {r['mean_us']:6.2f} us"
              f"  {r['kernel']}")
    if report.get("by_layer_position"):
        print("  a layer's kernels, mean over layers and steps: own us  duration us  started before the previous "
              "kernel's end, us")
        for r in report["by_layer_position"]:
            print(f"  {r['position']:2d} {r['own_us']:7.2f}  {r['mean_us']:7.2f}  {r['early_us']:6.2f}  {r['kernel']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="2b", choices=sorted(SHAPES))
    ap.add_argument("--weights", default="w4a16", choices=["fp16", "w4a16"])
    ap.add_argument("--kv", default="int8", choices=["fp16", "int8", "int4"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--skip", type=int, default=8, help="tokens every request has before the window")
    ap.add_argument("--steps", type=int, default=24, help="decode steps to record")
    ap.add_argument("--work", default="/tmp/decode-models")
    ap.add_argument("--out", help="JSON report")
    ap.add_argument("--from-json", help="a report this script wrote: analyse its kernels again and print it")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        layers = SHAPES[saved["model"]]["num_hidden_layers"]
        print_report({**saved, **analyse(saved["kernels"], layers)})
        return

    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from vlmserve import Engine, EngineConfig, GenerationConfig

    model = write_model(Path(args.work) / f"{args.model}-{args.weights}", SHAPES[args.model], args.weights == "w4a16")
    new = args.skip + args.steps + 8
    cfg = EngineConfig(device="cuda", kv_cache_dtype={"fp16": "auto"}.get(args.kv, args.kv), block_size=64,
                       num_kv_blocks=((PROMPT + new + 63) // 64 + 1) * args.batch, max_batch_size=args.batch,
                       max_num_batched_tokens=2048, max_model_len=PROMPT + new + 1)
    rng = np.random.default_rng(0)
    # CUPTI records the kernels of graph replays only where the profiler was set up before the graphs
    # were captured (a known limit of torch.profiler): an empty session first.
    with profile(activities=[ProfilerActivity.CUDA]):
        pass
    with Engine(model, cfg) as eng:
        vocab = eng.spec.vocab_size
        eng.generate(rng.integers(3, vocab, size=PROMPT).tolist(), GenerationConfig(max_new_tokens=new))  # graphs
        gen = GenerationConfig(max_new_tokens=new, ignore_eos=True)
        streams = [eng.add_request(rng.integers(3, vocab, size=PROMPT).tolist(), gen) for _ in range(args.batch)]
        its = [iter(s) for s in streams]
        for it in its:
            for _ in range(args.skip):
                next(it)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                next(its[0])
        for s in streams:
            s.wait(timeout=600)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    if not kernels:
        cats = sorted({str(e.get("cat")) for e in events})
        raise RuntimeError(f"no kernel recorded ({len(events)} trace events, categories {cats})")
    report = {"model": args.model, "weights": args.weights, "kv": args.kv, "batch": args.batch,
              "gpu": torch.cuda.get_device_name(), **analyse(kernels, SHAPES[args.model]["num_hidden_layers"]),
              "kernels": sorted(({"name": short_name(k["name"]), "ts": k["ts"], "dur": k["dur"]} for k in kernels),
                                key=lambda k: k["ts"])}
    print_report(report)
    if args.out:
        write_atomic(Path(args.out), json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
