#!/usr/bin/env python3
"""How long a burst of new calls waits for a busy grpc.aio server to start them: a server process whose event loop
is kept busy by callbacks of a fixed length (standing in for the LM service's token streams and engine events)
receives a burst of server-streaming calls, each with a 70 KB request (an image's size), from another process over
several connections; the client records when each call's response headers (sent first thing by the handler)
arrive. grpc.aio's server takes new calls from the core one at a time in a loop of its own on the event loop, so
each call it starts costs an iteration of a loop that is busy with everything else: the wait grows with the
burst times the iteration. With --servers N, N servers share the port (SO_REUSEPORT: the kernel spreads the
connections over them), each taking calls in its own loop.

--closed-loop S runs the serving benchmark's pattern instead of bursts: --calls streams, each starting its next
call as soon as the last ends, for S seconds, every call held open --hold-s after its headers (the generation);
it reports the calls started a second and how long they waited. A server takes a call in about five iterations
of its loop (grpc 1.85: the request task starts, its completion arrives, the task ends, asyncio.wait wakes, the
next request task is made), so a loop of 1.6 ms iterations starts at most ~125 calls a second, whatever the
machine: where the streams want more, calls queue for their headers.

    python3 bench/grpc_accept.py --servers 1,2 --calls 256 --burners 2
    python3 bench/grpc_accept.py --servers 1,4 --calls 256 --burners 2 --burn-ms 0.8 --closed-loop 20 --hold-s 2

Every call carries the client's wall clock; the server's interceptor and handler stamp theirs, so the report also
splits the wait into before the interceptor (the call not yet accepted from the core) and after it, and gives the
gap between consecutive handler starts. --blocking-burn makes the busy callbacks sleep instead of spin: the loop's
iterations as long, the CPU and the interpreter lock free. --server-processes N runs N such server processes on
the port, each with its own loop; --event-loops N runs N loops in each server process (the others in threads).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import threading
import time


def _busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def _server(port_q, stop_q, servers: int, burn_ms: float, burners: int, hold_s: float = 0.3,
            blocking_burn: bool = False, stamps_q=None, port: int = 0, event_loops: int = 1,
            switch_interval_ms: float | None = None) -> None:
    """One server process on `port` (0: a free one, put on port_q): `event_loops` event loops (the process's and
    each further one in a thread), each with `servers` grpc.aio servers and `burners` busy callbacks."""
    import grpc

    if switch_interval_ms is not None:
        sys.setswitchinterval(switch_interval_ms / 1e3)

    # Per call: the client's wall clock when it sent the call (its metadata), when the server's interceptor saw it
    # (the call accepted from the core) and when the handler started (its request read).
    stamps: list[tuple[float, float, float]] = []

    class Stamp(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            seen = time.time()
            sent = float(dict(details.invocation_metadata or ()).get("x-sent", "0") or 0)
            handler = await continuation(details)

            async def stamped(raw, context):
                stamps.append((sent, seen, time.time()))
                async for item in handler.unary_stream(raw, context):
                    yield item
            return grpc.unary_stream_rpc_method_handler(stamped)

    async def handler(raw, context):
        await context.send_initial_metadata((("x-started", "1"),))
        await asyncio.sleep(hold_s)  # the call stays open, as a generation does
        yield b"done"

    async def burner():
        while True:
            # Spinning takes a core and the interpreter lock; sleeping holds only the loop (both free).
            time.sleep(burn_ms / 1e3) if blocking_burn else _busy(burn_ms)
            await asyncio.sleep(0)

    async def serve(bound: int):
        """This loop's servers on the port and its busy callbacks."""
        made = []
        for _ in range(servers):
            s = grpc.aio.server(interceptors=[Stamp()], options=[("grpc.so_reuseport", 1)])
            s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Accept", {
                "Go": grpc.unary_stream_rpc_method_handler(handler)}),))
            bound = s.add_insecure_port(f"127.0.0.1:{bound}")
            await s.start()
            made.append(s)
        return bound, made, [asyncio.create_task(burner()) for _ in range(burners)]

    async def shut(made, tasks) -> None:
        for t in tasks:
            t.cancel()
        for s in made:
            await s.stop(0)

    async def main():
        bound, made, tasks = await serve(port)
        further = []
        for _ in range(1, event_loops):
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, daemon=True)
            thread.start()
            _, m, t = asyncio.run_coroutine_threadsafe(serve(bound), loop).result(60)
            further.append((loop, thread, m, t))
        port_q.put(bound)
        await asyncio.get_running_loop().run_in_executor(None, stop_q.get)
        if stamps_q is not None:
            stamps_q.put(list(stamps))
        await shut(made, tasks)
        for loop, thread, m, t in further:
            asyncio.run_coroutine_threadsafe(shut(m, t), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    asyncio.run(main())


async def _stubs(port: int, channels: int) -> tuple[list, list]:
    """`channels` connections of their own (no shared subchannel, as separate client processes would have), ready,
    and a Go stub on each."""
    import grpc

    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    for c in chans:
        await c.channel_ready()
    return chans, [c.unary_stream("/bench.Accept/Go", request_serializer=lambda x: x,
                                  response_deserializer=lambda b: b) for c in chans]


async def _timed_call(stub) -> float:
    """One call with a 70 KB request (an image's size): seconds until its response headers; then read to its end."""
    start = time.perf_counter()
    call = stub(b"x" * 70_000, metadata=(("x-sent", repr(time.time())),))
    await call.initial_metadata()
    waited = time.perf_counter() - start
    async for _ in call:
        pass
    return waited


def _bursts(port: int, calls: int, channels: int, bursts: int) -> list[float]:
    async def main():
        chans, stubs = await _stubs(port, channels)
        out = []
        for _ in range(bursts):
            out += await asyncio.gather(*(_timed_call(stubs[i % channels]) for i in range(calls)))
        for c in chans:
            await c.close()
        return out

    return asyncio.run(main())


def _closed_loop(port: int, streams: int, channels: int, seconds: float, out_q) -> None:
    """Client process: `streams` streams over `channels` connections, each call after the last, for `seconds`;
    puts the header waits of the calls that started in that time."""
    async def main():
        chans, stubs = await _stubs(port, channels)
        end = time.perf_counter() + seconds
        waits: list[float] = []

        async def stream(i: int) -> None:
            while time.perf_counter() < end:
                waits.append(await _timed_call(stubs[i % channels]))

        await asyncio.gather(*(stream(i) for i in range(streams)))
        for c in chans:
            await c.close()
        return waits

    out_q.put(asyncio.run(main()))


def _summary(waits: list[float]) -> dict:
    waits = sorted(waits)
    return {"calls": len(waits), "headers_mean_s": statistics.mean(waits), "headers_p50_s": waits[len(waits) // 2],
            "headers_p90_s": waits[int(len(waits) * 0.9)], "headers_max_s": waits[-1]}


def _stamp_summary(stamps: list[tuple[float, float, float]]) -> dict:
    """Where a call's wait went (the first fifth left out as warm-up): client send -> the server's interceptor (the
    call accepted from the core), interceptor -> handler (its request read), and the gaps between consecutive
    handler starts (calls started one at a time show a steady gap)."""
    stamps = sorted(stamps[len(stamps) // 5:], key=lambda t: t[2])
    if len(stamps) < 2:
        return {}
    starts = [t[2] for t in stamps]
    gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
    return {"to_interceptor_mean_s": statistics.mean(t[1] - t[0] for t in stamps),
            "interceptor_to_handler_mean_s": statistics.mean(t[2] - t[1] for t in stamps),
            "start_gap_p50_s": gaps[len(gaps) // 2], "start_gap_p90_s": gaps[int(len(gaps) * 0.9)]}


def measure(servers: int, calls: int, channels: int = 8, burn_ms: float = 0.5, burners: int = 2,
            bursts: int = 3, closed_loop_s: float = 0.0, hold_s: float = 0.3, client_processes: int = 2,
            blocking_burn: bool = False, server_processes: int = 1, event_loops: int = 1,
            switch_interval_ms: float | None = None) -> dict:
    """Bursts of `calls` calls, or (closed_loop_s > 0) `calls` streams in a closed loop spread over
    `client_processes` processes and `channels` connections; against `server_processes` processes of
    `event_loops` loops of `servers` servers each, all on one port (the kernel spreads the connections over them),
    each loop with its own busy callbacks."""
    ctx = mp.get_context("spawn")
    port_q, stop_q, stamps_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    procs, port = [], 0
    try:
        for _ in range(server_processes):
            procs.append(ctx.Process(target=_server, args=(port_q, stop_q, servers, burn_ms, burners, hold_s,
                                                           blocking_burn, stamps_q, port, event_loops,
                                                           switch_interval_ms)))
            procs[-1].start()
            port = port_q.get(timeout=60)
        if closed_loop_s <= 0:
            waits = _bursts(port, calls, channels, bursts)
        else:
            out_q = ctx.Queue()
            clients = [ctx.Process(target=_closed_loop, args=(port, share, max(1, channels // client_processes),
                                                              closed_loop_s, out_q))
                       for share in (calls // client_processes + (k < calls % client_processes)
                                     for k in range(client_processes)) if share]
            for c in clients:
                c.start()
            waits = [w for _ in clients for w in out_q.get(timeout=closed_loop_s + hold_s + 120)]
            for c in clients:
                c.join(30)
    finally:
        for _ in procs:
            stop_q.put(1)
    stamps = [t for _ in procs for t in stamps_q.get(timeout=60)]
    for proc in procs:
        proc.join(30)
    r = {"servers": servers, "server_processes": server_processes, "event_loops": event_loops,
         "burners": burners, "burn_ms": burn_ms,
         "blocking_burn": blocking_burn,
         **_summary(waits), **_stamp_summary(stamps)}
    if closed_loop_s > 0:
        r["calls_per_s"] = len(waits) / closed_loop_s
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", default="1,2", help="servers sharing the port, one run each")
    ap.add_argument("--calls", type=int, default=256, help="calls in a burst")
    ap.add_argument("--channels", type=int, default=8, help="client connections")
    ap.add_argument("--burners", type=int, default=2, help="callbacks keeping the server's event loop busy")
    ap.add_argument("--burn-ms", type=float, default=0.5, help="length of each busy callback")
    ap.add_argument("--closed-loop", type=float, default=0.0, metavar="S",
                    help="seconds of closed-loop streams (--calls of them) instead of bursts")
    ap.add_argument("--hold-s", type=float, default=0.3, help="how long each call stays open after its headers")
    ap.add_argument("--client-processes", type=int, default=2, help="client processes of the closed loop")
    ap.add_argument("--server-processes", type=int, default=1,
                    help="server processes on the port, each with --servers servers on its own loop")
    ap.add_argument("--event-loops", type=int, default=1,
                    help="event loops in each server process (the others in threads), each with --servers servers "
                         "and --burners busy callbacks of its own")
    ap.add_argument("--switch-interval-ms", type=float, default=None,
                    help="the server processes' GIL switch interval (default: Python's)")
    ap.add_argument("--blocking-burn", action="store_true",
                    help="the busy callbacks sleep (the loop held, the CPU and the interpreter lock free)")
    a = ap.parse_args()
    for n in (int(x) for x in a.servers.split(",")):
        r = measure(n, a.calls, a.channels, a.burn_ms, a.burners, closed_loop_s=a.closed_loop, hold_s=a.hold_s,
                    client_processes=a.client_processes, blocking_burn=a.blocking_burn,
                    server_processes=a.server_processes, event_loops=a.event_loops,
                    switch_interval_ms=a.switch_interval_ms)
        what = (f"{a.calls} closed-loop streams holding calls {a.hold_s} s: {r['calls_per_s']:.1f} calls/s, "
                if a.closed_loop > 0 else f"bursts of {a.calls}: ")
        print(f"{a.server_processes} process(es) of {a.event_loops} loop(s) of {n} server(s), "
              f"{a.burners} × {a.burn_ms} ms busy callbacks, {what}response "
              f"headers after {r['headers_mean_s'] * 1e3:.1f} ms mean, p50 {r['headers_p50_s'] * 1e3:.1f}, "
              f"p90 {r['headers_p90_s'] * 1e3:.1f}, max {r['headers_max_s'] * 1e3:.1f}", flush=True)
        if "to_interceptor_mean_s" in r:
            print(f"  client send -> interceptor {r['to_interceptor_mean_s'] * 1e3:.1f} ms mean, interceptor -> "
                  f"handler {r['interceptor_to_handler_mean_s'] * 1e3:.1f} ms; handler starts every "
                  f"{r['start_gap_p50_s'] * 1e3:.2f} ms (p50), p90 {r['start_gap_p90_s'] * 1e3:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
