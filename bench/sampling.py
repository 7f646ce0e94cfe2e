#!/usr/bin/env python3
"""What drawing tokens costs the engine: decode throughput with greedy requests against sampled ones, on a model
whose layers are tiny and whose vocabulary is the 2B model's (92,544), so that the draws (one vocabulary-long
row of logits a request a step) are a visible part of each step.

A request the engine can serve greedily needs only the row's argmax; any other (temperature, top-k, top-p,
min-p, repetition penalty, logprobs) has its whole row of logits drawn from on the host (native/src/engine/
sampler.cpp), the rows of a step in parallel. For each batch size and each kind of request: `batch` requests of a
32-token prompt decode `--new-tokens` tokens each (EOS ignored), after one untimed warm-up run; tok/s = generated
tokens after the first / the median request's decode time. Run it against two builds of the library
(VLMSERVE_LIB=...) to compare them; the report names the library it ran.

    python3 bench/sampling.py --out bench/results/sampling_cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from run_info import git_revision, ints, library_settings, write_atomic  # noqa: E402

KINDS = {  # name: GenerationConfig arguments
    "greedy": {},
    "temp": dict(temperature=0.7),
    "top_p": dict(temperature=0.7, top_p=0.9),
    "top_k": dict(temperature=1.0, top_k=50),
    "top_p_penalty": dict(temperature=0.7, top_p=0.9, repetition_penalty=1.1),
    "greedy_logprobs": dict(logprobs=0),
}
PROMPT = [3 + (7 * i) % 1000 for i in range(32)]


LOGIT_STD = 4.0  # after the lm_head's rescaling: a next-token distribution a few nats wide, as a trained LM's
MAX_POSITIONS = 1024


def write_model(directory: Path, vocab: int) -> Path:
    """One tiny LLaMA layer with the given vocabulary, seeded random weights, the lm_head scaled so that the
    benchmark prompt's logits have a standard deviation of LOGIT_STD (written once)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (directory / "config.json").is_file():
        return directory
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) / p.shape[-1] ** 0.5 if p.ndim == 2 else 1.0 + 0.1 * torch.randn(p.shape))
        std = model(torch.tensor([PROMPT])).logits[0, -1].std().item()
        model.lm_head.weight.mul_(LOGIT_STD / std)
    model.save_pretrained(directory)
    return directory


def distribution(directory: Path, kind: dict) -> dict:
    """Entropy (nats) and top-p nucleus size of the prompt's next-token distribution under `kind`'s temperature:
    the regime the draws ran in."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT])).logits[0, -1].double()
    p = torch.softmax(logits / kind.get("temperature", 1.0), -1)
    cum = torch.cumsum(torch.sort(p, descending=True).values, 0)
    return {"entropy_nats": float(-(p * p.clamp_min(1e-300).log()).sum()),
            "nucleus_0.9_tokens": int((cum < 0.9).sum()) + 1}


def run(engine, kind: dict, batch: int, new_tokens: int, seed: int) -> float:
    """Out tok/s of `batch` requests decoding together."""
    from vlmserve import GenerationConfig

    streams = [engine.add_request(PROMPT, GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True,
                                                            seed=seed + b, **kind)) for b in range(batch)]
    outs = [s.wait() for s in streams]
    decode = statistics.median(o.decode_s for o in outs)
    return batch * (new_tokens - 1) / decode


def score_prompt(engine, tokens: int, vocab: int, repeats: int = 3) -> float:
    """Median seconds to score a `tokens`-long prompt (prompt_logprobs, one generated token): what perplexity
    evaluation asks of the engine, a vocabulary-long row for every prompt position."""
    from vlmserve import GenerationConfig

    prompt = [3 + (11 * i) % (vocab - 3) for i in range(tokens)]
    times = []
    for _ in range(repeats + 1):  # the first untimed
        t = time.perf_counter()
        engine.add_request(prompt, GenerationConfig(max_new_tokens=1, prompt_logprobs=True, ignore_eos=True)).wait()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=ints, default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--vocab", type=int, default=92544)
    ap.add_argument("--kinds", default=None, help=f"comma-separated subset of {','.join(KINDS)} (default: all)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="the engine's backend (on cuda greedy rows are argmaxed on the GPU, the rest copied back whole)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "vlmserve-sampling-bench"))
    ap.add_argument("--prompt-tokens", type=int, default=256,
                    help="also time scoring a prompt of this many tokens (prompt_logprobs; 0: skip)")
    ap.add_argument("--out", default=None, help="JSON report")
    a = ap.parse_args()
    names = a.kinds.split(",") if a.kinds else list(KINDS)
    unknown = [k for k in names if k not in KINDS]
    if unknown:
        ap.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    kinds = {k: KINDS[k] for k in names}
    if not 0 <= a.prompt_tokens < MAX_POSITIONS:
        ap.error(f"--prompt-tokens must be in [0, {MAX_POSITIONS}) (the model's context), got {a.prompt_tokens}")
    from vlmserve import Engine, EngineConfig, _native

    model = write_model(Path(a.work) / f"llama-1layer-v{a.vocab}", a.vocab)
    rows = []
    with Engine(model, EngineConfig(device=a.device, max_batch_size=max(a.batches), num_kv_blocks=4096,
                                    block_size=16)) as eng:
        for name, kind in kinds.items():
            for batch in a.batches:
                run(eng, kind, batch, 4, seed=1)  # warm-up: buffers sized, threads started
                tok_s = run(eng, kind, batch, a.new_tokens, seed=100)
                rows.append({"kind": name, "params": kind, "batch": batch, "out_tok_s": tok_s})
                print(f"{name:16s} {str(kind):62s} batch {batch:3d}: {tok_s:10.1f} tok/s", flush=True)
        scoring = None
        if a.prompt_tokens:
            secs = score_prompt(eng, a.prompt_tokens, a.vocab)
            scoring = {"prompt_tokens": a.prompt_tokens, "seconds": secs}
            print(f"scoring a {a.prompt_tokens}-token prompt (prompt_logprobs): {secs * 1e3:.1f} ms", flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "revision": git_revision(), "library": _native.lib()._name, "cpus": os.cpu_count(), "device": a.device,
              "library_settings": library_settings(),
              "vocab": a.vocab, "new_tokens": a.new_tokens, "command": " ".join(["python3 bench/sampling.py"] + sys.argv[1:]),
              "distribution_at_t0.7": distribution(model, KINDS["temp"]), "rows": rows, "prompt_scoring": scoring}
    print(f"next-token distribution at temperature 0.7: {report['distribution_at_t0.7']}")
    if a.out:
        write_atomic(Path(a.out), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
