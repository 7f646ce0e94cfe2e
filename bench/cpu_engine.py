#!/usr/bin/env python3
"""CPU benchmark: the vlmserve engine against Hugging Face transformers on SmolLM2-135M-Instruct.

Variants: engine-fp32, engine-fp16, engine-awq (4-bit round-to-nearest, AutoAWQ layout) and
hf-fp32 (transformers, sdpa attention). Each runs in its own subprocess (`--worker VARIANT`)
so torch's and libvlmcore's OpenMP pools never share a process; all use 2 threads.

Method (every number is the median of --repeats runs, after one untimed warm-up of each shape;
every run gets fresh WikiText token ids, so no run can reuse another's work):
  prefill  wall time to the first generated token for one 512-token prompt.
           engine: add_request(max_new_tokens=1) until the stream yields its first token.
           transformers: model.generate(max_new_tokens=1), i.e. what a user waits for
           (not a bare model(input_ids): that also computes logits for all 512 positions).
  decode   generated tokens after the first / time from first token to the last, for batch 1
           and 8 prompts of 32 tokens each, 128 new tokens, EOS ignored.
           engine: batch * (N - 1) / median over the batch of RequestOutput.decode_s (first
           token -> finish, timed inside the engine). The median, because back-to-back
           add_request calls often start the first request one step before the rest (its
           decode_s then includes the others' prefill); the rest decode side by side.
           transformers: generate(do_sample=False, max_new_tokens=N, min_new_tokens=N) with a
           logits processor that timestamps each step; decode time = generate's return minus the
           first timestamp (taken right after the prefill forward), tokens = batch * (N - 1).

Derived checkpoints are cached under cache_dir()/bench. SmolLM2-135M has hidden size 576,
which 128 does not divide, so AWQ uses the largest group size in (128, 64, 32) that divides
every linear layer's input (64 for this model); the group size used is printed and recorded.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_info import cpu_model, git_revision, write_atomic

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("engine-fp32", "engine-fp16", "engine-awq", "hf-fp32")
BASELINE = "hf-fp32"
THREADS = 2
BATCHES = (1, 8)


def log(msg: str) -> None:
    print(f"[cpu_engine] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ derived checkpoints
def awq_group_size(cfg: dict) -> int:
    ins = (cfg["hidden_size"], cfg["intermediate_size"])
    return next(g for g in (128, 64, 32) if all(n % g == 0 for n in ins))


def fp16_checkpoint(src: Path, dst: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    # Built under a temporary name and renamed when whole: an interrupted run leaves no half model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        tensors = {k: v.astype(np.float16) if v.dtype.kind == "f" else v
                   for k, v in load_file(src / "model.safetensors").items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for f in src.iterdir():
            if f.is_file() and f.suffix != ".safetensors":
                shutil.copy2(f, tmp / f.name)
        cfg = json.loads((src / "config.json").read_text())
        cfg["torch_dtype"] = cfg["dtype"] = "float16"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_for(variant: str, src: Path) -> tuple[Path, str]:
    """(model directory, short description) for a variant, building derived ones on first use."""
    from vlmserve.default_model import cache_dir

    if variant in ("engine-fp32", "hf-fp32"):
        return src, "fp32"
    bench = cache_dir() / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    if variant == "engine-fp16":
        dst = bench / f"{src.name}-fp16"
        if not (dst / "config.json").is_file():
            log(f"writing {dst}")
            fp16_checkpoint(src, dst)
        return dst, "fp16 weights"
    group = awq_group_size(json.loads((src / "config.json").read_text()))
    dst = bench / f"{src.name}-awq-w4-g{group}"
    if not (dst / "config.json").is_file():
        from vlmserve.awq_checkpoint import write_awq_checkpoint
        from vlmserve.awq_format import quantize_rtn

        log(f"writing {dst} (RTN w4 g{group})")
        write_awq_checkpoint(src, dst, group, quantize=lambda key, w: quantize_rtn(w, group))
    return dst, f"AWQ w4 g{group} (RTN)"


# ---------------------------------------------------------------------- workers
def engine_worker(job: dict, say) -> dict:
    from vlmserve import Engine, EngineConfig, GenerationConfig

    s = job["settings"]
    bs, ceil = 64, lambda n: -(-n // 64)  # noqa: E731
    # A fixed KV cache twice the largest need, so no request is ever preempted mid-measurement.
    blocks = 2 * max(ceil(s["prefill_len"] + 1), max(BATCHES) * ceil(s["short_len"] + s["new_tokens"]))
    engine = Engine(job["path"], EngineConfig(device="cpu", threads=THREADS, model_format="auto",
                                              max_batch_size=max(BATCHES), num_kv_blocks=blocks, block_size=bs))
    first_only = GenerationConfig(max_new_tokens=1, ignore_eos=True)
    gen = GenerationConfig(max_new_tokens=s["new_tokens"], ignore_eos=True)

    def prefill(ids):
        t0 = time.perf_counter()
        stream = engine.add_request(ids, first_only)
        next(iter(stream))
        wall = time.perf_counter() - t0
        stream.wait()
        return wall * 1e3

    def decode(prompts):
        outs = [st.wait() for st in [engine.add_request(p, gen) for p in prompts]]
        assert all(len(o.token_ids) == s["new_tokens"] and o.num_preemptions == 0 for o in outs), \
            "a request stopped early or was preempted"
        return len(prompts) * (s["new_tokens"] - 1) / statistics.median(o.decode_s for o in outs)

    try:
        return measure(job, say, prefill, decode)
    finally:
        engine.close()


def hf_worker(job: dict, say) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(job["path"], dtype=torch.float32, attn_implementation="sdpa").eval()
    s = job["settings"]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id

    class StepClock(LogitsProcessor):  # called once per step, right after that step's forward pass
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    def generate(prompts, n, clock=None):
        x = torch.tensor(prompts)  # equal-length prompts: no padding, so the mask is all ones
        return model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                              min_new_tokens=n, pad_token_id=pad,
                              logits_processor=LogitsProcessorList([clock] if clock else []))

    def prefill(ids):
        t0 = time.perf_counter()
        generate([ids], 1)
        return (time.perf_counter() - t0) * 1e3

    def decode(prompts):
        clock = StepClock()
        out = generate(prompts, s["new_tokens"], clock)
        t_end = time.perf_counter()
        assert out.shape[1] - len(prompts[0]) == s["new_tokens"], "transformers stopped early"
        return len(prompts) * (s["new_tokens"] - 1) / (t_end - clock.times[0])

    return measure(job, say, prefill, decode)


def measure(job: dict, say, prefill, decode) -> dict:
    """Runs the warm-ups and repeats shared by both kinds of worker; prompts[0] is the warm-up."""
    p = job["prompts"]
    prefill_runs = [prefill(ids) for ids in p["prefill"]]
    for i, ms in enumerate(prefill_runs[1:], 1):
        say(f"prefill {len(p['prefill'][0])} rep {i}/{len(prefill_runs) - 1}: {ms:.1f} ms")
    decode_runs = {}
    for b in BATCHES:
        runs = []
        for i, prompts in enumerate(p[f"decode_b{b}"]):
            tps = decode(prompts)
            if i:
                say(f"decode batch {b} rep {i}/{len(p[f'decode_b{b}']) - 1}: {tps:.1f} tok/s")
                runs.append(tps)
        decode_runs[str(b)] = runs
    return {"prefill_ms": statistics.median(prefill_runs[1:]), "prefill_runs_ms": prefill_runs[1:],
            "decode_tok_s": {b: statistics.median(r) for b, r in decode_runs.items()},
            "decode_runs_tok_s": decode_runs}


def worker_main(variant: str, job_file: str, result_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    run = hf_worker if variant.startswith("hf-") else engine_worker
    result = run(job, lambda msg: log(f"{variant}: {msg}"))
    Path(result_file).write_text(json.dumps(result))


# ------------------------------------------------------------------------ driver
def make_prompts(ckpt: Path, s: dict) -> dict:
    """Disjoint slices of WikiText-2 test tokens: 1 warm-up + `repeats` prompt sets per measurement."""
    from transformers import AutoTokenizer

    text = (ROOT / "python/vlmserve/data/wikitext-2/wiki.test.raw").read_text(encoding="utf-8")[:400_000]
    tokens = iter(AutoTokenizer.from_pretrained(ckpt)(text, add_special_tokens=False)["input_ids"])
    take = lambda n: [next(tokens) for _ in range(n)]  # noqa: E731
    runs = s["repeats"] + 1
    out = {"prefill": [take(s["prefill_len"]) for _ in range(runs)]}
    for b in BATCHES:
        out[f"decode_b{b}"] = [[take(s["short_len"]) for _ in range(b)] for _ in range(runs)]
    return out


def speedups(results: dict) -> dict:
    """Per variant: how many times faster than transformers fp32 (higher is better)."""
    base = results.get(BASELINE)
    if base is None:
        return {}
    return {v: {"prefill": base["prefill_ms"] / r["prefill_ms"],
                **{f"decode_b{b}": r["decode_tok_s"][b] / base["decode_tok_s"][b] for b in r["decode_tok_s"]}}
            for v, r in results.items()}


def targets(results: dict, ratios: dict) -> list[dict]:
    rows = []
    if "engine-awq" in ratios:
        rows.append({"target": "AWQ decode at batch 1 >= 1.5x transformers fp32",
                     "measured": ratios["engine-awq"]["decode_b1"], "met": ratios["engine-awq"]["decode_b1"] >= 1.5})
    for v in ("engine-awq", "engine-fp32", "engine-fp16"):
        if v in ratios:
            rows.append({"target": f"{v} prefill no slower than transformers fp32",
                         "measured": ratios[v]["prefill"], "met": ratios[v]["prefill"] >= 1.0})
    return rows


def table(results: dict, ratios: dict, s: dict) -> str:
    head = (f"| variant | weights | prefill {s['prefill_len']} ms | decode tok/s b1 | decode tok/s b8 "
            "| prefill × | b1 × | b8 × |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for v, r in results.items():
        x = ratios.get(v, {})
        fmt = lambda k: f"{x[k]:.2f}" if k in x else "n/a"  # noqa: E731
        lines.append(f"| {v} | {r['weights']} | {r['prefill_ms']:.1f} | {r['decode_tok_s']['1']:.1f} "
                     f"| {r['decode_tok_s']['8']:.1f} | {fmt('prefill')} | {fmt('decode_b1')} | {fmt('decode_b8')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: short prompts, 16 new tokens, 1 repeat")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--out-json", type=Path, help="default bench/results/cpu_engine.json")
    ap.add_argument("--out-md", type=Path, help="default docs/benchmarks/cpu_engine.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args.worker, args.job, args.result)

    # A smoke run must never overwrite the real results, so --quick has its own default paths.
    suffix = "-quick" if args.quick else ""
    args.out_json = args.out_json or ROOT / f"bench/results/cpu_engine{suffix}.json"
    args.out_md = args.out_md or ROOT / ("bench/results/cpu_engine-quick.md" if args.quick
                                         else "docs/benchmarks/cpu_engine.md")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    settings = ({"prefill_len": 128, "short_len": 32, "new_tokens": 16, "repeats": 1} if args.quick else
                {"prefill_len": 512, "short_len": 32, "new_tokens": 128, "repeats": 3})
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: 1-minute load average is {load:.2f}; other work will distort the timings")

    from vlmserve.default_model import smollm2_checkpoint

    src = smollm2_checkpoint()
    prompts = make_prompts(src, settings)
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false")
    results = {}
    with tempfile.TemporaryDirectory(prefix="cpu_engine-") as work:
        for v in variants:
            path, weights = checkpoint_for(v, src)
            job, out = Path(work) / f"{v}.job.json", Path(work) / f"{v}.result.json"
            job.write_text(json.dumps({"path": str(path), "settings": settings, "prompts": prompts}))
            log(f"{v}: starting worker ({path})")
            subprocess.run([sys.executable, __file__, "--worker", v, "--job", str(job), "--result", str(out)],
                           env=env, check=True)
            results[v] = {"weights": weights, "checkpoint": str(path), **json.loads(out.read_text())}

    cfg = json.loads((src / "config.json").read_text())
    group = awq_group_size(cfg)
    ratios = speedups(results)
    goals = targets(results, ratios)
    command = shlex.join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    meta = {"command": command, "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": THREADS, "load_avg_1min_at_start": load,
            "torch": md.version("torch"), "transformers": md.version("transformers"), "vlmserve_git": git_revision(),
            "model": src.name, "settings": settings, "quick": args.quick}
    write_atomic(args.out_json, json.dumps({"meta": meta, "results": results, "speedup_vs_hf_fp32": ratios,
                                            "targets": goals}, indent=2) + "\n")
    tab = table(results, ratios, settings)
    goal_lines = [f"- {g['target']}: {g['measured']:.2f}× — **{'met' if g['met'] else 'not met'}**" for g in goals]
    doc = f"""# CPU engine benchmark: vlmserve vs transformers ({src.name})

{"**Quick smoke run — not a benchmark result.**" if args.quick else ""}

- Command: `{command}`
- Date: {meta['date_utc']}
- CPU: {meta['cpu']}, {meta['cpu_count']} cores; {THREADS} threads per variant; load average at start {load:.2f}
- torch {meta['torch']}, transformers {meta['transformers']}; vlmserve revision {meta['vlmserve_git']}
- Settings: {settings['prefill_len']}-token prefill prompt; decode {settings['new_tokens']} new tokens after \
{settings['short_len']}-token prompts; median of {settings['repeats']} runs after a warm-up
- AWQ: 4-bit round-to-nearest, group size {group} (128 is used only when it divides hidden_size {cfg['hidden_size']} and intermediate_size {cfg['intermediate_size']})

Prefill is wall time to the first token (engine: first streamed token; transformers:
`generate(max_new_tokens=1)`). Decode tok/s counts tokens after the first over the time from the
first token to the last, summed over the batch. × columns are speedups over transformers fp32
(higher is better). See the docstring of `bench/cpu_engine.py` for the exact method.

{tab}

## Targets

{chr(10).join(goal_lines) if goal_lines else "- not evaluated (transformers fp32 or AWQ not in this run)"}
"""
    write_atomic(args.out_md, doc.replace("\n\n\n", "\n\n"))
    print(tab)
    print("\n".join(goal_lines))
    log(f"wrote {args.out_json} and {args.out_md}")


if __name__ == "__main__":
    main()
