"""What differs between the vision-language families: which transformers class
holds the vision tower and projector, what the family's processor adds to the
image processor's defaults, how tiles are laid out, and how a batch of tiles goes
through the model's own get_image_features."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from vlmserve.errors import InternalError, UnsupportedError


@dataclass(frozen=True)
class TileGrid:
    """How an image was cut into tiles (the ImageLayout fields the processor decides)."""

    num_tiles: int
    grid_rows: int = 0
    grid_cols: int = 0
    has_global_tile: bool = False


@dataclass(frozen=True)
class Family:
    name: str                       # the VisionFamily it reports: "llava", "idefics3", "internvl"
    model_class: str                # transformers class of the whole VLM
    encoder_modules: tuple[str, ...]  # children of model.model kept: vision tower, projector
    processor_class: str            # its images_kwargs are the processor's defaults for the image processor
    tile_inputs: tuple[str, ...]    # per-tile tensors of the image processor's output the forward needs
    sample_dim: bool                # the processor's tensors are [samples, tiles, ...] rather than [tiles, ...]
    grid: Callable                  # (processor output, image (w, h), image processor, kwargs) -> TileGrid
    features: Callable              # (model.model, tiles: dict of tensors) -> [tiles, tokens_per_tile, hidden]
    # The forward has no data-dependent shapes or host syncs, so it can be captured in a CUDA graph.
    graphable: bool = True
    # Image-processor options the grid function relies on, whatever the processor class's defaults are in the
    # installed transformers (some versions do not expose them; the fast processors do not assume them).
    required_kwargs: dict = field(default_factory=dict, hash=False)

    def processor_defaults(self) -> dict:
        import transformers

        cls = getattr(transformers, self.processor_class, None)
        return {**(getattr(cls, "images_kwargs", None) or {}), **self.required_kwargs}


def _one_tile(out, size, image_processor, kwargs) -> TileGrid:
    return TileGrid(num_tiles=int(out["pixel_values"].shape[0]))


def _idefics3_grid(out, size, image_processor, kwargs) -> TileGrid:
    tiles = int(out["pixel_values"].shape[1])
    rows, cols = int(out["rows"][0][0]), int(out["cols"][0][0])
    if rows * cols and tiles != rows * cols + 1:
        raise InternalError(f"Idefics3 processor returned {tiles} tiles for a {rows}x{cols} grid")
    # The last (or only) tile is the global image.
    return TileGrid(num_tiles=tiles, grid_rows=rows, grid_cols=cols, has_global_tile=True)


def _internvl_grid(out, size, image_processor, kwargs) -> TileGrid:
    tiles = int(out["num_patches"][0])
    if tiles == 1:
        return TileGrid(num_tiles=1)
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    min_patches = kwargs.get("min_patches", image_processor.min_patches)
    max_patches = kwargs.get("max_patches", image_processor.max_patches)
    patch = image_processor.size
    patch_hw = (patch["height"], patch["width"]) if isinstance(patch, dict) else (patch.height, patch.width)
    width, height = size
    cols, rows = get_optimal_tiled_canvas((height, width), patch_hw, min_patches, max_patches)
    if rows * cols + 1 != tiles:
        raise InternalError(f"InternVL processor returned {tiles} tiles; its canvas is {rows}x{cols} + thumbnail")
    return TileGrid(num_tiles=tiles, grid_rows=rows, grid_cols=cols, has_global_tile=True)


def _llava_features(model, tiles: dict) -> torch.Tensor:
    return torch.stack(list(model.get_image_features(pixel_values=tiles["pixel_values"]).pooler_output))


def _idefics3_features(model, tiles: dict) -> torch.Tensor:
    # get_image_features takes [batch, images, 3, H, W]: all tiles go in as one sample's images.
    pv = tiles["pixel_values"]
    out = model.get_image_features(pixel_values=pv[None], pixel_attention_mask=tiles["pixel_attention_mask"][None])
    feats = getattr(out, "pooler_output", out)
    # transformers releases differ: [tiles, tokens, hidden], or one sample's rows [1 or list, tiles * tokens, hidden].
    if isinstance(feats, torch.Tensor) and feats.dim() == 3 and feats.shape[0] == pv.shape[0]:
        return feats
    flat = feats[0] if isinstance(feats, (list, tuple)) or feats.dim() == 3 else feats
    if flat.shape[0] % pv.shape[0]:
        # get_image_features drops all-zero tiles as padding; normalized real images never are.
        raise InternalError(f"Idefics3 returned {flat.shape[0]} rows for {pv.shape[0]} tiles")
    return flat.view(pv.shape[0], -1, flat.shape[-1])


def _internvl_features(model, tiles: dict) -> torch.Tensor:
    return model.get_image_features(pixel_values=tiles["pixel_values"]).pooler_output


_LLAVA = Family("llava", "LlavaForConditionalGeneration", ("vision_tower", "multi_modal_projector"),
                "LlavaProcessor", ("pixel_values",), False, _one_tile, _llava_features)
_IDEFICS3_INPUTS = ("pixel_values", "pixel_attention_mask")
_IDEFICS3 = Family("idefics3", "Idefics3ForConditionalGeneration", ("vision_model", "connector"),
                   "Idefics3Processor", _IDEFICS3_INPUTS, True, _idefics3_grid, _idefics3_features,
                    graphable=False,  # drops all-zero (padding) tiles: a data-dependent shape
                    required_kwargs={"return_row_col_info": True})
# SmolVLM is Idefics3's architecture with its own processor: same placeholder convention.
_SMOLVLM = Family("idefics3", "SmolVLMForConditionalGeneration", ("vision_model", "connector"),
                  "SmolVLMProcessor", _IDEFICS3_INPUTS, True, _idefics3_grid, _idefics3_features,
                   graphable=False, required_kwargs={"return_row_col_info": True})
_INTERNVL = Family("internvl", "InternVLForConditionalGeneration", ("vision_tower", "multi_modal_projector"),
                   "InternVLProcessor", ("pixel_values",), False, _internvl_grid, _internvl_features,
                   required_kwargs={"crop_to_patches": True})

# config.json model_type -> family.
FAMILIES = {"llava": _LLAVA, "idefics3": _IDEFICS3, "smolvlm": _SMOLVLM, "internvl": _INTERNVL}


def family_for(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedError(f"model_type {model_type!r} has no vision encoder support; supported are "
                               f"{sorted(FAMILIES)}") from None
