"""The engine process's side of the LM front processes (lm_fronts.py): each front
sends its requests over a pipe, and the engine's tokens for them go back over it.

Messages on a front's pipe (pickled tuples):
  front -> engine: ("add", key, token_ids, GenerationConfig, [(position, rows)]), ("abort", key)
  engine -> front: a list of (key, [TokenOutput, ...], final) where final is None while the request runs,
                   its RequestOutput at the end, or ("error", error class name, message) where the engine
                   refused the request.
Keys are the front's own request numbers. Everything the engine's poller delivers in one poll to one front
goes out as one message, sent by a thread of that front's link, so a slow front never holds up the poller.
A front that goes away (its pipe closes) has its requests aborted: their KV blocks are freed at once."""
from __future__ import annotations

import logging
import queue
import threading

from vlmserve.engine import Embeddings, Engine, RequestStream
from vlmserve.errors import VlmError
from vlmserve.services.pipe_close import close_pipe_end

log = logging.getLogger("vlmserve.lm")


class FrontLink:
    """One front process's pipe: a thread reading its requests, a thread sending their tokens."""

    def __init__(self, engine: Engine, conn, name: str):
        self.engine = engine
        self.conn = conn
        self.name = name
        self._streams: dict[int, RequestStream] = {}  # key -> stream, while the request runs
        self._keys: dict[int, int] = {}              # id(stream) -> key
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name=f"{name}-read", daemon=True)
        self._sender = threading.Thread(target=self._send, name=f"{name}-send", daemon=True)
        self.closed = threading.Event()

    def start(self) -> None:
        self._reader.start()
        self._sender.start()

    # -- the front's requests -------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                if msg[0] == "add":
                    self._add(*msg[1:])
                elif msg[0] == "abort":
                    with self._lock:
                        stream = self._streams.get(msg[1])
                    if stream is not None:
                        self.engine.abort(stream.request_id)
                else:
                    log.error("unknown message from a front process", extra={"fields": {"front": self.name,
                                                                                       "kind": str(msg[0])}})
        except (EOFError, OSError, TypeError):  # TypeError: the pipe closed here, under recv()
            pass  # the front is gone (or the engine process is stopping)
        finally:
            self._abandon()

    def _add(self, key: int, token_ids, gen, spans) -> None:
        try:
            with self._lock:  # registered before the poller can deliver anything for it
                stream = self.engine.add_request(token_ids, gen, [Embeddings(p, rows) for p, rows in spans],
                                                 sink=self._deliver)
                self._streams[key] = stream
                self._keys[id(stream)] = key
        except VlmError as e:
            self._outbox.put([(key, [], ("error", type(e).__name__, str(e)))])
        except Exception as e:  # a malformed message: the front's request fails, the link goes on
            self._outbox.put([(key, [], ("error", "InternalError", f"{type(e).__name__}: {e}"))])

    def _abandon(self) -> None:
        """The front is gone: abort what it had running (their events are dropped) and stop sending."""
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
            self._keys.clear()
        for stream in streams:
            try:
                self.engine.abort(stream.request_id)
            except VlmError:
                pass
        if streams:
            log.warning("front process gone: its requests were aborted",
                        extra={"fields": {"front": self.name, "requests": len(streams)}})
        self.closed.set()
        self._outbox.put(None)

    # -- their tokens -----------------------------------------------------------------------------------
    def _deliver(self, streams: list[RequestStream]) -> None:
        """The engine's poller thread: what these streams received, as one message to the front."""
        batch = []
        with self._lock:
            for stream in streams:
                key = self._keys.get(id(stream))
                if key is None:  # the front is gone
                    continue
                items = stream.take_queued()
                done = bool(items) and items[-1] is None
                tokens = items[:-1] if done else items
                if done:
                    del self._streams[key], self._keys[id(stream)]
                batch.append((key, tokens, stream.result if done else None))
        if batch:
            self._outbox.put(batch)

    def _send(self) -> None:
        while True:
            batch = self._outbox.get()
            if batch is None:
                return
            last = False
            try:  # everything waiting goes in one message
                while True:
                    more = self._outbox.get_nowait()
                    if more is None:  # the end: what came before it still goes
                        last = True
                        break
                    batch.extend(more)
            except queue.Empty:
                pass
            try:
                self.conn.send(batch)
            except (OSError, ValueError):  # the front is gone: the reader sees it too
                return
            if last:
                return

    def close(self) -> None:
        """Stops sending and ends the pipe (the reader wakes, aborts what the front had running and stops)."""
        self._outbox.put(None)
        close_pipe_end(self.conn, self._reader)
