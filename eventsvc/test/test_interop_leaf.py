"""
Leaf nodes with the reference server: eventsvc as the hub of nats-server
spokes (one alone, and two of one cluster), eventsvc as a spoke of a
nats-server hub, and a loop of the two; nats-py clients on every side.
"""

from __future__ import annotations

import asyncio
import os
import signal

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from eventsvc.test import process
from eventsvc.test.test_interop_cluster import run

try:
    import nats
except ImportError:  # pragma: no cover
    nats = None


def scratch(test: TestCase) -> str:
    """A fresh directory for C{test}'s configurations and files."""
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    return directory


async def until_answered(nc, subject: str, seconds: float = 45) -> None:
    """Wait by the clock until a request on C{subject} is answered (interest crossed)."""
    deadline = asyncio.get_event_loop().time() + seconds
    while True:
        try:
            await nc.request(subject, b"?", timeout=0.5)
            return
        except Exception:
            if asyncio.get_event_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def leaf_round(hub_port: int, spoke_port: int, tag: str) -> dict:
    """
    Clients on both sides: messages, a message with headers and requests
    both ways; a queue group with members on both sides (each message once,
    local members first), and groups whose members are all on the far side.
    """
    hub = await nats.connect("nats://127.0.0.1:%d" % hub_port)
    spoke = await nats.connect("nats://127.0.0.1:%d" % spoke_port)
    result: dict = {"hub": [], "spoke": [], "work": {"hub": 0, "spoke": 0}, "far": {"hub": 0, "spoke": 0}}

    def keeper(side):
        async def keep(msg):
            result[side].append((msg.subject, msg.data, dict(msg.headers or {})))
        return keep

    def counter(key, side):
        async def count(msg):
            result[key][side] += 1
        return count

    def answer(side, nc):
        async def respond(msg):
            await nc.publish(msg.reply, b"from-" + side.encode(), headers={"X-Side": side})
        return respond

    for side, nc, other in (("hub", hub, "spoke"), ("spoke", spoke, "hub")):
        await nc.subscribe("to.%s.%s" % (side, tag), cb=keeper(side))
        await nc.subscribe("svc.%s.%s" % (side, tag), cb=answer(side, nc))
        await nc.subscribe("work.%s" % tag, queue="w", cb=counter("work", side))
        # Members of "far.<side>" only on <side>: the other side's messages cross for them.
        await nc.subscribe("far.%s.%s" % (side, tag), queue="f", cb=counter("far", side))
        await nc.flush()
    await until_answered(hub, "svc.spoke.%s" % tag)
    await until_answered(spoke, "svc.hub.%s" % tag)
    await hub.publish("to.spoke.%s" % tag, b"down", headers={"X-Way": "down"})
    await spoke.publish("to.hub.%s" % tag, b"up")
    answers = []
    for nc, side in ((hub, "spoke"), (spoke, "hub")):
        reply = await nc.request("svc.%s.%s" % (side, tag), b"?", timeout=3)
        answers.append((reply.data, reply.headers.get("X-Side")))
    for i in range(100):
        await (hub if i % 2 else spoke).publish("work.%s" % tag, b"w")
        await hub.publish("far.spoke.%s" % tag, b"f")
        await spoke.publish("far.hub.%s" % tag, b"f")
    await hub.flush()
    await spoke.flush()
    await asyncio.sleep(0.7)
    result["answers"] = answers
    await hub.close()
    await spoke.close()
    return result


def get_json(port: int, path: str) -> dict:
    import json

    return json.loads(get_text(port, path))


def get_text(port: int, path: str) -> str:
    from urllib.request import urlopen

    with urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
        return r.read().decode("utf-8")


class _Checks:
    def check(self, result, tag: str) -> None:
        self.assertEqual(result["spoke"], [("to.spoke." + tag, b"down", {"X-Way": "down"})])
        self.assertEqual(result["hub"], [("to.hub." + tag, b"up", {})])
        self.assertEqual(result["answers"], [(b"from-spoke", "spoke"), (b"from-hub", "hub")])
        # Local members first: each side served its own fifty, and nothing twice.
        self.assertEqual(result["work"], {"hub": 50, "spoke": 50})
        self.assertEqual(result["far"], {"hub": 100, "spoke": 100})


class EventsvcHubTests(_Checks, TestCase):
    """A nats-server spoke dialling an eventsvc hub."""

    timeout = 150

    def setUp(self):
        if nats is None:
            process.require("nats-py")
        self.leaf_port, self.http_port = process.free_port(), process.free_port()
        directory = scratch(self)
        self.config = process.write_config(os.path.join(directory, "hub.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n'
            '[leafnodes]\nhost = "127.0.0.1"\nport = {leaf}\nuser = "spoke"\npassword = "s3cret"\n'
            '[monitor]\nhost = "127.0.0.1"\nport = {http}\n'
        ).format(client=0, leaf=self.leaf_port, http=self.http_port))
        self.spoke_config = process.write_config(os.path.join(directory, "spoke.conf"), (
            'leafnodes {{ remotes [ {{ url: "nats-leaf://spoke:s3cret@127.0.0.1:{leaf}" }} ] }}\n'
        ).format(leaf=self.leaf_port))

    @defer.inlineCallbacks
    def test_nats_server_spoke(self):
        hub = process.eventsvc(self.config, expect=("service",))
        hub_port = yield process.started(self, hub)
        their_http = process.free_port()
        spoke = process.nats_server("-c", self.spoke_config, "-m", str(their_http))
        spoke_port = yield process.started(self, spoke)
        self.check((yield run(lambda: leaf_round(hub_port, spoke_port, "first"))), "first")
        hub.wait_output("leaf node spoke")
        # Monitoring: /leafz in nats-server's shape (its own page of the same link), /varz, /metrics.
        our_http = self.http_port
        ours, theirs = get_json(our_http, "/leafz?subs=1"), get_json(their_http, "/leafz?subs=1")
        self.assertEqual(ours["leafnodes"], 1)
        self.assertEqual(set(ours["leafs"][0]), set(theirs["leafs"][0]))
        self.assertRegex(ours["leafs"][0]["rtt"], r"^[\d.]+(µs|ms|s)$")
        self.assertIn("$LDS.", " ".join(ours["leafs"][0]["subscriptions_list"]))
        self.assertGreaterEqual(ours["leafs"][0]["in_msgs"], 100)
        varz = get_json(our_http, "/varz")
        self.assertEqual((varz["leafnodes"], varz["leaf"]["port"]), (1, self.leaf_port))
        metrics = get_text(our_http, "/metrics")
        self.assertRegex(metrics, r'eventsvc_leafnode_links\{direction="inbound",leafnode="[^"]+"\} 1\.0')
        # The spoke goes away: its interest goes with it; it comes back and all is as before.
        spoke.stop()
        hub.wait_output("leaf node {} down".format(hub.output().split("leaf node spoke ")[1].split(" ")[0]))
        spoke = process.nats_server("-c", self.spoke_config)
        spoke_port = yield process.started(self, spoke)
        self.check((yield run(lambda: leaf_round(hub_port, spoke_port, "spoke-restarted"))), "spoke-restarted")
        # And the hub: the spoke dials it again.
        self.assertIn(hub.stop(), (0, -signal.SIGTERM))
        hub = process.eventsvc(self.config, expect=("service",))
        hub_port = yield process.started(self, hub)
        self.check((yield run(lambda: leaf_round(hub_port, spoke_port, "hub-restarted"))), "hub-restarted")

    @defer.inlineCallbacks
    def test_wrong_password_refused(self):
        hub = process.eventsvc(self.config, expect=("service",))
        yield process.started(self, hub)
        bad = process.write_config(self.spoke_config + ".bad", open(self.spoke_config).read().replace("s3cret", "wrong"))
        spoke = process.nats_server("-c", bad)
        yield process.started(self, spoke)
        hub.wait_output("refused: wrong credentials")
        self.assertNotIn("leaf node spoke", hub.output())


class EventsvcSpokeTests(_Checks, TestCase):
    """eventsvc dialling a nats-server hub."""

    timeout = 150

    @defer.inlineCallbacks
    def test_eventsvc_spoke(self):
        if nats is None:
            process.require("nats-py")
        directory = scratch(self)
        leaf_port = process.free_port()
        hub_config = process.write_config(os.path.join(directory, "hub.conf"), "leafnodes { port: %d }\n" % leaf_port)
        config = process.write_config(os.path.join(directory, "spoke.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n'
            '[leafnodes]\nlisten = false\n[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:{leaf}"\n'
        ).format(client=0, leaf=leaf_port))
        hub = process.nats_server("-c", hub_config)
        hub_port = yield process.started(self, hub)
        spoke = process.eventsvc(config, expect=("service",))
        spoke_port = yield process.started(self, spoke)
        self.check((yield run(lambda: leaf_round(hub_port, spoke_port, "first"))), "first")
        spoke.wait_output("leaf node hub")
        # The hub restarts on the same leaf port: the spoke dials it again.
        hub.stop()
        spoke.wait_output("down:")
        hub = process.nats_server("-c", hub_config)
        hub_port = yield process.started(self, hub)
        self.check((yield run(lambda: leaf_round(hub_port, spoke_port, "hub-restarted"))), "hub-restarted")


class TLSLeafTests(TestCase):
    """
    Leaf links over mutual TLS (INFO in plaintext, then TLS, as 2.9), both
    ways with nats-server; a spoke whose certificate another CA signed is
    refused and logged.
    """

    timeout = 150

    def setUp(self):
        if nats is None:
            process.require("nats-py")
        self.directory = scratch(self)
        self.certs = os.path.join(self.directory, "certs")
        self.assertEqual(process.cli("certs", "--out", self.certs).returncode, 0)
        self.tls_section = (
            '[tls]\ncert_path = "{0}/service.crt"\nkey_path = "{0}/service.key"\nroot_ca_path = "{0}/ca.crt"\n'
        ).format(self.certs)

    def reference_tls(self, certs: str) -> str:
        return 'tls {{ cert_file: "{0}/service.crt", key_file: "{0}/service.key", ca_file: "{0}/ca.crt", verify: true }}'.format(certs)

    @defer.inlineCallbacks
    def test_nats_server_spoke_over_tls(self):
        config = process.write_config(os.path.join(self.directory, "hub.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n{tls}'
            '[leafnodes]\nhost = "127.0.0.1"\nport = {leaf}\ntls = true\n'
        ).format(client=0, leaf=0, tls=self.tls_section))
        hub = process.eventsvc(config, expect=("service", "leafnodes"))
        yield process.started(self, hub)
        leaf_port = hub.ports["leafnodes"]
        spoke_conf = process.write_config(os.path.join(self.directory, "spoke.conf"), (
            'leafnodes {{ remotes [ {{ url: "tls://localhost:{leaf}", {tls} }} ] }}\n'
        ).format(leaf=leaf_port, tls=self.reference_tls(self.certs)))
        spoke = process.nats_server("-c", spoke_conf)
        yield process.started(self, spoke)
        # (The service listener is mutual TLS too: the hub's clients present certificates.)
        from eventsvc.test.test_interop_cluster import client_tls

        result = yield run(lambda: tls_round(hub.port, client_tls(self.certs), spoke.port))
        self.assertEqual(result, [b"up", b"down"])
        # A spoke from another CA: the handshake fails, and the hub says so.
        stranger = os.path.join(self.directory, "stranger")
        self.assertEqual(process.cli("certs", "--out", stranger).returncode, 0)
        bad_conf = process.write_config(os.path.join(self.directory, "stranger.conf"), (
            'leafnodes {{ remotes [ {{ url: "tls://localhost:{leaf}", {tls} }} ] }}\n'
        ).format(leaf=leaf_port, tls=self.reference_tls(stranger)))
        yield process.started(self, process.nats_server("-c", bad_conf))
        from twisted.internet import threads

        yield threads.deferToThread(hub.wait_output, "failed before it was up")
        self.assertEqual(hub.output().count("leaf node spoke"), 1, hub.output())

    @defer.inlineCallbacks
    def test_eventsvc_spoke_over_tls(self):
        hub_conf = process.write_config(os.path.join(self.directory, "hub.conf"), (
            "leafnodes {{ port: -1, {tls} }}\n"
        ).format(tls=self.reference_tls(self.certs)))
        hub = process.nats_server("-c", hub_conf, expect=("leafnode",))
        yield process.started(self, hub)
        leaf_port = hub.ports["leafnode"]
        config = process.write_config(os.path.join(self.directory, "spoke.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n{tls}[leafnodes]\nlisten = false\n'
            '[[leafnodes.remotes]]\nurl = "tls://127.0.0.1:{leaf}"\ntls_name = "localhost"\n'
        ).format(client=0, leaf=leaf_port, tls=self.tls_section))
        spoke = process.eventsvc(config, expect=("service",))
        yield process.started(self, spoke)
        from eventsvc.test.test_interop_cluster import client_tls

        result = yield run(lambda: tls_round(spoke.port, client_tls(self.certs), hub.port, hub_side=False))
        self.assertEqual(result, [b"up", b"down"])


async def tls_round(ours: int, context, theirs: int, hub_side: bool = True) -> list:
    """A message each way between a TLS client of ours and a plain client of theirs."""
    mine = await nats.connect("tls://127.0.0.1:%d" % ours, tls=context, tls_hostname="localhost")
    other = await nats.connect("nats://127.0.0.1:%d" % theirs)
    got = []

    async def keep(msg):
        got.append(msg.data)

    async def answer(msg):
        await msg.respond(b"ok")

    await mine.subscribe("t.mine", cb=keep)
    await other.subscribe("t.other", cb=keep)
    await other.subscribe("t.svc", cb=answer)
    await mine.flush()
    await other.flush()
    await until_answered(mine, "t.svc")
    await other.publish("t.mine", b"up")
    await other.flush()
    await asyncio.sleep(0.3)
    await mine.publish("t.other", b"down")
    await mine.flush()
    await asyncio.sleep(0.5)
    await mine.close()
    await other.close()
    return got


def operator_client(port: int, creds: str):
    """A client socket of an operator-mode nats-server, signed in with C{creds}, subscribed to "to.top"."""
    import json
    import socket

    from eventsvc.security.creds import nonce_signer

    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = b""
    while not data.endswith(b"\r\n"):
        data += s.recv(65536)
    nonce = json.loads(data[5:])["nonce"].encode()
    jwt, sig = nonce_signer(creds)(nonce)
    connect = {"verbose": False, "pedantic": False, "jwt": jwt, "sig": sig, "protocol": 1, "lang": "test", "version": "0"}
    s.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nSUB to.top 1\r\nPING\r\n")
    if not received(s, b"PONG\r\n"):
        raise AssertionError("the operator-mode hub did not take our credentials")
    return s


def received(s, wanted: bytes, seconds: float = 0.3) -> bool:
    """Whether C{wanted} arrives on socket C{s} within C{seconds} (other bytes are skipped)."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    data = b""
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
        if wanted in data:
            return True
    return wanted in data


class CredentialsTests(TestCase):
    """eventsvc as a spoke of a nats-server hub in operator mode, signing in with a .creds file; a mismatched one refused."""

    timeout = 120

    @defer.inlineCallbacks
    def test_operator_mode_hub(self):
        if nats is None:
            process.require("nats-py")
        from eventsvc.test import leafcreds

        directory = scratch(self)
        files = leafcreds.write(directory)
        leaf_port = process.free_port()
        hub = process.nats_server("-c", process.write_config(os.path.join(directory, "hub.conf"), leafcreds.hub_config(leaf_port, files["op.jwt"])))
        hub_port = yield process.started(self, hub)

        def spoke_config(name: str, creds: str) -> str:
            return process.write_config(os.path.join(directory, name + ".toml"), (
                '[service]\nhost = "127.0.0.1"\nport = {client}\n[leafnodes]\nlisten = false\n'
                '[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:{leaf}"\ncredentials = "{creds}"\n'
            ).format(client=0, leaf=leaf_port, creds=os.path.basename(creds)))

        spoke = process.eventsvc(spoke_config("spoke", files["user.creds"]), expect=("service",))
        spoke_port = yield process.started(self, spoke)

        # (nats-py signs in with credentials only with the nkeys package;
        # the hub's client here is a socket signing with our own signer.)
        top = operator_client(hub_port, files["user.creds"])
        self.addCleanup(top.close)

        async def scenario():
            edge = await nats.connect("nats://127.0.0.1:%d" % spoke_port)
            sub = await edge.subscribe("to.edge")
            await edge.flush()
            loop = asyncio.get_event_loop()
            down = up = False
            deadline = loop.time() + 45
            while not (down and up) and loop.time() < deadline:
                if not down:
                    await loop.run_in_executor(None, top.sendall, b"PUB to.edge 4\r\ndown\r\n")
                    try:
                        down = (await sub.next_msg(0.2)).data == b"down"
                    except nats.errors.TimeoutError:
                        pass
                if not up:
                    await edge.publish("to.top", b"up")
                    await edge.flush()
                    up = await loop.run_in_executor(None, received, top, b"MSG to.top 1 2\r\nup\r\n")
            await edge.close()
            return [down, up]

        self.assertEqual((yield run(scenario)), [True, True])
        # A seed that does not match the JWT: the hub refuses it, and we say so.
        bad = process.eventsvc(spoke_config("bad", files["bad.creds"]), expect=("service",))
        yield process.started(self, bad)
        from twisted.internet import threads

        yield threads.deferToThread(bad.wait_output, "Authorization Violation")
        self.assertNotIn("leaf node hub", bad.output())


class DenyTests(TestCase):
    """
    deny_imports and deny_exports on a remote, both ways with nats-server:
    an eventsvc spoke of a nats-server hub, and a nats-server spoke of an
    eventsvc hub (which honours the deny_pub its CONNECT carries).
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_deny_lists_both_ways(self):
        if nats is None:
            process.require("nats-py")
        directory = scratch(self)
        their_leaf, our_leaf = process.free_port(), process.free_port()
        hub = process.nats_server("-c", process.write_config(os.path.join(directory, "hub.conf"), "leafnodes { port: %d }\n" % their_leaf))
        their_hub = yield process.started(self, hub)
        ours = process.eventsvc(process.write_config(os.path.join(directory, "ours.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n[leafnodes]\nhost = "127.0.0.1"\nport = {leaf}\n'
            '[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:{theirs}"\n'
            'deny_imports = ["private.>"]\ndeny_exports = ["secret.>"]\n'
        ).format(client=0, leaf=our_leaf, theirs=their_leaf)), expect=("service",))
        our_port = yield process.started(self, ours)
        spoke = process.nats_server("-c", process.write_config(os.path.join(directory, "spoke.conf"), (
            'leafnodes {{ remotes [ {{ url: "nats-leaf://127.0.0.1:{leaf}", deny_imports: ["mine.>"] }} ] }}\n'
        ).format(leaf=our_leaf)))
        their_spoke = yield process.started(self, spoke)

        async def scenario():
            top = await nats.connect("nats://127.0.0.1:%d" % their_hub)
            mid = await nats.connect("nats://127.0.0.1:%d" % our_port)
            edge = await nats.connect("nats://127.0.0.1:%d" % their_spoke)
            got = {"top": [], "mid": [], "edge": []}
            for name, nc in (("top", top), ("mid", mid), ("edge", edge)):
                async def keep(msg, name=name):
                    got[name].append(msg.subject)

                await nc.subscribe(">", cb=keep)

                async def echo(msg, nc=nc):
                    await nc.publish(msg.reply, b"ok")

                await nc.subscribe("svc." + name, cb=echo)
                await nc.flush()
            for nc in (top, mid, edge):
                for target in ("top", "mid", "edge"):
                    await until_answered(nc, "svc." + target)
            await asyncio.sleep(0.3)
            for name in got:
                del got[name][:]
            await top.publish("private.a", b"")   # not imported by our spoke
            await top.publish("public.a", b"")
            await mid.publish("secret.b", b"")    # not exported to the hub
            await mid.publish("mine.b", b"")      # not imported by their spoke
            await mid.publish("public.b", b"")
            for nc in (top, mid, edge):
                await nc.flush()
            await asyncio.sleep(0.7)
            for nc in (top, mid, edge):
                await nc.close()
            return {name: sorted(s for s in subjects if not s.startswith(("svc.", "_INBOX."))) for name, subjects in got.items()}

        got = yield run(scenario)
        self.assertEqual(got["top"], ["mine.b", "private.a", "public.a", "public.b"])  # (its own private.a, by echo)
        self.assertEqual(got["mid"], ["mine.b", "public.a", "public.b", "secret.b"])
        self.assertEqual(got["edge"], ["public.a", "public.b", "secret.b"])


class ClusteredSpokesTests(TestCase):
    """
    A nats-server cluster "edge" of two servers, each a leaf of one eventsvc
    hub: nothing arrives twice (the hub keeps each spoke's interest and
    messages from the other, which has them by its route), and a queue
    group on the edge gets each of the hub's messages once.
    """

    timeout = 150

    @defer.inlineCallbacks
    def test_two_spokes_of_one_cluster(self):
        if nats is None:
            process.require("nats-py")
        directory = scratch(self)
        leaf_port = process.free_port()
        config = process.write_config(os.path.join(directory, "hub.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n[leafnodes]\nhost = "127.0.0.1"\nport = {leaf}\n'
        ).format(client=0, leaf=leaf_port))
        hub = process.eventsvc(config, expect=("service",))
        hub_port = yield process.started(self, hub)
        routes = [process.free_port(), process.free_port()]
        edge_ports = []
        for i, port in enumerate(routes):
            conf = process.write_config(os.path.join(directory, "edge%d.conf" % i), (
                'cluster {{ name: "edge", listen: "127.0.0.1:{me}", routes: ["nats-route://127.0.0.1:{other}"] }}\n'
                'leafnodes {{ remotes [ {{ url: "nats-leaf://127.0.0.1:{leaf}" }} ] }}\n'
            ).format(me=port, other=routes[1 - i], leaf=leaf_port))
            edge_ports.append((yield process.started(self, process.nats_server("-c", conf))))

        async def scenario():
            h = await nats.connect("nats://127.0.0.1:%d" % hub_port)
            e = [await nats.connect("nats://127.0.0.1:%d" % p) for p in edge_ports]
            got = {"hub": [], "e0": [], "e1": []}
            queue = {"e0": 0, "e1": 0}
            for name, nc in (("hub", h), ("e0", e[0]), ("e1", e[1])):
                async def keep(msg, name=name):
                    got[name].append(msg.data)

                async def echo(msg, name=name, nc=nc):
                    await nc.publish(msg.reply, name.encode())

                await nc.subscribe("all", cb=keep)
                await nc.subscribe("svc." + name, cb=echo)
                if name != "hub":
                    async def work(msg, name=name):
                        queue[name] += 1

                    await nc.subscribe("edge.work", queue="w", cb=work)
                await nc.flush()
            for nc in (h, e[0], e[1]):
                for target in ("hub", "e0", "e1"):
                    await until_answered(nc, "svc." + target)
            await h.publish("all", b"from-hub")
            await e[0].publish("all", b"from-e0")
            await e[1].publish("all", b"from-e1")
            for _ in range(100):
                await h.publish("edge.work", b"w")
            for nc in (h, e[0], e[1]):
                await nc.flush()
            await asyncio.sleep(0.7)
            for nc in (h, e[0], e[1]):
                await nc.close()
            return got, queue

        got, queue = yield run(scenario)
        expected = [b"from-e0", b"from-e1", b"from-hub"]
        for name in got:
            self.assertEqual(sorted(got[name]), expected, (name, got, hub.output()))
        self.assertEqual(sum(queue.values()), 100, queue)


class EdgeClusterOnHubClusterTests(TestCase):
    """
    A nats-server edge cluster whose two servers are leafs of different
    servers of a mixed hub cluster (E1 -> eventsvc H1, E2 -> nats-server
    H2; E1-E2 and H1-H2 routed): each hub server tells the other which
    cluster a leaf's interest and messages came from (LS+/LMSG <origin>), in
    both directions between eventsvc and nats-server, so nothing crosses
    into the edge twice and a queue group on the edge is served once.
    """

    timeout = 150

    @defer.inlineCallbacks
    def test_mixed_hub_cluster(self):
        if nats is None:
            process.require("nats-py")
        directory = scratch(self)
        h1_route, h2_route, h1_leaf, h2_leaf = (process.free_port() for _ in range(4))
        e_routes = [process.free_port(), process.free_port()]
        h1 = process.eventsvc(process.write_config(os.path.join(directory, "h1.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n'
            '[cluster]\nname = "core"\nhost = "127.0.0.1"\nport = {route}\nroutes = ["nats-route://127.0.0.1:{other}"]\n'
            '[leafnodes]\nhost = "127.0.0.1"\nport = {leaf}\n'
        ).format(client=0, route=h1_route, other=h2_route, leaf=h1_leaf)), expect=("service",))
        h2_conf = process.write_config(os.path.join(directory, "h2.conf"), (
            'cluster {{ name: "core", listen: "127.0.0.1:{route}", routes: ["nats-route://127.0.0.1:{other}"] }}\n'
            'leafnodes {{ listen: "127.0.0.1:{leaf}" }}\n'
        ).format(route=h2_route, other=h1_route, leaf=h2_leaf))
        ports = {"h1": (yield process.started(self, h1)), "h2": (yield process.started(self, process.nats_server("-c", h2_conf)))}
        for i, hub_leaf in enumerate((h1_leaf, h2_leaf)):
            conf = process.write_config(os.path.join(directory, "e%d.conf" % i), (
                'cluster {{ name: "edge", listen: "127.0.0.1:{me}", routes: ["nats-route://127.0.0.1:{other}"] }}\n'
                'leafnodes {{ remotes [ {{ url: "nats-leaf://127.0.0.1:{leaf}" }} ] }}\n'
            ).format(me=e_routes[i], other=e_routes[1 - i], leaf=hub_leaf))
            ports["e%d" % (i + 1)] = yield process.started(self, process.nats_server("-c", conf))

        async def scenario():
            ncs = {name: await nats.connect("nats://127.0.0.1:%d" % port) for name, port in ports.items()}
            got = {name: [] for name in ncs}
            served = {"e1": 0, "e2": 0}
            for name, nc in ncs.items():
                async def keep(msg, name=name):
                    got[name].append(msg.data)

                async def echo(msg, name=name, nc=nc):
                    await nc.publish(msg.reply, name.encode())

                await nc.subscribe("all", cb=keep)
                await nc.subscribe("svc." + name, cb=echo)
                if name in served:
                    async def work(msg, name=name):
                        served[name] += 1

                    await nc.subscribe("edge.work", queue="w", cb=work)
                await nc.flush()
            for nc in ncs.values():
                for target in ncs:
                    await until_answered(nc, "svc." + target)
            answers = []
            for nc in ncs.values():
                for target in ncs:
                    answers.append((await nc.request("svc." + target, b"?", timeout=3)).data.decode())
            for name, nc in ncs.items():
                await nc.publish("all", name.encode())
            for k in range(100):
                await ncs["h1" if k % 2 else "h2"].publish("edge.work", b"w")
            for nc in ncs.values():
                await nc.flush()
            await asyncio.sleep(1.0)
            for nc in ncs.values():
                await nc.close()
            return got, served, answers

        got, served, answers = yield run(scenario)
        for name in got:
            self.assertEqual(sorted(got[name]), [b"e1", b"e2", b"h1", b"h2"], (name, got))
        self.assertEqual(sum(served.values()), 100, served)
        self.assertEqual(answers, [t for _ in range(4) for t in ("h1", "h2", "e1", "e2")])


class LoopTests(TestCase):
    """eventsvc and nats-server each a leaf of the other: the loop is found and said, as nats-server says it."""

    timeout = 120

    @defer.inlineCallbacks
    def test_loop_detected(self):
        directory = scratch(self)
        ours, theirs = process.free_port(), process.free_port()
        config = process.write_config(os.path.join(directory, "ours.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {client}\n[leafnodes]\nhost = "127.0.0.1"\nport = {ours}\n'
            '[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:{theirs}"\n'
        ).format(client=0, ours=ours, theirs=theirs))
        conf = process.write_config(os.path.join(directory, "theirs.conf"), (
            'leafnodes {{ listen: "127.0.0.1:{theirs}", remotes [ {{ url: "nats-leaf://127.0.0.1:{ours}" }} ] }}\n'
        ).format(ours=ours, theirs=theirs))
        node = process.nats_server("-c", conf)
        yield process.started(self, node)
        server = process.eventsvc(config, expect=("service",))
        yield process.started(self, server)

        def seen() -> bool:
            for _ in range(300):
                if "Loop detected" in server.output() or "Loop detected" in node.output():
                    return True
                import time

                time.sleep(0.05)
            return False

        from twisted.internet import threads

        self.assertTrue((yield threads.deferToThread(seen)), server.output() + node.output())


class HandWrittenConnectTests(TestCase):
    """
    A spoke's CONNECTs sent by hand (field names in other cases, "User" and
    "PASS" among them, nulls, wrong types) to nats-server's leaf node port
    and to ours: nats-server's answers byte for byte (test_leaf's
    LEAF_CONNECTS).
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_same_answers(self):
        from eventsvc.test.test_interop_cluster import same_link_answers
        from eventsvc.test.test_leaf import LEAF_CONNECTS

        directory = scratch(self)
        reference = process.nats_server("-c", process.write_config(os.path.join(directory, "ref.conf"), (
            'leafnodes { listen: "127.0.0.1:-1", authorization { user: leaf, password: pw } }\n'
        )), expect=("leafnode",))
        yield process.started(self, reference)
        ours = process.eventsvc(process.write_config(os.path.join(directory, "ours.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[leafnodes]\nhost = "127.0.0.1"\nport = 0\nuser = "leaf"\npassword = "pw"\n'
        )), expect=("service", "leafnodes"))
        yield process.started(self, ours)
        yield same_link_answers(self, reference.ports["leafnode"], ours.ports["leafnodes"], LEAF_CONNECTS)
