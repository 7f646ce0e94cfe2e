"""Writes a model directory in the AutoAWQ "gemm" format from a full-precision
one: the language model's q/k/v/o/gate/up/down weights become 4-bit tensors,
everything else (embeddings, lm_head, norms, vision tower, projector,
tokenizer, processor, chat template) is kept as it is.

The directory is built under a temporary name and renamed when complete, so
an interrupted run never leaves a half-written model that looks whole.
Tensors keep their dtype (BF16 stays BF16), so what is not quantized is
bit-identical to the source."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from safetensors.torch import save_file

from vlmserve.checkpoint import Checkpoint
from vlmserve.errors import ModelLoadError
from vlmserve.model_spec import PROJECTIONS, load_spec

QuantizeFn = Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
AwqTensors = tuple[np.ndarray, np.ndarray, np.ndarray]  # qweight, qzeros, scales

_LINEAR_RE = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.weight$")


def quantizable_linear_keys(directory: str | Path, checkpoint: Checkpoint) -> list[str]:
    """Checkpoint keys of the language model's linear weights, layer by layer."""
    spec = load_spec(directory, checkpoint)
    if spec.awq_group_size:
        raise ModelLoadError(f"{directory} is already AWQ-quantized")
    keys = []
    for i in range(spec.num_layers):
        for block, projs in PROJECTIONS.items():
            for proj in projs:
                keys.append(f"{spec.decoder_prefix}layers.{i}.{block}.{proj}.weight")
    return keys


def _as_storable(arr: np.ndarray, dtype: str) -> np.ndarray:
    """BF16 is carried as raw uint16 bits by Checkpoint; widen it for numpy's safetensors writer."""
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(arr)


def _to_torch(arr: np.ndarray, dtype: str) -> torch.Tensor:
    """A checkpoint array as a torch tensor of the same safetensors dtype (BF16 from its raw bits)."""
    if dtype == "BF16":
        return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True))


def _replacement(key: str, value: np.ndarray, ref) -> torch.Tensor:
    value = np.asarray(value, dtype=np.float32)
    if tuple(value.shape) != tuple(ref.shape):
        raise ModelLoadError(f"replacement for {key!r} has shape {value.shape}, the checkpoint's is {ref.shape}")
    t = torch.from_numpy(value.copy())
    return t.to({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[ref.dtype])


def write_awq_checkpoint(src: str | Path, dst: str | Path, group_size: int, quantize: QuantizeFn | None = None,
                         progress: Callable[[str], None] | None = None, *,
                         quantized: Mapping[str, AwqTensors] | None = None,
                         replace: Mapping[str, np.ndarray] | None = None) -> Path:
    """quantize(key, W[out, in] float32) -> (qweight, qzeros, scales) for each linear weight.

    quantized: precomputed (qweight, qzeros, scales) by weight key; those weights are not read.
    replace: new values (float32, stored in the tensor's own dtype) for other tensors, e.g.
    the norms that AWQ smoothing divided by its scales."""
    src, dst = Path(src), Path(dst)
    quantized = quantized or {}
    replace = replace or {}
    checkpoint = Checkpoint(src)
    try:
        linear = set(quantizable_linear_keys(src, checkpoint))
        unknown = [k for k in replace if k not in checkpoint or k in linear] + [k for k in quantized if k not in linear]
        if unknown:
            raise ModelLoadError(f"cannot replace {unknown[:5]}: not a tensor of {src} that may be replaced")
        if quantize is None and (missing := sorted(linear - set(quantized))):
            raise ModelLoadError(f"no quantized tensors given for {missing[:5]}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
        try:
            tensors: dict[str, torch.Tensor] = {}
            for key in checkpoint.keys():
                ref = checkpoint.ref(key)
                if key in linear:
                    if key in quantized:
                        qweight, qzeros, scales = quantized[key]
                    else:
                        w = _as_storable(checkpoint.array(key), ref.dtype).astype(np.float32)
                        qweight, qzeros, scales = quantize(key, w)
                    base = key[: -len(".weight")]
                    tensors[base + ".qweight"] = torch.from_numpy(np.ascontiguousarray(qweight, dtype=np.int32))
                    tensors[base + ".qzeros"] = torch.from_numpy(np.ascontiguousarray(qzeros, dtype=np.int32))
                    tensors[base + ".scales"] = torch.from_numpy(np.ascontiguousarray(scales, dtype=np.float16))
                    if progress:
                        progress(key)
                elif key in replace:
                    tensors[key] = _replacement(key, replace[key], ref)
                else:
                    tensors[key] = _to_torch(checkpoint.array(key), ref.dtype)
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            for f in src.iterdir():
                if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
                    shutil.copy2(f, tmp / f.name)
            cfg = json.loads((src / "config.json").read_text())
            cfg["quantization_config"] = {
                "quant_method": "awq", "bits": 4, "group_size": group_size,
                "zero_point": True, "version": "gemm", "modules_to_not_convert": _not_converted(cfg),
            }
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        checkpoint.close()
    return dst


def _not_converted(cfg: dict) -> list[str]:
    """Module names other AWQ loaders must leave unquantized (vision side of a VLM)."""
    names = []
    for key in ("vision_config", "vision_tower", "vision_model"):
        if key in cfg:
            names += ["vision_tower", "vision_model", "multi_modal_projector", "mlp1", "connector"]
            break
    return sorted(set(names))
