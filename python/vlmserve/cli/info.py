"""vlmserve info ADDR: describe the model and limits of a running LM service."""
from __future__ import annotations

import sys

import grpc


def register(sub) -> None:
    p = sub.add_parser("info", help="show the model and limits of a running LM service")
    p.add_argument("address", help="host:port of the LM service")
    p.add_argument("--api-key", default=None)
    p.set_defaults(func=run)


def run(a) -> int:
    from google.protobuf import json_format

    from vlmserve.client import LmClient

    client = LmClient(a.address, a.api_key)
    try:
        print(json_format.MessageToJson(client.info(), always_print_fields_with_no_presence=True))
    except grpc.RpcError as e:
        print(f"vlmserve info: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0
