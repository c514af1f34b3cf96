"""
What a read's fast paths deliver is what one operation at a time delivers.

The framing loop and the broker take shortcuts over a read of many
operations: batches to one subject, runs over many subjects handed to
C{deliver_run} (L{eventsvc.nats.framing.LONG_RUN_MAX}), CPython's split
runs, PyPy's splice of a cut message, a queue group's run served in one
call.  Each must deliver exactly what the same operations, sent one read
each, deliver.  These tests send random traffic (PUB with and without a
reply, HPUB, the publisher's own SUB, UNSUB and UNSUB with a maximum, PING,
payloads holding CRLF and "PUB", payloads around max_payload) both ways,
cut anywhere and under a spent parse budget, on both interpreters' paths,
from a client and across a route, a leaf link and a gateway, and compare
what every connection received.

What is compared is what NATS promises: each subscription's messages in
order, and where the PONGs and errors fall among them; a queue group's
messages, counted (which member gets one is random).  The order of two
subscriptions' messages on one connection, between two PONGs, is left
out: a batch to one subject gives each subscription its frames together
(L{eventsvc.nats.delivery.Delivery.deliver_batch}), as it has since batches
were made; nats.go and nats.py hand each subscription its own queue.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from eventsvc.nats.interfaces import IAuthenticator, IPermissions
from eventsvc.nats.login import Identity
from eventsvc.test.helpers import Harness

PLAIN_CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"headers":true%s}\r\n'
HEADERS = b"NATS/1.0\r\nA: b\r\n\r\n"

#: The ways a framer may read (split runs, splice cuts, splice from), besides the defaults.
MODES = [(True, False, 512), (False, False, 512), (False, True, 0), (True, True, 0)]


@implementer(IPermissions)
class NoSevens:
    """Publish to no subject with a 7 in it; subscribe to anything."""

    def may_publish(self, subject: bytes) -> bool:
        return b"7" not in subject

    def may_subscribe(self, subject: bytes, queue: Optional[bytes]) -> bool:
        return True


@implementer(IAuthenticator)
class Tokens:
    """Token "limited" logs in with L{NoSevens}; any other with no permissions."""

    def authenticate(self, connect: Dict[str, Any], peer: Any) -> Any:
        limited = connect.get("auth_token") == "limited"
        return succeed(Identity("limited" if limited else "any", NoSevens() if limited else None))


def payload(rng: random.Random) -> bytes:
    return rng.choice([
        b"x" * rng.choice([0, 1, 2, 5, 100, 600, 1500]),
        b"a\r\nPUB s.1 2\r\nhi\r\n", b"\r\n", b"\n\n", b"PUB s.2 1\r\n" + b"y" * 700, b"\r\nPUB" * 200,
        b"w" * rng.choice([1499, 1500, 1501]),
    ])


def traffic(rng: random.Random, subjects: int) -> List[bytes]:
    """A publisher's operations, one a list item."""
    ops: List[bytes] = []
    sid = 100
    for i in range(rng.randint(1, 300)):
        r = rng.random()
        subject = b"s.%d" % rng.randrange(subjects)
        data = payload(rng)
        if r < 0.6:
            ops.append(b"PUB %s %d\r\n%s\r\n" % (subject, len(data), data))
        elif r < 0.65:
            ops.append(b"PUB %s _INBOX.r%d %d\r\n%s\r\n" % (subject, i, len(data), data))
        elif r < 0.72:
            ops.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, len(HEADERS), len(HEADERS) + len(data), HEADERS, data))
        elif r < 0.8:
            sid += 1
            pattern = rng.choice([subject, b"s.*", b"s.>", b">"])
            group = b"q%d " % rng.randrange(2) if rng.random() < 0.3 else b""
            ops.append(b"SUB %s %s%d\r\n" % (pattern, group, sid))
        elif r < 0.86:
            ops.append(b"UNSUB %d\r\n" % rng.randint(100, sid))
        elif r < 0.9:
            ops.append(b"UNSUB %d %d\r\n" % (rng.randint(100, sid), rng.randint(1, 3)))
        elif r < 0.93:
            ops.append(b"PING\r\n")
        else:
            for _ in range(rng.randint(1, 30)):
                ops.append(b"PUB %s %d\r\n%s\r\n" % (subject, len(data), data))
    return ops


def subscriptions(rng: random.Random, subjects: int) -> bytes:
    """A subscriber's SUBs (plain and in groups g0, g1), and perhaps an UNSUB with a maximum."""
    lines = []
    for k in range(rng.randint(0, 5)):
        pattern = rng.choice([b"s.%d" % rng.randrange(subjects), b"s.*", b"s.>", b">", b"_INBOX.>"])
        group = b"g%d " % rng.randrange(2) if rng.random() < 0.4 else b""
        lines.append(b"SUB %s %s%d\r\n" % (pattern, group, k + 1))
    if rng.random() < 0.3:
        lines.append(b"UNSUB 1 %d\r\n" % rng.randint(1, 20))
    return b"".join(lines)


def queue_sids(sent: bytes) -> Set[bytes]:
    """The sids of the queue subscriptions in C{sent}."""
    sids = set()
    for line in sent.split(b"\r\n"):
        words = line.split(b" ")
        if words[0] == b"SUB" and len(words) == 4:
            sids.add(words[3])
    return sids


def frames(data: bytes) -> Iterator[Tuple[List[bytes], Optional[bytes]]]:
    """Each line a client received, split in words, with its payload (None: no payload)."""
    pos = 0
    while pos < len(data):
        nl = data.index(b"\r\n", pos)
        words = data[pos:nl].split(b" ")
        if words[0] in (b"MSG", b"HMSG"):
            size = int(words[-1])
            yield words, data[nl + 2 : nl + 2 + size]
            pos = nl + 4 + size
        else:
            yield words, None
            pos = nl + 2


def promised(received: List[bytes], sent: List[bytes]) -> List[Any]:
    """
    What NATS promises of C{received} (each connection's bytes; C{sent}
    what each subscribed with): per connection, between its other lines
    (PONG, -ERR), each subscription's messages in order; and every queue
    group's messages, counted.
    """
    result: List[Any] = []
    queued: Counter = Counter()
    for data, subs in zip(received, sent):
        groups = queue_sids(subs)
        seen: List[Any] = []
        segment: Dict[bytes, List[Any]] = {}
        for words, body in frames(data):
            if body is None:
                seen += [sorted(segment.items()), tuple(words)]
                segment = {}
            elif words[2] in groups:
                queued[(words[0], words[1], body, len(words))] += 1
            else:
                segment.setdefault(words[2], []).append((tuple(words), body))
        seen.append(sorted(segment.items()))
        result.append(seen)
    result.append(sorted(queued.items()))
    return result


def send(connection: Any, ops: List[bytes], mode: Any, rng: random.Random, cuts: int, settle: Callable[[], None]) -> None:
    """C{ops} one read each (C{mode} None), or together in reads cut at C{cuts} random places."""
    if mode is None:
        for op in ops:
            connection.send(op)
            settle()
        return
    data = b"".join(ops)
    points = sorted(rng.sample(range(1, len(data)), min(cuts, len(data) - 1)))
    for start, end in zip([0] + points, points + [len(data)]):
        connection.send(data[start:end])
    settle()


def set_mode(parser: Any, mode: Any, split_runs: bool = True) -> None:
    if mode is not None:
        if split_runs:
            parser.split_runs = mode[0]
        parser.splice_cuts, parser.splice_from = mode[1], mode[2]


class ClientReadTests(SynchronousTestCase):
    """A client's reads, against the same operations one read each."""

    def run_scene(self, seed: int, mode: Any, cuts: int = 0, budget: Optional[float] = None,
                  limited: bool = False, echo: bool = True) -> List[Any]:
        rng = random.Random(seed)
        subjects = rng.choice([1, 3, 50, 2000])
        ops = traffic(rng, subjects)
        h = Harness(authenticator=Tokens(), parse_budget=budget, max_payload=1500)
        h.broker._random.seed(seed)
        sent = [subscriptions(rng, subjects) for _ in range(4)]
        subscribers = [h.connect(PLAIN_CONNECT % b',"auth_token":"any"') for _ in sent]
        for subscriber, subs in zip(subscribers, sent):
            subscriber.send(subs)
        options = b',"no_responders":true,"echo":%s,"auth_token":"%s"' % (
            b"true" if echo else b"false", b"limited" if limited else b"any")
        publisher = h.connect(PLAIN_CONNECT % options)
        set_mode(publisher.proto.parser, mode)

        def settle() -> None:
            # (What a spent budget left waits for later turns.)
            for _ in range(2000):
                if not publisher.proto.parser or not publisher.proto.parser.suspended:
                    return
                h.clock.advance(0)

        send(publisher, ops, mode, rng, cuts, settle)
        return promised([c.all_received() for c in subscribers + [publisher]], sent + [b"".join(ops)])

    def assertSameDeliveries(self, seeds: range, **kwargs: Any) -> None:
        for seed in seeds:
            one_by_one = self.run_scene(seed, None, **kwargs)
            for mode in MODES:
                for cuts in (0, 3, 40):
                    self.assertEqual(self.run_scene(seed, mode, cuts, **kwargs), one_by_one, (seed, mode, cuts))

    def test_plain(self) -> None:
        self.assertSameDeliveries(range(4))

    def test_without_echo(self) -> None:
        self.assertSameDeliveries(range(4, 7), echo=False)

    def test_with_permissions(self) -> None:
        """Publishes to subjects with a 7 are refused in the middle of runs, each with its error, in order."""
        self.assertSameDeliveries(range(7, 10), limited=True)

    def test_budget_spent_every_sixteen(self) -> None:
        """A parse budget of 0: the read goes on in later turns, after every 16 operations and every run."""
        for seed in range(10, 13):
            one_by_one = self.run_scene(seed, None)
            for mode in MODES:
                self.assertEqual(self.run_scene(seed, mode, 7, budget=0.0), one_by_one, (seed, mode))


class LinkReadTests(SynchronousTestCase):
    """
    A client's reads on one server, delivered on another across a route, a
    leaf link (both ways) and a gateway: what the far side's subscribers
    get, against the same operations one read each.
    """

    def run_scene(self, seed: int, mode: Any, cuts: int, kind: str) -> List[Any]:
        rng = random.Random(seed)
        subjects = rng.choice([1, 3, 50, 2000])
        ops = traffic(rng, subjects)
        a, b, pumps, links = self.servers(kind, seed)

        def settle() -> None:
            for _ in range(50):
                for node in (a, b):
                    node.clock.advance(0)
                for pump in pumps:
                    pump.flush()

        settle()
        sent, clients = [], []
        for near in (True, False, False):
            subs = subscriptions(rng, subjects)
            client = (a if near else b).client()
            client.send(PLAIN_CONNECT % b"")
            client.send(subs)
            sent.append(subs)
            clients.append(client)
        settle()
        publisher = a.client()
        publisher.send(PLAIN_CONNECT % b"")
        set_mode(publisher.proto.parser, mode)
        for link in links:
            # (A route reads no split runs: its RMSG is not a PUB's shape.)
            set_mode(link.parser, mode, split_runs=kind != "route" and kind != "gateway")
        send(publisher, ops, mode, rng, cuts, settle)
        settle()
        return promised([c.all_received() for c in clients + [publisher]], sent + [b"".join(ops)])

    def servers(self, kind: str, seed: int) -> Tuple[Any, Any, List[Any], List[Any]]:
        if kind == "route":
            from eventsvc.test import test_route

            a, b = test_route.Node("A"), test_route.Node("B")
            pump, dialled, accepted = test_route.link(a, b)
            pumps = [pump]
            links = [dialled, accepted]
        elif kind == "gateway":
            from eventsvc.test import test_supercluster

            a, b = test_supercluster.Node("A", ["B"]), test_supercluster.Node("B", ["A"])
            one, d1, a1 = test_supercluster.link(a, b)
            other, d2, a2 = test_supercluster.link(b, a)
            pumps = [one, other]
            links = [d1, a1, d2, a2]
        else:
            from eventsvc.test import test_leaf

            a, b = test_leaf.Node("A"), test_leaf.Node("B")
            # "leaf": the publisher's server is the spoke; "hub": the hub.
            pump, uplink, downleaf = test_leaf.leaf(a, b) if kind == "leaf" else test_leaf.leaf(b, a)
            pumps = [pump]
            links = [uplink, downleaf]
        for node in (a, b):
            node.broker._random.seed(seed)
        return a, b, pumps, links

    def assertSameDeliveries(self, kind: str, seeds: range) -> None:
        for seed in seeds:
            one_by_one = self.run_scene(seed, None, 0, kind)
            for mode in MODES:
                for cuts in (0, 5):
                    self.assertEqual(self.run_scene(seed, mode, cuts, kind), one_by_one, (kind, seed, mode, cuts))

    def test_route(self) -> None:
        self.assertSameDeliveries("route", range(3))

    def test_leaf_spoke_to_hub(self) -> None:
        self.assertSameDeliveries("leaf", range(3, 6))

    def test_leaf_hub_to_spoke(self) -> None:
        self.assertSameDeliveries("hub", range(6, 9))

    def test_gateway(self) -> None:
        self.assertSameDeliveries("gateway", range(9, 11))


class CloseBehindABacklogTests(SynchronousTestCase):
    """
    A client closed for an error while its socket is full (its frames held
    back, L{eventsvc.nats.outbound.HeldOutput}): it is owed every message
    accepted for it before the error, as nats-server flushes them before
    its close, and a peer that never reads them does not keep the socket
    for ever: the close is cut after write_deadline, as nats-server's final
    flush is.
    """

    def scene(self) -> Tuple[Any, Any, Any]:
        h = Harness(max_pending=100000, write_deadline=10.0)
        subscriber, publisher = h.connect(), h.connect()
        subscriber.send(b"SUB foo 1\r\n")
        # Its kernel buffer is full: the transport pauses its producer.
        subscriber.transport.producer.pauseProducing()
        for i in range(3):
            publisher.send(b"PUB foo 1\r\n%d\r\n" % i)
        self.assertEqual(subscriber.received(), b"")
        subscriber.send(b"SUB bar 2\r\nFOO\r\n")
        return h, subscriber, publisher

    def test_held_messages_before_the_error(self) -> None:
        h, subscriber, _ = self.scene()
        self.assertEqual(
            subscriber.received(),
            b"MSG foo 1 1\r\n0\r\nMSG foo 1 1\r\n1\r\nMSG foo 1 1\r\n2\r\n-ERR 'Unknown Protocol Operation'\r\n",
        )
        self.assertTrue(subscriber.closed)

    def test_a_peer_that_never_reads_is_cut(self) -> None:
        h, subscriber, _ = self.scene()
        h.clock.advance(9.9)
        self.assertFalse(subscriber.aborted)
        h.clock.advance(0.2)
        self.assertTrue(subscriber.aborted)

    def test_a_peer_that_reads_closes_cleanly(self) -> None:
        """Its close done in time, nothing is left to cut (the clock is stopped)."""
        h, subscriber, _ = self.scene()
        subscriber.proto.connectionLost(None)
        self.assertEqual([c for c in h.clock.getDelayedCalls() if getattr(c.func, "__self__", None) is subscriber.proto], [])

    def test_a_link_too(self) -> None:
        """A server link closed behind a backlog: what was held, then the error; cut after write_deadline."""
        from eventsvc.test.test_supercluster import Node

        node = Node("A", ["B"])
        link, transport = node.accepted()
        transport.producer.pauseProducing()
        link.out.append(b"PING\r\n")
        link.flush()
        self.assertEqual(link.outbound.held_bytes, 6)
        transport.clear()
        link.close("Stale Connection", "stale")
        self.assertEqual(transport.value(), b"PING\r\n-ERR 'Stale Connection'\r\n")
        node.clock.advance(node.manager.settings.limits.write_deadline + 0.1)
        self.assertTrue(transport.disconnected)
