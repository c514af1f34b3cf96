"""
Edge and hub with nats-server 2.9.10 (issue 29): JetStream in two
domains joined by a leaf link that a TCP proxy in this process can cut.

  - an eventsvc edge (domain edge) as a leaf of a three-node nats-server
    JetStream cluster (domain hub); the hub's R3 stream sources the
    edge's C{EVENTS} (C{event.>}); events acknowledged at the edge while
    the link is down for 30 s are all in the hub stream once it is back,
    each once; then C{kill -9} of the edge while it forwards, and again
    nothing missing and nothing twice;
  - a nats-server edge (domain edge) as a leaf of an eventsvc hub (domain
    hub), whose stream mirrors the edge's C{EVENTS} (and another sources
    it) across the same kind of outage, then across a C{kill -9} of the
    hub while it copies: the same sequences, each once.

And /jsz?streams=1 of a mirror and sources (one whose origin is missing)
against nats-server -js -m's.

Each side is started as a user starts it.  nats-py drives the clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from eventsvc.jetstream import sourcing
from eventsvc.test import process
from eventsvc.test.eventsamples import payload

try:
    import nats
except ImportError:  # pragma: no cover
    nats = None

#: How long the leaf link is down while the edge takes events (the issue's 30 s).
OUTAGE = float(os.environ.get("EVENTSVC_JSEDGE_OUTAGE", "30"))
#: Events taken at the edge while cut off, whose forwarding the edge's kill -9 interrupts.
KILL_BATCH = 10_000
#: Their size (bytes after the number): 20 MB in all, so that the copy
#: takes several flow control windows and the kill meets it half done.
KILL_PAD = 2000


class Proxy:
    """
    A TCP proxy from a loopback port to C{target}: L{cut} closes every
    connection and accepts none (a link down), L{mend} accepts again.
    """

    def __init__(self, target: int, rewrite: Optional[Tuple[bytes, bytes]] = None) -> None:
        """
        @param rewrite: (what, with) replaced in the target's INFOs:
            an eventsvc hub's INFO gives its spokes its own leaf port
            (C{leafnode_urls}), which a nats-server spoke would dial
            when the proxy is cut, around it.
        """
        self.target = target
        self.rewrite = rewrite
        self.port = process.free_port()
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._listener: Optional[socket.socket] = None
        self.mend()

    def mend(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            try:
                # (wakes the thread blocked in accept, which else keeps the port)
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                inner, _ = listener.accept()
            except OSError:
                return
            try:
                outer = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                inner.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    inner.close()
                    outer.close()
                    return
                self._sockets += [inner, outer]
            for a, b, rewrite in ((inner, outer, None), (outer, inner, self.rewrite)):
                threading.Thread(target=self._pipe, args=(a, b, rewrite), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, rewrite: Optional[Tuple[bytes, bytes]]) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if rewrite is not None and b"INFO " in data:
                    data = data.replace(*rewrite)
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def hub_cluster(directory: str, leaf_ports: List[int]) -> List[process.ServerProcess]:
    """Three nats-server nodes, JetStream domain hub, each accepting leaf nodes on its port of C{leaf_ports}."""
    routes = [process.free_port() for _ in range(3)]
    nodes = []
    for i in range(3):
        others = ", ".join('"nats-route://127.0.0.1:%d"' % routes[j] for j in range(3) if j != i)
        config = process.write_config(os.path.join(directory, "h%d.conf" % i), (
            'server_name: "h{i}"\n'
            'jetstream {{ domain: hub, store_dir: "{dir}/h{i}" }}\n'
            'cluster {{ name: hub, listen: "127.0.0.1:{route}", routes: [{others}] }}\n'
            'leafnodes {{ listen: "127.0.0.1:{leaf}" }}\n'
        ).format(i=i, dir=directory, route=routes[i], others=others, leaf=leaf_ports[i]))
        nodes.append(process.nats_server("-c", config))
    return nodes


async def request(nc: Any, subject: str, body: Any = None, timeout: float = 5.0) -> Dict[str, Any]:
    payload = b"" if body is None else json.dumps(body).encode()
    answer = await nc.request(subject, payload, timeout=timeout)
    return json.loads(answer.data)


async def until(what: str, check: Any, seconds: float) -> Any:
    """C{await check()} until it is true (returned), or fail after C{seconds} naming C{what} and the last value."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except Exception as e:  # noqa: BLE001 (a request that times out while a link is down: try again)
            last = e
        if last is True or (last and not isinstance(last, Exception) and last is not False):
            return last
        await asyncio.sleep(0.25)
    raise AssertionError("{} not so after {} s (last: {!r})".format(what, seconds, last))


async def stream_messages(nc: Any, api: str, stream: str, count: int) -> List[Tuple[int, bytes, Dict[str, str]]]:
    """(seq, data, headers) of the stream's messages 1..count, by STREAM.MSG.GET."""
    out = []
    for seq in range(1, count + 1):
        answer = await request(nc, "{}.STREAM.MSG.GET.{}".format(api, stream), {"seq": seq})
        if "message" not in answer:
            continue
        message = answer["message"]
        headers: Dict[str, str] = {}
        if message.get("hdrs"):
            for line in base64.b64decode(message["hdrs"]).decode().split("\r\n")[1:]:
                if ": " in line:
                    key, value = line.split(": ", 1)
                    headers[key] = value
        out.append((seq, base64.b64decode(message.get("data") or ""), headers))
    return out


async def publish_events(nc: Any, first: int, last: int, pad: int = 0) -> None:
    """Events e<n> (then C{pad} bytes after a "|") with acks from the edge's EVENTS stream, one by one."""
    for n in range(first, last + 1):
        data = b"e%d" % n + (b"|" + b"." * pad if pad else b"")
        ack = json.loads((await nc.request("event.test", data, timeout=5)).data)
        assert ack.get("stream") == "EVENTS" and "error" not in ack, ack


async def publish_typed(nc: Any, first: int, last: int, pad: int = 0) -> None:
    """
    Typed events (an eventsvc edge's event layer: cfgingest with event_id
    e<n>, and C{pad} bytes in a field of their own), each acknowledged
    {"success": true} once kept in the edge's EVENTS stream.
    """
    for n in range(first, last + 1):
        extra = {"padding": "." * pad} if pad else {}
        answer = json.loads((await nc.request("event.cfgingest", payload("cfgingest", "e%d" % n, **extra), timeout=10)).data)
        assert answer.get("success") is True, answer


def ident(data: bytes) -> bytes:
    """An event's e<n>: a typed event's event_id, or what comes before "|"."""
    if data.startswith(b"{"):
        return json.loads(data)["event_id"].encode()
    return data.split(b"|")[0]


def each_once(test: TestCase, held: List[Tuple[int, bytes, Dict[str, str]]], count: int) -> None:
    datas = [ident(data) for _, data, _ in held]
    test.assertEqual(sorted(datas), sorted(b"e%d" % n for n in range(1, count + 1)),
                     "missing: {}; twice: {}".format(
                         sorted(set(b"e%d" % n for n in range(1, count + 1)) - set(datas))[:10],
                         sorted({d for d in datas if datas.count(d) > 1})[:10]))


class EventsvcEdgeTests(TestCase):
    """An eventsvc edge, leaf of a three-node nats-server JetStream cluster; the hub's R3 stream sources EVENTS."""

    timeout = 400

    @defer.inlineCallbacks
    def test_outage_and_kill(self) -> None:
        if nats is None:
            process.require("nats-py")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        leaf_ports = [process.free_port() for _ in range(3)]
        nodes = hub_cluster(directory, leaf_ports)
        hub_ports = []
        for node in nodes:
            hub_ports.append((yield process.started(self, node)))
        proxy = Proxy(leaf_ports[0])
        self.addCleanup(proxy.cut)
        edge_port = process.free_port()
        # The edge's typed events are kept in its stream EVENTS (event.>),
        # whatever becomes of their handlers (whose target is down here).
        target = "http://127.0.0.1:%d" % process.free_port()
        config = process.write_config(os.path.join(directory, "edge.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{dir}/edge-data"\n'
            '[handlers]\nfeed = "{target}/feed"\ncfgingest = "{target}/cfgingest"\nevent_feed = "{target}/event_feed"\n'
            '[events]\nretry_initial = 1\nretry_max = 5\n'
            '[jetstream]\ndomain = "edge"\nstore_dir = "{dir}/edge"\n'
            '[leafnodes]\nlisten = false\n[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:{proxy}"\n'
        ).format(port=edge_port, dir=directory, proxy=proxy.port, target=target))
        edge = process.eventsvc(config, expect=("service",))
        yield process.started(self, edge)
        count = 0

        async def setup_and_outage() -> int:
            ec = await nats.connect("nats://127.0.0.1:%d" % edge_port)
            hc = await nats.connect("nats://127.0.0.1:%d" % hub_ports[1])
            events = await request(ec, "$JS.API.STREAM.INFO.EVENTS")
            self.assertEqual(events["config"]["subjects"], ["event.>"], "the event log's stream")

            refusals: List[Any] = []

            async def hub_stream() -> Any:
                answer = await request(hc, "$JS.hub.API.STREAM.CREATE.HUB", {
                    "name": "HUB", "num_replicas": 3,
                    "sources": [{"name": "EVENTS", "external": {"api": "$JS.edge.API", "deliver": ""}}]})
                refusals.append(answer.get("error"))
                return "error" not in answer or answer["error"].get("err_code") == 10058 or None

            try:
                # (the cluster elects its meta leader first)
                await until("the hub's R3 stream made", hub_stream, 60)
            except AssertionError:
                raise AssertionError("the hub's R3 stream not made in 60 s: {}".format(refusals[-3:]))
            await publish_typed(ec, 1, 20)

            async def hub_count(n: int) -> Any:
                info = await request(hc, "$JS.hub.API.STREAM.INFO.HUB")
                return info["state"]["messages"] >= n or None

            await until("20 events at the hub", lambda: hub_count(20), 30)
            proxy.cut()
            started = time.monotonic()
            await publish_typed(ec, 21, 120)  # acknowledged by the edge alone
            await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - started)))
            self.assertEqual((await request(hc, "$JS.hub.API.STREAM.INFO.HUB"))["state"]["messages"], 20,
                             "the hub took events while the link was down")
            proxy.mend()
            mended = time.monotonic()
            await until("120 events at the hub", lambda: hub_count(120), 60)
            print("nats-server hub: all 120 events {:.1f} s after the link came back".format(time.monotonic() - mended))
            held = await stream_messages(hc, "$JS.hub.API", "HUB", 130)
            each_once(self, held, 120)
            info = await request(hc, "$JS.hub.API.STREAM.INFO.HUB")
            self.assertEqual(info["sources"][0]["name"], "EVENTS")
            self.assertEqual(info["sources"][0]["external"], {"api": "$JS.edge.API", "deliver": ""})
            self.assertEqual(info["sources"][0]["lag"], 0)
            # nats-server names an external source by its stream and the hash of its API.
            self.assertEqual(held[0][2]["Nats-Stream-Source"], "EVENTS:n1VdnVvB 1")
            # Many more while the link is down, then kill -9 of the edge while it forwards them.
            proxy.cut()
            total = 120 + KILL_BATCH
            for first in range(121, total + 1, 500):
                await asyncio.gather(*(publish_typed(ec, n, n, KILL_PAD) for n in range(first, min(first + 500, total + 1))))
            await ec.close()
            proxy.mend()
            await until("the hub forwarding", lambda: hub_count(130), 60)
            edge.process.send_signal(signal.SIGKILL)
            info = await request(hc, "$JS.hub.API.STREAM.INFO.HUB")
            self.assertLess(info["state"]["messages"], total, "the edge had forwarded everything before its kill")
            await hc.close()
            return total

        count = yield threads.deferToThread(lambda: asyncio.run(setup_and_outage()))
        edge.stop(signal.SIGKILL)
        edge = process.eventsvc(config, expect=("service",))
        yield process.started(self, edge)

        async def after_kill() -> None:
            hc = await nats.connect("nats://127.0.0.1:%d" % hub_ports[2])

            async def hub_count() -> Any:
                info = await request(hc, "$JS.hub.API.STREAM.INFO.HUB")
                return info["state"]["messages"] >= count or None

            await until("every event at the hub after the edge's kill -9", hub_count, 90)
            await asyncio.sleep(2)  # nothing more comes (a duplicate would)
            held = await stream_messages(hc, "$JS.hub.API", "HUB", count + 10)
            each_once(self, held, count)
            await hc.close()

        yield threads.deferToThread(lambda: asyncio.run(after_kill()))


class NatsServerEdgeTests(TestCase):
    """A nats-server edge, leaf of an eventsvc hub whose stream mirrors the edge's EVENTS."""

    timeout = 300

    @defer.inlineCallbacks
    def test_outage_with_a_mirror(self) -> None:
        if nats is None:
            process.require("nats-py")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        leaf_port = process.free_port()
        hub_port = process.free_port()
        config = process.write_config(os.path.join(directory, "hub.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {port}\n'
            '[events]\nsubject_prefix = "agentevent"\n'
            '[jetstream]\ndomain = "hub"\nstore_dir = "{dir}/hub"\n'
            '[leafnodes]\nhost = "127.0.0.1"\nport = {leaf}\n'
        ).format(port=hub_port, dir=directory, leaf=leaf_port))
        hub = process.eventsvc(config, expect=("service",))
        yield process.started(self, hub)
        proxy = Proxy(leaf_port)
        proxy.rewrite = (b'"127.0.0.1:%d"' % leaf_port, b'"127.0.0.1:%d"' % proxy.port)
        self.addCleanup(proxy.cut)
        edge_config = process.write_config(os.path.join(directory, "edge.conf"), (
            'jetstream {{ domain: edge, store_dir: "{dir}/edge" }}\n'
            'leafnodes {{ remotes [ {{ url: "nats-leaf://127.0.0.1:{proxy}" }} ] }}\n'
        ).format(dir=directory, proxy=proxy.port))
        edge = process.nats_server("-c", edge_config)
        edge_port = yield process.started(self, edge)

        async def scenario() -> None:
            ec = await nats.connect("nats://127.0.0.1:%d" % edge_port)
            hc = await nats.connect("nats://127.0.0.1:%d" % hub_port)
            created = await request(ec, "$JS.API.STREAM.CREATE.EVENTS", {"name": "EVENTS", "subjects": ["event.>"]})
            assert "error" not in created, created
            await publish_events(ec, 1, 10)
            created = await request(hc, "$JS.hub.API.STREAM.CREATE.MIRROR", {
                "name": "MIRROR", "mirror": {"name": "EVENTS", "external": {"api": "$JS.edge.API", "deliver": ""}}})
            assert "error" not in created, created
            # and a source of it beside the mirror, through the same outage and kill
            created = await request(hc, "$JS.hub.API.STREAM.CREATE.SOURCED", {
                "name": "SOURCED", "sources": [{"name": "EVENTS", "external": {"api": "$JS.edge.API", "deliver": ""}}]})
            assert "error" not in created, created

            async def hub_count(n: int) -> Any:
                info = await request(hc, "$JS.hub.API.STREAM.INFO.MIRROR")
                return info["state"]["messages"] >= n or None

            await until("10 events in the mirror", lambda: hub_count(10), 30)
            proxy.cut()
            started = time.monotonic()
            await publish_events(ec, 11, 110)
            await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - started)))
            self.assertEqual((await request(hc, "$JS.hub.API.STREAM.INFO.MIRROR"))["state"]["messages"], 10,
                             "the mirror took events while the link was down")
            proxy.mend()
            mended = time.monotonic()
            await until("110 events in the mirror", lambda: hub_count(110), 60)
            print("eventsvc hub: all 110 events {:.1f} s after the link came back".format(time.monotonic() - mended))
            mine = await stream_messages(hc, "$JS.hub.API", "MIRROR", 115)
            theirs = await stream_messages(ec, "$JS.API", "EVENTS", 115)
            self.assertEqual([(seq, data) for seq, data, _ in mine], [(seq, data) for seq, data, _ in theirs])
            each_once(self, mine, 110)
            info = await request(hc, "$JS.hub.API.STREAM.INFO.MIRROR")
            self.assertEqual((info["mirror"]["name"], info["mirror"]["lag"]), ("EVENTS", 0))
            self.assertLess(info["mirror"]["active"], 3_000_000_000)
            # Many more while cut off; the hub is killed with kill -9 while it copies them.
            proxy.cut()
            total = 110 + KILL_BATCH
            for first in range(111, total + 1, 500):
                await asyncio.gather(*(publish_events(ec, n, n, KILL_PAD) for n in range(first, min(first + 500, total + 1))))
            proxy.mend()
            # (asked without a pause: the hub copies thousands a second)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                info = await request(hc, "$JS.hub.API.STREAM.INFO.MIRROR")
                if info["state"]["messages"] > 110:
                    break
            hub.process.send_signal(signal.SIGKILL)
            self.assertLess(info["state"]["messages"], total, "the hub had copied everything before its kill")
            await ec.close()
            return total

        total = yield threads.deferToThread(lambda: asyncio.run(scenario()))
        hub.stop(signal.SIGKILL)
        hub = process.eventsvc(config, expect=("service",))
        yield process.started(self, hub)

        async def after_kill() -> None:
            ec = await nats.connect("nats://127.0.0.1:%d" % edge_port)
            hc = await nats.connect("nats://127.0.0.1:%d" % hub_port)

            async def hub_count() -> Any:
                info = await request(hc, "$JS.hub.API.STREAM.INFO.MIRROR")
                return info["state"]["last_seq"] >= total or None

            async def sourced_count() -> Any:
                info = await request(hc, "$JS.hub.API.STREAM.INFO.SOURCED")
                return info["state"]["messages"] >= total or None

            await until("every event in the mirror after the hub's kill -9", hub_count, 90)
            await until("every event in the source after the hub's kill -9", sourced_count, 90)
            await asyncio.sleep(2)  # nothing more comes (a duplicate would)
            mine = await stream_messages(hc, "$JS.hub.API", "MIRROR", total)
            theirs = await stream_messages(ec, "$JS.API", "EVENTS", total)
            self.assertEqual([(seq, data) for seq, data, _ in mine], [(seq, data) for seq, data, _ in theirs])
            each_once(self, mine, total)
            sourced = await stream_messages(hc, "$JS.hub.API", "SOURCED", total + 10)
            each_once(self, sourced, total)
            origins = [headers["Nats-Stream-Source"] for _, _, headers in sourced]
            self.assertEqual(sorted(origins, key=lambda value: int(value.split()[1])),
                             ["EVENTS:%s %d" % (sourcing.go_hash("$JS.edge.API"), n) for n in range(1, total + 1)])
            await ec.close()
            await hc.close()

        yield threads.deferToThread(lambda: asyncio.run(after_kill()))


class MonitorAgainstNatsServerTests(TestCase):
    """/jsz?streams=1 shows a mirror and sources (one whose origin is missing) as nats-server -js -m shows them."""

    timeout = 120

    @defer.inlineCallbacks
    def test_jsz_mirror_and_sources(self) -> None:
        if nats is None:
            process.require("nats-py")
        import urllib.request

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        monitors = [process.free_port(), process.free_port()]
        reference = process.nats_server("-js", "-sd", os.path.join(directory, "ref"), "-m", str(monitors[0]))
        config = process.write_config(os.path.join(directory, "es.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n[monitor]\nhost = "127.0.0.1"\nport = {}\n'
            '[jetstream]\nstore_dir = "{}"\n').format(monitors[1], os.path.join(directory, "es")))
        ours = process.eventsvc(config)
        ports = [(yield process.started(self, reference)), (yield process.started(self, ours))]

        async def make(port: int) -> None:
            nc = await nats.connect("nats://127.0.0.1:%d" % port)
            for body in ({"name": "O", "subjects": ["o"]},
                         {"name": "S", "sources": [{"name": "O"}, {"name": "NOPE"}]},
                         {"name": "M", "mirror": {"name": "O"}}):
                answer = await request(nc, "$JS.API.STREAM.CREATE." + body["name"], body)
                assert "error" not in answer, answer
            await nc.request("o", b"x", timeout=5)
            await asyncio.sleep(2.5)
            await nc.close()

        def shown(monitor: int) -> Any:
            with urllib.request.urlopen("http://127.0.0.1:%d/jsz?streams=1&consumers=1" % monitor) as answer:
                page = json.loads(answer.read())
            details = {d["name"]: d for d in page["account_details"][0]["stream_detail"]}

            def norm(info: Optional[Dict[str, Any]]) -> Any:
                # (active: nanoseconds since the last word; heard within the heartbeat's second, or never)
                return None if info is None else dict(info, active=0 <= info["active"] < 2_000_000_000 or info["active"])

            def sources(detail: Dict[str, Any]) -> Any:
                # By name: nats-server keeps them in a map, so its order changes from run to run.
                return sorted((norm(s) for s in detail.get("sources") or []), key=lambda s: s["name"])

            return (page["consumers"],
                    {name: (norm(d.get("mirror")), sources(d), d.get("consumer_detail"), d["state"]["messages"])
                     for name, d in sorted(details.items())})

        # (Both servers at once: each is given its 2.5 s to show the sources' state.)
        yield defer.gatherResults([threads.deferToThread(lambda port=port: asyncio.run(make(port))) for port in ports], consumeErrors=True)
        theirs, mine = yield threads.deferToThread(lambda: (shown(monitors[0]), shown(monitors[1])))
        self.assertEqual(mine, theirs)
        self.assertEqual(mine[1]["S"][1][0]["error"]["description"], "stream not found")
