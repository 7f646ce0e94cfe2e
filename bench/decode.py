#!/usr/bin/env python3
"""GPU decode throughput: the vlmserve engine (CUDA backend) on random-weight LLaMA-architecture
models, against transformers `generate` on the same checkpoint and GPU in the same run.

Models (random weights, written once as safetensors under --work):
  2b  hidden 2048, 24 layers, 16 heads, 8 KV heads, ffn 8192, vocab 92544
  7b  Llama-2-7B shape: hidden 4096, 32 layers, 32 heads, 32 KV heads, ffn 11008, vocab 32000
Weights: fp16, and w4a16 (AutoAWQ gemm tensors with random codes, group 128).
KV cache: fp16, int8, int4.

Method: `batch` requests, each a 512-token prompt of random ids, are queued together; each
generates --new-tokens tokens with EOS ignored. The engine prefills the prompts in chunks, so the
first requests decode beside the later ones' prefill; decode throughput is measured where every
request of the batch is decoding: from the moment the last request got its first token to the
moment the first request got its last, tokens that arrived in that window / its length (each
token's arrival timed as the stream delivers it). The prefill is reported separately.
One engine per (model, weights, KV type) runs every batch size in turn, after an untimed warm-up request.

HBM floor per decode step: every weight byte once (4-bit codes + fp16 scale/zero per group for
w4a16; the embedding table is not read, the lm_head is) plus every cached K/V byte of the batch
at the mean context (prompt + new/2), at 2.93 TB/s (ANCHORS.md). % of floor = floor time / step time.

transformers peer: AutoModelForCausalLM (fp16, sdpa) generate(do_sample=False, min_new_tokens=
max_new_tokens=new) on the same checkpoint; its decode time is generate's wall time minus one
prefill of the same batch, tokens = batch * (new - 1). Only fp16 weights: transformers has no
w4a16 kernel of its own in this image.

    python3 bench/decode.py --models 2b --batches 1,16,64 --out bench/results/decode_h100.json

Tensor parallelism (--tp 1,2): every (model, weights, KV) engine is built once per tp in the same
run; each first decodes --greedy-check tokens greedily from one fixed prompt (logprobs of the two
best tokens kept), so tp=2 can be checked token for token against tp=1. The floor then counts
tp GPUs' bandwidth (each reads its half of the weights and KV). --measure-bandwidth replaces
the H100 constant by this GPU's device-to-device copy rate, measured in the run.

    python3 bench/decode.py --models 2b,7b --weights fp16,w4a16 --kv int8 --tp 1,2 --batches 1,16,64 \
        --peer-batches 0 --measure-bandwidth --out bench/results/tensor_parallel.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from run_info import library_settings, settings_line, write_atomic

ROOT = Path(__file__).resolve().parent.parent
HBM_BYTES_PER_S = 2.93e12
SHAPES = {
    "2b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=92544),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, vocab_size=32000),
}
GROUP = 128
PROMPT = 512


def log(msg: str) -> None:
    print(f"[decode] {msg}", file=sys.stderr, flush=True)


def write_model(directory: Path, shape: dict, awq: bool) -> Path:
    """A LlamaForCausalLM checkpoint of random weights (fp16; or AutoAWQ gemm tensors)."""
    import torch
    from safetensors.torch import save_file

    if (directory / "config.json").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    h, f, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    nh, nkv = shape["num_attention_heads"], shape["num_key_value_heads"]
    hd = h // nh
    g = torch.Generator(device="cuda").manual_seed(0)

    def dense(n, k):
        return (torch.randn(n, k, generator=g, device="cuda", dtype=torch.float16) / k ** 0.5).cpu()

    tensors = {"model.embed_tokens.weight": dense(shape["vocab_size"], h) * 20,
               "lm_head.weight": dense(shape["vocab_size"], h), "model.norm.weight": torch.ones(h, dtype=torch.float16)}
    for i in range(L):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
        for name, (n, k) in {"self_attn.q_proj": (nh * hd, h), "self_attn.k_proj": (nkv * hd, h),
                             "self_attn.v_proj": (nkv * hd, h), "self_attn.o_proj": (h, nh * hd),
                             "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}.items():
            if awq:
                tensors[p + name + ".qweight"] = torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32,
                                                               generator=g, device="cuda").cpu()
                tensors[p + name + ".qzeros"] = torch.full((k // GROUP, n // 8), 0x88888888 - 2**32, dtype=torch.int32)
                tensors[p + name + ".scales"] = torch.full((k // GROUP, n), 2.0 / (15 * k ** 0.5), dtype=torch.float16)
            else:
                tensors[p + name + ".weight"] = dense(n, k)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0,
               max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="float16", hidden_act="silu",
               bos_token_id=1, eos_token_id=2, **shape)
    if awq:
        cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True,
                                      "version": "gemm"}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return directory


def weight_bytes(shape: dict, awq: bool) -> float:
    h, f, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    hd = h // shape["num_attention_heads"]
    per_layer = h * (shape["num_attention_heads"] * hd) * 2 + 2 * h * shape["num_key_value_heads"] * hd + 3 * h * f
    linear = L * per_layer * (0.5 + 4.0 / GROUP if awq else 2.0)  # codes + fp16 scale and zero per group
    return linear + shape["vocab_size"] * h * 2  # lm_head (fp16)


def kv_bytes(shape: dict, kv: str, batch: int, context: float) -> float:
    hd = shape["hidden_size"] // shape["num_attention_heads"]
    per_row = {"fp16": hd * 2, "int8": hd + 4, "int4": hd / 2 + 4}[kv]
    return 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * per_row * batch * context


def run_engine(model: Path, kv: str, batches: list[int], new: int, rng, tp: int = 1, greedy_check: int = 0):
    """Yields (batch, result) for each batch size, one engine for all of them; first (None, greedy run)
    when greedy_check > 0."""
    from vlmserve import Engine, EngineConfig, GenerationConfig

    blocks_per_seq = (PROMPT + new + 63) // 64 + 1
    cfg = EngineConfig(device="cuda", kv_cache_dtype={"fp16": "auto"}.get(kv, kv), block_size=64,
                       num_kv_blocks=blocks_per_seq * max(batches), max_batch_size=max(batches),
                       max_num_batched_tokens=2048, max_model_len=PROMPT + max(new, greedy_check) + 1, tp=tp)
    gen = GenerationConfig(max_new_tokens=new, ignore_eos=True)
    t = time.perf_counter()
    with Engine(model, cfg) as eng:
        load_s = time.perf_counter() - t
        vocab = eng.spec.vocab_size
        if greedy_check:
            # One fixed prompt for every engine of the run, so tp=1 and tp=2 decode the same thing.
            prompt = np.random.default_rng(1234).integers(3, vocab, size=PROMPT).tolist()
            out = eng.generate(prompt, GenerationConfig(max_new_tokens=greedy_check, ignore_eos=True, logprobs=2))
            best2 = [sorted(t.values(), reverse=True)[:2] for t in out.top_logprobs]
            gaps = [b[0] - b[1] for b in best2]
            yield None, {"tokens": out.token_ids, "top2_gap": gaps, "load_s": load_s}
        eng.generate(rng.integers(3, vocab, size=PROMPT).tolist(), GenerationConfig(max_new_tokens=4))  # warm-up
        for batch in batches:
            streams = [eng.add_request(rng.integers(3, vocab, size=PROMPT).tolist(), gen) for _ in range(batch)]
            with ThreadPoolExecutor(batch) as pool:
                arrivals = list(pool.map(token_arrivals, streams))
            out = [s.wait(timeout=600) for s in streams]
            r = decode_window(arrivals)
            r["prefill_s_median"] = statistics.median(o.prefill_s for o in out)
            yield batch, r


def token_arrivals(stream) -> list[float]:
    """perf_counter() at each token the stream delivers."""
    times = []
    for _ in stream:
        times.append(time.perf_counter())
    return times


def decode_window(arrivals: list[list[float]]) -> dict:
    """Throughput while every request decodes: from the last first token to the first last token."""
    start, end = max(t[0] for t in arrivals), min(t[-1] for t in arrivals)
    tokens = sum(sum(1 for x in t if start < x <= end) for t in arrivals)
    if end <= start or tokens == 0:
        raise RuntimeError("no window where every request decodes: raise --new-tokens")
    steps = len([x for x in arrivals[0] if start < x <= end])
    return {"decode_s": end - start, "window_tokens": tokens, "window_steps": steps, "tok_s": tokens / (end - start)}


def run_transformers(model: Path, batch: int, new: int, rng) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float16, attn_implementation="sdpa").cuda().eval()
    vocab = m.config.vocab_size

    def timed(n):
        ids = torch.tensor(rng.integers(3, vocab, size=(batch, PROMPT)), device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                       min_new_tokens=n, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    timed(new)  # warm-up
    total, prefill = timed(new), timed(1)
    del m
    torch.cuda.empty_cache()
    return {"decode_s": total - prefill, "tok_s": batch * (new - 1) / (total - prefill)}


WINDOW_TEXT = ("tok/s is measured while every request of the batch decodes: tokens that arrived between the last "
               "request's first token and the first request's last token, over that time (the prompts are "
               "prefilled in 2,048-token chunks, and the early requests' decode steps beside the later prefill "
               "are left out).")
TARGETS = [("2b", "w4a16", "fp16", 1, 1500), ("2b", "fp16", "fp16", 1, 650), ("7b", "w4a16", "fp16", 1, 550),
           ("2b", "w4a16", "int8", 64, 20000)]


def merge_runs(runs: list[dict]) -> dict:
    """One document's results from several runs on the same GPU (e.g. the 2B and the 7B matrix, one device call
    each): their rows together, each row's % of the floor from its own run's bandwidth; dates and commands
    listed in run order."""
    gpus = sorted({r["meta"]["gpu"] for r in runs})
    if len(gpus) > 1:
        raise SystemExit(f"--merge: runs on different GPUs ({', '.join(gpus)}) do not go into one document")
    meta = dict(runs[0]["meta"])
    if len(runs) > 1:
        meta["date"] = "; ".join(r["meta"]["date"] for r in runs)
        meta["command"] = " ; ".join(r["meta"]["command"] for r in runs)
        meta["hbm_bytes_per_s_runs"] = [r["meta"]["hbm_bytes_per_s"] for r in runs]
        builds = [r["meta"].get("cutlass_built") for r in runs]
        if len(set(builds)) > 1:
            meta.pop("cutlass_built", None)
            meta["cutlass_built_runs"] = builds
    return {"meta": meta, "rows": [x for r in runs for x in r["rows"]],
            "greedy": [x for r in runs for x in r.get("greedy", [])]}


def _bandwidth_words(m: dict) -> str:
    runs = m.get("hbm_bytes_per_s_runs")
    rates = " / ".join(f"{b / 1e12:.2f}" for b in runs) if runs else f"{m['hbm_bytes_per_s'] / 1e12:.2f}"
    how = ("measured in each run: device-to-device copy, bytes read + written" if runs else
           "measured in this run: device-to-device copy, bytes read + written")
    return f"{rates} TB/s ({how if m.get('bandwidth_measured') else 'ANCHORS.md'})"


def _build_words(m: dict) -> list[str]:
    """The document's line on whether the library had CUTLASS's mixed-input GEMM, which the engine takes for
    w4a16 layers at mid-size batches on Hopper (none for runs that did not record it)."""
    said = {True: "with", False: "without", None: "not recorded"}
    if "cutlass_built_runs" in m:
        return ["- Native library built with / without CUTLASS's headers, run by run: "
                + " / ".join(said[b] for b in m["cutlass_built_runs"])
                + " (with them the w4a16 GEMMs of mid-size batches run through CUTLASS's mixed-input kernel on Hopper)"]
    if "cutlass_built" not in m:
        return []
    if m["cutlass_built"]:
        return ["- Native library built with CUTLASS's headers: on Hopper the w4a16 GEMMs of mid-size batches (from 32 "
                "rows on the wide layers) run through CUTLASS's mixed-input kernel, as in a `make` build."]
    return ["- Native library built without CUTLASS's headers: no w4a16 GEMM runs through CUTLASS's mixed-input kernel, "
            "which a `make` build (the headers installed into the venv) takes on Hopper for mid-size batches, from 32 "
            "rows on the wide layers."]


def render(r: dict) -> str:
    """The results document (docs/benchmarks/decode.md) from the JSON."""
    m = r["meta"]
    rows = [x for x in r["rows"] if "error" not in x]
    peer = {(x["model"], x["batch"]): x for x in rows if x["engine"] == "transformers"}
    ours = {(x["model"], x["weights"], x["kv"], x["batch"]): x for x in rows if x["engine"] == "vlmserve"}
    out = ["# GPU decode throughput: the engine's CUDA backend against transformers", "",
           "Generated by `bench/decode.py --render` from the JSON named by --out (do not edit by hand).", "",
           f"- GPU: {m['gpu']}; torch {m['torch']}; date {m['date']}",
           f"- Command: `{m['command']}`",
           *settings_line(m.get("library_settings")),
           *_build_words(m),
           f"- {m['prompt']}-token prompts of random ids, {m['new_tokens']} new tokens each (EOS ignored); decode "
           + WINDOW_TEXT,
           "- HBM floor: every weight byte once per step (4-bit codes + fp16 scale/zero per group of 128 for w4a16; "
           f"fp16 lm_head) plus the batch's cached K/V at the mean context, at {_bandwidth_words(m)}.",
           "- Peer: transformers `generate` (fp16, sdpa) on the same checkpoint and GPU in the same run; decode "
           "time = generate's wall time − one prefill of the same batch. transformers has no w4a16 kernel in this "
           "image, so it appears only beside fp16 rows.", "",
           "| model | weights | KV cache | batch | vlmserve tok/s | % of HBM floor | transformers fp16 tok/s | "
           "× transformers |", "|---|---|---|---|---|---|---|---|"]
    for (model, weights, kv, batch), x in sorted(ours.items(), key=lambda kv_: (kv_[0][0], kv_[0][1] != "fp16",
                                                                              kv_[0][2], kv_[0][3])):
        p = peer.get((model, batch))
        peer_tok = "" if p is None else f"{p['tok_s']:,.0f}"
        ratio = "" if p is None else f"{x['tok_s'] / p['tok_s']:.2f}×"
        out.append(f"| {model} | {weights} | {kv} | {batch} | {x['tok_s']:,.0f} | {x['pct_floor']:.1f}% | "
                   f"{peer_tok} | {ratio} |")
    if m.get("notes"):
        out += ["", "## Notes on this run", ""] + [f"- {n}" for n in m["notes"]]
    out += ["", f"## Targets (set for the H100; this run: {m['gpu']})", ""]
    for model, weights, kv, batch, target in TARGETS:
        x = ours.get((model, weights, kv, batch))
        what = f"{model} {weights}{'' if kv == 'fp16' else ' + ' + kv + ' KV'} batch {batch} ≥ {target:,} tok/s"
        other = [y for (mo, w, k, b), y in sorted(ours.items()) if (mo, w, b) == (model, weights, batch) and k != kv]
        if x is None and other:  # measured with another KV cache type only: say which
            x = other[0]
            what += f" (measured with {x['kv']} KV)"
        if x is None:
            out.append(f"- {what}: **not measured** in this run")
        else:
            out.append(f"- {what}: {x['tok_s']:,.0f} tok/s — **{'met' if x['tok_s'] >= target else 'not met'}** "
                       f"({x['tok_s'] / target:.2f}× the target)")
    for e in (x for x in r["rows"] if "error" in x):
        out.append(f"- failed: {e['model']} {e['weights']} KV {e['kv']}: {e['error']}")
    return "\n".join(out) + "\n"


def greedy_agreement(base: dict, other: dict) -> tuple[int, float | None]:
    """Steps the two greedy runs agree on, and base's top-2 logprob gap where they part (None: never)."""
    n = 0
    while n < min(len(base["tokens"]), len(other["tokens"])) and base["tokens"][n] == other["tokens"][n]:
        n += 1
    return n, (None if n == len(base["tokens"]) else base["top2_gap"][n])


def render_tp(r: dict) -> str:
    """The tensor-parallel results document (docs/benchmarks/tensor_parallel.md) from the JSON."""
    m = r["meta"]
    rows = [x for x in r["rows"] if "error" not in x and x["engine"] == "vlmserve"]
    by = {(x["model"], x["weights"], x["kv"], x["tp"], x["batch"]): x for x in rows}
    bw = m["hbm_bytes_per_s"] / 1e12
    out = ["# Tensor parallelism: decode with tp=2 against tp=1 in the same run", "",
           "Generated by `bench/decode.py --render` from the JSON named in the command (do not edit by hand).", "",
           f"- GPUs: {m['gpus']} × {m['gpu']}; torch {m['torch']}; date {m['date']}",
           f"- Command: `{m['command']}`",
           *settings_line(m.get("library_settings")),
           *_build_words(m),
           f"- {m['prompt']}-token prompts of random ids, {m['new_tokens']} new tokens each (EOS ignored); decode "
           + WINDOW_TEXT,
           f"- HBM floor: weight bytes + the batch's cached K/V at the mean context, over tp × {bw:.2f} TB/s "
           f"({'measured in this run: device-to-device copy, bytes read + written' if m.get('bandwidth_measured') else 'the H100 figure of ANCHORS.md'}).",
           "- Random-weight models (bench/decode.py): 2B = hidden 2048, 24 layers, 16 heads, 8 KV heads, FFN 8192, "
           "vocab 92544; 7B = Llama-2-7B shape. w4a16 = AutoAWQ gemm tensors, group 128.", "",
           "## Throughput", "",
           "| model | weights | KV | batch | tp=1 tok/s | % floor | tp=2 tok/s | % floor | tp=2 / tp=1 |",
           "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(x["model"], x["weights"], x["kv"], x["batch"]) for x in rows})
    for model, weights, kv, batch in keys:
        one, two = by.get((model, weights, kv, 1, batch)), by.get((model, weights, kv, 2, batch))
        cell = lambda x: ("—", "—") if x is None else (f"{x['tok_s']:,.0f}", f"{x['pct_floor']:.1f}%")  # noqa: E731
        ratio = f"{two['tok_s'] / one['tok_s']:.2f}×" if one and two else "—"
        out.append(f"| {model} | {weights} | {kv} | {batch} | {' | '.join(cell(one))} | {' | '.join(cell(two))} | "
                   f"{ratio} |")
    greedy = {(g["model"], g["weights"], g["kv"], g["tp"]): g for g in r.get("greedy", [])}
    if greedy:
        out += ["", f"## Greedy tokens, tp=2 against tp=1 ({m['greedy_check']} steps from one fixed prompt)", "",
                "| model | weights | KV | identical steps | where they part: tp=1's top-2 logprob gap | load tp=1 s | "
                "load tp=2 s |", "|---|---|---|---|---|---|---|"]
        for (model, weights, kv, tp), g in sorted(greedy.items()):
            if tp != 2 or (model, weights, kv, 1) not in greedy:
                continue
            base = greedy[(model, weights, kv, 1)]
            n, gap = greedy_agreement(base, g)
            out.append(f"| {model} | {weights} | {kv} | {n}/{len(base['tokens'])} | "
                       f"{'never' if gap is None else f'{gap:.4f}'} | {base['load_s']:.0f} | {g['load_s']:.0f} |")
    out += ["", "## Target", ""]
    one, two = by.get(("7b", "w4a16", "int8", 1, 1)) or by.get(("7b", "w4a16", "fp16", 1, 1)), \
        by.get(("7b", "w4a16", "int8", 2, 1)) or by.get(("7b", "w4a16", "fp16", 2, 1))
    if one and two:
        s = two["tok_s"] / one["tok_s"]
        out.append(f"- 7B w4a16 batch 1, tp=2 ≥ 1.5× tp=1: {two['tok_s']:,.0f} vs {one['tok_s']:,.0f} tok/s = "
                   f"{s:.2f}× — **{'met' if s >= 1.5 else 'not met'}**")
    else:
        out.append("- 7B w4a16 batch 1, tp=2 ≥ 1.5× tp=1: **not measured** in this run")
    for e in (x for x in r["rows"] if "error" in x):
        out.append(f"- failed: {e['model']} {e['weights']} KV {e['kv']} tp {e.get('tp', 1)}: {e['error']}")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="2b")
    ap.add_argument("--weights", default="fp16,w4a16")
    ap.add_argument("--kv", default="fp16,int8,int4")
    ap.add_argument("--batches", default="1,16,64,128")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--peer-batches", default="1,16,64")
    ap.add_argument("--tp", default="1", help="tensor-parallel sizes, each its own engine in the same run")
    ap.add_argument("--greedy-check", type=int, default=0,
                    help="greedy tokens decoded from one fixed prompt per engine (compared across tp)")
    ap.add_argument("--measure-bandwidth", action="store_true",
                    help="floor from this GPU's measured copy bandwidth instead of the H100's 2.93 TB/s")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vlmserve-decode-models"))
    ap.add_argument("--out", type=Path, required=True, help="results JSON (written, or read with --render)")
    ap.add_argument("--render", type=Path, default=None, help="only write this markdown document from --out")
    ap.add_argument("--merge", type=Path, action="append", default=[],
                    help="with --render: another run's JSON (same GPU) whose rows go into the same document")
    a = ap.parse_args()
    if a.merge and not a.render:
        ap.error("--merge goes with --render")
    if a.render:
        r = merge_runs([json.loads(p.read_text()) for p in [a.out, *a.merge]])
        a.render.write_text(render_tp(r) if any(x.get("tp", 1) > 1 for x in r["rows"]) else render(r))
        return 0
    import torch
    from vlmserve.kernels import w4a16_cutlass_built

    rng = np.random.default_rng(0)
    if a.measure_bandwidth:
        from gemm import hbm_bandwidth  # ANCHORS.md's method: a 1 GiB device-to-device copy, median

        bandwidth = hbm_bandwidth()
    else:
        bandwidth = HBM_BYTES_PER_S
    tps = [int(t) for t in a.tp.split(",")]
    results = {"meta": {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                        "torch": torch.__version__,
                        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        "command": "python3 " + " ".join(sys.argv), "new_tokens": a.new_tokens, "prompt": PROMPT,
                        "hbm_bytes_per_s": bandwidth, "bandwidth_measured": a.measure_bandwidth,
                        "greedy_check": a.greedy_check, "library_settings": library_settings(),
                        "cutlass_built": w4a16_cutlass_built()},
               "rows": [], "greedy": []}

    def save():
        write_atomic(a.out, json.dumps(results, indent=2))

    for name in a.models.split(","):
        shape = SHAPES[name]
        for weights in a.weights.split(","):
            awq = weights == "w4a16"
            t = time.perf_counter()
            model = write_model(a.work / f"{name}-{weights}", shape, awq)
            log(f"{name} {weights}: checkpoint ready ({time.perf_counter() - t:.0f} s)")
            for kv in a.kv.split(","):
                for tp in tps:
                    try:
                        for batch, r in run_engine(model, kv, [int(b) for b in a.batches.split(",")], a.new_tokens,
                                                   rng, tp, a.greedy_check):
                            if batch is None:
                                r.update(model=name, weights=weights, kv=kv, tp=tp)
                                results["greedy"].append(r)
                                log(f"{name} {weights} kv {kv} tp {tp}: loaded in {r['load_s']:.0f} s; greedy "
                                    f"{r['tokens'][:8]}...")
                                continue
                            ctx = PROMPT + a.new_tokens / 2
                            floor_s = (weight_bytes(shape, awq) + kv_bytes(shape, kv, batch, ctx)) / (bandwidth * tp)
                            step_s = batch / r["tok_s"]
                            r.update(model=name, weights=weights, kv=kv, batch=batch, tp=tp, engine="vlmserve",
                                     floor_tok_s=batch / floor_s, pct_floor=100 * floor_s / step_s)
                            results["rows"].append(r)
                            log(f"{name} {weights} kv {kv} tp {tp} batch {batch}: {r['tok_s']:.0f} tok/s "
                                f"({r['pct_floor']:.0f}% of the HBM floor)")
                            save()
                    except Exception as e:  # noqa: BLE001 - record the failure and go on
                        log(f"{name} {weights} kv {kv} tp {tp}: FAILED {e}")
                        traceback.print_exc()  # where it failed: loading, a prefill or a decode step
                        results["rows"].append({"model": name, "weights": weights, "kv": kv, "tp": tp,
                                                "engine": "vlmserve", "error": str(e)})
                        save()
            if not awq:
                for batch in map(int, a.peer_batches.split(",")):
                    if not batch:
                        continue
                    r = run_transformers(model, batch, a.new_tokens, rng)
                    ctx = PROMPT + a.new_tokens / 2
                    floor_s = (weight_bytes(shape, False) + kv_bytes(shape, "fp16", batch, ctx)) / bandwidth
                    r.update(model=name, weights=weights, kv="fp16", batch=batch, engine="transformers",
                             pct_floor=100 * floor_s / (r["decode_s"] / (a.new_tokens - 1)))
                    results["rows"].append(r)
                    log(f"{name} transformers batch {batch}: {r['tok_s']:.0f} tok/s")
                    save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
