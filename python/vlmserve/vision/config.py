"""How the vision encoder runs and what images it accepts, validated on creation."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from vlmserve.errors import InvalidArgumentError

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
PREPROCESS_DEVICES = ("auto", "cpu", "cuda")
MIME_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidArgumentError(message)


def default_preprocess_threads() -> int:
    """Image decoding and processing threads: up to 8 where there are cores for them (on an H100 host, 2
    threads prepared 94 images/s and 8 prepared 319; a busy server needs more than 100)."""
    return max(2, min(8, os.cpu_count() or 2))


def _positive_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


@dataclass
class VisionConfig:
    """dtype "auto" is float32 on the CPU and the checkpoint's dtype on CUDA.

    max_batch_size counts tiles, not images: an image split into 5 tiles takes 5
    slots. A batch closes when it is full, batch_window_ms after its first tile
    arrived, or (in the service) once no image of a request in flight is still
    being prepared. allowed_url_hosts empty means http(s) image URLs are refused.

    cuda_graphs: on CUDA, forwards of the model's standard tile shape replay CUDA
    graphs captured at warm-up (one per batch size; see graphs.py), for families
    whose forward allows it.

    preprocess_threads is how many images are decoded and preprocessed at once;
    preprocess_processes whether in worker processes (True), threads (False) or,
    None, processes when the encoder runs on CUDA and the image processor does
    not run there (see preprocess_pool.py).

    preprocess_device is where the image processor's arithmetic runs (decoding
    is always on the host): "cuda" on the encoder's first GPU, in threads of the
    service (a start-up error where the encoder is not on CUDA, the processor
    cannot take a device, or worker processes were asked for; a warning where
    its values there differ from the host's, see preparer.py); "cpu" on the
    host (the default: on the H200 the InternVL-2B processor's values on the GPU
    differ from the host's, and image preparation there is not yet measured in
    serving); "auto" on the GPU where "cuda" would start and the values match
    the host's, otherwise on the host.

    compile: on CUDA, the forward is compiled with torch.compile (TorchInductor)
    at start-up, before the graphs are captured: the ViT's layer norms, GELUs,
    layer scales and residual adds become a few fused kernels instead of one
    kernel each. The batch dimension is compiled as dynamic, so one compilation
    serves every batch size. Start-up takes longer by the compilation.

    replicas is how many whole copies of the encoder serve requests, each taking
    its own batches. On CUDA (device cuda or auto on a GPU machine) replica i runs
    on cuda:i, or cuda:K+i for device cuda:K. The encoder is replicated rather
    than split tensor-parallel: a 300M ViT/CLIP-L fits easily on each GPU, and
    splitting it would add two all-reduces per layer on small batches, while
    replicas multiply image throughput with no communication. On the CPU the
    replicas are separate copies in the same memory (useful for tests)."""

    dtype: str = "auto"
    device: str = "auto"
    max_batch_size: int = 16
    batch_window_ms: float = 5.0
    max_image_pixels: int = 64 * 1024 * 1024
    min_image_size: int = 2
    max_images_per_request: int = 16
    max_image_bytes: int = 32 * 1024 * 1024
    allowed_url_hosts: tuple[str, ...] = field(default_factory=tuple)
    url_timeout_s: float = 10.0
    trust_remote_code: bool = False
    preprocess_threads: int = field(default_factory=default_preprocess_threads)
    preprocess_processes: bool | None = None
    preprocess_device: str = "cpu"
    replicas: int = 1
    cuda_graphs: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        _require(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        _require(self.device in DEVICES or (isinstance(self.device, str) and self.device.startswith("cuda:")),
                 f"device must be one of {DEVICES} or cuda:N, got {self.device!r}")
        _require(_positive_int(self.max_batch_size),
                 f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        _require(isinstance(self.batch_window_ms, (int, float)) and 0 <= self.batch_window_ms <= 1000,
                 f"batch_window_ms must be in [0, 1000], got {self.batch_window_ms!r}")
        _require(_positive_int(self.max_image_pixels),
                 f"max_image_pixels must be a positive integer, got {self.max_image_pixels!r}")
        _require(_positive_int(self.min_image_size),
                 f"min_image_size must be a positive integer, got {self.min_image_size!r}")
        _require(_positive_int(self.max_images_per_request),
                 f"max_images_per_request must be a positive integer, got {self.max_images_per_request!r}")
        _require(_positive_int(self.max_image_bytes),
                 f"max_image_bytes must be a positive integer, got {self.max_image_bytes!r}")
        self.allowed_url_hosts = tuple(h.strip().lower() for h in self.allowed_url_hosts if h.strip())
        _require(isinstance(self.url_timeout_s, (int, float)) and self.url_timeout_s > 0,
                 f"url_timeout_s must be > 0, got {self.url_timeout_s!r}")
        _require(_positive_int(self.preprocess_threads),
                 f"preprocess_threads must be a positive integer, got {self.preprocess_threads!r}")
        _require(isinstance(self.cuda_graphs, bool), f"cuda_graphs must be a bool, got {self.cuda_graphs!r}")
        _require(isinstance(self.compile, bool), f"compile must be a bool, got {self.compile!r}")
        _require(self.preprocess_processes is None or isinstance(self.preprocess_processes, bool),
                 f"preprocess_processes must be None (auto) or a bool, got {self.preprocess_processes!r}")
        _require(self.preprocess_device in PREPROCESS_DEVICES,
                 f"preprocess_device must be one of {PREPROCESS_DEVICES}, got {self.preprocess_device!r}")
        _require(not (self.preprocess_device == "cuda" and self.preprocess_processes is True),
                 "preprocess_device 'cuda' runs the image processor in threads of the service (one CUDA "
                 "context); it cannot be combined with preprocess_processes")
        _require(_positive_int(self.replicas),
                 f"replicas must be a positive integer (encoder copies, one per GPU), got {self.replicas!r}")
