"""AWQ for one decoder layer, on the device.

1. One pass over the calibration inputs with the original weights: the layer's
   outputs (the reference), each group's mean |x| per input channel, and the
   group inputs of the first `search_samples` windows (for the searches).
2. Scales: plain smoothing (alpha 0.5); with search, alpha per group from a
   grid, judged by the inspected module's output error.
3. Optional clipping search on the smoothed weights.
4. Each candidate (plain; searched) is quantized and run on every calibration
   input; the error of the layer's output decides between them, so searching
   never makes a layer worse than plain smoothing. The winner's outputs are
   the next layer's inputs.

Device memory: the layer twice (working copy and original state), the
activations of one batch, and the group inputs of the search windows."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vlmserve.lite.decoder import layer_output
from vlmserve.lite.quantizer import GroupCodes, fake_quantize, quantize_groups, search_clip
from vlmserve.lite.smoothing import GROUPS, LINEARS, HeadLayout, get, scaled_tensors, search_group, smoothing_scales, \
    weight_magnitude

PLAIN_ALPHA = 0.5
NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")  # q·k goes through softmax: AutoAWQ does not clip them
CLIP_TOKENS = 512  # evenly spaced tokens of the search windows judge the clipping (as in AutoAWQ)


@dataclass
class LayerSettings:
    group_size: int
    batch_size: int
    search_scale: bool
    search_clip: bool
    search_samples: int
    n_grid: int
    device: torch.device
    dtype: torch.dtype


@dataclass
class LayerResult:
    index: int
    alphas: dict[str, float]
    scales: dict[str, np.ndarray]          # per group (o: per v_proj row), float32
    error: float                           # relative error of the layer's update, chosen candidate
    plain_error: float | None = None       # the same with plain smoothing (when searched)
    chosen: str = "plain"
    seconds: float = 0.0
    quantized: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    replaced: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # norms, v_proj bias


@dataclass
class _Candidate:
    name: str
    scales: dict[str, torch.Tensor]
    alphas: dict[str, float]
    codes: dict[str, GroupCodes] = field(default_factory=dict)
    others: dict[str, torch.Tensor] = field(default_factory=dict)
    sq_error: float = math.inf
    outputs: torch.Tensor | None = None


class LayerQuantizer:
    def __init__(self, settings: LayerSettings, heads: HeadLayout):
        self.s = settings
        self.heads = heads

    def _batches(self, n: int):
        return [(b, min(b + self.s.batch_size, n)) for b in range(0, n, self.s.batch_size)]

    @torch.no_grad()
    def run(self, layer: nn.Module, index: int, inputs: torch.Tensor, call: tuple[tuple, dict]
            ) -> tuple[LayerResult, torch.Tensor]:
        """inputs [samples, seqlen, hidden] on the host -> (result, the quantized layer's outputs on the host)."""
        start = time.perf_counter()
        s = self.s
        args, kwargs = call
        layer.to(s.device, s.dtype)
        original = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        reference, energy, x_mag, feats = self._observe(layer, inputs, args, kwargs)

        w_mag = {g.name: weight_magnitude([original[f"{n}.weight"] for n in g.linears], s.group_size)
                 for g in GROUPS}

        def scales_for(alphas):
            return {g.name: smoothing_scales(self.heads.reduce(g.name, x_mag[g.name]),
                                             self.heads.reduce(g.name, w_mag[g.name]), alphas[g.name])
                    for g in GROUPS}
        plain_alphas = {g.name: PLAIN_ALPHA for g in GROUPS}
        candidates = [_Candidate("plain", scales_for(plain_alphas), plain_alphas)]
        if s.search_scale:
            quant = lambda w: fake_quantize(w, s.group_size)  # noqa: E731
            alphas = {g.name: search_group(layer, g, x_mag[g.name], feats[g.name], kwargs, self.heads,
                                           s.group_size, s.n_grid, quant)[0] for g in GROUPS}
            candidates.append(_Candidate("search", scales_for(alphas), alphas))

        for c in candidates:
            self._quantize(c, original, feats)
            self._evaluate(layer, c, inputs, reference, args, kwargs)
        best = min(candidates, key=lambda c: (c.sq_error, c.name != "search"))
        rel = lambda e: math.sqrt(e / energy) if energy > 0 else 0.0  # noqa: E731
        plain = candidates[0]
        result = LayerResult(
            index=index, alphas=best.alphas,
            scales={k: v.float().cpu().numpy() for k, v in best.scales.items()},
            error=rel(best.sq_error), plain_error=rel(plain.sq_error) if s.search_scale else None,
            chosen=best.name,
            quantized={name: codes.pack() for name, codes in best.codes.items()},
            replaced={k: v.float().cpu().numpy() for k, v in best.others.items()})
        result.seconds = time.perf_counter() - start
        return result, best.outputs

    def _observe(self, layer, inputs, args, kwargs):
        """Reference outputs, the energy of the layer's update (sum of (y - x)^2), mean |x| per
        group input channel, group inputs of the search windows."""
        s = self.s
        sums = {g.name: None for g in GROUPS}
        counts = {g.name: 0 for g in GROUPS}
        feats: dict[str, list[torch.Tensor]] = {g.name: [] for g in GROUPS}
        keep = [0]  # rows of the current batch that belong to the search windows

        def hook(name):
            def fn(_module, inp):
                x = inp[0]
                a = x.abs().reshape(-1, x.shape[-1]).sum(dim=0, dtype=torch.float32)
                sums[name] = a if sums[name] is None else sums[name] + a
                counts[name] += x.numel() // x.shape[-1]
                if keep[0] > 0 and (s.search_scale or s.search_clip):
                    feats[name].append(x[: keep[0]].detach().clone())
            return fn

        handles = [get(layer, g.linears[0]).register_forward_pre_hook(hook(g.name)) for g in GROUPS]
        reference = torch.empty_like(inputs)
        energy = 0.0
        try:
            for b, e in self._batches(len(inputs)):
                keep[0] = max(0, min(e, s.search_samples) - b)
                x = inputs[b:e].to(s.device, s.dtype)
                y = layer_output(layer(x, *args, **kwargs))
                energy += float((y.float() - x.float()).pow(2).sum())
                reference[b:e] = y.to(reference.device, reference.dtype)
        finally:
            for h in handles:
                h.remove()
        x_mag = {k: sums[k] / counts[k] for k in sums}
        return reference, energy, x_mag, feats

    def _quantize(self, c: _Candidate, original: dict, feats: dict) -> None:
        s = self.s
        scaled = scaled_tensors(original, c.scales, self.heads)
        for g in GROUPS:
            s_in = self.heads.expand(g.name, c.scales[g.name].float())
            for name in g.linears:
                w = scaled.pop(f"{name}.weight")
                clip = None
                if s.search_clip and name not in NO_CLIP and feats[g.name]:
                    x = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats[g.name]])
                    x = x[:: max(1, len(x) // CLIP_TOKENS)][:CLIP_TOKENS].float() / s_in
                    clip = search_clip(w, x, s.group_size, s.n_grid, max_tokens=CLIP_TOKENS)
                c.codes[name] = quantize_groups(w, s.group_size, clip)
        c.others = scaled  # norms and biases that smoothing changed

    def _evaluate(self, layer, c: _Candidate, inputs, reference, args, kwargs) -> None:
        s = self.s
        for name in LINEARS:
            get(layer, name).weight.copy_(c.codes[name].dequantize().to(s.dtype))
        for key, value in c.others.items():
            layer.get_parameter(key).copy_(value.to(s.dtype))
        outputs = torch.empty_like(inputs)
        err = 0.0
        for b, e in self._batches(len(inputs)):
            y = layer_output(layer(inputs[b:e].to(s.device, s.dtype), *args, **kwargs))
            err += float((y.float() - reference[b:e].to(y.device).float()).pow(2).sum())
            outputs[b:e] = y.to(outputs.device, outputs.dtype)
        c.sq_error, c.outputs = err, outputs
