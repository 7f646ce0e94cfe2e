"""An LM server on loopback (its vision server from conftest), for the LM service tests."""
from __future__ import annotations

from pathlib import Path

from conftest import LoopThread, ServerThread


class LmServerThread(LoopThread):
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

        fronts = cfg.pop("front_processes", 1)

        async def make():
            return LmServer(model_dir, EngineConfig(**engine), LmLimits(vision_addr=vision_addr, **limits_kw),
                            ServerConfig(**cfg), front_processes=fronts)

        super().__init__(make, load, load_timeout=300)

    @property
    def engine(self):
        return self.server.ready().engine


def start_vision(model_dir: Path, **kw) -> ServerThread:
    return ServerThread(model_dir, **kw)
