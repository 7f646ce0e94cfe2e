"""The vision encoder service's lifecycle: bind (health NOT_SERVING), load the
vision tower and projector and run a warm-up forward off the event loop, start
the batcher, go SERVING; on SIGTERM drain and stop. The batcher runs one
forward at a time per encoder replica (VisionConfig.replicas, one per GPU).

    server = VisionServer("/ckpt", VisionConfig(), ServerConfig(port=0))   # inside the running loop
    await server.start(); await server.load()      # or: await server.run()
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from vlmserve.errors import InvalidArgumentError
from vlmserve.services import protos
from vlmserve.services.metrics import VisionMetrics
from vlmserve.services.server import GrpcServer, ServerConfig, serve_until_signal
from vlmserve.services.status import UnavailableError
from vlmserve.services.vision_servicer import DEFAULT_CHUNK_BYTES, MIN_CHUNK_BYTES, VisionServicer
from vlmserve.vision.batcher import TileBatcher
from vlmserve.vision.config import VisionConfig
from vlmserve.vision.encoder import VisionEncoder
from vlmserve.vision.preprocess_pool import PreprocessPool

log = logging.getLogger("vlmserve.vision")

SERVICE_NAME = "vlm.v1.VisionService"


class VisionServer:
    def __init__(self, model: str | Path, vision_config: VisionConfig | None = None,
                 server_config: ServerConfig | None = None, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        self.model = Path(model)
        self.vision_config = vision_config or VisionConfig()
        self.server_config = server_config or ServerConfig()
        if max_chunk_bytes < MIN_CHUNK_BYTES:
            raise InvalidArgumentError(f"max_chunk_bytes must be >= {MIN_CHUNK_BYTES}, got {max_chunk_bytes}")
        if self.server_config.event_loops != 1:  # its tile batcher gathers images across requests on one loop
            raise InvalidArgumentError("the vision service serves on one event loop: event_loops must be 1, got "
                                       f"{self.server_config.event_loops}")
        # A chunk and its message framing must fit the message size limit.
        self.max_chunk_bytes = min(max_chunk_bytes, self.server_config.max_message_bytes - MIN_CHUNK_BYTES)
        self.registry = CollectorRegistry()
        self.metrics = VisionMetrics(self.registry)
        self.grpc = GrpcServer(self.server_config, [SERVICE_NAME], self.registry)
        servicer = VisionServicer(self)
        self.grpc.add_to_each(lambda server: protos.vision_grpc().add_VisionServiceServicer_to_server(servicer, server))
        self.preprocess_pool: PreprocessPool | None = None
        self.encoder: VisionEncoder | None = None
        self.batcher: TileBatcher | None = None

    @property
    def port(self) -> int | None:
        return self.grpc.port

    @property
    def metrics_port(self) -> int | None:
        return self.grpc.metrics_port

    def ready_parts(self) -> tuple[VisionEncoder, TileBatcher, PreprocessPool]:
        if self.encoder is None or self.batcher is None or self.preprocess_pool is None:
            raise UnavailableError("the vision model is still loading; health reports SERVING once it is ready")
        return self.encoder, self.batcher, self.preprocess_pool

    async def start(self) -> int:
        return await self.grpc.start()

    async def load(self) -> None:
        """Loads and warms up the model in a worker thread, then reports SERVING."""
        loop = asyncio.get_running_loop()
        log.info("loading vision model", extra={"fields": {"model": str(self.model)}})

        def build() -> tuple[VisionEncoder, PreprocessPool]:
            encoder = VisionEncoder(self.model, self.vision_config)
            encoder.warmup()
            pool = PreprocessPool.for_encoder(encoder)  # needs the warmed-up encoder's tokens per tile
            try:
                pool.start()
            except BaseException:
                pool.close()
                raise
            return encoder, pool

        encoder, pool = await loop.run_in_executor(None, build)
        batcher = TileBatcher(encoder.forward, self.vision_config.max_batch_size,
                              self.vision_config.batch_window_ms / 1e3, self._observe_batch, parallel=encoder.replicas,
                              early_close=True)
        batcher.start()
        self.encoder, self.batcher, self.preprocess_pool = encoder, batcher, pool
        self.metrics.preprocess_on_gpu.set(0 if encoder.preparer.device is None else 1)
        await self.grpc.set_serving(True)
        log.info("serving", extra={"fields": {"model_type": encoder.model_type, "port": self.port,
                                              "replicas": encoder.replicas, "preprocess_processes": pool.processes,
                                              "preprocess_device": str(encoder.preparer.device or "cpu"),
                                              "devices": ",".join(str(d) for d in encoder.devices)}})

    def _observe_batch(self, tiles: int, seconds: float) -> None:
        self.metrics.batch_size.observe(tiles)
        self.metrics.batch_seconds.observe(seconds)

    async def stop(self) -> None:
        """Refuses new calls, lets calls in flight finish (up to the grace period), then stops."""
        # grpc refuses new calls from here on; calls already accepted run to completion.
        await self.grpc.stop()
        if self.batcher is not None:
            await self.batcher.close()
        if self.preprocess_pool is not None:
            self.preprocess_pool.close()
        log.info("stopped")

    async def run(self) -> None:
        """start, load, serve until SIGTERM/SIGINT, drain, stop."""
        await serve_until_signal(self.start, self.load, self.stop)
