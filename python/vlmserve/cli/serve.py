"""vlmserve serve SERVICE ...: run one of the gRPC services until SIGTERM.

Each service is an entry of SERVICES: a function that adds its flags and one
that runs it. Every flag has an environment twin, VLMSERVE_ + the flag name in
upper snake case (--metrics-port: VLMSERVE_METRICS_PORT); the flag wins."""
from __future__ import annotations

import argparse
import os

_TRUE = ("1", "true", "yes", "on")


def _env_name(flag: str) -> str:
    return "VLMSERVE_" + flag.lstrip("-").replace("-", "_").upper()


def flag(p: argparse.ArgumentParser, name: str, *, type=str, default=None, help: str = "", **kwargs) -> None:
    """An option whose default comes from its environment twin when set."""
    env = _env_name(name)
    raw = os.environ.get(env)
    if type is bool:
        value = default if raw is None else raw.strip().lower() in _TRUE
        p.add_argument(name, action=argparse.BooleanOptionalAction, default=value, help=f"{help} [{env}]", **kwargs)
        return
    value = default if raw is None else type(raw)
    p.add_argument(name, type=type, default=value, help=f"{help} [{env}; default: %(default)s]", **kwargs)


def add_server_args(p: argparse.ArgumentParser, port: int, metrics_port: int) -> None:
    """Flags every gRPC service shares."""
    flag(p, "--host", default="0.0.0.0", help="address to bind")
    flag(p, "--port", type=int, default=port, help="gRPC port (0: pick a free one)")
    flag(p, "--metrics-host", default="0.0.0.0", help="address of the Prometheus endpoint")
    flag(p, "--metrics-port", type=int, default=metrics_port, help="Prometheus /metrics port (-1: off)")
    flag(p, "--tls-cert", help="PEM certificate chain; serves TLS together with --tls-key")
    flag(p, "--tls-key", help="PEM private key of --tls-cert")
    flag(p, "--api-key", help="require 'authorization: Bearer API_KEY' on every call but health checks")
    flag(p, "--max-message-size", type=int, default=64 * 1024 * 1024, help="largest request or response, bytes")
    flag(p, "--keepalive-time", type=float, default=60.0, help="seconds between keepalive pings")
    flag(p, "--keepalive-timeout", type=float, default=20.0, help="seconds to wait for a ping's answer")
    flag(p, "--shutdown-timeout", type=float, default=30.0,
         help="seconds calls in flight get to finish after SIGTERM")
    flag(p, "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")


def server_config_from_args(a: argparse.Namespace):
    from vlmserve.services.server import ServerConfig

    return ServerConfig(host=a.host, port=a.port, metrics_host=a.metrics_host,
                        metrics_port=None if a.metrics_port < 0 else a.metrics_port, tls_cert=a.tls_cert,
                        tls_key=a.tls_key, bearer_token=a.api_key, max_message_bytes=a.max_message_size,
                        keepalive_time_s=a.keepalive_time, keepalive_timeout_s=a.keepalive_timeout,
                        shutdown_grace_s=a.shutdown_timeout)


# -- vision -----------------------------------------------------------------------------------------

def add_vision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?" if os.environ.get("VLMSERVE_MODEL") else None,
                   default=os.environ.get("VLMSERVE_MODEL"),
                   help="checkpoint directory of the VLM (only its vision tower and projector are loaded) "
                        "[VLMSERVE_MODEL]")
    add_server_args(p, port=50052, metrics_port=9092)
    flag(p, "--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
         help="compute dtype (auto: float32 on the CPU, the checkpoint's on CUDA)")
    flag(p, "--device", default="auto", help="auto, cpu, cuda or cuda:N")
    flag(p, "--vision-max-batch-size", type=int, default=16,
         help="most image tiles per forward, across requests (a tiled image counts each tile)")
    flag(p, "--vision-batch-window-ms", type=float, default=5.0,
         help="how long a batch waits for more tiles after its first")
    flag(p, "--max-images-per-request", type=int, default=16, help="most images one Encode request may carry")
    flag(p, "--max-image-pixels", type=int, default=64 * 1024 * 1024,
         help="most pixels (width*height) an image may have; checked before decoding")
    flag(p, "--min-image-size", type=int, default=2, help="smallest width and height accepted, pixels")
    flag(p, "--max-image-bytes", type=int, default=32 * 1024 * 1024, help="largest encoded image, bytes")
    flag(p, "--allowed-media-domains", default="",
         help="comma-separated hosts ('*.example.com' for subdomains) whose http(s) image URLs may be "
              "fetched; empty: URL fetching is off")
    flag(p, "--image-fetch-timeout", type=float, default=10.0, help="seconds to fetch an image URL")
    flag(p, "--trust-remote-code", type=bool, default=False,
         help="allow the checkpoint's own Python code (config, image processor)")
    flag(p, "--preprocess-threads", type=int, default=2, help="threads decoding and preprocessing images")
    flag(p, "--max-chunk-bytes", type=int, default=1 << 20, help="largest embedding chunk sent, bytes")


def run_vision(a: argparse.Namespace) -> int:
    import asyncio

    from vlmserve.services import log
    from vlmserve.services.vision_server import VisionServer
    from vlmserve.vision.config import VisionConfig

    log.configure(a.log_level)
    vision = VisionConfig(dtype=a.dtype, device=a.device, max_batch_size=a.vision_max_batch_size,
                          batch_window_ms=a.vision_batch_window_ms, max_image_pixels=a.max_image_pixels,
                          min_image_size=a.min_image_size, max_images_per_request=a.max_images_per_request,
                          max_image_bytes=a.max_image_bytes,
                          allowed_url_hosts=tuple(a.allowed_media_domains.split(",")),
                          url_timeout_s=a.image_fetch_timeout, trust_remote_code=a.trust_remote_code,
                          preprocess_threads=a.preprocess_threads)
    server_config = server_config_from_args(a)

    async def serve() -> None:
        # grpc.aio binds the server to the loop it is created in: create it inside.
        await VisionServer(a.model, vision, server_config, max_chunk_bytes=a.max_chunk_bytes).run()

    asyncio.run(serve())
    return 0


# name -> (help, add its flags, run it). `lm` and `stack` join here.
SERVICES = {
    "vision": ("the vision encoder service (images -> embeddings)", add_vision_args, run_vision),
}


def register(sub) -> None:
    p = sub.add_parser("serve", help="run a gRPC service until SIGTERM", description=__doc__.splitlines()[0])
    services = p.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for name, (help_text, add_args, run) in SERVICES.items():
        sp = services.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
        sp.set_defaults(func=run)
