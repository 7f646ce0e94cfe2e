"""LM front processes (--front-processes): the link between a front and the engine (in one process, over a
pipe), and the LM service served by three processes around one engine (CPU engine, tiny checkpoints)."""
from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from vlmserve.config import EngineConfig, GenerationConfig
from vlmserve.errors import OutOfRangeError, UnavailableError


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from vlmserve.engine import Engine

    e = Engine(tiny_model_dir("llama_gqa_hd128"),
               EngineConfig(device="cpu", num_kv_blocks=64, block_size=16, max_batch_size=8))
    yield e
    e.close()


def linked(engine):
    """A FrontLink on the engine and a RemoteEngine at the pipe's other end, both in this process."""
    from vlmserve.services.engine_host import FrontLink
    from vlmserve.services.remote_engine import RemoteEngine

    here, there = multiprocessing.Pipe(duplex=True)
    link = FrontLink(engine, here, "front-test")
    link.start()
    lost = threading.Event()
    remote = RemoteEngine(there, engine.spec, engine.config, engine.stats(), on_lost=lost.set)
    return link, remote, lost


def wait_idle(engine, timeout=30.0):
    deadline = time.monotonic() + timeout
    while engine.stats().running_requests or engine.stats().waiting_requests:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.01)


def test_a_remote_request_gets_the_local_tokens_and_timings(engine):
    link, remote, _ = linked(engine)
    try:
        gen = GenerationConfig(max_new_tokens=6, ignore_eos=True, logprobs=2)
        want = engine.generate([1, 5, 9, 13], gen)
        streams = [remote.add_request([1, 5, 9, 13], gen) for _ in range(4)]
        for s in streams:
            tokens = [t.token_id for t in s]
            out = s.result
            assert tokens == want.token_ids == out.token_ids
            assert out.finish_reason == "length" and out.request_id == s.request_id
            assert out.logprobs == pytest.approx(want.logprobs, abs=1e-5)
            assert out.decode_s > 0 and out.prefill_s >= 0
    finally:
        remote.close()
        assert link.closed.wait(10)
    wait_idle(engine)


def test_a_refused_request_fails_with_the_engines_error_and_the_link_goes_on(engine):
    link, remote, _ = linked(engine)
    try:
        bad = remote.add_request([engine.spec.vocab_size + 7], GenerationConfig(max_new_tokens=2))
        with pytest.raises(OutOfRangeError, match="outside the vocabulary"):
            list(bad)
        good = remote.add_request([1, 2, 3], GenerationConfig(max_new_tokens=3, ignore_eos=True))
        assert len(list(good)) == 3
    finally:
        remote.close()
        assert link.closed.wait(10)


def test_abort_and_a_front_that_goes_away_free_the_engine(engine):
    link, remote, _ = linked(engine)
    gen = GenerationConfig(max_new_tokens=400, ignore_eos=True)
    aborted = remote.add_request([1, 2, 3], gen)
    next(iter(aborted))  # running
    assert remote.abort(aborted.request_id)
    assert aborted.wait(30).finish_reason == "cancelled"
    left = [remote.add_request([4, 5, 6], gen) for _ in range(3)]
    for s in left:
        next(iter(s))
    assert engine.stats().running_requests == 3
    remote.close()  # the front is gone: the engine aborts its requests
    assert link.closed.wait(10)
    wait_idle(engine)
    assert engine.stats().free_blocks == engine.stats().total_blocks


def test_closing_either_end_ends_the_link_for_both(engine):
    """close() on either end wakes both ends' reader threads, blocked in recv() (closing the descriptor alone
    leaves them blocked and the pipe open: services/pipe_close.py)."""
    link, remote, lost = linked(engine)
    remote.close()  # the front's end: the engine's side sees the front gone, the front's reader stops
    assert link.closed.wait(5) and lost.wait(5)
    link, remote, lost = linked(engine)
    link.close()  # the engine's end: the front sees the engine gone
    assert lost.wait(5) and link.closed.wait(5)
    with pytest.raises(UnavailableError):
        remote.add_request([1, 2], GenerationConfig(max_new_tokens=2))
    remote.close()


def test_a_pipe_end_closes_only_after_its_reader_has_stopped():
    """close_pipe_end wakes the reader and waits for it before closing the descriptor: a reader still inside recv()
    when the descriptor closes would read whatever the number opens next (the next link's pipe)."""
    from vlmserve.services.pipe_close import close_pipe_end

    here, there = multiprocessing.Pipe(duplex=True)
    seen = {}

    def read():
        try:
            here.recv()
        except (EOFError, OSError) as e:
            seen["woke"] = type(e).__name__
        time.sleep(0.3)  # a reader slow to leave: its descriptor must still be its own meanwhile
        seen["closed_while_reading"] = here.closed

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.1)  # blocked in recv()
    close_pipe_end(here, reader)
    assert not reader.is_alive() and here.closed
    assert seen == {"woke": "EOFError", "closed_while_reading": False}
    there.close()


def test_the_link_stops_sending_quietly_when_the_front_is_gone():
    """Tokens and the link's end queued together, the front's pipe broken: the sender ends without an unhandled
    exception (the reader sees the front gone and aborts its requests)."""
    from vlmserve.services.engine_host import FrontLink

    class BrokenPipe:
        sent = 0

        def send(self, msg):
            BrokenPipe.sent += 1
            raise BrokenPipeError(32, "Broken pipe")

    raised = []
    hook, threading.excepthook = threading.excepthook, raised.append
    try:
        link = FrontLink(None, BrokenPipe(), "front-test")
        link._outbox.put([(1, [], None)])
        link._outbox.put(None)
        link._sender.start()
        link._sender.join(10)
    finally:
        threading.excepthook = hook
    assert not link._sender.is_alive() and BrokenPipe.sent == 1 and raised == []


def test_a_lost_engine_fails_the_requests_in_flight_unavailable(engine):
    from vlmserve.services.remote_engine import RemoteEngine

    here, there = multiprocessing.Pipe(duplex=True)
    lost = threading.Event()
    remote = RemoteEngine(there, engine.spec, engine.config, engine.stats(), on_lost=lost.set)
    stream = remote.add_request([1, 2], GenerationConfig(max_new_tokens=4))
    here.close()  # the engine process is gone
    assert lost.wait(10)
    with pytest.raises(UnavailableError, match="engine process is gone"):
        list(stream)
    with pytest.raises(UnavailableError):
        remote.add_request([1, 2], GenerationConfig(max_new_tokens=4))


def metric_value(text: str, sample: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_of_several_processes_add_up():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.exposition import generate_latest
    from vlmserve.services.metrics_merge import MergedRegistry

    def registry(calls: int, seconds: list[float], in_flight: int):
        r = CollectorRegistry()
        c = Counter("x_calls", "calls", ["code"], registry=r)
        c.labels("OK").inc(calls)
        h = Histogram("x_seconds", "seconds", buckets=(0.1, 1.0), registry=r)
        for v in seconds:
            h.observe(v)
        Gauge("x_in_flight", "in flight", registry=r).set(in_flight)
        return r

    own = registry(3, [0.05, 0.5], 1)
    merged = MergedRegistry(own)
    front = registry(4, [2.0], 2)
    merged.update(1, list(front.collect()))
    merged.update(2, list(registry(1, [], 0).collect()))
    merged.update(2, list(registry(2, [0.05], 5).collect()))  # a newer snapshot replaces the older
    text = generate_latest(merged).decode()
    assert metric_value(text, 'x_calls_total{code="OK"}') == 9
    assert metric_value(text, 'x_seconds_bucket{le="0.1"}') == 2
    assert metric_value(text, 'x_seconds_bucket{le="1.0"}') == 3
    assert metric_value(text, 'x_seconds_bucket{le="+Inf"}') == 4
    assert metric_value(text, "x_seconds_count") == 4
    assert metric_value(text, "x_seconds_sum") == pytest.approx(2.6)
    assert metric_value(text, "x_in_flight") == 8
    created = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("x_calls_created")]
    own_created = metric_value(generate_latest(own).decode(), 'x_calls_created{code="OK"}')
    assert len(created) == 1 and created[0] <= own_created
    assert text.count("# TYPE x_calls_total counter") == 1
    only = generate_latest(merged.restricted_registry(["x_in_flight"])).decode()
    assert "x_in_flight 8.0" in only and "x_calls" not in only


def test_calls_are_also_given_per_process():
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from prometheus_client.exposition import generate_latest
    from vlmserve.services.metrics_merge import MergedRegistry

    def registry(calls: dict[tuple[str, str], int], in_flight: int):
        r = CollectorRegistry()
        c = Counter("x_handled", "calls", ["method", "code"], registry=r)
        for labels, n in calls.items():
            c.labels(*labels).inc(n)
        Gauge("x_in_flight", "in flight", registry=r).set(in_flight)
        return r

    own = registry({("Chat", "OK"): 3, ("Info", "OK"): 1}, 1)
    merged = MergedRegistry(own, by_process={"x_handled": ("x_process_calls", "calls by process"),
                                             "x_in_flight": ("x_process_in_flight", "in flight by process")})
    merged.update(1, list(registry({("Chat", "OK"): 5}, 2).collect()))
    merged.update(2, list(registry({("Chat", "CANCELLED"): 2}, 5).collect()))
    text = generate_latest(merged).decode()
    assert [metric_value(text, f'x_process_calls_total{{process="{p}"}}') for p in range(3)] == [4, 5, 2]
    assert [metric_value(text, f'x_process_in_flight{{process="{p}"}}') for p in range(3)] == [1, 2, 5]
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert types.get("x_process_calls_total", types.get("x_process_calls")) == "counter"
    assert types["x_process_in_flight"] == "gauge"
    assert metric_value(text, 'x_handled_total{code="OK",method="Chat"}') == 8  # the sums stay as they were
    assert metric_value(text, "x_in_flight") == 8
    only = generate_latest(merged.restricted_registry(["x_process_calls_total"])).decode()
    assert 'x_process_calls_total{process="2"} 2.0' in only and "x_in_flight" not in only


def test_a_replaced_front_adds_to_its_predecessors_counts():
    """Snapshots keyed (index, pid): the dead front's counters stay in the sums (they never go back), its gauges
    go; the replacement counts under the same index."""
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from prometheus_client.exposition import generate_latest
    from vlmserve.services.metrics_merge import MergedRegistry

    def registry(calls: int, in_flight: int):
        r = CollectorRegistry()
        Counter("x_handled", "calls", registry=r).inc(calls)
        Gauge("x_in_flight", "in flight", registry=r).set(in_flight)
        return r

    merged = MergedRegistry(registry(3, 1), by_process={"x_handled": ("x_process_calls", "calls by process"),
                                                        "x_in_flight": ("x_process_in_flight", "in flight")})
    merged.update((1, 100), list(registry(5, 2).collect()))  # front 1, which then dies
    merged.update((1, 200), list(registry(1, 4).collect()))  # its replacement
    text = generate_latest(merged).decode()
    assert metric_value(text, "x_handled_total") == 9
    assert metric_value(text, "x_in_flight") == 5
    assert metric_value(text, 'x_process_calls_total{process="1"}') == 6
    assert metric_value(text, 'x_process_in_flight{process="1"}') == 4
    assert text.count('x_process_calls_total{process="1"}') == 1


def test_bad_front_process_counts_are_refused(tiny_model_dir):
    from vlmserve.errors import InvalidArgumentError
    from vlmserve.services.lm_server import LmServer

    for bad in (0, 65, True, 1.5):
        with pytest.raises(InvalidArgumentError, match="front_processes"):
            LmServer(tiny_model_dir("llama_gqa_hd128"), front_processes=bad)


def test_three_processes_serve_image_chats_around_one_engine():
    from lm_stack import LmServerThread, image_chat_request, new_connection_stub, start_vision
    from vlmserve.default_model import default_vlm_checkpoint
    from vlmserve.services import protos

    pb = protos.lm()
    model = default_vlm_checkpoint()
    vision = start_vision(model, max_images_per_request=2)
    lm = LmServerThread(model, vision.address, max_images_per_request=2, front_processes=3)
    request = image_chat_request()
    procs = lm.server._fronts.processes()

    def chat(_):
        channel, stub = new_connection_stub(lm.address)  # the kernel may hand it to any of the three processes
        with channel:
            ids, last = [], None
            for msg in stub.Chat(request, timeout=300):
                ids += list(msg.token_ids)
                last = msg
            # a prompt token outside the vocabulary: refused by the engine, the status the client gets from it
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[10 ** 8])), timeout=60))
            return ids, last.usage.image_tokens, refused.value.code()

    try:
        assert len(procs) == 2 and all(p.is_alive() for p in procs)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(chat, range(18)))
        ids = [r[0] for r in results]
        # greedy on one engine: every connection, whichever process took it, gets the same tokens
        assert all(r == ids[0] for r in ids) and len(ids[0]) == 4, ids
        assert all(r[1] > 0 for r in results)
        assert {r[2] for r in results} == {grpc.StatusCode.OUT_OF_RANGE}
        # this process finished only its share of the chats (18 connections over 3 processes: all here would
        # happen about once in 400 million runs); the engine ran them all
        finished = lm.server.metrics.finished.labels("length")._value.get()
        assert 0 <= finished < 18
        assert lm.engine.stats().running_requests == 0
        # /metrics counts every process's calls once the fronts' snapshots arrive (one a second; a front's
        # snapshot may show its last chat finished before the refused call after it is counted as handled)
        counted = {'vlmserve_lm_requests_finished_total{reason="length"}': 18,
                   'vlmserve_grpc_server_handled_total{grpc_code="OUT_OF_RANGE",'
                   'grpc_method="/vlm.v1.LmService/Generate"}': 18,
                   "vlmserve_lm_time_to_first_token_seconds_count": 18}
        deadline = time.monotonic() + 20
        while True:
            text = lm.metrics_text()
            seen = {sample: metric_value(text, sample) for sample in counted}
            if seen == counted or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert seen == counted, text
        # each process's share of the calls, adding up to the calls of all
        shares = [metric_value(text, f'vlmserve_lm_process_calls_handled_total{{process="{p}"}}') for p in range(3)]
        handled = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("vlmserve_grpc_server_handled_total{"))
        assert None not in shares and sum(shares) == handled >= 36, shares
        assert text.count("# TYPE vlmserve_lm_requests_finished_total counter") <= 1
        assert "# TYPE vlmserve_lm_kv_cache_free_blocks gauge" in text
    finally:
        lm.stop()
        vision.stop()
    assert not any(p.is_alive() for p in procs)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


def two_process_text_lm():
    """The default model's LM service, text only, its port served by this process and one front."""
    from lm_stack import LmServerThread
    from vlmserve.default_model import default_vlm_checkpoint

    return LmServerThread(default_vlm_checkpoint(), None, front_processes=2)


def generate_request(max_tokens: int):
    from vlmserve.services import protos

    pb = protos.lm()
    return pb.GenerateRequest(text="the cat", params=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def generate_on_new_connection(address: str, request, timeout: float = 120) -> list[int]:
    from lm_stack import new_connection_stub

    channel, stub = new_connection_stub(address)
    with channel:
        return [t for msg in stub.Generate(request, timeout=timeout) for t in msg.token_ids]


def test_a_front_that_dies_is_replaced_and_the_port_keeps_serving():
    import os
    import signal

    lm = two_process_text_lm()
    request = generate_request(3)
    try:
        (first,) = lm.server._fronts.processes()
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while lm.server.metrics.front_restarts._value.get() < 1:
            assert time.monotonic() < deadline, "the dead front was not replaced"
            time.sleep(0.2)
        (second,) = lm.server._fronts.processes()
        assert second.pid != first.pid and second.is_alive()
        with ThreadPoolExecutor(4) as pool:  # new connections: both processes take some
            results = list(pool.map(lambda _: generate_on_new_connection(lm.address, request), range(12)))
        assert all(r == results[0] for r in results) and len(results[0]) == 3
        # the replacement took some of them (all 12 on this process: once in 4,096 runs), and /metrics counts them
        own = lm.server.metrics.finished.labels("length")._value.get()
        deadline = time.monotonic() + 20
        while metric_value(lm.metrics_text(), 'vlmserve_lm_requests_finished_total{reason="length"}') < 12:
            assert time.monotonic() < deadline, lm.metrics_text()
            time.sleep(0.2)
        assert own < 12
        assert metric_value(lm.metrics_text(), "vlmserve_lm_front_restarts_total") == 1
    finally:
        lm.stop()
    assert not second.is_alive() and second.exitcode == 0


def test_a_front_stopped_on_its_own_signal_drains_and_is_not_replaced():
    import os
    import signal

    lm = two_process_text_lm()
    try:
        (front,) = lm.server._fronts.processes()
        os.kill(front.pid, signal.SIGTERM)
        front.join(30)
        assert front.exitcode == 0
        time.sleep(3 * lm.server._fronts.WATCH_INTERVAL_S)
        assert lm.server.metrics.front_restarts._value.get() == 0 and lm.server._fronts.processes() == [front]
        # the first process serves the port alone now
        assert len(generate_on_new_connection(lm.address, generate_request(2), timeout=60)) == 2
    finally:
        lm.stop()


def test_calls_cancelled_mid_stream_on_any_process_free_the_engine():
    from lm_stack import new_connection_stub

    lm = two_process_text_lm()
    # long enough that requests left running would still hold the engine when the check below gives up
    request = generate_request(4000)

    def cancel_after_first(_):
        channel, stub = new_connection_stub(lm.address)
        with channel:
            call = stub.Generate(request, timeout=120)
            next(call)
            call.cancel()

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(cancel_after_first, range(8)))  # 8 connections over 2 processes
        deadline = time.monotonic() + 5
        while True:
            s = lm.engine.stats()
            if (s.running_requests == 0 and s.waiting_requests == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert s.running_requests == 0 and s.waiting_requests == 0 and s.free_blocks == s.total_blocks, s
    finally:
        lm.stop()
