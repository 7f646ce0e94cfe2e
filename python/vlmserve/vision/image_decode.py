"""Encoded image bytes → an RGB Pillow image, with the checks that keep a bad
upload from taking the server down: an allowed MIME type, a byte limit, a pixel
limit read from the header before any pixel is decoded (decompression bombs), a
minimum size, and decoding errors turned into InvalidArgumentError."""
from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from vlmserve.errors import InvalidArgumentError
from vlmserve.vision.config import MIME_TYPES, VisionConfig

# Pillow format names of the MIME types we accept; no other decoder is ever tried.
_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP"}
_ALIASES = {"image/jpg": "image/jpeg", "image/x-png": "image/png", "image/x-ms-bmp": "image/bmp"}


def normalize_mime(mime_type: str) -> str:
    mime = mime_type.split(";", 1)[0].strip().lower()
    mime = _ALIASES.get(mime, mime)
    if mime not in _FORMATS:
        raise InvalidArgumentError(f"unsupported image MIME type {mime_type[:64]!r}: "
                                   f"supported are {', '.join(MIME_TYPES)}")
    return mime


def decode_image(data: bytes, mime_type: str, config: VisionConfig) -> Image.Image:
    """Returns the first frame as an RGB image (transparency composited onto white, as
    transformers' image processors do)."""
    mime = normalize_mime(mime_type)
    if not data:
        raise InvalidArgumentError("image data is empty")
    if len(data) > config.max_image_bytes:
        raise InvalidArgumentError(f"image is {len(data)} bytes, over the limit of {config.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Reads the header only; the pixels are decoded by load() below.
            image = Image.open(io.BytesIO(data), formats=list(_FORMATS.values()))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidArgumentError(f"image is over the limit of {config.max_image_pixels} pixels") from None
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        raise InvalidArgumentError(f"could not decode the {mime} image: {_reason(e)}") from None
    width, height = image.size
    if width * height > config.max_image_pixels:
        raise InvalidArgumentError(f"image is {width}x{height} = {width * height} pixels, over the limit of "
                                   f"{config.max_image_pixels}")
    if width < config.min_image_size or height < config.min_image_size:
        raise InvalidArgumentError(f"image is {width}x{height} pixels; the smallest accepted is "
                                   f"{config.min_image_size}x{config.min_image_size}")
    try:
        image.seek(0)
        image.load()
        return to_rgb(image)
    except Exception as e:
        raise InvalidArgumentError(f"could not decode the {mime} image: {_reason(e)}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as transformers' image processors make it: through RGBA, composited onto white (written here with
    Pillow: transformers' own helper changed its signature between releases)."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _reason(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):  # its text names a BytesIO object: say what it means
        return "the data is not a PNG, JPEG, WebP, GIF or BMP image"
    text = str(e) or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "..."
