"""Asymmetric 4-bit group quantization in torch, on any device.

The same arithmetic as vlmserve.awq_format.quantize_rtn (AutoAWQ's formula,
fp16-rounded scales, codes computed with the rounded scales), so the codes
found here on the GPU are the codes that function would find, and
pack() turns them into the AutoAWQ "gemm" tensors with awq_format.pack_int4.

Clipping search (AWQ's auto_clip): the range of each group is shrunk towards
zero on a grid, and per output channel and group the shrink that minimises
the error of that group's share of the output on calibration inputs is kept."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlmserve.awq_format import pack_int4

QMAX = 15  # 4-bit codes 0..15


@dataclass
class GroupCodes:
    codes: torch.Tensor   # uint8 [out, in]
    zeros: torch.Tensor   # uint8 [out, in/g]
    scales: torch.Tensor  # float16 [out, in/g]

    def dequantize(self) -> torch.Tensor:
        """W [out, in] float32, exactly what an AWQ engine reconstructs: (q - z) * s."""
        out_f, in_f = self.codes.shape
        g = in_f // self.scales.shape[1]
        q = self.codes.float().view(out_f, -1, g)
        w = (q - self.zeros.float()[:, :, None]) * self.scales.float()[:, :, None]
        return w.view(out_f, in_f)

    def pack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(qweight int32 [in, out/8], qzeros int32 [in/g, out/8], scales fp16 [in/g, out])."""
        codes = self.codes.cpu().numpy()
        zeros = self.zeros.cpu().numpy()
        return (pack_int4(np.ascontiguousarray(codes.T)), pack_int4(np.ascontiguousarray(zeros.T)),
                np.ascontiguousarray(self.scales.cpu().numpy().T))


def quantize_groups(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None) -> GroupCodes:
    """W [out, in] -> 4-bit codes per group of `group_size` inputs.

    clip [out, in/g] (optional): the shrink factor of each group's range, the
    weights being clamped to [min * clip, max * clip] first."""
    w = w.float()
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"group size {group_size} does not divide in_features {in_f}")
    g = w.view(out_f, in_f // group_size, group_size)
    wmax, wmin = g.amax(dim=2), g.amin(dim=2)
    if clip is not None:
        wmax, wmin = wmax * clip, wmin * clip
        g = torch.maximum(torch.minimum(g, wmax[:, :, None]), wmin[:, :, None])
    scales = ((wmax - wmin).clamp(min=1e-5) / float(QMAX)).half()
    s = scales.float()
    zeros = torch.round(-wmin / s).clamp(0, QMAX)
    codes = (torch.round(g / s[:, :, None]) + zeros[:, :, None]).clamp(0, QMAX)
    return GroupCodes(codes.to(torch.uint8).view(out_f, in_f), zeros.to(torch.uint8), scales)


def fake_quantize(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None) -> torch.Tensor:
    """quantize then dequantize, in w's dtype."""
    return quantize_groups(w, group_size, clip).dequantize().to(w.dtype)


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, group_size: int, n_grid: int = 20, max_shrink: float = 0.5,
                max_tokens: int = 512, out_chunk: int = 256) -> torch.Tensor:
    """Best shrink factor [out, in/g] of each group's range for W [out, in] on inputs x [tokens, in].

    Shrinks 1, 1 - 1/n_grid, ... down to 1 - max_shrink are tried (1 = no
    clipping, so clipping never makes a group's output error larger)."""
    w = w.float()
    out_f, in_f = w.shape
    n_groups = in_f // group_size
    x = x.reshape(-1, in_f).float()
    if x.shape[0] > max_tokens:  # evenly spaced tokens, as AutoAWQ does
        x = x[:: x.shape[0] // max_tokens][:max_tokens]
    xg = x.view(-1, n_groups, group_size).permute(1, 2, 0)            # [G, g, T]
    best = torch.ones(out_f, n_groups, device=w.device)
    shrinks = [1.0 - i / n_grid for i in range(int(max_shrink * n_grid))]
    for o in range(0, out_f, out_chunk):
        wc = w[o:o + out_chunk]
        ref = torch.bmm(wc.view(-1, n_groups, group_size).transpose(0, 1), xg)  # [G, oc, T]
        min_err = torch.full((wc.shape[0], n_groups), float("inf"), device=w.device)
        for r in shrinks:
            clip = torch.full((wc.shape[0], n_groups), r, device=w.device)
            q = fake_quantize(wc, group_size, clip)
            out = torch.bmm(q.view(-1, n_groups, group_size).transpose(0, 1), xg)
            err = (out - ref).pow(2).mean(dim=2).transpose(0, 1)           # [oc, G]
            better = err < min_err
            min_err = torch.where(better, err, min_err)
            best[o:o + out_chunk] = torch.where(better, clip, best[o:o + out_chunk])
    return best
