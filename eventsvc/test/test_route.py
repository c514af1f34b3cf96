"""
Routes in memory: brokers joined by iosim, clients on StringTransports, a
fake clock.  Interest bookkeeping, delivery rules, resync, duplicates.
"""

from __future__ import annotations

import dataclasses
import re

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats.settings import ClientSettings
from eventsvc.nats.listener import ClientFactory
from eventsvc.nats.links.route import RouteManager, RouteSettings
from eventsvc.nats.server import Broker
from eventsvc.test.helpers import FakeClient, dial_in_memory, replace_settings, with_limits


class Node:
    def __init__(self, name: str, **settings) -> None:
        self.clock = MemoryReactorClock()
        self.broker = Broker(server_id="N" + name)
        # No time budget for the clients, as in helpers.Harness: real time
        # would make a burst yield (or not) by how busy the machine is, and
        # no test here turns the clock for the rest (a PyPy run under load
        # delivered 31 of test_queue_prefers_local_member's 50).
        self.factory = ClientFactory(self.broker, ClientSettings(parse_budget=None), self.clock)
        self.manager = RouteManager(self.broker, self.clock, with_limits(RouteSettings, "c1", "127.0.0.1", 0, **settings))
        self.manager.startService()

    def set(self, **settings) -> None:
        """Change the manager's settings (as a new configuration would)."""
        self.manager.settings = replace_settings(self.manager.settings, **settings)

    def client(self, connect_line: bytes = b'CONNECT {"verbose":false}\r\n') -> FakeClient:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        c = FakeClient(proto, transport)
        c.received()
        c.send(connect_line)
        return c


def link(dialer: Node, acceptor: Node, url: str = "nats-route://127.0.0.1:6222"):
    """A route from dialer to acceptor (dialled as C{url}), in memory; returns the pump."""
    dialer.manager.add_route(url)
    outer, client = dial_in_memory(dialer.clock, dialer.manager.targets[url])
    server = acceptor.manager.accepted()
    pump = connect(
        server, FakeTransport(server, True, peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)),
        outer, FakeTransport(outer, False, peerAddress=IPv4Address("TCP", "127.0.0.1", 6222)),
        greet=True,
    )
    pump.flush()
    return pump, client, server


#: A route's CONNECTs to a port that wants user "ru", password "rp" and
#: cluster "c1", and what nats-server 2.9 answers each (then a PING) with:
#: b"PONG\r\n" when it takes it, its error, or nothing when it closes
#: without a word (test_interop_cluster sends them to nats-server too).
ROUTE_CONNECTS = (
    (b'{"User":"ru","PASS":"rp","Cluster":"c1"}', b"PONG\r\n"),
    (b'{"USER":"ru","pa\\u017fs":"rp","cluster":"c1","pass":null,"Lang":null,"lang":""}', b"PONG\r\n"),
    (b'{"user":"ru","pass":"wrong","Pass":"rp","pass":null,"cluster":"c1"}', b"PONG\r\n"),
    (b'{"user":"ru","pass":"rp","PASS":"wrong"}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"ru","pass":"rp","Lang":"go"}', b"-ERR 'attempted to connect to route port'\r\n"),
    (b'{"user":"ru","pass":"wrong","lang":"go"}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"ru","pass":"wrong","cluster":5}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"ru","pass":"rp","cluster":5}', b""),
    (b'{"user":"ru","pass":"rp","LNOC":"yes"}', b""),
    (b'{"user":"ru","pass":5,"pass":"rp"}', b""),
    (b'{"user":"ru","pass":"rp"}', b"-ERR 'Rejecting connection, cluster name \"\" does not match \"c1\"'\r\n"),
    (b'{"user":"ru","pass":"rp","Cluster":"other"}', b"-ERR 'Rejecting connection, cluster name \"other\" does not match \"c1\"'\r\n"),
    (b'{"user":"ru","pass":"rp","cluster":"c1","Account":"x"}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"ru","pass":"rp","cluster":"c1","account":"","new_account":false}', b"PONG\r\n"),
    (b'{"user":"ru","pass":"rp","Gateway":"G\\""}', b"-ERR 'Rejecting connection from gateway \"G\\\"\" on the Route port'\r\n"),
)


class RouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.a, self.b = Node("A"), Node("B")

    def test_handshake_and_interest(self) -> None:
        sub = self.b.client()
        sub.send(b"SUB foo 1\r\n")
        pump, dialled, accepted = link(self.a, self.b)
        self.assertEqual(set(self.a.manager.routes), {"NB"})
        self.assertEqual(set(self.b.manager.routes), {"NA"})
        # B told A of its interest on connect.
        self.assertIn((b"foo", None), dialled.subs)
        self.a.client().send(b"PUB foo 2\r\nhi\r\nPUB bar 1\r\nx\r\n")
        pump.flush()
        self.assertEqual(sub.received(), b"MSG foo 1 2\r\nhi\r\n")

    def test_route_up_line_names_the_peer_once(self) -> None:
        from twisted.logger import formatEvent, globalLogPublisher

        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        link(self.a, self.b)
        lines = [formatEvent(e) for e in logged if "up," in formatEvent(e)]
        self.assertIn("route to NB up, dialled nats-route://127.0.0.1:6222", lines)
        self.assertIn("route to NA up, accepted from 127.0.0.1:50000", lines)

    def test_batched_publishes_reach_routes(self) -> None:
        """Many PUBs to one subject in one read (a batch) all cross the route."""
        pump, _, _ = link(self.a, self.b)
        sub = self.b.client()
        sub.send(b"SUB foo 1\r\n")
        local = self.a.client()
        local.send(b"SUB foo 1\r\n")
        pump.flush()
        # A plain client (not verbose, not pedantic): its PUBs are batched.
        publisher = self.a.client(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        self.assertTrue(publisher.proto.plain)
        publisher.send(b"PUB foo 1\r\nx\r\n" * 5 + b"PUB foo r 1\r\ny\r\n")
        pump.flush()
        self.assertEqual(sub.received(), b"MSG foo 1 1\r\nx\r\n" * 5 + b"MSG foo 1 r 1\r\ny\r\n")
        self.assertEqual(local.received().count(b"MSG foo"), 6)

    def test_interest_follows_subscriptions(self) -> None:
        pump, dialled, accepted = link(self.a, self.b)
        c = self.b.client()
        c.send(b"SUB x.* 1\r\nSUB work q 2\r\nSUB work q 3\r\n")
        pump.flush()
        self.assertIn((b"x.*", None), dialled.subs)
        sent = []
        original = accepted.transport.write
        accepted.transport.write = lambda data: (sent.append(data), original(data))
        c.send(b"UNSUB 2\r\n")
        c.send(b"UNSUB 3\r\nUNSUB 1\r\n")
        pump.flush()
        self.assertEqual(b"".join(sent), b"RS+ $G work q 1\r\nRS- $G work q\r\nRS- $G x.*\r\n")
        self.assertEqual(dialled.subs, {})

    def test_queue_weights(self) -> None:
        pump, dialled, accepted = link(self.a, self.b)
        sent = []
        original = accepted.transport.write
        accepted.transport.write = lambda data: (sent.append(data), original(data))
        c = self.b.client()
        c.send(b"SUB work q 1\r\nSUB work q 2\r\n")
        pump.flush()
        self.assertEqual(b"".join(sent), b"RS+ $G work q 1\r\nRS+ $G work q 2\r\n")

    def test_queue_prefers_local_member(self) -> None:
        pump, _, _ = link(self.a, self.b)
        local = self.a.client()
        local.send(b"SUB work q 1\r\n")
        remote = self.b.client()
        remote.send(b"SUB work q 1\r\n")
        pump.flush()
        self.a.client().send(b"PUB work 1\r\nw\r\n" * 50)
        pump.flush()
        self.assertEqual(local.received().count(b"MSG work"), 50)
        self.assertEqual(remote.received(), b"")

    def test_queue_goes_to_route_when_no_local_member(self) -> None:
        pump, dialled, accepted = link(self.a, self.b)
        remote = self.b.client()
        remote.send(b"SUB work q 1\r\nSUB work 2\r\n")
        pump.flush()
        sent = []
        original = dialled.transport.write
        dialled.transport.write = lambda data: (sent.append(data), original(data))
        self.a.client().send(b"PUB work r 1\r\nw\r\n")
        pump.flush()
        # One RMSG for the plain and the queue interest together.
        self.assertEqual(b"".join(sent), b"RMSG $G work + r q 1\r\nw\r\n")
        self.assertEqual(remote.received().count(b"MSG work"), 2)

    def test_one_hop(self) -> None:
        c = Node("C")
        pump_ab, _, _ = link(self.a, self.b)
        pump_bc, _, _ = link(self.b, c)
        far = c.client()
        far.send(b"SUB foo 1\r\n")
        near = self.b.client()
        near.send(b"SUB foo 1\r\n")
        pump_bc.flush()
        pump_ab.flush()
        self.a.client().send(b"PUB foo 1\r\nx\r\n")
        pump_ab.flush()
        pump_bc.flush()
        self.assertEqual(near.received(), b"MSG foo 1 1\r\nx\r\n")
        # A has no route to C, and B never forwards what came from a route.
        self.assertEqual(far.received(), b"")

    def test_resync_after_reconnect(self) -> None:
        pump, dialled, accepted = link(self.a, self.b)
        sub = self.b.client()
        sub.send(b"SUB foo 1\r\n")
        pump.flush()
        dialled.transport.loseConnection()
        pump.flush()
        self.assertEqual(self.a.manager.routes, {})
        self.assertEqual(self.a.broker.sublist.count, 0)
        # The dialler tries again after a backoff.
        self.assertTrue(self.a.clock.getDelayedCalls())
        pump, dialled, accepted = link(self.a, self.b)
        self.assertIn((b"foo", None), dialled.subs)
        self.a.client().send(b"PUB foo 1\r\ny\r\n")
        pump.flush()
        self.assertEqual(sub.received(), b"MSG foo 1 1\r\ny\r\n")

    def test_slow_route_is_cut_not_buffered_forever(self) -> None:
        self.a.set(max_pending=10000)
        pump, dialled, accepted = link(self.a, self.b)
        self.b.client().send(b"SUB foo 1\r\n")
        pump.flush()
        # The peer stops reading: Twisted pauses the route's output.
        dialled.transport.producer.pauseProducing()
        publisher = self.a.client()
        for _ in range(20):
            publisher.send(b"PUB foo 1000\r\n" + b"x" * 1000 + b"\r\n")
        self.assertTrue(dialled.closed)
        self.assertEqual(self.a.manager.routes, {})
        self.assertEqual(dialled.pending_bytes, 0)
        # It will be dialled again.
        self.assertTrue(self.a.clock.getDelayedCalls())

    def test_held_route_output_handed_over_in_pieces(self) -> None:
        """As for clients: each resume hands over about PUSH_SIZE, so held bytes stay the real backlog."""
        pump, dialled, accepted = link(self.a, self.b)
        self.b.client().send(b"SUB foo 1\r\n")
        pump.flush()
        dialled.transport.producer.pauseProducing()
        publisher = self.a.client()
        for _ in range(100):
            publisher.send(b"PUB foo 10000\r\n" + b"x" * 10000 + b"\r\n")
        self.assertGreater(dialled.pending_bytes, 1000000)
        before = dialled.pending_bytes
        written = []
        dialled.transport.write = written.append
        dialled.transport.producer.resumeProducing()
        self.assertTrue(256 * 1024 <= len(written[0]) < 256 * 1024 + 10100, len(written[0]))
        self.assertEqual(dialled.pending_bytes, before - len(written[0]))

    def test_duplicate_route_dropped(self) -> None:
        link(self.a, self.b)
        # (Another name for the same server: two routes to it, one too many.)
        pump, dialled, accepted = link(self.a, self.b, "nats-route://localhost:6222")
        self.assertTrue(dialled.closed or accepted.closed)
        self.assertEqual(len(self.a.manager.routes), 1)

    def test_client_on_route_port(self) -> None:
        server = self.b.manager.accepted()
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(b'CONNECT {"lang":"python","verbose":false}\r\n')
        self.assertTrue(transport.value().endswith(b"-ERR 'attempted to connect to route port'\r\n"))
        self.assertTrue(transport.disconnecting)

    def connect_on_route_port(self, connect: bytes) -> bytes:
        """What an accepted route answers C{connect} (and a PING) with; b"PONG\\r\\n" once it is taken."""
        self.b.set(user="ru", password="rp")
        server = self.b.manager.accepted()
        transport = StringTransport()
        server.makeConnection(transport)
        transport.clear()
        server.dataReceived(b"CONNECT " + connect + b"\r\nPING\r\n")
        self.assertEqual(server.closed, not transport.value().endswith(b"PONG\r\n"), transport.value())
        return transport.value()

    def test_connect_read_as_nats_server_reads_it(self) -> None:
        """
        nats-server reads a route's CONNECT with Go's encoding/json, first
        into ClientOpts (and checks the credentials), then into its route
        struct: field names in any case, a null leaves a field as it was,
        a value of the wrong type closes the route without a word (even one
        a later key overrides), the credentials before anything else, and
        a client (a C{lang}) only when it names one, an account never, and
        a cluster name only ours (none is not ours).  (The same CONNECTs
        to nats-server: test_interop_cluster's HandWrittenConnectTests.)
        """
        for connect, answer in ROUTE_CONNECTS:
            self.assertEqual(self.connect_on_route_port(connect), answer, connect)

    def test_other_accounts_ignored(self) -> None:
        pump, dialled, _ = link(self.a, self.b)
        dialled.dataReceived(b"RS+ $SYS $SYS.REQ.SERVER.PING\r\nRMSG $SYS foo 1\r\nx\r\n")
        self.assertEqual(dialled.subs, {})


class TLSRouteTests(SynchronousTestCase):
    """Routes over mutual TLS (TLS first, as nats-server 2.9), real TLS in memory."""

    def setUp(self) -> None:
        from eventsvc.security import tls
        from eventsvc.test.tlshelpers import PKI

        self.tls = tls
        self.pki = PKI(self.mktemp())
        for name in ("node-a", "node-b", "node-x"):
            self.pki.issue(name)
        self.a, self.b = Node("A"), Node("B")

    def link(self, dialer_cert: str, acceptor_cert: str, expected: str, acceptor_expects: str = "", ca=None):
        from twisted.internet import ssl
        from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

        from eventsvc.test.tlshelpers import PKI, _Unused

        self.b.set(tls_name=acceptor_expects)
        server_opts = self.tls.mutual_tls_server(self.pki.path(acceptor_cert + ".crt"), self.pki.path(acceptor_cert + ".key"), self.pki.path("ca.crt"))
        minted = self.pki.issue(dialer_cert, ca=ca) if ca is not None else None
        identity = PKI.private(minted) if minted else ssl.PrivateCertificate.loadPEM(
            open(self.pki.path(dialer_cert + ".crt"), "rb").read() + open(self.pki.path(dialer_cert + ".key"), "rb").read()
        )
        client_opts = ssl.optionsForClientTLS(expected, trustRoot=self.pki.trust_root(), clientCertificate=identity)
        url = "nats-route://%s:6222" % expected
        self.a.manager.add_route(url)
        inner_client, _ = dial_in_memory(self.a.clock, self.a.manager.targets[url])
        inner_server = self.b.manager.accepted()
        client = TLSMemoryBIOProtocol(TLSMemoryBIOFactory(client_opts, True, _Unused()), inner_client)
        server = TLSMemoryBIOProtocol(TLSMemoryBIOFactory(server_opts, False, _Unused()), inner_server)
        pump = connect(
            server, FakeTransport(server, True, peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)),
            client, FakeTransport(client, False, peerAddress=IPv4Address("TCP", "127.0.0.1", 6222)),
            greet=True,
        )
        pump.flush()
        self.layers = (client, server)
        return pump

    def test_openssl_side_freed_at_the_close(self) -> None:
        """
        A route's TLS layers (Twisted's: a listener's and a dial's over
        TLS) free OpenSSL's side of their connections at the close, not
        when the collector finds them (on PyPy, thousands of connections
        later): their memory BIOs are gone, and a stray call is pyOpenSSL's
        clean error.
        """
        pump = self.link("node-a", "node-b", "node-b", acceptor_expects="node-a")
        connections = [layer._tlsConnection for layer in self.layers]
        self.assertEqual(set(self.b.manager.routes), {"NA"})
        self.b.manager.routes["NA"].close(None, "test")
        pump.flush()
        self.assertEqual((self.a.manager.routes, self.b.manager.routes), ({}, {}))
        for connection in connections:
            self.assertIsNone(connection._into_ssl)
            self.assertIsNone(connection._from_ssl)
            self.assertRaises(TypeError, connection.bio_read, 1)
        for layer in self.layers:
            self.assertNotIn("connectionLost", vars(layer))  # (Twisted's own again: no cycle through the layer)

    def test_good_certificates(self) -> None:
        pump = self.link("node-a", "node-b", "node-b", acceptor_expects="node-a")
        self.assertEqual(set(self.a.manager.routes), {"NB"})
        sub = self.b.client()
        sub.send(b"SUB foo 1\r\n")
        pump.flush()
        self.a.client().send(b"PUB foo 2\r\nok\r\n")
        pump.flush()
        self.assertEqual(sub.received(), b"MSG foo 1 2\r\nok\r\n")

    def test_foreign_ca(self) -> None:
        from eventsvc.security import certs

        self.link("stranger", "node-b", "node-b", ca=certs.make_ca("elsewhere"))
        self.assertEqual(self.a.manager.routes, {})
        self.assertEqual(self.b.manager.routes, {})

    def test_acceptor_checks_the_name(self) -> None:
        self.link("node-x", "node-b", "node-b", acceptor_expects="node-a")
        self.assertEqual(self.b.manager.routes, {})

    def test_dialler_checks_the_name(self) -> None:
        # We expect node-b, but the server presents node-x's certificate.
        self.link("node-a", "node-x", "node-b")
        self.assertEqual(self.a.manager.routes, {})


class RouteParserTests(SynchronousTestCase):
    STREAM = (
        b'INFO {"server_id":"X"}\r\nRS+ $G foo\r\nRS+ $G bar q 2\r\nRS- $G bar q\r\n'
        b"RMSG $G foo 5\r\nhello\r\nRMSG $G foo 5\r\nworld\r\nRMSG $G bar | q 2\r\nhi\r\n"
        b"RMSG $G foo + rep q1 q2 3\r\nabc\r\nRMSG $G foo rep 1\r\nx\r\n"
        b"HMSG $G foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nRMSG $SYS foo 1\r\ny\r\nPING\r\nPONG\r\n"
    )

    def parse(self, chunks):
        from eventsvc.nats.parser import RouteParser

        ops = []

        class Recorder:
            def __getattr__(self, name):
                if name in ("plain",):
                    return True
                if name == "may_publish":
                    return None
                if name == "publish_batch":
                    # Flatten batches, so that splitting does not change the result.
                    return lambda src, subject, tails, size: ops.extend(("op_rmsg", b"$G", subject, None, [], None, t) for t in tails)
                if name == "publish":
                    return lambda src, subject, reply, size, tail: ops.append(("op_rmsg", b"$G", subject, reply, [], None, tail)) or 1
                if name in ("in_msgs", "in_bytes"):
                    return 0
                if name == "op_rmsg":
                    return lambda account, subject, reply, queues, size, tail: ops.append(("op_rmsg", account, subject, reply, list(queues), None, tail))
                return lambda *args: ops.append((name,) + args)

        parser = RouteParser(Recorder())
        for chunk in chunks:
            parser.feed(chunk)
        return ops

    def test_split_anywhere(self) -> None:
        whole = self.parse([self.STREAM])
        self.assertEqual(len(whole), 13)
        self.assertEqual(self.parse([self.STREAM[i : i + 1] for i in range(len(self.STREAM))]), whole)
        for i in range(0, len(self.STREAM), 7):
            self.assertEqual(self.parse([self.STREAM[:i], self.STREAM[i:]]), whole)

    def test_routed_batch_reaches_plain_subscribers_only(self) -> None:
        a, b = Node("A"), Node("B")
        pump, dialled, accepted = link(a, b)
        plain = b.client()
        plain.send(b"SUB foo 1\r\n")
        member = b.client()
        member.send(b"SUB foo q 2\r\n")
        pump.flush()
        accepted.dataReceived(b"RMSG $G foo 1\r\nx\r\n" * 4)
        b.broker.flush()
        self.assertEqual(plain.received(), b"MSG foo 1 1\r\nx\r\n" * 4)
        self.assertEqual(member.received(), b"")
        accepted.dataReceived(b"RMSG $G foo | q 1\r\ny\r\n")
        b.broker.flush()
        self.assertEqual(member.received(), b"MSG foo 2 1\r\ny\r\n")
        self.assertEqual(plain.received(), b"MSG foo 1 1\r\ny\r\n")

    def test_leaf_origin_interest_and_messages(self) -> None:
        """
        What nats-server sends a route that says "lnoc" for a leaf node of
        a named cluster: LS+ with the origin first, LS- as RS-, and LMSG
        with the origin and a header size (0 without headers).
        """
        a, b = Node("A"), Node("B")
        pump, dialled, accepted = link(a, b)
        plain, member = b.client(), b.client()
        plain.send(b"SUB foo 1\r\n")
        member.send(b"SUB foo q 2\r\n")
        pump.flush()
        accepted.dataReceived(b"LS+ edge $G leaf.x\r\nLS+ edge $G leaf.q work 3\r\n")
        self.assertEqual(
            sorted((s.subject, s.queue) for s in b.broker.sublist.all() if s.owner is accepted),
            [(b"leaf.q", b"work"), (b"leaf.x", None)],
        )
        accepted.dataReceived(
            b"LMSG edge $G foo 0 2\r\nhi\r\nLMSG edge $G foo rep 0 1\r\nx\r\n"
            b"LMSG edge $G foo | q 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        )
        b.broker.flush()
        # (These clients did not ask for headers: they get the payload alone.)
        self.assertEqual(plain.received(), b"MSG foo 1 2\r\nhi\r\nMSG foo 1 rep 1\r\nx\r\nMSG foo 1 2\r\nhi\r\n")
        self.assertEqual(member.received(), b"MSG foo 2 2\r\nhi\r\n")
        self.assertEqual(accepted.in_msgs, 3)
        accepted.dataReceived(b"LS- $G leaf.x\r\nLS- $G leaf.q work\r\n")
        self.assertEqual([s for s in b.broker.sublist.all() if s.owner is accepted], [])
        self.assertFalse(accepted.closed)
        for bad in (b"LS+ edge $G\r\n", b"LMSG edge $G foo 3 2\r\nhi\r\n", b"HMSG $G foo 3 2\r\nhi\r\n"):
            a, b = Node("A"), Node("B")
            pump, dialled, accepted = link(a, b)
            accepted.dataReceived(bad)
            self.assertTrue(accepted.closed, bad)


def infos(data: bytes) -> list:
    """The INFO lines in C{data}, decoded."""
    import json

    return [json.loads(line[5:]) for line in data.split(b"\r\n") if line.startswith(b"INFO ")]


class ConnectURLTests(SynchronousTestCase):
    """Clients are told the cluster's client URLs (connect_urls), as by nats-server."""

    def setUp(self) -> None:
        self.a, self.b = Node("A"), Node("B")
        for node, url in ((self.a, "10.0.0.1:4222"), (self.b, "10.0.0.2:4222")):
            node.factory.settings = dataclasses.replace(node.factory.settings, advertise=True)
            node.broker.connect_urls.own = lambda url=url: [url]

    def greeting(self, node: Node) -> dict:
        proto = node.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        proto.makeConnection(transport)
        return infos(transport.value())[0]

    def test_clients_learn_the_other_node(self) -> None:
        self.assertNotIn("connect_urls", self.greeting(self.a))  # standalone: none, as nats-server
        modern = self.a.client(b'CONNECT {"verbose":false,"protocol":1}\r\n')
        old = self.a.client()  # protocol 0: no async INFO
        pump, dialled, accepted = link(self.a, self.b)
        # Each side's route INFO carried its own URL.
        self.assertEqual(dialled.remote_urls(), ["10.0.0.2:4222"])
        self.assertEqual(accepted.remote_urls(), ["10.0.0.1:4222"])
        self.assertEqual([i["connect_urls"] for i in infos(modern.received())], [["10.0.0.1:4222", "10.0.0.2:4222"]])
        self.assertEqual(old.received(), b"")
        greeting = self.greeting(self.a)
        self.assertEqual((greeting["cluster"], greeting["connect_urls"]), ("c1", ["10.0.0.1:4222", "10.0.0.2:4222"]))
        # B goes lame duck: A's clients stop being sent there; B's are sent to A only.
        b_client = self.b.client(b'CONNECT {"verbose":false,"protocol":1}\r\n')
        b_client.proto.lame_duck()
        self.b.broker.flush()
        self.assertEqual([(i.get("ldm"), i["connect_urls"]) for i in infos(b_client.received())], [(True, ["10.0.0.1:4222"])])
        self.b.manager.lame_duck()
        pump.flush()
        self.assertEqual([i["connect_urls"] for i in infos(modern.received())], [["10.0.0.1:4222"]])
        # The route goes (nothing more to say: B's URL already left).
        dialled.transport.loseConnection()
        pump.flush()
        self.assertEqual(self.a.manager.routes, {})
        self.assertEqual(modern.received(), b"")

    def test_route_lost_takes_its_urls(self) -> None:
        modern = self.a.client(b'CONNECT {"verbose":false,"protocol":1}\r\n')
        pump, dialled, _ = link(self.a, self.b)
        modern.received()
        dialled.transport.loseConnection()
        pump.flush()
        self.assertEqual([i["connect_urls"] for i in infos(modern.received())], [["10.0.0.1:4222"]])

    def test_no_advertise(self) -> None:
        self.a.set(no_advertise=True)
        self.b.set(no_advertise=True)
        modern = self.a.client(b'CONNECT {"verbose":false,"protocol":1}\r\n')
        pump, dialled, accepted = link(self.a, self.b)
        self.assertEqual((dialled.remote_urls(), accepted.remote_urls()), ([], []))
        self.assertEqual(modern.received(), b"")

    def test_listener_that_does_not_advertise(self) -> None:
        """The gateway's agents are never pointed at the service listeners."""
        self.a.factory.settings = dataclasses.replace(self.a.factory.settings, advertise=False)
        modern = self.a.client(b'CONNECT {"verbose":false,"protocol":1}\r\n')
        link(self.a, self.b)
        self.assertEqual(modern.received(), b"")
        self.assertNotIn("connect_urls", self.greeting(self.a))


class Mesh:
    """
    Nodes whose dials (configured or heard of by gossip) are answered in
    memory, each link by its own iosim pump, so a test says in which order
    the links' handshakes complete.
    """

    def __init__(self, *names: str) -> None:
        self.nodes = {}
        for i, name in enumerate(names):
            node = self.nodes[name] = Node(name)
            node.manager.port = 7001 + i  # (what its route INFO tells, and where gossip points)
        self.pumps = []

    def url(self, name: str) -> str:
        """Where C{name} is dialled."""
        return "nats-route://127.0.0.1:{}".format(self.nodes[name].manager.port)

    def answer(self) -> list:
        """Connect every dial under way, exchanging no byte yet: the new links' pumps."""
        new = []
        for node in self.nodes.values():
            node.clock.advance(0.1)  # (a ClientService dials on the next turn)
            for host, port, factory in [entry[:3] for entry in node.clock.tcpClients]:
                if getattr(factory, "answered", False):
                    continue
                factory.answered = True
                acceptor = next(n for n in self.nodes.values() if n.manager.port == port)
                outer, server = factory.buildProtocol(None), acceptor.manager.accepted()
                new.append(connect(
                    server, FakeTransport(server, True, peerAddress=IPv4Address("TCP", "127.0.0.1", 50000 + len(self.pumps) + len(new))),
                    outer, FakeTransport(outer, False, peerAddress=IPv4Address("TCP", host, port)),
                    greet=False,
                ))
        self.pumps.extend(new)
        return new

    def link(self, dialer: str, acceptor: str):
        """A configured route from C{dialer} to C{acceptor}, connected but no handshake yet: its pump."""
        self.nodes[dialer].manager.add_route(self.url(acceptor))
        [pump] = self.answer()
        return pump

    def settle(self) -> None:
        """Exchange everything and answer every dial, until nothing new is dialled."""
        for _ in range(10):
            for pump in self.pumps:
                pump.flush()
            if not self.answer():
                return
        raise AssertionError("the mesh keeps dialling")


class ImplicitRouteTests(SynchronousTestCase):
    """
    A mesh of three forms whatever order its routes come up in, as with
    nats-server 2.9 (route.go: processRouteInfo, forwardNewRouteInfoToKnownServers,
    processImplicitRoute): a server that registers a route, accepted or
    dialled, forwards that peer's INFO (with C{ip}) to its other routes, and
    a server told of one it has no route to dials it.
    """

    def check_mesh(self, links: list, order: tuple) -> None:
        mesh = Mesh("A", "B", "E")
        pumps = [mesh.link(dialer, acceptor) for dialer, acceptor in links]
        for i in order:
            pumps[i].flush()  # this link's handshake is done: both ends register it
        mesh.settle()
        for name, node in mesh.nodes.items():
            self.assertEqual(sorted(node.manager.routes), sorted("N" + other for other in mesh.nodes if other != name), (name, links, order))
        # What a user sees: a message crosses between the two that were not configured to meet.
        ends = [name for name in mesh.nodes if sum(name in link for link in links) == 1]
        sub = mesh.nodes[ends[0]].client()
        sub.send(b"SUB news 1\r\n")
        mesh.settle()
        mesh.nodes[ends[1]].client().send(b"PUB news 5\r\nhello\r\n")
        mesh.settle()
        self.assertEqual(sub.received(), b"MSG news 1 5\r\nhello\r\n", (links, order))

    def test_chain(self) -> None:
        """E dials A and B dials E (the interop test's mesh): B's route may come up on E before E's own to A."""
        for order in ((0, 1), (1, 0)):
            self.check_mesh([("E", "A"), ("B", "E")], order)

    def test_one_seed_dialled(self) -> None:
        """A and B both dial E."""
        for order in ((0, 1), (1, 0)):
            self.check_mesh([("A", "E"), ("B", "E")], order)

    def test_seed_dials_both(self) -> None:
        """E dials A and B."""
        for order in ((0, 1), (1, 0)):
            self.check_mesh([("E", "A"), ("E", "B")], order)

    def test_forwarded_info_names_where_to_dial(self) -> None:
        """The INFO forwarded for a dialled route carries its C{ip} (its address and cluster port) and no nonce."""
        mesh = Mesh("A", "B", "E")
        accepted, dialled = mesh.link("B", "E"), mesh.link("E", "A")
        accepted.flush()
        sent = []
        to_b = mesh.nodes["E"].manager.routes["NB"]
        original = to_b.transport.write
        to_b.transport.write = lambda data: (sent.append(data), original(data))
        dialled.flush()
        [info] = infos(b"".join(sent))
        self.assertEqual((info["server_id"], info["ip"], info["port"]), ("NA", "nats-route://127.0.0.1:7001/", 7001))
        self.assertNotIn("nonce", info)

    def test_crossed_duplicates_dial_again(self) -> None:
        """
        Two servers that heard of each other dial each other at once, and
        each registers its own dial first, so each drops the route the
        other kept: both routes end, and each dials the other again (as
        nats-server's route retry), so the two end with one route.
        """
        mesh = Mesh("A", "B")
        a, b = mesh.nodes["A"], mesh.nodes["B"]
        a.manager.dial(mesh.url("B") + "/")
        b.manager.dial(mesh.url("A") + "/")
        a_to_b, b_to_a = mesh.answer()
        # Each dialler hears the other's INFO first (and registers its own dial).
        for pump in (a_to_b, b_to_a):
            pump.client.dataReceived(pump.serverIO.getOutBuffer())
        self.assertEqual((list(a.manager.routes), list(b.manager.routes)), (["NB"], ["NA"]))
        # Then each acceptor hears the dialler, before any close crosses the wire: both are duplicates.
        for pump in (a_to_b, b_to_a):
            pump.server.dataReceived(pump.clientIO.getOutBuffer())
        mesh.settle()
        self.assertEqual((list(a.manager.routes), list(b.manager.routes)), (["NB"], ["NA"]))
        sub = b.client()
        sub.send(b"SUB news 1\r\n")
        mesh.settle()
        a.client().send(b"PUB news 2\r\nhi\r\n")
        mesh.settle()
        self.assertEqual(sub.received(), b"MSG news 1 2\r\nhi\r\n")

    def test_a_configured_route_is_not_dialled_again_when_gossiped(self) -> None:
        """A server told of a peer it is configured to dial leaves that to its configured route."""
        mesh = Mesh("A", "B")
        a = mesh.nodes["A"]
        a.manager.add_route(mesh.url("B"))
        a.clock.advance(0.1)
        dials = len(a.clock.tcpClients)
        a.manager.heard_of({"server_id": "NB", "host": "127.0.0.1", "port": 7002, "ip": "nats-route://127.0.0.1:7002/"})
        self.assertEqual(len(a.clock.tcpClients), dials)
        a.manager.heard_of({"server_id": "NC", "host": "127.0.0.1", "port": 7003, "ip": "nats-route://127.0.0.1:7003/"})
        self.assertEqual(a.clock.tcpClients[-1][:2], ("127.0.0.1", 7003))

    def test_configured_both_ways(self) -> None:
        """
        Two servers configured to dial each other keep one route: the dial
        that finds the other already connected is not made again (it was,
        every half second, each time dropped as a duplicate) until that
        route ends; then it is, at once.
        """
        mesh = Mesh("A", "B")
        a, b = mesh.nodes["A"], mesh.nodes["B"]
        a_to_b, b_to_a = mesh.link("A", "B"), mesh.link("B", "A")
        a_to_b.flush()
        b_to_a.flush()  # a duplicate on both ends
        for _ in range(30):
            mesh.settle()
            for node in (a, b):
                node.clock.advance(1)
        self.assertEqual((list(a.manager.routes), list(b.manager.routes)), (["NB"], ["NA"]))
        self.assertEqual((len(a.clock.tcpClients), len(b.clock.tcpClients)), (1, 1))
        # The route A dialled ends: B dials A now, and messages cross again.
        a.manager.routes["NB"].close(None, "gone")
        mesh.settle()
        self.assertEqual((list(a.manager.routes), list(b.manager.routes)), (["NB"], ["NA"]))
        self.assertEqual(len(b.clock.tcpClients), 2)
        sub = a.client()
        sub.send(b"SUB news 1\r\n")
        mesh.settle()
        b.client().send(b"PUB news 2\r\nhi\r\n")
        mesh.settle()
        self.assertEqual(sub.received(), b"MSG news 1 2\r\nhi\r\n")


class ClientURLTests(SynchronousTestCase):
    def test_urls(self) -> None:
        from eventsvc.nats.advertise import client_urls

        self.assertEqual(client_urls("10.1.2.3", 4222), ["10.1.2.3:4222"])
        self.assertEqual(client_urls("0.0.0.0", 4222, "nats.example.com"), ["nats.example.com:4222"])
        self.assertEqual(client_urls("0.0.0.0", 4222, "nats.example.com:443"), ["nats.example.com:443"])
        self.assertEqual(client_urls("::1", 4222), ["[::1]:4222"])
        self.assertEqual(client_urls("0.0.0.0", 4222, "[fd00::1]:5222"), ["[fd00::1]:5222"])
        for url in client_urls("0.0.0.0", 4222):
            self.assertFalse(url.startswith("127.") or url.startswith("[::1]"), url)
            self.assertTrue(url.endswith(":4222"))


class RoutePermissionTests(SynchronousTestCase):
    """[cluster.permissions]: import and export, as nats-server's cluster permissions."""

    def setUp(self) -> None:
        from eventsvc.security.permissions import Permissions

        self.a, self.b = Node("A"), Node("B")
        self.perms = lambda allow: Permissions(publish_allow=allow, subscribe_allow=allow)

    def test_export_limits_what_is_sent(self) -> None:
        # B exports only public.>: A's interest in secret.x is ignored there.
        self.b.set(exports=self.perms(["public.>"]))
        sub = self.a.client()
        sub.send(b"SUB public.x 1\r\nSUB secret.x 2\r\nSUB > 3\r\n")
        pump, dialled, accepted = link(self.a, self.b)
        self.assertEqual(sorted(accepted.subs), [(b"public.x", None)])
        self.b.client().send(b"PUB public.x 1\r\na\r\nPUB secret.x 1\r\nb\r\n")
        pump.flush()
        # (Both of A's matching subscriptions, in the index's order; secret.x never crossed.)
        self.assertEqual(sorted(sub.received().split(b"MSG ")[1:]), [b"public.x 1 1\r\na\r\n", b"public.x 3 1\r\na\r\n"])

    def test_import_limits_interest_and_messages(self) -> None:
        # A imports only in.>: B never hears of A's other interest, and a
        # message B sends anyway is dropped.
        self.a.set(imports=self.perms(["in.>"]))
        sub = self.a.client()
        sub.send(b"SUB in.x 1\r\nSUB other 2\r\n")
        pump, dialled, accepted = link(self.a, self.b)
        self.assertEqual(sorted(accepted.subs), [(b"in.x", None)])
        sub.send(b"SUB in.y 3\r\nSUB other.y 4\r\n")
        pump.flush()
        self.assertEqual(sorted(accepted.subs), [(b"in.x", None), (b"in.y", None)])
        accepted.transport.write(b"RMSG $G other 1\r\nz\r\nRMSG $G in.x 1\r\ni\r\n")
        pump.flush()
        self.assertEqual(sub.received(), b"MSG in.x 1 1\r\ni\r\n")
        self.assertEqual(self.a.manager.dropped, 1)


# -- the route parser, fuzzed as the client parser is (test_parser) ------------

from typing import Any, List  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from eventsvc.test.test_parser import _check_output, mutated_streams_of, pieces  # noqa: E402

_ROUTE_LINE = re.compile(rb"(INFO \{.*\} |PING|PONG|-ERR '[^'\r\n]*'|RS[+-] \$G \S+( \S+)*)$")

_ROUTE_OPS = st.sampled_from([
    b"RS+ $G foo\r\n",
    b"RS+ $G foo.* q 3\r\n",
    b"RS- $G foo\r\n",
    b"RS- $G foo.* q\r\n",
    b"RMSG $G foo 5\r\nhello\r\n",
    b"RMSG $G foo.bar reply 2\r\nhi\r\n",
    b"RMSG $G foo + reply q1 q2 1\r\nx\r\n",
    b"RMSG $G foo | q1 0\r\n\r\n",
    b"RMSG $SYS foo 1\r\ny\r\n",
    b"HMSG $G foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
    b"HMSG $G foo reply 12 12\r\nNATS/1.0\r\n\r\n\r\n",
    b"LS+ edge $G foo\r\n",
    b"LS+ edge $G foo.* q 3\r\n",
    b"LS- $G foo\r\n",
    b"LMSG edge $G foo 0 2\r\nhi\r\n",
    b"LMSG edge $G foo + reply q 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
    b"PING\r\n",
    b"PONG\r\n",
    b"+OK\r\n",
    b'INFO {"server_id":"P"}\r\n',
])


def mutated_route_streams() -> Any:
    return mutated_streams_of(_ROUTE_OPS)


_TOKEN = st.text(alphabet="abcXYZ019_-$", min_size=1, max_size=6).map(lambda t: t.encode())
_LITERAL = st.lists(_TOKEN, min_size=1, max_size=30).map(b".".join)


@st.composite
def valid_route_streams(draw) -> "tuple[bytes, int]":
    """
    Well-formed route operations, and how many messages in $G they carry:
    a local plain subscriber gets each of them, those naming queue groups
    too (as from nats-server, which names the groups in the RMSG it would
    send for the plain interest anyway).
    """
    out = []
    plain = 0
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["rmsg", "rmsg", "rmsg-q", "hmsg", "lmsg", "lmsg-h", "rs", "ls", "ping", "other-account"]))
        payload = draw(st.binary(max_size=40))
        if kind == "rmsg":
            reply = draw(st.one_of(st.none(), _LITERAL))
            out.append(b"RMSG $G %s %s%d\r\n%s\r\n" % (draw(_LITERAL), reply + b" " if reply else b"", len(payload), payload))
            plain += 1
        elif kind == "rmsg-q":
            out.append(b"RMSG $G %s | %s %d\r\n%s\r\n" % (draw(_LITERAL), draw(_TOKEN), len(payload), payload))
            plain += 1
        elif kind == "hmsg":
            block = b"NATS/1.0\r\nK: v\r\n\r\n"
            out.append(b"HMSG $G %s %d %d\r\n%s%s\r\n" % (draw(_LITERAL), len(block), len(block) + len(payload), block, payload))
            plain += 1
        elif kind == "lmsg":
            out.append(b"LMSG edge $G %s 0 %d\r\n%s\r\n" % (draw(_LITERAL), len(payload), payload))
            plain += 1
        elif kind == "lmsg-h":
            block = b"NATS/1.0\r\nK: v\r\n\r\n"
            out.append(b"LMSG edge $G %s | %s %d %d\r\n%s%s\r\n" % (draw(_LITERAL), draw(_TOKEN), len(block), len(block) + len(payload), block, payload))
            plain += 1
        elif kind == "rs":
            out.append(b"RS+ $G %s\r\n" % draw(_LITERAL))
        elif kind == "ls":
            out.append(b"LS+ edge $G %s\r\n" % draw(_LITERAL))
        elif kind == "ping":
            out.append(b"PING\r\n")
        else:
            out.append(b"RMSG $OTHER %s %d\r\n%s\r\n" % (draw(_LITERAL), len(payload), payload))
    return b"".join(out), plain


def feed_cut(proto: Any, data: bytes, cuts: List[int]) -> None:
    """
    Hand a link C{data} in pieces cut at C{cuts}, stopping once it has
    closed.  A read that ran over the parse budget (10 ms of wall clock: a
    loaded machine) goes on in the next reactor turns, as it would live.
    """
    clock = proto.manager.clock
    for piece in pieces(data, cuts):
        if proto.closed:
            break
        proto.dataReceived(piece)
        for _ in range(10000):
            if not any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()):
                break
            clock.advance(0)


def feed_peer(test: SynchronousTestCase, proto: Any, transport: Any, watcher: Any, data: bytes, cuts: List[int], lines: Any):
    """
    Feed a peer link C{data}, cut at C{cuts}, until it closes: what the
    local C{watcher} saw must be well-formed, and every line written to the
    peer match C{lines}; then the link ends.  Returns (what the watcher
    saw, whether the link closed).
    """
    feed_cut(proto, data, cuts)
    seen = watcher.received()
    closed = proto.closed
    _check_output(test, seen, watcher.closed)
    for line in transport.value().split(b"\r\n")[:-1]:
        test.assertTrue(lines.match(line), line)
    proto.connectionLost(None)
    return seen, closed


def count_frames(test: SynchronousTestCase, seen: bytes, sid: bytes) -> int:
    """How many MSG/HMSG frames C{seen} holds, each for C{sid}."""
    frames = pos = 0
    while pos < len(seen):
        nl = seen.index(b"\r\n", pos)
        line = seen[pos:nl].split(b" ")
        test.assertEqual(line[2], sid)
        pos = nl + 2 + int(line[-1]) + 2
        frames += 1
    return frames


class RouteFuzzTests(SynchronousTestCase):
    """
    A peer's bytes, random, mutated or well-formed and cut anywhere, on an
    accepted route: nothing escapes the parser, everything written (to the
    peer and to a local subscriber) is well-formed, and closing the route
    leaves none of its interest behind.
    """

    def route(self):
        node = Node("A")
        watcher = node.client()
        watcher.send(b"SUB > 9\r\n")
        proto = node.manager.accepted()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50001))
        proto.makeConnection(transport)
        proto.dataReceived(b'CONNECT {"verbose":false,"cluster":"c1"}\r\nINFO {"server_id":"P","cluster":"c1"}\r\n')
        self.assertEqual(set(node.manager.routes), {"P"})
        transport.clear()
        return node, watcher, proto, transport

    def feed(self, data: bytes, cuts: List[int]):
        node, watcher, proto, transport = self.route()
        seen, closed = feed_peer(self, proto, transport, watcher, data, cuts, _ROUTE_LINE)
        self.assertEqual(node.manager.routes, {})
        self.assertEqual(node.broker.sublist.count, 1)  # the watcher's own
        return seen, closed

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
    def test_random_bytes(self, data: bytes, cuts: List[int]) -> None:
        self.feed(data, cuts)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated_route_streams(), st.lists(st.integers(0, 300), max_size=5))
    def test_mutated_protocol(self, data: bytes, cuts: List[int]) -> None:
        whole, _ = self.feed(data, [])
        # However the bytes were cut, the subscriber saw the same.
        self.assertEqual(self.feed(data, cuts)[0], whole)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(valid_route_streams(), st.lists(st.integers(0, 4000), max_size=6))
    def test_valid_looking(self, stream, cuts: List[int]) -> None:
        data, plain = stream
        seen, closed = self.feed(data, cuts)
        self.assertFalse(closed)
        self.assertEqual(count_frames(self, seen, b"9"), plain)


class BackoffTests(SynchronousTestCase):
    def test_long_outages_keep_redialling(self) -> None:
        """After thousands of failures the delay is still retry_max, jittered (2**n once overflowed a float)."""
        from eventsvc.nats.links.manager import backoff

        settings = RouteSettings("c1", retry_initial=0.5, retry_max=10.0)
        self.assertEqual(backoff(settings, 0, lambda: 1.0), 0.5)
        self.assertEqual(backoff(settings, 2, lambda: 0.0), 1.0)
        self.assertEqual(backoff(settings, 5000, lambda: 1.0), 10.0)
