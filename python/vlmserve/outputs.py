"""What the engine hands back: one TokenOutput per generated token while a
request runs, then one RequestOutput when it ends."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FINISH_REASONS = {1: "stop", 2: "length", 3: "cancelled", 4: "error"}


@dataclass
class TokenOutput:
    token_id: int
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_len: int = 0           # trailing token_ids that belong to the stop condition (EOS, stop sequence)
    error: str | None = None
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    prompt_logprobs: np.ndarray | None = None   # log p(prompt[i] | prompt[:i]) for i >= 1
    logits: np.ndarray | None = None           # [len(prompt) + len(token_ids) - 1, vocab]
    num_preemptions: int = 0
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def content_token_ids(self) -> list[int]:
        """token_ids without the trailing EOS / stop sequence."""
        return self.token_ids[: len(self.token_ids) - self.stop_len]


@dataclass
class EngineStats:
    running_requests: int
    waiting_requests: int
    total_blocks: int
    free_blocks: int
    block_size: int
    max_model_len: int
    steps: int
    preemptions: int
    kv_cache_bytes: int
    overlapped_steps: int  # launched while the step before still ran (0 with VLM_OVERLAP_STEPS=0)
    dense_prefill_weight_bytes: int  # 4-bit layers also kept dequantized (VLM_PREFILL_DENSE_WEIGHTS=1 on CUDA)
    cutlass_weight_bytes: int  # 4-bit layers' copies for the CUTLASS GEMM (VLM_W4A16_CUTLASS, default on Hopper)
    gemv_weight_bytes: int  # 4-bit layers' copies for the column-tile decode GEMM (VLM_W4A16_GEMV)

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self.free_blocks
