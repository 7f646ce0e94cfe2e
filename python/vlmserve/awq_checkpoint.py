"""Writes a model directory in the AutoAWQ "gemm" format from a full-precision
one: the language model's q/k/v/o/gate/up/down weights become 4-bit tensors,
everything else (embeddings, lm_head, norms, vision tower, projector,
tokenizer, processor, chat template) is kept as it is.

The directory is built under a temporary name and renamed when complete, so
an interrupted run never leaves a half-written model that looks whole."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors.numpy import save_file

from vlmserve.checkpoint import Checkpoint
from vlmserve.errors import ModelLoadError
from vlmserve.model_spec import PROJECTIONS, load_spec

QuantizeFn = Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]

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


def write_awq_checkpoint(src: str | Path, dst: str | Path, group_size: int, quantize: QuantizeFn,
                         progress: Callable[[str], None] | None = None) -> Path:
    """quantize(key, W[out, in] float32) -> (qweight, qzeros, scales) for each linear weight."""
    src, dst = Path(src), Path(dst)
    checkpoint = Checkpoint(src)
    try:
        linear = set(quantizable_linear_keys(src, checkpoint))
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
        try:
            tensors: dict[str, np.ndarray] = {}
            for key in checkpoint.keys():
                arr = checkpoint.array(key)
                if key in linear:
                    w = _as_storable(arr, checkpoint.ref(key).dtype).astype(np.float32)
                    qweight, qzeros, scales = quantize(key, w)
                    base = key[: -len(".weight")]
                    tensors[base + ".qweight"] = qweight
                    tensors[base + ".qzeros"] = qzeros
                    tensors[base + ".scales"] = scales.astype(np.float16)
                    if progress:
                        progress(key)
                else:
                    tensors[key] = _as_storable(arr, checkpoint.ref(key).dtype).copy()
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
