"""Fixtures of the service tests: tiny seeded-random VLM checkpoints with their
image processors, real servers on loopback ephemeral ports (each in its own
event-loop thread), and real gRPC clients."""
from __future__ import annotations

import asyncio
import importlib.util
import io
import threading
from pathlib import Path

import pytest
from PIL import Image

IMAGES = Path(__file__).resolve().parent.parent / "data" / "images"

# The generated modules are a build product (make proto); build them if this checkout has not yet.
if importlib.util.find_spec("vlmserve._proto") is None:
    import runpy

    runpy.run_path(str(Path(__file__).resolve().parents[2] / "python" / "vlmserve" / "proto_build.py"),
                   run_name="__main__")


def _write_processor(directory: Path, family: str) -> None:
    # Each family's processor at the tiny towers' image_size 32 (their real ones are 336..512).
    import transformers as t

    if family == "llava":
        p = t.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    elif family in ("idefics3", "smolvlm"):
        cls = t.Idefics3ImageProcessor if family == "idefics3" else t.SmolVLMImageProcessor
        p = cls(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    else:  # as in OpenGVLab's configs: tiling is switched on by InternVLProcessor, not the image processor
        p = t.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=False, min_patches=1,
                                    max_patches=4)
    p.save_pretrained(directory)


@pytest.fixture(scope="session")
def vlm_dir(tmp_path_factory):
    """vlm_dir(family) -> checkpoint directory; family in llava, idefics3, smolvlm, internvl."""
    from tiny_vlms import write_idefics3, write_internvl_hf, write_llava

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            d = tmp_path_factory.mktemp(family)
            if family == "llava":
                write_llava(d)
            elif family == "idefics3":
                write_idefics3(d)
            elif family == "smolvlm":
                write_idefics3(d, smolvlm=True)
            elif family == "internvl":
                write_internvl_hf(d)
            else:
                raise ValueError(family)
            _write_processor(d, family)
            made[family] = d
        return made[family]

    return make


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def variants(count: int, size: tuple[int, int] = (160, 120)) -> list[bytes]:
    """`count` different PNGs: crops of the test images at shifting offsets."""
    bases = [Image.open(IMAGES / n).convert("RGB") for n in ("rocket.jpg", "chelsea.png", "camera.png")]
    out = []
    for i in range(count):
        base = bases[i % len(bases)]
        x, y = (i * 17) % (base.width - size[0]), (i * 11) % (base.height - size[1])
        out.append(encoded(base.crop((x, y, x + size[0], y + size[1]))))
    return out


class LoopThread:
    """A server object living in its own event loop on a daemon thread; `make` is an
    async factory run inside that loop (grpc.aio binds a server to its loop)."""

    def __init__(self, make, load: bool, load_timeout: float = 120):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.run(make())
        self.port = self.run(self.server.start())
        self.address = f"127.0.0.1:{self.port}"
        self.load_timeout = load_timeout
        if load:
            self.load()

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def load(self) -> None:
        self.run(self.server.load(), self.load_timeout)

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


class ServerThread(LoopThread):
    """A VisionServer on loopback, ephemeral ports."""

    def __init__(self, model_dir: Path, load: bool = True, max_chunk_bytes: int = 1 << 20, **overrides):
        from vlmserve.services.server import ServerConfig
        from vlmserve.services.vision_server import VisionServer
        from vlmserve.vision.config import VisionConfig

        server_fields = set(ServerConfig.__dataclass_fields__)
        server_kw = {"host": "127.0.0.1", "port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0,
                     "shutdown_grace_s": 5.0}
        server_kw.update({k: v for k, v in overrides.items() if k in server_fields})
        vision_kw = {k: v for k, v in overrides.items() if k not in server_fields}

        async def make():
            return VisionServer(model_dir, VisionConfig(**vision_kw), ServerConfig(**server_kw), max_chunk_bytes)

        super().__init__(make, load)


@pytest.fixture
def start_server(vlm_dir):
    """start_server(family, load=True, **VisionConfig/ServerConfig fields) -> ServerThread (stopped at teardown)."""
    started: list[ServerThread] = []

    def start(family: str, **kwargs) -> ServerThread:
        s = ServerThread(vlm_dir(family), **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
