"""
Leaf nodes in memory: hubs and spokes joined by iosim, clients on
StringTransports, a fake clock.  The handshake (both ways, as nats-server
words it), interest per link, the delivery rules between clients, routes
and leafs, queue groups, loop detection, and the parser (with hypothesis).
"""

from __future__ import annotations

import json
import re
from typing import Any, List, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats.links.leaf import LeafManager, LeafSettings
from eventsvc.nats.links.leaf_connection import LOOP_ERROR
from eventsvc.nats.listener import ClientFactory
from eventsvc.nats.links.route import RouteManager, RouteSettings
from eventsvc.nats.server import Broker
from eventsvc.nats.settings import ClientSettings
from eventsvc.test.helpers import FakeClient, dial_in_memory, with_limits
from eventsvc.test.test_parser import mutated_streams_of, pieces
from eventsvc.test.test_route import count_frames, feed_peer
from eventsvc.test.test_route import link as route_link


#: A spoke's CONNECTs to a hub that wants user "leaf" and password "pw",
#: and what nats-server 2.9 answers each (then a PING) with: b"PONG\r\n"
#: when it takes it, its error, or nothing when it closes without a word
#: (test_interop_leaf sends them to nats-server too).
LEAF_CONNECTS = (
    (b'{"User":"leaf","PASS":"pw"}', b"PONG\r\n"),
    (b'{"USER":"leaf","pa\\u017fs":"pw","Pass":null,"Lang":null,"lang":"","Deny_Pub":null}', b"PONG\r\n"),
    (b'{"user":"leaf","pass":"wrong","Pass":"pw","pass":null}', b"PONG\r\n"),
    (b'{"user":"leaf","pass":"pw","PASS":"wrong"}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"Leaf","pass":"pw"}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"leaf","pass":"pw","LANG":"go"}', b"-ERR 'attempted to connect to leaf node port'\r\n"),
    (b'{"user":"leaf","pass":"wrong","lang":"go"}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"leaf","pass":"wrong","is_hub":"x"}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"leaf","pass":"pw","is_hub":"x"}', b""),
    (b'{"user":"leaf","pass":"pw","deny_pub":"x"}', b""),
    (b'{"user":"leaf","pass":"pw","Import":5}', b""),
    (b'{"user":"leaf","pass":5,"pass":"pw"}', b""),
    (b'{"user":"leaf","pass":"pw","New_Account":true}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"leaf","pass":"pw","Gateway":"B"}', b"-ERR 'Rejecting connection from gateway \"B\" on the leafnode port'\r\n"),
)


class Node:
    """A server with leaf nodes (and a cluster, if C{cluster} is named)."""

    def __init__(self, name: str, cluster: str = "", **settings) -> None:
        self.clock = MemoryReactorClock()
        self.broker = Broker(server_id="N" + name, server_name=name)
        self.factory = ClientFactory(self.broker, ClientSettings(), self.clock)
        self.routes: Optional[RouteManager] = None
        if cluster:
            self.routes = RouteManager(self.broker, self.clock, RouteSettings(cluster, "127.0.0.1", 0))
            self.routes.startService()
        self.leafs = LeafManager(self.broker, self.clock, with_limits(LeafSettings, host="127.0.0.1", port=0, **settings))
        self.leafs.startService()

    @property
    def manager(self) -> RouteManager:
        assert self.routes is not None
        return self.routes

    def client(self) -> FakeClient:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        c = FakeClient(proto, transport)
        c.send(b'CONNECT {"verbose":false,"headers":true}\r\n')
        c.received()
        return c


def leaf(spoke: Node, hub: Node, user: str = "", password: str = "", remote=None):
    """A leaf link from C{spoke} to C{hub}, in memory: (pump, the spoke's uplink, the hub's downleaf)."""
    from eventsvc.nats.links.leaf_connection import RemoteLeaf

    remote = remote or RemoteLeaf(("nats-leaf://127.0.0.1:7422",), user, password)
    spoke.leafs.add_remote(remote)
    outer, uplink = dial_in_memory(spoke.clock, remote)
    downleaf = hub.leafs.accepted()
    pump = connect(
        downleaf, FakeTransport(downleaf, True, peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)),
        outer, FakeTransport(outer, False, peerAddress=IPv4Address("TCP", "127.0.0.1", 7422)),
        greet=True,
    )
    pump.flush()
    return pump, uplink, downleaf


def interest(conn) -> list:
    return sorted((subject, queue) for subject, queue in conn.subs)


class HandshakeTests(SynchronousTestCase):
    def test_hub_greets_as_nats_server(self) -> None:
        """The hub's INFO has what a nats-server spoke checks (client_id, leafnode_urls) and ends "} \\r\\n"."""
        hub = Node("H")
        proto = hub.leafs.accepted()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        proto.makeConnection(transport)
        line = transport.value()
        self.assertTrue(line.startswith(b"INFO {") and line.endswith(b"} \r\n"), line)
        info = json.loads(line[5:])
        self.assertEqual(info["server_id"], "NH")
        self.assertTrue(info["auth_required"])
        self.assertTrue(info["info_on_connect"])
        self.assertGreater(info["client_id"], 0)
        self.assertTrue(info["nonce"])
        self.assertEqual(info["leafnode_urls"], ["127.0.0.1:%d" % hub.leafs.port])
        transport.clear()
        proto.dataReceived(b'CONNECT {"version":"2.9.10","server_id":"NS","name":"spoke","headers":true}\r\n')
        out = transport.value()
        second, rest = out.split(b"\r\n", 1)
        info = json.loads(second[5:])
        self.assertTrue(info["connect_info"])
        self.assertEqual(info["remote_account"], "$G")
        self.assertEqual(rest, b"LS+ " + hub.leafs.lds + b"\r\n")
        self.assertTrue(proto.up)

    def test_spoke_and_hub_come_up(self) -> None:
        spoke, hub = Node("S"), Node("H")
        pump, uplink, downleaf = leaf(spoke, hub)
        self.assertTrue(uplink.up and downleaf.up)
        self.assertEqual(downleaf.remote_name, "S")
        self.assertEqual(uplink.remote_name, "H")
        # Each is subscribed to the other's loop-detection subject, and nothing else.
        self.assertEqual(interest(uplink), [(hub.leafs.lds, None)])
        self.assertEqual(interest(downleaf), [(spoke.leafs.lds, None)])
        self.assertEqual(spoke.leafs.down(), [])

    def test_round_trip_measured_from_the_start(self) -> None:
        """Each side PINGs once the link is up (nats-server's first PING): /leafz has the round trip at once."""
        spoke, hub = Node("S"), Node("H")
        pump, uplink, downleaf = leaf(spoke, hub)
        self.assertEqual((uplink.rtt, downleaf.rtt), (0.0, 0.0))
        spoke.clock.advance(0)
        hub.clock.advance(0)
        spoke.clock.advance(0.004)
        hub.clock.advance(0.002)
        pump.flush()
        self.assertAlmostEqual(uplink.rtt, 0.004)
        self.assertAlmostEqual(downleaf.rtt, 0.002)
        self.assertEqual((uplink.pings_out, downleaf.pings_out), (0, 0))

    def test_spoke_presents_credentials(self) -> None:
        spoke, hub = Node("S"), Node("H", user="leaf", password="s3cret")
        pump, uplink, downleaf = leaf(spoke, hub, "leaf", "s3cret")
        self.assertTrue(downleaf.up)

    def test_wrong_credentials_refused(self) -> None:
        for hub_settings, user, password in (
            (dict(user="leaf", password="s3cret"), "leaf", "wrong"),
            (dict(user="leaf", password="s3cret"), "", ""),
            (dict(token="t0ken"), "other", ""),
        ):
            spoke, hub = Node("S"), Node("H", **hub_settings)
            pump, uplink, downleaf = leaf(spoke, hub, user, password)
            self.assertFalse(downleaf.up)
            self.assertTrue(downleaf.closed)
            self.assertEqual(hub.leafs.leafs, {})

    def test_token(self) -> None:
        spoke, hub = Node("S"), Node("H", token="t0ken")
        pump, uplink, downleaf = leaf(spoke, hub, "t0ken")
        self.assertTrue(downleaf.up)

    def test_tls_after_info(self) -> None:
        """A TLS hub says so in INFO and both sides start TLS there; the spoke's CONNECT (and credentials) go after it."""

        class Context:
            def __init__(self, name: str = "") -> None:
                self.name = name

            def iosimVerify(self, other) -> bool:
                return True

        names = []
        spoke = Node("S", tls_dial=lambda name: names.append(name) or Context(name))
        hub = Node("H", tls_accept=Context(), user="leaf", password="pw")
        pump, uplink, downleaf = leaf(spoke, hub, "leaf", "pw")
        self.assertTrue(uplink.up and downleaf.up)
        self.assertTrue(json.loads(hub.leafs.info_line(downleaf)[5:])["tls_required"])
        self.assertEqual(names, ["127.0.0.1"])
        self.assertTrue(downleaf.remote_info["tls_required"])
        # A spoke without TLS cannot join a TLS hub, and says why.
        plain = Node("P")
        pump, uplink, downleaf = leaf(plain, hub, "leaf", "pw")
        self.assertTrue(uplink.closed)
        self.assertFalse(downleaf.up)

    def test_tls_remote_keeps_credentials_from_a_plain_hub(self) -> None:
        from eventsvc.nats.links.leaf_connection import RemoteLeaf

        spoke = Node("S", tls_dial=lambda name: object())
        remote = RemoteLeaf(("tls://127.0.0.1:7422",), "leaf", "pw")
        proto = spoke.leafs.dialled(remote)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 7422))
        proto.makeConnection(transport)
        proto.dataReceived(Node("H").leafs.info_line(proto))
        self.assertTrue(proto.closed)
        self.assertNotIn(b"CONNECT", transport.value())

    def accepted(self, hub: Node):
        proto = hub.leafs.accepted()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        proto.makeConnection(transport)
        transport.clear()
        return proto, transport

    def test_refusals(self) -> None:
        """A client, a gateway, a spoke of our own cluster, or leaf verbs before CONNECT: each refused with nats-server's words."""
        for data, error in (
            (b'CONNECT {"lang":"python","verbose":false}\r\n', b"-ERR 'attempted to connect to leaf node port'\r\n"),
            (b'CONNECT {"gateway":"B"}\r\n', b"-ERR 'Rejecting connection from gateway \"B\" on the leafnode port'\r\n"),
            (b'CONNECT {"server_id":"X","cluster":"c1"}\r\n', b"-ERR 'remote leafnode has same cluster name'\r\n"),
            (b"LS+ foo\r\n", b"-ERR 'Authorization Violation'\r\n"),
            (b"LMSG foo 1\r\nx\r\n", b"-ERR 'Authorization Violation'\r\n"),
        ):
            hub = Node("H", cluster="c1")
            proto, transport = self.accepted(hub)
            proto.dataReceived(data)
            self.assertTrue(proto.closed, data)
            self.assertEqual(transport.value(), error)

    def test_connect_read_as_nats_server_reads_it(self) -> None:
        """
        nats-server reads a spoke's CONNECT with Go's encoding/json, first
        into ClientOpts (and checks the credentials), then into its leaf
        struct: field names in any case ("User"/"PASS" log in), a null
        leaves a field as it was, a value of the wrong type closes the link
        without a word (even one a later key overrides), the credentials
        before anything else, and a client (a C{lang}) only when it names
        one.  (The same CONNECTs to nats-server: test_interop_leaf's
        HandWrittenConnectTests.)
        """
        for connect, answer in LEAF_CONNECTS:
            proto, transport = self.accepted(Node("H", user="leaf", password="pw"))
            proto.dataReceived(b"CONNECT " + connect + b"\r\nPING\r\n")
            answered = transport.value()
            if answer == b"PONG\r\n":
                self.assertTrue(proto.up, connect)
                self.assertTrue(answered.startswith(b"INFO ") and answered.endswith(b"PONG\r\n"), (connect, answered))
            else:
                self.assertTrue(proto.closed, connect)
                self.assertEqual(answered, answer, connect)

    def test_handshake_timeout(self) -> None:
        hub = Node("H")
        proto, transport = self.accepted(hub)
        hub.clock.advance(2.1)
        self.assertTrue(proto.closed)
        self.assertEqual(transport.value(), b"-ERR 'Authentication Timeout'\r\n")

    def test_wrong_port(self) -> None:
        """A spoke that reaches a client port (an INFO without client_id or leafnode_urls) closes, and dials again."""
        spoke = Node("S")
        from eventsvc.nats.links.leaf_connection import RemoteLeaf

        remote = RemoteLeaf(("nats-leaf://127.0.0.1:4222",))
        spoke.leafs.add_remote(remote)
        outer, proto = dial_in_memory(spoke.clock, remote)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4222))
        outer.makeConnection(transport)
        proto.dataReceived(b'INFO {"server_id":"X","max_payload":1048576} \r\n')
        self.assertTrue(proto.closed)
        self.assertNotIn(b"CONNECT", transport.value())
        # (The transport closes, as a reactor's would: the manager hears of it.)
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        outer.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(spoke.clock.getDelayedCalls()), 1)

    def test_the_same_spoke_again_replaces_its_stale_link(self) -> None:
        """A spoke that dials again before the hub saw its link die (kill -9): the old link goes, with its interest."""
        spoke, hub = Node("S"), Node("H")
        spoke.client().send(b"SUB foo 1\r\n")
        pump, uplink, stale = leaf(spoke, hub)
        errors = []
        uplink.op_err = errors.append
        # (The spoke's process is gone; the hub hears nothing.)
        spoke2 = Node("S")
        spoke2.client().send(b"SUB bar 1\r\n")
        pump2, uplink2, fresh = leaf(spoke2, hub)
        self.assertTrue(stale.closed)
        self.assertFalse(fresh.closed)
        # nats-server's words, to the old link (should anyone still be there).
        pump.flush()
        self.assertEqual(errors, [b"'Duplicate Remote LeafNode Connection'"])
        self.assertEqual(list(hub.leafs.leafs.values()), [fresh])
        self.assertEqual(sorted(s.subject for s in hub.broker.sublist.all()), sorted([b"bar", spoke2.leafs.lds]))
        # Another server's spoke is not a duplicate.
        pump3, uplink3, other = leaf(Node("T"), hub)
        self.assertFalse(fresh.closed or other.closed)

    def test_lost_link_takes_its_interest_and_redials(self) -> None:
        spoke, hub = Node("S"), Node("H")
        spoke.client().send(b"SUB foo 1\r\n")
        pump, uplink, downleaf = leaf(spoke, hub)
        self.assertIn(b"foo", [s.subject for s in hub.broker.sublist.all()])
        uplink.transport.loseConnection()
        pump.flush()
        self.assertEqual([s.subject for s in hub.broker.sublist.all()], [])
        self.assertEqual(hub.leafs.leafs, {})
        self.assertEqual(spoke.leafs.down(), ["nats-leaf://127.0.0.1:7422"])
        delays = [c.getTime() - spoke.clock.seconds() for c in spoke.clock.getDelayedCalls() if "_reconnect" in repr(c)]  # (ClientService's redial)
        self.assertEqual(len(delays), 1)
        self.assertTrue(0.5 <= delays[0] <= 1.0, delays)


class InterestTests(SynchronousTestCase):
    def test_interest_both_ways(self) -> None:
        spoke, hub = Node("S"), Node("H")
        hc, sc = hub.client(), spoke.client()
        hc.send(b"SUB early 1\r\n")
        pump, uplink, downleaf = leaf(spoke, hub)
        self.assertIn((b"early", None), uplink.subs)
        hc.send(b"SUB foo.* 2\r\nSUB work w 3\r\n")
        sc.send(b"SUB bar 1\r\nSUB bar 2\r\nSUB work w 3\r\nSUB work w 4\r\n")
        pump.flush()
        self.assertEqual(interest(uplink), sorted([(b"early", None), (b"foo.*", None), (b"work", b"w"), (hub.leafs.lds, None)]))
        self.assertEqual(interest(downleaf), sorted([(b"bar", None), (b"work", b"w"), (spoke.leafs.lds, None)]))
        # The queue group's weight is its member count; a plain subject is told once.
        self.assertEqual(downleaf.smap, {hub.leafs.lds: 1, b"early": 1, b"foo.*": 1, b"work w": 1})
        self.assertEqual(uplink.smap[b"work w"], 2)
        self.assertEqual(uplink.smap[b"bar"], 2)
        sc.send(b"UNSUB 1\r\n")
        pump.flush()
        self.assertIn((b"bar", None), downleaf.subs)
        sc.send(b"UNSUB 2\r\nUNSUB 3\r\n")
        pump.flush()
        self.assertNotIn((b"bar", None), downleaf.subs)
        self.assertIn((b"work", b"w"), downleaf.subs)
        sc.send(b"UNSUB 4\r\n")
        hc.send(b"UNSUB 2\r\n")
        pump.flush()
        self.assertEqual(interest(downleaf), [(spoke.leafs.lds, None)])
        self.assertNotIn((b"foo.*", None), uplink.subs)

    def test_uplink_hears_only_local_and_downleaf_interest(self) -> None:
        """
        A spoke in a cluster tells its hub its own clients' interest, not
        what its routes told it (their servers have their own uplinks); and
        the hub's interest stays off the routes.
        """
        spoke, peer, hub = Node("S", cluster="edge"), Node("P", cluster="edge"), Node("H")
        rpump, _, _ = route_link(peer, spoke)
        peer.client().send(b"SUB from.peer 1\r\n")
        spoke.client().send(b"SUB from.spoke 1\r\n")
        rpump.flush()
        pump, uplink, downleaf = leaf(spoke, hub)
        hub.client().send(b"SUB from.hub 1\r\n")
        pump.flush()
        rpump.flush()
        self.assertEqual(interest(downleaf), sorted([(b"from.spoke", None), (spoke.leafs.lds, None)]))
        self.assertIn((b"from.hub", None), uplink.subs)
        self.assertNotIn(b"from.hub", [s.subject for s in peer.broker.sublist.all()])
        self.assertNotIn(hub.leafs.lds, [s.subject for s in peer.broker.sublist.all()])

    def test_downleaf_hears_the_cluster_and_the_cluster_hears_it(self) -> None:
        hub, peer, spoke = Node("H", cluster="core"), Node("P", cluster="core"), Node("S")
        rpump, _, _ = route_link(peer, hub)
        peer.client().send(b"SUB from.peer 1\r\n")
        rpump.flush()
        pump, uplink, downleaf = leaf(spoke, hub)
        spoke.client().send(b"SUB from.spoke 1\r\n")
        pump.flush()
        rpump.flush()
        self.assertIn((b"from.peer", None), uplink.subs)
        self.assertIn(b"from.spoke", [s.subject for s in peer.broker.sublist.all()])

    def test_leafs_of_one_cluster_do_not_hear_each_other(self) -> None:
        """Two spokes of cluster "edge" on one hub: each other's interest stays off their links (they have their own routes)."""
        hub = Node("H")
        a, b = Node("A", cluster="edge"), Node("B", cluster="edge")
        c = Node("C")
        pa, ua, da = leaf(a, hub)
        pb, ub, db = leaf(b, hub)
        pc, uc, dc = leaf(c, hub)
        a.client().send(b"SUB from.a 1\r\n")
        c.client().send(b"SUB from.c 1\r\n")
        for p in (pa, pb, pc):
            p.flush()
        for p in (pa, pb, pc):
            p.flush()
        self.assertNotIn((b"from.a", None), ub.subs)
        self.assertIn((b"from.a", None), uc.subs)
        self.assertIn((b"from.c", None), ub.subs)
        # Loop detection's subjects cross anyway.
        self.assertIn((a.leafs.lds, None), ub.subs)


class DeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.spoke, self.hub = Node("S"), Node("H")
        self.pump, self.uplink, self.downleaf = leaf(self.spoke, self.hub)

    def settle(self) -> None:
        for _ in range(3):
            self.pump.flush()

    def test_messages_both_ways(self) -> None:
        hc, sc = self.hub.client(), self.spoke.client()
        hc.send(b"SUB to.hub 1\r\n")
        sc.send(b"SUB to.spoke 1\r\n")
        self.settle()
        hp, sp = self.hub.client(), self.spoke.client()
        hp.send(b"PUB to.spoke reply.x 2\r\nhi\r\n")
        sp.send(b"PUB to.hub 3\r\nabc\r\nHPUB to.hub 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
        self.settle()
        self.assertEqual(sc.received(), b"MSG to.spoke 1 reply.x 2\r\nhi\r\n")
        self.assertEqual(hc.received(), b"MSG to.hub 1 3\r\nabc\r\nHMSG to.hub 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")

    def test_batches_cross_as_one_frame(self) -> None:
        hc = self.hub.client()
        hc.send(b"SUB b 1\r\n")
        self.settle()
        self.spoke.client().send(b"PUB b 1\r\nx\r\n" * 5)
        self.settle()
        self.assertEqual(hc.received(), b"MSG b 1 1\r\nx\r\n" * 5)
        self.assertEqual(self.downleaf.in_msgs, 5)

    def test_no_echo_back_to_the_leaf(self) -> None:
        """A message from the spoke reaches the hub's subscribers, not back down the link it came on."""
        sc = self.spoke.client()
        sc.send(b"SUB echo 1\r\n")
        self.hub.client().send(b"SUB echo 1\r\n")
        self.settle()
        sc.send(b"PUB echo 1\r\nx\r\n")
        self.settle()
        self.assertEqual(sc.received(), b"MSG echo 1 1\r\nx\r\n")  # once: its own server's echo

    def test_queue_group_over_the_link(self) -> None:
        """Local members first; with none, the other side's group gets it, named in the LMSG; once per message in all."""
        hm, sm = self.hub.client(), self.spoke.client()
        hm.send(b"SUB work w 1\r\n")
        sm.send(b"SUB work w 1\r\n")
        self.settle()
        self.hub.client().send(b"PUB work 1\r\nh\r\n" * 10)
        self.spoke.client().send(b"PUB work 1\r\ns\r\n" * 10)
        self.settle()
        self.assertEqual(hm.received(), b"MSG work 1 1\r\nh\r\n" * 10)
        self.assertEqual(sm.received(), b"MSG work 1 1\r\ns\r\n" * 10)
        hm.send(b"UNSUB 1\r\n")
        self.settle()
        self.assertIn((b"work", b"w"), self.downleaf.subs)
        self.hub.client().send(b"PUB work 1\r\nh\r\n" * 3)
        self.settle()
        self.assertEqual(sm.received(), b"MSG work 1 1\r\nh\r\n" * 3)

    def test_an_lmsg_without_names_skips_queue_groups(self) -> None:
        hm, plain = self.hub.client(), self.hub.client()
        hm.send(b"SUB work w 1\r\n")
        plain.send(b"SUB work 1\r\n")
        self.settle()
        self.downleaf.dataReceived(b"LMSG work 1\r\nx\r\nLMSG work | w 1\r\ny\r\nLMSG work + r w 1\r\nz\r\n")
        self.hub.broker.flush()
        self.assertEqual(plain.received(), b"MSG work 1 1\r\nx\r\nMSG work 1 1\r\ny\r\nMSG work 1 r 1\r\nz\r\n")
        self.assertEqual(hm.received(), b"MSG work 1 1\r\ny\r\nMSG work 1 r 1\r\nz\r\n")

    def test_plain_and_queue_interest_on_one_link_is_one_frame(self) -> None:
        """A spoke with a plain subscriber and a group member on a subject gets one LMSG naming the group, not two."""
        sc = self.spoke.client()
        sc.send(b"SUB mixed 1\r\nSUB mixed w 2\r\n")
        self.settle()
        self.hub.client().send(b"PUB mixed 1\r\nx\r\n")
        self.settle()
        self.assertEqual(sorted(sc.received().split(b"MSG ")[1:]), [b"mixed 1 1\r\nx\r\n", b"mixed 2 1\r\nx\r\n"])

    def test_request_reply_across(self) -> None:
        responder, requester = self.spoke.client(), self.hub.client()
        responder.send(b"SUB svc 1\r\n")
        requester.send(b"SUB _INBOX.a 1\r\n")
        self.settle()
        requester.send(b"PUB svc _INBOX.a 1\r\n?\r\n")
        self.settle()
        self.assertEqual(responder.received(), b"MSG svc 1 _INBOX.a 1\r\n?\r\n")
        responder.send(b"PUB _INBOX.a 2\r\nok\r\n")
        self.settle()
        self.assertEqual(requester.received(), b"MSG _INBOX.a 1 2\r\nok\r\n")


class RoutedDeliveryTests(SynchronousTestCase):
    def test_route_messages_reach_downleafs_not_uplinks(self) -> None:
        """
        Hub H routed to P, spoke S leafed to H: P's clients reach S (H is
        its only way in); and a spoke X routed to Y, X leafed to a hub:
        Y's messages do not go up X's uplink (Y has its own).
        """
        hub, peer, spoke = Node("H", cluster="core"), Node("P", cluster="core"), Node("S")
        rpump, _, _ = route_link(peer, hub)
        pump, uplink, downleaf = leaf(spoke, hub)
        sc = spoke.client()
        sc.send(b"SUB s 1\r\n")
        for _ in range(3):
            pump.flush()
            rpump.flush()
        peer.client().send(b"PUB s 2\r\nhi\r\n")
        for _ in range(3):
            rpump.flush()
            pump.flush()
        self.assertEqual(sc.received(), b"MSG s 1 2\r\nhi\r\n")

        x, y, top = Node("X", cluster="edge"), Node("Y", cluster="edge"), Node("T")
        rpump, _, _ = route_link(y, x)
        pump, uplink, downleaf = leaf(x, top)
        tc, xc = top.client(), x.client()
        tc.send(b"SUB up 1\r\n")
        xc.send(b"SUB up 1\r\n")  # (so that Y sends X what it publishes on "up")
        for _ in range(3):
            pump.flush()
            rpump.flush()
        self.assertIn((b"up", None), uplink.subs)
        y.client().send(b"PUB up 1\r\nx\r\n")
        x.client().send(b"PUB up 1\r\ny\r\n")
        for _ in range(3):
            rpump.flush()
            pump.flush()
        self.assertEqual(sorted(xc.received().split(b"MSG ")[1:]), [b"up 1 1\r\nx\r\n", b"up 1 1\r\ny\r\n"])
        self.assertEqual(tc.received(), b"MSG up 1 1\r\ny\r\n")

    def test_hub_messages_stay_off_the_spokes_routes(self) -> None:
        x, y, top = Node("X", cluster="edge"), Node("Y", cluster="edge"), Node("T")
        rpump, _, _ = route_link(y, x)
        pump, uplink, downleaf = leaf(x, top)
        yc, xc = y.client(), x.client()
        yc.send(b"SUB down 1\r\n")
        xc.send(b"SUB down 1\r\n")
        for _ in range(3):
            pump.flush()
            rpump.flush()
        top.client().send(b"PUB down 1\r\nz\r\n")
        for _ in range(3):
            pump.flush()
            rpump.flush()
        self.assertEqual(xc.received(), b"MSG down 1 1\r\nz\r\n")
        self.assertEqual(yc.received(), b"")


class LoopTests(SynchronousTestCase):
    def test_loop_detected_and_redial_delayed(self) -> None:
        """
        A hub that is also a leaf of its own spoke: the spoke's $LDS comes
        back to it, and the link is closed with nats-server's error; the
        dialling side waits 30 s before it tries again.
        """
        a, b = Node("A"), Node("B")
        p1, a_up, b_down = leaf(a, b)  # A is B's spoke
        p2, b_up, a_down = leaf(b, a)  # and B is A's spoke
        for _ in range(4):
            p1.flush()
            p2.flush()
        # A sees its own subject come back from its spoke B: that link
        # closes, which breaks the loop; A stays B's spoke.
        self.assertTrue(b_up.closed and a_down.closed)
        self.assertFalse(a_up.closed or b_down.closed)
        self.assertEqual(a.leafs.loops, 1)
        # What came after the loop in the same read (B's own $LDS) was not
        # kept for the closed link (it would have stayed for ever, and
        # taken B's subject back to B as a second loop).
        for node in (a, b):
            self.assertEqual([s.subject for s in node.broker.sublist.all() if s.owner.closed], [])
        # The side that saw the loop sent nats-server's error; the dialler waits 30 s.
        waits = [c.getTime() - clock.seconds() for node in (a, b) for clock in (node.clock,) for c in clock.getDelayedCalls()]
        self.assertTrue(any(w >= 30 for w in waits), waits)

    def test_loop_error_text(self) -> None:
        self.assertEqual(LOOP_ERROR, 'Loop detected for leafnode account="$G". Delaying attempt to reconnect for 30s')
        hub = Node("H")
        proto = hub.leafs.accepted()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        proto.makeConnection(transport)
        proto.dataReceived(b'CONNECT {"server_id":"NS"}\r\n')
        transport.clear()
        proto.dataReceived(b"LS+ " + hub.leafs.lds + b"\r\n")
        self.assertTrue(proto.closed)
        self.assertEqual(transport.value(), b"-ERR '" + LOOP_ERROR.encode() + b"'\r\n")


class LeafParserTests(SynchronousTestCase):
    STREAM = (
        b'INFO {"server_id":"X"}\r\nLS+ foo\r\nLS+ bar q 2\r\nLS- bar q\r\nLS- foo\r\n'
        b"LMSG foo 5\r\nhello\r\nLMSG foo 5\r\nworld\r\nLMSG bar | q 2\r\nhi\r\n"
        b"LMSG foo + rep q1 q2 3\r\nabc\r\nLMSG foo rep 1\r\nx\r\n"
        b"HMSG foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nHMSG foo + r q 12 12\r\nNATS/1.0\r\n\r\n\r\nPING\r\nPONG\r\n"
    )

    def parse(self, chunks):
        from eventsvc.nats.parser import LeafParser

        ops = []

        class Recorder:
            plain = True
            may_publish = None
            in_msgs = in_bytes = 0

            def publish_batch(self, src, subject, tails, size):
                ops.extend(("op_lmsg", subject, None, [], t) for t in tails)

            def publish(self, src, subject, reply, size, tail):
                ops.append(("op_lmsg", subject, reply, [], tail))
                return 1

            def op_lmsg(self, subject, reply, queues, size, tail):
                ops.append(("op_lmsg", subject, reply, list(queues), tail))

            def __getattr__(self, name):
                return lambda *args: ops.append((name,) + args)

        parser = LeafParser(Recorder())
        for chunk in chunks:
            parser.feed(chunk)
        return ops

    def test_every_verb(self) -> None:
        ops = self.parse([self.STREAM])
        self.assertEqual(ops, [
            ("op_info", b'{"server_id":"X"}'),
            ("op_ls_plus", b"foo", None, 1),
            ("op_ls_plus", b"bar", b"q", 2),
            ("op_ls_minus", b"bar", b"q"),
            ("op_ls_minus", b"foo", None),
            ("op_lmsg", b"foo", None, [], b"5\r\nhello\r\n"),
            ("op_lmsg", b"foo", None, [], b"5\r\nworld\r\n"),
            ("op_lmsg", b"bar", None, [b"q"], b"2\r\nhi\r\n"),
            ("op_lmsg", b"foo", b"rep", [b"q1", b"q2"], b"3\r\nabc\r\n"),
            ("op_lmsg", b"foo", b"rep", [], b"1\r\nx\r\n"),
            ("op_lhmsg", b"foo", None, [], 12, 14, b"NATS/1.0\r\n\r\nhi\r\n"),
            ("op_lhmsg", b"foo", b"r", [b"q"], 12, 12, b"NATS/1.0\r\n\r\n\r\n"),
            ("op_ping",),
            ("op_pong",),
        ])

    def test_split_anywhere(self) -> None:
        whole = self.parse([self.STREAM])
        self.assertEqual(self.parse([self.STREAM[i : i + 1] for i in range(len(self.STREAM))]), whole)

    def test_malformed(self) -> None:
        from eventsvc.nats.parser import ProtocolViolation

        for bad, error in (
            (b"LS+ a b\r\n", None),
            (b"LS+ a q 1 2\r\n", None),
            (b"LS- a b c\r\n", None),
            (b"LMSG foo\r\n", None),
            (b"LMSG foo x y 1\r\nx\r\n", None),
            (b"HMSG foo 3 2\r\nabc\r\n", None),
            (b"HMSG foo 2\r\nab\r\n", None),
            (b"LMSG foo 1\r\nxy\r\n", "Unknown Protocol Operation"),
            (b"RMSG $G foo 1\r\nx\r\n", "Unknown Protocol Operation"),
            (b"RS+ $G foo\r\n", "Unknown Protocol Operation"),
        ):
            with self.assertRaises(ProtocolViolation, msg=bad) as caught:
                self.parse([bad])
            self.assertEqual(caught.exception.error, error, bad)


_LEAF_OPS = st.sampled_from([
    b"LS+ foo\r\n",
    b"LS+ foo.* q 3\r\n",
    b"LS- foo\r\n",
    b"LS- foo.* q\r\n",
    b"LMSG foo 5\r\nhello\r\n",
    b"LMSG foo.bar reply 2\r\nhi\r\n",
    b"LMSG foo + reply q1 q2 1\r\nx\r\n",
    b"LMSG foo | q1 0\r\n\r\n",
    b"HMSG foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
    b"HMSG foo reply 12 12\r\nNATS/1.0\r\n\r\n\r\n",
    b"PING\r\n",
    b"PONG\r\n",
    b"+OK\r\n",
    b'INFO {"server_id":"P"}\r\n',
])

class LeafRunTests(SynchronousTestCase):
    """On CPython a read of plain LMSGs is split in one go (Framer._runs): every outcome must be the loop's own."""

    OPS = [
        b"LMSG foo 5\r\nhello\r\n", b"LMSG foo 5\r\nhello\r\n", b"LMSG foo.bar 2\r\nhi\r\n", b"LMSG foo r 3\r\nabc\r\n",
        b"LMSG foo | 1\r\nx\r\n", b"LMSG foo | q 1\r\nx\r\n", b"LMSG foo + 1\r\nx\r\n", b"LMSG foo + r q 1\r\nx\r\n",
        b"LMSG foo 4\r\na\r\nb\r\n", b"LMSG foo\t1\r\nx\r\n", b"LMSG foo 300\r\n" + b"x" * 300 + b"\r\n",
        b"HMSG foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", b"LS+ foo\r\n", b"PING\r\n", b"\r\n",
    ]

    def parse(self, data: bytes, cuts: List[int], split_runs: bool) -> list:
        from eventsvc.nats.parser import LeafParser, ProtocolViolation

        ops: list = []

        class Recorder:
            plain = True
            may_publish = None
            in_msgs = in_bytes = 0
            # (A leaf link has none: runs are handed over message by message.)
            publish_run = None

            def publish(self, src, subject, reply, size, tail):
                ops.append(("pub", subject, reply, tail))
                return 1

            def publish_batch(self, src, subject, tails, size):
                ops.extend(("pub", subject, None, t) for t in tails)

            def __getattr__(self, name):
                return lambda *args: ops.append((name,) + args)

        recorder = Recorder()
        parser = LeafParser(recorder)
        parser.split_runs = split_runs
        try:
            for piece in pieces(data, cuts):
                parser.feed(piece)
        except ProtocolViolation as v:
            ops.append(("violation", v.error))
        ops.append(("counted", recorder.in_msgs, recorder.in_bytes))
        return ops

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from(OPS), min_size=1, max_size=20), st.lists(st.integers(0, 600), max_size=5))
    def test_same_as_the_loop(self, ops, cuts) -> None:
        data = b"".join(ops)
        self.assertEqual(self.parse(data, cuts, True), self.parse(data, cuts, False))

    def test_a_pipe_is_not_a_reply(self) -> None:
        self.assertEqual(self.parse(b"LMSG a 1\r\nx\r\nLMSG b | 1\r\ny\r\n", [], True)[:2], [
            ("pub", b"a", None, b"1\r\nx\r\n"), ("pub", b"b", None, b"1\r\ny\r\n"),
        ])


_LEAF_LINE = re.compile(rb"(INFO \{.*\} |PING|PONG|-ERR '[^'\r\n]*'|LS[+-] \S+( \S+)*)$")


def mutated_leaf_streams() -> Any:
    return mutated_streams_of(_LEAF_OPS)


_TOKEN = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=6).map(lambda t: t.encode())
_LITERAL = st.lists(_TOKEN, min_size=1, max_size=20).map(b".".join)


@st.composite
def valid_leaf_streams(draw) -> "tuple[bytes, int]":
    """Well-formed leaf operations, and how many messages a local subscriber to ">" gets of them (all)."""
    out = []
    count = 0
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["lmsg", "lmsg", "lmsg-q", "hmsg", "ls", "ls-q", "ping"]))
        payload = draw(st.binary(max_size=40))
        if kind == "lmsg":
            reply = draw(st.one_of(st.none(), _LITERAL))
            out.append(b"LMSG %s %s%d\r\n%s\r\n" % (draw(_LITERAL), reply + b" " if reply else b"", len(payload), payload))
            count += 1
        elif kind == "lmsg-q":
            out.append(b"LMSG %s | %s %d\r\n%s\r\n" % (draw(_LITERAL), draw(_TOKEN), len(payload), payload))
            count += 1
        elif kind == "hmsg":
            block = b"NATS/1.0\r\nK: v\r\n\r\n"
            out.append(b"HMSG %s %d %d\r\n%s%s\r\n" % (draw(_LITERAL), len(block), len(block) + len(payload), block, payload))
            count += 1
        elif kind == "ls":
            out.append(b"LS+ %s\r\n" % draw(_LITERAL))
        elif kind == "ls-q":
            out.append(b"LS+ %s %s %d\r\n" % (draw(_LITERAL), draw(_TOKEN), draw(st.integers(1, 9))))
        else:
            out.append(b"PING\r\n")
    return b"".join(out), count


class LeafFuzzTests(SynchronousTestCase):
    """
    A spoke's bytes, random, mutated or well-formed and cut anywhere, on a
    downleaf that completed its handshake: nothing escapes the parser,
    everything written (to the spoke and to a local subscriber) is
    well-formed, and closing the link leaves none of its interest behind.
    """

    def downleaf(self):
        node = Node("A")
        watcher = node.client()
        watcher.send(b"SUB > 9\r\n")
        proto = node.leafs.accepted()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50001))
        proto.makeConnection(transport)
        proto.dataReceived(b'CONNECT {"server_id":"P","name":"p","headers":true}\r\n')
        self.assertTrue(proto.up)
        transport.clear()
        return node, watcher, proto, transport

    def feed(self, data: bytes, cuts: List[int]):
        node, watcher, proto, transport = self.downleaf()
        seen, closed = feed_peer(self, proto, transport, watcher, data, cuts, _LEAF_LINE)
        self.assertEqual(node.leafs.leafs, {})
        self.assertEqual(node.broker.sublist.count, 1)  # the watcher's own
        return seen, closed

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
    def test_random_bytes(self, data: bytes, cuts: List[int]) -> None:
        self.feed(data, cuts)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated_leaf_streams(), st.lists(st.integers(0, 300), max_size=5))
    def test_mutated_protocol(self, data: bytes, cuts: List[int]) -> None:
        whole, _ = self.feed(data, [])
        self.assertEqual(self.feed(data, cuts)[0], whole)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(valid_leaf_streams(), st.lists(st.integers(0, 4000), max_size=6))
    def test_valid_looking(self, stream, cuts: List[int]) -> None:
        data, count = stream
        seen, closed = self.feed(data, cuts)
        self.assertFalse(closed)
        self.assertEqual(count_frames(self, seen, b"9"), count)


class DenyTests(SynchronousTestCase):
    """A remote's deny_imports and deny_exports (nats-server's): what a spoke will not take from its hub, or send it."""

    def test_deny_imports_and_exports(self) -> None:
        from eventsvc.nats.links.leaf_connection import RemoteLeaf
        from eventsvc.security.permissions import Permissions

        def deny(*subjects):
            return Permissions(publish_deny=subjects, subscribe_deny=subjects)

        spoke, hub = Node("S"), Node("H", denied=lambda subjects: Permissions(publish_deny=subjects))
        remote = RemoteLeaf(
            ("nats-leaf://127.0.0.1:7422",), deny_imports=("private.>",), imports=deny("private.>"), exports=deny("secret.>"),
        )
        sc, hc = spoke.client(), hub.client()
        sc.send(b"SUB private.x 1\r\nSUB > 2\r\n")
        hc.send(b"SUB secret.x 1\r\nSUB public.x 2\r\n")
        pump, uplink, downleaf = leaf(spoke, hub, remote=remote)
        self.assertEqual(downleaf.remote_info["deny_pub"], ["private.>"])
        # The hub is not told of interest in what the spoke does not import...
        self.assertNotIn((b"private.x", None), downleaf.subs)
        self.assertIn((b">", None), downleaf.subs)
        # ...and what it does not import is not sent down, even for ">".
        hub.client().send(b"PUB private.x 1\r\nh\r\nPUB public.y 1\r\nk\r\n")
        pump.flush()
        self.assertEqual(sc.received(), b"MSG public.y 2 1\r\nk\r\n")
        # A hub that sends it anyway (nats-server's may not know deny_pub): dropped.
        uplink.dataReceived(b"LMSG private.z 1\r\nz\r\nLMSG private.z | q 1\r\nz\r\n")
        spoke.broker.flush()
        self.assertEqual(sc.received(), b"")
        # What the spoke does not export is not sent up, though the hub wants it.
        self.assertIn((b"secret.x", None), uplink.subs)
        spoke.client().send(b"PUB secret.x 1\r\ns\r\nPUB public.x 1\r\np\r\n")
        pump.flush()
        self.assertEqual(hc.received(), b"MSG public.x 2 1\r\np\r\n")


class OriginTests(SynchronousTestCase):
    """
    An edge cluster whose servers are leafs of different servers of a hub
    cluster (E1 -> H1, E2 -> H2; E1 and E2 routed, H1 and H2 routed): the
    hub servers tell each other which leaf cluster an interest or a
    message came from (LS+ <origin>, LMSG <origin>), and keep it from that
    cluster's other link, so nothing crosses back into the edge twice.
    """

    def setUp(self) -> None:
        self.h1, self.h2 = Node("H1", cluster="core"), Node("H2", cluster="core")
        self.e1, self.e2 = Node("E1", cluster="edge"), Node("E2", cluster="edge")
        self.pumps = [route_link(self.h2, self.h1)[0], route_link(self.e2, self.e1)[0]]
        pump, self.up1, self.down1 = leaf(self.e1, self.h1)
        self.pumps.append(pump)
        pump, self.up2, self.down2 = leaf(self.e2, self.h2)
        self.pumps.append(pump)
        self.settle()

    def settle(self) -> None:
        for _ in range(4):
            for pump in self.pumps:
                pump.flush()

    def route_subs(self, node: Node) -> dict:
        (route,) = node.manager.routes.values()
        return route.subs

    def test_interest_carries_its_origin(self) -> None:
        self.e1.client().send(b"SUB foo 1\r\n")
        self.settle()
        self.assertEqual(self.route_subs(self.h2)[(b"foo", None)].origin, b"edge")
        self.assertNotIn((b"foo", None), self.up2.subs)  # E2 has E1's interest by its route

    def test_a_leaf_message_is_kept_from_its_clusters_other_link(self) -> None:
        hub_client, edge_client = self.h2.client(), self.e2.client()
        hub_client.send(b"SUB qux 1\r\n")
        self.settle()
        edge_client.send(b"SUB qux 1\r\n")
        self.settle()
        self.assertIn((b"qux", None), self.up1.subs)
        (h1_route,) = self.h1.manager.routes.values()
        self.e1.client().send(b"PUB qux 2\r\nhi\r\nPUB qux 1\r\nx\r\nPUB qux 1\r\ny\r\n")
        self.settle()
        self.assertEqual(hub_client.received(), b"MSG qux 1 2\r\nhi\r\nMSG qux 1 1\r\nx\r\nMSG qux 1 1\r\ny\r\n")
        # Once, by the edge's own route, not again through the hub.
        self.assertEqual(edge_client.received(), b"MSG qux 1 2\r\nhi\r\nMSG qux 1 1\r\nx\r\nMSG qux 1 1\r\ny\r\n")

    def test_everyone_hears_everyone_once(self) -> None:
        clients = {name: node.client() for name, node in (("h1", self.h1), ("h2", self.h2), ("e1", self.e1), ("e2", self.e2))}
        for c in clients.values():
            c.send(b"SUB all 1\r\n")
            self.settle()
        for name, c in clients.items():
            c.send(b"PUB all %d\r\n%s\r\n" % (len(name), name.encode()))
            self.settle()
        for name, c in clients.items():
            got = sorted(c.received().split(b"MSG all 1 2\r\n")[1:])
            self.assertEqual(got, [b"e1\r\n", b"e2\r\n", b"h1\r\n", b"h2\r\n"], name)
