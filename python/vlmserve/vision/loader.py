"""Loads only the vision tower and projector of a VLM checkpoint.

The whole transformers model is built with its parameters on the meta device
(no memory), so its own get_image_features runs unchanged; then only the
tensors that transformers' key mapping sends into the encoder modules are read
from the safetensors files (memory-mapped: the language model's bytes are never
touched), and every other child is dropped. Renaming through transformers'
conversion mapping is what lets legacy layouts (llava-hf's
"vision_tower.vision_model.*", top-level "multi_modal_projector.*") load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlmserve.checkpoint import Checkpoint
from vlmserve.errors import ModelLoadError
from vlmserve.vision.families import Family

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but torch sees no CUDA device")
    return torch.device(device)


def replica_devices(device: torch.device, replicas: int) -> list[torch.device]:
    """One device per encoder replica: cuda:K..K+replicas-1 from the resolved device cuda:K (cuda: K=0), or the
    CPU for every replica. Checked before any weights are read, so a missing GPU fails the load at once rather
    than after the first replicas were built."""
    if device.type != "cuda":
        return [device] * replicas
    first = device.index or 0
    visible = torch.cuda.device_count()
    last = first + replicas - 1
    if last >= visible:
        where = f"cuda:{first}" if replicas == 1 else f"cuda:{first}..cuda:{last}"
        raise ModelLoadError(f"{replicas} vision encoder replica(s) need {where}, but torch sees {visible} GPU(s); "
                             f"ask for fewer replicas (--tp) or make more GPUs visible")
    return [torch.device("cuda", first + i) for i in range(replicas)]


def resolve_dtype(dtype: str, config, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _TORCH_DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32  # half precision on the CPU is slow and loses accuracy
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    saved = _TORCH_DTYPES.get(str(saved).replace("torch.", ""), None) if saved is not None else None
    return saved or torch.float32


def load_encoder(directory: Path, config, family: Family, dtype: torch.dtype, device: torch.device):
    """Returns the family's inner model (e.g. LlavaModel) holding only its encoder modules."""
    import transformers
    from accelerate import init_empty_weights

    cls = getattr(transformers, family.model_class)
    # Buffers stay real: non-persistent ones (position ids) are computed in __init__.
    with init_empty_weights(include_buffers=False):
        full = cls(config)
    inner = full.model
    wanted = {name: getattr(inner, name) for name in family.encoder_modules}

    # What each module expects; anything else the checkpoint holds for it (e.g. the position_ids
    # buffer old CLIP checkpoints saved) is ignored, as from_pretrained ignores it.
    expected = {name: set(module.state_dict()) for name, module in wanted.items()}
    checkpoint = Checkpoint(directory)
    try:
        rename = _key_renamer(full)
        state: dict[str, dict[str, torch.Tensor]] = {name: {} for name in wanted}
        for key in checkpoint.keys():
            target, converter = rename(key)
            for name in wanted:
                prefix = f"{full.base_model_prefix}.{name}."
                if target.startswith(prefix) and target[len(prefix):] in expected[name]:
                    if converter is not None:
                        raise ModelLoadError(f"{directory}: tensor {key!r} needs a weight conversion ({converter}) "
                                             f"that the vision loader does not apply")
                    state[name][target[len(prefix):]] = _tensor(checkpoint, key)
    finally:
        checkpoint.close()

    for name, module in wanted.items():
        if not state[name]:
            raise ModelLoadError(f"{directory}: no weights for {family.model_class}'s {name} in the checkpoint")
        try:
            module.load_state_dict(state[name], strict=True, assign=True)
        except RuntimeError as e:
            raise ModelLoadError(f"{directory}: the {name} weights do not match {family.model_class}: {e}") from None
    for name, _ in list(inner.named_children()):
        if name not in wanted:
            delattr(inner, name)
    leftover = [n for n, p in inner.named_parameters() if p.is_meta]
    if leftover:
        raise ModelLoadError(f"{directory}: encoder parameters missing from the checkpoint: {leftover[:8]}")
    return inner.to(device=device, dtype=dtype).eval()


def _tensor(checkpoint: Checkpoint, key: str) -> torch.Tensor:
    array = checkpoint.array(key)
    t = torch.from_numpy(np.array(array))  # copy out of the read-only map
    return t.view(torch.bfloat16) if checkpoint.ref(key).dtype == "BF16" else t


def _key_renamer(model):
    """checkpoint key -> (model key, converter pattern or None), as from_pretrained renames it. transformers' mapping
    API is internal; if it moves, keys are taken as they are (the current layout)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        prefix = model.base_model_prefix + "."
        return lambda key: (key if key.startswith(prefix) else prefix + key, None)

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()

    def rename(key: str) -> tuple[str, str | None]:
        return rename_source_key(key, renamings, converters, model.base_model_prefix, meta)

    return rename
