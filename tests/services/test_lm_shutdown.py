"""SIGTERM on the real command (`vlmserve serve lm`, a subprocess, default
model): the chat in flight streams to its end, then the process exits 0."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc

from vlmserve.services import protos

LAUNCH = "import sys; from vlmserve.cli import main; sys.exit(main())"


def test_sigterm_drains_the_chat_in_flight():
    from vlmserve.default_model import default_vlm_checkpoint

    model = default_vlm_checkpoint()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "serve", "lm", str(model), "--host", "127.0.0.1",
                             "--port", "0", "--metrics-port", "-1", "--num-kv-blocks", "32", "--block-size", "32",
                             "--max-model-len", "1024", "--shutdown-timeout", "60", "--threads", "1"],
                            stderr=subprocess.PIPE, text=True, env=env)
    logs, port, ready = [], [], threading.Event()

    def read():
        for line in proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            logs.append(entry)
            if entry.get("msg") == "listening":
                port.append(entry["port"])
            if entry.get("msg") == "serving":
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(180), f"the server did not come up: {logs}"
        pb = protos.lm()
        req = pb.ChatRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER,
                                                      content=[pb.ContentPart(text="Tell me a long story.")])])
        req.params.max_tokens = 60
        req.params.ignore_eos = True
        with grpc.insecure_channel(f"127.0.0.1:{port[0]}") as ch:
            call = protos.lm_grpc().LmServiceStub(ch).Chat(req, timeout=120)
            got = [next(call)]  # the stream is running
            proc.send_signal(signal.SIGTERM)
            got += list(call)
        assert sum(len(m.token_ids) for m in got) == 60
        assert got[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert proc.wait(60) == 0
        assert any(e.get("msg") == "draining" for e in logs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
