"""What flows through the vision encoder: an image's tiles (the unit of batching),
its layout, and the embeddings that come out."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tiles:
    """Per-tile model inputs: every tensor's first dimension is the tile."""

    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.tensors["pixel_values"].shape[0])

    @property
    def shape_key(self) -> tuple:
        """The inputs' names, per-tile shapes and dtypes: tiles with equal keys fit one forward's inputs."""
        return tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in sorted(self.tensors.items()))

    @property
    def batch_key(self) -> tuple:
        """Tiles with equal keys can share a forward pass: equal shape keys, and on one device (images
        prepared on the GPU are concatenated there)."""
        return self.shape_key, tuple(str(v.device) for _, v in sorted(self.tensors.items()))

    def split(self, size: int) -> list["Tiles"]:
        n = len(self)
        return [Tiles({k: v[i:i + size] for k, v in self.tensors.items()}) for i in range(0, n, size)]

    @staticmethod
    def cat(parts: list["Tiles"]) -> "Tiles":
        if len(parts) == 1:
            return parts[0]
        return Tiles({k: torch.cat([p.tensors[k] for p in parts]) for k in parts[0].tensors})


@dataclass(frozen=True)
class ImageLayout:
    """Mirrors vlm.v1.ImageLayout: rows come grid tiles row-major, then the global tile."""

    num_tokens: int
    num_tiles: int
    tokens_per_tile: int
    grid_rows: int
    grid_cols: int
    has_global_tile: bool
    image_width: int
    image_height: int


@dataclass
class PreparedImage:
    """An image after its family's processor: ready for the vision tower."""

    tiles: Tiles
    layout: ImageLayout


@dataclass
class ImageEmbedding:
    embeddings: torch.Tensor  # [layout.num_tokens, hidden_size], on the CPU
    layout: ImageLayout
