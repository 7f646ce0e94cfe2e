"""vlm.v1 LM requests -> what the engine takes: chat messages for the
template, GenerationConfig, embedding spans. All validation of request
content lives here, with messages that name the offending field."""
from __future__ import annotations

import numpy as np
import torch

from vlmserve.config import GenerationConfig
from vlmserve.engine import Embeddings
from vlmserve.errors import InvalidArgumentError, OutOfRangeError
from vlmserve.services import tensors

ROLES = {1: "system", 2: "user", 3: "assistant", 4: "tool"}
MAX_STOP_STRINGS = 16
MAX_STOP_TOKEN_IDS = 16
MAX_TOP_LOGPROBS = 20


def chat_messages(request, max_images: int) -> tuple[list[dict], list]:
    """(template messages, ImageInput protos in order). Text-only messages carry a
    plain string (every template accepts that); messages with images carry parts."""
    if not request.messages:
        raise InvalidArgumentError("messages must hold at least one message")
    messages, images = [], []
    for i, m in enumerate(request.messages):
        if m.role not in ROLES:
            raise InvalidArgumentError(f"messages[{i}].role has unknown value {m.role}: expected ROLE_SYSTEM, "
                                       "ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL")
        parts = []
        for j, part in enumerate(m.content):
            kind = part.WhichOneof("part")
            if kind == "text":
                parts.append({"type": "text", "text": part.text})
            elif kind == "image":
                if part.image.WhichOneof("source") is None:
                    raise InvalidArgumentError(f"messages[{i}].content[{j}].image has neither data nor url")
                images.append(part.image)
                parts.append({"type": "image"})
            else:
                raise InvalidArgumentError(f"messages[{i}].content[{j}] has neither text nor image")
        msg: dict = {"role": ROLES[m.role]}
        if any(p["type"] == "image" for p in parts):
            msg["content"] = parts
        else:
            msg["content"] = "".join(p["text"] for p in parts)
        if m.name:
            msg["name"] = m.name
        messages.append(msg)
    if len(images) > max_images:
        raise InvalidArgumentError(f"the request has {len(images)} images; at most {max_images} are accepted")
    return messages, images


def generation_config(p, prompt_len: int, max_model_len: int, eos_ids: list[int]) -> tuple[GenerationConfig, dict]:
    """SamplingParams -> (GenerationConfig, text options {stop, skip_special_tokens})."""
    room = max_model_len - prompt_len
    if room < 1:
        raise OutOfRangeError(f"the prompt has {prompt_len} tokens; max_model_len {max_model_len} leaves no room "
                              "to generate")
    if len(p.stop) > MAX_STOP_STRINGS:
        raise InvalidArgumentError(f"at most {MAX_STOP_STRINGS} stop strings are accepted, got {len(p.stop)}")
    if len(p.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidArgumentError(f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids are accepted")
    if p.top_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidArgumentError(f"top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {p.top_logprobs}")
    if p.HasField("max_tokens") and p.max_tokens < 1:
        raise InvalidArgumentError("max_tokens must be >= 1 when set")
    max_new = min(p.max_tokens, room) if p.HasField("max_tokens") else room
    gen = GenerationConfig(
        max_new_tokens=max_new, temperature=p.temperature, top_k=p.top_k,
        top_p=p.top_p if p.HasField("top_p") else 1.0, min_p=p.min_p,
        repetition_penalty=p.repetition_penalty if p.HasField("repetition_penalty") else 1.0,
        seed=p.seed if p.HasField("seed") else None, eos_token_ids=list(eos_ids),
        stop_token_ids=[[t] for t in p.stop_token_ids], ignore_eos=p.ignore_eos,
        logprobs=(p.top_logprobs if p.logprobs else None))
    text_opts = {"stop": [s for s in p.stop if s],
                 "skip_special_tokens": p.skip_special_tokens if p.HasField("skip_special_tokens") else True}
    return gen, text_opts


def embedding_spans(spans, hidden: int) -> list[Embeddings]:
    out = []
    for i, s in enumerate(spans):
        if len(s.shape) != 2 or s.shape[1] != hidden:
            raise InvalidArgumentError(f"embeddings[{i}].shape must be [rows, {hidden}], got {list(s.shape)}")
        t = tensors.from_bytes(s.data, s.dtype, list(s.shape), f"embeddings[{i}]")
        rows = (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # bf16 has no numpy dtype
        out.append(Embeddings(int(s.position), np.ascontiguousarray(rows)))
    return out
