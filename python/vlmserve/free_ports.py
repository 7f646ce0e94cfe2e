"""Free local TCP ports for services started on this machine (the demo, the serving benchmark)."""
from __future__ import annotations

import socket


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports free on `host` now. All are bound at once: bound one at a time, the kernel may hand
    out again a port it has just taken back, and two services started together would then fight over it."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
