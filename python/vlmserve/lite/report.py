"""What a quantization run did: time, peak memory, per-layer error."""
from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass, field

import torch

from vlmserve.lite.layer import LayerResult


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_device_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


@dataclass
class AwqSummary:
    model: str
    work_dir: str
    family: str
    group_size: int
    search_scale: bool
    search_clip: bool
    calib_source: str
    calib_samples: int
    calib_seqlen: int
    calib_note: str
    device: str
    dtype: str
    seconds_total: float = 0.0
    seconds_load: float = 0.0
    seconds_layers: float = 0.0
    seconds_write: float = 0.0
    peak_rss_bytes: int = 0
    peak_device_bytes: int | None = None
    layers: list[LayerResult] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["layers"] = [{"index": r.index, "error": r.error, "plain_error": r.plain_error, "chosen": r.chosen,
                        "alphas": r.alphas, "seconds": r.seconds} for r in self.layers]
        return d

    def table(self) -> str:
        """The per-layer table and the totals, as printed at the end of `vlmserve lite auto_awq`."""
        lines = ["layer  rel.error" + ("  plain     used    alpha qkv/o/gate_up/down" if self.search_scale else "")
                 + "  seconds"]
        for r in self.layers:
            row = f"{r.index:5d}  {r.error:9.5f}"
            if self.search_scale:
                a = "/".join(f"{r.alphas[k]:.2f}" for k in ("qkv", "o", "gate_up", "down"))
                row += f"  {r.plain_error:8.5f}  {r.chosen:6s}  {a:>27s}"
            lines.append(row + f"  {r.seconds:7.2f}")
        mem = f"peak RSS {self.peak_rss_bytes / 2**30:.2f} GiB"
        if self.peak_device_bytes is not None:
            mem += f", peak device memory {self.peak_device_bytes / 2**30:.2f} GiB"
        lines.append("rel.error: |y_q - y| / |y - x| over the calibration tokens (the share of the layer's "
                     "update that quantization changes)")
        lines.append(f"time {self.seconds_total:.1f} s (load {self.seconds_load:.1f}, layers {self.seconds_layers:.1f}, "
                     f"write {self.seconds_write:.1f}); {mem}; device {self.device}, compute dtype {self.dtype}")
        return "\n".join(lines)
