"""AWQ smoothing of one LLaMA-style decoder layer (Llama, Mistral, Qwen2).

Four groups of linears share an input; each group's input channels get
scales s, the linears' columns are multiplied by s and the op before them
divided by s, which leaves the layer's function unchanged and moves the
quantization difficulty from activation outliers into the weights:

  qkv      input_layernorm  -> q_proj, k_proj, v_proj   (inspected: self_attn)
  o        v_proj rows      -> o_proj                   (inspected: o_proj)
  gate_up  post_attn norm   -> gate_proj, up_proj       (inspected: mlp)
  down     up_proj rows     -> down_proj                (inspected: down_proj)

With grouped-query attention, o_proj input channel h*d + i reads v_proj row
(h // n_rep)*d + i, so the o group's scales are kept per v_proj row and
repeated over the n_rep query heads that share it (AutoAWQ skips this group
for GQA; tying the scales keeps it exact).

s = x_mag^a / w_mag^(1-a), normalised by sqrt(max(s) min(s)), with x_mag the
mean |x| of each input channel on the calibration data and w_mag AutoAWQ's
mean of |W| relative to its group's max."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Group:
    name: str
    prev: str               # module whose output feeds the group: a norm, or a linear whose rows get 1/s
    linears: tuple[str, ...]
    inspect: str            # the module whose output error judges a scale


GROUPS = (
    Group("qkv", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    Group("o", "self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    Group("gate_up", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    Group("down", "mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class HeadLayout:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def n_rep(self) -> int:
        return self.num_heads // self.num_kv_heads

    def reduce(self, group: str, v: torch.Tensor) -> torch.Tensor:
        """Per input channel of the group's linears -> per scale (o: per v_proj row)."""
        if group != "o" or self.n_rep == 1:
            return v
        return v.view(self.num_kv_heads, self.n_rep, self.head_dim).mean(dim=1).reshape(-1)

    def expand(self, group: str, s: torch.Tensor) -> torch.Tensor:
        """Per scale -> per input channel of the group's linears."""
        if group != "o" or self.n_rep == 1:
            return s
        return s.view(self.num_kv_heads, 1, self.head_dim).expand(-1, self.n_rep, -1).reshape(-1)


def weight_magnitude(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """AutoAWQ's w_mean: |W| over its group's max, averaged over all output rows of the group's linears."""
    w = torch.cat([x.float() for x in weights], dim=0)
    shape = w.shape
    w = w.abs().view(-1, group_size)
    w = w / (w.amax(dim=1, keepdim=True) + 1e-6)
    return w.view(shape).mean(dim=0)


def smoothing_scales(x_mag: torch.Tensor, w_mag: torch.Tensor, alpha: float) -> torch.Tensor:
    s = (x_mag.float().pow(alpha) / (w_mag.float().pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def get(layer: nn.Module, name: str) -> nn.Module:
    return layer.get_submodule(name)


@torch.no_grad()
def scaled_tensors(original: dict[str, torch.Tensor], scales: dict[str, torch.Tensor], heads: HeadLayout
                   ) -> dict[str, torch.Tensor]:
    """The layer's tensors that smoothing changes, in float32, from its original state dict:
    linears' columns times s, the op before them divided by s (a norm's weight, or the rows
    and bias of v_proj / up_proj)."""
    out = {f"{n}.weight": original[f"{n}.weight"].float() for n in LINEARS}
    for g in GROUPS:
        s = scales[g.name].float()
        s_in = heads.expand(g.name, s)
        for name in g.linears:
            out[f"{name}.weight"] = out[f"{name}.weight"] * s_in[None, :]
        if g.prev.endswith("_proj"):  # rows of v_proj / up_proj produce the scaled channels
            out[f"{g.prev}.weight"] = out[f"{g.prev}.weight"] / s[:, None]
            bias = original.get(f"{g.prev}.bias")
            if bias is not None:
                out[f"{g.prev}.bias"] = bias.float() / s
        else:  # RMSNorm: out = w * x_normed
            out[f"{g.prev}.weight"] = original[f"{g.prev}.weight"].float() / s
    return out


def inspect_forward(layer: nn.Module, group: Group, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    module = get(layer, group.inspect)
    if group.inspect == "self_attn":
        return module(hidden_states=x, **kwargs)[0]
    return module(x)


@torch.no_grad()
def search_group(layer: nn.Module, group: Group, x_mag: torch.Tensor, inputs: list[torch.Tensor], kwargs: dict,
                 heads: HeadLayout, group_size: int, n_grid: int, quantize) -> tuple[float, list[float]]:
    """The alpha in {0, 1/n_grid, ..., (n_grid-1)/n_grid} whose scales give the smallest
    output error of the inspected module, its linears fake-quantized; the layer is left unchanged.

    Returns (best alpha, error of every alpha)."""
    linears = [get(layer, n) for n in group.linears]
    originals = [lin.weight.detach().clone() for lin in linears]
    w_mag = heads.reduce(group.name, weight_magnitude(originals, group_size))
    x_mag = heads.reduce(group.name, x_mag)
    reference = [inspect_forward(layer, group, x, kwargs) for x in inputs]
    errors = []
    try:
        for i in range(n_grid):
            alpha = i / n_grid
            s_in = heads.expand(group.name, smoothing_scales(x_mag, w_mag, alpha))[None, :]
            for lin, w0 in zip(linears, originals):
                lin.weight.copy_((quantize(w0.float() * s_in) / s_in).to(w0.dtype))
            err = 0.0
            for x, ref in zip(inputs, reference):
                err += float((inspect_forward(layer, group, x, kwargs).float() - ref.float()).pow(2).sum())
            errors.append(err)
    finally:
        for lin, w0 in zip(linears, originals):
            lin.weight.copy_(w0)
    best = min(range(n_grid), key=lambda i: errors[i])
    return best / n_grid, errors
