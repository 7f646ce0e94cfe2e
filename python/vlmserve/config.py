"""Validated configuration dataclasses: how the engine runs (EngineConfig) and
how one request generates (GenerationConfig). Names follow LMDeploy where the
meaning matches."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from vlmserve import _native
from vlmserve.errors import InvalidArgumentError

KV_CACHE_DTYPES = {
    "auto": _native.DTYPE_AUTO,
    "fp32": _native.DTYPE_F32,
    "fp16": _native.DTYPE_F16,
    "bf16": _native.DTYPE_BF16,
    "int8": _native.DTYPE_I8,
    "int4": _native.DTYPE_I4,
}
# LMDeploy's quant_policy: 0 = unquantized KV, 8 = int8, 4 = int4.
QUANT_POLICY_TO_KV = {0: "auto", 8: "int8", 4: "int4"}
DEVICES = {"auto": _native.DEVICE_AUTO, "cpu": _native.DEVICE_CPU, "cuda": _native.DEVICE_CUDA}
MODEL_FORMATS = ("auto", "hf", "awq")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidArgumentError(message)


@dataclass
class EngineConfig:
    """How an engine runs a model.

    kv_cache_dtype and quant_policy are two spellings of one setting; give
    either. The KV cache takes num_kv_blocks blocks if set, otherwise
    cache_max_entry_count of the free memory (capped at what max_batch_size
    requests of max_model_len tokens could use). tp > 1 splits the model over
    tp ranks (CUDA devices 0..tp-1; on the CPU, threads), as LMDeploy's tp.
    prefill_hold_steps > 0 lets new requests, while others run, wait up to
    that many engine steps to enter together (sooner when their prompts fill
    a step's token budget or the batch): fewer, fuller prefill steps for
    more throughput under steady load, at a few steps more time to first
    token; 0 admits each at the next step."""

    model_format: str = "auto"
    kv_cache_dtype: str = "auto"
    quant_policy: int | None = None
    max_batch_size: int = 64
    cache_max_entry_count: float = 0.8
    num_kv_blocks: int = 0
    block_size: int = 64
    max_model_len: int | None = None
    max_num_batched_tokens: int = 2048
    device: str = "auto"
    threads: int = 0
    tp: int = 1
    prefill_hold_steps: int = 0

    def __post_init__(self) -> None:
        _require(self.model_format in MODEL_FORMATS,
                 f"model_format must be one of {MODEL_FORMATS}, got {self.model_format!r}")
        _require(self.kv_cache_dtype in KV_CACHE_DTYPES,
                 f"kv_cache_dtype must be one of {sorted(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.quant_policy is not None:
            _require(self.quant_policy in QUANT_POLICY_TO_KV,
                     f"quant_policy must be 0, 4 or 8, got {self.quant_policy!r}")
            implied = QUANT_POLICY_TO_KV[self.quant_policy]
            _require(self.kv_cache_dtype in ("auto", implied),
                     f"quant_policy={self.quant_policy} contradicts kv_cache_dtype={self.kv_cache_dtype!r}")
            self.kv_cache_dtype = implied
        _require(isinstance(self.max_batch_size, int) and self.max_batch_size >= 1,
                 f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        _require(0 < self.cache_max_entry_count <= 1,
                 f"cache_max_entry_count must be in (0, 1], got {self.cache_max_entry_count!r}")
        _require(isinstance(self.num_kv_blocks, int) and self.num_kv_blocks >= 0,
                 f"num_kv_blocks must be >= 0, got {self.num_kv_blocks!r}")
        _require(isinstance(self.block_size, int) and 1 <= self.block_size <= 1024
                 and self.block_size & (self.block_size - 1) == 0,
                 f"block_size must be a power of two in [1, 1024], got {self.block_size!r}")
        _require(self.max_model_len is None or (isinstance(self.max_model_len, int) and self.max_model_len >= 2),
                 f"max_model_len must be an integer >= 2, got {self.max_model_len!r}")
        _require(isinstance(self.max_num_batched_tokens, int) and self.max_num_batched_tokens >= 1,
                 f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens!r}")
        _require(self.device in DEVICES, f"device must be one of {sorted(DEVICES)}, got {self.device!r}")
        _require(isinstance(self.threads, int) and self.threads >= 0, f"threads must be >= 0, got {self.threads!r}")
        _require(isinstance(self.tp, int) and not isinstance(self.tp, bool) and 1 <= self.tp <= 8,
                 f"tp must be an integer in [1, 8], got {self.tp!r}")
        _require(isinstance(self.prefill_hold_steps, int) and not isinstance(self.prefill_hold_steps, bool)
                 and self.prefill_hold_steps >= 0,
                 f"prefill_hold_steps must be an integer >= 0, got {self.prefill_hold_steps!r}")


@dataclass
class GenerationConfig:
    """How one request generates. temperature 0 is greedy.

    stop_token_ids holds token-id sequences that end generation when the
    output ends with one of them; eos_token_ids None means the model's."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    eos_token_ids: list[int] | None = None
    stop_token_ids: list[list[int]] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: bool = False
    return_logits: bool = False

    def __post_init__(self) -> None:
        _require(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
                 f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        _require(_finite(self.temperature) and self.temperature >= 0,
                 f"temperature must be >= 0, got {self.temperature!r}")
        _require(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be >= 0, got {self.top_k!r}")
        _require(_finite(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        _require(_finite(self.min_p) and 0 <= self.min_p < 1, f"min_p must be in [0, 1), got {self.min_p!r}")
        _require(_finite(self.repetition_penalty) and self.repetition_penalty > 0,
                 f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        _require(self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**64),
                 f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if self.eos_token_ids is not None:
            _require(len(self.eos_token_ids) <= _native.MAX_EOS_IDS,
                     f"at most {_native.MAX_EOS_IDS} eos_token_ids are supported")
        _require(len(self.stop_token_ids) <= _native.MAX_STOP_SEQUENCES,
                 f"at most {_native.MAX_STOP_SEQUENCES} stop sequences are supported")
        for seq in self.stop_token_ids:
            _require(isinstance(seq, (list, tuple)) and 1 <= len(seq) <= _native.MAX_STOP_SEQUENCE_LEN,
                     f"each stop sequence must hold 1..{_native.MAX_STOP_SEQUENCE_LEN} token ids, got {seq!r}")
        _require(self.logprobs is None or (isinstance(self.logprobs, int)
                                           and 0 <= self.logprobs <= _native.MAX_TOP_LOGPROBS),
                 f"logprobs must be None or in [0, {_native.MAX_TOP_LOGPROBS}], got {self.logprobs!r}")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
