"""vlmserve: serving vision-language models with 4-bit weights and a quantized KV cache."""
from vlmserve.config import EngineConfig, GenerationConfig
from vlmserve.engine import Embeddings, Engine, RequestStream
from vlmserve.errors import VlmError
from vlmserve.outputs import EngineStats, RequestOutput, TokenOutput

__all__ = [
    "Embeddings",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "GenerationConfig",
    "RequestOutput",
    "RequestStream",
    "TokenOutput",
    "VlmError",
]
__version__ = "0.1.0"
