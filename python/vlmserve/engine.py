"""Engine: a model loaded into libvlmcore plus its decoding thread.

Requests are enqueued and stream back through a RequestStream; a poller
thread blocks in the library (without the GIL) and routes events to streams.
"""
from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vlmserve import _native
from vlmserve.checkpoint import Checkpoint
from vlmserve.config import DEVICES, KV_CACHE_DTYPES, EngineConfig, GenerationConfig
from vlmserve.errors import InvalidArgumentError, RequestFailedError, check
from vlmserve.model_spec import ModelSpec, load_spec, model_params, tensor_names
from vlmserve.outputs import FINISH_REASONS, EngineStats, RequestOutput, TokenOutput

_POLL_BATCH = 256
_POLL_TIMEOUT_MS = 50


@dataclass
class Embeddings:
    """Rows that replace the embeddings of prompt positions [position, position + len(rows))."""

    position: int
    rows: np.ndarray  # [n, hidden], float32 / float16


def _wake_streams(loop: asyncio.AbstractEventLoop, streams: list["RequestStream"]) -> None:
    """Wakes the async consumers of `streams` (all on `loop`) with one call into the loop: every
    call_soon_threadsafe writes to the loop's wake-up pipe, and an engine step delivers a token to
    each of its rows at once (hundreds of streams under load)."""
    def wake_all() -> None:
        for s in streams:
            s._wake.set()
    try:
        loop.call_soon_threadsafe(wake_all)
    except RuntimeError:  # the loop was closed: nobody is listening any more
        pass


class RequestStream:
    """Iterate (sync or async) for TokenOutputs; `result` holds the RequestOutput at the end.

    sink: instead of waking an iterating consumer, the poller calls sink(streams) with the streams that
    received items in one poll (each once), and the sink drains them with take_queued() (the engine
    process forwarding a front process's requests: services/engine_host.py)."""

    def __init__(self, engine, request_id: int, prompt: list[int], loop=None, sink=None):
        self.engine = engine
        self.request_id = request_id
        self.result = RequestOutput(request_id, prompt)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._loop = loop
        self._sink = sink
        self._wake = asyncio.Event() if loop is not None else None
        self._done = threading.Event()
        self.wants_logprobs = False
        # The poller wakes an async consumer for a token only once this many came since the last wake-up (set by
        # batches(min_tokens); the first token and the finish always wake it): a consumer that would go back to
        # waiting costs its event loop a resumption for nothing.
        self._wake_every = 1
        self._tokens_since_wake = 0  # poller thread only
        self._woken_once = False     # poller thread only

    # Called from the poller thread. wake=False leaves waking an async consumer to the caller (_wake_streams).
    def _push(self, item, wake: bool = True) -> None:
        self._queue.put(item)
        if wake and self._sink is not None:
            self._sink([self])
        elif wake and self._loop is not None:
            _wake_streams(self._loop, [self])

    def take_queued(self) -> list:
        """Everything queued so far (TokenOutputs, then None at the end), for a sink."""
        items = []
        try:
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            return items

    def _token_due(self) -> bool:
        """Poller thread, after queuing a token: whether the async consumer should be woken for it now."""
        self._tokens_since_wake += 1
        if self._woken_once and self._tokens_since_wake < self._wake_every:
            return False
        self._tokens_since_wake, self._woken_once = 0, True
        return True

    def _take(self, item):
        """Applies one queued item; returns a TokenOutput to yield, or None; raises at an error finish (or the
        error queued in its place: a request the engine of another process refused)."""
        if isinstance(item, TokenOutput):
            return item
        self._done.set()
        if isinstance(item, BaseException):
            raise item
        if self.result.finish_reason == "error":
            raise RequestFailedError(self.result.error or "request failed")
        return None

    def __iter__(self) -> Iterator[TokenOutput]:
        while True:
            out = self._take(self._queue.get())
            if out is None:
                return
            yield out

    async def __aiter__(self):
        async for batch in self.batches():
            for out in batch:
                yield out

    async def batches(self, min_tokens: int = 1):
        """Async iteration by lists: each holds every TokenOutput queued since the previous list (at least one).
        A consumer that falls behind the engine (a busy event loop) catches up in one step per list rather than
        one per token; a consumer that keeps up gets lists of one.

        min_tokens > 1: after the first list (the first token goes out alone, at once), a list waits until it
        holds min_tokens; the last may hold fewer. Fewer, larger lists for a consumer whose per-list cost
        (one gRPC message) is what its event loop spends its time on."""
        if self._loop is None:
            raise InvalidArgumentError("async iteration needs a stream created with add_request(..., loop=loop)")
        if not isinstance(min_tokens, int) or min_tokens < 1:
            raise InvalidArgumentError(f"min_tokens must be an integer >= 1, got {min_tokens!r}")
        self._wake_every = min_tokens
        batch, first = [], True
        while True:
            self._wake.clear()
            items = []
            try:
                while True:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if not items:
                await self._wake.wait()
                continue
            for item in items:
                try:
                    out = self._take(item)
                except RequestFailedError:
                    if batch:  # the tokens before the failure still reach the consumer
                        yield batch
                    raise
                if out is None:
                    if batch:
                        yield batch
                    return
                batch.append(out)
            if first or len(batch) >= min_tokens:
                yield batch
                batch, first = [], False

    def wait(self, timeout: float | None = None) -> RequestOutput:
        """Drains the stream and returns the final RequestOutput; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._done.is_set():  # already drained by iteration
            return self.result
        while True:
            try:
                item = self._queue.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s") from None
            if self._take(item) is None:
                return self.result

    def cancel(self) -> None:
        self.engine.abort(self.request_id)

    @property
    def finished(self) -> bool:
        return self._done.is_set()


class Engine:
    def __init__(self, model_path: str | Path, config: EngineConfig | None = None, show_progress: bool = False):
        self.config = config or EngineConfig()
        self.model_path = Path(model_path)
        lib = _native.lib()
        self._lib = lib
        self._model = ctypes.c_void_p()
        self._engine = ctypes.c_void_p()
        self._streams: dict[int, RequestStream] = {}
        self._streams_lock = threading.Lock()
        self._closing = False
        checkpoint = Checkpoint(self.model_path)
        try:
            self.spec: ModelSpec = load_spec(self.model_path, checkpoint, self.config.model_format)
            params = model_params(self.spec, DEVICES[self.config.device], self.config.threads)
            check(lib.vlm_model_create(ctypes.byref(params), ctypes.byref(self._model)))
            self._load_tensors(checkpoint, show_progress)
            check(lib.vlm_model_finalize(self._model))
        except BaseException:
            lib.vlm_model_free(self._model)
            self._model = ctypes.c_void_p()
            raise
        finally:
            checkpoint.close()
        ep = lib.vlm_engine_default_params()
        ep.kv_dtype = KV_CACHE_DTYPES[self.config.kv_cache_dtype]
        ep.block_size = self.config.block_size
        ep.num_blocks = self.config.num_kv_blocks
        ep.cache_max_entry_count = self.config.cache_max_entry_count
        ep.max_batch_size = self.config.max_batch_size
        ep.max_num_batched_tokens = self.config.max_num_batched_tokens
        ep.max_model_len = self.config.max_model_len or 0
        ep.tensor_parallel = self.config.tp
        ep.prefill_hold_steps = self.config.prefill_hold_steps
        status = lib.vlm_engine_create(self._model, ctypes.byref(ep), ctypes.byref(self._engine))
        if status:
            lib.vlm_model_free(self._model)
            self._model = ctypes.c_void_p()
            check(status)
        self._poller = threading.Thread(target=self._poll_loop, name="vlmserve-poller", daemon=True)
        self._poller.start()

    # ------------------------------------------------------------------ loading
    def _load_tensors(self, checkpoint: Checkpoint, show_progress: bool) -> None:
        names = tensor_names(self.spec)
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(names), desc="loading weights", unit="tensor")
        for engine_name, key in names:
            arr = checkpoint.array(key)
            shape = (ctypes.c_int64 * arr.ndim)(*arr.shape)
            check(self._lib.vlm_model_set_tensor(self._model, engine_name.encode(), checkpoint.native_dtype(key),
                                                 arr.ndim, shape, arr.ctypes.data))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

    # ----------------------------------------------------------------- requests
    def add_request(self, prompt_token_ids: Sequence[int], gen_config: GenerationConfig | None = None,
                    embeddings: Sequence[Embeddings] = (), loop: asyncio.AbstractEventLoop | None = None,
                    sink=None) -> RequestStream:
        """Queues a request; it joins the running batch at the next engine step. loop: for async iteration;
        sink: see RequestStream."""
        return self.add_requests([(prompt_token_ids, gen_config, embeddings)], loop, sink)[0]

    def add_requests(self, requests: Sequence[tuple], loop: asyncio.AbstractEventLoop | None = None,
                     sink=None) -> list[RequestStream]:
        """Queues several requests, each (prompt_token_ids[, gen_config[, embeddings]]), together: all
        or, where one is invalid, none. They reach the scheduler at once, so they start in the same
        step (as far as the step's token budget allows) whatever the engine is doing meanwhile."""
        if not requests:
            return []
        params = (_native.RequestParams * len(requests))()
        keep, gens, prompts = [], [], []
        for i, req in enumerate(requests):
            prompt_token_ids, *rest = req
            gen_config = rest[0] if rest else None
            embeddings = rest[1] if len(rest) > 1 else ()
            p, gen, prompt, alive = self._request_params(prompt_token_ids, gen_config, embeddings)
            params[i] = p
            keep.append(alive)
            gens.append(gen)
            prompts.append(prompt)
        ids = (ctypes.c_uint64 * len(requests))()
        # The streams are registered under the lock the poller takes, so no event can outrun them.
        with self._streams_lock:
            check(self._lib.vlm_engine_enqueue_batch(self._engine, params, len(requests), ids))
            streams = []
            for rid, gen, prompt in zip(ids, gens, prompts):
                stream = RequestStream(self, rid, prompt.tolist(), loop, sink)
                stream.wants_logprobs = gen.logprobs is not None
                self._streams[rid] = stream
                streams.append(stream)
        return streams

    def _request_params(self, prompt_token_ids, gen_config, embeddings):
        """The C request parameters of one request, its config and prompt array, and the arrays the
        parameters point into (kept alive by the caller until they are enqueued)."""
        gen = gen_config or GenerationConfig()
        prompt = _as_token_array(prompt_token_ids)
        p = self._lib.vlm_request_default_params()
        p.prompt = prompt.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        p.prompt_len = len(prompt)
        p.max_new_tokens = gen.max_new_tokens
        p.sampling.temperature = gen.temperature
        p.sampling.top_k = gen.top_k
        p.sampling.top_p = gen.top_p
        p.sampling.min_p = gen.min_p
        p.sampling.repetition_penalty = gen.repetition_penalty
        if gen.seed is not None:
            p.sampling.seed = gen.seed
            p.sampling.has_seed = 1
        eos = self.spec.eos_token_ids if gen.eos_token_ids is None else gen.eos_token_ids
        for i, t in enumerate(eos):
            p.eos_ids[i] = t
        p.num_eos_ids = len(eos)
        p.ignore_eos = int(gen.ignore_eos)
        for i, seq in enumerate(gen.stop_token_ids):
            for j, t in enumerate(seq):
                p.stop_sequences[i][j] = t
            p.stop_sequence_lens[i] = len(seq)
        p.num_stop_sequences = len(gen.stop_token_ids)
        p.logprobs = -1 if gen.logprobs is None else gen.logprobs
        p.prompt_logprobs = int(gen.prompt_logprobs)
        p.return_logits = int(gen.return_logits)
        keep = []
        spans = (_native.EmbeddingSpan * max(1, len(embeddings)))()
        for i, e in enumerate(embeddings):
            rows = _as_embedding_rows(e.rows, self.spec.hidden_size)
            keep.append(rows)
            spans[i].position = int(e.position)
            spans[i].num_rows = rows.shape[0]
            spans[i].dtype = _native.DTYPE_F16 if rows.dtype == np.float16 else _native.DTYPE_F32
            spans[i].data = rows.ctypes.data
        p.spans = spans
        p.num_spans = len(embeddings)
        return p, gen, prompt, (prompt, spans, keep)

    def generate(self, prompt_token_ids: Sequence[int], gen_config: GenerationConfig | None = None,
                 embeddings: Sequence[Embeddings] = ()) -> RequestOutput:
        """Runs one request to the end (other requests keep running beside it)."""
        return self.add_request(prompt_token_ids, gen_config, embeddings).wait()

    def abort(self, request_id: int) -> bool:
        """Cancels a request; False if it had already finished."""
        status = self._lib.vlm_engine_cancel(self._engine, ctypes.c_uint64(request_id))
        if status == 3:  # NOT_FOUND: finished meanwhile
            return False
        check(status)
        return True

    def stats(self) -> EngineStats:
        s = _native.EngineStats()
        check(self._lib.vlm_engine_get_stats(self._engine, ctypes.byref(s)))
        return EngineStats(*(getattr(s, f) for f, _ in _native.EngineStats._fields_))

    # ------------------------------------------------------------------- poller
    def _poll_loop(self) -> None:
        events = (_native.Event * _POLL_BATCH)()
        n = ctypes.c_int32()
        while not self._closing:
            status = self._lib.vlm_engine_poll(self._engine, _POLL_TIMEOUT_MS, events, _POLL_BATCH, ctypes.byref(n))
            if status or self._closing:
                return
            # The async consumers to wake, by event loop, and the streams to hand to each sink (each stream once,
            # in order).
            woken: dict[asyncio.AbstractEventLoop, dict[int, RequestStream]] = {}
            sunk: dict[int, tuple] = {}
            for i in range(n.value):
                stream = self._dispatch(events[i])
                if stream is None:
                    continue
                if stream._sink is not None:
                    sunk.setdefault(id(stream._sink), (stream._sink, {}))[1][id(stream)] = stream
                elif stream._loop is not None:
                    woken.setdefault(stream._loop, {})[id(stream)] = stream
            for loop, streams in woken.items():
                _wake_streams(loop, list(streams.values()))
            for sink, streams in sunk.values():
                sink(list(streams.values()))

    def _dispatch(self, ev: _native.Event) -> "RequestStream | None":
        """Applies one event to its request's stream; returns the stream where an item was queued that its
        consumer should be woken for (by the caller, once per poll for all of them)."""
        with self._streams_lock:
            stream = self._streams.get(ev.request_id)
        if stream is None:
            return None
        r = stream.result
        if ev.kind == _native.EVENT_TOKEN:
            top = None
            if ev.num_top:
                top = {ev.top_tokens[i]: ev.top_logprobs[i] for i in range(ev.num_top)}
            out = TokenOutput(ev.token, ev.logprob if stream.wants_logprobs else None, top)
            r.token_ids.append(ev.token)
            if stream.wants_logprobs:
                r.logprobs.append(ev.logprob)
                if top is not None:
                    r.top_logprobs.append(top)
            stream._push(out, wake=False)
            return stream if stream._token_due() else None
        elif ev.kind == _native.EVENT_PROMPT_LOGPROBS:
            r.prompt_logprobs = _copy_floats(ev)
        elif ev.kind == _native.EVENT_LOGITS:
            rows = _copy_floats(ev).reshape(ev.token, -1)
            r.logits = rows if r.logits is None else np.concatenate([r.logits, rows])
        elif ev.kind == _native.EVENT_FINISH:
            r.finish_reason = FINISH_REASONS.get(ev.finish_reason, "error")
            r.stop_len = ev.stop_len
            r.error = ev.error.decode("utf-8", "replace") if ev.error else None
            r.num_preemptions = ev.num_preemptions
            r.queue_s, r.prefill_s, r.decode_s = ev.queue_ns / 1e9, ev.prefill_ns / 1e9, ev.decode_ns / 1e9
            with self._streams_lock:
                self._streams.pop(ev.request_id, None)
            stream._push(None, wake=False)
            return stream
        return None

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if getattr(self, "_poller", None) is not None:
            self._poller.join()
        self._lib.vlm_engine_free(self._engine)
        self._lib.vlm_model_free(self._model)
        self._engine = self._model = ctypes.c_void_p()
        with self._streams_lock:
            streams, self._streams = list(self._streams.values()), {}
        for s in streams:  # unblock readers of requests that will never finish now
            s.result.finish_reason = "cancelled"
            s._push(None)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _copy_floats(ev: _native.Event) -> np.ndarray:
    if ev.data_len == 0:
        return np.zeros(0, dtype=np.float32)
    return np.ctypeslib.as_array(ev.data, shape=(ev.data_len,)).copy()


def _as_token_array(tokens: Sequence[int]) -> np.ndarray:
    try:
        arr = np.asarray(tokens)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"prompt_token_ids must be a sequence of integers: {e}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidArgumentError(f"prompt_token_ids must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidArgumentError(f"prompt_token_ids must be integers, got {arr.dtype}")
    if arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max:
        raise InvalidArgumentError("prompt_token_ids hold values outside the int32 range")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _as_embedding_rows(rows, hidden: int) -> np.ndarray:
    if hasattr(rows, "detach"):  # a torch tensor: bf16 has no numpy dtype, so widen first
        rows = rows.detach().float().cpu().numpy()
    arr = np.asarray(rows)
    if arr.ndim != 2 or arr.shape[1] != hidden or arr.shape[0] == 0:
        raise InvalidArgumentError(f"embedding rows must have shape [n >= 1, {hidden}], got {arr.shape}")
    if arr.dtype not in (np.float16, np.float32):
        if not np.issubdtype(arr.dtype, np.floating):
            raise InvalidArgumentError(f"embedding rows must be floating point, got {arr.dtype}")
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)
