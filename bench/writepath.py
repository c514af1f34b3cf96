"""
What one reactor turn's write costs on a real socket, Twisted's way against
ours (L{eventsvc.nats.tcp.TurnEndWrites}), in this process and on this
interpreter: a turn writes one reply-sized frame (or a batch of pieces) to
a TCP transport over a socket pair, the epoll reactor turns once, and the
peer reads it.  Process time, best of several rounds, so a busy machine
moves it little; it prints figures and never passes or fails.

    python bench/writepath.py [--turns N] [--rounds R]

Twisted's way: C{write} registers the socket for writability (C{epoll_ctl}),
the turn's poll finds it writable, C{doWrite} sends and unregisters it
(C{epoll_ctl}).  Ours: C{write} buffers, and the turn's end sends.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Any, Dict, List, Tuple

REPLY = b"MSG _INBOX.abcdefgh.1 1 5\r\nhello\r\n"


class _Port:
    """What a tcp.Server asks of its listening port."""

    _realPortNumber = 0


def _transport(reactor: Any, ours: bool) -> Tuple[Any, socket.socket]:
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    from eventsvc.nats.tcp import send_at_turn_end

    mine, peer = socket.socketpair()
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    protocol = Protocol()
    transport = tcp.Server(mine, protocol, ("127.0.0.1", 0), _Port(), 1, reactor)
    protocol.makeConnection(transport)
    transport.stopReading()
    if ours:
        send_at_turn_end(transport)
    peer.setblocking(False)
    return transport, peer


def turns(reactor: Any, ours: bool, count: int, pieces: List[bytes]) -> float:
    """Microseconds of process time per turn that writes C{pieces}."""
    transport, peer = _transport(reactor, ours)
    size = sum(map(len, pieces))
    buf = bytearray(size + 65536)
    write = transport.write if len(pieces) == 1 else None
    started = time.process_time()
    for _ in range(count):
        if write is not None:
            write(pieces[0])
        else:
            transport.writeSequence(pieces)
        got = 0
        while got < size:
            reactor.iterate(0)
            try:
                got += peer.recv_into(buf)
            except BlockingIOError:
                pass
    spent = time.process_time() - started
    peer.close()
    transport.socket.close()
    return spent / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()
    kib = [b"MSG bench.1 1 ", b"1024\r\n" + b"x" * 1024 + b"\r\n"] * 64
    scenes = [("one reply (35 B)", [REPLY], 1), ("64 x 1 KiB, pieces", kib, 20)]
    for name, pieces, fewer in scenes:
        best: Dict[str, float] = {}
        for _ in range(args.rounds):
            for way, ours in (("twisted", False), ("turn end", True)):
                took = turns(reactor, ours, args.turns // fewer, pieces)
                best[way] = min(best.get(way, took), took)
        print(
            "{:<8} {:<20} Twisted's way {:7.2f} us/turn   at the turn's end {:7.2f} us/turn   ({:.0%})".format(
                sys.implementation.name, name, best["twisted"], best["turn end"], best["turn end"] / best["twisted"]
            )
        )


if __name__ == "__main__":
    main()
