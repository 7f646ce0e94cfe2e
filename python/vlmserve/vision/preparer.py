"""Image bytes → a PreparedImage without the model: decoding with its checks,
then the family's own image processor (resize, tiling, normalization).

Built from the checkpoint's config and image processor only, so it is cheap to
hold in every preprocessing worker process (see preprocess_pool.py); the
encoder holds one for its own prepare().

On a GPU the processor itself can run there (use_device): transformers'
torchvision-backed image processors take a device and resize, crop and
normalize on it, so a 512×512 image costs the host its decoding and the
processor's Python, not the arithmetic on ~600,000 fp32 values per tile. The
tiles then stay on the GPU for the encoder. Each preparing thread queues its
work on a high-priority stream of its own and waits for it before the tiles
are handed on, so no other stream ever reads them unfinished."""
from __future__ import annotations

import threading
from pathlib import Path

import torch
from PIL import Image

from vlmserve.errors import InternalError, InvalidArgumentError, ModelLoadError
from vlmserve.vision.config import VisionConfig
from vlmserve.vision.families import TileGrid, family_for
from vlmserve.vision.image_decode import decode_image
from vlmserve.vision.image_source import ImageSource, resolve
from vlmserve.vision.tiles import ImageLayout, PreparedImage, Tiles


# Largest difference between a normalized pixel value prepared on the GPU and on the host that still counts as
# the same preprocessing: a level of 255 here and there from rounding is 0.015-0.02 after dividing by the
# normalization's std (0.23-0.27). Measured on the H200 (transformers 5.17, torchvision): the tiny test
# checkpoints' downscaling to 32 pixels within 0.05; the InternVL-2B processor upscaling the 64×64 noise probe to
# 448 pixels 0.327, another filter in effect.
MAX_DEVICE_DIFFERENCE = 0.1


def _largest_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    if want.is_floating_point():
        return float((got.double() - want.double()).abs().max())
    return float("inf") if bool((got != want).any()) else 0.0


class ImagePreparer:
    def __init__(self, directory: str | Path, config: VisionConfig, tokens_per_tile: int = 0, hf_config=None):
        from transformers import AutoConfig, AutoImageProcessor

        self.directory = Path(directory)
        self.config = config
        trust = config.trust_remote_code
        try:
            self.hf_config = hf_config or AutoConfig.from_pretrained(str(self.directory), trust_remote_code=trust)
            self.image_processor = AutoImageProcessor.from_pretrained(str(self.directory), trust_remote_code=trust)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load the config or image processor of {self.directory}: {e}") from None
        self.family = family_for(self.hf_config.model_type)
        self.processor_kwargs = self.family.processor_defaults()
        self.tokens_per_tile = tokens_per_tile  # the encoder's output rows per tile: known once it has run
        self.device: torch.device | None = None  # where the processor runs: None, the CPU (see use_device)
        self.device_difference: float | None = None  # the probe's largest difference there from the host's
        self._streams = threading.local()  # each preparing thread's stream on self.device

    def use_device(self, device: torch.device, probe: Image.Image, exact: bool = True) -> str | None:
        """Runs the image processor on `device` from now on if it can, and returns None; otherwise stays on the
        host and returns why not. It can where the processor takes a device (a torchvision-backed one) and, on
        `probe`, returns tiles on that device in the host's layout; with `exact`, also only with values within
        MAX_DEVICE_DIFFERENCE of the host's (where resampling has another GPU form, as Lanczos, or other
        coefficients, its tiles are not quite the host's). device_difference holds the probe's difference."""
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        want, want_grid = self.process(probe)
        self.device = device
        try:
            got, got_grid = self.process(probe)
        except Exception as e:  # a PIL-backed processor refuses the device argument
            self.device = None
            return f"it failed there ({type(e).__name__}: {str(e)[:200]})"
        if got_grid != want_grid or got.shape_key != want.shape_key:
            self.device = None
            return f"its tiles there differ in layout from the host's ({got_grid} against {want_grid})"
        if any(v.device != device for v in got.tensors.values()):
            self.device = None
            return "it ignores the device (its tiles stay on the host)"
        difference = max(_largest_difference(got.tensors[k].cpu(), want.tensors[k]) for k in want.tensors)
        self.device_difference = difference
        if exact and difference > MAX_DEVICE_DIFFERENCE:
            self.device = None
            return (f"its values there differ from the host's by up to {difference:.3g} (allowed "
                    f"{MAX_DEVICE_DIFFERENCE}): its resampling has no exact GPU form")
        return None

    def load_image(self, source: ImageSource) -> Image.Image:
        """Bytes, data URL or allow-listed URL → validated RGB image (blocking)."""
        data, mime = resolve(source, self.config)
        return decode_image(data, mime, self.config)

    def prepare(self, image: Image.Image) -> PreparedImage:
        """Runs the family's image processor on one RGB image."""
        if not self.tokens_per_tile:
            raise InternalError("VisionEncoder.warmup() must run before images are prepared")
        try:
            tiles, grid = self.process(image)
        except InternalError:
            raise
        except Exception as e:  # a processor that chokes on an image (extreme aspect ratio...) is the input's fault
            raise InvalidArgumentError(f"the model's image processor rejected the {image.width}x{image.height} "
                                       f"image: {e}") from None
        layout = ImageLayout(num_tokens=grid.num_tiles * self.tokens_per_tile, num_tiles=grid.num_tiles,
                             tokens_per_tile=self.tokens_per_tile, grid_rows=grid.grid_rows,
                             grid_cols=grid.grid_cols, has_global_tile=grid.has_global_tile,
                             image_width=image.width, image_height=image.height)
        return PreparedImage(tiles, layout)

    def prepare_source(self, source: ImageSource) -> PreparedImage:
        return self.prepare(self.load_image(source))

    def process(self, image: Image.Image) -> tuple[Tiles, TileGrid]:
        if self.device is None:
            out = self.image_processor(images=[image], return_tensors="pt", **self.processor_kwargs)
        else:
            stream = self._stream()
            with torch.cuda.stream(stream):
                out = self.image_processor(images=[image], return_tensors="pt", device=self.device,
                                           **self.processor_kwargs)
            stream.synchronize()  # the tiles are complete before any other stream may read them
        grid = self.family.grid(out, image.size, self.image_processor, self.processor_kwargs)
        # Idefics3 nests the tiles under a sample dimension: [1, tiles, ...].
        tiles = Tiles({name: out[name][0] if self.family.sample_dim else out[name]
                       for name in self.family.tile_inputs})
        if len(tiles) != grid.num_tiles:
            raise InternalError(f"the image processor returned {len(tiles)} tiles, its layout {grid.num_tiles}")
        return tiles, grid

    def _stream(self) -> torch.cuda.Stream:
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            # High priority, as the encoder's: a new request's first token waits on these kernels, and the
            # engine's decode steps would otherwise fill the GPU ahead of them.
            stream = self._streams.stream = torch.cuda.Stream(device=self.device, priority=-10)
        return stream
