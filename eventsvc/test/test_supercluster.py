"""
Gateways (the supercluster protocol) in memory: brokers joined by iosim,
clients on StringTransports, a fake clock.  The handshake both ways, the
peer's interest in every mode, delivery and queue rules, routed replies,
and the parser fuzzed on both kinds of gateway connection.
"""

from __future__ import annotations

import base64
import json
import re
from typing import List

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats.links.gateway import GatewayManager, GatewaySettings
from eventsvc.nats.links.interest_modes import (
    CMD_ALL_SUBS_COMPLETE, CMD_ALL_SUBS_START, INTEREST_ONLY, TRANSITIONING, RemoteInterest,
)
from eventsvc.nats.links.replies import gateway_hash
from eventsvc.nats.listener import ClientFactory
from eventsvc.nats.server import Broker
from eventsvc.nats.settings import ClientSettings
from eventsvc.test.helpers import FakeClient, dial_in_memory, with_limits
from eventsvc.test.test_parser import _check_output
from eventsvc.test.test_route import feed_cut, mutated_route_streams


class Node:
    """One server, alone in its cluster C{name}, with gateways to C{remotes}."""

    def __init__(self, name: str, remotes=(), **settings) -> None:
        self.clock = MemoryReactorClock()
        self.broker = Broker(server_id="N" + name)
        self.factory = ClientFactory(self.broker, ClientSettings(), self.clock)
        gateways = tuple((r, ("nats://127.0.0.1:7222",)) for r in remotes)
        self.manager = GatewayManager(self.broker, self.clock, with_limits(GatewaySettings, name, "127.0.0.1", 0, gateways=gateways, **settings))
        self.manager.startService()

    def client(self, connect_line: bytes = b'CONNECT {"verbose":false}\r\n') -> FakeClient:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        c = FakeClient(proto, transport)
        c.received()
        c.send(connect_line)
        return c

    def accepted(self):
        """A gateway connection accepted here, on a StringTransport."""
        proto = self.manager.accepted()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50001))
        proto.makeConnection(transport)
        return proto, transport


def link(dialer: Node, acceptor: Node):
    """dialer's outbound gateway to acceptor (acceptor's inbound), in memory; returns the pump."""
    remote = dialer.manager.remotes[acceptor.manager.settings.name]
    outer, client = dial_in_memory(dialer.clock, remote)
    server = acceptor.manager.accepted()
    pump = connect(
        server, FakeTransport(server, True, peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)),
        outer, FakeTransport(outer, False, peerAddress=IPv4Address("TCP", "127.0.0.1", 7222)),
        greet=True,
    )
    pump.flush()
    return pump, client, server


def pair():
    """Clusters A and B, each with its outbound gateway to the other."""
    a, b = Node("A", ["B"]), Node("B", ["A"])
    pumps = [link(a, b)[0], link(b, a)[0]]

    def flush():
        for _ in range(3):
            for pump in pumps:
                pump.flush()

    return a, b, flush


def info(line: bytes) -> dict:
    assert line.startswith(b"INFO ") and line.endswith(b"\r\n"), line
    return json.loads(line[5:-2])


class HashTests(SynchronousTestCase):
    def test_hashes_are_nats_servers(self) -> None:
        """Seen on the wire from nats-server 2.9.10: its replies routed for clusters A and B."""
        self.assertEqual(gateway_hash("A"), b"NUmM6c")
        self.assertEqual(gateway_hash("B"), b"b2oh2L")


class RemoteInterestTests(SynchronousTestCase):
    """The outbound side's view of the peer's interest, as nats-server's outsie."""

    def test_optimistic_until_told_otherwise(self) -> None:
        i = RemoteInterest(object())
        self.assertEqual(i.wants(b"anything"), (True, []))
        i.rs_minus(b"foo.bar", None)
        self.assertEqual(i.wants(b"foo.bar"), (False, []))
        self.assertEqual(i.wants(b"foo.baz"), (True, []))
        # A wildcard RS+ clears the negative interest it covers.
        i.rs_plus(b"foo.*", None)
        self.assertEqual(i.wants(b"foo.bar"), (True, []))

    def test_account_interest(self) -> None:
        i = RemoteInterest(object())
        i.account(False)
        self.assertEqual(i.wants(b"x"), (False, []))
        i.rs_plus(b"x", None)  # plain interest in a refused account is not kept
        self.assertEqual(i.wants(b"x"), (False, []))
        i.account(True)
        self.assertEqual(i.wants(b"x"), (True, []))

    def test_interest_only_peer_sends_nothing_before_its_commands(self) -> None:
        i = RemoteInterest(object(), interest_only=True)
        self.assertEqual(i.wants(b"x"), (False, []))
        i.start()
        self.assertEqual(i.mode, TRANSITIONING)
        i.rs_plus(b"x.>", None)
        i.rs_plus(b"work", b"q")
        i.complete()
        self.assertEqual(i.mode, INTEREST_ONLY)
        self.assertEqual(i.wants(b"x.y"), (True, []))
        self.assertEqual(i.wants(b"y"), (False, []))
        self.assertEqual(i.wants(b"work"), (False, [b"q"]))
        i.rs_minus(b"x.>", None)
        i.rs_minus(b"work", b"q")
        self.assertEqual(i.wants(b"x.y"), (False, []))
        self.assertEqual(i.wants(b"work"), (False, []))

    def test_queue_members_survive_account_refusal(self) -> None:
        i = RemoteInterest(object())
        i.rs_plus(b"work", b"q")
        i.account(False)
        self.assertEqual(i.wants(b"work")[1], [b"q"])


CONNECT = b'CONNECT {"echo":false,"verbose":false,"pedantic":false,"tls_required":false,"headers":true,"name":"NP","cluster":"","gateway":"P"}\r\n'
PEER_INFO = b'INFO {"server_id":"NP","server_name":"P1","version":"2.9.10","headers":true,"gateway":"P","gateway_urls":["127.0.0.1:7999"],"gateway_url":"127.0.0.1:7999","gateway_nrp":true,"gateway_iom":true}\r\n'


#: A gateway's CONNECTs to a gateway port that wants user "gw" and password
#: "secret", and what nats-server 2.9 answers each (then a PING) with:
#: b"PONG\r\n" when it takes it, its error, or nothing when it closes
#: without a word (test_interop_supercluster sends them to nats-server too).
GATEWAY_CONNECTS = (
    (b'{"USER":"gw","Pass":"secret","GATEWAY":"P","gateway":null}', b"PONG\r\n"),
    (b'{"user":"gw","pass":"secret","Pass":null,"gateway":"P","Name":"NP"}', b"PONG\r\n"),
    (b'{"user":"gw","pass":"secret","PASS":"wrong","gateway":"P"}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"gw","pass":"wrong","lang":"go"}', b"-ERR 'Authorization Violation'\r\n"),
    (b'{"user":"gw","pass":"secret","lang":"go"}', b"-ERR 'attempted to connect to gateway port'\r\n"),
    (b'{"user":"gw","pass":"secret","Gateway":""}', b"-ERR 'attempted to connect to gateway port'\r\n"),
    (b'{"user":"gw","pass":"secret","gateway":"P","headers":"yes"}', b""),
    (b'{"user":"gw","pass":"secret","gateway":["P"],"gateway":"P"}', b""),
    (b'{"user":"gw","pass":"secret","gateway":"P","ACCOUNT":"x"}', b"-ERR 'Authorization Violation'\r\n"),
)


class AcceptedHandshakeTests(SynchronousTestCase):
    def test_greeting_and_switch_to_interest_only(self) -> None:
        """As nats-server 2.9: queue groups, then every account switched at once."""
        node = Node("A")
        c = node.client()
        c.send(b"SUB foo 1\r\nSUB bar q 2\r\nSUB bar q 3\r\n")
        proto, transport = node.accepted()
        greeting = info(transport.value())
        self.assertEqual(greeting["gateway"], "A")
        self.assertTrue(greeting["gateway_iom"] and greeting["gateway_nrp"])
        self.assertEqual(greeting["gateway_urls"], [greeting["gateway_url"]])
        transport.clear()
        proto.dataReceived(CONNECT + PEER_INFO)
        lines = transport.value().split(b"\r\n")
        self.assertEqual(lines[0], b"RS+ $G bar q 1")
        start, complete = info(lines[1] + b"\r\n"), info(lines[3] + b"\r\n")
        self.assertEqual((start["gateway_cmd"], complete["gateway_cmd"]), (CMD_ALL_SUBS_START, CMD_ALL_SUBS_COMPLETE))
        self.assertEqual(base64.b64decode(start["gateway_cmd_payload"]), b"$G")
        self.assertEqual(start["server_id"], "")  # nats-server's zero-valued Info
        self.assertEqual(lines[2], b"RS+ $G foo")
        self.assertEqual(lines[4:], [b""])
        self.assertEqual(node.manager.inbound, [proto])
        # It dials the peer back (an implicit gateway, from its INFO).
        self.assertEqual(node.manager.remotes["P"].urls, ["nats://127.0.0.1:7999"])
        self.assertTrue(node.manager.remotes["P"].implicit)
        self.assertEqual(node.clock.tcpClients[-1][:2], ("127.0.0.1", 7999))
        # Interest changes follow, as RS+/RS-.
        transport.clear()
        c.send(b"SUB baz 4\r\nUNSUB 1\r\nUNSUB 2\r\nUNSUB 3\r\n")
        self.assertEqual(transport.value(), b"RS+ $G baz\r\nRS- $G foo\r\nRS- $G bar q\r\n")

    def test_gossips_the_other_gateways(self) -> None:
        node = Node("A", ["C"])
        proto, transport = node.accepted()
        transport.clear()
        proto.dataReceived(CONNECT + PEER_INFO)
        gossip = [info(line + b"\r\n") for line in transport.value().split(b"\r\n") if b'"gateway_cmd":1' in line]
        self.assertEqual(gossip, [{"server_id": "NA", "gateway": "C", "gateway_urls": ["127.0.0.1:7222"], "gateway_cmd": 1}])

    def test_a_client_on_the_gateway_port(self) -> None:
        proto, transport = Node("A").accepted()
        transport.clear()
        proto.dataReceived(b'CONNECT {"verbose":false,"lang":"go"}\r\nPING\r\n')
        self.assertEqual(transport.value(), b"-ERR 'attempted to connect to gateway port'\r\n")
        self.assertTrue(transport.disconnecting)

    def test_info_before_connect(self) -> None:
        proto, transport = Node("A").accepted()
        transport.clear()
        proto.dataReceived(PEER_INFO)
        self.assertEqual(transport.value(), b"-ERR 'Authorization Violation'\r\n")

    def test_credentials(self) -> None:
        node = Node("A", user="gw", password="secret")
        proto, transport = node.accepted()
        self.assertTrue(info(transport.value())["auth_required"])
        transport.clear()
        proto.dataReceived(CONNECT)
        self.assertEqual(transport.value(), b"-ERR 'Authorization Violation'\r\n")
        proto, transport = node.accepted()
        proto.dataReceived(CONNECT.replace(b'"name"', b'"user":"gw","pass":"secret","name"') + PEER_INFO)
        self.assertEqual(node.manager.inbound, [proto])

    def test_connect_read_as_nats_server_reads_it(self) -> None:
        """
        nats-server reads a gateway's CONNECT with Go's encoding/json, into
        ClientOpts (the credentials, checked first) and then into its
        struct: field names in any case, a null leaving a field as it was,
        a wrong type closing the link without a word, an account never.
        (The same CONNECTs to nats-server: test_interop_supercluster's
        HandWrittenConnectTests.)
        """
        for connect, answer in GATEWAY_CONNECTS:
            node = Node("A", user="gw", password="secret")
            proto, transport = node.accepted()
            transport.clear()
            proto.dataReceived(b"CONNECT " + connect + b"\r\nPING\r\n")
            self.assertEqual(transport.value(), answer, connect)
            self.assertEqual(proto.closed, answer != b"PONG\r\n", connect)
            if not proto.closed:
                proto.dataReceived(PEER_INFO)
                self.assertEqual(node.manager.inbound, [proto], connect)

    def test_interest_verbs_are_refused_on_an_inbound_connection(self) -> None:
        proto, transport = Node("A").accepted()
        proto.dataReceived(CONNECT + PEER_INFO)
        proto.dataReceived(b"RS+ $G foo\r\n")
        self.assertTrue(proto.closed)

    def test_silent_peer_times_out(self) -> None:
        node = Node("A")
        proto, transport = node.accepted()
        node.clock.advance(5)
        self.assertIn(b"-ERR 'Authentication Timeout'", transport.value())
        self.assertTrue(proto.closed)

    def test_other_accounts_are_refused_once(self) -> None:
        node = Node("A")
        proto, transport = node.accepted()
        proto.dataReceived(CONNECT + PEER_INFO)
        transport.clear()
        proto.dataReceived(b"RMSG $SYS x 1\r\na\r\nRMSG $SYS y 1\r\nb\r\n")
        self.assertEqual(transport.value(), b"A- $SYS\r\n")


class DialledHandshakeTests(SynchronousTestCase):
    def dialled(self, node: Node):
        remote = node.manager.remotes["B"]
        proto = node.manager.dialled(remote)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 7222))
        proto.makeConnection(transport)
        return proto, transport

    def test_wrong_port(self) -> None:
        proto, transport = self.dialled(Node("A", ["B"]))
        self.assertEqual(transport.value(), b"")  # the accepting side speaks first
        proto.dataReceived(b'INFO {"server_id":"X","cluster":"c"}\r\n')
        self.assertEqual(transport.value(), b"-ERR 'Attempt to connect to gateway \"B\" using wrong port'\r\n")

    def test_wrong_gateway(self) -> None:
        proto, transport = self.dialled(Node("A", ["B"]))
        proto.dataReceived(b'INFO {"server_id":"X","gateway":"C"}\r\n')
        self.assertEqual(
            transport.value(), b"-ERR 'Connection from \"A\" rejected, wanted to connect to \"B\", this is \"C\"'\r\n",
        )

    def test_connect_and_info_then_commands(self) -> None:
        node = Node("A", ["B"])
        proto, transport = self.dialled(node)
        proto.dataReceived(b'INFO {"server_id":"NB","gateway":"B","headers":true,"gateway_iom":true,"gateway_urls":["127.0.0.1:7333"]}\r\n')
        connect_line, info_line = transport.value().split(b"\r\n")[:2]
        self.assertEqual(json.loads(connect_line[8:]), {
            "echo": False, "verbose": False, "pedantic": False, "tls_required": False, "headers": True,
            "name": "NA", "cluster": "", "gateway": "A",
        })
        self.assertEqual(info(info_line + b"\r\n")["gateway"], "A")
        self.assertEqual(node.manager.outbound, {"B": proto})
        self.assertEqual(node.manager.remotes["B"].urls, ["nats://127.0.0.1:7222", "nats://127.0.0.1:7333"])
        self.assertEqual(proto.interest.wants(b"x"), (False, []))  # interest-only peer
        start = b'INFO {"gateway":"B","gateway_cmd":2,"gateway_cmd_payload":"JEc="}\r\n'
        proto.dataReceived(start + b"RS+ $G x\r\n" + start.replace(b":2,", b":3,"))
        self.assertEqual(proto.interest.mode, INTEREST_ONLY)
        self.assertEqual(proto.interest.wants(b"x"), (True, []))
        # Gossip of another gateway: dialled, as an implicit one.
        proto.dataReceived(b'INFO {"server_id":"NB","gateway":"C","gateway_urls":["127.0.0.1:7444"],"gateway_cmd":1}\r\n')
        self.assertTrue(node.manager.remotes["C"].implicit)
        self.assertEqual(node.clock.tcpClients[-1][:2], ("127.0.0.1", 7444))

    def test_optimistic_peer_and_its_negative_interest(self) -> None:
        """An older peer (no gateway_iom): everything goes until it says RS- or A-; plans follow."""
        node = Node("A", ["B"])
        proto, transport = self.dialled(node)
        proto.dataReceived(b'INFO {"server_id":"NB","gateway":"B","headers":true}\r\n')
        transport.clear()
        publisher = node.client()
        publisher.send(b"PUB foo 1\r\nx\r\nPUB foo 1\r\ny\r\nPUB bar 1\r\nz\r\n")
        self.assertEqual(transport.value(), b"RMSG $G foo 1\r\nx\r\nRMSG $G foo 1\r\ny\r\nRMSG $G bar 1\r\nz\r\n")
        proto.dataReceived(b"RS- $G foo\r\n")
        transport.clear()
        publisher.send(b"PUB foo 1\r\nx\r\nPUB bar 1\r\nz\r\n")
        self.assertEqual(transport.value(), b"RMSG $G bar 1\r\nz\r\n")
        proto.dataReceived(b"RS+ $G foo\r\n")  # (an RS+ clears it)
        transport.clear()
        publisher.send(b"PUB foo 1\r\nx\r\n")
        self.assertEqual(transport.value(), b"RMSG $G foo 1\r\nx\r\n")
        proto.dataReceived(b"A- $G\r\n")
        transport.clear()
        publisher.send(b"PUB foo 1\r\nx\r\nPUB bar 1\r\nz\r\n")
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"A+ $G\r\n")
        publisher.send(b"PUB bar 1\r\nz\r\n")
        self.assertEqual(transport.value(), b"RMSG $G bar 1\r\nz\r\n")

    def test_command_without_account(self) -> None:
        proto, transport = self.dialled(Node("A", ["B"]))
        proto.dataReceived(b'INFO {"server_id":"NB","gateway":"B"}\r\n')
        proto.dataReceived(b'INFO {"gateway":"B","gateway_cmd":2}\r\n')
        self.assertIn(b"-ERR 'Account absent from receive-all-subscriptions-start command'", transport.value())

    def test_redial_with_backoff_and_health(self) -> None:
        node = Node("A", ["B"])
        self.assertEqual(node.manager.down(), ["B"])
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        factory = node.clock.tcpClients[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))
        delays = [c.getTime() - node.clock.seconds() for c in node.clock.getDelayedCalls()]
        self.assertTrue(any(0.25 <= d <= 0.5 for d in delays), delays)


class PairTests(SynchronousTestCase):
    """Two clusters, each a single server, with a link each way."""

    def test_messages_follow_interest(self) -> None:
        a, b, flush = pair()
        sub = b.client()
        sub.send(b"SUB foo.* 1\r\n")
        flush()
        pub = a.client()
        pub.send(b"PUB foo.x 2\r\nhi\r\nPUB bar 1\r\nx\r\n")
        flush()
        self.assertEqual(sub.received(), b"MSG foo.x 1 2\r\nhi\r\n")
        self.assertEqual(a.manager.outbound["B"].out_msgs, 1)  # bar did not cross
        sub.send(b"UNSUB 1\r\n")
        flush()
        pub.send(b"PUB foo.x 2\r\nhi\r\n")
        flush()
        self.assertEqual(a.manager.outbound["B"].out_msgs, 1)

    def test_batches_and_headers_cross(self) -> None:
        a, b, flush = pair()
        sub = b.client(b'CONNECT {"verbose":false,"headers":true}\r\n')
        sub.send(b"SUB foo 1\r\n")
        flush()
        a.client(b'CONNECT {"verbose":false,"headers":true}\r\n').send(b"PUB foo 1\r\nx\r\n" * 3 + b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
        flush()
        self.assertEqual(sub.received(), b"MSG foo 1 1\r\nx\r\n" * 3 + b"HMSG foo 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")

    def test_nothing_comes_back(self) -> None:
        """What came from a gateway goes to no gateway: A's subscriber gets its own publish once."""
        a, b, flush = pair()
        for node in (a, b):
            node.client().send(b"SUB foo 1\r\n")
        flush()
        mine = a.client()
        mine.send(b"SUB foo 1\r\n")
        flush()
        a.client().send(b"PUB foo 1\r\nx\r\n")
        flush()
        self.assertEqual(mine.received(), b"MSG foo 1 1\r\nx\r\n")
        self.assertEqual(b.manager.outbound["A"].out_msgs, 0)

    def test_queue_groups_once_in_the_supercluster(self) -> None:
        a, b, flush = pair()
        here, there = a.client(), b.client()
        here.send(b"SUB work q 1\r\n")
        there.send(b"SUB work q 1\r\nSUB only r 2\r\n")
        flush()
        publisher = a.client()
        publisher.send(b"PUB work 1\r\nx\r\n" * 10 + b"PUB only 1\r\ny\r\n" * 5)
        flush()
        # The local member takes every message of its group; the group with
        # members only across the gateway gets each once, named in the RMSG.
        self.assertEqual(here.received().count(b"MSG work"), 10)
        self.assertEqual(there.received(), b"MSG only 2 1\r\ny\r\n" * 5)
        self.assertEqual(a.manager.outbound["B"].out_msgs, 5)

    def test_requests_with_routed_replies(self) -> None:
        a, b, flush = pair()
        responder = b.client()
        responder.send(b"SUB svc 1\r\n")
        flush()
        requester = a.client()
        requester.send(b"SUB _INBOX.r.* 9\r\nPUB svc _INBOX.r.1 1\r\n?\r\n")
        flush()
        # The responder sees the plain reply...
        self.assertEqual(responder.received(), b"MSG svc 1 _INBOX.r.1 1\r\n?\r\n")
        # ... though it crossed routed, so the answer goes straight back,
        # with no interest needed (the inbox's RS+ may still be on its way).
        prefix = b"_GR_." + gateway_hash("A") + b"." + gateway_hash("NA") + b"."
        self.assertEqual(b.manager.replies[b"_INBOX.r.1"][0], prefix + b"_INBOX.r.1")
        b.manager.outbound["A"].interest.rs_minus(b"_INBOX.r.*", None)
        responder.send(b"PUB _INBOX.r.1 1\r\n!\r\n")
        flush()
        self.assertEqual(requester.received(), b"MSG _INBOX.r.1 9 1\r\n!\r\n")
        # Two seconds on, the inbox is no longer recent: replies cross plain.
        a.clock.advance(3)
        requester.send(b"PUB svc _INBOX.r.2 1\r\n?\r\n")
        flush()
        self.assertEqual(responder.received(), b"MSG svc 1 _INBOX.r.2 1\r\n?\r\n")
        self.assertNotIn(b"_INBOX.r.2", b.manager.replies)

    def test_recent_subscriptions_share_one_timer(self) -> None:
        """A burst of subscriptions is recent for two seconds each, with one timer among them, not one each."""
        a, b, flush = pair()
        c = a.client()

        def expiries() -> int:
            return sum(1 for call in a.clock.getDelayedCalls() if "recent" in repr(call))

        c.send(b"".join(b"SUB burst.%d %d\r\n" % (i, i) for i in range(1000)))
        for _ in range(20):
            a.clock.advance(0)  # (the parse budget may leave some for the next turns)
        self.assertEqual(a.manager.recent.count, 1000)
        self.assertEqual(expiries(), 1)
        a.clock.advance(1)
        c.send(b"SUB late 2000\r\n")
        a.clock.advance(1)
        self.assertEqual(a.manager.recent.count, 1)  # only the late one is still recent
        a.clock.advance(1)
        self.assertEqual(a.manager.recent.count, 0)
        self.assertEqual(expiries(), 0)

    def test_replies_routed_to_another_cluster_are_dropped(self) -> None:
        a, b, flush = pair()
        everything = b.client()
        everything.send(b"SUB > 1\r\n")
        flush()
        a.client().send(b"PUB _GR_.zzzzzz.yyyyyy.x 1\r\n!\r\n")
        flush()
        self.assertEqual(everything.received(), b"")


class PermissionTests(SynchronousTestCase):
    """[supercluster.permissions]: the split deployment's service lets in events and replies only."""

    def test_imports_and_exports(self) -> None:
        from eventsvc.security.permissions import Permissions

        lists = dict(imports=("habitat.event.>", "_INBOX.>"), exports=("_INBOX.>",))
        a = Node("A", ["B"], **{
            k: Permissions(publish_allow=v, subscribe_allow=v) for k, v in lists.items()
        })
        b = Node("B", ["A"])
        pumps = [link(a, b)[0], link(b, a)[0]]

        def flush():
            for _ in range(3):
                for pump in pumps:
                    pump.flush()

        inside = a.client()
        inside.send(b"SUB > 1\r\nSUB _INBOX.svc.* 2\r\nSUB habitat.event.* 3\r\n")
        outside = b.client()
        outside.send(b"SUB > 1\r\nSUB _INBOX.agent.* 2\r\n")
        flush()
        # B hears only of the interest A imports (not of ">"); A keeps only what it exports.
        self.assertEqual(set(b.manager.outbound["A"].interest.subs), {(b"_INBOX.svc.*", None), (b"habitat.event.*", None)})
        self.assertEqual(set(a.manager.outbound["B"].interest.subs), {(b"_INBOX.agent.*", None)})
        a.client().send(b"PUB secret 1\r\nx\r\nPUB _INBOX.agent.1 1\r\ny\r\n")
        b.client().send(b"PUB habitat.event.x 1\r\ne\r\nPUB internal 1\r\nz\r\n")
        flush()
        self.assertEqual(
            outside.received(),
            # (its own publishes at once, A's after the pump)
            b"MSG habitat.event.x 1 1\r\ne\r\nMSG internal 1 1\r\nz\r\nMSG _INBOX.agent.1 1 1\r\ny\r\nMSG _INBOX.agent.1 2 1\r\ny\r\n",
        )
        # (and "internal", which A does not import, never arrives)
        self.assertEqual(
            inside.received(),
            b"MSG secret 1 1\r\nx\r\nMSG _INBOX.agent.1 1 1\r\ny\r\nMSG habitat.event.x 1 1\r\ne\r\nMSG habitat.event.x 3 1\r\ne\r\n",
        )


_GATEWAY_LINE = re.compile(rb"(INFO \{.*\}|PING|PONG|-ERR '[^'\r\n]*'|A- \S+|RS[+-] \$G \S+( \S+)*)$")

_INBOUND_OPS = st.sampled_from([
    b"RMSG $G foo 5\r\nhello\r\n",
    b"RMSG $G foo.bar reply 2\r\nhi\r\n",
    b"RMSG $G foo + reply q1 q2 1\r\nx\r\n",
    b"RMSG $G foo | q1 0\r\n\r\n",
    b"RMSG $G _GR_.abcdef.ghijkl.foo 1\r\nr\r\n",
    b"RMSG $G foo _GR_.abcdef.ghijkl.inbox 1\r\nr\r\n",
    b"RMSG $SYS foo 1\r\ny\r\n",
    b"HMSG $G foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
    b"PING\r\n",
    b"PONG\r\n",
    b"+OK\r\n",
    b'INFO {"server_id":"P"}\r\n',
])


class GatewayFuzzTests(SynchronousTestCase):
    """
    A peer's bytes, random or mutated and cut anywhere, on an accepted
    gateway and on a dialled one: nothing escapes the parser, everything
    written is well-formed, and closing leaves no interest behind.
    """

    def accepted(self):
        node = Node("A")
        watcher = node.client()
        watcher.send(b"SUB > 9\r\n")
        proto, transport = node.accepted()
        proto.dataReceived(CONNECT + PEER_INFO)
        transport.clear()
        return node, watcher, proto, transport

    def dialled(self):
        node = Node("A", ["B"])
        watcher = node.client()
        watcher.send(b"SUB > 9\r\n")
        remote = node.manager.remotes["B"]
        proto = node.manager.dialled(remote)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 7222))
        proto.makeConnection(transport)
        proto.dataReceived(b'INFO {"server_id":"NB","gateway":"B","headers":true}\r\n')
        transport.clear()
        return node, watcher, proto, transport

    def feed(self, make, data: bytes, cuts: List[int]) -> bytes:
        node, watcher, proto, transport = make()
        feed_cut(proto, data, cuts)
        seen = watcher.received()
        _check_output(self, seen, watcher.closed)
        for line in transport.value().split(b"\r\n")[:-1]:
            self.assertTrue(_GATEWAY_LINE.match(line), line)
        # Whatever it sent, a publish from here is still well-formed on the wire.
        transport.clear()
        node.client().send(b"PUB foo 1\r\nz\r\n")
        for line in transport.value().split(b"\r\n")[:-1]:
            self.assertTrue(re.match(rb"(RMSG \$G foo( \S+)* 1|z)$", line), line)
        proto.connectionLost(None)
        self.assertEqual((node.manager.inbound, node.manager.outbound), ([], {}))
        self.assertEqual(node.broker.sublist.count, 1)  # the watcher's own
        return seen

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5), st.booleans())
    def test_random_bytes(self, data: bytes, cuts: List[int], inbound: bool) -> None:
        self.feed(self.accepted if inbound else self.dialled, data, cuts)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated_route_streams(), st.lists(st.integers(0, 300), max_size=5))
    def test_mutated_on_dialled(self, data: bytes, cuts: List[int]) -> None:
        self.feed(self.dialled, data, cuts)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_INBOUND_OPS, min_size=1, max_size=12), st.lists(st.integers(0, 400), max_size=5))
    def test_messages_on_accepted(self, ops: List[bytes], cuts: List[int]) -> None:
        data = b"".join(ops)
        whole = self.feed(self.accepted, data, [])
        # However the bytes were cut, the subscriber saw the same.
        self.assertEqual(self.feed(self.accepted, data, cuts), whole)


class ReloadTests(SynchronousTestCase):
    def test_changes_need_a_restart_and_say_so(self) -> None:
        from eventsvc import config
        from eventsvc.service import needs_restart

        old = config.parse('[supercluster]\nname = "a"\n[[supercluster.gateways]]\nname = "b"\nurls = ["x:1"]\n')
        new = config.parse('[supercluster]\nname = "a"\n[[supercluster.gateways]]\nname = "b"\nurls = ["x:2"]\n[cluster]\nport = 7000\n')
        self.assertEqual(needs_restart(old, new), ["[cluster] enabled", "[cluster] port", "[supercluster] gateways"])
