"""
What a message costs read from a real socket, in this process and on this
interpreter: the engine's connections on Twisted TCP transports over
socket pairs, turned by an epoll reactor of their own; the driver writes
what a publisher sends into its end (64 KiB at a time, so the server's
reads of 64 KiB cut messages anywhere, as a busy socket is read) and
reads everything the subscriber is sent.  Unlike L{bench.inproc}, every
read is a fresh object from the socket, and what a subscriber is sent
goes through the turn's send (L{eventsvc.nats.tcp.TurnEndWrites}).

    python bench/readpath.py [--scene NAME ...] [--messages N] [--rounds R]
    python bench/readpath.py --compare OTHER_PYTHON [--rounds 5]

Process time per message, best of the rounds, after a warm-up run (PyPy's
JIT); it includes the driver's own sends and receives, the same for every
tree.  With C{--compare}, the scenes run alternately under the other
interpreter (another tree's venv) and this one, and the ratio is printed.
It prints figures; it never passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

CONNECT = (
    b'CONNECT {"verbose":false,"pedantic":false,"tls_required":false,"name":"","lang":"go",'
    b'"version":"1.31.0","protocol":1,"echo":true,"headers":true,"no_responders":true}\r\n'
)
#: What the driver writes into a publisher's socket at once.
CHUNK = 65536


class _Port:
    """What a tcp.Server asks of its listening port."""

    _realPortNumber = 0


class World:
    """A broker, its client factory and a leaf manager, on a reactor of their own."""

    def __init__(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        from eventsvc.nats.limits import Limits
        from eventsvc.nats.links.leaf import LeafManager, LeafSettings
        from eventsvc.nats.listener import ClientFactory
        from eventsvc.nats.server import Broker
        from eventsvc.nats.settings import ClientSettings

        self.reactor = EPollReactor()
        self.broker = Broker(server_id="NREAD", server_name="read")
        self.factory = ClientFactory(self.broker, ClientSettings(), self.reactor)
        self.leafs = LeafManager(self.broker, self.reactor, LeafSettings(host="127.0.0.1", port=0, limits=Limits()))
        self.count = 0
        self.peers: List[socket.socket] = []

    def attach(self, proto: Any) -> socket.socket:
        """C{proto} on a TCP transport; returns the driver's end."""
        from twisted.internet import tcp

        mine, peer = _tcp_pair()
        for s in (mine, peer):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        mine.setblocking(False)
        self.count += 1
        transport = tcp.Server(mine, proto, ("127.0.0.1", 40000 + self.count), _Port(), self.count, self.reactor)
        proto.makeConnection(transport)
        peer.setblocking(False)
        self.peers.append(peer)
        return peer

    def until(self, peer: socket.socket, marker: bytes) -> bytes:
        """Turn the reactor until C{peer} has been sent C{marker}; what it was sent."""
        got = b""
        for _ in range(10000):
            self.reactor.iterate(0)
            try:
                got += peer.recv(1 << 16)
            except BlockingIOError:
                pass
            if marker in got:
                return got
        raise RuntimeError("never got {!r}: {!r}".format(marker, got[-200:]))

    def client(self, *subjects: bytes) -> socket.socket:
        peer = self.attach(self.factory.buildProtocol(None))
        peer.send(CONNECT + b"".join(b"SUB %s %d\r\n" % (s, i + 1) for i, s in enumerate(subjects)) + b"PING\r\n")
        self.until(peer, b"PONG\r\n")
        return peer

    def leaf(self) -> socket.socket:
        """A leaf node's link, accepted by our leaf manager (the driver is the leaf)."""
        peer = self.attach(self.leafs.accepted())
        self.until(peer, b"\r\n")  # its INFO
        peer.send(b'CONNECT {"verbose":false,"pedantic":false,"name":"spoke","headers":true}\r\nPING\r\n')
        self.until(peer, b"PONG\r\n")
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        for _ in range(3):
            self.reactor.iterate(0)


def _tcp_pair() -> Tuple[socket.socket, socket.socket]:
    """Both ends of a TCP connection over loopback (as the bench's are; a UNIX socket pair costs the kernel less)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = socket.create_connection(listener.getsockname())
    mine, _ = listener.accept()
    listener.close()
    return mine, peer


def stream(verb: bytes, subject: bytes, payload: bytes) -> bytes:
    """A stretch of a publisher's stream, at least twice a chunk long (sent round and round, L{pump})."""
    message = b"%s %s %d\r\n" % (verb, subject, len(payload)) + payload + b"\r\n"
    return message * (2 * CHUNK // len(message) + 1)


def pump(world: World, publisher: socket.socket, lap: bytes, messages: int, subscriber: socket.socket, expect: int) -> None:
    """
    Write C{messages} of what C{lap} holds into C{publisher} (round and
    round, a chunk at a time: the server's reads cut messages anywhere),
    turning the reactor, until C{subscriber} has read C{expect} bytes.
    """
    buf = bytearray(1 << 20)
    got = sent = 0
    each = 2 * len(lap) // lap.count(b"\r\n")
    n = each * messages
    period = len(lap) - len(lap) % each
    view = memoryview(lap[:period] * 2)
    iterate = world.reactor.iterate
    while got < expect:
        if sent < n:
            at = sent % period
            try:
                sent += publisher.send(view[at : at + min(CHUNK, n - sent)])
            except BlockingIOError:
                pass
        iterate(0)
        while True:
            try:
                k = subscriber.recv_into(buf)
            except BlockingIOError:
                break
            if not k:
                raise RuntimeError("the subscriber's connection closed")
            got += k


def _scene(size: int, verb: bytes) -> Callable[[int], Tuple[World, Callable[[], None]]]:
    """A subscriber on one client, C{verb} stream (C{PUB} from a client, C{LMSG} over a leaf link) of C{size} bytes."""
    def build(messages: int) -> Tuple[World, Callable[[], None]]:
        world = World()
        sub = world.client(b"bench.1.0.data")
        sender = world.leaf() if verb == b"LMSG" else world.client()
        payload = b"x" * size
        lap = stream(verb, b"bench.1.0.data", payload)
        expect = len(b"MSG bench.1.0.data 1 %d\r\n" % size) * messages + (size + 2) * messages
        return world, lambda: pump(world, sender, lap, messages, sub, expect)

    return build


SCENES: Dict[str, Callable[[int], Tuple[World, Callable[[], None]]]] = {
    "1KiB": _scene(1024, b"PUB"),
    "16B": _scene(16, b"PUB"),
    "leaf-1KiB": _scene(1024, b"LMSG"),
    "leaf-16B": _scene(16, b"LMSG"),
}


def once(scene: str, messages: int, rounds: int) -> float:
    """Best process seconds per message of C{rounds} runs of C{scene}, after one to warm up."""
    best = float("inf")
    for i in range(rounds + 1):
        world, run = SCENES[scene](messages)
        started = time.process_time()
        run()
        spent = time.process_time() - started
        world.close()
        if i:
            best = min(best, spent / messages)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", action="append", choices=sorted(SCENES), help="(default: all)")
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", action="append", default=[], help="another interpreter (its tree's venv python)")
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    scenes = options.scene or list(SCENES)
    if options.raw:
        print(json.dumps({s: once(s, options.messages, options.rounds) for s in scenes}))
        return
    pythons = options.compare + [sys.executable]
    best: Dict[Tuple[str, int], float] = {}
    for _ in range(options.rounds if options.compare else 1):
        for i, python in enumerate(pythons):
            if python == sys.executable and not options.compare:
                got = {s: once(s, options.messages, options.rounds) for s in scenes}
            else:
                out = subprocess.run(
                    [python, os.path.abspath(__file__), "--raw", "--messages", str(options.messages), "--rounds", "2"]
                    + [a for s in scenes for a in ("--scene", s)],
                    capture_output=True, text=True, check=True, cwd="/",
                ).stdout
                got = json.loads(out)
            for s, v in got.items():
                best[s, i] = min(best.get((s, i), v), v)
    for s in scenes:
        mine = best[s, len(pythons) - 1]
        print("{:10s} ".format(s) + "  ".join(
            "{:7.3f} us ({:.3f}x)".format(best[s, i] * 1e6, best[s, i] / mine) for i in range(len(pythons))), flush=True)


if __name__ == "__main__":
    main()
