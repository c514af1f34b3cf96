"""
Clusters with the reference server: one eventsvc node and two nats-server
2.9 nodes in a full mesh, and the split deployment (a gateway-only process
dialling the service's cluster port), with nats-py clients on every node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from eventsvc.test import process

try:
    import nats
except ImportError:  # pragma: no cover
    nats = None


def client_tls(certs: str):
    """A client context with the client certificate from C{eventsvc certs --out certs}."""
    import ssl

    context = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
    context.load_cert_chain(os.path.join(certs, "client.crt"), os.path.join(certs, "client.key"))
    return context


def run(scenario):
    return threads.deferToThread(lambda: asyncio.run(asyncio.wait_for(scenario(), 150)))


async def mesh_round(ports, tag: str):
    """
    Every node publishes to everyone; a queue group over all nodes; requests
    across.  C{ports}: client ports, or (URL, ssl context) for TLS nodes.
    """
    ncs = []
    for p in ports:
        if isinstance(p, int):
            ncs.append(await nats.connect("nats://127.0.0.1:%d" % p))
        else:
            ncs.append(await nats.connect(p[0], tls=p[1], tls_hostname="localhost"))
    got = {i: [] for i in range(len(ncs))}
    counts = {i: 0 for i in range(len(ncs))}
    for i, nc in enumerate(ncs):
        async def all_cb(msg, i=i):
            got[i].append(msg.data)

        async def work_cb(msg, i=i):
            counts[i] += 1

        async def echo(msg, i=i):
            await msg.respond(b"from-%d" % i)

        await nc.subscribe("mesh." + tag, cb=all_cb)
        await nc.subscribe("work." + tag, queue="workers", cb=work_cb)
        await nc.subscribe("svc.%s.%d" % (tag, i), cb=echo)
        await nc.flush()
    # Interest crosses the mesh.  A request nobody answers yet fails at once
    # (no responders), so wait by the clock, not by a count of tries: under
    # load a route may be dialled again after a back-off of several seconds.
    deadline = asyncio.get_event_loop().time() + 60
    while asyncio.get_event_loop().time() < deadline:
        ok = True
        for i, nc in enumerate(ncs):
            for j in range(len(ncs)):
                try:
                    await nc.request("svc.%s.%d" % (tag, j), b"?", timeout=0.5)
                except Exception:
                    ok = False
        if ok:
            break
        await asyncio.sleep(0.1)
    for i, nc in enumerate(ncs):
        await nc.publish("mesh." + tag, b"from-%d" % i)
    for k in range(300):
        await ncs[k % len(ncs)].publish("work." + tag, b"w")
    replies = []
    for i, nc in enumerate(ncs):
        for j in range(len(ncs)):
            replies.append((await nc.request("svc.%s.%d" % (tag, j), b"?", timeout=3)).data == b"from-%d" % j)
    for nc in ncs:
        await nc.flush()
    await asyncio.sleep(0.5)
    for nc in ncs:
        await nc.close()
    return got, counts, replies


class ThreeNodeMesh(TestCase):
    """eventsvc, a nats-server 2.9 node dialling it, and another dialling that one: one mesh, by gossip."""

    timeout = 180

    def reference_args(self, name):
        """More nats-server arguments for node C{name} (n1, n2): none."""
        return ()

    def setUp(self):
        if nats is None:
            process.require("nats-py")
        # Every port is taken by the server that listens on it (port 0, or
        # nats-server's -1) and read from its log, never picked beforehand:
        # under trial -j2 a port found free here could be another test's by
        # the time a server listened on it, and nats-server, which opens its
        # route port after saying it is ready, then exited under the test
        # ("no servers available").  So eventsvc starts first; n1 dials it
        # and n2 dials n1 (each has a configured route, which clustered
        # JetStream needs); gossip makes the mesh.
        self.config = os.path.abspath(self.mktemp() + ".toml")
        self.write_config(0)
        self.ours = process.eventsvc(self.config, expect=("service", "routes"))
        self.client_port = self.ours.start()
        self.addCleanup(lambda: self.ours.stop())
        self.nodes = []
        for name in ("n1", "n2"):
            dial = self.nodes[0].ports["route"] if self.nodes else self.ours.ports["routes"]
            node = process.nats_server("--cluster", "nats://127.0.0.1:-1", "--cluster_name", "mesh",
                                       "--routes", "nats://127.0.0.1:%d" % dial, *self.reference_args(name), expect=("route",))
            node.start()
            self.addCleanup(node.stop)
            self.nodes.append(node)

    def write_config(self, cluster_port: int) -> None:
        """eventsvc's configuration: its client port any free one, its cluster port C{cluster_port} (0: any)."""
        process.write_config(
            self.config,
            '[service]\nhost = "127.0.0.1"\nport = 0\n[cluster]\nenabled = true\nname = "mesh"\nhost = "127.0.0.1"\n'
            'port = %d\n' % cluster_port,
        )


class ReadinessTests(TestCase):
    """What ThreeNodeMesh relies on: a server is ready once every listener it needs listens."""

    def test_a_taken_route_port_is_not_ready(self):
        """
        nats-server says it listens for clients, then opens its route port
        and exits if that is taken: waiting for the route listener too, the
        start fails at once, naming why, instead of handing a test a server
        about to go (its clients then heard "no servers available").
        """
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            node = process.nats_server("--cluster", "nats://127.0.0.1:%d" % taken.getsockname()[1], expect=("route",))
            with self.assertRaises(AssertionError) as caught:
                node.start()
            node.stop()
        self.assertIn("exited early", str(caught.exception))
        self.assertIn("Error listening on router port", str(caught.exception))

    def test_the_route_port_is_read_from_the_log(self):
        node = process.nats_server("--cluster", "nats://127.0.0.1:-1", expect=("route",))
        port = node.start()
        self.addCleanup(node.stop)
        self.assertNotEqual(node.ports["route"], port)
        with __import__("socket").create_connection(("127.0.0.1", node.ports["route"]), timeout=5) as s:
            self.assertTrue(s.recv(4096).startswith(b"INFO "))


class MeshTests(ThreeNodeMesh):
    def check(self, result):
        got, counts, replies = result
        for i, messages in got.items():
            self.assertEqual(sorted(messages), [b"from-0", b"from-1", b"from-2"], (i, got))
        self.assertEqual(sum(counts.values()), 300, counts)
        self.assertTrue(all(replies), replies)

    @defer.inlineCallbacks
    def test_mesh_with_reference_servers(self):
        ports = [self.nodes[0].port, self.nodes[1].port, self.client_port]
        result = yield run(lambda: mesh_round(ports, "first"))
        self.check(result)
        # Restart the eventsvc node on its cluster port, as an operator
        # would: the mesh heals (A dials it again, B hears of it).
        self.write_config(self.ours.ports["routes"])
        self.assertIn(self.ours.stop(), (0, -signal.SIGTERM))
        self.ours = process.eventsvc(self.config, expect=("service", "routes"))
        ports[2] = yield threads.deferToThread(self.ours.start)
        result = yield run(lambda: mesh_round(ports, "second"))
        self.check(result)
        # Two routes up again: the one A dialled, and the one B dialled after gossip.
        self.ours.wait_output(" up, ")
        for _ in range(100):
            if self.ours.output().count(" up, ") >= 2:
                break
            time.sleep(0.05)
        self.assertEqual(self.ours.output().count(" up, "), 2, self.ours.output())


class JetStreamClusterMeshTests(MeshTests):
    """
    The two nats-server nodes run clustered JetStream (one JetStream, their
    meta group): eventsvc, without [jetstream], keeps a route to each (it
    refused the second one's, "a second JetStream", and the mesh was cut).
    """

    def reference_args(self, name):
        return ("--server_name", name, "-js", "-sd", os.path.abspath(self.mktemp()))

    @defer.inlineCallbacks
    def test_mesh_with_reference_servers(self):
        ports = [self.nodes[0].port, self.nodes[1].port, self.client_port]
        result = yield run(lambda: mesh_round(ports, "js"))
        self.check(result)
        self.assertNotIn("refused: JetStream", self.ours.output())


class HeadersAcrossMeshTests(ThreeNodeMesh):
    """HMSG over routes, both ways, with nats-server nodes: headers arrive intact."""

    @defer.inlineCallbacks
    def test_headers_cross_every_way(self):
        ports = [self.nodes[0].port, self.nodes[1].port, self.client_port]

        async def scenario():
            ncs = [await nats.connect("nats://127.0.0.1:%d" % p) for p in ports]
            got = {i: [] for i in range(3)}
            for i, nc in enumerate(ncs):
                async def keep(msg, i=i):
                    got[i].append((msg.data, dict(msg.headers or {})))

                async def echo(msg, i=i, nc=nc):
                    await nc.publish(msg.reply, b"from-%d" % i, headers={"X-Answer": msg.headers.get("X-Ask", "")})

                await nc.subscribe("hdr.all", cb=keep)
                await nc.subscribe("hdr.svc.%d" % i, queue="q", cb=echo)
                await nc.flush()
            answers = []
            for _ in range(100):
                try:
                    for i, nc in enumerate(ncs):
                        for j in range(3):
                            if i != j:
                                await nc.request("hdr.svc.%d" % j, b"?", timeout=0.5, headers={"X-Ask": "%d-%d" % (i, j)})
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            for i, nc in enumerate(ncs):
                await nc.publish("hdr.all", b"m%d" % i, headers={"X-From": str(i), "X-Text": "caf\u00e9"})
            for i, nc in enumerate(ncs):
                for j in range(3):
                    reply = await nc.request("hdr.svc.%d" % j, b"?", timeout=3, headers={"X-Ask": "%d-%d" % (i, j)})
                    answers.append((reply.data, reply.headers.get("X-Answer")))
            for nc in ncs:
                await nc.flush()
            await asyncio.sleep(0.5)
            for nc in ncs:
                await nc.close()
            return got, answers

        got, answers = yield run(scenario)
        expected = sorted((b"m%d" % i, {"X-From": str(i), "X-Text": "caf\u00e9"}) for i in range(3))
        for i in range(3):
            self.assertEqual(sorted(got[i], key=lambda m: m[0]), expected, (i, got[i]))
        self.assertEqual(answers, [(b"from-%d" % j, "%d-%d" % (i, j)) for i in range(3) for j in range(3)])


def greeting(port: int) -> dict:
    """The INFO a server greets a client with."""
    import json
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data = b""
        while not data.endswith(b"\r\n"):
            data += s.recv(65536)
    return json.loads(data[5:])


class ConnectURLsWithReferenceTests(ThreeNodeMesh):
    """Every node's clients are told every node's client URL, nats-server's and ours alike."""

    @defer.inlineCallbacks
    def test_every_node_advertises_every_node(self):
        ports = [self.nodes[0].port, self.nodes[1].port, self.client_port]
        expected = sorted("127.0.0.1:%d" % p for p in ports)

        def wait():
            for _ in range(200):
                seen = [sorted(greeting(p).get("connect_urls", [])) for p in ports]
                if all(urls == expected for urls in seen):
                    return seen
                time.sleep(0.05)
            return seen

        seen = yield threads.deferToThread(wait)
        self.assertEqual(seen, [expected] * 3)
        self.assertEqual(greeting(self.client_port)["cluster"], "mesh")
        # A nats-py client of ours hears of the others (its reconnect pool).
        servers = yield run(lambda: discovered(self.client_port))
        self.assertEqual(sorted(servers), sorted("127.0.0.1:%d" % p for p in ports[:2]))


async def discovered(port: int) -> list:
    nc = await nats.connect("nats://127.0.0.1:%d" % port)
    found = ["%s:%d" % (u.hostname, u.port) for u in nc.discovered_servers]
    await nc.close()
    return found


class SplitDeploymentTests(TestCase):
    """
    The gateway on its own process, linked to the service's: by a route
    (dialling its cluster port), or by the NATS gateway protocol as the Go
    programs are (event-gateway dialling event-service's gateway port).
    """

    timeout = 120

    #: (the service's section, the gateway process's section), by link.
    links = {
        "route": (
            '[cluster]\nenabled = true\nname = "events"\nhost = "127.0.0.1"\nport = {link}\n',
            '[cluster]\nenabled = true\nname = "events"\nlisten = false\nroutes = ["nats-route://127.0.0.1:{link}"]\n',
        ),
        "gateway": (
            '[supercluster]\nname = "event-service"\nhost = "127.0.0.1"\nport = {link}\n',
            '[supercluster]\nname = "event-gateway"\nhost = "127.0.0.1"\nport = {other}\n'
            '[[supercluster.gateways]]\nname = "event-service"\nurls = ["nats://127.0.0.1:{link}"]\n',
        ),
        "leaf": (
            '[leafnodes]\nhost = "127.0.0.1"\nport = {link}\n',
            '[leafnodes]\nlisten = false\n[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:{link}"\n',
        ),
    }

    def test_gateway_process_to_service_process(self):
        return self.split("route")

    def test_linked_by_the_gateway_protocol(self):
        return self.split("gateway")

    def test_linked_as_a_leaf_node(self):
        """The gateway process as a leaf node (spoke) of the service process."""
        return self.split("leaf")

    @defer.inlineCallbacks
    def split(self, link: str):
        if nats is None:
            process.require("nats-py")
        service_port, cluster_port, gateway_port = process.free_port(), process.free_port(), process.free_port()
        ports = dict(link=cluster_port, other=process.free_port())
        service_section, gateway_section = (text.format(**ports) for text in self.links[link])
        service_config = process.write_config(os.path.abspath(self.mktemp() + ".toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n'
        ) % service_port + service_section)
        gateway_config = process.write_config(os.path.abspath(self.mktemp() + ".toml"), (
            '[service]\nenabled = false\n[gateway]\nenabled = true\nhost = "127.0.0.1"\nport = %d\n'
            'disable_frontend_tls = true\ntokens = ["agent"]\n'
        ) % gateway_port + gateway_section)
        service = process.eventsvc(service_config, expect=("service",))
        service.start()
        self.addCleanup(service.stop)
        gateway = process.eventsvc(gateway_config, expect=("gateway",))
        gateway.start()
        self.addCleanup(lambda: gateway.stop())

        async def publish_round(tag: str, count: int):
            consumer = await nats.connect("nats://127.0.0.1:%d" % service_port)
            sub = await consumer.subscribe("habitat.event.>", queue="automate")
            await consumer.flush()
            agent = await nats.connect("nats://127.0.0.1:%d" % gateway_port, token="agent")
            # Wait for the interest to reach the gateway.
            for _ in range(100):
                await agent.publish("habitat.event.probe", b"")
                try:
                    await sub.next_msg(0.1)
                    break
                except nats.errors.TimeoutError:
                    pass
            while True:
                try:
                    await sub.next_msg(0.2)
                except nats.errors.TimeoutError:
                    break
            for i in range(count):
                await agent.publish("habitat.event.service_started", b"%s-%d" % (tag.encode(), i))
            got = [(await sub.next_msg(5)).data for _ in range(count)]
            try:
                await sub.next_msg(0.5)
                extra = True
            except nats.errors.TimeoutError:
                extra = False
            await agent.close()
            await consumer.close()
            return got, extra

        got, extra = yield run(lambda: publish_round("one", 100))
        self.assertEqual(got, [b"one-%d" % i for i in range(100)])
        self.assertFalse(extra, "a message arrived twice")
        # Cut the route: restart the gateway process; delivery resumes.
        gateway.stop()
        gateway = process.eventsvc(gateway_config, expect=("gateway",))
        yield process.started(self, gateway)
        got, extra = yield run(lambda: publish_round("two", 100))
        self.assertEqual(got, [b"two-%d" % i for i in range(100)])
        self.assertFalse(extra)


class TLSRouteProcessTests(TestCase):
    """Two eventsvc processes linked by a mutual-TLS route."""

    timeout = 120

    @defer.inlineCallbacks
    def test_tls_route(self):
        if nats is None:
            process.require("nats-py")
        directory = os.path.abspath(self.mktemp())
        made = process.cli("certs", "--out", os.path.join(directory, "certs"))
        self.assertEqual(made.returncode, 0, made.stderr)
        ports = [process.free_port() for _ in range(6)]
        configs = []
        for i in range(2):
            configs.append(process.write_config(os.path.join(directory, "node%d.toml" % i), (
                '[service]\nhost = "127.0.0.1"\nport = {client}\n'
                '[tls]\ncert_path = "certs/service.crt"\nkey_path = "certs/service.key"\nroot_ca_path = "certs/ca.crt"\n'
                '[monitor]\nport = {monitor}\n'
                '[cluster]\nenabled = true\nname = "tls"\nhost = "127.0.0.1"\nport = {cluster}\ntls = true\ntls_name = "localhost"\n{routes}'
            ).format(client=ports[i], cluster=ports[2 + i], monitor=ports[4 + i],
                     routes='routes = ["nats-route://127.0.0.1:%d"]\n' % ports[2] if i else "")))
        nodes = [process.eventsvc(c, expect=("service",)) for c in configs]
        for node in nodes:
            yield process.started(self, node)

        context = lambda: client_tls(os.path.join(directory, "certs"))

        async def scenario():
            # The address, not "localhost" (which may name ::1 first); the
            # name the certificates carry goes in tls_hostname.  A loaded
            # machine gets ten seconds to greet, not nats-py's two.
            options = dict(tls_hostname="localhost", connect_timeout=10)
            sub_nc = await nats.connect("tls://127.0.0.1:%d" % ports[0], tls=context(), **options)
            sub = await sub_nc.subscribe("across.tls")
            await sub_nc.flush()
            pub_nc = await nats.connect("tls://127.0.0.1:%d" % ports[1], tls=context(), **options)
            data = None
            deadline = time.monotonic() + 30  # until the route carries the interest
            while data is None and time.monotonic() < deadline:
                await pub_nc.publish("across.tls", b"secret")
                try:
                    data = (await sub.next_msg(0.1)).data
                except nats.errors.TimeoutError:
                    pass
            await pub_nc.close()
            await sub_nc.close()
            return data

        def routez(i: int) -> str:
            # What each node's routes say they carry: on a failure, which
            # side lost the interest (or the messages).
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/routez?subs=1" % ports[4 + i], timeout=5) as page:
                    return page.read().decode("utf-8", "replace")
            except Exception as e:
                return repr(e)

        def nodes_said() -> str:
            return "\n".join("node {}:\n{}\n/routez?subs=1: {}".format(i, nodes[i].output(), routez(i)) for i in range(2))

        try:
            data = yield run(scenario)
        except BaseException as e:
            self.fail("{!r}\n{}".format(e, nodes_said()))
        if data != b"secret":
            said = yield threads.deferToThread(nodes_said)
            self.fail("nothing crossed the route in 30 s\n" + said)
        nodes[0].wait_output(" up, ")


class TLSMeshWithReferenceTests(TestCase):
    """
    Routes over mutual TLS with nats-server 2.9: it dials eventsvc, eventsvc
    dials it, and the two nats-server nodes find each other by gossip.
    """

    timeout = 180

    @defer.inlineCallbacks
    def test_tls_mesh(self):
        if nats is None:
            process.require("nats-py")
        directory = os.path.abspath(self.mktemp())
        certs = os.path.join(directory, "certs")
        made = process.cli("certs", "--out", certs)
        self.assertEqual(made.returncode, 0, made.stderr)
        a, b, e = (process.free_port() for _ in range(3))
        tls_block = (
            'tls {{ cert_file: "{0}/service.crt", key_file: "{0}/service.key", ca_file: "{0}/ca.crt", '
            "verify: true, timeout: 3 }}".format(certs)
        )
        nodes = []
        for name, port, routes in (("a", a, ""), ("b", b, "routes: [nats-route://127.0.0.1:%d]" % e)):
            conf = process.write_config(os.path.join(directory, name + ".conf"), (
                "cluster {{\n  name: tlsmesh\n  listen: 127.0.0.1:{port}\n  {routes}\n  {tls}\n}}\n"
            ).format(port=port, routes=routes, tls=tls_block))
            nodes.append(process.nats_server("-c", conf))
        client_port = process.free_port()
        config = process.write_config(os.path.join(directory, "eventsvc.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n'
            '[tls]\ncert_path = "certs/service.crt"\nkey_path = "certs/service.key"\nroot_ca_path = "certs/ca.crt"\n'
            '[cluster]\nenabled = true\nname = "tlsmesh"\nhost = "127.0.0.1"\nport = {cluster}\ntls = true\n'
            'tls_name = "localhost"\nroutes = ["nats-route://127.0.0.1:{a}"]\n'
        ).format(client=client_port, cluster=e, a=a))
        ours = process.eventsvc(config, expect=("service",))
        # A first (eventsvc dials it), then eventsvc, then B (it dials eventsvc).
        for proc in (nodes[0], ours, nodes[1]):
            yield process.started(self, proc)

        context = lambda: client_tls(certs)

        servers = [nodes[0].port, nodes[1].port, ("tls://127.0.0.1:%d" % client_port, context())]
        got, counts, replies = yield run(lambda: mesh_round(servers, "tls"))
        for i, messages in got.items():
            self.assertEqual(sorted(messages), [b"from-0", b"from-1", b"from-2"], (i, got))
        self.assertEqual(sum(counts.values()), 300, counts)
        self.assertTrue(all(replies), replies)
        # Both routes of ours are TLS: the one it dialled and the one B dialled.
        ours.wait_output(" up, ")
        for _ in range(100):
            if ours.output().count(" up, ") >= 2:
                break
            time.sleep(0.05)
        self.assertEqual(ours.output().count(" up, "), 2, ours.output())
        self.assertNotIn("handshake", ours.output().lower())
        # A node whose certificate another CA signed is refused.
        stranger_certs = os.path.join(directory, "stranger")
        self.assertEqual(process.cli("certs", "--out", stranger_certs).returncode, 0)
        conf = process.write_config(os.path.join(directory, "c.conf"), (
            "cluster {{\n  name: tlsmesh\n  listen: 127.0.0.1:{port}\n  routes: [nats-route://127.0.0.1:{e}]\n  {tls}\n}}\n"
        ).format(port=process.free_port(), e=e, tls=tls_block.replace(certs, stranger_certs)))
        stranger = process.nats_server("-c", conf)
        yield process.started(self, stranger)
        yield threads.deferToThread(ours.wait_output, "failed before it was up")
        self.assertEqual(ours.output().count(" up, "), 2, ours.output())


class DynamicClusterNameTests(TestCase):
    """A nats-server with no cluster name takes eventsvc's and joins."""

    timeout = 120

    @defer.inlineCallbacks
    def test_nameless_reference_node_joins(self):
        if nats is None:
            process.require("nats-py")
        # Every port the kernel's, read from the logs; the node dials ours.
        config = process.write_config(os.path.abspath(self.mktemp() + ".toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n[cluster]\nenabled = true\nname = "named"\n'
            'host = "127.0.0.1"\nport = 0\n'
        ))
        ours = process.eventsvc(config, expect=("service", "routes"))
        client_port = yield process.started(self, ours)
        cluster_port = ours.ports["routes"]
        node = process.nats_server("--cluster", "nats://127.0.0.1:-1", "--routes", "nats-route://127.0.0.1:%d" % cluster_port)
        yield process.started(self, node)
        got, counts, replies = yield run(lambda: mesh_round([node.port, client_port], "dynamic"))
        for i, messages in got.items():
            self.assertEqual(sorted(messages), [b"from-0", b"from-1"], (i, got))
        self.assertEqual(sum(counts.values()), 300, counts)
        self.assertTrue(all(replies), replies)
        yield threads.deferToThread(node.wait_output, "Cluster name updated to named")


class RoutePermissionsWithReferenceTests(TestCase):
    """[cluster.permissions] against a nats-server peer: what we do not export never reaches it."""

    timeout = 120

    @defer.inlineCallbacks
    def test_export_and_import(self):
        if nats is None:
            process.require("nats-py")
        # Every port the kernel's, read from the logs; the node dials ours.
        config = process.write_config(os.path.abspath(self.mktemp() + ".toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n[cluster]\nenabled = true\nname = "perm"\n'
            'host = "127.0.0.1"\nport = 0\n[cluster.permissions]\nexport_allow = ["public.>", "_INBOX.>"]\n'
            'import_allow = ["in.>", "_INBOX.>"]\n[monitor]\nenabled = true\nhost = "127.0.0.1"\nport = 0\n'
        ))
        ours = process.eventsvc(config, expect=("service", "routes", "monitor"))
        client_port = yield process.started(self, ours)
        cluster_port, http_port = ours.ports["routes"], ours.ports["monitor"]
        node = process.nats_server("--cluster", "nats://127.0.0.1:-1", "--cluster_name", "perm",
                                   "--routes", "nats-route://127.0.0.1:%d" % cluster_port)
        yield process.started(self, node)

        async def scenario():
            theirs = await nats.connect("nats://127.0.0.1:%d" % node.port)
            mine = await nats.connect("nats://127.0.0.1:%d" % client_port)
            got_theirs, got_mine = [], []

            async def keep_theirs(msg):
                got_theirs.append(msg.subject)

            async def keep_mine(msg):
                got_mine.append(msg.subject)

            for subject in ("public.x", "secret.x"):
                await theirs.subscribe(subject, cb=keep_theirs)
            for subject in ("in.x", "out.x"):
                await mine.subscribe(subject, cb=keep_mine)
            await theirs.flush()
            await mine.flush()
            # Until interest has crossed: a marker each way.
            for _ in range(100):
                await mine.publish("public.x", b"probe")
                await theirs.publish("in.x", b"probe")
                await asyncio.sleep(0.05)
                if got_theirs and got_mine:
                    break
            del got_theirs[:], got_mine[:]
            for subject in ("public.x", "secret.x"):
                await mine.publish(subject, b"m")
            for subject in ("in.x", "out.x"):
                await theirs.publish(subject, b"t")
            await mine.flush()
            await theirs.flush()
            await asyncio.sleep(0.5)
            await theirs.close()
            await mine.close()
            return got_theirs, got_mine

        got_theirs, got_mine = yield run(scenario)
        self.assertEqual(got_theirs, ["public.x"])
        self.assertEqual(got_mine, ["in.x"])
        # /routez shows them in nats-server's shape.
        import json
        import urllib.request

        with urllib.request.urlopen("http://127.0.0.1:%d/routez" % http_port, timeout=5) as answer:
            (route,) = json.load(answer)["routes"]
        self.assertEqual((route["import"], route["export"]), ({"allow": ["in.>", "_INBOX.>"]}, {"allow": ["public.>", "_INBOX.>"]}))
        for key in ("start", "last_activity", "uptime", "idle", "in_msgs", "subscriptions"):
            self.assertIn(key, route)
        self.assertTrue(route["start"].endswith("Z") and route["uptime"].endswith("s"), route)


class LeafOriginOverRouteTests(TestCase):
    """
    A nats-server peer with a leaf node from a named cluster: nats-server
    tells a route that says C{lnoc} of that leaf's interest as
    C{LS+ <origin> $G <subject>} and forwards its messages as
    C{LMSG <origin> $G <subject> <hdr> <size>}.  We say C{lnoc}, so we must
    read both (we closed the route with an unknown operation before).
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_leaf_interest_and_messages_cross_the_route(self):
        if nats is None:
            process.require("nats-py")
        cluster_port, client_port, leaf_port = process.free_port(), process.free_port(), process.free_port()
        config = process.write_config(os.path.abspath(self.mktemp() + ".toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n[cluster]\nenabled = true\nname = "hub"\n'
            'host = "127.0.0.1"\nport = %d\n'
        ) % (client_port, cluster_port))
        ours = process.eventsvc(config, expect=("service",))
        yield process.started(self, ours)
        hub_conf = process.write_config(os.path.abspath(self.mktemp() + ".conf"), (
            'cluster { name: hub, listen: "127.0.0.1:%d", routes: ["nats-route://127.0.0.1:%d"] }\n'
            'leafnodes { listen: "127.0.0.1:%d" }\n'
        ) % (process.free_port(), cluster_port, leaf_port))
        hub = process.nats_server("-c", hub_conf)
        yield process.started(self, hub)
        edge_conf = process.write_config(os.path.abspath(self.mktemp() + ".conf"), (
            'cluster { name: edge, listen: "127.0.0.1:%d" }\n'
            'leafnodes { remotes: [ { url: "nats-leaf://127.0.0.1:%d" } ] }\n'
        ) % (process.free_port(), leaf_port))
        edge = process.nats_server("-c", edge_conf)
        yield process.started(self, edge)

        async def scenario():
            leaf = await nats.connect("nats://127.0.0.1:%d" % edge.port)
            mine = await nats.connect("nats://127.0.0.1:%d" % client_port)
            at_leaf, at_mine = [], []

            async def keep_leaf(msg):
                at_leaf.append((msg.subject, msg.data, msg.headers))

            async def keep_mine(msg):
                at_mine.append((msg.subject, msg.data, msg.headers))

            async def answer(msg):
                await msg.respond(b"from the leaf")

            await leaf.subscribe("to.leaf", cb=keep_leaf)
            await leaf.subscribe("svc.leaf", cb=answer)
            await mine.subscribe("to.us", cb=keep_mine)
            await leaf.flush()
            await mine.flush()
            for _ in range(200):
                await mine.publish("to.leaf", b"probe")
                await leaf.publish("to.us", b"probe")
                await asyncio.sleep(0.05)
                if at_leaf and at_mine:
                    break
            del at_leaf[:], at_mine[:]
            await mine.publish("to.leaf", b"plain")
            await leaf.publish("to.us", b"plain")
            await leaf.publish("to.us", b"with", headers={"k": "v"})
            reply = await mine.request("svc.leaf", b"?", timeout=3)
            await mine.flush()
            await leaf.flush()
            await asyncio.sleep(0.5)
            await leaf.close()
            await mine.close()
            return at_leaf, at_mine, reply.data

        at_leaf, at_mine, reply = yield run(scenario)
        self.assertEqual(at_leaf, [("to.leaf", b"plain", None)])
        self.assertEqual(at_mine, [("to.us", b"plain", None), ("to.us", b"with", {"k": "v"})])
        self.assertEqual(reply, b"from the leaf")
        self.assertNotIn("Unknown Protocol", ours.output())


def link_answer(port: int, connect: bytes) -> bytes:
    """
    What a link port answers C{CONNECT <connect>} and a PING with, as
    test_route's and test_leaf's tables hold it: its C{-ERR} lines and its
    PONG, nothing when it closed without a word.
    """
    from eventsvc.test.test_interop_reference import converse

    _, out = converse(port, [b"CONNECT " + connect + b"\r\nPING\r\n"])
    return b"".join(line + b"\r\n" for line in out.split(b"\r\n") if line.startswith(b"-ERR ") or line == b"PONG")


def same_link_answers(test: TestCase, reference: int, ours: int, table) -> "defer.Deferred[None]":
    """Each of C{table}'s CONNECTs to both ports: nats-server's answer is the table's, and ours is too."""

    def run():
        return [(connect, expected, link_answer(reference, connect), link_answer(ours, connect)) for connect, expected in table]

    def check(rows):
        differences = ["{!r}:\n  table:       {!r}\n  nats-server: {!r}\n  eventsvc:    {!r}".format(*row)
                       for row in rows if not row[1] == row[2] == row[3]]
        test.assertEqual(differences, [], "\n".join(differences))

    return threads.deferToThread(run).addCallback(check)


@defer.inlineCallbacks
def same_answers_on_port(test: TestCase, reference_conf: str, reference_port: str, ours_toml: str,
                         ours_port: str, table):
    """
    nats-server on C{reference_conf} and eventsvc on C{ours_toml}, each
    started as a user starts it; then L{same_link_answers} between the
    first's C{reference_port} and the second's C{ours_port}.
    """
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    reference = process.nats_server("-c", process.write_config(os.path.join(directory, "ref.conf"), reference_conf),
                                    expect=(reference_port,))
    yield process.started(test, reference)
    ours = process.eventsvc(process.write_config(os.path.join(directory, "ours.toml"), ours_toml),
                            expect=("service", ours_port))
    yield process.started(test, ours)
    yield same_link_answers(test, reference.ports[reference_port], ours.ports[ours_port], table)


class HandWrittenConnectTests(TestCase):
    """
    A route's CONNECTs sent by hand (field names in other cases, nulls,
    wrong types, credentials) to nats-server's route port and to ours:
    nats-server's answers byte for byte (test_route's ROUTE_CONNECTS).
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_same_answers(self):
        from eventsvc.test.test_route import ROUTE_CONNECTS

        yield same_answers_on_port(
            self, 'cluster { name: c1, listen: "127.0.0.1:-1", authorization { user: ru, password: rp } }\n', "route",
            '[service]\nhost = "127.0.0.1"\nport = 0\n[cluster]\nenabled = true\nname = "c1"\nhost = "127.0.0.1"\n'
            'port = 0\nuser = "ru"\npassword = "rp"\n', "routes", ROUTE_CONNECTS)
