"""Security defaults: the bearer-token check (health stays open for probes) and TLS."""
from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import vision_client as vc
from conftest import image_bytes
from test_vision_service import _metric


def _code(fn) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def test_bearer_token(start_server):
    server = start_server("llava", bearer_token="s3cret")
    image = [vc.image_input(image_bytes("chelsea.png"))]
    with grpc.insecure_channel(server.address) as channel:
        stub = vc.stub(channel)
        assert _code(lambda: vc.encode(stub, image)) == (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        assert _code(lambda: vc.encode(stub, image, metadata=(("authorization", "Bearer nope"),))) == (
            grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        assert _code(lambda: vc.encode(stub, image, metadata=(("authorization", "s3cret"),)))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        out, _ = vc.encode(stub, image, metadata=(("authorization", "Bearer s3cret"),))
        assert out[0].header.num_tokens == 16
        # Orchestrators probe health without the secret.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    handled = _metric(server.metrics_text(), "vlmserve_grpc_server_handled", {"grpc_code": "UNAUTHENTICATED"})
    assert sum(handled.values()) == 3


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make a test certificate")
def test_tls(start_server, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = start_server("llava", tls_cert=str(cert), tls_key=str(key))
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(f"localhost:{server.port}", creds) as channel:
        out, _ = vc.encode(vc.stub(channel), [vc.image_input(image_bytes("chelsea.png"))])
        assert out[0].header.num_tokens == 16
    with grpc.insecure_channel(f"localhost:{server.port}") as plain:
        code, _ = _code(lambda: vc.encode(vc.stub(plain), [vc.image_input(image_bytes("chelsea.png"))], timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE
