"""An LM server (and its vision server) in event-loop threads, on the default
model: SmolLM2-135M-Instruct as the LM of a LLaVA-style VLM (seeded random
vision tower), for the LM service tests."""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from conftest import ServerThread


class LmServerThread:
    def __init__(self, model_dir: Path, vision_addr: str | None, engine_kw: dict | None = None, load: bool = True,
                 **server_kw):
        from vlmserve.config import EngineConfig
        from vlmserve.services.lm_server import LmLimits, LmServer
        from vlmserve.services.server import ServerConfig

        limits_kw = {k: server_kw.pop(k) for k in list(server_kw) if k in LmLimits.__dataclass_fields__}
        cfg = {"host": "127.0.0.1", "port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0, "shutdown_grace_s": 5.0}
        cfg.update(server_kw)
        engine = dict(device="cpu", num_kv_blocks=96, block_size=32, max_batch_size=16, max_model_len=1024)
        engine.update(engine_kw or {})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make():
            return LmServer(model_dir, EngineConfig(**engine), LmLimits(vision_addr=vision_addr, **limits_kw),
                            ServerConfig(**cfg))

        self.server = self.run(make())
        self.port = self.run(self.server.start())
        self.address = f"127.0.0.1:{self.port}"
        if load:
            self.run(self.server.load(), timeout=300)

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def engine(self):
        return self.server.ready().engine

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def start_vision(model_dir: Path, **kw) -> ServerThread:
    return ServerThread(model_dir, **kw)
