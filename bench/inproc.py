"""
The engine's hot path measured in one process, without sockets: client
connections on fake transports, fed the bytes a publisher sends, timed on
the CPU (or counted in instructions under callgrind).  On a machine shared
with other work a wall-clock benchmark is noise; this one is repeatable,
and its figures compare one tree with another, nothing more.

    python bench/inproc.py [--scene NAME ...] [--messages N] [--repeat R]
    python bench/inproc.py --compare OTHER_PYTHON [--rounds 5]
    valgrind --tool=callgrind python bench/inproc.py --scene many-fwc --messages N

Each scene builds a broker, its subscribers (each on a transport that only
counts what it is given) and publishers, and feeds the publishers the
bytes that natsbench would send: 16-byte payloads over 1,000 subjects
C{bench.1.<i>.data}, in reads of 64 KiB cut at any byte (as a busy
socket is read), or one PUB a read for the slow fleet.  The parse budget
is set so high that it never runs out, but is still checked.

It imports eventsvc from the running interpreter, so C{--compare} runs the
same scenes in another tree's virtual environment, alternately with this
one, and prints the ratio of the CPU times (best of each).  It prints
figures; it never passes or fails.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

PAYLOAD = b"0123456789abcdef"
READ = 65536
#: What nats.go sends (natsbench's client).
CONNECT = (
    b'CONNECT {"verbose":false,"pedantic":false,"tls_required":false,"name":"","lang":"go",'
    b'"version":"1.31.0","protocol":1,"echo":true,"headers":true,"no_responders":true}\r\n'
)


def _imports() -> Tuple[Any, Any, Any, Any, Any]:
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from eventsvc.nats.listener import ClientFactory
    from eventsvc.nats.server import Broker
    from eventsvc.nats.settings import ClientSettings

    class Sink(StringTransport):
        """A transport that counts what it is given and keeps none of it."""

        given = 0

        def write(self, data: bytes) -> None:
            self.given += len(data)

        def writeSequence(self, seq: List[bytes]) -> None:
            self.given += sum(map(len, seq))

    return IPv4Address, Clock, Sink, (ClientFactory, Broker), ClientSettings


class World:
    """A broker and its client connections, on a fake clock."""

    def __init__(self) -> None:
        self.address, clock, self.sink, (factory, broker), settings = _imports()
        self.clock = clock()
        self.broker = broker(server_id="NBENCH")
        self.factory = factory(self.broker, settings(parse_budget=1e9), self.clock)
        self.count = 0

    def connect(self, *subjects: bytes, queue: bytes = b"") -> Any:
        proto = self.factory.buildProtocol(None)
        self.count += 1
        transport = self.sink(peerAddress=self.address("TCP", "127.0.0.1", 40000 + self.count))
        proto.makeConnection(transport)
        group = queue + b" " if queue else b""
        subs = b"".join(b"SUB %s %s%d\r\n" % (s, group, i + 1) for i, s in enumerate(subjects))
        proto.dataReceived(CONNECT + subs + b"PING\r\n")
        transport.given = 0
        return proto


def subjects(count: int) -> List[bytes]:
    return [b"bench.1.%d.data" % i for i in range(count)]


def pubs(names: List[bytes], messages: int, start: int = 0, payload: bytes = PAYLOAD) -> bytes:
    """What one publisher sends: C{messages} PUBs round the subjects, from C{start} on."""
    n = len(names)
    return b"".join(b"PUB %s %d\r\n%s\r\n" % (names[(start + j) % n], len(payload), payload) for j in range(messages))


def reads(data: bytes, size: int = READ) -> List[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


Scene = Callable[[int], Tuple[Callable[..., None], Callable[[], int]]]


def _stream(
    patterns: List[List[bytes]], publishers: int, count: int, messages: int, payload: bytes = PAYLOAD, queue: bytes = b"",
) -> Any:
    """
    Subscribers (one per entry of C{patterns}, members of C{queue} when
    given), C{publishers} publishers each sending its share in 64 KiB
    reads, interleaved.
    """
    world = World()
    subs = [world.connect(*p, queue=queue) for p in patterns]
    names = subjects(count)
    each = messages // publishers
    senders = [(world.connect(), reads(pubs(names, each, k * count // publishers, payload))) for k in range(publishers)]
    # The publishers' reads taken in turn, as the reactor would.
    order: List[Tuple[Any, bytes]] = []
    longest = max(len(r) for _, r in senders)
    for i in range(longest):
        for proto, rs in senders:
            if i < len(rs):
                order.append((proto, rs[i]))

    def run(fraction: float = 1.0, start: float = 0.0) -> None:
        for proto, data in order[int(len(order) * start) : int(len(order) * fraction)]:
            proto.dataReceived(data)

    def delivered() -> int:
        return sum(s.transport.given for s in subs)

    return run, delivered


def many_fwc(messages: int) -> Any:
    """1,000 subjects through C{bench.1.>}, 1:1 (natsbench -subjects 1000 -sub fwc)."""
    return _stream([[b"bench.1.>"]], 1, 1000, messages)


def many_pwc(messages: int) -> Any:
    """1,000 subjects through C{bench.1.*.data}, 1:1."""
    return _stream([[b"bench.1.*.data"]], 1, 1000, messages)


def many_pwc_4_2(messages: int) -> Any:
    """1,000 subjects through C{bench.1.*.data}, 4 publishers : 2 subscribers."""
    return _stream([[b"bench.1.*.data"]] * 2, 4, 1000, messages)


def exact_300(messages: int) -> Any:
    """300 subjects, a subscription on each, 1:1."""
    return _stream([subjects(300)], 1, 300, messages)


def kib_10000(messages: int) -> Any:
    """10,000 subjects through C{bench.1.>}, 1 KiB payloads."""
    return _stream([[b"bench.1.>"]], 1, 10000, messages, PAYLOAD * 64)


def one_subject(messages: int) -> Any:
    """One subject, 1:1, 16 B (the plain scene: runs of one subject, batched)."""
    return _stream([[b"bench.1.0.data"]], 1, 1, messages)


def publish_only(messages: int) -> Any:
    """One subject, 16 B, nobody subscribed (natsbench -np 1 -ns 0)."""
    return _stream([], 1, 1, messages)


def one_subject_4_4(messages: int) -> Any:
    """One subject, 16 B, 4 publishers : 4 subscribers."""
    return _stream([[b"bench.1.0.data"]] * 4, 4, 1, messages)


def kib_one_subject(messages: int) -> Any:
    """One subject, 1 KiB payloads, 1:1."""
    return _stream([[b"bench.1.0.data"]], 1, 1, messages, PAYLOAD * 64)


def queue_10(messages: int) -> Any:
    """1,000 subjects through C{bench.1.>}, a queue group of 10 members (one connection each), 1 publisher."""
    world = World()
    members = [world.connect() for _ in range(10)]
    for proto in members:
        proto.dataReceived(b"SUB bench.1.> workers 1\r\n")
    names = subjects(1000)
    publisher = world.connect()
    order = [(publisher, data) for data in reads(pubs(names, messages))]

    def run(fraction: float = 1.0, start: float = 0.0) -> None:
        for proto, data in order[int(len(order) * start) : int(len(order) * fraction)]:
            proto.dataReceived(data)

    return run, lambda: sum(m.transport.given for m in members)


def queue_10_many(messages: int) -> Any:
    """
    A queue group of 10 over 1,000 subjects, 4 publishers : 10 members
    through C{bench.1.*.data} (natsbench -np 4 -ns 10 -queue q -subjects
    1000 -sub pwc): each message goes to one member.
    """
    return _stream([[b"bench.1.*.data"]] * 10, 4, 1000, messages, queue=b"q")


def queue_10_one(messages: int) -> Any:
    """
    A queue group of 10 on one subject, 1 publisher : 10 members
    (natsbench -np 1 -ns 10 -queue q): runs of one subject, batched.
    """
    return _stream([[b"bench.1.0.data"]] * 10, 1, 1, messages, queue=b"q")


def publish_only_1000(messages: int) -> Any:
    """
    4 publishers over 1,000 subjects, nobody subscribed: the read side's
    share of C{queue-10-4:10} (what is left is its delivery).
    """
    return _stream([], 4, 1000, messages)


def many_publishers(messages: int) -> Any:
    """
    50 publishers over 1,000 subjects, each on its own walk, reads of
    about 2 KiB (a busy publisher's batch), 2 subscribers through
    C{bench.1.>} and C{bench.1.*.data}.
    """
    world = World()
    subs = [world.connect(b"bench.1.>"), world.connect(b"bench.1.*.data")]
    names = subjects(1000)
    each = messages // 50
    senders = [(world.connect(), reads(pubs(names, each, k * 20), 2048)) for k in range(50)]
    order: List[Tuple[Any, bytes]] = []
    for i in range(max(len(r) for _, r in senders)):
        for proto, rs in senders:
            if i < len(rs):
                order.append((proto, rs[i]))

    def run(fraction: float = 1.0, start: float = 0.0) -> None:
        for proto, data in order[int(len(order) * start) : int(len(order) * fraction)]:
            proto.dataReceived(data)

    return run, lambda: sum(s.transport.given for s in subs)


def request_reply(messages: int) -> Any:
    """
    Request and reply, each request with an inbox of its own (as nats.go's
    old-style requests, and every client's reply to a new inbox): the
    requester subscribes C{_INBOX.r.*}, asks C{svc.<j % 10>} with reply
    C{_INBOX.r.<j>}, and the responder answers to that inbox, one PUB a
    read each way (the round trip's shape).
    """
    world = World()
    responder = world.connect(b"svc.*")
    requester = world.connect(b"_INBOX.r.*")
    order: List[Tuple[Any, bytes]] = []
    for j in range(messages // 2):
        order.append((requester, b"PUB svc.%d _INBOX.r.%d %d\r\n%s\r\n" % (j % 10, j, len(PAYLOAD), PAYLOAD)))
        order.append((responder, b"PUB _INBOX.r.%d %d\r\n%s\r\n" % (j, len(PAYLOAD), PAYLOAD)))

    def run(fraction: float = 1.0, start: float = 0.0) -> None:
        for proto, data in order[int(len(order) * start) : int(len(order) * fraction)]:
            proto.dataReceived(data)

    return run, lambda: responder.transport.given + requester.transport.given


def slow_fleet(messages: int) -> Any:
    """200 publishers over 1,000 subjects through C{bench.1.>}, each read one PUB (the fleet at 50/s each)."""
    world = World()
    sub = world.connect(b"bench.1.>")
    names = subjects(1000)
    fleet = [world.connect() for _ in range(200)]
    order = []
    for j in range(messages):
        k = j % 200
        # Publisher k's (j // 200)th message, on its own walk round the subjects.
        order.append((fleet[k], b"PUB %s %d\r\n%s\r\n" % (names[(k * 5 + j // 200) % 1000], len(PAYLOAD), PAYLOAD)))

    def run(fraction: float = 1.0, start: float = 0.0) -> None:
        for proto, data in order[int(len(order) * start) : int(len(order) * fraction)]:
            proto.dataReceived(data)

    return run, lambda: sub.transport.given


def requests(messages: int) -> Any:
    """Requests with a reply inbox each (used once), one a read, to a responder on 10 subjects."""
    world = World()
    responder = world.connect(b"svc.*")
    requester = world.connect(b"_INBOX.r.*")
    order = [(requester, b"PUB svc.%d _INBOX.r.%d %d\r\n%s\r\n" % (j % 10, j, len(PAYLOAD), PAYLOAD)) for j in range(messages)]

    def run(fraction: float = 1.0, start: float = 0.0) -> None:
        for proto, data in order[int(len(order) * start) : int(len(order) * fraction)]:
            proto.dataReceived(data)

    return run, lambda: responder.transport.given


def reqrep_inboxes(messages: int) -> Any:
    """
    Request and reply as natsbench's C{-mode reqrep -np 50 -ns 2 -subjects
    100} sends them: 50 requesters, each on its own connection with one
    C{_INBOX.<id>.*} subscription (nats.go's request muxing), asking round
    100 subjects with a reply token of their own each time; two responders
    in a queue group on C{bench.1.*.data}, each answering to the reply
    subject it was given.  One PUB a read each way, the requesters' turns
    interleaved, and each request answered in the read after it (the
    responder a member picked at random, as the server picks it).
    """
    world = World()
    responders = [world.connect(b"bench.1.*.data", queue=b"responders") for _ in range(2)]
    requesters = [world.connect(b"_INBOX.r%02dxxxxxxxxxxxxxxx.*" % k) for k in range(50)]
    names = subjects(100)
    tail = b"%d\r\n%s\r\n" % (len(PAYLOAD), PAYLOAD)
    asks = []
    for j in range(messages // 2):
        k = j % 50
        reply = b"_INBOX.r%02dxxxxxxxxxxxxxxx.%d" % (k, j // 50)
        asks.append((requesters[k], b"PUB %s %s %s" % (names[j % 100], reply, tail), b"PUB %s %s" % (reply, tail)))

    def run(fraction: float = 1.0, start: float = 0.0) -> None:
        for requester, ask, answer in asks[int(len(asks) * start) : int(len(asks) * fraction)]:
            requester.dataReceived(ask)
            # The member the request went to answers it.
            for responder in responders:
                if responder.transport.given:
                    responder.transport.given = 0
                    responder.dataReceived(answer)
                    break

    return run, lambda: sum(r.transport.given for r in requesters)


def slow_fleet_sockets(messages: int) -> Any:
    """
    The slow fleet through a real reactor (epoll) and loopback TCP: 200
    publishers and one subscriber through C{bench.1.>} over 1,000
    subjects, each reactor turn reading one PUB from one publisher, as
    the fleet at 50/s each is read.  What this adds to C{slow-fleet} is
    what a turn costs: the poll, the read, the turn-end send to the
    subscriber, Twisted's own calls, and the timers (publishers' sockets
    are written, and the subscriber's read, in this process too: the same
    cost on both trees).
    """
    import socket

    from twisted.internet.epollreactor import EPollReactor

    from eventsvc.nats.listener import ClientFactory
    from eventsvc.nats.server import Broker
    from eventsvc.nats.settings import ClientSettings

    reactor = EPollReactor()
    broker = Broker(server_id="NBENCH")
    port = reactor.listenTCP(0, ClientFactory(broker, ClientSettings(), reactor), interface="127.0.0.1")
    where = ("127.0.0.1", port.getHost().port)

    def dial(subject: bytes = b"") -> Any:
        sock = socket.create_connection(where)
        sock.sendall(CONNECT + (b"SUB %s 1\r\n" % subject if subject else b"") + b"PING\r\n")
        sock.setblocking(False)
        got = b""
        while b"PONG\r\n" not in got:
            # (Waiting in the poll, not spinning: a count of instructions
            # must not depend on how long the accept took.)
            reactor.iterate(0.05)
            try:
                got += sock.recv(65536)
            except BlockingIOError:
                pass
        return sock

    sub = dial(b"bench.1.>")
    fleet = [dial() for _ in range(200)]
    names = subjects(1000)
    order = []
    for j in range(messages):
        k = j % 200
        order.append((fleet[k], b"PUB %s %d\r\n%s\r\n" % (names[(k * 5 + j // 200) % 1000], len(PAYLOAD), PAYLOAD)))
    got = [0]

    def drain() -> None:
        try:
            while True:
                data = sub.recv(262144)
                if not data:
                    return
                got[0] += len(data)
        except BlockingIOError:
            pass

    def run(fraction: float = 1.0, start: float = 0.0) -> None:
        iterate = reactor.iterate
        for i, (sock, data) in enumerate(order[int(len(order) * start) : int(len(order) * fraction)]):
            sock.send(data)
            # One turn, which runs the last turn's end (its send) and then
            # waits in the poll for this PUB: a busy machine's loopback can
            # be late, and a turn that found nothing would read two PUBs in
            # the next (cheaper, and a count that moves from run to run).
            iterate(0.05)
            if not i & 63:
                drain()
        for _ in range(3):
            iterate(0)
        drain()

    return run, lambda: got[0]


SCENES: Dict[str, Scene] = {
    "many-fwc": many_fwc,
    "many-pwc": many_pwc,
    "many-pwc-4:2": many_pwc_4_2,
    "exact-300": exact_300,
    "10k-1KiB": kib_10000,
    "one-subject": one_subject,
    "slow-fleet": slow_fleet,
    "requests": requests,
    "publish-only": publish_only,
    "4:4": one_subject_4_4,
    "1KiB": kib_one_subject,
    "queue-10": queue_10,
    "queue-10-4:10": queue_10_many,
    "queue-10-1:10": queue_10_one,
    "publish-only-1000": publish_only_1000,
    "many-publishers": many_publishers,
    "request-reply": request_reply,
    "reqrep-inboxes": reqrep_inboxes,
    "slow-fleet-sockets": slow_fleet_sockets,
}


def once(scene: str, messages: int, repeat: int) -> Tuple[float, int]:
    """The best CPU seconds per message of C{repeat} runs of C{scene}, and the bytes delivered by one."""
    best = float("inf")
    given = 0
    for _ in range(repeat):
        run, delivered = SCENES[scene](messages)
        started = time.process_time()
        run()
        spent = time.process_time() - started
        best = min(best, spent / messages)
        given = delivered()
    return best, given


def raw(scene: str, messages: int, fraction: float) -> None:
    """One run of C{scene}, up to C{fraction} of its reads after a tenth of them as warm-up (for an instruction count)."""
    run, delivered = SCENES[scene](messages)
    if fraction < 0:
        # For callgrind --zero-before=sys_getrefcount --dump-before=sys_getallocatedblocks:
        # the tenth after the first, warm.
        run(0.1)
        gc.collect()
        sys.getrefcount(None)
        run(0.2, 0.1)
        sys.getallocatedblocks()
    else:
        run(fraction)
    print(0, delivered())


def instructions(python: str, scene: str, messages: int) -> float:
    """
    Instructions per message of C{scene} under C{python}, counted by
    cachegrind: a run to a tenth of the reads, taken from a run to the
    end, so that start-up and the first plans count for nothing.
    """
    counts = []
    for fraction in (0.1, 1.0):
        result = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
             python, os.path.abspath(__file__), "--scene", scene, "--messages", str(messages), "--fraction", str(fraction)],
            capture_output=True, text=True, check=True, cwd="/", env=dict(os.environ, PYTHONHASHSEED="0"),
        )
        refs = [line for line in result.stderr.splitlines() if "I   refs:" in line or "I refs:" in line]
        counts.append(int(refs[-1].split(":")[1].replace(",", "")))
    return (counts[1] - counts[0]) / (messages * 0.9)


def child(other: str, scene: str, messages: int, repeat: int) -> Tuple[float, int]:
    out = subprocess.run(
        [other, os.path.abspath(__file__), "--scene", scene, "--messages", str(messages), "--repeat", str(repeat), "--raw"],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout.split()
    return float(out[0]), int(out[1])


def curve(scene: str, block: int, blocks: int) -> List[float]:
    """
    CPU seconds per message of C{blocks} runs of C{block} messages of
    C{scene} in turn, each on a new broker, in this process from its start
    (C{--curve}): how the cost falls while PyPy's JIT compiles the scene.
    Each run's set-up is not timed.  C{bench/readpath.py --curve} does the
    same over sockets and compares JIT settings.
    """
    spent = []
    for _ in range(blocks):
        run, _delivered = SCENES[scene](block)
        started = time.process_time()
        run()
        spent.append((time.process_time() - started) / block)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", action="append", choices=sorted(SCENES), help="(default: all)")
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", action="append", default=[], help="another interpreter (its tree's venv python)")
    parser.add_argument("--rounds", type=int, default=5, help="with --compare: alternate this many times")
    parser.add_argument("--instructions", action="store_true", help="with --compare: count instructions (cachegrind), not CPU time")
    parser.add_argument("--curve", type=int, metavar="N", help="the warm-up curve: us per message of each run of N, from this fresh process")
    parser.add_argument("--blocks", type=int, default=40, help="with --curve: how many runs")
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fraction", type=float, help=argparse.SUPPRESS)
    options = parser.parse_args()
    scenes = options.scene or list(SCENES)
    if options.curve:
        for scene in scenes:
            print("{:14s} ".format(scene) + " ".join("{:.2f}".format(v * 1e6) for v in curve(scene, options.curve, options.blocks)), flush=True)
        return
    if options.fraction is not None:
        raw(scenes[0], options.messages, options.fraction)
        return
    if options.raw:
        spent, given = once(scenes[0], options.messages, options.repeat)
        print(spent, given)
        return
    if not options.compare:
        for scene in scenes:
            spent, given = once(scene, options.messages, options.repeat)
            print("{:14s} {:7.3f} us/msg  {} bytes out".format(scene, spent * 1e6, given))
        return
    pythons = options.compare + [sys.executable]
    if options.instructions:
        for scene in scenes:
            counts = [instructions(python, scene, options.messages) for python in pythons]
            print("{:14s} ".format(scene) + "  ".join("{:8.0f} Ir ({:.3f}x)".format(c, c / counts[-1]) for c in counts), flush=True)
        return
    for scene in scenes:
        best = [float("inf")] * len(pythons)
        given = [0] * len(pythons)
        for _ in range(options.rounds):
            for i, python in enumerate(pythons):
                spent, given[i] = child(python, scene, options.messages, options.repeat)
                best[i] = min(best[i], spent)
        mine = best[-1]
        print("{:14s} ".format(scene) + "  ".join(
            "{:7.3f} us ({:.3f}x)".format(b * 1e6, b / mine) for b in best) + ("" if len(set(given)) == 1 else "  BYTES DIFFER %s" % given))


if __name__ == "__main__":
    main()
