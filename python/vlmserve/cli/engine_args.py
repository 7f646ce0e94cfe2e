"""Engine flags shared by every command that runs a model (names as in LMDeploy/vLLM)."""
from __future__ import annotations

import argparse
import os

from vlmserve.config import KV_CACHE_DTYPES, EngineConfig


def add_engine_args(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--model-format", default=env("VLMSERVE_MODEL_FORMAT", "auto"), choices=["auto", "hf", "awq"])
    p.add_argument("--kv-cache-dtype", default=env("VLMSERVE_KV_CACHE_DTYPE", "auto"), choices=sorted(KV_CACHE_DTYPES))
    p.add_argument("--quant-policy", type=int, default=None, choices=[0, 4, 8],
                   help="LMDeploy spelling of the KV cache dtype: 8 = int8, 4 = int4")
    p.add_argument("--max-batch-size", type=int, default=int(env("VLMSERVE_MAX_BATCH_SIZE", 64)))
    p.add_argument("--max-model-len", type=int, default=int(env("VLMSERVE_MAX_MODEL_LEN", 0)) or None)
    p.add_argument("--cache-max-entry-count", type=float, default=float(env("VLMSERVE_CACHE_MAX_ENTRY_COUNT", 0.8)))
    p.add_argument("--num-kv-blocks", type=int, default=int(env("VLMSERVE_NUM_KV_BLOCKS", 0)))
    p.add_argument("--block-size", type=int, default=int(env("VLMSERVE_BLOCK_SIZE", 64)))
    p.add_argument("--max-num-batched-tokens", type=int, default=int(env("VLMSERVE_MAX_NUM_BATCHED_TOKENS", 2048)))
    p.add_argument("--prefill-hold-steps", type=int, default=int(env("VLMSERVE_PREFILL_HOLD_STEPS", 0)),
                   help="while requests run, new ones wait up to this many engine steps to enter together (sooner when "
                   "their prompts fill a step's token budget or the batch): fewer, fuller prefill steps; 0: each "
                   "at the next step")
    p.add_argument("--device", default=env("VLMSERVE_DEVICE", "auto"), choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=int(env("VLMSERVE_THREADS", 0)))
    p.add_argument("--tp", type=int, default=int(env("VLMSERVE_TP", 1)),
                   help="tensor parallelism: split the model over this many GPUs (CPU: threads)")


def engine_config_from_args(a: argparse.Namespace) -> EngineConfig:
    return EngineConfig(model_format=a.model_format, kv_cache_dtype=a.kv_cache_dtype, quant_policy=a.quant_policy,
                        max_batch_size=a.max_batch_size, max_model_len=a.max_model_len,
                        cache_max_entry_count=a.cache_max_entry_count, num_kv_blocks=a.num_kv_blocks,
                        block_size=a.block_size, max_num_batched_tokens=a.max_num_batched_tokens,
                        prefill_hold_steps=a.prefill_hold_steps, device=a.device, threads=a.threads, tp=a.tp)
