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
        self.images = Counter("vlmserve_vision_images", "images encoded", registry=registry)
        self.tiles = Counter("vlmserve_vision_tiles", "tiles encoded", registry=registry)
        self.rejected_images = Counter("vlmserve_vision_rejected_images", "images refused as bad input",
                                       registry=registry)


def serve_http(registry: CollectorRegistry, port: int, host: str = "0.0.0.0"):
    """Starts the /metrics endpoint in a daemon thread; returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port
