"""
JetStream's hot paths measured in one process, without sockets: a client
connection on a fake transport and a JetStream engine with a file store
in a temporary folder, on a fake clock, fed the bytes nats.go sends in
bench/jetstream.py's scenes, timed on the CPU.  On a machine shared with
other work the wall-clock bench says little; this one is repeatable, and
its figures compare one tree with another, nothing more.

  - async: PUBs to the stream with a reply inbox each (nats.go's
    PublishAsync: C{_INBOX.<id>.<n>} under one wildcard subscription), a
    window of 1,000 a read, then the reactor's turn (the group commit and
    its PubAcks);
  - pull: a durable pull consumer with explicit acks over a stream filled
    beforehand (unmeasured): a fetch of 100, the deliveries, then one read
    with the 100 acks (the last with a reply, as nats.go's AckSync); the
    figure is split between the fetches (with their deliveries) and the
    reads of acks.

  - mirror, source: a mirror or a source of a stream filled beforehand
    (unmeasured), run turn after turn until it holds every message.

  - sync: nats.go's js.Publish, one PUB awaited at a time, through the
    whole server as twistd runs it (C{eventsvc.app.make_service} with a
    [jetstream] store_dir, default sync_interval) on a real epoll reactor
    of its own, over a loopback socket: each message is a reactor turn
    (the poll, the read, the publish, the store's write at the turn's end,
    the PubAck's send), and the client's blocking send and receive, which
    cost the same in every tree.  C{--sync-interval always} fsyncs each.

    python bench/jsinproc.py [--scene async|pull|mirror|source|sync] [--messages N] [--repeat R]

Under cachegrind: C{--once} runs a scene once, C{--setup-only} its set-up
alone (the filled stream of pull, mirror and source); the difference is
the scene's own count.

It imports eventsvc from the running interpreter (PYTHONPATH picks the
tree), so alternating two trees' runs compares them.  It prints figures;
it never passes or fails.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

PAYLOAD = b"0123456789abcdef"
CONNECT = (
    b'CONNECT {"verbose":false,"pedantic":false,"tls_required":false,"name":"","lang":"go",'
    b'"version":"1.22.1","protocol":1,"echo":true,"headers":true,"no_responders":true}\r\n'
)
_REPLY = re.compile(rb"MSG \S+ 2 (\$JS\.ACK\.\S+) ")


class World:
    """A broker with JetStream on a file store, one client connection, a fake clock."""

    def __init__(self, folder: str) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from eventsvc.jetstream.engine import JetStream, JetStreamSettings
        from eventsvc.nats.listener import ClientFactory
        from eventsvc.nats.server import Broker
        from eventsvc.nats.settings import ClientSettings

        class Keep(StringTransport):
            """Keeps what it is given as a list (cheap), joined on demand."""

            def __init__(self, **kw: Any) -> None:
                super().__init__(**kw)
                self.chunks: List[bytes] = []

            def write(self, data: bytes) -> None:
                self.chunks.append(data)

            def writeSequence(self, seq: List[bytes]) -> None:
                self.chunks.extend(seq)

            def take(self) -> bytes:
                out = b"".join(self.chunks)
                self.chunks = []
                return out

        self.clock = Clock()
        #: CPU seconds of a scene's parts (pull: the fetches with their deliveries, and the reads of acks).
        self.phases: Dict[str, float] = {}
        self.broker = Broker(server_id="JSBENCH")
        # A limit on the file store, as a server always has one (eventsvc.app
        # sets three quarters of the disk when the config says none).
        self.js = JetStream(self.broker, JetStreamSettings(store_dir=folder, max_file_store=1 << 40), self.clock)
        self.js.start()
        factory = ClientFactory(self.broker, ClientSettings(parse_budget=1e9), self.clock)
        self.client = factory.buildProtocol(None)
        self.transport = Keep(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        self.client.makeConnection(self.transport)
        # sid 1: the PubAcks' and API answers' inbox; sid 2: the fetches'.
        self.feed(CONNECT + b"SUB _INBOX.bench.* 1\r\nSUB _INBOX.fetch.* 2\r\nPING\r\n")

    def stop(self) -> None:
        self.js.stop()

    def feed(self, data: bytes) -> bytes:
        """One read from the client, then the reactor's turn; what the client was sent."""
        self.client.dataReceived(data)
        self.clock.advance(0)
        return self.transport.take()

    def request(self, subject: bytes, body: Dict[str, Any]) -> bytes:
        payload = json.dumps(body).encode()
        return self.feed(b"PUB %s _INBOX.bench.api %d\r\n%s\r\n" % (subject, len(payload), payload))

    def stream(self) -> None:
        self.request(b"$JS.API.STREAM.CREATE.BENCH", {"name": "BENCH", "subjects": ["BENCH.x"], "storage": "file"})

    def publishes(self, messages: int, window: int = 1000) -> List[bytes]:
        return [
            b"".join(
                b"PUB BENCH.x _INBOX.bench.%d %d\r\n%s\r\n" % (i, len(PAYLOAD), PAYLOAD)
                for i in range(start, min(start + window, messages))
            )
            for start in range(0, messages, window)
        ]


def async_scene(folder: str, messages: int) -> Tuple[Callable[[], int], World]:
    world = World(folder)
    world.stream()
    reads = world.publishes(messages)

    def run() -> int:
        acked = 0
        for data in reads:
            acked += world.feed(data).count(b'"seq":')
        return acked

    return run, world


def pull_scene(folder: str, messages: int, batch: int = 100) -> Tuple[Callable[[], int], World]:
    world = World(folder)
    world.stream()
    for data in world.publishes(messages):
        world.feed(data)
    world.request(b"$JS.API.CONSUMER.DURABLE.CREATE.BENCH.C", {
        "stream_name": "BENCH", "config": {"durable_name": "C", "ack_policy": "explicit", "filter_subject": "BENCH.x"}})
    fetch = b'{"batch":%d,"expires":10000000000}' % batch
    clock = time.process_time

    def run() -> int:
        acked = 0
        k = 0
        phases = world.phases = {"fetch": 0.0, "acks": 0.0}
        while acked < messages:
            k += 1
            started = clock()
            out = world.feed(b"PUB $JS.API.CONSUMER.MSG.NEXT.BENCH.C _INBOX.fetch.%d %d\r\n%s\r\n" % (k, len(fetch), fetch))
            phases["fetch"] += clock() - started
            replies = _REPLY.findall(out)
            if not replies:
                raise RuntimeError("the fetch got nothing: {!r}".format(out[:300]))
            acks = [b"PUB %s 4\r\n+ACK\r\n" % r for r in replies[:-1]]
            acks.append(b"PUB %s _INBOX.bench.a%d 4\r\n+ACK\r\n" % (replies[-1], k))
            read = b"".join(acks)
            started = clock()
            world.feed(read)
            phases["acks"] += clock() - started
            acked += len(replies)
        return acked

    return run, world


def copy_scene(kind: str, folder: str, messages: int) -> Tuple[Callable[[], int], World]:
    """
    A mirror or a source of a stream filled beforehand (unmeasured) over
    100 subjects, made and run until it holds every message: the origin's
    push consumer and the link's store, turn after turn, as on a hub
    after an outage (bench/jssourcing.py in one process).
    """
    world = World(folder)
    world.request(b"$JS.API.STREAM.CREATE.ORIGIN", {"name": "ORIGIN", "subjects": ["origin.>"], "storage": "file"})
    window = 1000
    for start in range(0, messages, window):
        world.feed(b"".join(
            b"PUB origin.%d _INBOX.bench.%d %d\r\n%s\r\n" % (i % 100, i, len(PAYLOAD), PAYLOAD)
            for i in range(start, min(start + window, messages))))
    name = "MIRROR" if kind == "mirror" else "SOURCE"
    config: Dict[str, Any] = {"name": name, "storage": "file"}
    if kind == "mirror":
        config["mirror"] = {"name": "ORIGIN"}
    else:
        config["sources"] = [{"name": "ORIGIN"}]

    def run() -> int:
        world.request(b"$JS.API.STREAM.CREATE." + name.encode(), config)
        store = world.js.streams[name].store
        turns = 0
        while store.state().msgs < messages:
            turns += 1
            if turns > 100 * messages:
                raise RuntimeError("{} stalled at {}".format(kind, store.state().msgs))
            # A turn; a millisecond on now and then lets timers (a flush) fire.
            world.clock.advance(0.001 if turns % 10 == 0 else 0)
            world.transport.take()
        return store.state().msgs

    return run, world


class ReactorWorld:
    """
    The server as twistd runs it (L{eventsvc.app.make_service}), on an epoll
    reactor of its own that this process turns by hand, and one client
    socket to it; the reactor's turns are C{mainLoop}'s (run what is due,
    then poll).
    """

    #: (No parts: the scene is one.)
    phases: Dict[str, float] = {}

    def __init__(self, folder: str, sync_interval: str = "") -> None:
        import os
        import socket

        from twisted.internet.epollreactor import EPollReactor

        from eventsvc import config as configuration
        from eventsvc.app import make_service

        self.reactor = reactor = EPollReactor()
        text = '[service]\nhost = "127.0.0.1"\nport = 0\n[jetstream]\nstore_dir = "{}"\n'.format(os.path.join(folder, "store"))
        if sync_interval:
            text += 'sync_interval = "{}"\n'.format(sync_interval)
        self.service = make_service(configuration.parse(text), reactor)
        self.service.startService()
        self.turn()
        port = self._port()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.received = b""
        self.send(CONNECT + b"SUB _INBOX.bench.* 1\r\nPING\r\n")
        self.wait(b"PONG\r\n")

    def _port(self) -> int:
        for service in self.service:
            listening = getattr(service, "listening", None)
            if listening is not None and getattr(service, "name", "") == "nats":
                return int(listening.getHost().port)
        for service in self.service:
            listening = getattr(service, "listening", None)
            if listening is not None:
                return int(listening.getHost().port)
        raise RuntimeError("no listener")

    def turn(self) -> None:
        """
        One turn of the reactor, as its mainLoop runs them (poll, then run
        what is due: mainLoop's order, begun at the poll, so that what a
        turn sends is there to receive before the next poll waits).
        """
        reactor = self.reactor
        reactor.doIteration(reactor.timeout())
        reactor.runUntilCurrent()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def wait(self, end: bytes, turns: int = 1000) -> bytes:
        """Turn the reactor until what the client received ends with C{end}; that, taken."""
        for _ in range(turns):
            self.turn()
            try:
                self.received += self.sock.recv(65536)
            except BlockingIOError:
                pass
            if self.received.endswith(end):
                out, self.received = self.received, b""
                return out
        raise RuntimeError("no {!r} after {} turns: {!r}".format(end, turns, self.received[-300:]))

    def stop(self) -> None:
        self.sock.close()
        self.service.stopService()
        for _ in range(10):
            self.turn() if self.reactor.getDelayedCalls() else None


def sync_scene(folder: str, messages: int, sync_interval: str = "") -> Tuple[Callable[[], int], Any]:
    world = ReactorWorld(folder, sync_interval)
    payload = json.dumps({"name": "BENCH", "subjects": ["BENCH.x"], "storage": "file"}).encode()
    world.send(b"PUB $JS.API.STREAM.CREATE.BENCH _INBOX.bench.api %d\r\n%s\r\n" % (len(payload), payload))
    world.wait(b"}\r\n")
    pubs = [b"PUB BENCH.x _INBOX.bench.%d %d\r\n%s\r\n" % (i, len(PAYLOAD), PAYLOAD) for i in range(messages)]

    def run() -> int:
        acked = 0
        send, wait = world.send, world.wait
        for data in pubs:
            send(data)
            if b'"seq":' in wait(b"}\r\n"):
                acked += 1
        return acked

    return run, world


SCENES = {
    "async": async_scene,
    "pull": pull_scene,
    "mirror": lambda folder, messages: copy_scene("mirror", folder, messages),
    "source": lambda folder, messages: copy_scene("source", folder, messages),
    "sync": sync_scene,
}


#: --sync-interval: the sync scene's [jetstream] sync_interval ("": the default).
SYNC_INTERVAL = ""


def once(scene: str, messages: int, setup_only: bool = False) -> Tuple[float, Dict[str, float]]:
    """
    CPU seconds per message of one run of C{scene}, and of its parts
    (C{setup_only}: its set-up alone, nothing run).
    """
    folder = tempfile.mkdtemp(prefix="jsinproc-")
    try:
        if scene == "sync":
            run, world = sync_scene(folder, messages, SYNC_INTERVAL)
        else:
            run, world = SCENES[scene](folder, messages)
        if setup_only:
            world.stop()
            return 0.0, {}
        started = time.process_time()
        done = run()
        spent = time.process_time() - started
        if done != messages:
            raise RuntimeError("{}: {} of {} acknowledged".format(scene, done, messages))
        world.stop()
        return spent / messages, {part: cpu / messages for part, cpu in world.phases.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", action="append", choices=sorted(SCENES))
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scene; the best is printed")
    parser.add_argument("--setup-only", action="store_true",
                        help="one run's set-up alone (under cachegrind, what to subtract from a whole run)")
    parser.add_argument("--once", action="store_true", help="one run, no warm-up (under cachegrind)")
    parser.add_argument("--sync-interval", default="", help='the sync scene\'s [jetstream] sync_interval ("always": an fsync each)')
    options = parser.parse_args()
    global SYNC_INTERVAL
    SYNC_INTERVAL = options.sync_interval
    for scene in options.scene or list(SCENES):
        if options.setup_only or options.once:
            once(scene, options.messages, options.setup_only)
            continue
        once(scene, options.messages // 10)  # warm-up (PyPy's JIT, imports)
        best, parts = min((once(scene, options.messages) for _ in range(options.repeat)), key=lambda run: run[0])
        split = ", ".join("{} {:.2f}".format(part, cpu * 1e6) for part, cpu in parts.items())
        print("{:<6} {:>8.2f} us CPU/msg{}".format(scene, best * 1e6, " ({})".format(split) if split else ""), flush=True)


if __name__ == "__main__":
    main()
