#!/usr/bin/env python3
"""AWQ accuracy on real weights: SmolLM2-135M-Instruct, WikiText-2 perplexity through our engine.

1. Quantizes the model with `vlmserve lite auto_awq` (group size 64: 128 does not divide its
   hidden size 576), calibration wikitext2 (wiki.valid.tokens), 128 windows of 512 tokens, seed 0:
   plain smoothing, --search-scale, and --search-scale --search-clip, each in its own process
   (wall time, and that process's peak RSS). A round-to-nearest checkpoint without smoothing is
   written too, for reference.
2. Evaluates with `vlmserve eval ppl` on the whole wiki.test.raw (window 512, stride 512, 16
   windows batched in one engine, CPU): the fp32 baseline with fp32 / int8 / int4 KV, each w4a16
   checkpoint, and w4a16 (--search-scale) with int8 / int4 KV.
3. Writes bench/results/awq_accuracy.json and docs/benchmarks/awq_accuracy.md (targets met or
   not, computed from the numbers). `--render` rewrites the document from the JSON alone; the GPU
   record of bench/awq_quantize_gpu.py is included when bench/results/awq_quantize_gpu.json exists.

The baseline is the checkpoint vlmserve builds from SmolLM2's Q4_1 GGUF (default_model.py):
those dequantized weights, in fp32. Run it alone on the machine: the timings are wall time.

    .venv/bin/python bench/awq_accuracy.py            # about 75 minutes on 2 cores
    .venv/bin/python bench/awq_accuracy.py --smoke    # minutes: few windows, few tokens, output in /tmp
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_info import cpu_model, git_revision, write_atomic

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from vlmserve.cli import main; sys.exit(main())"]
GROUP = 64
QUANTIZED = {  # name -> auto_awq flags
    "w4a16-plain": [],
    "w4a16-search": ["--search-scale"],
    "w4a16-search-clip": ["--search-scale", "--search-clip"],
}
# (row name, checkpoint, KV cache dtype, base row for the ratio, target ratio or None)
EVALS = [
    ("fp32", "fp32", "auto", None, None),
    ("fp32 + int8 KV", "fp32", "int8", "fp32", 1.005),
    ("fp32 + int4 KV", "fp32", "int4", "fp32", 1.05),
    ("w4a16 RTN (no smoothing, reference)", "w4a16-rtn", "auto", "fp32", None),
    ("w4a16 plain", "w4a16-plain", "auto", "fp32", 1.08),
    ("w4a16 --search-scale", "w4a16-search", "auto", "fp32", 1.08),
    ("w4a16 --search-scale --search-clip", "w4a16-search-clip", "auto", "fp32", 1.08),
    ("w4a16 --search-scale + int8 KV", "w4a16-search", "int8", "w4a16 --search-scale", 1.005),
    ("w4a16 --search-scale + int4 KV", "w4a16-search", "int4", "w4a16 --search-scale", 1.05),
]
QUANT_TIME_TARGET_S = 600


def log(msg: str) -> None:
    print(f"[awq_accuracy] {msg}", file=sys.stderr, flush=True)


def run_cli(args: list[str]) -> float:
    log("vlmserve " + " ".join(args))
    start = time.perf_counter()
    subprocess.run(CLI + args, check=True, cwd=ROOT)
    return time.perf_counter() - start


def quantize_all(src: Path, work: Path, s: dict) -> dict:
    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn

    out = {}
    write_awq_checkpoint(src, work / "w4a16-rtn", GROUP, lambda key, w: quantize_rtn(w, GROUP))
    for name, flags in QUANTIZED.items():
        summary = work / f"{name}.summary.json"
        wall = run_cli(["lite", "auto_awq", str(src), "--work-dir", str(work / name), "--calib-dataset", "wikitext2",
                        "--calib-samples", str(s["calib_samples"]), "--calib-seqlen", str(s["calib_seqlen"]),
                        "--w-group-size", str(GROUP), "--device", "cpu", "--summary-json", str(summary)] + flags)
        sm = json.loads(summary.read_text())
        out[name] = {"flags": flags, "wall_s": wall, "quantizer_s": sm["seconds_total"],
                     "peak_rss_bytes": sm["peak_rss_bytes"],
                     "load_average_1min_after": os.getloadavg()[0],
                     "mean_layer_error": sum(r["error"] for r in sm["layers"]) / len(sm["layers"]),
                     "layers_searched_better": sum(r["chosen"] == "search" for r in sm["layers"])
                     if sm["search_scale"] else None}
        log(f"{name}: {wall:.0f} s, peak RSS {sm['peak_rss_bytes'] / 2**30:.2f} GiB")
    return out


def evaluate_all(models: dict[str, Path], work: Path, s: dict) -> dict:
    rows = {}
    for row, model, kv, _, _ in EVALS:
        res = work / f"eval-{len(rows)}.json"
        args = ["eval", "ppl", str(models[model]), "--dataset", "wikitext2", "--window", "512", "--stride", "512",
                "--max-batch-size", "16", "--device", "cpu", "--kv-cache-dtype", kv, "--json", str(res)]
        if s["max_tokens"]:
            args += ["--max-tokens", str(s["max_tokens"])]
        run_cli(args)
        rows[row] = json.loads(res.read_text())
        log(f"{row}: perplexity {rows[row]['perplexity']:.4f} ({rows[row]['seconds']:.0f} s)")
    return rows


def verdicts(r: dict) -> list[dict]:
    ppl = {row: v["perplexity"] for row, v in r["evals"].items()}
    out = []
    for row, _, _, base, target in EVALS:
        if target is None:
            continue
        ratio = ppl[row] / ppl[base]
        out.append({"what": f"{row} <= {target} x {base}", "ratio": ratio, "met": ratio <= target})
    search, plain = ppl["w4a16 --search-scale"], ppl["w4a16 plain"]
    out.append({"what": "w4a16 --search-scale better than plain", "ratio": search / plain, "met": search < plain})
    for name, q in r["quantize"].items():
        out.append({"what": f"quantizing ({name}) under {QUANT_TIME_TARGET_S} s on this CPU",
                    "ratio": q["wall_s"] / QUANT_TIME_TARGET_S, "met": q["wall_s"] < QUANT_TIME_TARGET_S,
                    "value": f"{q['wall_s']:.0f} s"})
    return out


def render(r: dict) -> str:
    m, s = r["meta"], r["settings"]
    ppl = {row: v["perplexity"] for row, v in r["evals"].items()}
    first = next(iter(r["evals"].values()))
    lines = [
        "# AWQ accuracy: SmolLM2-135M-Instruct, WikiText-2 perplexity through the engine", "",
        "Generated by `bench/awq_accuracy.py` (do not edit by hand).", "",
        f"- Command: `{m['command']}`",
        f"- Date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} cores; load average at start {m['load_average']:.2f}",
        f"- torch {m['torch']}, transformers {m['transformers']}; vlmserve revision {m['git']}",
        *([f"- Note: {m['note']}"] if m.get("note") else []),
        "- Baseline (\"fp16\" in the issue): the checkpoint vlmserve builds from SmolLM2-135M-Instruct's Q4_1 GGUF "
        "(`default_model.py`), i.e. those dequantized weights, kept in fp32. Its perplexity is therefore already "
        "that of a 4-bit (g32) model; w4a16 below quantizes those weights a second time.",
        f"- Weights: AWQ 4-bit asymmetric, group size {GROUP} (128 does not divide SmolLM2's hidden size 576; "
        f"the engine takes 32, 64, 128). Calibration: wikitext2 validation split (wiki.valid.tokens, disjoint from "
        f"the test split), {s['calib_samples']} windows of {s['calib_seqlen']} tokens, seed 0; "
        f"searches on 8 windows (the default --search-samples).",
        f"- Evaluation: `vlmserve eval ppl` on {'the whole' if not s['max_tokens'] else 'the first ' + str(s['max_tokens']) + ' tokens of'} "
        f"wiki.test.raw ({first['tokens']} tokens, {first['tokens_scored']} scored), window {first['window']}, "
        f"stride {first['stride']}, 16 windows batched in one engine on the CPU: our kernels and our KV quantization.",
        "", "## Perplexity", "",
        "| configuration | weights | KV cache | perplexity | × fp32 | × its base | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, _, kv, base, target in EVALS:
        v = r["evals"][row]
        tgt = "" if target is None else (f"≤ {target}× {base}: " + ("**met**" if ppl[row] / ppl[base] <= target
                                                                    else "**not met**"))
        lines.append(f"| {row} | {v['weights']} | {kv if kv != 'auto' else 'fp32'} | {ppl[row]:.4f} | "
                     f"{ppl[row] / ppl['fp32']:.4f} | {'' if base is None else f'{ppl[row] / ppl[base]:.4f}'} | {tgt} |")
    for x in r.get("extra_evals", []):  # later single measurements, same evaluation settings
        lines.append(f"| {x['row']} | {x['weights']} | {x['kv']} | {x['perplexity']:.4f} | "
                     f"{x['perplexity'] / ppl['fp32']:.4f} | | {x['note']} |")
    lines += ["", "## Quantization time and memory (this CPU, one process each)", "",
              "| run | flags | wall s | peak RSS GiB | load average after | mean layer rel. error | "
              "layers where the search won |",
              "|---|---|---|---|---|---|---|"]
    for name, q in r["quantize"].items():
        won = "" if q["layers_searched_better"] is None else str(q["layers_searched_better"])
        lines.append(f"| {name} | `{' '.join(q['flags']) or '(none)'}` | {q['wall_s']:.0f} | "
                     f"{q['peak_rss_bytes'] / 2**30:.2f} | {q.get('load_average_1min_after', float('nan')):.2f} | "
                     f"{q['mean_layer_error']:.4f} | {won} |")
    lines += ["", "Layer rel. error: |y_q − y| / |y − x| of each decoder layer on the calibration tokens (the share of "
              "the layer's update that quantization changes). With --search-scale a layer keeps the searched scales "
              "only where they give a smaller error than plain smoothing on all calibration tokens.", "",
              "## Targets", ""]
    for v in r["verdicts"]:
        val = v.get("value", f"{v['ratio']:.4f}")
        lines.append(f"- {v['what']}: {val} — **{'met' if v['met'] else 'not met'}**")
    missed_w4 = [row for row, _, _, base, t in EVALS if t == 1.08 and ppl[row] / ppl[base] > t]
    if missed_w4:
        rtn = ppl["w4a16 RTN (no smoothing, reference)"] / ppl["fp32"]
        best = min((row for row, _, kv, _, t in EVALS if t == 1.08), key=lambda k: ppl[k])
        lines += ["", "### Why the w4a16 target is missed", "",
                  f"The best w4a16 configuration ({best}) is {ppl[best] / ppl['fp32']:.4f}× the baseline; "
                  f"round-to-nearest without smoothing is {rtn:.4f}×, so AWQ removes "
                  f"{(rtn - ppl[best] / ppl['fp32']) / (rtn - 1) * 100:.0f}% of the 4-bit loss but not enough for "
                  "1.08×. Group 64 is the finest group this model allows besides 32 (its hidden size 576 rules out "
                  "128). The baseline weights are themselves dequantized Q4_1 (group 32, float zero point), so "
                  "w4a16 rounds them a second time on a grid that does not line up with theirs. Smoothing and "
                  "clipping (AWQ) leave the rounding itself untouched."
                  + "".join(f" {x['row']}: {x['perplexity'] / ppl['fp32']:.4f}× (table)." for x in r.get("extra_evals", []))
                  + " Error-compensating rounding (GPTQ) is the next step to measure."]
    missed_kv = [row for row, _, kv, base, t in EVALS if kv != "auto" and t and ppl[row] / ppl[base] > t]
    if missed_kv:
        lines += ["", "### Why a KV-cache target is missed", "",
                  f"Missed: {', '.join(missed_kv)}. The engine quantizes the cache per token and KV head: one fp16 "
                  "(scale, zero) pair for each head's 64 values (`vlm_kv_quantize`), 16 levels for int4. "
                  "`bench/kv_quant_error.py` measures what that costs on SmolLM2's own K and V rows (first 512 "
                  "tokens of wiki.test.raw, every layer): int4 leaves a relative error of 13.1 % on K and 10.1 % "
                  "on V (int8: 0.77 % and 0.59 %), and the largest K channel is 17× the median channel's mean "
                  "magnitude (V: 10×), so a few channels set each row's range. Finer groups inside a head, or keys "
                  "quantized per channel (as KIVI does), would be the fix; that changes the engine's cache layout, "
                  "not the quantizer."]
    gpu = r.get("gpu")
    lines += ["", "## GPU: random-weight 2B LLaMA-architecture model", ""]
    if gpu:
        lines.append(f"`bench/awq_quantize_gpu.py` on {gpu['device']} ({gpu['date']}, torch {gpu['torch']}), "
                     f"{gpu['params'] / 1e9:.2f}B parameters, {gpu['calibration']}, group {gpu['group_size']}:")
        lines += ["", "| run | wall s (target < 300) | peak device memory GiB (target < 3 GB) | peak RSS GiB |",
                  "|---|---|---|---|"]
        for g in gpu["runs"]:
            lines.append(f"| {'--search-scale' if g['search_scale'] else 'plain'} | {g['wall_s']:.0f} "
                         f"({'met' if g['time_target_met'] else 'not met'}) | {g['peak_device_bytes'] / 2**30:.2f} "
                         f"({'met' if g['memory_target_met'] else 'not met'}) | {g['peak_rss_bytes'] / 2**30:.2f} |")
    else:
        lines.append("Not measured yet: on a GPU machine run `PYTHONPATH=python python3 bench/awq_quantize_gpu.py "
                     "--search-scale`, then `.venv/bin/python bench/awq_accuracy.py --render`.")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="8 windows of 128 tokens, 4096 evaluation tokens, to /tmp")
    ap.add_argument("--render", action="store_true", help="only rewrite the document from the JSON")
    ap.add_argument("--out-json", type=Path, default=None)
    ap.add_argument("--out-md", type=Path, default=None)
    a = ap.parse_args()
    smoke_dir = Path(tempfile.gettempdir()) / "awq_accuracy_smoke"
    out_json = a.out_json or (smoke_dir / "awq_accuracy.json" if a.smoke else ROOT / "bench/results/awq_accuracy.json")
    out_md = a.out_md or (smoke_dir / "awq_accuracy.md" if a.smoke else ROOT / "docs/benchmarks/awq_accuracy.md")
    gpu_json = ROOT / "bench/results/awq_quantize_gpu.json"
    if a.render:
        r = json.loads(out_json.read_text())
    else:
        from vlmserve.default_model import cache_dir, smollm2_checkpoint

        s = ({"calib_samples": 8, "calib_seqlen": 128, "max_tokens": 4096} if a.smoke else
             {"calib_samples": 128, "calib_seqlen": 512, "max_tokens": 0})
        src = smollm2_checkpoint()
        work = cache_dir() / "bench" / ("awq-smoke" if a.smoke else "awq-accuracy")
        work.mkdir(parents=True, exist_ok=True)
        meta = {"command": "python bench/awq_accuracy.py" + (" --smoke" if a.smoke else ""),
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "cpu": cpu_model(), "cores": os.cpu_count(), "load_average": os.getloadavg()[0],
                "torch": md.version("torch"), "transformers": md.version("transformers"), "git": git_revision()}
        r = {"meta": meta, "settings": s, "quantize": quantize_all(src, work, s)}
        models = {"fp32": src, **{n: work / n for n in ("w4a16-rtn", *QUANTIZED)}}
        r["evals"] = evaluate_all(models, work, s)
        r["verdicts"] = verdicts(r)
    r["gpu"] = json.loads(gpu_json.read_text()) if gpu_json.is_file() else None
    write_atomic(out_json, json.dumps(r, indent=2))
    text = render(r)
    write_atomic(out_md, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
