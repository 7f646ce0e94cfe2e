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


def image_chat_request(max_tokens: int = 4):
    """A greedy chat of one PNG photo and a question, max_tokens long whatever the model says."""
    from conftest import image_bytes
    from vlmserve.services import protos

    pb, common = protos.lm(), protos.common()
    return pb.ChatRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=[
            pb.ContentPart(image=common.ImageInput(data=image_bytes("chelsea.png"), mime_type="image/png")),
            pb.ContentPart(text="What is in this picture?")])],
        params=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def new_connection_stub(address: str):
    """A channel of its own (not shared with the process's other channels to `address`), so the kernel may hand
    its connection to any of the servers sharing the port; and the LM service's stub on it."""
    import grpc

    from vlmserve.services import protos

    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, protos.lm_grpc().LmServiceStub(channel)
