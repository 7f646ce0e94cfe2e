"""Prometheus metrics of the services, each server with its own registry (so
several servers can live in one process, as in the tests), exported over HTTP
by prometheus_client."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class RpcMetrics:
    """Every gRPC call, by method and final status code (the observability interceptor)."""

    def __init__(self, registry: CollectorRegistry):
        self.calls = Counter("vlmserve_grpc_server_handled", "gRPC calls finished, by method and status code",
                             ["grpc_method", "grpc_code"], registry=registry)
        self.seconds = Histogram("vlmserve_grpc_server_handling_seconds", "gRPC call duration, by method",
                                 ["grpc_method"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("vlmserve_grpc_server_in_flight", "gRPC calls being served", registry=registry)


class VisionMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.batch_size = Histogram("vlmserve_vision_batch_size", "tiles per vision-tower forward",
                                    buckets=_BATCH_BUCKETS, registry=registry)
        self.batch_seconds = Histogram("vlmserve_vision_batch_seconds", "duration of one vision-tower forward",
                                       buckets=_LATENCY_BUCKETS, registry=registry)
        self.encode_seconds = Histogram("vlmserve_vision_encode_seconds",
                                        "Encode request latency, request received to last message",
                                        buckets=_LATENCY_BUCKETS, registry=registry)
        # An Encode request's time in its two waiting stages: where a loaded service spends it.
        self.preprocess_seconds = Histogram(
            "vlmserve_vision_preprocess_seconds",
            "per Encode request: its images decoded and processed, waiting for a preprocessing thread included",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.batched_encode_seconds = Histogram(
            "vlmserve_vision_batched_encode_seconds",
            "per Encode request: its tiles submitted to their features back (waiting for a batch and the forward)",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.images = Counter("vlmserve_vision_images", "images encoded", registry=registry)
        self.tiles = Counter("vlmserve_vision_tiles", "tiles encoded", registry=registry)
        self.rejected_images = Counter("vlmserve_vision_rejected_images", "images refused as bad input",
                                       registry=registry)
        self.preprocess_on_gpu = Gauge("vlmserve_vision_preprocess_on_gpu",
                                       "1 where the image processor runs on the GPU (--preprocess-device), "
                                       "0 on the host", registry=registry)


def serve_http(registry, port: int, host: str = "0.0.0.0"):
    """Starts the /metrics endpoint in a daemon thread; returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port


class LmMetrics:
    """Latencies per request, and the engine's state read at scrape time."""

    def __init__(self, registry: CollectorRegistry):
        self.ttft = Histogram("vlmserve_lm_time_to_first_token_seconds", "request received to first token",
                              buckets=_LATENCY_BUCKETS, registry=registry)
        self.itl = Histogram("vlmserve_lm_inter_token_latency_seconds", "time between consecutive tokens",
                             buckets=_LATENCY_BUCKETS, registry=registry)
        self.e2e = Histogram("vlmserve_lm_e2e_request_latency_seconds", "request received to last message",
                             buckets=_LATENCY_BUCKETS, registry=registry)
        self.queue = Histogram("vlmserve_lm_queue_time_seconds", "engine queue time (enqueue to first scheduling)",
                               buckets=_LATENCY_BUCKETS, registry=registry)
        self.vision = Histogram("vlmserve_lm_vision_seconds", "time spent in the vision service per request",
                                buckets=_LATENCY_BUCKETS, registry=registry)
        self.finished = Counter("vlmserve_lm_requests_finished", "requests finished, by finish reason",
                                ["reason"], registry=registry)
        self.prompt_tokens = Counter("vlmserve_lm_prompt_tokens", "prompt tokens processed", registry=registry)
        self.generation_tokens = Counter("vlmserve_lm_generation_tokens", "tokens generated", registry=registry)
        self.front_restarts = Counter("vlmserve_lm_front_restarts", "LM front processes (--front-processes) started "
                                      "again after one died", registry=registry)
        self.running = Gauge("vlmserve_lm_running_requests", "requests in the running batch", registry=registry)
        self.waiting = Gauge("vlmserve_lm_waiting_requests", "requests queued in the engine", registry=registry)
        self.kv_usage = Gauge("vlmserve_lm_kv_cache_usage", "fraction of KV cache blocks in use", registry=registry)
        self.kv_free = Gauge("vlmserve_lm_kv_cache_free_blocks", "free KV cache blocks", registry=registry)
        self.steps = Gauge("vlmserve_lm_engine_steps", "engine steps (forward passes) since start; a rate of it "
                           "with the token counters gives the mean batch per step", registry=registry)

    def watch(self, engine) -> None:
        """Engine gauges are read when Prometheus scrapes."""
        self.running.set_function(lambda: engine.stats().running_requests)
        self.waiting.set_function(lambda: engine.stats().waiting_requests)
        self.kv_free.set_function(lambda: engine.stats().free_blocks)
        self.steps.set_function(lambda: engine.stats().steps)

        def usage() -> float:
            s = engine.stats()
            return s.used_blocks / s.total_blocks if s.total_blocks else 0.0

        self.kv_usage.set_function(usage)
