"""RequestStream's async iteration by batches: every token queued since the last batch comes in one list, in
order, a consumer that keeps up gets lists of one, and an engine failure still delivers the tokens before it."""
from __future__ import annotations

import asyncio

import pytest

from vlmserve.engine import RequestStream
from vlmserve.errors import RequestFailedError
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
                await asyncio.sleep(0.01)  # the consumer runs before the next token
            _finish(s)

        producer = asyncio.create_task(produce())
        async for batch in s.batches():
            got.append([t.token_id for t in batch])
        await producer
        return got

    assert asyncio.run(main()) == [[1], [2], [3]]


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
