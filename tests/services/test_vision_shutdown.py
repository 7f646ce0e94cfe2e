"""SIGTERM on the real command (`vlmserve serve vision`, a subprocess): the stream in
flight finishes, new calls are refused, and the process exits 0 afterwards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import torch

import vision_client as vc
from conftest import variants
from vlmserve.services import protos

LAUNCH = "import sys; from vlmserve.cli import main; sys.exit(main())"
# The same command with every vision forward taking 2 s longer (it runs on the batcher's forward thread, so
# the event loop, and with it the signal handler, stays free): a request is then surely in flight when
# SIGTERM arrives, however loaded the machine (a lone request no longer waits out the batch window).
LAUNCH_SLOW_FORWARD = (
    "import sys, time; from vlmserve.vision.encoder import VisionEncoder; forward = VisionEncoder.forward; "
    "VisionEncoder.forward = lambda self, *a, **k: (time.sleep(2), forward(self, *a, **k))[1]; "
    "from vlmserve.cli import main; sys.exit(main())")


def _start(model_dir, *flags, launch: str = LAUNCH) -> tuple[subprocess.Popen, int, list]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", launch, "serve", "vision", str(model_dir), "--host", "127.0.0.1",
                             "--port", "0", "--metrics-port", "-1", *flags],
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[dict] = []
    other: list[str] = []
    ready = threading.Event()
    port = []

    def read():
        for line in proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                other.append(line)
                continue
            lines.append(entry)
            if entry.get("msg") == "listening":
                port.append(entry["port"])
            if entry.get("msg") == "serving":
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 120
    while not ready.wait(0.1):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the server did not come up: {lines} {''.join(other)[-3000:]}")
    return proc, port[0], lines


def test_sigterm_drains_the_stream_in_flight(vlm_dir):
    # Forwards slowed by 2 s (LAUNCH_SLOW_FORWARD): the request is surely in flight when SIGTERM arrives.
    proc, port, logs = _start(vlm_dir("llava"), "--shutdown-timeout", "30", "--max-images-per-request", "32",
                              launch=LAUNCH_SLOW_FORWARD)
    try:
        pb = protos.vision()
        images = [vc.image_input(d) for d in variants(32)]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = vc.stub(channel).Encode(pb.EncodeRequest(images=images, max_chunk_bytes=1024), timeout=60)
            stream.initial_metadata()  # the handler has started
            proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 10
            while not any(e.get("msg") == "draining" for e in logs) and time.time() < deadline:
                time.sleep(0.02)
            assert any(e.get("msg") == "draining" for e in logs)
            assert proc.poll() is None, "the server exited with a stream in flight"

            # New calls are refused while draining.
            with grpc.insecure_channel(f"127.0.0.1:{port}") as fresh:
                try:
                    vc.encode(vc.stub(fresh), images[:1], timeout=5)
                    refused = None
                except grpc.RpcError as e:
                    refused = e.code()
            assert refused == grpc.StatusCode.UNAVAILABLE
            assert proc.poll() is None

            messages = list(stream)  # the stream in flight completes
        kinds = [m.WhichOneof("payload") for m in messages]
        assert kinds.count("header") == 32 and kinds[-1] == "summary"
        assert stream.code() == grpc.StatusCode.OK
        payload = b"".join(m.chunk.data for m in messages if m.WhichOneof("payload") == "chunk")
        assert len(payload) == 32 * 16 * 256 * 4
        assert torch.frombuffer(bytearray(payload), dtype=torch.float32).isfinite().all()
        assert proc.wait(30) == 0
        order = [(e["msg"], e.get("code")) for e in logs if e.get("msg") in ("draining", "rpc finished", "stopped")
                 and e.get("method", "/vlm.v1.VisionService/Encode") == "/vlm.v1.VisionService/Encode"]
        assert order == [("draining", None), ("rpc finished", "OK"), ("stopped", None)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
