"""
JetStream domains over leaf links, in memory: the rule (what a link denies
by the two sides' domains, and the domain's mapping table, as nats-server
2.9.10 has them), what a hub and a spoke say to each other in INFO,
CONNECT and LS+, which messages cross, the same domain on both sides,
JetStream deliveries across a link (C{<ack>@<subject>}), the engine's
mapping, /leafz, and two eventsvc JetStreams using each other's streams.
The same with nats-server is test_interop_jsdomains.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.jetstream.engine import JetStream, JetStreamSettings, domain_mappings
from eventsvc.nats.links.jsdomain import leaf_rule, map_subject, mapping_table, split_ack_reply
from eventsvc.ops.monitor import Monitor
from eventsvc.test.test_leaf import Node, interest, leaf


class RuleTests(SynchronousTestCase):
    """L{leaf_rule} and the mapping table, against nats-server's addLeafNodeConnection and generateJSMappingTable."""

    def test_domains_differ(self) -> None:
        rule = leaf_rule(True, "hub", "edge", True)
        self.assertEqual((rule.deny_both, rule.deny_out, rule.same_domain), (("$JS.API.>", "$KV.>", "$OBJ.>"), ("$JS.hub.API.>",), False))
        # nats-server's two log lines, in one.
        self.assertEqual(rule.notice, 'JetStream Not Extended, adding deny [$JS.API.> $KV.> $OBJ.>] for account "$G"; '
                                      'adding deny "$JS.hub.API.>" for outgoing messages')

    def test_same_domain(self) -> None:
        rule = leaf_rule(True, "hub", "hub", True)
        self.assertTrue(rule.same_domain)
        self.assertEqual(rule.notice, 'Adding deny [$JS.API.> $KV.> $OBJ.>] for account "$G"; '
                                      'adding deny "$JS.hub.API.>" for outgoing messages')
        # (Our own domain's API never leaves by a link: our mapping is a
        # subscription, which would not take the request from the link.)
        self.assertTrue(rule.blocks_out(b"$JS.hub.API.INFO"))

    def test_same_domain_needs_jetstream_on_both_sides(self) -> None:
        self.assertFalse(leaf_rule(True, "hub", "hub", False).same_domain)
        self.assertFalse(leaf_rule(False, "", "", True).same_domain)
        self.assertTrue(leaf_rule(True, "", "", True).same_domain)

    def test_without_jetstream(self) -> None:
        """A server without JetStream still keeps $JS.API, $KV and $OBJ off its links (nats-server does), and maps nothing."""
        rule = leaf_rule(False, "", "hub", True)
        self.assertEqual(rule.deny_out, ())
        self.assertEqual(rule.notice, 'JetStream Not Extended, adding deny [$JS.API.> $KV.> $OBJ.>] for account "$G"')
        self.assertFalse(rule.blocks_out(b"$JS.hub.API.INFO"))

    def test_what_is_blocked(self) -> None:
        rule = leaf_rule(True, "edge", "hub", True)
        for subject in (b"$JS.API.INFO", b"$JS.API.STREAM.>", b"$JS.API.>", b"$KV.b.k", b"$OBJ.x"):
            self.assertTrue(rule.blocks(subject), subject)
        for subject in (b"$JS.hub.API.INFO", b"$JS.ACK.S.c.1.1.1.0.0", b"$JS.>", b">", b"$JS.API", b"$KVX.a", b"orders.1",
                        b"$JS.edge.API.INFO"):
            self.assertFalse(rule.blocks(subject), subject)
        self.assertTrue(rule.blocks_out(b"$JS.edge.API.STREAM.NAMES"))
        self.assertTrue(rule.blocks_out(b"$JS.API.INFO"))
        self.assertFalse(rule.blocks_out(b"$JS.hub.API.STREAM.NAMES"))

    def test_mapping_table_is_nats_servers(self) -> None:
        self.assertEqual(mapping_table("hub"), {
            "$JS.hub.API.INFO": "$JS.API.INFO",
            "$JS.hub.API.STREAM.>": "$JS.API.STREAM.>",
            "$JS.hub.API.CONSUMER.>": "$JS.API.CONSUMER.>",
            "$JS.hub.API.DIRECT.>": "$JS.API.DIRECT.>",
            "$JS.hub.API.META.>": "$JS.API.META.>",
            "$JS.hub.API.SERVER.>": "$JS.API.SERVER.>",
            "$JS.hub.API.ACCOUNT.>": "$JS.API.ACCOUNT.>",
            "$JS.hub.API.$KV.>": "$KV.>",
            "$JS.hub.API.$OBJ.>": "$OBJ.>",
        })
        self.assertEqual(map_subject("$JS.hub.API.INFO", "$JS.API.INFO", "$JS.hub.API.INFO"), "$JS.API.INFO")
        self.assertEqual(map_subject("$JS.hub.API.STREAM.>", "$JS.API.STREAM.>", "$JS.hub.API.STREAM.INFO.S"), "$JS.API.STREAM.INFO.S")
        self.assertEqual(map_subject("$JS.hub.API.$KV.>", "$KV.>", "$JS.hub.API.$KV.b.k.x"), "$KV.b.k.x")

    def test_engine_maps_what_it_answers(self) -> None:
        """The engine subscribes the mappings something here answers: direct gets are the streams', META and the like a cluster's."""
        self.assertEqual(domain_mappings("hub"), [
            ("$JS.hub.API.$KV.>", "$KV.>"), ("$JS.hub.API.$OBJ.>", "$OBJ.>"), ("$JS.hub.API.CONSUMER.>", "$JS.API.CONSUMER.>"),
            ("$JS.hub.API.INFO", "$JS.API.INFO"), ("$JS.hub.API.STREAM.>", "$JS.API.STREAM.>"),
        ])

    def test_split_ack_reply(self) -> None:
        self.assertEqual(split_ack_reply(b"$JS.ACK.S.c.1.2.3.4.0@orders.eu.1"), (b"$JS.ACK.S.c.1.2.3.4.0", b"orders.eu.1"))
        self.assertIsNone(split_ack_reply(b"$JS.ACK.S.c.1.2.3.4.0"))
        self.assertIsNone(split_ack_reply(b"_INBOX.a@b"))
        self.assertIsNone(split_ack_reply(b"$JS.ACK.S.c.1.2.3.4.0@"))


class LinkTests(SynchronousTestCase):
    """A spoke in domain edge and a hub in domain hub, each with JetStream, joined in memory."""

    def setUp(self) -> None:
        self.logged: List[str] = []
        observe = lambda event: self.logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def join(self, spoke_domain: str = "edge", hub_domain: str = "hub") -> Any:
        self.spoke = Node("S", jetstream=True, jetstream_domain=spoke_domain)
        self.hub = Node("H", jetstream=True, jetstream_domain=hub_domain)
        # Each side's engine subscribes its plain API and its domain's (as JetStream.start does).
        self.answers: List[Any] = []
        for node, domain in ((self.spoke, spoke_domain), (self.hub, hub_domain)):
            for subject in ("$JS.API.INFO", "$JS.API.STREAM.>", "$JS.{}.API.INFO".format(domain), "$KV.b.>"):
                node.broker.subscribe(subject, lambda s, r, p, h, side=node.broker.server_name: self.answers.append((side, s)))
        self.pump, self.uplink, self.downleaf = leaf(self.spoke, self.hub)
        return self.pump

    def test_info_and_connect_say_jetstream_and_domain(self) -> None:
        hub = Node("H", jetstream=True, jetstream_domain="hub")
        info = hub.leafs.info(hub.leafs.accepted())
        keys = list(info)
        self.assertEqual((info["jetstream"], info["domain"]), (True, "hub"))
        # nats-server's order: jetstream after max_payload, domain after the nonce.
        self.assertEqual(keys[keys.index("max_payload") + 1], "jetstream")
        self.assertEqual(keys[keys.index("nonce") + 1], "domain")
        spoke = Node("S", jetstream=True, jetstream_domain="edge")
        from eventsvc.nats.links.leaf_connection import RemoteLeaf

        options = spoke.leafs.connect_options(RemoteLeaf(("nats-leaf://127.0.0.1:7422",)))
        self.assertEqual(list(options)[:5], ["version", "tls_required", "server_id", "domain", "name"])
        self.assertEqual((options["domain"], options["jetstream"]), ("edge", True))
        plain = Node("P")
        self.assertNotIn("domain", plain.leafs.info(plain.leafs.accepted()))
        self.assertNotIn("jetstream", plain.leafs.connect_options(RemoteLeaf(("nats-leaf://127.0.0.1:7422",))))

    def test_interest_told(self) -> None:
        """Each side hears of the other's domain API, never of its plain API or $KV (nats-server's LS+ lines)."""
        self.join()
        self.assertEqual((self.uplink.remote_domain, self.downleaf.remote_domain), ("hub", "edge"))
        told_spoke = [s for s, _ in interest(self.uplink) if not s.startswith(b"$LDS.")]
        told_hub = [s for s, _ in interest(self.downleaf) if not s.startswith(b"$LDS.")]
        self.assertEqual(told_spoke, [b"$JS.hub.API.INFO"])
        self.assertEqual(told_hub, [b"$JS.edge.API.INFO"])
        self.assertIn('leaf node H: JetStream Not Extended, adding deny [$JS.API.> $KV.> $OBJ.>] for account "$G"; '
                      'adding deny "$JS.edge.API.>" for outgoing messages', self.logged)

    def test_what_crosses(self) -> None:
        """With a subscriber to everything on the hub, the spoke still sends only the hub's domain API and plain subjects."""
        self.join()
        everything = self.hub.client()
        everything.send(b"SUB > 1\r\nPING\r\n")
        self.pump.flush()
        everything.received()
        client = self.spoke.client()
        for subject in (b"$JS.API.INFO", b"$JS.API.STREAM.NAMES", b"$KV.b.k", b"$OBJ.o", b"$JS.edge.API.INFO", b"$JS.hub.API.INFO", b"orders.1"):
            client.send(b"PUB " + subject + b" _INBOX.r 1\r\nx\r\n")
        self.pump.flush()
        got = [line.split(b" ")[1] for line in everything.received().split(b"\r\n") if line.startswith(b"MSG ")]
        self.assertEqual(got, [b"$JS.hub.API.INFO", b"orders.1"])
        # Each request was answered on its own side only: the spoke's engine its plain API and its domain.
        self.assertEqual(sorted(set(self.answers)), sorted({
            ("S", "$JS.API.INFO"), ("S", "$JS.API.STREAM.NAMES"), ("S", "$KV.b.k"), ("S", "$JS.edge.API.INFO"), ("H", "$JS.hub.API.INFO"),
        }))
        self.assertEqual(len(self.answers), 5)

    def test_denied_frames_from_the_other_side_are_dropped(self) -> None:
        """A peer that sends $JS.API or $KV anyway (LS+ or LMSG) is not listened to: nothing here answers."""
        self.join()
        self.downleaf.send(b"LS+ $JS.API.>\r\nLS+ $KV.>\r\nLMSG $JS.API.INFO _INBOX.r 1\r\nx\r\nLMSG $KV.b.k 1\r\nx\r\n")
        self.downleaf.flush()
        self.pump.flush()
        self.assertNotIn((b"$JS.API.>", None), interest(self.uplink))
        self.assertNotIn((b"$KV.>", None), interest(self.uplink))
        self.assertEqual(self.answers, [])

    def test_same_domain(self) -> None:
        """Both in domain hub: neither is told the other's domain API, each answers its own, and the log says what to fix."""
        self.join("hub", "hub")
        self.assertEqual([s for s, _ in interest(self.uplink) if not s.startswith(b"$LDS.")], [])
        for node in (self.spoke, self.hub):
            client = node.client()
            client.send(b"PUB $JS.hub.API.INFO _INBOX.r 1\r\nx\r\n")
        self.pump.flush()
        self.assertEqual(self.answers, [("S", "$JS.hub.API.INFO"), ("H", "$JS.hub.API.INFO")])
        warning = [line for line in self.logged if "runs JetStream in our domain (hub) too" in line]
        self.assertEqual(len(warning), 2, self.logged)  # (one each side)
        self.assertIn("give each side its own [jetstream] domain", warning[0])

    def test_without_jetstream_here(self) -> None:
        """A spoke without JetStream takes the hub's domain API across (nothing of its own to keep apart)."""
        self.spoke = Node("S")
        self.hub = Node("H", jetstream=True, jetstream_domain="hub")
        self.hub.broker.subscribe("$JS.hub.API.INFO", lambda *a: None)
        self.hub.broker.subscribe("$JS.API.INFO", lambda *a: None)
        pump, uplink, downleaf = leaf(self.spoke, self.hub)
        self.assertEqual([s for s, _ in interest(uplink) if not s.startswith(b"$LDS.")], [b"$JS.hub.API.INFO"])
        self.assertEqual((downleaf.remote_domain, downleaf.remote_jetstream), ("", False))

    def test_leafz_shows_the_other_sides_domain(self) -> None:
        self.join()

        class Service:
            def __init__(self, node: Node) -> None:
                self.broker = node.broker
                self.leafs = node.leafs

            def getServiceNamed(self, name: str) -> Any:
                if name == "leafnodes":
                    return self.leafs
                raise KeyError(name)

        for node, domain in ((self.spoke, "hub"), (self.hub, "edge")):
            row = Monitor(Service(node), task.Clock()).leafz({})["leafs"][0]  # type: ignore[index]
            self.assertEqual((row["jetstream"], row["domain"]), (True, domain))
        plain = Node("P")
        pump, uplink, downleaf = leaf(plain, Node("Q"))
        row = Monitor(Service(plain), task.Clock()).leafz({})["leafs"][0]  # type: ignore[index]
        self.assertNotIn("domain", row)
        self.assertNotIn("jetstream", row)


class DeliveryAcrossTests(SynchronousTestCase):
    """JetStream deliveries (Broker.deliver_as) across a leaf link, both ways, as nats-server frames them."""

    def setUp(self) -> None:
        self.spoke, self.hub = Node("S"), Node("H")
        self.pump, self.uplink, self.downleaf = leaf(self.spoke, self.hub)
        self.client = self.spoke.client()
        self.client.send(b"SUB _INBOX.r 7\r\nPING\r\n")
        self.pump.flush()
        self.client.received()
        self.wire: List[bytes] = []
        write = self.downleaf.transport.write

        def spy(data: bytes) -> None:
            self.wire.append(data)
            write(data)
        self.downleaf.transport.write = spy  # type: ignore[method-assign]

    def test_a_delivery_crosses_on_the_inbox_and_shows_its_subject(self) -> None:
        n = self.hub.broker.deliver_as("_INBOX.r", "orders.1", b"hi", reply="$JS.ACK.S.c.1.1.1.0.0")
        self.pump.flush()
        self.assertEqual(n, 1)
        self.assertIn(b"LMSG _INBOX.r $JS.ACK.S.c.1.1.1.0.0@orders.1 2\r\nhi\r\n", b"".join(self.wire))
        self.assertEqual(self.client.received(), b"MSG orders.1 7 $JS.ACK.S.c.1.1.1.0.0 2\r\nhi\r\n")

    def test_with_headers(self) -> None:
        headers = b"NATS/1.0\r\nNats-Msg-Id: 1\r\n\r\n"
        self.hub.broker.deliver_as("_INBOX.r", "orders.2", b"hi", reply="$JS.ACK.S.c.1.2.2.0.0", headers=headers)
        self.pump.flush()
        self.assertIn(b"HMSG _INBOX.r $JS.ACK.S.c.1.2.2.0.0@orders.2 %d %d\r\n" % (len(headers), len(headers) + 2), b"".join(self.wire))
        self.assertEqual(self.client.received(), b"HMSG orders.2 7 $JS.ACK.S.c.1.2.2.0.0 %d %d\r\n%shi\r\n" % (
            len(headers), len(headers) + 2, headers))

    def test_local_subscribers_see_the_subject_and_the_plain_reply(self) -> None:
        here = self.hub.client()
        here.send(b"SUB _INBOX.r 3\r\nPING\r\n")
        here.received()
        self.pump.flush()
        self.assertEqual(self.hub.broker.deliver_as("_INBOX.r", "orders.3", b"x", reply="$JS.ACK.S.c.1.3.3.0.0"), 2)
        self.pump.flush()
        self.assertEqual(here.received(), b"MSG orders.3 3 $JS.ACK.S.c.1.3.3.0.0 1\r\nx\r\n")
        self.assertEqual(self.client.received(), b"MSG orders.3 7 $JS.ACK.S.c.1.3.3.0.0 1\r\nx\r\n")

    def test_without_a_reply_it_crosses_on_the_inbox(self) -> None:
        """(nats-server: no reply, no @subject; the far side sees the deliver subject.)"""
        self.hub.broker.deliver_as("_INBOX.r", "orders.4", b"x")
        self.pump.flush()
        self.assertEqual(self.client.received(), b"MSG _INBOX.r 7 1\r\nx\r\n")


class EngineMappingTests(SynchronousTestCase):
    """The engine answers its domain's API as its plain API, wildcard tokens in a request subject included."""

    def test_domain_api(self) -> None:
        node = Node("J")
        js = JetStream(node.broker, JetStreamSettings(domain="hub"), task.Clock())
        js.start()
        self.addCleanup(js.stop)
        client = node.client()
        client.send(b"SUB _R.> 1\r\n")
        for subject, payload in (
            (b"$JS.hub.API.STREAM.CREATE.S", {"name": "S", "subjects": ["s.>"], "storage": "memory"}),
            # (nats-py names the filter in the subject: a wildcard token, which a client may publish.)
            (b"$JS.hub.API.CONSUMER.CREATE.S.c.s.>", {"stream_name": "S", "config": {
                "durable_name": "c", "filter_subject": "s.>", "ack_policy": "explicit"}}),
            (b"$JS.hub.API.INFO", {}),
        ):
            data = json.dumps(payload).encode() if payload else b""
            client.send(b"PUB %s _R.x %d\r\n%s\r\n" % (subject, len(data), data))
        answers = [json.loads(line) for line in client.received().split(b"\r\n") if line.startswith(b"{")]
        self.assertEqual([a["type"].rsplit(".", 1)[1] for a in answers],
                         ["stream_create_response", "consumer_create_response", "account_info_response"])
        self.assertNotIn("error", answers[1])
        self.assertEqual((answers[1]["name"], answers[2]["streams"], answers[2]["domain"]), ("c", 1, "hub"))


class _TwoEngines(SynchronousTestCase):
    """Two eventsvc JetStreams, edge and hub, over a leaf link in memory, made with C{js_options}."""

    js_options: Dict[str, Any] = {}

    def setUp(self) -> None:
        self.nodes = {}
        for name, domain in (("S", "edge"), ("H", "hub")):
            node = Node(name, jetstream=True, jetstream_domain=domain)
            js = JetStream(node.broker, JetStreamSettings(domain=domain, **self.js_options), node.clock)
            js.start()
            self.addCleanup(js.stop)
            self.nodes[domain] = node
        self.pump, self.uplink, self.downleaf = leaf(self.nodes["edge"], self.nodes["hub"])

    def settle(self) -> None:
        for _ in range(4):
            for node in self.nodes.values():
                node.clock.advance(0)
            self.pump.flush()

    def ask(self, client: Any, subject: str, payload: Any = b"") -> bytes:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        client.send(b"PUB %s _R.x %d\r\n%s\r\n" % (subject.encode(), len(data), data))
        self.settle()
        return client.received()


class TwoEngineTests(_TwoEngines):
    """Two eventsvc JetStreams, edge and hub, over a leaf link in memory: a client of each uses the other's streams."""

    def test_each_uses_the_others_stream(self) -> None:
        for here, there in (("edge", "hub"), ("hub", "edge")):
            client = self.nodes[here].client()
            client.send(b"SUB _R.> 1\r\n")
            self.settle()
            api, name = "$JS.%s.API." % there, there.upper()
            created = self.ask(client, api + "STREAM.CREATE." + name, {"name": name, "subjects": [there + ".>"], "storage": "memory"})
            self.assertIn(b'"type":"io.nats.jetstream.api.v1.stream_create_response"', created)
            self.assertEqual(self.ask(client, there + ".1", b"hi").split(b"\r\n")[1],
                             b'{"stream":"%s", "domain":"%s", "seq":1}' % (name.encode(), there.encode()))
            self.ask(client, api + "CONSUMER.DURABLE.CREATE.%s.c" % name, {"stream_name": name, "config": {"durable_name": "c", "ack_policy": "explicit"}})
            got = self.ask(client, api + "CONSUMER.MSG.NEXT.%s.c" % name, {"batch": 1})
            # The stream subject and the plain ack subject, though it crossed on the inbox with <ack>@<subject>.
            head = got.split(b"\r\n")[0].split(b" ")
            ack = b"$JS.ACK.%s.c.1.1.1." % name.encode()
            self.assertEqual((head[0], head[1], head[3][:len(ack)]), (b"MSG", there.encode() + b".1", ack))
            self.ask(client, head[3].decode(), b"+ACK")
            info = json.loads(self.ask(client, api + "CONSUMER.INFO.%s.c" % name).split(b"\r\n")[1])
            self.assertEqual((info["ack_floor"]["stream_seq"], info["num_ack_pending"]), (1, 0))
            # The plain API here lists only its own (the hub made one in the first round).
            names = json.loads(self.ask(client, "$JS.API.STREAM.NAMES").split(b"\r\n")[1])
            self.assertEqual(names["streams"], ["HUB"] if here == "hub" else None)


class LeafPullRequestTests(SynchronousTestCase):
    """
    A pull request that comes over a leaf link before the interest in its
    inbox (a leaf can hide a gateway or routes on its far side, where the
    two took different paths): served for two seconds without known
    interest, as nats-server does when leaf nodes are enabled
    (C{defaultGatewayRecentSubExpiration}), then dropped.
    """

    def setUp(self) -> None:
        self.hub = Node("H", jetstream=True, jetstream_domain="hub")
        clock = self.hub.clock
        js = JetStream(self.hub.broker, JetStreamSettings(domain="hub"), clock, now=lambda: int(clock.seconds() * 1e9))
        js.start()
        self.addCleanup(js.stop)
        self.admin = self.hub.client()
        self.admin.send(b"SUB _R.> 1\r\n")
        for subject, body in ((b"$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["orders.>"], "storage": "memory"}),
                              (b"$JS.API.CONSUMER.DURABLE.CREATE.S.p", {"stream_name": "S", "config": {
                                  "durable_name": "p", "ack_policy": "explicit"}})):
            payload = json.dumps(body).encode()
            self.admin.send(b"PUB %s _R.1 %d\r\n%s\r\n" % (subject, len(payload), payload))
        self.assertIn(b'"durable_name":"p"', self.admin.received())
        # A spoke's link, spoken by hand: what it sends, and when.
        self.link = self.hub.leafs.accepted()
        self.wire = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.link.makeConnection(self.wire)
        self.link.dataReceived(b'CONNECT {"version":"2.9.10","server_id":"NS","name":"spoke","headers":true}\r\n')
        self.wire.clear()

    def pending(self) -> tuple:
        self.admin.send(b"PUB $JS.API.CONSUMER.INFO.S.p _R.2 0\r\n\r\n")
        info = json.loads(self.admin.received().split(b"\r\n")[1])
        return info["delivered"]["stream_seq"], info["num_ack_pending"], info["num_waiting"]

    def test_the_inbox_interest_comes_after_the_request(self) -> None:
        self.assertFalse(self.hub.broker.has_interest("_INBOX.q"))
        self.link.dataReceived(b"LMSG $JS.hub.API.CONSUMER.MSG.NEXT.S.p _INBOX.q 1\r\n1\r\n")
        self.hub.clock.advance(1.5)
        self.link.dataReceived(b"LS+ _INBOX.q\r\n")
        self.admin.send(b"PUB orders.1 2\r\nhi\r\n")
        self.assertRegex(self.wire.value(), rb"LMSG _INBOX\.q \$JS\.ACK\.S\.p\.1\.1\.1\.\d+\.0@orders\.1 2\r\nhi\r\n")
        self.assertEqual(self.pending(), (1, 1, 0))

    def test_a_request_nobody_wants_goes_after_two_seconds(self) -> None:
        self.link.dataReceived(b"LMSG $JS.hub.API.CONSUMER.MSG.NEXT.S.p _INBOX.r 1\r\n1\r\n")
        self.assertEqual(self.pending(), (0, 0, 1))
        self.hub.clock.advance(2.5)
        self.admin.send(b"PUB orders.1 2\r\nhi\r\n")
        self.assertEqual(self.pending(), (0, 0, 0))
        self.assertNotIn(b"_INBOX.r", self.wire.value())

    def test_not_without_leaf_nodes(self) -> None:
        """(A server without links drops it at once, as nats-server: nobody can be about to subscribe.)"""
        self.hub.leafs.stopService()
        self.assertFalse(self.hub.broker.leafnodes_enabled)
        client = self.hub.client()
        client.send(b"PUB $JS.API.CONSUMER.MSG.NEXT.S.p _INBOX.s 1\r\n1\r\n")
        self.assertEqual(self.pending(), (0, 0, 0))


class AckInterestTests(_TwoEngines):
    """
    Each consumer subscribes its own ack subject, as nats-server's
    (C{$JS.ACK.<stream>.<consumer>.*.*.*.*.*}): a link tells the other side
    of those, so the acks of a busy hub's own clients stay at the hub
    (the engine's C{$JS.ACK.>} sent every one of them to each spoke, to be
    dropped there: 119 bytes per hub message in bench/leafacks.py), on a
    server with leaf nodes or gateways (L{JetStreamSettings.per_consumer_acks},
    the default everywhere).
    """

    def setUp(self) -> None:
        super().setUp()
        self.wire: List[bytes] = []
        write = self.downleaf.transport.write

        def spy(data: bytes) -> None:
            self.wire.append(data)
            write(data)
        self.downleaf.transport.write = spy  # type: ignore[method-assign]

    def test_a_hubs_own_acks_stay_at_the_hub(self) -> None:
        client = self.nodes["hub"].client()
        client.send(b"SUB _R.> 1\r\n")
        self.ask(client, "$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["orders.>"], "storage": "memory"})
        self.ask(client, "$JS.API.CONSUMER.DURABLE.CREATE.S.c", {"stream_name": "S", "config": {"durable_name": "c", "ack_policy": "explicit"}})
        # The spoke hears of the consumer's ack subject, not of $JS.ACK.>.
        told = b"".join(self.wire)
        self.assertIn(b"LS+ $JS.ACK.S.c.*.*.*.*.*\r\n", told)
        self.assertNotIn(b"LS+ $JS.ACK.>", told)
        self.assertNotIn((b"$JS.ACK.>", None), self.downleaf.subs)
        self.assertNotIn((b"$JS.ACK.>", None), self.uplink.subs)
        for i in range(3):
            self.ask(client, "orders.%d" % i, b"hi")
        got = self.ask(client, "$JS.API.CONSUMER.MSG.NEXT.S.c", {"batch": 3})
        acks = re.findall(rb"MSG orders\.\d 1 (\S+) 2", got)
        self.assertEqual(len(acks), 3, got)
        del self.wire[:]
        for ack in acks:
            client.send(b"PUB " + ack + b" 4\r\n+ACK\r\n")
        self.settle()
        info = json.loads(self.ask(client, "$JS.API.CONSUMER.INFO.S.c").split(b"\r\n")[1])
        self.assertEqual((info["ack_floor"]["stream_seq"], info["num_ack_pending"]), (3, 0))
        self.assertNotIn(b"$JS.ACK", b"".join(self.wire))
        # A deleted consumer's ack subject is let go of on the link too.
        self.ask(client, "$JS.API.CONSUMER.DELETE.S.c")
        self.assertIn(b"LS- $JS.ACK.S.c.*.*.*.*.*\r\n", b"".join(self.wire))

    def test_an_ack_for_no_consumer_is_not_answered(self) -> None:
        """(As nats-server, where no consumer subscribes it: an AckSync to a consumer that is gone hears no responders.)"""
        client = self.nodes["hub"].client()
        client.send(b"SUB _R.> 1\r\n")
        self.assertEqual(self.ask(client, "$JS.ACK.S.gone.1.1.1.1.0", b"+ACK"), b"")
        self.assertFalse(self.nodes["hub"].broker.has_interest("$JS.ACK.S.gone.1.1.1.1.0"))

    def test_per_consumer_everywhere(self) -> None:
        """app.py subscribes acks per consumer on every server, as nats-server: alone, in a cluster, with links."""
        from eventsvc import app, config as config_module

        for sections in ("", '[cluster]\nroutes = ["nats-route://127.0.0.1:6222"]\n', "[leafnodes]\nport = 7422\n",
                         '[supercluster]\nname = "a"\n'):
            parsed = config_module.parse("[jetstream]\nstore_dir = \"\"\n" + sections)
            broker = Node("X").broker
            engine = app.jetstream(parsed, broker, task.Clock())
            self.assertTrue(engine.settings.per_consumer_acks, sections)
            engine.start()
            self.addCleanup(engine.stop)
            self.assertFalse(broker.has_interest("$JS.ACK.S.gone.1.1.1.1.0"), sections)
