"""
JetStream across a gateway with the reference server: eventsvc (cluster
"ours") and nats-server 2.9 (cluster "theirs") dial each other, and a
nats-py client on one side consumes a stream on the other: a push
consumer's deliver subject and a pull consumer's requests on the far side
get each message with its stream subject and an ack reply that acks
across the gateway (the consumer's pending count drops to zero).  Both
ways: eventsvc's stream consumed by a client of nats-server, and a stream
of a three-node nats-server JetStream cluster (nats-server runs JetStream
with a gateway only clustered) consumed by a client of eventsvc.  And
inside one eventsvc cluster: a second server with JetStream is refused its
route, and the first serves every server's clients, once.  And two eventsvc
clusters with a JetStream each: a mirror and a source across the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from eventsvc.test import process
from eventsvc.test.test_interop_cluster import run
from eventsvc.test.test_interop_supercluster import reference_gateway

try:
    import nats
    import nats.js.api
except ImportError:  # pragma: no cover
    nats = None


async def until(check, seconds: float = 20.0):
    """C{check()}'s first true answer, asked every 0.1 s."""
    for _ in range(int(seconds * 10)):
        answer = await check()
        if answer:
            return answer
        await asyncio.sleep(0.1)
    return await check()


async def consume_across(ours: int, theirs: int) -> dict:
    """Publish on the server at C{ours} (with JetStream), consume (push and pull) and ack from C{theirs}."""
    here = await nats.connect("nats://127.0.0.1:%d" % ours)
    there = await nats.connect("nats://127.0.0.1:%d" % theirs)
    try:
        js_here, js_there = here.jetstream(), there.jetstream()

        async def stream():
            try:  # (a nats-server cluster takes a moment to elect its leaders)
                return await js_here.add_stream(name="ORDERS", subjects=["orders.>"])
            except Exception:
                return None
        await until(stream, 60)
        for i in range(3):
            await js_here.publish("orders.%d" % i, b"o%d" % i)
        # A push consumer whose deliver subject only the far client subscribes to.
        inbox = await there.subscribe("deliver.far")
        await there.flush()
        await asyncio.sleep(0.5)  # the interest crosses the gateway
        await js_here.add_consumer("ORDERS", durable_name="push", deliver_subject="deliver.far", ack_policy="explicit")
        pushed = []
        for _ in range(3):
            msg = await inbox.next_msg(timeout=10)
            pushed.append((msg.subject, msg.reply.split(".")[:4], msg.data))
            await msg.ack()
        await there.flush()

        async def push_acked():
            info = await js_here.consumer_info("ORDERS", "push")
            return info if info.num_ack_pending == 0 and info.delivered.stream_seq == 3 else None
        push_info = await until(push_acked)
        # A pull consumer, fetched from the far side through eventsvc's API.
        await js_here.add_consumer("ORDERS", durable_name="pull", ack_policy="explicit")
        fetched = []

        async def fetch_across():
            try:
                sub = await js_there.pull_subscribe_bind("pull", "ORDERS")
                return await sub.fetch(3, timeout=3)
            except Exception:  # the API's interest may not have crossed yet
                return None
        for msg in (await until(fetch_across)) or []:
            fetched.append((msg.subject, msg.data))
            await msg.ack()
        await there.flush()

        async def pull_acked():
            info = await js_here.consumer_info("ORDERS", "pull")
            return info if info.num_ack_pending == 0 and info.ack_floor.stream_seq == 3 else None
        pull_info = await until(pull_acked)
        return {
            "pushed": pushed, "push_pending": push_info and push_info.num_ack_pending,
            "fetched": fetched, "pull_floor": pull_info and pull_info.ack_floor.stream_seq,
        }
    finally:
        await here.close()
        await there.close()


def assert_consumed(test: TestCase, result: dict, output: str) -> None:
    """What L{consume_across} saw: each of the three orders pushed and acked (its ack subject intact), then fetched and acked."""
    test.assertEqual(result["pushed"], [
        ("orders.%d" % i, ["$JS", "ACK", "ORDERS", "push"], b"o%d" % i) for i in range(3)
    ], output)
    test.assertEqual(result["push_pending"], 0)
    test.assertEqual(result["fetched"], [("orders.%d" % i, b"o%d" % i) for i in range(3)])
    test.assertEqual(result["pull_floor"], 3)


class EventsvcStreamNatsServerClientTests(TestCase):
    """eventsvc's JetStream, consumed by a client of nats-server across the gateway."""

    timeout = 120

    @defer.inlineCallbacks
    def test_push_and_pull_with_acks(self):
        if nats is None:
            process.require("nats-py")
        their_gateway, our_gateway = process.free_port(), process.free_port()
        theirs = reference_gateway(os.path.abspath(self.mktemp() + ".conf"), "theirs", their_gateway, {"ours": our_gateway})
        their_port = yield process.started(self, theirs)
        client_port = process.free_port()
        config = process.write_config(os.path.abspath(self.mktemp() + ".toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n'
            '[jetstream]\nstore_dir = "%s"\n'
            '[supercluster]\nname = "ours"\nhost = "127.0.0.1"\nport = %d\n'
            '[[supercluster.gateways]]\nname = "theirs"\nurls = ["nats://127.0.0.1:%d"]\n'
        ) % (client_port, os.path.abspath(self.mktemp()), our_gateway, their_gateway))
        ours = process.eventsvc(config, expect=("service",))
        yield process.started(self, ours)
        ours.wait_output("gateway to theirs")
        ours.wait_output("gateway from theirs", timeout=30)  # the acks come back on nats-server's own link
        result = yield run(lambda: consume_across(client_port, their_port))
        assert_consumed(self, result, ours.output())


class NatsServerStreamEventsvcClientTests(TestCase):
    """A three-node nats-server JetStream cluster's stream, consumed by a client of eventsvc across the gateway."""

    timeout = 180

    @defer.inlineCallbacks
    def test_push_and_pull_with_acks(self):
        if nats is None:
            process.require("nats-py")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        our_gateway = process.free_port()
        routes = [process.free_port() for _ in range(3)]
        gateways = [process.free_port() for _ in range(3)]
        client_port = process.free_port()
        config = process.write_config(os.path.join(directory, "ours.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n'
            '[supercluster]\nname = "ours"\nhost = "127.0.0.1"\nport = %d\n'
            '[[supercluster.gateways]]\nname = "theirs"\nurls = [%s]\n'
        ) % (client_port, our_gateway, ", ".join('"nats://127.0.0.1:%d"' % g for g in gateways)))
        ours = process.eventsvc(config, expect=("service",))
        yield process.started(self, ours)
        nodes = []
        for i in range(3):
            others = ", ".join('"nats-route://127.0.0.1:%d"' % routes[j] for j in range(3) if j != i)
            conf = process.write_config(os.path.join(directory, "t%d.conf" % i), (
                'server_name: "t{i}"\njetstream {{ store_dir: "{dir}/t{i}" }}\n'
                'cluster {{ name: theirs, listen: "127.0.0.1:{route}", routes: [{others}] }}\n'
                'gateway {{ name: theirs, host: "127.0.0.1", port: {gateway}, '
                'gateways: [{{name: ours, urls: ["nats://127.0.0.1:{ours}"]}}] }}\n'
            ).format(i=i, dir=directory, route=routes[i], others=others, gateway=gateways[i], ours=our_gateway))
            nodes.append(process.nats_server("-c", conf))
        ports = yield defer.gatherResults([process.started(self, node) for node in nodes])
        ours.wait_output("gateway from theirs", timeout=30)
        ours.wait_output("gateway to theirs", timeout=30)
        result = yield run(lambda: consume_across(ports[0], client_port))
        assert_consumed(self, result, ours.output())


async def answers(port: int, subject: str, payload: bytes = b"") -> list:
    """Every answer a client of the server at C{port} gets to a request on C{subject} within a second."""
    nc = await nats.connect("nats://127.0.0.1:%d" % port)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(subject, payload, reply=inbox)
        await nc.flush()
        await asyncio.sleep(1.0)
        got = []
        while True:
            try:
                got.append((await sub.next_msg(timeout=0.05)).data)
            except Exception:
                return got
    finally:
        await nc.close()


class OneJetStreamPerClusterTests(TestCase):
    """
    Three eventsvc processes routed to A: A and B with [jetstream], C
    without.  B's route is refused, on both sides, naming both servers;
    C's comes up, and C's clients use A's JetStream; every request is
    answered once.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_a_second_jetstream_server_is_refused_and_the_first_serves_the_cluster(self):
        if nats is None:
            process.require("nats-py")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        # Every port the kernel's: A listens first, B and C dial its route port as read from its log.
        nodes, clients = [], []
        for name in "abc":
            text = '[service]\nhost = "127.0.0.1"\nport = 0\n'
            text += '[cluster]\nenabled = true\nname = "mesh"\nhost = "127.0.0.1"\n'
            text += 'port = 0\n' if name == "a" else 'listen = false\nroutes = ["nats-route://127.0.0.1:%d"]\n' % nodes[0].ports["routes"]
            if name != "c":
                text += '[jetstream]\nstore_dir = "%s/%s"\n' % (directory, name)
            node = process.eventsvc(process.write_config(os.path.join(directory, name + ".toml"), text), expect=("service",))
            clients.append((yield process.started(self, node)))
            nodes.append(node)
        a, b, c = nodes
        c.wait_output("route to ", timeout=30)
        b.wait_output("refused: JetStream is on at", timeout=30)
        a.wait_output("refused: JetStream is on at", timeout=30)

        async def scenario():
            ids = []
            for port in clients[:2]:
                nc = await nats.connect("nats://127.0.0.1:%d" % port)
                ids.append(nc._server_info["server_id"])
                await nc.close()
            nc = await nats.connect("nats://127.0.0.1:%d" % clients[2])
            try:
                await nc.jetstream().add_stream(name="ORDERS", subjects=["orders.>"])
            finally:
                await nc.close()
            return ids, [await answers(port, "$JS.API.STREAM.NAMES") for port in clients]
        (id_a, id_b), named = yield run(scenario)
        self.assertIn("refused: JetStream is on at %s and at %s (this server)" % (id_b, id_a), a.output())
        self.assertIn("refused: JetStream is on at %s and at %s (this server)" % (id_a, id_b), b.output())
        self.assertIn("or link the servers as leaf nodes of a nats-server JetStream cluster", a.output())
        self.assertNotIn(id_b, c.output())
        # Each asked once, answered once: C by A's JetStream, B by its own.
        streams = [[json.loads(answer)["streams"] for answer in got] for got in named]
        self.assertEqual(streams, [[["ORDERS"]], [None], [["ORDERS"]]], [n.output() for n in nodes])


class MirrorAcrossAGatewayTests(TestCase):
    """
    Two eventsvc clusters joined by gateways, each with its JetStream in
    its own domain: a mirror and a source in cluster b of a stream in
    cluster a (C{external.api} C{$JS.a.API}), made and read by nats-py;
    each cluster's plain C{$JS.API} is answered once, by itself.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_mirror_and_source_of_the_other_cluster(self):
        if nats is None:
            process.require("nats-py")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        gateways = {"a": process.free_port(), "b": process.free_port()}
        clients = {"a": process.free_port(), "b": process.free_port()}
        nodes = {}
        for name, other in (("a", "b"), ("b", "a")):
            config = process.write_config(os.path.join(directory, name + ".toml"), (
                '[service]\nhost = "127.0.0.1"\nport = %d\n'
                '[jetstream]\nstore_dir = "%s/%s"\ndomain = "%s"\n'
                '[supercluster]\nname = "%s"\nhost = "127.0.0.1"\nport = %d\n'
                '[[supercluster.gateways]]\nname = "%s"\nurls = ["nats://127.0.0.1:%d"]\n'
            ) % (clients[name], directory, name, name, name, gateways[name], other, gateways[other]))
            nodes[name] = process.eventsvc(config, expect=("service",))
            yield process.started(self, nodes[name])
        for name, other in (("a", "b"), ("b", "a")):
            nodes[name].wait_output("gateway to " + other, timeout=30)
            nodes[name].wait_output("gateway " + other + " runs JetStream too", timeout=30)

        async def scenario():
            a = await nats.connect("nats://127.0.0.1:%d" % clients["a"])
            b = await nats.connect("nats://127.0.0.1:%d" % clients["b"])
            try:
                js_a, js_b = a.jetstream(), b.jetstream()
                await js_a.add_stream(name="ORDERS", subjects=["orders.>"])
                for i in range(3):
                    await js_a.publish("orders.%d" % i, b"o%d" % i)
                external = nats.js.api.ExternalStream(api="$JS.a.API", deliver="")
                await js_b.add_stream(name="COPY", mirror=nats.js.api.StreamSource(name="ORDERS", external=external))
                await js_b.add_stream(name="ALL", subjects=["all.>"],
                                      sources=[nats.js.api.StreamSource(name="ORDERS", external=external)])
                for i in range(3, 5):
                    await js_a.publish("orders.%d" % i, b"o%d" % i)

                async def copied():
                    infos = [await js_b.stream_info(name) for name in ("COPY", "ALL")]
                    return infos if all(info.state.messages == 5 for info in infos) else None
                infos = await until(copied, 20)
                mirrored = [(await js_b.get_msg("COPY", seq)) for seq in range(1, 6)]
                plain = {name: await answers(port, "$JS.API.STREAM.NAMES") for name, port in clients.items()}
                return {
                    "counts": infos and [info.state.messages for info in infos],
                    "mirrored": [(m.seq, m.subject, m.data) for m in mirrored],
                    "plain": {name: [json.loads(x)["streams"] for x in got] for name, got in plain.items()},
                }
            finally:
                await a.close()
                await b.close()
        result = yield run(scenario)
        self.assertEqual(result["counts"], [5, 5], [n.output() for n in nodes.values()])
        self.assertEqual(result["mirrored"], [(n + 1, "orders.%d" % n, b"o%d" % n) for n in range(5)])
        self.assertEqual(result["plain"], {"a": [["ORDERS"]], "b": [["ALL", "COPY"]]})


class JetStreamBesideTheGatewayTests(TestCase):
    """
    Cluster a: a1 holds the gateway and has no [jetstream], a2 (routed to
    it) has; cluster b: b1, a gateway and a JetStream.  A plain C{$JS.API}
    request from a client of either a-server is answered once, by a2: a1
    keeps b's plain API from its gateway as a server with JetStream does
    (nats-server's rule: a gateway does not take C{$JS.API} across when
    its own cluster runs JetStream), whether the route or the gateway
    came up first.  b's streams stay reachable by its domain.
    """

    timeout = 120

    def test_the_gateway_up_first(self):
        return self.one_answer(route_first=False)

    def test_the_route_up_first(self):
        return self.one_answer(route_first=True)

    @defer.inlineCallbacks
    def one_answer(self, route_first: bool):
        if nats is None:
            process.require("nats-py")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        gateway_b = process.free_port()
        b1 = process.eventsvc(process.write_config(os.path.join(directory, "b1.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[jetstream]\nstore_dir = "%s/b1"\ndomain = "b"\n'
            '[supercluster]\nname = "b"\nhost = "127.0.0.1"\nport = %d\n'
        ) % (directory, gateway_b)), expect=("service",))
        a1 = process.eventsvc(process.write_config(os.path.join(directory, "a1.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[cluster]\nenabled = true\nname = "a"\nhost = "127.0.0.1"\nport = 0\n'
            '[supercluster]\nname = "a"\nhost = "127.0.0.1"\nport = 0\n'
            '[[supercluster.gateways]]\nname = "b"\nurls = ["nats://127.0.0.1:%d"]\n'
        ) % gateway_b), expect=("service", "routes"))
        ports = {}
        if not route_first:
            ports["b1"] = yield process.started(self, b1)
        ports["a1"] = yield process.started(self, a1)
        if not route_first:
            a1.wait_output("gateway to b", timeout=30)
        a2 = process.eventsvc(process.write_config(os.path.join(directory, "a2.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[cluster]\nenabled = true\nname = "a"\nlisten = false\nroutes = ["nats-route://127.0.0.1:%d"]\n'
            '[jetstream]\nstore_dir = "%s/a2"\ndomain = "a"\n'
        ) % (a1.ports["routes"], directory)), expect=("service",))
        ports["a2"] = yield process.started(self, a2)
        a1.wait_output("route to ", timeout=30)
        if route_first:
            # (a1 has been dialling b1 meanwhile, and dials it again.)
            ports["b1"] = yield process.started(self, b1)
            a1.wait_output("gateway to b", timeout=30)
        b1.wait_output("gateway to a", timeout=30)

        async def scenario():
            b = await nats.connect("nats://127.0.0.1:%d" % ports["b1"])
            try:
                await b.jetstream().add_stream(name="THEIRS", subjects=["theirs.>"])
            finally:
                await b.close()
            plain = {name: await answers(ports[name], "$JS.API.STREAM.NAMES") for name in ("a1", "a2", "b1")}
            by_domain = await answers(ports["a1"], "$JS.b.API.STREAM.NAMES")
            return {
                "plain": {name: [json.loads(x)["streams"] for x in got] for name, got in plain.items()},
                "by_domain": [json.loads(x)["streams"] for x in by_domain],
            }
        result = yield run(scenario)
        outputs = [n.output() for n in (a1, a2, b1)]
        self.assertEqual(result["plain"], {"a1": [None], "a2": [None], "b1": [["THEIRS"]]}, outputs)
        self.assertEqual(result["by_domain"], [["THEIRS"]], outputs)
        self.assertIn("gateway b: a server of our cluster runs JetStream", a1.output())
