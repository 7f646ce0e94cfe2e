"""The vision half of a VLM: images → embeddings in the language model's space,
with the checkpoint's own image processor and vision tower + projector."""
from vlmserve.vision.config import VisionConfig
from vlmserve.vision.encoder import VisionEncoder
from vlmserve.vision.image_source import ImageSource
from vlmserve.vision.tiles import ImageEmbedding, ImageLayout

__all__ = ["ImageEmbedding", "ImageLayout", "ImageSource", "VisionConfig", "VisionEncoder"]
