"""
A pull consumer's requests whose reply inbox is on the other side of a
route, a leaf link or a gateway, in memory: the batch (handed to the broker
together, L{eventsvc.nats.server.Broker.deliver_as_many}), the 408 and 409
statuses after it, in order, and the acks back to the consumer, as
nats-server 2.9 frames them across links (C{<ack>@<stream subject>}).
"""

from __future__ import annotations

import json
from typing import Any, Callable, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from eventsvc.jetstream.engine import JetStream, JetStreamSettings
from eventsvc.test import test_leaf, test_route, test_supercluster


def frames(data: bytes) -> List[Tuple[bytes, bytes]]:
    """Each C{MSG}/C{HMSG} in C{data}: (its subject, its status line or payload)."""
    out = []
    rest = data
    while rest:
        line, rest = rest.split(b"\r\n", 1)
        parts = line.split(b" ")
        if parts[0] == b"MSG":
            size = int(parts[-1])
            out.append((parts[1], rest[:size]))
            rest = rest[size + 2:]
        elif parts[0] == b"HMSG":
            hsize, size = int(parts[-2]), int(parts[-1])
            out.append((parts[1], rest[:hsize].split(b"\r\n")[0]))
            rest = rest[size + 2:]
    return out


class PullAcross:
    """The checks, for a JetStream server (C{self.js}) and a client's server (C{self.far}) joined by a link."""

    js: Any
    far: Any
    flush: Callable[[], None]

    def start(self, clock: Any) -> None:
        self.engine = JetStream(self.js.broker, JetStreamSettings(), clock, now=lambda: 1_000_000_000_000 + int(clock.seconds() * 1e9))
        self.engine.start()
        self.addCleanup(self.engine.stop)  # type: ignore[attr-defined]
        self.clock = clock
        self.admin = self.js.client()
        self.admin.send(b'CONNECT {"verbose":false,"headers":true}\r\nSUB _R.> 1\r\n')
        self.api(b"$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["orders.>"], "storage": "memory"})
        self.api(b"$JS.API.CONSUMER.DURABLE.CREATE.S.p", {"stream_name": "S", "config": {
            "durable_name": "p", "ack_policy": "explicit"}})
        self.client = self.far.client()
        self.client.send(b'CONNECT {"verbose":false,"headers":true}\r\nSUB _INBOX.p.* 7\r\nPING\r\n')
        self.client.received()
        self.flush()

    def api(self, subject: bytes, body: dict) -> dict:
        payload = json.dumps(body).encode()
        self.admin.send(b"PUB %s _R.1 %d\r\n%s\r\n" % (subject, len(payload), payload))
        self.flush()
        frame = self.admin.received()
        return json.loads(frame.split(b"\r\n")[1])

    def publish(self, *payloads: bytes) -> None:
        for i, payload in enumerate(payloads):
            self.admin.send(b"PUB orders.%d %d\r\n%s\r\n" % (i, len(payload), payload))
        self.flush()

    def pull(self, inbox: bytes, request: dict) -> List[Tuple[bytes, bytes]]:
        payload = json.dumps(request).encode()
        self.admin.send(b"PUB $JS.API.CONSUMER.MSG.NEXT.S.p %s %d\r\n%s\r\n" % (inbox, len(payload), payload))
        self.flush()
        return frames(self.client.received())

    def info(self) -> dict:
        return self.api(b"$JS.API.CONSUMER.INFO.S.p", {})

    def test_batch_then_408_and_acks_come_back(self: Any) -> None:
        """A no-wait batch of 3 with 2 stored: both messages, then 408, and the far client's acks count."""
        self.publish(b"m0", b"m1")
        got = self.pull(b"_INBOX.p.1", {"batch": 3, "no_wait": True})
        self.assertEqual(got, [(b"orders.0", b"m0"), (b"orders.1", b"m1"), (b"_INBOX.p.1", b"NATS/1.0 408 Request Timeout")])
        self.assertEqual(self.info()["num_ack_pending"], 2)
        wire = self.client.all_received()
        acks = [line.split(b" ")[3] for line in wire.split(b"\r\n") if line.startswith(b"MSG orders.")]
        self.assertEqual(len(acks), 2, wire)
        for ack in acks:
            self.assertTrue(ack.startswith(b"$JS.ACK.S.p.1."), ack)
            self.client.send(b"PUB " + ack + b" 4\r\n+ACK\r\n")
        self.flush()
        info = self.info()
        self.assertEqual((info["num_ack_pending"], info["ack_floor"]["stream_seq"]), (0, 2), info)

    def test_max_bytes_409_after_what_fitted(self: Any) -> None:
        """A fetch's max_bytes: what fits arrives, then 409 Message Size Exceeds MaxBytes, in that order."""
        self.publish(b"x" * 10, b"y" * 500)
        got = self.pull(b"_INBOX.p.2", {"batch": 5, "max_bytes": 200, "expires": 10 ** 9})
        self.assertEqual(got, [(b"orders.0", b"x" * 10), (b"_INBOX.p.2", b"NATS/1.0 409 Message Size Exceeds MaxBytes")])

    def test_expired_request_408_after_its_messages(self: Any) -> None:
        """A request that waits: what comes is delivered as it comes, then 408 at its expiry."""
        got = self.pull(b"_INBOX.p.3", {"batch": 3, "expires": 10 ** 9})
        self.assertEqual(got, [])
        self.publish(b"late")
        self.assertEqual(frames(self.client.received()), [(b"orders.0", b"late")])
        self.clock.advance(1.5)
        self.flush()
        self.assertEqual(frames(self.client.received()), [(b"_INBOX.p.3", b"NATS/1.0 408 Request Timeout")])

    def test_consumer_deleted_mid_batch(self: Any) -> None:
        """Deleted with a request half served: the far client hears 409 Consumer Deleted after the message it got."""
        self.publish(b"one")
        got = self.pull(b"_INBOX.p.4", {"batch": 3, "expires": 30 * 10 ** 9})
        self.assertEqual(got, [(b"orders.0", b"one")])
        self.assertTrue(self.api(b"$JS.API.CONSUMER.DELETE.S.p", {}).get("success"))
        self.assertEqual(frames(self.client.received()), [(b"_INBOX.p.4", b"NATS/1.0 409 Consumer Deleted")])

    def test_stream_purged_mid_batch(self: Any) -> None:
        """Purged with a request half served: the request still waits, and takes what is stored after."""
        self.publish(b"one", b"two")
        self.pull(b"_INBOX.p.5", {"batch": 1})
        got = self.pull(b"_INBOX.p.6", {"batch": 3, "expires": 30 * 10 ** 9})
        self.assertEqual(got, [(b"orders.1", b"two")])
        self.assertTrue(self.api(b"$JS.API.STREAM.PURGE.S", {}).get("success"))
        self.publish(b"three")
        self.assertEqual(frames(self.client.received()), [(b"orders.0", b"three")])
        self.assertEqual(self.info()["num_waiting"], 1)


class RoutePullTests(PullAcross, SynchronousTestCase):
    """The JetStream server and the client's joined by a route."""

    def setUp(self) -> None:
        self.js, self.far = test_route.Node("A"), test_route.Node("B")
        self.pump = test_route.link(self.js, self.far)[0]
        self.start(self.js.clock)

    def flush(self) -> None:
        for _ in range(3):
            self.pump.flush()


class HubPullTests(PullAcross, SynchronousTestCase):
    """JetStream in the hub, the client on a leaf node."""

    def setUp(self) -> None:
        self.js, self.far = test_leaf.Node("H"), test_leaf.Node("S")
        self.pump = test_leaf.leaf(self.far, self.js)[0]
        self.start(self.js.clock)

    def flush(self) -> None:
        for _ in range(3):
            self.pump.flush()


class SpokePullTests(HubPullTests):
    """JetStream on the leaf node, the client in the hub."""

    def setUp(self) -> None:
        self.js, self.far = test_leaf.Node("S"), test_leaf.Node("H")
        self.pump = test_leaf.leaf(self.js, self.far)[0]
        self.start(self.js.clock)


class GatewayPullTests(PullAcross, SynchronousTestCase):
    """The JetStream server's cluster and the client's joined by gateways."""

    def setUp(self) -> None:
        self.js, self.far = test_supercluster.Node("A", ["B"]), test_supercluster.Node("B", ["A"])
        self.pumps = [test_supercluster.link(self.js, self.far)[0], test_supercluster.link(self.far, self.js)[0]]
        self.start(self.js.clock)

    def flush(self) -> None:
        for _ in range(4):
            for pump in self.pumps:
                pump.flush()


class YoungRequestTests(SynchronousTestCase):
    """
    On a server with leaf nodes a request whose inbox nobody is known to
    hear is served for two seconds (nats-server's
    C{defaultGatewayRecentSubExpiration}): what goes to it reaches nobody.
    """

    def setUp(self) -> None:
        self.hub, self.far = test_leaf.Node("H"), test_leaf.Node("S")
        self.pump = test_leaf.leaf(self.far, self.hub)[0]
        clock = self.hub.clock
        self.engine = JetStream(self.hub.broker, JetStreamSettings(), clock, now=lambda: 1_000_000_000_000 + int(clock.seconds() * 1e9))
        self.engine.start()
        self.addCleanup(self.engine.stop)
        self.admin = self.hub.client()
        self.admin.send(b"SUB _R.> 1\r\n")

    def flush(self) -> None:
        for _ in range(3):
            self.pump.flush()

    api = PullAcross.api
    pull = PullAcross.pull
    info = PullAcross.info

    def test_a_message_nobody_took_is_not_counted_again_and_again(self) -> None:
        """
        One message, a request of 3 nobody hears, max_deliver 2: the
        message went out once (as nats-server sends it once, and waits
        ack_wait), not once a round until the request's 3 are used up
        (delivery count 3, past max_deliver: the message was dropped and
        the next request, heard, got nothing).
        """
        self.api(b"$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["orders.>"], "storage": "memory"})
        self.api(b"$JS.API.CONSUMER.DURABLE.CREATE.S.p", {"stream_name": "S", "config": {
            "durable_name": "p", "ack_policy": "explicit", "max_deliver": 2, "ack_wait": 30 * 10 ** 9}})
        self.admin.send(b"PUB orders.0 3\r\none\r\n")
        self.flush()
        payload = json.dumps({"batch": 3, "expires": 10 ** 9}).encode()
        self.admin.send(b"PUB $JS.API.CONSUMER.MSG.NEXT.S.p _INBOX.nobody.1 %d\r\n%s\r\n" % (len(payload), payload))
        self.flush()
        self.hub.clock.advance(0)
        self.flush()
        info = self.info()
        self.assertEqual((info["delivered"]["consumer_seq"], info["num_redelivered"], info["num_ack_pending"]), (1, 0, 1), info)
        self.client = self.far.client()
        self.client.send(b"SUB _INBOX.p.* 7\r\nPING\r\n")
        self.client.received()
        self.flush()
        # (At once: the request it went to has ended, nobody hearing it.)
        got = self.pull(b"_INBOX.p.1", {"batch": 1, "expires": 10 ** 9})
        self.assertEqual(got, [(b"orders.0", b"one")])
        self.assertIn(b" $JS.ACK.S.p.2.1.2.", self.client.all_received())
