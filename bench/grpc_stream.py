#!/usr/bin/env python3
"""What one streamed gRPC message costs the server: a grpc.aio server streams vlm.v1.GenerateResponse messages of
k token ids (and text) to many concurrent client streams in another process; the server process's CPU time
(user + system, every thread) is divided by the messages and by the tokens sent. This is the per-message work
the LM service's event loop does for every token it streams, and what --stream-interval divides.

    python3 bench/grpc_stream.py --tokens-per-message 1,2,4,8 --streams 256 --tokens 400
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def _server(port_q, done_q, k: int) -> None:
    import grpc

    from vlmserve.services import protos

    lm = protos.lm()

    async def generate(raw, context):
        for i in range(int(raw.decode())):
            msg = lm.GenerateResponse(text="word" * k)
            msg.token_ids.extend(range(i, i + k))
            yield msg

    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Stream", {
            "Generate": grpc.unary_stream_rpc_method_handler(
                generate, response_serializer=lm.GenerateResponse.SerializeToString)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        r = resource.getrusage(resource.RUSAGE_SELF)
        port_q.put((port, r.ru_utime + r.ru_stime))
        await asyncio.get_running_loop().run_in_executor(None, done_q.get)
        r = resource.getrusage(resource.RUSAGE_SELF)
        port_q.put(r.ru_utime + r.ru_stime)
        await server.stop(0)

    asyncio.run(main())


def _client(port: int, streams: int, messages: int) -> tuple[int, float]:
    import grpc

    async def main():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/bench.Stream/Generate", request_serializer=lambda x: x,
                                        response_deserializer=lambda b: b)

            async def one() -> int:
                return sum([1 async for _ in call(str(messages).encode())])

            start = time.perf_counter()
            counts = await asyncio.gather(*(one() for _ in range(streams)))
            return sum(counts), time.perf_counter() - start

    return asyncio.run(main())


def measure(k: int, streams: int, tokens: int) -> dict:
    # spawn, not fork: a process that has already started gRPC (or threads) cannot safely fork a gRPC server.
    ctx = mp.get_context("spawn")
    port_q, done_q = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_server, args=(port_q, done_q, k))
    proc.start()
    try:
        port, cpu0 = port_q.get(timeout=60)
        messages, seconds = _client(port, streams, max(1, tokens // k))
        done_q.put(1)
        cpu = port_q.get(timeout=60) - cpu0
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    sent = messages * k
    return {"tokens_per_message": k, "streams": streams, "messages": messages, "tokens": sent, "seconds": seconds,
            "server_cpu_s": cpu, "us_per_message": cpu / messages * 1e6, "us_per_token": cpu / sent * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens-per-message", default="1,2,4,8")
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=400, help="tokens each stream receives")
    a = ap.parse_args()
    print("| tokens a message | messages | server CPU s | µs a message | µs a token |")
    print("|---|---|---|---|---|")
    for k in (int(x) for x in a.tokens_per_message.split(",") if x):
        r = measure(k, a.streams, a.tokens)
        print(f"| {k} | {r['messages']:,} | {r['server_cpu_s']:.2f} | {r['us_per_message']:.1f} | "
              f"{r['us_per_token']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
