"""
Superclusters with the reference server: eventsvc and nats-server 2.9
clusters joined by the NATS gateway protocol, with nats-py clients on
every side.  Each round publishes to everyone, spreads a queue group over
every cluster (each message must arrive once in the whole supercluster)
and makes requests across every link.
"""

from __future__ import annotations

import asyncio
import os
import signal

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from eventsvc.test import process
from eventsvc.test.test_interop_cluster import mesh_round, nats, run


def reference_gateway(path: str, name: str, port: int, remotes: dict, *extra: str) -> process.ServerProcess:
    """A one-server nats-server cluster called C{name}, its gateway on C{port}, dialling C{remotes}."""
    gateways = ", ".join('{name: "%s", urls: ["nats://127.0.0.1:%d"]}' % (n, p) for n, p in remotes.items())
    process.write_config(path, 'gateway {\n  name: "%s"\n  host: "127.0.0.1"\n  port: %d\n  gateways: [%s]\n}\n' % (name, port, gateways))
    return process.nats_server("-c", path, *extra)


class GatewayPair(TestCase):
    """eventsvc cluster "ours" and nats-server cluster "theirs", each dialling the other."""

    timeout = 240

    def setUp(self):
        if nats is None:
            process.require("nats-py")
        self.their_gateway, self.our_gateway = process.free_port(), process.free_port()
        self.their_config = os.path.abspath(self.mktemp() + ".conf")
        self.their_http, self.our_http = process.free_port(), process.free_port()
        self.theirs = reference_gateway(self.their_config, "theirs", self.their_gateway, {"ours": self.our_gateway}, "-m", str(self.their_http))
        self.theirs.start()
        self.addCleanup(lambda: self.theirs.stop())
        self.client_port = process.free_port()
        self.config = process.write_config(os.path.abspath(self.mktemp() + ".toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n'
            '[supercluster]\nname = "ours"\nhost = "127.0.0.1"\nport = %d\n'
            '[[supercluster.gateways]]\nname = "theirs"\nurls = ["nats://127.0.0.1:%d"]\n'
            '[monitor]\nport = %d\n'
        ) % (self.client_port, self.our_gateway, self.their_gateway, self.our_http))
        self.ours = process.eventsvc(self.config, expect=("service",))
        self.ours.start()
        self.addCleanup(lambda: self.ours.stop())

    def check(self, result, nodes: int = 2):
        got, counts, replies = result
        expected = sorted(b"from-%d" % i for i in range(nodes))
        for i, messages in got.items():
            self.assertEqual(sorted(messages), expected, (i, got, self.ours.output()))
        # One delivery per message in the whole supercluster.
        self.assertEqual(sum(counts.values()), 300, counts)
        self.assertTrue(all(replies), (replies, self.ours.output()))


async def remote_queue_round(ports):
    """
    A queue group whose members are all on the other side of the gateway:
    every message crosses once, and reaches one member.
    """
    ncs = [await nats.connect("nats://127.0.0.1:%d" % p) for p in ports]
    counts = {0: 0, 1: 0}
    for i, nc in enumerate(ncs):
        for _ in range(2):
            async def member(msg, i=i):
                counts[i] += 1

            await nc.subscribe("only.%d" % i, queue="remote", cb=member)
        async def ready(msg, nc=nc):
            await nc.publish(msg.reply, b"")

        await nc.subscribe("ready.%d" % i, cb=ready)
        await nc.flush()
    for i, nc in enumerate(ncs):
        for _ in range(100):
            try:
                await nc.request("ready.%d" % (1 - i), b"", timeout=0.5)
                break
            except Exception:
                await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)  # (queue interest travels with the plain interest)
    for i, nc in enumerate(ncs):
        for _ in range(100):
            await nc.publish("only.%d" % (1 - i), b"q")
        await nc.flush()
    await asyncio.sleep(1)
    for nc in ncs:
        await nc.close()
    return counts


class GatewayPairTests(GatewayPair):
    @defer.inlineCallbacks
    def test_messages_requests_and_queues_both_ways(self):
        ports = [self.theirs.port, self.client_port]
        result = yield run(lambda: mesh_round(ports, "first"))
        self.check(result)
        counts = yield run(lambda: remote_queue_round(ports))
        self.assertEqual(counts, {0: 100, 1: 100})
        self.ours.wait_output("gateway to theirs")
        self.ours.wait_output("gateway from theirs")
        self.assertIn("interest-only mode", self.ours.output())

    @defer.inlineCallbacks
    def test_gatewayz_and_varz_as_nats_servers(self):
        from eventsvc.test.test_interop_monitor import fetch, fetch_text

        yield run(lambda: mesh_round([self.theirs.port, self.client_port], "monitor"))
        pages = {}
        for who, http in (("theirs", self.their_http), ("ours", self.our_http)):
            pages[who] = {path: fetch(http, path)[1] for path in ("/gatewayz", "/varz")}
        theirs, ours = pages["theirs"]["/gatewayz"], pages["ours"]["/gatewayz"]
        self.assertEqual(set(ours), set(theirs))
        self.assertEqual(list(ours["outbound_gateways"]), ["theirs"])
        self.assertEqual(list(theirs["outbound_gateways"]), ["ours"])
        self.assertEqual(list(ours["inbound_gateways"]), ["theirs"])
        out, their_out = ours["outbound_gateways"]["theirs"], theirs["outbound_gateways"]["ours"]
        self.assertEqual(set(out), set(their_out))
        self.assertTrue(out["configured"])
        # nats-server's fields, but for its round-trip time, which we do not measure.
        self.assertEqual(set(out["connection"]), set(their_out["connection"]))
        self.assertEqual(out["connection"]["kind"], "Gateway")
        self.assertGreater(out["connection"]["out_msgs"], 0)
        inbound = ours["inbound_gateways"]["theirs"][0]
        self.assertFalse(inbound["configured"])
        self.assertGreater(inbound["connection"]["in_msgs"], 0)
        self.assertEqual(set(pages["ours"]["/varz"]["gateway"]), set(pages["theirs"]["/varz"]["gateway"]))
        self.assertEqual(pages["ours"]["/varz"]["gateway"]["gateways"][0]["name"], "theirs")
        _, metrics = fetch_text(self.our_http, "/metrics")
        self.assertIn('eventsvc_gateway_links{direction="outbound",gateway="theirs"} 1.0', metrics)
        self.assertIn('eventsvc_gateway_links{direction="inbound",gateway="theirs"} 1.0', metrics)

    @defer.inlineCallbacks
    def test_link_heals_after_either_side_restarts(self):
        ports = [self.theirs.port, self.client_port]
        self.check((yield run(lambda: mesh_round(ports, "before"))))
        # nats-server goes away and comes back on the same ports.
        self.theirs.stop()
        self.ours.wait_output("gateway to theirs down")
        self.theirs = process.nats_server("-c", self.their_config, "-p", str(self.theirs.port), "-m", str(self.their_http))
        yield threads.deferToThread(self.theirs.start)
        self.check((yield run(lambda: mesh_round(ports, "theirs-restarted"))))
        # And now ours.
        self.assertIn(self.ours.stop(), (0, -signal.SIGTERM))
        self.ours = process.eventsvc(self.config, expect=("service",))
        yield threads.deferToThread(self.ours.start)
        self.check((yield run(lambda: mesh_round(ports, "ours-restarted"))))


class ThreeWaySuperclusterTests(TestCase):
    """
    eventsvc with two nats-server clusters.  eventsvc is configured with
    only one of them and learns of the other by gossip (an implicit
    gateway), as a new cluster joining a supercluster does.
    """

    timeout = 240

    @defer.inlineCallbacks
    def test_three_clusters(self):
        if nats is None:
            process.require("nats-py")
        a_gw, b_gw, ours_gw = process.free_port(), process.free_port(), process.free_port()
        a = reference_gateway(os.path.abspath(self.mktemp() + ".conf"), "A", a_gw, {"B": b_gw, "ours": ours_gw})
        b = reference_gateway(os.path.abspath(self.mktemp() + ".conf"), "B", b_gw, {"A": a_gw})
        for node in (a, b):
            node.start()
            self.addCleanup(node.stop)
        config = process.write_config(os.path.abspath(self.mktemp() + ".toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[supercluster]\nname = "ours"\nhost = "127.0.0.1"\nport = %d\n'
            '[[supercluster.gateways]]\nname = "A"\nurls = ["nats://127.0.0.1:%d"]\n'
        ) % (ours_gw, a_gw))
        ours = process.eventsvc(config, expect=("service",))
        client_port = ours.start()
        self.addCleanup(ours.stop)
        got, counts, replies = yield run(lambda: mesh_round([a.port, b.port, client_port], "three"))
        for i, messages in got.items():
            self.assertEqual(sorted(messages), [b"from-0", b"from-1", b"from-2"], (i, got, ours.output()))
        self.assertEqual(sum(counts.values()), 300, counts)
        self.assertTrue(all(replies), (replies, ours.output()))
        # B was never configured here: ours dialled it after hearing of it.
        ours.wait_output("gateway to B")
        self.assertIn("heard of gateway B", ours.output())


class ClusterBehindGatewayTests(TestCase):
    """
    A two-node eventsvc cluster (routes) whose nodes both have gateways to
    a nats-server cluster: messages from the gateway reach the other node
    by route, replies routed to one node arrive there, and a queue group
    over all three servers still gets each message once.
    """

    timeout = 240

    def test_two_node_cluster_and_a_reference_cluster(self):
        return self.cluster_behind((True, True))

    def test_only_one_node_knows_the_other_cluster(self):
        """The second node learns the gateway from the first by route (gossip), as nats-server's do."""
        return self.cluster_behind((True, False))

    @defer.inlineCallbacks
    def cluster_behind(self, configured):
        if nats is None:
            process.require("nats-py")
        their_gw, gw1, gw2, route1, route2 = (process.free_port() for _ in range(5))
        theirs = reference_gateway(os.path.abspath(self.mktemp() + ".conf"), "theirs", their_gw, {})
        theirs.start()
        self.addCleanup(theirs.stop)
        nodes, ports = [], []
        for gw, route, other, knows in ((gw1, route1, route2, configured[0]), (gw2, route2, route1, configured[1])):
            port = process.free_port()
            config = process.write_config(os.path.abspath(self.mktemp() + ".toml"), (
                '[service]\nhost = "127.0.0.1"\nport = %d\n'
                '[cluster]\nname = "ours"\nhost = "127.0.0.1"\nport = %d\nroutes = ["nats-route://127.0.0.1:%d"]\n'
                '[supercluster]\nname = "ours"\nhost = "127.0.0.1"\nport = %d\n'
            ) % (port, route, other, gw) + (
                '[[supercluster.gateways]]\nname = "theirs"\nurls = ["nats://127.0.0.1:%d"]\n' % their_gw if knows else ""
            ))
            node = process.eventsvc(config, expect=("service",))
            node.start()
            self.addCleanup(node.stop)
            nodes.append(node)
            ports.append(port)
        got, counts, replies = yield run(lambda: mesh_round([theirs.port] + ports, "behind"))
        output = "\n".join(n.output() for n in nodes)
        for i, messages in got.items():
            self.assertEqual(sorted(messages), [b"from-0", b"from-1", b"from-2"], (i, got, output))
        self.assertEqual(sum(counts.values()), 300, counts)
        self.assertTrue(all(replies), (replies, output))
        counts = yield run(lambda: remote_queue_round([theirs.port, ports[1]]))
        self.assertEqual(counts, {0: 100, 1: 100})
        # Fresh clients on both nodes, one request each, no second try: the
        # reply comes back routed (its inbox's interest has not crossed
        # yet), to whichever of our servers nats-server's link reaches, and
        # on by route to the requester's.
        answers = yield run(lambda: fresh_requests(theirs.port, ports))
        self.assertEqual(answers, [b"answer"] * 6, output)


async def fresh_requests(their_port, ports):
    responder = await nats.connect("nats://127.0.0.1:%d" % their_port)

    async def answer(msg):
        await msg.respond(b"answer")

    await responder.subscribe("fresh.svc", cb=answer)
    await responder.flush()
    await asyncio.sleep(0.5)
    answers = []
    for _ in range(3):
        for port in ports:
            nc = await nats.connect("nats://127.0.0.1:%d" % port)
            try:
                answers.append((await nc.request("fresh.svc", b"?", timeout=3)).data)
            except Exception as e:
                answers.append(repr(e).encode())
            await nc.close()
    await responder.close()
    return answers


class TLSGatewayTests(TestCase):
    """Gateway links over mutual TLS with nats-server, and a peer from another CA refused."""

    timeout = 240

    @defer.inlineCallbacks
    def test_tls_gateways(self):
        if nats is None:
            process.require("nats-py")
        directory = os.path.abspath(self.mktemp())
        certs = os.path.join(directory, "certs")
        self.assertEqual(process.cli("certs", "--out", certs).returncode, 0)
        their_gw, our_gw = process.free_port(), process.free_port()
        tls_block = (
            'tls {{ cert_file: "{0}/service.crt", key_file: "{0}/service.key", ca_file: "{0}/ca.crt", '
            "verify: true, timeout: 3 }}".format(certs)
        )

        def reference(name: str, port: int, tls: str) -> process.ServerProcess:
            conf = process.write_config(os.path.join(directory, name + ".conf"), (
                'gateway {{\n  name: "{name}"\n  host: "127.0.0.1"\n  port: {port}\n'
                '  gateways: [{{name: "ours", urls: ["nats://localhost:{ours}"]}}]\n  {tls}\n}}\n'
            ).format(name=name, port=port, ours=our_gw, tls=tls))
            return process.nats_server("-c", conf)

        theirs = reference("theirs", their_gw, tls_block)
        yield process.started(self, theirs)
        config = process.write_config(os.path.join(directory, "eventsvc.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n'
            '[tls]\ncert_path = "certs/service.crt"\nkey_path = "certs/service.key"\nroot_ca_path = "certs/ca.crt"\n'
            '[supercluster]\nname = "ours"\nhost = "127.0.0.1"\nport = {gw}\ntls = true\ntls_name = "localhost"\n'
            '[[supercluster.gateways]]\nname = "theirs"\nurls = ["nats://127.0.0.1:{theirs}"]\n'
        ).format(client=0, gw=our_gw, theirs=their_gw))
        ours = process.eventsvc(config, expect=("service",))
        client_port = yield process.started(self, ours)
        from eventsvc.test.test_interop_cluster import client_tls

        servers = [theirs.port, ("tls://127.0.0.1:%d" % client_port, client_tls(certs))]
        got, counts, replies = yield run(lambda: mesh_round(servers, "tls"))
        for i, messages in got.items():
            self.assertEqual(sorted(messages), [b"from-0", b"from-1"], (i, got, ours.output()))
        self.assertEqual(sum(counts.values()), 300, counts)
        self.assertTrue(all(replies), (replies, ours.output()))
        ours.wait_output("gateway from theirs")
        # A cluster whose certificates another CA signed dials us: refused, and said so.
        stranger_certs = os.path.join(directory, "stranger")
        self.assertEqual(process.cli("certs", "--out", stranger_certs).returncode, 0)
        stranger = reference("stranger", process.free_port(), tls_block.replace(certs, stranger_certs))
        yield process.started(self, stranger)
        yield threads.deferToThread(ours.wait_output, "gateway from 127.0.0.1")
        self.assertIn("failed before it was up", ours.output())
        self.assertNotIn("gateway from stranger", ours.output())


class HandWrittenConnectTests(TestCase):
    """
    A gateway's CONNECTs sent by hand (field names in other cases, nulls,
    wrong types, credentials, an account) to nats-server's gateway port
    and to ours: nats-server's answers byte for byte (test_supercluster's
    GATEWAY_CONNECTS).
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_same_answers(self):
        from eventsvc.test.test_interop_cluster import same_link_answers
        from eventsvc.test.test_supercluster import GATEWAY_CONNECTS

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        reference = process.nats_server("-c", process.write_config(os.path.join(directory, "ref.conf"), (
            'gateway { name: A, listen: "127.0.0.1:-1", authorization { user: gw, password: secret } }\n'
        )), expect=("gateways",))
        yield process.started(self, reference)
        ours = process.eventsvc(process.write_config(os.path.join(directory, "ours.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[supercluster]\nname = "A"\nhost = "127.0.0.1"\nport = 0\nuser = "gw"\npassword = "secret"\n'
        )), expect=("service", "supercluster"))
        yield process.started(self, ours)
        yield same_link_answers(self, reference.ports["gateways"], ours.ports["supercluster"], GATEWAY_CONNECTS)
