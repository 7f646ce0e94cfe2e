"""vlmserve eval ppl MODEL: perplexity through the engine (our kernels, our KV cache quantization)."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from vlmserve.cli.engine_args import add_engine_args, engine_config_from_args
from vlmserve.errors import InvalidArgumentError


def register(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a model through the engine")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    p = ev_sub.add_parser("ppl", help="perplexity of a text (strided windows)",
                          description="Strided-window perplexity computed by the engine: windows of --window "
                                      "tokens every --stride tokens, each scoring the tokens the previous did not.")
    p.add_argument("model", help="HF or AWQ checkpoint directory (with its tokenizer)")
    p.add_argument("--dataset", default="wikitext2",
                   help="wikitext2 (shipped test split, wiki.test.raw) or a local .txt / .jsonl file")
    p.add_argument("--window", type=int, default=512, help="tokens per window")
    p.add_argument("--stride", type=int, default=512, help="tokens between window starts")
    p.add_argument("--max-tokens", type=int, default=0, help="evaluate only the first N tokens (0: all)")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    add_engine_args(p)
    p.set_defaults(func=run)


def run(a) -> int:
    from vlmserve.engine import Engine
    from vlmserve.lite.datasets import load_text, load_tokenizer, tokenize
    from vlmserve.model_spec import read_config
    from vlmserve.perplexity import engine_perplexity, windows

    if a.window < 2 or not 1 <= a.stride <= a.window:
        raise InvalidArgumentError(f"need --window >= 2 and 1 <= --stride <= --window, got {a.window}, {a.stride}")
    if a.max_tokens < 0:
        raise InvalidArgumentError("--max-tokens must be >= 0")
    read_config(a.model)  # a missing or broken model directory fails here, before the tokenizing
    source = load_text(a.dataset, "evaluation")
    tokenizer = load_tokenizer(a.model) if source.documents else None
    if source.documents and tokenizer is None:
        raise InvalidArgumentError(f"{a.model} has no tokenizer to tokenize {source.name}")
    tokens = tokenize(source, tokenizer, add_special_tokens=True)
    if a.max_tokens:
        tokens = tokens[: a.max_tokens]
    if len(tokens) < 2:
        raise InvalidArgumentError(f"dataset {source.name} has {len(tokens)} tokens: at least 2 are needed")
    cfg = engine_config_from_args(a)
    if cfg.max_model_len is None:
        cfg.max_model_len = a.window + 1  # the window, and the one token each request must generate
    if cfg.num_kv_blocks == 0:  # room for max_batch_size windows at once, one spare block each
        cfg.num_kv_blocks = min(cfg.max_batch_size, len(windows(len(tokens), a.window, a.stride))) * (
            math.ceil((a.window + 1) / cfg.block_size) + 1)
    print(f"{source.name}: {len(tokens)} tokens, window {a.window}, stride {a.stride}; "
          f"kv cache {cfg.kv_cache_dtype}", file=sys.stderr)
    start = time.perf_counter()
    with Engine(Path(a.model), cfg) as eng:
        result = engine_perplexity(eng, tokens, a.window, a.stride)
        weights = f"awq w4 g{eng.spec.awq_group_size}" if eng.spec.awq_group_size else "dense"
    seconds = time.perf_counter() - start
    print(f"perplexity {result.perplexity:.4f} ({result.tokens_scored} tokens scored in {result.windows} windows, "
          f"{seconds:.1f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "model": str(a.model), "weights": weights, "dataset": source.name, "kv_cache_dtype": cfg.kv_cache_dtype,
            "window": a.window, "stride": a.stride, "tokens": len(tokens), "perplexity": result.perplexity,
            "nll_sum": result.nll_sum, "tokens_scored": result.tokens_scored, "windows": result.windows,
            "seconds": seconds}, indent=2))
    return 0
