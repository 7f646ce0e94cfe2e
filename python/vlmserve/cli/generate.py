"""vlmserve generate [--model DIR] PROMPT: stream a completion to the terminal."""
from __future__ import annotations

import sys
import time

from vlmserve.cli.engine_args import add_engine_args, engine_config_from_args
from vlmserve.config import GenerationConfig


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text with the engine (default model: SmolLM2-135M-Instruct)")
    p.add_argument("prompt", help="the user message (or raw text with --raw)")
    p.add_argument("--model", default=None, help="HF or AWQ checkpoint directory (default: the built-in model)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    add_engine_args(p)
    p.set_defaults(func=run)


def run(a) -> int:
    from vlmserve.text_generation import TextGenerator

    model = a.model
    if model is None:
        from vlmserve.default_model import smollm2_checkpoint

        model = smollm2_checkpoint()
    gen = GenerationConfig(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                           top_p=a.top_p, min_p=a.min_p, repetition_penalty=a.repetition_penalty, seed=a.seed)
    with TextGenerator(model, engine_config_from_args(a), show_progress=sys.stderr.isatty()) as tg:
        start = time.perf_counter()
        for delta in tg.stream(a.prompt, gen, chat=not a.raw):
            sys.stdout.write(delta)
            sys.stdout.flush()
        out = tg.last_output
        sys.stdout.write("\n")
        elapsed = time.perf_counter() - start
        decode_rate = (len(out.token_ids) - 1) / out.decode_s if out.decode_s > 0 else float("nan")
        print(f"[{len(out.token_ids)} tokens, finish={out.finish_reason}, first token {1e3 * (out.queue_s + out.prefill_s):.0f} ms, "
              f"{decode_rate:.1f} tok/s decode, {elapsed:.2f} s total]", file=sys.stderr)
    return 0
