"""RequestStream's async iteration by batches: every token queued since the last batch comes in one list, in
order, a consumer that keeps up gets lists of one, and an engine failure still delivers the tokens before it."""
from __future__ import annotations

import asyncio

import pytest

from vlmserve.engine import RequestStream
from vlmserve.errors import InvalidArgumentError, RequestFailedError
from vlmserve.outputs import TokenOutput


def _stream(loop) -> RequestStream:
    return RequestStream(engine=None, request_id=7, prompt=[1, 2], loop=loop)


def _finish(stream: RequestStream, reason: str = "length", error: str | None = None) -> None:
    stream.result.finish_reason, stream.result.error = reason, error
    stream._push(None)


async def _collect(stream: RequestStream) -> list[list[int]]:
    return [[t.token_id for t in batch] async for batch in stream.batches()]


def test_tokens_queued_while_the_consumer_was_busy_come_as_one_batch():
    async def main():
        s = _stream(asyncio.get_running_loop())
        for t in (10, 11, 12):
            s._push(TokenOutput(t))
        _finish(s)
        return await _collect(s), s.finished

    batches, finished = asyncio.run(main())
    assert batches == [[10, 11, 12]] and finished


def test_a_consumer_that_keeps_up_gets_one_token_per_batch():
    async def main():
        s = _stream(asyncio.get_running_loop())
        got = []

        async def produce():
            for t in (1, 2, 3):
                s._push(TokenOutput(t))
                while not s._queue.empty():  # the consumer takes it before the next token comes
                    await asyncio.sleep(0)
            _finish(s)

        producer = asyncio.create_task(produce())
        async for batch in s.batches():
            got.append([t.token_id for t in batch])
        await producer
        return got

    assert asyncio.run(main()) == [[1], [2], [3]]


def _paced(tokens, min_tokens: int, fail: bool = False) -> list[list[int]]:
    """Batches a consumer that keeps up sees when tokens come one at a time, with min_tokens: each token is
    pushed once the consumer has taken the one before (not after a delay: that would depend on the load)."""
    async def main():
        s = _stream(asyncio.get_running_loop())
        got = []

        async def produce():
            for t in tokens:
                s._push(TokenOutput(t))
                while not s._queue.empty():
                    await asyncio.sleep(0)
            _finish(s, *(("error", "device lost") if fail else ()))

        producer = asyncio.create_task(produce())
        try:
            async for batch in s.batches(min_tokens):
                got.append([t.token_id for t in batch])
        except RequestFailedError:
            got.append("failed")
        await producer
        return got

    return asyncio.run(main())


def test_min_tokens_sends_the_first_alone_then_groups_the_rest():
    assert _paced(range(1, 9), 3) == [[1], [2, 3, 4], [5, 6, 7], [8]]  # the last holds what is left
    assert _paced(range(1, 5), 1) == [[1], [2], [3], [4]]
    assert _paced([1], 4) == [[1]]
    assert _paced(range(1, 4), 4) == [[1], [2, 3]]
    assert _paced(range(1, 5), 3, fail=True) == [[1], [2, 3, 4], "failed"]
    assert _paced(range(1, 4), 3, fail=True) == [[1], [2, 3], "failed"]  # held tokens still delivered


def test_min_tokens_must_be_a_positive_integer():
    async def main(bad):
        s = _stream(asyncio.get_running_loop())
        _finish(s)
        return [b async for b in s.batches(bad)]

    for bad in (0, -1, 1.5, None):
        with pytest.raises(InvalidArgumentError, match="min_tokens"):
            asyncio.run(main(bad))


def test_tokens_before_a_failure_are_delivered_then_it_raises():
    async def main():
        s = _stream(asyncio.get_running_loop())
        s._push(TokenOutput(5))
        s._push(TokenOutput(6))
        _finish(s, "error", "device lost")
        got = []
        with pytest.raises(RequestFailedError, match="device lost"):
            async for batch in s.batches():
                got.append([t.token_id for t in batch])
        return got

    assert asyncio.run(main()) == [[5, 6]]


def test_token_iteration_is_unchanged():
    async def main():
        s = _stream(asyncio.get_running_loop())
        for t in (3, 4):
            s._push(TokenOutput(t))
        _finish(s)
        return [t.token_id async for t in s]

    assert asyncio.run(main()) == [3, 4]


def test_one_engine_step_wakes_the_event_loop_once_for_all_its_streams(tiny_model_dir):
    """The engine delivers a step's events together (a token for each running request), and the poller
    queues every token of a poll and then makes a single call into the event loop that wakes all their
    consumers, instead of one call (a write to the loop's wake-up pipe) per token: at most one a step.
    Every stream still gets all of its tokens, equal to a request run alone."""
    import numpy as np

    from vlmserve import Engine, EngineConfig, GenerationConfig

    prompts = [np.random.default_rng(40 + i).integers(3, 300, size=6 + i).tolist() for i in range(6)]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    with Engine(tiny_model_dir("llama_gqa_hd128"), EngineConfig(device="cpu", num_kv_blocks=64, block_size=16,
                                                                  max_batch_size=8)) as eng:
        alone = [eng.generate(p, gen).token_ids for p in prompts]

        async def main():
            loop = asyncio.get_running_loop()
            calls = 0
            original = loop.call_soon_threadsafe

            def counted(*args, **kwargs):
                nonlocal calls
                calls += 1
                return original(*args, **kwargs)

            loop.call_soon_threadsafe = counted
            steps = eng.stats().steps
            streams = eng.add_requests([(p, gen) for p in prompts], loop=loop)

            async def tokens(s):
                return [t.token_id async for t in s]

            got = await asyncio.gather(*(tokens(s) for s in streams))
            return got, calls, eng.stats().steps - steps

        together, calls, steps = asyncio.run(main())
    assert together == alone
    tokens = sum(len(t) for t in together)
    print(f"{calls} wake-ups of the loop for {tokens} tokens in {steps} engine steps")
    assert 1 <= calls <= steps < tokens


def test_the_poller_wakes_a_grouped_consumer_once_a_group():
    """_token_due, the poller's decision per token: the first token, then every min_tokens-th."""
    s = _stream(None)
    assert [s._token_due() for _ in range(5)] == [True] * 5  # one token a list: every token
    s = _stream(None)
    s._wake_every = 4
    assert [s._token_due() for _ in range(13)] == [True] + ([False] * 3 + [True]) * 3


def test_a_consumer_asking_for_groups_gets_them_from_the_engine(tiny_model_dir):
    """batches(min_tokens) on the engine: the tokens of a request run alone, after the first list none shorter
    than min_tokens but the last, and at most one wake-up of the consumer per group (plus the first and the
    finish) however the engine's steps fall into polls."""
    import numpy as np

    from vlmserve import Engine, EngineConfig, GenerationConfig

    prompt = np.random.default_rng(7).integers(3, 300, size=9).tolist()
    gen = GenerationConfig(max_new_tokens=13, ignore_eos=True)
    with Engine(tiny_model_dir("llama_gqa_hd128"), EngineConfig(device="cpu", num_kv_blocks=64, block_size=16,
                                                                  max_batch_size=4)) as eng:
        alone = eng.generate(prompt, gen).token_ids

        async def main():
            stream = eng.add_request(prompt, gen, loop=asyncio.get_running_loop())
            sets = 0
            original = stream._wake.set

            def counted():
                nonlocal sets
                sets += 1
                original()

            stream._wake.set = counted
            batches = [[t.token_id for t in b] async for b in stream.batches(4)]
            return batches, sets

        grouped, sets = asyncio.run(main())
    assert sum(grouped, []) == alone
    assert all(len(b) >= 4 for b in grouped[1:-1])
    print(f"lists {[len(b) for b in grouped]}, {sets} consumer wake-ups for 13 tokens")
    assert sets <= 1 + 12 // 4 + 1
