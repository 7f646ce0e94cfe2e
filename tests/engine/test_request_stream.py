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
