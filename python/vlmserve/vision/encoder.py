"""The vision encoder runner: images → LM-space embeddings, exactly as the full
transformers model computes them (its own image processor and get_image_features).

Blocking and thread-safe in the way the service uses it: prepare() may run in
several threads at once; forward() on one replica runs in one thread at a time
(the batcher's thread bound to that replica), different replicas concurrently.

config.replicas whole copies of the encoder are loaded, one per GPU on CUDA
(see VisionConfig): a vision tower is small next to a GPU, so copies multiply
image throughput where splitting it would only add communication. model and
device are replica 0's."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmserve.errors import InternalError, ModelLoadError
from vlmserve.vision.config import VisionConfig
from vlmserve.vision.graphs import GraphedForward
from vlmserve.vision.image_source import ImageSource
from vlmserve.vision.loader import load_encoder, replica_devices, resolve_device, resolve_dtype
from vlmserve.vision.preparer import MAX_DEVICE_DIFFERENCE, ImagePreparer
from vlmserve.vision.tiles import ImageEmbedding, PreparedImage, Tiles

log = logging.getLogger(__name__)


class VisionEncoder:
    def __init__(self, model: str | Path, config: VisionConfig | None = None):
        from transformers import AutoConfig

        self.config = config or VisionConfig()
        self.directory = Path(model)
        if not (self.directory / "config.json").is_file():
            raise ModelLoadError(f"{self.directory} is not a checkpoint directory (no config.json)")
        try:
            hf_config = AutoConfig.from_pretrained(str(self.directory), trust_remote_code=self.config.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load the config of {self.directory}: {e}") from None
        self.preparer = ImagePreparer(self.directory, self.config, hf_config=hf_config)
        self.hf_config = hf_config
        self.model_type = self.hf_config.model_type
        self.family = self.preparer.family
        self.devices = replica_devices(resolve_device(self.config.device), self.config.replicas)
        self.device = self.devices[0]
        self.dtype = resolve_dtype(self.config.dtype, self.hf_config, self.device)
        # Each replica is built from the checkpoint on its own device: no GPU holds a transient second copy.
        self.models = [load_encoder(self.directory, self.hf_config, self.family, self.dtype, d) for d in self.devices]
        self.model = self.models[0]
        self.replicas = len(self.models)
        # The engine keeps the GPU busy with decode steps on its own stream; vision kernels on a
        # normal-priority stream then wait for free SMs behind them, one after another, which made
        # a 17 ms forward take 300 ms under load. A high-priority stream lets them in first (their
        # work is short, and a new request's first token waits on it).
        self._streams = [torch.cuda.Stream(device=d, priority=-10) if d.type == "cuda" else None
                         for d in self.devices]
        self.hidden_size = int(self.hf_config.text_config.hidden_size)
        # Every replica is on the same kind of device: all compiled or none.
        self.compiled = self.config.compile and self.device.type == "cuda" and self.family.graphable
        self._features = [self._features_fn(model) for model in self.models]
        self._graphed: list[GraphedForward | None] = [None] * self.replicas  # captured by warmup()

    # -- images -----------------------------------------------------------------------------------

    def load_image(self, source: ImageSource) -> Image.Image:
        """Bytes, data URL or allow-listed URL → validated RGB image (blocking)."""
        return self.preparer.load_image(source)

    def prepare(self, image: Image.Image) -> PreparedImage:
        """Runs the family's image processor (resize, tiling, normalization) on one RGB image."""
        return self.preparer.prepare(image)

    @property
    def tokens_per_tile(self) -> int:
        return self.preparer.tokens_per_tile

    @property
    def image_processor(self):
        return self.preparer.image_processor

    @property
    def processor_kwargs(self) -> dict:
        return self.preparer.processor_kwargs

    # -- model ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, tiles: Tiles, replica: int = 0) -> torch.Tensor:
        """[tiles, tokens_per_tile, hidden_size] on the CPU, in the model's dtype, computed by that replica."""
        if not 0 <= replica < self.replicas:
            raise InternalError(f"replica {replica} asked for; the encoder has {self.replicas}")
        device = self.devices[replica]
        stream = self._streams[replica]
        graphed = self._graphed[replica]
        made_on = {v.device for v in tiles.tensors.values() if v.is_cuda}
        if stream is not None:
            for d in made_on:  # tiles prepared on a GPU were last written (joined) on this thread's stream there
                stream.wait_stream(torch.cuda.current_stream(d))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            out = graphed.run(tiles) if graphed is not None else None
            if out is None:
                inputs = {k: (v.to(device, self.dtype) if v.is_floating_point() else v.to(device))
                          for k, v in tiles.tensors.items()}
                out = self._features[replica](inputs)
            if out.shape[0] != len(tiles) or out.shape[-1] != self.hidden_size:
                raise InternalError(f"the encoder returned {tuple(out.shape)} for {len(tiles)} tiles")
            return out.to("cpu")  # synchronizes this stream

    def _features_fn(self, model):
        """The family's forward bound to one replica's model; compiled when self.compiled."""
        def features(inputs: dict) -> torch.Tensor:
            return self.family.features(model, inputs)  # looked up per call, as the family may be replaced

        if not self.compiled:
            return features
        compiled = torch.compile(features, dynamic=None)

        def run(inputs: dict) -> torch.Tensor:
            for v in inputs.values():  # one compilation for every batch size
                torch._dynamo.maybe_mark_dynamic(v, 0)
            return compiled(inputs)

        return run

    @property
    def graph_sizes(self) -> list[int]:
        """The batch sizes replayed from CUDA graphs (after warmup(); empty when forwards run eagerly)."""
        return self._graphed[0].sizes if self._graphed[0] is not None else []

    @property
    def cuda_graphs(self) -> bool:
        return bool(self.graph_sizes)

    def warmup(self) -> None:
        """One forward per replica on a synthetic image: fixes tokens_per_tile and touches every kernel of every
        device, so no replica's first request pays for CUDA context and kernel setup. Then, on CUDA, captures
        each replica's graphs (see graphs.py)."""
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        tiles, _ = self.preparer.process(image)
        self.preparer.tokens_per_tile = int(self.forward(tiles).shape[1])  # known from here on
        for replica in range(1, self.replicas):
            self.forward(tiles, replica)
        if self.config.cuda_graphs and self.device.type == "cuda" and self.family.graphable:
            with torch.inference_mode():
                self._graphed = [GraphedForward(f, tiles, self.config.max_batch_size, d, self.dtype, s)
                                 for f, d, s in zip(self._features, self.devices, self._streams)]
        self._choose_preprocess_device(image)
        log.info("vision encoder warmed up", extra={"fields": {
            "preprocess_device": str(self.preparer.device or "cpu"),
            "model_type": self.model_type, "tokens_per_tile": self.tokens_per_tile, "hidden_size": self.hidden_size,
            "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
            "replicas": self.replicas, "devices": ",".join(str(d) for d in self.devices), "compiled": self.compiled,
            "cuda_graphs": ",".join(map(str, self.graph_sizes)) or "off"}})

    def _choose_preprocess_device(self, probe: Image.Image) -> None:
        """config.preprocess_device → the preparer's device (see VisionConfig)."""
        wanted = self.config.preprocess_device
        if wanted == "cpu" or (wanted == "auto" and (self.device.type != "cuda"
                                                     or self.config.preprocess_processes is True)):
            return
        if self.device.type != "cuda":
            raise ModelLoadError(f"preprocess_device 'cuda' needs the encoder on CUDA; it runs on {self.device}")
        with torch.inference_mode():
            refused = self.preparer.use_device(self.device, probe, exact=wanted == "auto")
        processor = type(self.image_processor).__name__
        if refused is not None:
            if wanted == "cuda":
                raise ModelLoadError(f"the image processor {processor} cannot run on {self.device}: {refused} "
                                     f"(a torchvision-backed processor can; --preprocess-device cpu runs it on "
                                     f"the host)")
            log.warning("the image processor runs on the host, not the GPU", extra={"fields": {
                "processor": processor, "reason": refused}})
            return
        difference = self.preparer.device_difference
        fields = {"processor": processor, "device": str(self.preparer.device),
                  "largest_difference_from_host": difference}
        if difference > MAX_DEVICE_DIFFERENCE:  # asked for with "cuda": served, and said
            log.warning("the image processor runs on the GPU with values that differ from the host's",
                        extra={"fields": fields})
        else:
            log.info("the image processor runs on the GPU", extra={"fields": fields})

    def encode(self, images: list[Image.Image]) -> list[ImageEmbedding]:
        """Unbatched reference: one forward per image, no batcher."""
        result = []
        for image in images:
            prepared = self.prepare(image)
            features = self.forward(prepared.tiles)
            result.append(ImageEmbedding(features.reshape(-1, features.shape[-1]), prepared.layout))
        return result
