"""The engine of the LM service's engine process, as a front process (lm_fronts.py)
uses it: the same calls the LM servicer makes of a local Engine (add_request with
its async RequestStream, abort, spec, config, stats), over the front's pipe
(message forms: engine_host.py).

stats() is the engine's state when the front started (what the servicer reads of
it, max_model_len, does not change); the live gauges are the engine process's
/metrics. When the engine process goes away, every request in flight ends with
UNAVAILABLE and on_lost() is called (the front then stops)."""
from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence

from vlmserve import errors
from vlmserve.config import EngineConfig, GenerationConfig
from vlmserve.engine import Embeddings, RequestStream, _wake_streams
from vlmserve.model_spec import ModelSpec
from vlmserve.outputs import EngineStats
from vlmserve.services.pipe_close import close_pipe_end

log = logging.getLogger("vlmserve.lm")


class RemoteEngine:
    def __init__(self, conn, spec: ModelSpec, config: EngineConfig, stats: EngineStats,
                 on_lost: Callable[[], None] | None = None):
        self.spec, self.config, self._stats = spec, config, stats
        self._conn = conn
        self._send_lock = threading.Lock()
        self._streams: dict[int, RequestStream] = {}
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._lost = False
        self._on_lost = on_lost
        self._reader = threading.Thread(target=self._read, name="engine-link", daemon=True)
        self._reader.start()

    def stats(self) -> EngineStats:
        return self._stats

    def add_request(self, prompt_token_ids: Sequence[int], gen_config: GenerationConfig | None = None,
                    embeddings: Sequence[Embeddings] = (), loop=None) -> RequestStream:
        """Sends the request to the engine process; a refusal there arrives as the stream's error."""
        key = next(self._keys)
        ids = [int(t) for t in prompt_token_ids]
        stream = RequestStream(self, key, ids, loop)
        spans = [(int(e.position), e.rows) for e in embeddings]
        with self._lock:
            if self._lost:
                raise errors.UnavailableError("the engine process is gone")
            self._streams[key] = stream
        try:
            self._send(("add", key, ids, gen_config or GenerationConfig(), spans))
        except errors.UnavailableError:
            with self._lock:
                self._streams.pop(key, None)
            raise
        return stream

    def abort(self, request_id: int) -> bool:
        with self._lock:
            running = request_id in self._streams
        if running and not self._lost:
            try:
                self._send(("abort", request_id))
            except errors.UnavailableError:
                pass
        return running

    def close(self) -> None:
        """Ends the link: the engine process aborts this front's requests, and any still in flight here end with
        UNAVAILABLE (the reader thread wakes and stops)."""
        close_pipe_end(self._conn, self._reader)

    def _send(self, msg) -> None:
        try:
            with self._send_lock:
                self._conn.send(msg)
        except (OSError, ValueError) as e:
            raise errors.UnavailableError(f"the engine process is gone ({e})") from None

    def _read(self) -> None:
        try:
            while True:
                batch = self._conn.recv()
                woken: dict = {}
                with self._lock:
                    for key, tokens, final in batch:
                        stream = self._streams.get(key)
                        if stream is None:
                            continue
                        due = False
                        for tok in tokens:
                            stream._push(tok, wake=False)
                            due = stream._token_due() or due  # as the local poller wakes (stream interval)
                        if final is not None:
                            del self._streams[key]
                            if isinstance(final, tuple):  # ("error", class name, message): refused
                                cls = getattr(errors, final[1], None)
                                if not (isinstance(cls, type) and issubclass(cls, errors.VlmError)):
                                    cls = errors.InternalError
                                stream._push(cls(final[2]), wake=False)
                            else:
                                final.request_id = key
                                stream.result = final
                                stream._push(None, wake=False)
                        if stream._loop is not None and (due or final is not None):
                            woken.setdefault(stream._loop, {})[id(stream)] = stream
                for loop, streams in woken.items():
                    _wake_streams(loop, list(streams.values()))
        except (EOFError, OSError, TypeError):  # TypeError: the pipe closed here, under recv()
            pass
        self._lose()

    def _lose(self) -> None:
        """The engine process is gone: every request in flight fails UNAVAILABLE."""
        with self._lock:
            self._lost = True
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream._push(errors.UnavailableError("the engine process is gone"))
        if streams:
            log.error("engine process gone: requests in flight failed", extra={"fields": {"requests": len(streams)}})
        if self._on_lost is not None:
            self._on_lost()
