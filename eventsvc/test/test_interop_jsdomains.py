"""
JetStream domains over a leaf link, with the reference server: an eventsvc
spoke (domain edge) of a nats-server C{-js} hub (domain hub), a nats-server
spoke of an eventsvc hub, and both sides in one domain (a misconfiguration).
nats-py clients on each side reach the other side's streams through
C{nc.jetstream(domain=...)}; the plain C{$JS.API} of each side is answered
by that side alone.
"""

from __future__ import annotations

import asyncio
import json
import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from eventsvc.test import process
from eventsvc.test.test_interop_cluster import run
from eventsvc.test.test_interop_leaf import get_json, scratch

try:
    import nats
except ImportError:  # pragma: no cover
    nats = None


async def answers(nc, subject: str, payload: bytes = b"", wait: float = 0.6) -> list:
    """Every answer to one request on C{subject} within C{wait} seconds (decoded JSON), however many come."""
    inbox = nc.new_inbox()
    got: list = []

    async def keep(msg):
        got.append(json.loads(msg.data) if msg.data else msg.headers)

    sub = await nc.subscribe(inbox, cb=keep)
    await nc.publish(subject, payload, reply=inbox)
    await nc.flush()
    await asyncio.sleep(wait)
    await sub.unsubscribe()
    return got


async def until_reachable(nc, domain: str, seconds: float = 30) -> None:
    """Wait until C{$JS.<domain>.API.INFO} is answered (the far side's interest has crossed)."""
    deadline = asyncio.get_event_loop().time() + seconds
    while True:
        try:
            await nc.request("$JS.%s.API.INFO" % domain, b"", timeout=0.5)
            return
        except Exception:
            if asyncio.get_event_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def far_stream(nc, domain: str, stream: str) -> dict:
    """
    Through C{domain}'s API from this side: create C{stream}, publish three
    messages with PubAcks, read them back with a durable pull consumer
    (acked with ack_sync: the ack crosses back; each message shows its
    stream subject, not the pull request's inbox), and get one by sequence.
    """
    await until_reachable(nc, domain)
    js = nc.jetstream(domain=domain)
    subject = stream.lower()
    info = await js.add_stream(name=stream, subjects=[subject + ".>"])
    acks = [await js.publish("%s.%d" % (subject, i), b"m%d" % i) for i in range(3)]
    psub = await js.pull_subscribe(subject + ".>", durable="reader", stream=stream)
    msgs = await psub.fetch(3, timeout=5)
    for msg in msgs:
        await msg.ack_sync()
    consumer = await js.consumer_info(stream, "reader")
    got = await js.get_msg(stream, 2)
    # A push consumer: its deliveries cross to our inbox, our acks cross back.
    pushed = []
    push = await js.subscribe(subject + ".>", durable="pusher", stream=stream, manual_ack=True)
    for _ in range(3):
        msg = await push.next_msg(timeout=5)
        pushed.append(msg.subject)
        await msg.ack_sync()
    await push.unsubscribe()
    # A key-value bucket in that domain: $JS.<domain>.API.$KV.> is its $KV.>
    # (nats-py 2.16's kv.put publishes to $KV.> whatever the domain, which no
    # leaf link carries, between two nats-servers either: the put is by hand).
    kv = await js.create_key_value(bucket=stream + "_KV")
    for value in (b"v1", b"v2"):
        await nc.request("$JS.%s.API.$KV.%s_KV.k" % (domain, stream), value, timeout=5)
    entry = await kv.get("k")
    return {
        "pushed": pushed,
        "kv": (entry.value, entry.revision),
        "created": info.config.name,
        "acks": [(a.stream, a.seq, a.domain) for a in acks],
        "read": [(m.subject, m.data) for m in msgs],
        "acked": consumer.ack_floor.stream_seq,
        "get": got.data,
    }


async def both_ways(spoke_port: int, hub_port: int) -> dict:
    """Each side reaches the other's domain; then the plain $JS.API of each is asked, once."""
    spoke = await nats.connect("nats://127.0.0.1:%d" % spoke_port)
    hub = await nats.connect("nats://127.0.0.1:%d" % hub_port)
    try:
        out = {"hub_from_spoke": await far_stream(spoke, "hub", "AT_HUB"),
               "edge_from_hub": await far_stream(hub, "edge", "AT_EDGE")}
        for side, nc in (("spoke", spoke), ("hub", hub)):
            out[side + "_info"] = [a.get("domain") for a in await answers(nc, "$JS.API.INFO")]
            out[side + "_names"] = [sorted(a.get("streams")) for a in await answers(nc, "$JS.API.STREAM.NAMES")]
        # A request for a domain is answered once, by that domain, from either side.
        out["hub_api_from_hub"] = [sorted(a.get("streams")) for a in await answers(hub, "$JS.hub.API.STREAM.NAMES")]
        out["edge_api_from_spoke"] = [sorted(a.get("streams")) for a in await answers(spoke, "$JS.edge.API.STREAM.NAMES")]
        out["hub_api_from_spoke"] = [sorted(a.get("streams")) for a in await answers(spoke, "$JS.hub.API.STREAM.NAMES")]
        return out
    finally:
        await spoke.close()
        await hub.close()


class _Checks:
    """What both leaf arrangements (eventsvc spoke, eventsvc hub) check, and their set-up."""

    timeout = 120

    def setUp(self):
        if nats is None:
            process.require("nats-py")
        self.directory = scratch(self)

    def check(self, result: dict) -> None:
        for key, stream, domain in (("hub_from_spoke", "AT_HUB", "hub"), ("edge_from_hub", "AT_EDGE", "edge")):
            self.assertEqual(result[key], {
                "pushed": [stream.lower() + ".%d" % i for i in range(3)], "kv": (b"v2", 2),
                "created": stream, "acks": [(stream, 1, domain), (stream, 2, domain), (stream, 3, domain)],
                "read": [(stream.lower() + ".%d" % i, b"m%d" % i) for i in range(3)], "acked": 3, "get": b"m1",
            })
        # The plain API: one answer, from the side asked, naming only its own streams.
        self.assertEqual(result["spoke_info"], ["edge"])
        self.assertEqual(result["hub_info"], ["hub"])
        self.assertEqual(result["spoke_names"], [sorted(["AT_EDGE", "KV_AT_EDGE_KV"])])
        self.assertEqual(result["hub_names"], [sorted(["AT_HUB", "KV_AT_HUB_KV"])])
        self.assertEqual(result["hub_api_from_hub"], [sorted(["AT_HUB", "KV_AT_HUB_KV"])])
        self.assertEqual(result["edge_api_from_spoke"], [sorted(["AT_EDGE", "KV_AT_EDGE_KV"])])
        self.assertEqual(result["hub_api_from_spoke"], [sorted(["AT_HUB", "KV_AT_HUB_KV"])])


def eventsvc_js(directory: str, name: str, domain: str, extra: str) -> process.ServerProcess:
    """
    eventsvc with JetStream in C{domain}; its client and monitor ports (and
    any other) are the kernel's, in C{ports} once started.
    """
    path = process.write_config(os.path.join(directory, name + ".toml"), (
        '[service]\nhost = "127.0.0.1"\nport = 0\n'
        '[jetstream]\nstore_dir = "{store}"\ndomain = "{domain}"\n'
        '[monitor]\nhost = "127.0.0.1"\nport = 0\n{extra}'
    ).format(store=os.path.join(directory, name + "-js"), domain=domain, extra=extra))
    return process.eventsvc(path, expect=("service", "monitor"))


def nats_server_js(directory: str, name: str, domain: str, leafnodes: str, expect: "tuple[str, ...]" = ()) -> process.ServerProcess:
    """nats-server with JetStream in C{domain} and the given leafnodes block."""
    conf = process.write_config(os.path.join(directory, name + ".conf"), (
        'server_name: {name}\njetstream {{ store_dir: "{store}", domain: {domain} }}\nleafnodes {{ {leafnodes} }}\n'
    ).format(name=name, store=os.path.join(directory, name + "-js"), domain=domain, leafnodes=leafnodes))
    return process.nats_server("-c", conf, expect=expect)


class EventsvcSpokeTests(_Checks, TestCase):
    """eventsvc (domain edge) dialling a nats-server -js hub (domain hub)."""

    @defer.inlineCallbacks
    def servers(self, spoke_domain: str):
        # The hub listens where the kernel puts it (-1), the spoke dials that.
        hub = nats_server_js(self.directory, "hubsrv", "hub", "port: -1", expect=("leafnode",))
        hub_port = yield process.started(self, hub)
        spoke = eventsvc_js(self.directory, "edge", spoke_domain, (
            '[leafnodes]\nlisten = false\n[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:{}"\n'
        ).format(hub.ports["leafnode"]))
        spoke_port = yield process.started(self, spoke)
        return hub, hub_port, spoke, spoke_port, spoke.ports["monitor"]

    @defer.inlineCallbacks
    def test_both_ways(self):
        hub, hub_port, spoke, spoke_port, http = yield self.servers("edge")
        self.check((yield run(lambda: both_ways(spoke_port, hub_port))))
        # The log says what nats-server says; /leafz names the hub's domain.
        spoke.wait_output('JetStream Not Extended, adding deny [$JS.API.> $KV.> $OBJ.>] for account "$G"; '
                          'adding deny "$JS.edge.API.>" for outgoing messages')
        self.assertIn('Adding deny "$JS.hub.API.>" for outgoing messages to account "$G"', hub.output())
        leaf = get_json(http, "/leafz")["leafs"][0]
        self.assertEqual((leaf["jetstream"], leaf["domain"]), (True, "hub"))

    @defer.inlineCallbacks
    def test_same_domain(self):
        hub, hub_port, spoke, spoke_port, _ = yield self.servers("hub")
        result = yield run(lambda: same_domain(spoke_port, hub_port))
        self.assertEqual(result, {
            "spoke": [["ON_SPOKE"]], "hub": [["ON_HUB"]], "spoke_plain": [["ON_SPOKE"]], "hub_plain": [["ON_HUB"]],
        })
        spoke.wait_output("runs JetStream in our domain (hub) too")


async def same_domain(spoke_port: int, hub_port: int) -> dict:
    """
    Both sides in domain hub: a stream on each, made through the plain API;
    then each side asks $JS.hub.API and $JS.API for stream names, and hears
    one answer, its own (nothing loops, nothing is answered twice).
    """
    spoke = await nats.connect("nats://127.0.0.1:%d" % spoke_port)
    hub = await nats.connect("nats://127.0.0.1:%d" % hub_port)
    try:
        # (Wait until the link is up: a subject of the spoke's client reaches the hub's.)
        async def pong(msg):
            await msg.respond(b"pong")

        await spoke.subscribe("ping.spoke", cb=pong)
        await spoke.flush()
        deadline = asyncio.get_event_loop().time() + 30
        while True:
            try:
                await hub.request("ping.spoke", b"", timeout=0.5)
                break
            except Exception:
                if asyncio.get_event_loop().time() > deadline:
                    raise
        await spoke.jetstream().add_stream(name="ON_SPOKE", subjects=["on.spoke"])
        await hub.jetstream().add_stream(name="ON_HUB", subjects=["on.hub"])
        out = {}
        for side, nc in (("spoke", spoke), ("hub", hub)):
            out[side] = [a.get("streams") for a in await answers(nc, "$JS.hub.API.STREAM.NAMES", wait=1.0)]
            out[side + "_plain"] = [a.get("streams") for a in await answers(nc, "$JS.API.STREAM.NAMES", wait=1.0)]
        return out
    finally:
        await spoke.close()
        await hub.close()


class EventsvcHubTests(_Checks, TestCase):
    """A nats-server -js spoke (domain edge) dialling an eventsvc hub (domain hub)."""

    @defer.inlineCallbacks
    def servers(self, spoke_domain: str):
        hub = eventsvc_js(self.directory, "hub", "hub", '[leafnodes]\nhost = "127.0.0.1"\nport = 0\n')
        hub_port = yield process.started(self, hub)
        spoke = nats_server_js(
            self.directory, "edgesrv", spoke_domain, 'remotes [ { url: "nats-leaf://127.0.0.1:%d" } ]' % hub.ports["leafnodes"]
        )
        spoke_port = yield process.started(self, spoke)
        return hub, hub_port, hub.ports["monitor"], spoke, spoke_port

    @defer.inlineCallbacks
    def test_same_domain(self):
        hub, hub_port, http, spoke, spoke_port = yield self.servers("hub")
        result = yield run(lambda: same_domain(spoke_port, hub_port))
        self.assertEqual(result, {
            "spoke": [["ON_SPOKE"]], "hub": [["ON_HUB"]], "spoke_plain": [["ON_SPOKE"]], "hub_plain": [["ON_HUB"]],
        })
        hub.wait_output("runs JetStream in our domain (hub) too")

    @defer.inlineCallbacks
    def test_both_ways(self):
        hub, hub_port, http, spoke, spoke_port = yield self.servers("edge")
        self.check((yield run(lambda: both_ways(spoke_port, hub_port))))
        self.assertIn('JetStream Not Extended, adding deny [$JS.API.> $KV.> $OBJ.>] for account "$G"', spoke.output())
        hub.wait_output('adding deny "$JS.hub.API.>" for outgoing messages')
        leaf = get_json(http, "/leafz")["leafs"][0]
        self.assertEqual((leaf["jetstream"], leaf["domain"]), (True, "edge"))
