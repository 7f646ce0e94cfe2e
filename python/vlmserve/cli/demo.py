"""vlmserve demo: bring up both services on the default model, stream answers
to a text question and to a question about a photo through gRPC, shut down."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.resources import files

from vlmserve.free_ports import free_ports


def register(sub) -> None:
    p = sub.add_parser("demo", help="start the stack on the default model and chat with it through gRPC")
    p.add_argument("--model", default=None, help="checkpoint directory (default: the built-in model)")
    p.add_argument("--image", default=None, help="photo to ask about (default: a bundled photo of a cat)")
    p.add_argument("--question", default="Describe this image.")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.set_defaults(func=run)


def _wait_serving(address: str, proc: subprocess.Popen, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the stack exited with code {proc.returncode} while starting")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise SystemExit(f"the stack did not become SERVING within {timeout:.0f} s")


def run(a) -> int:
    from vlmserve.cli import chat

    if a.model is None:
        from vlmserve.default_model import default_vlm_checkpoint

        print("preparing the default model (SmolLM2-135M-Instruct as the LM of a LLaVA-style VLM whose vision "
              "tower is seeded random: text answers are real, image answers are not)", file=sys.stderr)
        a.model = str(default_vlm_checkpoint())
    image = a.image or str(files("vlmserve") / "data" / "images" / "chelsea.png")
    port, vport = free_ports(2)
    cmd = [sys.executable, "-m", "vlmserve.cli", "serve", "stack", a.model, "--port", str(port),
           "--vision-port", str(vport), "--metrics-port", "-1", "--vision-metrics-port", "-1",
           "--log-level", "warning", "--max-batch-size", "8", "--max-model-len", "2048"]
    print(f"starting: {' '.join(cmd[1:])}", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    try:
        address = f"127.0.0.1:{port}"
        _wait_serving(address, proc, a.startup_timeout)
        rc = 0
        for question, images in (("What is the capital of France?", []), (a.question, [image])):
            print(f"\n>>> {question}" + (f"  [image: {os.path.basename(images[0])}]" if images else ""))
            ns = type("Args", (), dict(address=address, question=question, image=images, max_tokens=64,
                                       temperature=0.0, seed=None, timeout=300.0, api_key=None))
            rc |= chat.run(ns)
        return rc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
