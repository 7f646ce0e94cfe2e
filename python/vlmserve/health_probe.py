"""Exit 0 if a vlmserve service reports SERVING through the standard gRPC
health protocol, 1 otherwise (for container health checks):

    python -m vlmserve.health_probe 127.0.0.1:50051 [--service vlm.v1.LmService] [--timeout 3]
"""
from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=timeout)
        except grpc.RpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmserve.health_probe", description=__doc__.splitlines()[0])
    p.add_argument("address")
    p.add_argument("--service", default="", help="service name ('' = the server as a whole)")
    p.add_argument("--timeout", type=float, default=3.0)
    a = p.parse_args(argv)
    ok = check(a.address, a.service, a.timeout)
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
