"""
Socket options every connection of a messaging server wants.

Nagle's algorithm holds a small write back until the previous one is
acknowledged, and the peer's delayed ACK waits up to 40 ms: a message
written after a PONG reaches its subscriber 40 ms late.  nats-server sets
TCP_NODELAY on every connection; so do we, under TLS too.
"""

from __future__ import annotations

from typing import Any


def no_delay(transport: Any) -> None:
    """
    Set TCP_NODELAY on the TCP connection under C{transport}, walking down
    through TLS layers (a C{TLSMemoryBIOProtocol} keeps the TCP transport as
    its own C{transport}).  Transports without a socket (tests, memory) are
    left alone.
    """
    for _ in range(4):
        if transport is None:
            return
        setter = getattr(type(transport), "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(transport, True)
            except OSError:
                pass  # not a TCP socket (a UNIX one), or already gone
            return
        transport = getattr(transport, "transport", None)
