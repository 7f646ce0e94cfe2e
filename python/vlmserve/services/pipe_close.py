"""Closing one end of a process pipe (multiprocessing.Pipe) so that it really ends.

While another thread of this process is blocked in recv() on a Connection, closing the Connection's descriptor
neither wakes that thread nor ends the pipe for the process at the other end: Linux keeps the socket open until
the blocked call returns, which it never does. The front's link (remote_engine.py) and the engine's side of it
(engine_host.py) each keep such a reader thread, so their close() shuts the socket down first: the reader wakes
with EOF, and the other end sees the pipe end and aborts or fails what it had in flight.

Only then is the descriptor closed, once that reader has stopped: a Connection's recv() takes the descriptor's
number before it reads, so a reader between the two when the descriptor closes would read whatever the number
opens next — another pipe's bytes, with one made right after (a link closed and the next opened)."""
from __future__ import annotations

import os
import socket
import threading

READER_STOP_S = 5.0  # how long close waits for the reader to stop before closing the descriptor anyway


def close_pipe_end(conn, reader: threading.Thread | None = None) -> None:
    """Shuts down and closes `conn`; nothing happens to one already closed. A pipe end that is not a socket (a
    one-way os.pipe) is only closed. `reader`: the thread that reads `conn`, waited for (up to READER_STOP_S)
    between the shutdown that wakes it and the close, unless it is the caller."""
    try:
        fd = conn.fileno()
    except (OSError, ValueError):  # already closed
        return
    try:  # a second descriptor of the same socket: shutdown ends both (socket.fromfd would leak it where the end
        # is not a socket)
        dup = os.dup(fd)
    except OSError:
        dup = -1
    if dup >= 0:
        try:
            s = socket.socket(fileno=dup)
        except OSError:  # not a socket
            os.close(dup)
        else:
            with s:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the other end is already gone
    if reader is not None and reader is not threading.current_thread() and reader.is_alive():
        reader.join(READER_STOP_S)
    try:
        conn.close()
    except OSError:
        pass
