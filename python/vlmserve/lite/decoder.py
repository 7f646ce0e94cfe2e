"""The language model's decoder as transformers builds it, and the inputs of
its layers on the calibration windows.

Only the decoder is built (embeddings, layers, final norm, rotary embedding),
from the text config, with the class transformers itself uses for the
language model inside every VLM family we serve (AutoModel.from_config of
the text config); its weights are read from the checkpoint under the
decoder prefix. The vision tower and projector are never loaded, and
OpenGVLab's remote-code InternVL layout needs no remote code."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vlmserve.checkpoint import Checkpoint
from vlmserve.model_spec import ModelSpec


class _Stop(Exception):
    """Raised by the last catcher: nothing past the layers' inputs is computed."""


def text_config(spec: ModelSpec):
    from transformers import AutoConfig

    cfg = dict(spec.text_config)
    model_type = cfg.pop("model_type", "llama")
    for key in ("architectures", "auto_map", "quantization_config"):
        cfg.pop(key, None)
    return AutoConfig.for_model(model_type, **cfg)


def _tensor(checkpoint: Checkpoint, key: str, dtype: torch.dtype) -> torch.Tensor:
    arr = checkpoint.array(key)
    if checkpoint.ref(key).dtype == "BF16":
        t = torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(arr.copy())
    return t.to(dtype)


def load_decoder(spec: ModelSpec, checkpoint: Checkpoint, dtype: torch.dtype) -> nn.Module:
    """The decoder on the CPU in `dtype`, weights copied out of the checkpoint."""
    from accelerate import init_empty_weights
    from transformers import AutoModel

    cfg = text_config(spec)
    with init_empty_weights(include_buffers=False):
        model = AutoModel.from_config(cfg, attn_implementation="sdpa")
    pre = spec.decoder_prefix
    state = {key[len(pre):]: _tensor(checkpoint, key, dtype) for key in checkpoint.keys()
             if key.startswith(pre) and not key.startswith(pre + "lm_head")}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing:
        from vlmserve.errors import ModelLoadError

        raise ModelLoadError(f"the language model in {spec.directory} lacks tensors {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''} (under prefix {pre!r})")
    return model.eval()


class _Catcher(nn.Module):
    def __init__(self, layer: nn.Module, index: int, last: int, record: dict):
        super().__init__()
        self.index, self.last, self.record = index, last, record
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self.record["hidden"] = hidden_states
        if "kwargs" in self.record:
            self.record["kwargs"].append((args, kwargs))
        if self.index == self.last:
            raise _Stop
        return hidden_states


@torch.no_grad()
def _run_catchers(model: nn.Module, input_ids: torch.Tensor, want_kwargs: bool, upto: int) -> dict:
    layers = model.layers
    record: dict = {"kwargs": []} if want_kwargs else {}
    model.layers = nn.ModuleList(_Catcher(layers[i], i, upto, record) for i in range(len(layers)))
    try:
        model(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        model.layers = layers
    return record


def capture_layer_inputs(model: nn.Module, input_ids: np.ndarray, batch_size: int
                         ) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
    """(inputs of layer 0 [samples, seqlen, hidden] on the CPU, (args, kwargs) of each layer).

    The kwargs (mask, rotary cos/sin, positions) are captured on one window,
    batch dimension 1, and broadcast over any batch: every window has the
    same length and no padding."""
    ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
    n_layers = len(model.layers)
    per_layer = _run_catchers(model, ids[:1], True, n_layers - 1)["kwargs"]
    chunks = [_run_catchers(model, ids[b:b + batch_size], False, 0)["hidden"]
              for b in range(0, len(ids), batch_size)]
    return torch.cat(chunks), per_layer


def to_device(obj, device: torch.device, dtype: torch.dtype | None = None, _memo: dict | None = None):
    """Tensors inside nested tuples/lists/dicts moved to device (floating ones cast to dtype)."""
    memo = {} if _memo is None else _memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = obj.to(device, dtype) if dtype is not None and obj.is_floating_point() else obj.to(device)
        return memo[id(obj)]
    if isinstance(obj, tuple):
        return tuple(to_device(o, device, dtype, memo) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device, dtype, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device, dtype, memo) for k, v in obj.items()}
    return obj


def layer_output(out) -> torch.Tensor:
    """A decoder layer returns a tensor (transformers 5) or a tuple (older versions)."""
    return out[0] if isinstance(out, (tuple, list)) else out
