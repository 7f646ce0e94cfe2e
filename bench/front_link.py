#!/usr/bin/env python3
"""What the link between an LM front process and the engine process costs (--front-processes): a stand-in
engine in one process emits tokens for R concurrent requests, one token each every step of S ms (as the real
engine's poller hands a step's tokens over at once), through FrontLink over a pipe to a RemoteEngine in another
process, whose asyncio loop consumes the streams as the LM servicer does (batches of --stream-interval). Measured:
the delay from a step's tokens leaving the engine to their arrival at the consumer (p50 / p99), and each process's
CPU time per token. The same stand-in engine consumed in its own process (a local stream, as without fronts) is the
baseline for the delay.

    python3 bench/front_link.py --rows 1,64,256 --step-ms 5 --tokens 200
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_info import cpu_model, git_revision, ints, write_atomic  # noqa: E402


class StandInEngine:
    """Emits max_new_tokens tokens for every request, one per step for all running requests at once, through
    RequestStreams as Engine's poller does (a token's value: the time it left, in ns, so the consumer can time it)."""

    def __init__(self, step_s: float, spec=None, config=None, stats=None):
        from vlmserve.outputs import TokenOutput

        self._token = TokenOutput
        self.step_s = step_s
        self.spec, self.config, self._stats = spec, config, stats
        self._running: list = []
        self._lock = threading.Lock()
        self._stop = False
        self._ids = 0
        threading.Thread(target=self._steps, daemon=True).start()

    def stats(self):
        return self._stats

    def add_request(self, prompt, gen, embeddings=(), loop=None, sink=None):
        from vlmserve.engine import RequestStream

        with self._lock:
            self._ids += 1
            stream = RequestStream(self, self._ids, list(prompt), loop, sink)
            self._running.append([stream, gen.max_new_tokens])
        return stream

    def abort(self, request_id: int) -> bool:
        return False

    def _steps(self) -> None:
        from vlmserve.engine import _wake_streams

        while not self._stop:
            time.sleep(self.step_s)
            with self._lock:
                running, now = list(self._running), time.perf_counter_ns()
            sinks, loops = {}, {}
            for entry in running:
                stream = entry[0]
                stream._push(self._token(now), wake=False)
                due = stream._token_due()  # as the poller wakes a consumer (every --stream-interval tokens)
                entry[1] -= 1
                if entry[1] == 0:
                    stream.result.finish_reason = "length"
                    stream._push(None, wake=False)
                    due = True
                    with self._lock:
                        self._running.remove(entry)
                if stream._sink is not None:
                    sinks.setdefault(id(stream._sink), (stream._sink, []))[1].append(stream)
                elif due:
                    loops.setdefault(stream._loop, []).append(stream)
            for sink, streams in sinks.values():
                sink(streams)
            for loop, streams in loops.items():
                _wake_streams(loop, streams)


async def _consume(engine, rows: int, tokens: int, interval: int) -> list[float]:
    """rows concurrent streams of `tokens` tokens; the delay of each token from leaving the engine to its batch
    reaching this loop, in ms."""
    from vlmserve.config import GenerationConfig

    loop = asyncio.get_running_loop()
    delays: list[float] = []

    async def one() -> None:
        stream = engine.add_request([1, 2, 3], GenerationConfig(max_new_tokens=tokens), loop=loop)
        async for batch in stream.batches(interval):
            now = time.perf_counter_ns()
            delays.extend((now - t.token_id) / 1e6 for t in batch)

    await asyncio.gather(*(one() for _ in range(rows)))
    return delays


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _engine_process(conn, control, step_s: float) -> None:
    from vlmserve.services.engine_host import FrontLink

    engine = StandInEngine(step_s)
    link = FrontLink(engine, conn, "bench-front")
    link.start()
    control.send("ready")
    start = _cpu_s()
    control.recv()  # the front is done
    control.send(_cpu_s() - start)
    link.close()


def run_remote(rows: int, tokens: int, interval: int, step_s: float) -> dict:
    from vlmserve.config import EngineConfig
    from vlmserve.services.remote_engine import RemoteEngine

    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe(duplex=True)
    control_here, control_there = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_engine_process, args=(there, control_there, step_s))
    proc.start()
    control_here.recv()
    engine = RemoteEngine(here, None, EngineConfig(), None)
    start, wall = _cpu_s(), time.perf_counter()
    delays = asyncio.run(_consume(engine, rows, tokens, interval))
    wall, front_cpu = time.perf_counter() - wall, _cpu_s() - start
    control_here.send("done")
    engine_cpu = control_here.recv()
    engine.close()
    proc.join(10)
    n = rows * tokens
    return {"tokens": n, "received": len(delays), "wall_s": wall, "delay_ms_p50": statistics.median(delays),
            "delay_ms_p99": sorted(delays)[int(0.99 * (len(delays) - 1))],
            "engine_cpu_us_per_token": engine_cpu / n * 1e6, "front_cpu_us_per_token": front_cpu / n * 1e6}


def run_local(rows: int, tokens: int, interval: int, step_s: float) -> dict:
    engine = StandInEngine(step_s)
    start, wall = _cpu_s(), time.perf_counter()
    delays = asyncio.run(_consume(engine, rows, tokens, interval))
    wall, cpu = time.perf_counter() - wall, _cpu_s() - start
    engine._stop = True
    n = rows * tokens
    return {"tokens": n, "received": len(delays), "wall_s": wall, "delay_ms_p50": statistics.median(delays),
            "delay_ms_p99": sorted(delays)[int(0.99 * (len(delays) - 1))], "process_cpu_us_per_token": cpu / n * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=ints, default=[1, 64, 256], help="concurrent requests")
    ap.add_argument("--tokens", type=int, default=200, help="tokens a request")
    ap.add_argument("--step-ms", type=float, default=5.0, help="the stand-in engine's step time")
    ap.add_argument("--stream-interval", type=int, default=4, help="tokens a batch the consumer waits for")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file")
    a = ap.parse_args()
    rows_out = []
    for rows in a.rows:
        local = run_local(rows, a.tokens, a.stream_interval, a.step_ms / 1e3)
        remote = run_remote(rows, a.tokens, a.stream_interval, a.step_ms / 1e3)
        rows_out.append({"rows": rows, "local": local, "remote": remote})
        print(f"[front_link] {rows} rows: delay p50 / p99 local {local['delay_ms_p50']:.2f} / "
              f"{local['delay_ms_p99']:.2f} ms, through the link {remote['delay_ms_p50']:.2f} / "
              f"{remote['delay_ms_p99']:.2f} ms; engine process {remote['engine_cpu_us_per_token']:.1f} µs CPU "
              f"a token, front {remote['front_cpu_us_per_token']:.1f} (local consumer and engine together "
              f"{local['process_cpu_us_per_token']:.1f})", flush=True)
    if a.out:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
                "cores": os.cpu_count(), "revision": git_revision(), "command": " ".join(sys.argv),
                "tokens": a.tokens, "step_ms": a.step_ms, "stream_interval": a.stream_interval}
        write_atomic(a.out, json.dumps({"meta": meta, "rows": rows_out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
