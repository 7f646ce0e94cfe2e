"""The LM service's lifecycle: bind (health NOT_SERVING), load the engine and
the tokenizer off the event loop, warm up with a short generation, go
SERVING; on SIGTERM drain and stop.

    server = LmServer("/ckpt", EngineConfig(), LmLimits(vision_addr="localhost:50052"), ServerConfig(port=0))
    await server.start(); await server.load()      # or: await server.run()

front_processes > 1: further processes serve the port beside this one, around
its engine (lm_fronts.py); engine: an engine of another process (RemoteEngine),
given to a front, which then loads only the tokenizer.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from vlmserve.config import EngineConfig, GenerationConfig
from vlmserve.engine import Engine
from vlmserve.errors import InvalidArgumentError, UnavailableError
from vlmserve.prompt_builder import PromptBuilder
from vlmserve.services.lm_servicer import SERVICE_NAME, LmServicer
from vlmserve.services.metrics import LmMetrics
from vlmserve.services.server import GrpcServer, ServerConfig, serve_until_signal
from vlmserve.services.vision_client import VisionClient

log = logging.getLogger("vlmserve.lm")


@dataclass
class LmLimits:
    """vision_addr: one address, a comma-separated list or dns:///name:port; None: text only.

    stream_interval: tokens a response message carries after the first, which goes out at once (alone,
    unless the server was slow to run the stream); the last message may carry fewer. 1 sends every token as it
    comes. Larger values trade inter-token smoothness for the event loop's time: each message costs it about
    the same whatever it carries (bench/grpc_stream.py)."""

    vision_addr: str | None = None
    vision_api_key: str | None = None
    max_images_per_request: int = 16
    trust_remote_code: bool = False
    stream_interval: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.max_images_per_request, int) or self.max_images_per_request < 1:
            raise InvalidArgumentError(f"max_images_per_request must be >= 1, got {self.max_images_per_request!r}")
        if not isinstance(self.stream_interval, int) or isinstance(self.stream_interval, bool) \
                or not 1 <= self.stream_interval <= 64:
            raise InvalidArgumentError(f"stream_interval must be an integer in [1, 64], got {self.stream_interval!r}")


@dataclass
class _Core:
    engine: Engine  # or a RemoteEngine, in a front process
    builder: PromptBuilder
    limits: LmLimits


class LmServer:
    def __init__(self, model: str | Path, engine_config: EngineConfig | None = None, limits: LmLimits | None = None,
                 server_config: ServerConfig | None = None, front_processes: int = 1, engine=None):
        if not isinstance(front_processes, int) or isinstance(front_processes, bool) or not 1 <= front_processes <= 64:
            raise InvalidArgumentError(f"front_processes must be an integer in [1, 64], got {front_processes!r}")
        if engine is not None and front_processes > 1:
            raise InvalidArgumentError("a front process (given an engine) starts no fronts of its own")
        self.model = Path(model)
        self.engine_config = engine_config or EngineConfig()
        self.limits = limits or LmLimits()
        server_config = server_config or ServerConfig(port=50051, metrics_port=9091)
        if front_processes > 1:
            server_config = dataclasses.replace(server_config, processes=front_processes)
        self.server_config = server_config
        self._given_engine = engine
        self._fronts = None
        if front_processes > 1:
            from vlmserve.services.lm_fronts import LmFronts

            self._fronts = LmFronts(front_processes - 1)
        self.registry = CollectorRegistry()
        self.metrics = LmMetrics(self.registry)
        self.grpc = GrpcServer(self.server_config, [SERVICE_NAME], self.registry)
        if self._fronts is not None:  # /metrics: this process's registry plus each front's latest snapshot
            from vlmserve.services.metrics_merge import MergedRegistry

            self.grpc.exported_metrics = MergedRegistry(self.registry, by_process={
                "vlmserve_grpc_server_handled": ("vlmserve_lm_process_calls_handled",
                                                 "gRPC calls finished, by the process of the LM service that served "
                                                 "them (0: the engine's; --front-processes)"),
                "vlmserve_grpc_server_in_flight": ("vlmserve_lm_process_calls_in_flight",
                                                   "gRPC calls being served, by process of the LM service")})
        handlers = LmServicer(self).handlers()
        self.grpc.add_to_each(lambda server: server.add_generic_rpc_handlers((handlers,)))
        self.has_vision = bool(self.limits.vision_addr)
        # A grpc.aio channel belongs to the event loop it was made on: one client of the vision service for each
        # loop that serves the port (ServerConfig.event_loops), made on its first use there.
        self._vision_clients: dict[asyncio.AbstractEventLoop, VisionClient] = {}
        self._vision_lock = threading.Lock()
        self._core: _Core | None = None

    @property
    def port(self) -> int | None:
        return self.grpc.port

    @property
    def metrics_port(self) -> int | None:
        return self.grpc.metrics_port

    def vision_client(self) -> VisionClient:
        """The vision service's client of the running event loop (has_vision must be true)."""
        loop = asyncio.get_running_loop()
        with self._vision_lock:
            client = self._vision_clients.get(loop)
            if client is None:
                client = self._vision_clients[loop] = VisionClient(
                    self.limits.vision_addr, self.server_config.max_message_bytes, self.limits.vision_api_key)
            return client

    async def _close_vision_client(self) -> None:
        """Closes the running loop's vision client, if it made one."""
        with self._vision_lock:
            client = self._vision_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    def ready(self) -> _Core:
        if self._core is None:
            raise UnavailableError("the language model is still loading; health reports SERVING once it is ready")
        return self._core

    async def start(self) -> int:
        return await self.grpc.start()

    async def load(self, go_serving: bool = True) -> None:
        """Loads and warms up the engine; then health SERVING unless go_serving is False (the
        stack first waits for its vision service too, then calls set_serving())."""
        loop = asyncio.get_running_loop()
        if self._given_engine is not None:  # a front process: the engine is another process's, loaded there
            builder = await loop.run_in_executor(None, PromptBuilder, self.model, self._given_engine.spec.family,
                                                 self.limits.trust_remote_code)
            self._core = _Core(self._given_engine, builder, self.limits)
            if go_serving:
                await self.set_serving()
            return
        log.info("loading language model", extra={"fields": {"model": str(self.model)}})

        def build() -> _Core:
            engine = Engine(self.model, self.engine_config)
            try:
                builder = PromptBuilder(self.model, engine.spec.family, self.limits.trust_remote_code)
                # Warm-up: one short request through every stage (prefill, decode, sampling).
                engine.generate(builder.tokenizer("warm up")["input_ids"] or [0],
                                GenerationConfig(max_new_tokens=2, ignore_eos=True))
            except BaseException:
                engine.close()
                raise
            return _Core(engine, builder, self.limits)

        core = await loop.run_in_executor(None, build)
        self.metrics.watch(core.engine)
        self._core = core
        if self._fronts is not None:
            await self._fronts.start(core.engine, self._front_settings, self.grpc.exported_metrics.update,
                                     self.metrics.front_restarts.inc)
        if go_serving:
            await self.set_serving()

    async def set_serving(self) -> None:
        await self.grpc.set_serving(True)
        log.info("serving", extra={"fields": {"family": self._core.engine.spec.family, "port": self.port,
                                              "vision": self.limits.vision_addr}})

    def _front_settings(self, index: int):
        from vlmserve.services.lm_fronts import FrontSettings

        engine = self._core.engine
        joined = dataclasses.replace(self.server_config, port=self.port, metrics_port=None, join_port=True)
        return FrontSettings(index=index, model=str(self.model), limits=self.limits, server_config=joined,
                             spec=engine.spec, engine_config=self.engine_config, engine_stats=engine.stats(),
                             log_level=logging.getLevelName(logging.getLogger().level).lower(),
                             switch_interval_s=sys.getswitchinterval())

    async def stop(self) -> None:
        """Drains this process's calls and every front's (the engine runs until they are done), then closes it."""
        stopping = [self.grpc.stop(cleanup=self._close_vision_client)]
        if self._fronts is not None:
            stopping.append(self._fronts.stop(self.server_config.shutdown_grace_s))
        try:
            await asyncio.gather(*stopping)
        finally:
            if self._core is not None:
                self._core.engine.close()
        log.info("stopped")

    async def run(self) -> None:
        """start, load, serve until SIGTERM/SIGINT, drain, stop."""
        await serve_until_signal(self.start, self.load, self.stop)
