"""vlmserve: serving vision-language models with 4-bit weights and a quantized KV cache."""
from vlmserve.config import EngineConfig, GenerationConfig
from vlmserve.engine import Embeddings, Engine, RequestStream
from vlmserve.errors import VlmError
from vlmserve.outputs import EngineStats, RequestOutput, TokenOutput
from vlmserve.pipeline import Pipeline, Response, load_image, pipeline

__all__ = [
    "Embeddings",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "GenerationConfig",
    "Pipeline",
    "Response",
    "load_image",
    "pipeline",
    "RequestOutput",
    "RequestStream",
    "TokenOutput",
    "VlmError",
]
__version__ = "0.1.0"
