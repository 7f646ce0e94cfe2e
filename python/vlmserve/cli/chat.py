"""vlmserve chat ADDR QUESTION [--image PATH]: stream an answer from an LM service."""
from __future__ import annotations

import sys

import grpc


def register(sub) -> None:
    p = sub.add_parser("chat", help="ask a running LM service a question, streaming the answer")
    p.add_argument("address", help="host:port of the LM service")
    p.add_argument("question")
    p.add_argument("--image", action="append", default=[], help="an image file to send (repeatable)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=300.0, help="deadline of the call, seconds")
    p.add_argument("--api-key", default=None, help="bearer token, if the server requires one")
    p.set_defaults(func=run)


def run(a) -> int:
    from vlmserve.client import LmClient

    client = LmClient(a.address, a.api_key)
    params = {"max_tokens": a.max_tokens, "temperature": a.temperature}
    if a.seed is not None:
        params["seed"] = a.seed
    try:
        for msg in client.chat(a.question, a.image, timeout=a.timeout, **params):
            sys.stdout.write(msg.text)
            sys.stdout.flush()
            if msg.finish_reason:
                u, t = msg.usage, msg.timings
                print(f"\n[{u.completion_tokens} tokens, {u.prompt_tokens} prompt ({u.image_tokens} image), "
                      f"vision {t.vision_ns / 1e6:.0f} ms, first token after {(t.total_ns - t.decode_ns) / 1e6:.0f} ms, "
                      f"total {t.total_ns / 1e6:.0f} ms]", file=sys.stderr)
    except grpc.RpcError as e:
        print(f"\nvlmserve chat: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0
