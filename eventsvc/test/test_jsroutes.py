"""
JetStream deliveries across routes and gateways, in memory, as nats-server
2.9 frames them: the link is sent C{RMSG <deliver subject> <ack>@<stream
subject>}, and the far side shows its client the stream subject and the
plain ack reply; the client's ack crosses back to the consumer's side.
"""

from __future__ import annotations

import json
from typing import Any, List

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.jetstream.consumer import GATEWAY_INTEREST_CHECK
from eventsvc.jetstream.engine import JetStream, JetStreamSettings
from eventsvc.test import test_route, test_supercluster

ACK = b"$JS.ACK.S.c.1.1.1.0.0"


def spy(conn: Any) -> List[bytes]:
    """What C{conn} writes to its peer, kept as it is written."""
    wire: List[bytes] = []
    write = conn.transport.write

    def tap(data: bytes) -> None:
        wire.append(data)
        write(data)
    conn.transport.write = tap
    return wire


class Across:
    """The checks, for a consumer's server (C{self.js}) and the client's (C{self.far}) joined by a link."""

    js: Any
    far: Any
    wire: List[bytes]
    verb: bytes

    def flush(self) -> None:
        raise NotImplementedError

    def subscribe(self, line: bytes) -> Any:
        client = self.far.client(b'CONNECT {"verbose":false,"headers":true}\r\n')
        client.send(line + b"PING\r\n")
        client.received()
        self.flush()
        return client

    def test_delivery_crosses_on_the_deliver_subject(self: Any) -> None:
        client = self.subscribe(b"SUB deliver.c 7\r\n")
        other = self.subscribe(b"SUB orders.> 8\r\n")
        self.assertEqual(self.js.broker.deliver_as("deliver.c", "orders.1", b"hi", reply=ACK.decode()), 1)
        self.flush()
        self.assertIn(b"RMSG $G deliver.c " + ACK + b"@orders.1 2\r\nhi\r\n", b"".join(self.wire))
        self.assertEqual(client.received(), b"MSG orders.1 7 " + ACK + b" 2\r\nhi\r\n")
        self.assertEqual(other.received(), b"")  # a delivery is no publish on the stream subject

    def test_with_headers(self: Any) -> None:
        client = self.subscribe(b"SUB deliver.c 7\r\n")
        headers = b"NATS/1.0\r\nNats-Msg-Id: 1\r\n\r\n"
        self.js.broker.deliver_as("deliver.c", "orders.2", b"hi", reply=ACK.decode(), headers=headers)
        self.flush()
        n, total = len(headers), len(headers) + 2
        self.assertIn(b"HMSG $G deliver.c %s@orders.2 %d %d\r\n" % (ACK, n, total), b"".join(self.wire))
        self.assertEqual(client.received(), b"HMSG orders.2 7 %s %d %d\r\n%shi\r\n" % (ACK, n, total, headers))

    def test_queue_group(self: Any) -> None:
        client = self.subscribe(b"SUB deliver.q workers 7\r\n")
        self.assertEqual(self.js.broker.deliver_as("deliver.q", "orders.3", b"x", reply=ACK.decode()), 1)
        self.flush()
        self.assertIn(ACK + b"@orders.3", b"".join(self.wire))
        self.assertEqual(client.received(), b"MSG orders.3 7 " + ACK + b" 1\r\nx\r\n")

    def test_without_a_reply(self: Any) -> None:
        """(nats-server: no reply, no @subject; the far side sees the deliver subject.)"""
        client = self.subscribe(b"SUB deliver.c 7\r\n")
        self.js.broker.deliver_as("deliver.c", "orders.4", b"x")
        self.flush()
        self.assertEqual(client.received(), b"MSG deliver.c 7 1\r\nx\r\n")

    def test_ack_crosses_back(self: Any) -> None:
        consumer = self.js.client()
        consumer.send(b"SUB $JS.ACK.S.c.> 1\r\nPING\r\n")
        consumer.received()
        client = self.subscribe(b"SUB deliver.c 7\r\n")
        self.js.broker.deliver_as("deliver.c", "orders.5", b"x", reply=ACK.decode())
        self.flush()
        # (Not a routed _GR_ reply though the ack subscription is recent:
        # nats-server maps only replies a client subscribed to.)
        self.assertIn(b" deliver.c " + ACK + b"@orders.5 1\r\n", b"".join(self.wire))
        reply = client.received().split(b" ")[3]
        self.assertEqual(reply, ACK)
        client.send(b"PUB " + reply + b" 4\r\n+ACK\r\n")
        self.flush()
        self.assertEqual(consumer.received(), b"MSG " + ACK + b" 1 4\r\n+ACK\r\n")

    def test_plain_replies_are_untouched(self: Any) -> None:
        """A reply with an @ that is no JetStream ack is no delivery."""
        client = self.subscribe(b"SUB deliver.c 7\r\n")
        publisher = self.js.client()
        publisher.send(b"PUB deliver.c _INBOX.x@y 1\r\nx\r\n")
        self.flush()
        self.assertEqual(client.received(), b"MSG deliver.c 7 _INBOX.x@y 1\r\nx\r\n")


class RouteTests(Across, SynchronousTestCase):
    """Two servers of one cluster joined by a route."""

    def test_interest_is_the_routes(self) -> None:
        self.assertFalse(self.js.broker.has_interest("deliver.c"))
        self.subscribe(b"SUB deliver.c 7\r\n")
        self.assertTrue(self.js.broker.has_interest("deliver.c"))

    def setUp(self) -> None:
        self.js, self.far = test_route.Node("A"), test_route.Node("B")
        self.pump, client, server = test_route.link(self.js, self.far)
        route = client if client.manager is self.js.manager else server
        self.wire = spy(route)

    def flush(self) -> None:
        for _ in range(3):
            self.pump.flush()


class GatewayTests(Across, SynchronousTestCase):
    """Two clusters, a server each, joined by gateways both ways."""

    def setUp(self) -> None:
        self.js, self.far = test_supercluster.Node("A", ["B"]), test_supercluster.Node("B", ["A"])
        self.pumps = [test_supercluster.link(self.js, self.far)[0], test_supercluster.link(self.far, self.js)[0]]
        self.wire = spy(self.js.manager.outbound["B"])

    def flush(self) -> None:
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()

    def test_a_push_consumer_is_active_for_the_other_cluster(self) -> None:
        """
        nats-server's hasDeliveryInterest asks the gateways too (eventsvc's
        peers put us in interest-only mode from the start: no interest until
        told; nats-server's are optimistic, test_interop_jsroutes).
        """
        self.assertFalse(self.js.broker.has_interest("deliver.c"))
        client = self.subscribe(b"SUB deliver.c 7\r\n")
        self.assertTrue(self.js.broker.has_interest("deliver.c"))
        client.send(b"UNSUB 7\r\n")
        self.flush()
        self.assertFalse(self.js.broker.has_interest("deliver.c"))

    def test_a_pull_request_from_the_other_cluster(self) -> None:
        """The request's reply comes routed (C{_GR_.}); its messages go back to it and show their subject."""
        engine = self.js.client()
        engine.send(b"SUB $JS.API.CONSUMER.MSG.NEXT.> 1\r\nPING\r\n")
        engine.received()
        self.flush()
        client = self.subscribe(b"SUB _INBOX.p 7\r\n")
        client.send(b"PUB $JS.API.CONSUMER.MSG.NEXT.S.c _INBOX.p 1\r\n1\r\n")
        self.flush()
        self.assertEqual(engine.received(), b"MSG $JS.API.CONSUMER.MSG.NEXT.S.c 1 _INBOX.p 1\r\n1\r\n")
        self.assertEqual(self.js.broker.deliver_as("_INBOX.p", "orders.6", b"x", reply=ACK.decode()), 1)
        self.flush()
        self.assertRegex(b"".join(self.wire), rb"RMSG \$G _GR_\.\w+\.\w+\._INBOX\.p " + ACK.replace(b"$", rb"\$") + b"@orders.6 1\r\n")
        self.assertEqual(client.received(), b"MSG orders.6 7 " + ACK + b" 1\r\nx\r\n")


class GatewayConsumerTests(SynchronousTestCase):
    """A push consumer of a JetStream engine in cluster A, its deliver subject subscribed in cluster B."""

    def setUp(self) -> None:
        self.a, self.b = test_supercluster.Node("A", ["B"]), test_supercluster.Node("B", ["A"])
        clock = self.a.clock
        self.js = JetStream(self.a.broker, JetStreamSettings(), clock, now=lambda: 1_000_000_000_000 + int(clock.seconds() * 1e9))
        self.js.start()
        self.addCleanup(self.js.stop)
        self.pumps = [test_supercluster.link(self.a, self.b)[0], test_supercluster.link(self.b, self.a)[0]]

    def flush(self) -> None:
        for _ in range(4):
            for pump in self.pumps:
                pump.flush()

    def api(self, client: Any, subject: bytes, body: dict) -> dict:
        payload = json.dumps(body).encode()
        client.send(b"PUB %s _R.1 %d\r\n%s\r\n" % (subject, len(payload), payload))
        self.flush()
        frame = client.received()
        return json.loads(frame.split(b"\r\n")[1])

    def test_deliveries_start_when_the_other_cluster_subscribes_and_acks_come_back(self) -> None:
        admin = self.a.client()
        admin.send(b"SUB _R.> 1\r\n")
        self.api(admin, b"$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["orders.>"], "storage": "memory"})
        admin.send(b"PUB orders.1 2\r\nhi\r\n")
        self.flush()
        created = self.api(admin, b"$JS.API.CONSUMER.DURABLE.CREATE.S.c", {"stream_name": "S", "config": {
            "durable_name": "c", "deliver_subject": "deliver.far", "ack_policy": "explicit"}})
        self.assertEqual(created["name"], "c", created)
        client = self.b.client()
        client.send(b"SUB deliver.far 7\r\nPING\r\n")
        client.received()
        self.flush()
        self.assertEqual(client.received(), b"")  # (nothing in A's index changed)
        self.a.clock.advance(GATEWAY_INTEREST_CHECK)
        self.flush()
        frame = client.received()
        self.assertTrue(frame.startswith(b"MSG orders.1 7 $JS.ACK.S.c.1.1.1."), frame)
        ack = frame.split(b" ")[3]
        client.send(b"PUB " + ack + b" 4\r\n+ACK\r\n")
        self.flush()
        info = self.api(admin, b"$JS.API.CONSUMER.INFO.S.c", {})
        self.assertEqual((info["num_ack_pending"], info["ack_floor"]["stream_seq"]), (0, 1), info)

    def test_a_pull_request_is_kept_two_seconds_before_its_inbox_is_known(self) -> None:
        """
        A request from another cluster can arrive before the RS+ for its
        inbox (nats-server sends the two on its two connections at once):
        on a server with gateways it is served for two seconds without known
        interest, as nats-server's defaultGatewayRecentSubExpiration (it was
        dropped, and a client of nats-server fetching across the gateway got
        nothing for 10-90 s), and dropped after that.
        """
        admin = self.a.client()
        admin.send(b"SUB _R.> 1\r\n")
        self.api(admin, b"$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["orders.>"], "storage": "memory"})
        self.api(admin, b"$JS.API.CONSUMER.DURABLE.CREATE.S.p", {"stream_name": "S", "config": {
            "durable_name": "p", "ack_policy": "explicit"}})
        self.assertFalse(self.a.broker.has_interest("_INBOX.q"))
        admin.send(b'PUB $JS.API.CONSUMER.MSG.NEXT.S.p _INBOX.q 1\r\n1\r\n')
        self.flush()
        self.a.clock.advance(1.5)
        admin.send(b"PUB orders.1 2\r\nhi\r\n")
        self.flush()
        info = self.api(admin, b"$JS.API.CONSUMER.INFO.S.p", {})
        self.assertEqual((info["delivered"]["stream_seq"], info["num_ack_pending"]), (1, 1), info)
        # Past two seconds with nobody known to want it, a request goes.
        admin.send(b'PUB $JS.API.CONSUMER.MSG.NEXT.S.p _INBOX.r 1\r\n1\r\n')
        self.flush()
        self.a.clock.advance(2.5)
        admin.send(b"PUB orders.2 2\r\nhi\r\n")
        self.flush()
        info = self.api(admin, b"$JS.API.CONSUMER.INFO.S.p", {})
        self.assertEqual((info["delivered"]["stream_seq"], info["num_waiting"]), (1, 0), info)


class OneJetStreamPerClusterTests(SynchronousTestCase):
    """
    eventsvc keeps no JetStream cluster: a route that would put a second
    server answering C{$JS.API} into the cluster is refused, naming both
    servers, so that no request is answered twice.  One JetStream server
    in a cluster is reached from every server.
    """

    def setUp(self) -> None:
        self.logged: List[str] = []
        observe = lambda event: self.logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def node(self, name: str, jetstream: bool) -> Any:
        node = test_route.Node(name, jetstream=jetstream)
        if jetstream:
            js = JetStream(node.broker, JetStreamSettings(), node.clock)
            js.start()
            self.addCleanup(js.stop)
        return node

    def ask_info(self, node: Any, pump: Any) -> List[bytes]:
        """Every answer a client of C{node} gets to C{$JS.API.INFO}."""
        client = node.client()
        client.send(b"SUB _R.> 1\r\nPUB $JS.API.INFO _R.1 0\r\n\r\n")
        for _ in range(4):
            pump.flush()
        return [line for line in client.received().split(b"\r\n") if line.startswith(b"MSG _R.1")]

    def test_route_info_says_jetstream_and_domain(self) -> None:
        """As nats-server's route INFO, from a server that runs JetStream for clients."""
        node = test_route.Node("A", jetstream=True, jetstream_domain="hub")
        info = node.manager.info()
        self.assertEqual((info["jetstream"], info["domain"]), (True, "hub"))
        plain = test_route.Node("B").manager.info()
        self.assertNotIn("jetstream", plain)
        self.assertNotIn("domain", plain)

    def test_one_jetstream_server_answers_every_server_once(self) -> None:
        a, b = self.node("A", True), self.node("B", False)
        pump, _, _ = test_route.link(b, a)
        self.assertEqual(set(b.manager.routes), {"NA"})
        self.assertEqual(len(self.ask_info(b, pump)), 1)
        self.assertEqual(len(self.ask_info(a, pump)), 1)

    def test_a_second_jetstream_server_is_refused(self) -> None:
        a, b = self.node("A", True), self.node("B", True)
        pump, dialled, accepted = test_route.link(b, a)
        self.assertEqual((a.manager.routes, b.manager.routes), ({}, {}))
        self.assertTrue(dialled.closed and accepted.closed)
        refusals = [line for line in self.logged if "refused: JetStream is on at" in line]
        self.assertIn(
            "route from 127.0.0.1:50000: refused: JetStream is on at NB and at NA (this server), and eventsvc "
            "keeps no JetStream cluster, so both would answer every $JS.API request with streams that disagree. "
            "Keep [jetstream] on one server of cluster c1 (its streams are reachable from every server), or link "
            "the servers as leaf nodes of a nats-server JetStream cluster (docs/clustering.md, JetStream in a cluster)",
            refusals)
        self.assertTrue(any(line.startswith("route to nats-route://127.0.0.1:6222: refused: JetStream is on at NA and at NB (this server)")
                            for line in refusals), refusals)
        # Its dial says why, and each client is answered once, by its own server.
        self.assertIn("JetStream is on at NA and at NB", b.manager.targets["nats-route://127.0.0.1:6222"].why)
        self.assertEqual(len(self.ask_info(b, pump)), 1)
        self.assertEqual(len(self.ask_info(a, pump)), 1)

    def test_the_peer_is_told_why(self) -> None:
        """(nats-server logs the -ERR of a route it dialled.)"""
        a = self.node("A", True)
        route = a.manager.accepted()
        from twisted.internet.testing import StringTransport

        transport = StringTransport()
        route.makeConnection(transport)
        route.dataReceived(b'CONNECT {"name":"NX","cluster":"c1"}\r\n'
                           b'INFO {"server_id":"NX","server_name":"x","cluster":"c1","jetstream":true}\r\n')
        self.assertIn(b"-ERR 'JetStream is on at x and at NA: one JetStream server per cluster'\r\n", transport.value())
        self.assertTrue(route.closed)

    def test_refused_again_it_is_logged_as_an_error_once(self) -> None:
        """(A configured route is dialled again and again: one error line, then its redial says why.)"""
        from twisted.internet.testing import StringTransport
        from twisted.logger import LogLevel

        a = self.node("A", True)
        levels = []
        observe = lambda event: levels.append(event["log_level"]) if "refused: JetStream" in formatEvent(event) else None  # noqa: E731
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for _ in range(3):
            route = a.manager.accepted()
            route.makeConnection(StringTransport())
            route.dataReceived(b'CONNECT {"name":"NX","cluster":"c1"}\r\nINFO {"server_id":"NX","cluster":"c1","jetstream":true}\r\n')
            self.assertTrue(route.closed)
        self.assertEqual(levels, [LogLevel.error, LogLevel.info, LogLevel.info])

    def test_a_server_between_two_jetstream_servers_refuses_the_second(self) -> None:
        """Each JetStream server routed to a third (that does not run it) would answer its clients' requests twice."""
        a, b, c = self.node("A", True), self.node("B", False), self.node("C", True)
        pump_ab, _, _ = test_route.link(a, b, "nats-route://127.0.0.1:6001")
        pump_cb, _, _ = test_route.link(c, b, "nats-route://127.0.0.1:6002")
        self.assertEqual(set(b.manager.routes), {"NA"})
        self.assertEqual(c.manager.routes, {})
        self.assertTrue(any("refused: JetStream is on at NC and at NA (by route)" in line for line in self.logged), self.logged)
        self.assertEqual(len(self.ask_info(b, pump_ab)), 1)
        pump_cb.flush()

    def test_a_server_joining_a_nats_server_jetstream_cluster_keeps_every_route(self) -> None:
        """
        A nats-server JetStream cluster is one JetStream (its meta group
        answers once): a server without JetStream that joins it keeps a route
        to each of its servers, as a full mesh needs, rather than refusing the
        second one and leaving its clients cut off from that server's.
        """
        from twisted.internet.testing import StringTransport

        b = self.node("B", False)
        routes = []
        for sid in ("NX", "NY"):
            route = b.manager.accepted()
            route.makeConnection(StringTransport())
            route.dataReceived(
                b'CONNECT {"name":"%s","cluster":"c1"}\r\n'
                b'INFO {"server_id":"%s","server_name":"%s","version":"2.9.10","go":"go1.19.8","cluster":"c1","jetstream":true}\r\n'
                % (sid.encode(), sid.encode(), sid.lower().encode()))
            routes.append(route)
        self.assertEqual([route.closed for route in routes], [False, False])
        self.assertEqual(set(b.manager.routes), {"NX", "NY"})
        self.assertFalse([line for line in self.logged if "refused: JetStream" in line])
