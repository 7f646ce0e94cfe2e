"""The load: `concurrency` client threads, each sending one Chat stream after another (one image and a
short prompt, a fixed number of output tokens with EOS ignored) until the level's requests are
done. Every message's arrival time is recorded, so time to first token and inter-token latency are
what a client sees, gRPC included."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np


@dataclass
class RequestRecord:
    start: float
    start_unix: float = 0.0            # the wall clock at start, to place the service's arrival time against
    to_handler: float | None = None    # seconds until the call reached the service's handler (its arrival time)
    headers: float | None = None       # when the service's response headers arrived (its handler had started)
    first_token: float | None = None
    end: float | None = None
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)   # seconds per token after the first, one per token
    error: str | None = None                          # gRPC status name and message when it failed
    timings: dict[str, float] = field(default_factory=dict)  # the service's own breakdown, seconds


def one_request(stub, pb, request, timeout_s: float) -> RequestRecord:
    rec = RequestRecord(start=time.perf_counter(), start_unix=time.time())
    last = rec.start
    try:
        call = stub.Chat(request, timeout=timeout_s)
        # The service sends its headers as the call reaches its handler (before any work on the request):
        # their arrival splits the client's wait into getting the call accepted and the service's own time.
        call.initial_metadata()
        rec.headers = time.perf_counter()
        for msg in call:
            now = time.perf_counter()
            n = len(msg.token_ids)
            if n:
                if rec.first_token is None:
                    rec.first_token = now
                    rec.gaps.extend([(now - last) / n] * (n - 1))  # several tokens in the first message
                else:
                    rec.gaps.extend([(now - last) / n] * n)
                rec.tokens += n
                last = now
            if msg.HasField("timings"):
                t = msg.timings
                rec.timings = {"queue": t.queue_ns / 1e9, "vision": t.vision_ns / 1e9,
                               "prefill": t.prefill_ns / 1e9, "decode": t.decode_ns / 1e9, "total": t.total_ns / 1e9}
                if t.arrival_unix_ns:  # the call at the service's handler, on the host's wall clock
                    rec.to_handler = t.arrival_unix_ns / 1e9 - rec.start_unix
        rec.end = time.perf_counter()
    except grpc.RpcError as e:
        rec.end = time.perf_counter()
        rec.error = f"{e.code().name}: {e.details()}"
    return rec


@dataclass
class LevelResult:
    concurrency: int
    wall_s: float
    records: list[RequestRecord]
    client_cpu_s: float | None = None  # CPU time of the client process(es) over the level, all threads
    client_processes: int = 1

    def summary(self, expected_tokens: int) -> dict:
        ok = [r for r in self.records if r.error is None]
        failed = [r for r in self.records if r.error is not None]
        ttft = np.array([r.first_token - r.start for r in ok if r.first_token is not None])
        gaps = np.array([g for r in ok for g in r.gaps])
        tokens = sum(r.tokens for r in ok)

        def pct(a, q):
            return float(np.percentile(a, q)) if len(a) else None

        breakdown = {k: float(np.mean([r.timings[k] for r in ok if k in r.timings])) if ok else None
                     for k in ("queue", "vision", "prefill", "decode", "total")}
        to_handler = [r.to_handler for r in ok if r.to_handler is not None]
        # Beside the service's "total" (its handler's time), what the client waited: the difference is time
        # spent before the handler ran or after its last message (client, connection, event loop).
        e2e = float(np.mean([r.end - r.start for r in ok])) if ok else None
        return {"concurrency": self.concurrency, "requests": len(self.records), "failed": len(failed),
                "errors": sorted({r.error for r in failed})[:5],
                "short_outputs": sum(r.tokens != expected_tokens for r in ok),
                "wall_s": self.wall_s, "out_tok_s": tokens / self.wall_s, "req_s": len(ok) / self.wall_s,
                "ttft_p50_s": pct(ttft, 50), "ttft_p90_s": pct(ttft, 90), "ttft_p99_s": pct(ttft, 99),
                "client_ttft_mean_s": float(ttft.mean()) if len(ttft) else None,
                "client_headers_mean_s": float(np.mean([r.headers - r.start for r in ok if r.headers is not None]))
                if ok else None,
                # From the client's start to the call reaching the service's handler (the service's wall clock:
                # meaningful with the client on the service's host, as the benchmark runs it)
                "client_to_handler_mean_s": float(np.mean(to_handler)) if to_handler else None,
                "itl_p50_s": pct(gaps, 50), "itl_p99_s": pct(gaps, 99), "mean_service_breakdown_s": breakdown,
                "client_e2e_mean_s": e2e,
                # Cores the load generator kept busy: near client_processes means the clients, not the service,
                # may be what a level's latencies measure.
                "client_cpu_cores": None if self.client_cpu_s is None or self.wall_s <= 0
                else self.client_cpu_s / self.wall_s,
                "client_processes": self.client_processes}


# Streams sharing one client connection. The LM service's front processes (--front-processes) share its port
# through SO_REUSEPORT, which hands out connections, not calls: the fewer the connections, the less even the
# processes' shares (8 connections over 4 processes at 256 streams by default).
STREAMS_PER_CHANNEL = 32
# Above this many streams the load comes from several client processes (this many streams each): one
# Python process handling every token message of hundreds of streams could itself become the
# bottleneck, and the time its threads wait for the interpreter lock would count as the service's latency.
STREAMS_PER_PROCESS = 32


def _stream_threads(address: str, request, concurrency: int, take, finished, timeout_s: float,
                    streams_per_channel: int = STREAMS_PER_CHANNEL) -> None:
    """`concurrency` threads, each sending Chat streams one after another while take() grants one."""
    from vlmserve.services import protos

    # One channel, i.e. one HTTP/2 connection (a local subchannel pool each), per streams_per_channel streams.
    channels = [grpc.insecure_channel(address, [("grpc.max_send_message_length", 64 << 20),
                                                ("grpc.max_receive_message_length", 64 << 20),
                                                ("grpc.use_local_subchannel_pool", 1)])
                for _ in range((concurrency + streams_per_channel - 1) // streams_per_channel)]
    stubs = [protos.lm_grpc().LmServiceStub(c) for c in channels]
    pb = protos.lm()

    def worker(stub) -> None:
        while take():
            finished(one_request(stub, pb, request, timeout_s))

    threads = [threading.Thread(target=worker, args=(stubs[i % len(stubs)],), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in channels:
        c.close()


def _client_process(address: str, request_bytes: bytes, concurrency: int, remaining, done, ready, go,
                    timeout_s: float, results, streams_per_channel: int) -> None:
    """One client process: its share of the streams; its records go back through `results`."""
    from dataclasses import asdict

    from vlmserve.services import protos

    request = protos.lm().ChatRequest.FromString(request_bytes)
    records = []

    def take() -> bool:
        with remaining.get_lock():
            if remaining.value == 0:
                return False
            remaining.value -= 1
            return True

    def finished(rec: RequestRecord) -> None:
        records.append(rec)
        with done.get_lock():
            done.value += 1

    with ready.get_lock():
        ready.value += 1
    go.wait()
    cpu0 = time.process_time()
    _stream_threads(address, request, concurrency, take, finished, timeout_s, streams_per_channel)
    results.put(([asdict(r) for r in records], time.process_time() - cpu0))


def run_level(address: str, request, concurrency: int, n_requests: int, timeout_s: float,
              progress=None, alive=None, streams_per_process: int = STREAMS_PER_PROCESS,
              streams_per_connection: int = STREAMS_PER_CHANNEL) -> LevelResult:
    """n_requests Chat streams of `request`, at most `concurrency` in flight. alive() raises if the stack died."""
    if streams_per_connection < 1 or streams_per_process < 1:
        raise ValueError("streams per connection and per process must be at least 1")
    if concurrency > streams_per_process:
        return _run_level_processes(address, request, concurrency, n_requests, timeout_s, progress, alive,
                                    streams_per_process, streams_per_connection)
    lock = threading.Lock()
    remaining = [n_requests]
    records: list[RequestRecord] = []

    def take() -> bool:
        with lock:
            if remaining[0] == 0:
                return False
            remaining[0] -= 1
            return True

    def finished(rec: RequestRecord) -> None:
        with lock:
            records.append(rec)
        if progress is not None:
            progress.update(1)

    start, cpu0 = time.perf_counter(), time.process_time()
    runner = threading.Thread(target=_stream_threads, daemon=True,
                              args=(address, request, concurrency, take, finished, timeout_s, streams_per_connection))
    runner.start()
    while runner.is_alive():
        runner.join(timeout=1.0)
        if alive is not None:
            alive()
    # This process's CPU time: the stream threads' and the little the waiting main thread adds.
    return LevelResult(concurrency, time.perf_counter() - start, records, time.process_time() - cpu0)


def _run_level_processes(address: str, request, concurrency: int, n_requests: int, timeout_s: float,
                         progress, alive, streams_per_process: int, streams_per_channel: int) -> LevelResult:
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")  # not fork: this process has used gRPC, whose state does not survive a fork
    n_proc = (concurrency + streams_per_process - 1) // streams_per_process
    shares = [concurrency // n_proc + (i < concurrency % n_proc) for i in range(n_proc)]
    remaining, done, ready = ctx.Value("i", n_requests), ctx.Value("i", 0), ctx.Value("i", 0)
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client_process, daemon=True,
                         args=(address, request.SerializeToString(), share, remaining, done, ready, go, timeout_s,
                               results, streams_per_channel))
             for share in shares]
    for p in procs:
        p.start()

    def check_children() -> None:
        dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(f"a benchmark client process exited with status {dead[0]}")
        if alive is not None:
            alive()

    try:
        while ready.value < n_proc:  # imports and channels are set up before the clock starts
            time.sleep(0.05)
            check_children()
        start = time.perf_counter()
        go.set()
        records: list[RequestRecord] = []
        received, shown, cpu_s = 0, 0, 0.0
        while received < n_proc:
            try:
                recs, cpu = results.get(timeout=1.0)
                records += [RequestRecord(**r) for r in recs]
                cpu_s += cpu
                received += 1
            except queue.Empty:
                check_children()
            if progress is not None and done.value > shown:
                progress.update(done.value - shown)
                shown = done.value
        wall = max((r.end for r in records if r.end is not None), default=start) - start
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return LevelResult(concurrency, wall, records, cpu_s, n_proc)
