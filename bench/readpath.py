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
    python bench/readpath.py --curve N [--blocks B] [--rounds R] [--jit PARAMS ...] [--one-process] --scene NAME ...

Process time per message, best of the rounds, after a warm-up run (PyPy's
JIT); it includes the driver's own sends and receives, the same for every
tree.  With C{--compare}, the scenes run alternately under the other
interpreter (another tree's venv) and this one, and the ratio is printed.
With C{--curve N}, the warm-up curve instead: process time per message of
each block of N, one after another from a fresh process's start, for each
scene (and under each C{--jit} setting of PyPy's, alternated, a fresh
process each), the median of the rounds block by block.  Besides the four
scenes above, three are for curves: C{pwc-1000} (1,000 subjects through
C{bench.1.*.data}), C{request-reply} (one request in flight, a fresh
inbox each) and C{connections} (a plaintext connection's life through a
real listening port, as natsbench C{-mode connect} lives it).

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


def pwc_1000(messages: int) -> Tuple[World, Callable[[], None]]:
    """
    1,000 subjects through C{bench.1.*.data}, 16 B, 1:1 (natsbench
    C{-subjects 1000 -sub pwc}; the subjects are numbered in three digits,
    so that every message is as long and L{pump} can cut its laps).
    """
    world = World()
    sub = world.client(b"bench.1.*.data")
    sender = world.client()
    names = [b"bench.1.%03d.data" % i for i in range(1000)]
    walk = b"".join(b"PUB %s 16\r\n0123456789abcdef\r\n" % name for name in names)
    lap = walk * (2 * CHUNK // len(walk) + 1)
    expect = len(b"MSG bench.1.000.data 1 16\r\n0123456789abcdef\r\n") * messages
    return world, lambda: pump(world, sender, lap, messages, sub, expect)


def _await(world: World, peer: socket.socket, size: int) -> None:
    """Turn the reactor until C{peer} has read C{size} bytes (and no more are due)."""
    got = 0
    while got < size:
        world.reactor.iterate(0)
        try:
            got += len(peer.recv(1 << 16))
        except BlockingIOError:
            pass


def request_reply(messages: int) -> Tuple[World, Callable[[], None]]:
    """
    Request and reply, one request in flight (natsbench C{-mode latency}):
    the requester asks C{svc} with a reply inbox of its own each time
    (C{_INBOX.r.<j>}, under its C{_INBOX.r.*}), the responder answers it;
    two reactor turns a request at least.  C{messages} is the requests.
    """
    world = World()
    requester = world.client(b"_INBOX.r.*")
    responder = world.client(b"svc")
    payload = b"0123456789abcdef"
    count = [0]

    def run() -> None:
        for _ in range(messages):
            j = count[0] = count[0] + 1
            inbox = b"_INBOX.r.%d" % j
            requester.send(b"PUB svc %s 16\r\n%s\r\n" % (inbox, payload))
            _await(world, responder, len(b"MSG svc 1 %s 16\r\n" % inbox) + 18)
            responder.send(b"PUB %s 16\r\n%s\r\n" % (inbox, payload))
            _await(world, requester, len(b"MSG %s 1 16\r\n" % inbox) + 18)

    return world, run


def connections(messages: int) -> Tuple[World, Callable[[], None]]:
    """
    A plaintext connection's life as natsbench C{-mode connect} lives it
    (nats.go's connect, flush and close), through a real listening port:
    the accept, INFO, CONNECT and PING, PING, the close; the server logs
    as twistd does (text, info, here to /dev/null).  C{messages} is the
    connections.
    """
    from twisted.logger import globalLogBeginner

    from eventsvc.ops.logs import make_observer

    globalLogBeginner.beginLoggingTo(
        [make_observer("text", "info", open(os.devnull, "w"))], discardBuffer=True, redirectStandardIO=False)
    world = World()
    port = world.reactor.listenTCP(0, world.factory, interface="127.0.0.1")
    where = ("127.0.0.1", port.getHost().port)
    live = world.factory.live

    def run() -> None:
        for _ in range(messages):
            peer = socket.create_connection(where)
            peer.setblocking(False)
            world.until(peer, b"\r\n")  # INFO
            peer.send(CONNECT + b"PING\r\n")
            world.until(peer, b"PONG\r\n")
            peer.send(b"PING\r\n")
            world.until(peer, b"PONG\r\n")
            peer.close()
            while live:
                world.reactor.iterate(0)

    return world, run


SCENES: Dict[str, Callable[[int], Tuple[World, Callable[[], None]]]] = {
    "1KiB": _scene(1024, b"PUB"),
    "16B": _scene(16, b"PUB"),
    "leaf-1KiB": _scene(1024, b"LMSG"),
    "leaf-16B": _scene(16, b"LMSG"),
    "pwc-1000": pwc_1000,
    "request-reply": request_reply,
    "connections": connections,
}
#: With --curve --one-process: what a block of N is divided by for these scenes, and what they count.
UNIT = {"connections": (100, "connection"), "request-reply": (50, "request")}
#: What runs without --scene (the others are for --curve).
DEFAULT = ("1KiB", "16B", "leaf-1KiB", "leaf-16B")


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


def warm_up_curve(scene: str, block: int, blocks: int) -> List[float]:
    """
    Process seconds per message of each of C{blocks} blocks of C{block}
    messages of C{scene}, one after another in this process from its start:
    how the cost falls as PyPy's JIT compiles what the scene runs.
    """
    world, run = SCENES[scene](block)
    spent = []
    for _ in range(blocks):
        started = time.process_time()
        run()
        spent.append((time.process_time() - started) / block)
    world.close()
    return spent


def apply_jit(spec: str) -> None:
    """C{pypyjit.set_param(spec)} ("" or "default": PyPy's own)."""
    if spec in ("", "default"):
        return
    try:
        import pypyjit
    except ImportError:
        raise SystemExit("--jit {!r}: this interpreter has no JIT (PyPy's pypyjit)".format(spec))
    pypyjit.set_param(spec)


def curves(options: argparse.Namespace, scenes: List[str]) -> None:
    """
    C{--curve}: each scene's warm-up curve under each C{--jit} setting, from
    a fresh process each time, the settings alternated C{--rounds} times;
    the median of the rounds block by block, and a summary: the first
    block, the steady cost (median of the last quarter), the messages
    until a block is within 1.25x of it for good, and the CPU of the whole
    curve (what the warm-up costs, steady state included).
    """
    jits = options.jit or ["default"]
    got: Dict[Tuple[str, str], List[List[float]]] = {}
    groups = [scenes] if options.one_process else [[s] for s in scenes]
    for _ in range(options.rounds):
        for group in groups:
            for jit in jits:
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--raw-curve", "--curve", str(options.curve),
                     "--blocks", str(options.blocks), "--jit", jit] + (["--one-process"] if options.one_process else [])
                    + [a for s in group for a in ("--scene", s)],
                    capture_output=True, text=True, check=True, cwd="/",
                ).stdout
                for scene, curve in zip(group, json.loads(out)):
                    got.setdefault((scene, jit), []).append(curve)
    for scene in scenes:
        divisor, unit = UNIT.get(scene, (1, "message"))
        block = options.curve // divisor if options.one_process else options.curve
        print("{}: us a {}, blocks of {}, {}, median of {} ({})".format(
            scene, unit, block, "after the scenes above in the same process" if options.one_process else "from a fresh process",
            options.rounds, sys.executable), flush=True)
        for jit in jits:
            runs = got[scene, jit]
            median = [sorted(r[i] for r in runs)[len(runs) // 2] for i in range(options.blocks)]
            tail = sorted(median[-max(1, options.blocks // 4):])
            steady = tail[len(tail) // 2]
            warm = next(i for i, v in enumerate(median) if v <= 1.25 * steady)
            print("  jit {}: first {:.2f}, steady {:.2f}, first within 1.25x of it after {:,}, first quarter {:.3f} s, all {:.3f} s".format(
                jit, median[0] * 1e6, steady * 1e6, warm * block, sum(median[: max(1, options.blocks // 4)]) * block,
                sum(median) * block), flush=True)
            print("    " + " ".join("{:.2f}".format(v * 1e6) for v in median), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", action="append", choices=sorted(SCENES), help="(default: {})".format(", ".join(DEFAULT)))
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", action="append", default=[], help="another interpreter (its tree's venv python)")
    parser.add_argument("--curve", type=int, metavar="N", help="the warm-up curve: CPU per message of each block of N from a fresh process")
    parser.add_argument("--blocks", type=int, default=40, help="with --curve: how many blocks")
    parser.add_argument("--jit", action="append", metavar="PARAMS",
                        help="with --curve: PyPy JIT parameters (pypyjit.set_param), repeatable, alternated; default: PyPy's own")
    parser.add_argument("--one-process", action="store_true",
                        help="with --curve: the scenes one after another in one process (a new kind of traffic on a warm server);"
                             " N is divided by 50 for requests, by 100 for connections")
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--raw-curve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    scenes = options.scene or list(DEFAULT)
    if options.raw_curve:
        apply_jit(options.jit[0])
        if options.one_process:
            print(json.dumps([warm_up_curve(s, options.curve // UNIT.get(s, (1, ""))[0], options.blocks) for s in scenes]))
        else:
            print(json.dumps([warm_up_curve(scenes[0], options.curve, options.blocks)]))
        return
    if options.curve:
        curves(options, scenes)
        return
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
