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
    flag(p, "--grpc-acceptors", type=int, default=1,
         help="gRPC servers sharing the port in this process, each starting new calls on its own: grpc.aio "
              "starts a server's calls one at a time, a few event-loop iterations each, so a busy loop starts "
              "few a second (the client connections are spread over the acceptors)")
    flag(p, "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    flag(p, "--gil-switch-interval-ms", type=float, default=DEFAULT_SWITCH_INTERVAL_MS,
         help="how long a Python thread may keep the GIL while another waits for it (Python's own: 5 ms). A "
              "service's event loop and its engine or forward thread hold it most of the time, and every thread "
              "that hands work over (result readers, pollers, executors) waits that long at each step: beside two "
              "GIL-holding threads the preprocessing pool delivered 7.2 images/s at 5 ms and 60.9 at 0.5 ms "
              "(bench/preprocess_pool.py, 2 cores)")


# The services' GIL switch interval (bench/preprocess_pool.py, 2-core CPU, 2026-12-04: tiles through shared memory
# beside two GIL-holding threads, 7.2 images/s at Python's 5 ms, 29.0 at 1 ms, 60.9 at 0.5 ms).
DEFAULT_SWITCH_INTERVAL_MS = 0.5


def apply_process_settings(a: argparse.Namespace) -> None:
    """Settings of the whole service process, applied before anything starts."""
    import sys

    from vlmserve.errors import InvalidArgumentError

    ms = a.gil_switch_interval_ms
    if not 0.01 <= ms <= 100:
        raise InvalidArgumentError(f"--gil-switch-interval-ms must be in [0.01, 100], got {ms!r}")
    sys.setswitchinterval(ms / 1e3)


def server_config_from_args(a: argparse.Namespace):
    from vlmserve.services.server import ServerConfig

    return ServerConfig(host=a.host, port=a.port, metrics_host=a.metrics_host,
                        metrics_port=None if a.metrics_port < 0 else a.metrics_port, tls_cert=a.tls_cert or None,
                        tls_key=a.tls_key or None, bearer_token=a.api_key or None, max_message_bytes=a.max_message_size,
                        keepalive_time_s=a.keepalive_time, keepalive_timeout_s=a.keepalive_timeout,
                        shutdown_grace_s=a.shutdown_timeout, acceptors=a.grpc_acceptors,
                        event_loops=getattr(a, "grpc_event_loops", 1))


# -- vision -----------------------------------------------------------------------------------------

VISION_TP_HELP = ("replicas of the vision encoder, one per GPU (cuda:0.., or from cuda:K with --device cuda:K; "
                  "separate copies on the CPU): a ~300M ViT fits on every GPU, and whole copies multiply image "
                  "throughput where a tensor-parallel split would add two all-reduces per layer")
STACK_TP_HELP = ("tensor parallelism: split the language model over this many GPUs, and run one vision encoder "
                 "replica on each of them (a ~300M ViT is copied whole rather than split)")


def add_vision_args(p: argparse.ArgumentParser, tp_help: str = VISION_TP_HELP) -> None:
    _model_arg(p, "checkpoint directory of the VLM (the vision service loads only its vision tower and "
                  "projector)")
    add_server_args(p, port=50052, metrics_port=9092)
    flag(p, "--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
         help="compute dtype (auto: float32 on the CPU, the checkpoint's on CUDA)")
    flag(p, "--device", default="auto", help="auto, cpu, cuda or cuda:N")
    flag(p, "--tp", type=int, default=1, help=tp_help)
    flag(p, "--vision-max-batch-size", type=int, default=16,
         help="most image tiles per forward, across requests (a tiled image counts each tile)")
    flag(p, "--vision-batch-window-ms", type=float, default=5.0,
         help="how long a batch waits for more tiles after its first, while images of requests in flight "
              "are still being prepared (none left: it closes at once)")
    flag(p, "--vision-cuda-graphs", type=bool, default=True,
         help="replay the vision encoder's forward from CUDA graphs (one per batch size, captured at start-up); "
              "--no-vision-cuda-graphs runs it eagerly")
    flag(p, "--vision-compile", type=bool, default=False,
         help="compile the vision encoder's forward with torch.compile at start-up (CUDA only; fuses its "
              "elementwise kernels; start-up takes longer by the compilation)")
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
    flag(p, "--preprocess-threads", type=int, default=None,
         help="threads decoding and preprocessing images (unset: one per core, at least 2 and at most 8)")
    flag(p, "--preprocess-processes", type=bool, default=None,
         help="decode and preprocess images in worker processes (--no-preprocess-processes: threads of the "
              "service process); unset: processes when the encoder runs on CUDA, threads on the CPU")
    flag(p, "--preprocess-device", default="cpu", choices=("auto", "cpu", "cuda"),
         help="where the image processor resizes and normalizes (decoding is on the host): cuda, on the "
              "encoder's GPU in threads of the service (needs a torchvision-backed processor; warns where its "
              "values differ from the host's); cpu, on the host; auto, cuda where it runs with the host's values, "
              "else cpu")
    flag(p, "--max-chunk-bytes", type=int, default=1 << 20, help="largest embedding chunk sent, bytes")


def run_vision(a: argparse.Namespace) -> int:
    import asyncio

    from vlmserve.services import log
    from vlmserve.services.vision_server import VisionServer

    log.configure(a.log_level)
    apply_process_settings(a)
    vision = vision_config_from_args(a)
    server_config = server_config_from_args(a)
    model = _resolve_model(a)

    async def serve() -> None:
        # grpc.aio binds the server to the loop it is created in: create it inside.
        await VisionServer(model, vision, server_config, max_chunk_bytes=a.max_chunk_bytes).run()

    asyncio.run(serve())
    return 0


def vision_config_from_args(a: argparse.Namespace):
    from vlmserve.vision.config import VisionConfig

    threads = {} if a.preprocess_threads is None else {"preprocess_threads": a.preprocess_threads}
    threads["preprocess_processes"] = a.preprocess_processes
    threads["preprocess_device"] = a.preprocess_device
    return VisionConfig(dtype=a.dtype, device=a.device, max_batch_size=a.vision_max_batch_size,
                        batch_window_ms=a.vision_batch_window_ms, max_image_pixels=a.max_image_pixels,
                        min_image_size=a.min_image_size, max_images_per_request=a.max_images_per_request,
                        max_image_bytes=a.max_image_bytes,
                        allowed_url_hosts=tuple(a.allowed_media_domains.split(",")),
                        url_timeout_s=a.image_fetch_timeout, trust_remote_code=a.trust_remote_code,
                        replicas=a.tp, **threads,
                        cuda_graphs=a.vision_cuda_graphs, compile=a.vision_compile)


# -- lm ---------------------------------------------------------------------------------------------

def _model_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("model", nargs="?", default=os.environ.get("VLMSERVE_MODEL"),
                   help=f"{help_text} [VLMSERVE_MODEL; default: the built-in SmolLM2-135M LLaVA-style model]")


def add_engine_flags(p: argparse.ArgumentParser, tp: bool = True) -> None:
    """Engine flags (LMDeploy/vLLM names), each with its VLMSERVE_ twin. tp=False leaves --tp out, for a
    parser that already has one meaning more than the engine's split (the stack's)."""
    flag(p, "--model-format", default="auto", choices=["auto", "hf", "awq"], help="weight format")
    flag(p, "--kv-cache-dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16", "int8", "int4"],
         help="KV cache element type")
    flag(p, "--quant-policy", type=int, default=None, choices=[0, 4, 8], help="LMDeploy spelling: 8 int8, 4 int4 KV")
    flag(p, "--max-batch-size", type=int, default=64, help="most requests decoding at once")
    flag(p, "--max-model-len", type=int, default=None, help="context length (prompt + output)")
    flag(p, "--cache-max-entry-count", type=float, default=0.8, help="fraction of free memory for the KV cache")
    flag(p, "--num-kv-blocks", type=int, default=0, help="exact KV block count (overrides the fraction)")
    flag(p, "--block-size", type=int, default=64, help="tokens per KV block")
    flag(p, "--max-num-batched-tokens", type=int, default=2048, help="tokens per engine step (chunked prefill)")
    flag(p, "--prefill-hold-steps", type=int, default=0,
         help="while requests run, new ones wait up to this many engine steps to enter together (sooner when "
         "their prompts fill a step's token budget or the batch): fewer, fuller prefill steps; 0: each "
         "at the next step")
    flag(p, "--engine-device", default="auto", choices=["auto", "cpu", "cuda"], help="engine backend")
    flag(p, "--threads", type=int, default=0, help="CPU engine threads (0: all cores)")
    if tp:
        flag(p, "--tp", type=int, default=1, help="tensor parallelism: split the language model over this many GPUs")


def engine_config_from_flags(a: argparse.Namespace):
    from vlmserve.config import EngineConfig

    return EngineConfig(model_format=a.model_format, kv_cache_dtype=a.kv_cache_dtype, quant_policy=a.quant_policy,
                        max_batch_size=a.max_batch_size, max_model_len=a.max_model_len,
                        cache_max_entry_count=a.cache_max_entry_count, num_kv_blocks=a.num_kv_blocks,
                        block_size=a.block_size, max_num_batched_tokens=a.max_num_batched_tokens,
                        prefill_hold_steps=a.prefill_hold_steps, device=a.engine_device, threads=a.threads,
                        tp=a.tp)


def add_stream_interval_flag(p: argparse.ArgumentParser) -> None:
    flag(p, "--stream-interval", type=int, default=1,
         help="tokens per response message after the first (sent alone at once); the last may carry fewer. "
              "Larger values spend less of the LM service's event loop per token at many concurrent streams")


def add_lm_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p, "checkpoint directory (HF or AWQ) of the language model or VLM")
    add_server_args(p, port=50051, metrics_port=9091)
    add_engine_flags(p)
    flag(p, "--vision-addr", default="", help="vision service: host:port, h1:p1,h2:p2 or dns:///name:port "
                                             "(round-robin); empty: text only")
    flag(p, "--vision-api-key", help="bearer token for the vision service")
    flag(p, "--max-images-per-request", type=int, default=16, help="most images one Chat request may carry")
    add_stream_interval_flag(p)
    flag(p, "--trust-remote-code", type=bool, default=False, help="allow the checkpoint's tokenizer code")
    add_event_loops_flag(p)
    flag(p, "--front-processes", type=int, default=1,
         help="processes serving the port around the one engine: this one and N - 1 started beside it, each doing "
              "its calls' gRPC, vision calls, templating and detokenizing, their requests sent to this process's "
              "engine over a pipe. A process starts new calls only as fast as its event loop turns; under hundreds "
              "of streams more processes start them sooner. /metrics (this process's port) sums every process's "
              "metrics, the fronts' as of their last snapshot (one a second)")


def add_event_loops_flag(p: argparse.ArgumentParser) -> None:
    flag(p, "--grpc-event-loops", type=int, default=1,
         help="event loops serving the LM service's port, each further one in a thread with its own gRPC server: "
              "a loop starts new calls a few of its iterations apart, whatever its servers, so under hundreds of "
              "streams a busy loop makes them wait before their handler (bench/grpc_accept.py); a second loop "
              "takes about half the connections and their streams")


def _resolve_model(a: argparse.Namespace) -> str:
    if a.model:
        return a.model
    from vlmserve.default_model import default_vlm_checkpoint

    return str(default_vlm_checkpoint())


def run_lm(a: argparse.Namespace) -> int:
    import asyncio

    from vlmserve.services import log
    from vlmserve.services.lm_server import LmLimits, LmServer

    log.configure(a.log_level)
    apply_process_settings(a)
    model = _resolve_model(a)
    limits = LmLimits(vision_addr=a.vision_addr or None, vision_api_key=a.vision_api_key or None,
                      max_images_per_request=a.max_images_per_request, trust_remote_code=a.trust_remote_code,
                      stream_interval=a.stream_interval)
    engine_config, server_config = engine_config_from_flags(a), server_config_from_args(a)

    async def serve() -> None:
        await LmServer(model, engine_config, limits, server_config, front_processes=a.front_processes).run()

    asyncio.run(serve())
    return 0


# -- stack ------------------------------------------------------------------------------------------

def add_stack_args(p: argparse.ArgumentParser) -> None:
    # The model, the LM port flags, every vision flag and --tp, which here also sets the engine's split.
    add_vision_args(p, tp_help=STACK_TP_HELP)
    for name, default in (("port", 50051), ("metrics_port", 9091)):  # --port/--metrics-port are the LM's here
        if _env_name(name) not in os.environ:
            p.set_defaults(**{name: default})
    add_engine_flags(p, tp=False)
    add_stream_interval_flag(p)
    add_event_loops_flag(p)
    flag(p, "--vision-port", type=int, default=50052, help="port of the vision service (0: pick a free one)")
    flag(p, "--vision-metrics-port", type=int, default=9092, help="Prometheus port of the vision service (-1: off)")


def run_stack(a: argparse.Namespace) -> int:
    """Both services in one process: the vision service on --vision-port, the LM service on --port."""
    import asyncio
    import dataclasses

    from vlmserve.services import log
    from vlmserve.services.lm_server import LmLimits, LmServer
    from vlmserve.services.server import serve_until_signal
    from vlmserve.services.vision_server import VisionServer

    log.configure(a.log_level)
    apply_process_settings(a)
    model = _resolve_model(a)
    lm_server_config = server_config_from_args(a)
    vision_server_config = dataclasses.replace(
        lm_server_config, host="127.0.0.1", port=a.vision_port, event_loops=1,
        metrics_port=None if a.vision_metrics_port < 0 else a.vision_metrics_port)

    async def serve() -> None:
        vision = VisionServer(model, vision_config_from_args(a), vision_server_config, a.max_chunk_bytes)
        lm: list[LmServer] = []

        async def start() -> None:
            vport = await vision.start()
            lm.append(LmServer(model, engine_config_from_flags(a),
                               LmLimits(vision_addr=f"127.0.0.1:{vport}", vision_api_key=a.api_key or None,
                                        max_images_per_request=a.max_images_per_request,
                                        trust_remote_code=a.trust_remote_code,
                                        stream_interval=a.stream_interval), lm_server_config))
            await lm[0].start()

        async def load() -> None:
            # transformers resolves its names lazily and not thread-safely: two loader threads
            # importing it for the first time at once can fail with "cannot import name". Resolve
            # what both loaders use here, on one thread, first.
            from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer  # noqa: F401

            # The LM goes SERVING only once the vision service it calls is SERVING too.
            await asyncio.gather(vision.load(), lm[0].load(go_serving=False))
            await lm[0].set_serving()

        async def stop() -> None:
            if lm:
                await lm[0].stop()  # drains chats first, while the vision service still answers them
            await vision.stop()

        await serve_until_signal(start, load, stop)

    asyncio.run(serve())
    return 0


# name -> (help, add its flags, run it).
SERVICES = {
    "vision": ("the vision encoder service (images -> embeddings)", add_vision_args, run_vision),
    "lm": ("the language-model service (chat -> streamed tokens)", add_lm_args, run_lm),
    "stack": ("both services in one process, the LM using the local vision service", add_stack_args, run_stack),
}


def register(sub) -> None:
    p = sub.add_parser("serve", help="run a gRPC service until SIGTERM", description=__doc__.splitlines()[0])
    services = p.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for name, (help_text, add_args, run) in SERVICES.items():
        sp = services.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
        sp.set_defaults(func=run)
