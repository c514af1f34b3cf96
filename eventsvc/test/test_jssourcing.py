"""
Mirrors and sources (eventsvc.jetstream.sourcing), in memory: streams of
one server, and of two servers joined by a leaf link over iosim (an edge
and a hub, each with its own domain), driven by fake clocks.  What is
checked is what a user sees: the messages in the stream, their
sequences, times and C{Nats-Stream-Source} headers, STREAM.INFO's
C{mirror} and C{sources}, and the errors of bad configurations.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from twisted.trial.unittest import TestCase

from eventsvc.jetstream import sourcing
from eventsvc.jetstream.engine import JetStream, JetStreamSettings
from eventsvc.jetstream.errors import ApiError
from eventsvc.jetstream.stream import check_config, decode_config
from eventsvc.jetstream.wire import header
from eventsvc.test.test_jsstream import SECOND, T0, Harness
from eventsvc.test import test_supercluster
from eventsvc.test.test_leaf import Node, leaf


def advance(h: Harness, seconds: float, step: float = 0.1) -> None:
    """Time goes on in small steps (the links' timers fire as they would)."""
    while seconds > 1e-9:
        h.advance(min(step, seconds))
        seconds -= step


def contents(stream: Any) -> List[Any]:
    """(seq, subject, data, Nats-Stream-Source) of every message the stream holds."""
    out = []
    state = stream.store.state()
    for seq in range(state.first_seq, state.last_seq + 1):
        message = stream.store.load(seq)
        if message is not None:
            out.append((seq, message.subject, message.data, header(message.headers, "Nats-Stream-Source")))
    return out


class MirrorTests(TestCase):
    """A mirror of a stream of the same server."""

    def test_keeps_sequences_times_and_follows(self) -> None:
        h = Harness()
        origin = h.create(name="O", subjects=["o.>"])
        for i in range(5):
            h.ack("o.%d" % i, b"m%d" % i, b"NATS/1.0\r\nX: %d\r\n\r\n" % i)
            h.advance(1)
        origin.delete_message(2)
        origin.delete_message(3)
        mirror = h.create(name="M", mirror={"name": "O"})
        self.assertEqual(mirror.store.state().msgs, 0, "copied before the create was answered")
        h.clock.advance(0)
        self.assertEqual([(seq, subject, data) for seq, subject, data, _ in contents(mirror)],
                         [(1, "o.0", b"m0"), (4, "o.3", b"m3"), (5, "o.4", b"m4")])
        for seq in (1, 4, 5):
            mine, theirs = mirror.store.load(seq), origin.store.load(seq)
            self.assertEqual((mine.ts, mine.headers), (theirs.ts, theirs.headers))
        h.ack("o.new", b"later")
        self.assertEqual(mirror.store.load(6).data, b"later")
        h.advance(2)
        info = json.loads(h.publish("$JS.API.STREAM.INFO.M", b"") or b"{}")
        self.assertEqual(info["config"]["mirror"], {"name": "O"})
        self.assertNotIn("subjects", info["config"])
        self.assertEqual(info["mirror"]["name"], "O")
        self.assertEqual(info["mirror"]["lag"], 0)
        self.assertLess(info["mirror"]["active"], 1.1 * SECOND, "heartbeats count as a word from the origin")
        self.assertEqual((info["state"]["first_seq"], info["state"]["last_seq"], info["state"]["messages"]), (1, 6, 4))

    def test_server_store_full_then_room_again(self) -> None:
        """
        A mirror that fills the server's store (max_memory_store) keeps
        what it copied up to the limit, in sequence, and copies on from
        there, each message at its origin sequence, once room is made.
        """
        h = Harness(JetStreamSettings(max_memory_store=2600))
        ballast = h.create(name="B", subjects=["b"], storage="memory")
        origin = h.create(name="O", subjects=["o.>"], storage="memory")
        for i in range(10):
            h.ack("b", b"x" * 100)
            h.ack("o.%d" % i, b"%03d" % i * 25)
        mirror = h.create(name="M", mirror={"name": "O"}, storage="memory")
        advance(h, 3)
        held = contents(mirror)
        self.assertTrue(0 < len(held) < 10, "{} of 10 copied under the limit".format(len(held)))
        self.assertEqual([(seq, data) for seq, _, data, _ in held],
                         [(seq, b"%03d" % (seq - 1) * 25) for seq in range(1, len(held) + 1)])
        h.js.delete_stream(ballast)
        advance(h, 5)
        self.assertEqual([(seq, subject, data) for seq, subject, data, _ in contents(mirror)],
                         [(seq, subject, data) for seq, subject, data, _ in contents(origin)])

    def test_mirror_direct(self) -> None:
        """A mirror of a stream with allow_direct says mirror_direct and, caught up, answers the origin's direct gets too."""
        h = Harness()
        origin = h.create(name="O", subjects=["o.>"], allow_direct=True)
        h.ack("o.a", b"1")
        mirror = h.create(name="M", mirror={"name": "O"})
        self.assertTrue(mirror.config["mirror_direct"])
        h.clock.advance(0)
        h.js.delete_stream(origin)
        answer = h.replies
        before = len(answer)
        h.broker.publish("$JS.API.DIRECT.GET.O", b'{"seq":1}', "_R.direct")
        self.assertEqual(len(answer), before + 1)
        headers, data = answer[-1]
        self.assertEqual(data, b"1")
        self.assertIn(b"Nats-Stream: M\r\n", headers)
        self.assertFalse(h.create(name="N", mirror={"name": "M"}).config["mirror_direct"])

    def test_origin_deletes_while_mirroring(self) -> None:
        """A gap in the stream sequences with none in the delivery sequences is skipped, not refetched."""
        h = Harness()
        origin = h.create(name="O", subjects=["o.>"])
        mirror = h.create(name="M", mirror={"name": "O"})
        h.clock.advance(0)
        h.ack("o.a", b"1")
        h.ack("o.a", b"2")
        origin.delete_message(2)
        h.ack("o.a", b"3")
        self.assertEqual([(seq, data) for seq, _, data, _ in contents(mirror)], [(1, b"1"), (2, b"2"), (3, b"3")])
        # and a mirror made after the origin lost its first messages starts where the origin does
        origin.purge(seq=3)
        late = h.create(name="LATE", mirror={"name": "O"})
        h.clock.advance(0)
        self.assertEqual([(seq, data) for seq, _, data, _ in contents(late)], [(3, b"3")])
        h.ack("o.a", b"4")
        self.assertEqual(late.store.load(4).data, b"4")

    def test_refusals_as_nats_server_words_them(self) -> None:
        h = Harness()
        h.create(name="A", subjects=["a.>"], max_msg_size=100)

        def refused(**config: Any) -> Any:
            with self.assertRaises(ApiError) as e:
                h.create(**config)
            return (e.exception.err_code, e.exception.description)

        self.assertEqual(refused(name="M", subjects=["m"], mirror={"name": "A"}),
                         (10034, "stream mirrors can not contain subjects"))
        self.assertEqual(refused(name="M", mirror={"name": "A"}, sources=[{"name": "A"}]),
                         (10031, "stream mirrors can not also contain other sources"))
        self.assertEqual(refused(name="M", max_msg_size=10, mirror={"name": "A"}),
                         (10030, "stream mirror must have max message size >= source"))
        self.assertEqual(refused(name="M", mirror={"name": "A", "filter_subject": "b.>"}),
                         (10052, "mirror 'A' filter subject 'b.>' does not overlap with any origin stream subject"))
        self.assertEqual(refused(name="M", mirror={"name": "A", "external": {"api": "$JS.API", "deliver": ""}}),
                         (10021, "stream external api prefix $JS.API must not overlap with $JS.API"))
        self.assertEqual(refused(name="M", mirror={"name": "A", "external": {"api": "$JS.hub.*", "deliver": ""}}),
                         (10052, 'stream external api prefix "$JS.hub.*" must be a valid subject without wildcards'))
        self.assertEqual(refused(name="S", sources=[{"name": "A", "external": {"api": "$JS.hub.API", "deliver": "d.>"}}]),
                         (10024, "stream external delivery prefix d.> must not contain wildcards"))
        self.assertEqual(refused(name="S", sources=[{"name": "A", "external": {"api": 5}}]),
                         (10025, "invalid JSON"))
        mirror = h.create(name="M", mirror={"name": "A"})
        with self.assertRaises(ApiError) as e:
            h.js.update_stream(mirror, check_config(decode_config(b'{"name":"M","mirror":{"name":"B"}}')))
        self.assertEqual((e.exception.err_code, e.exception.description),
                         (10055, "stream mirror configuration can not be updated"))
        # A cycle hidden behind a mirror: A sourcing from M, which mirrors A.
        with self.assertRaises(ApiError) as e:
            h.js.update_stream(h.js.streams["A"], check_config(decode_config(
                b'{"name":"A","subjects":["a.>"],"max_msg_size":100,"sources":[{"name":"M"}]}')))
        self.assertEqual(e.exception.description, "detected cycle")


class SourceTests(TestCase):
    """Sources from streams of the same server."""

    def test_several_sources_with_filters(self) -> None:
        h = Harness()
        h.create(name="A", subjects=["a.>"])
        h.create(name="B", subjects=["b.>"])
        h.create(name="OWN", subjects=["own"])
        both = h.create(name="S", subjects=["s"], sources=[{"name": "A", "filter_subject": "a.keep"}, {"name": "B"}])
        h.clock.advance(0)
        for subject in ("a.keep", "a.drop", "b.x", "s", "a.keep", "b.y"):
            h.ack(subject, subject.encode())
        self.assertEqual(contents(both), [
            (1, "a.keep", b"a.keep", "A 1"),
            (2, "b.x", b"b.x", "B 1"),
            (3, "s", b"s", None),
            (4, "a.keep", b"a.keep", "A 3"),
            (5, "b.y", b"b.y", "B 2"),
        ])
        info = json.loads(h.publish("$JS.API.STREAM.INFO.S", b"") or b"{}")
        self.assertEqual([(s["name"], s["lag"]) for s in info["sources"]], [("A", 0), ("B", 0)])
        # The origins' consumers for them are nats-server's direct ones: not counted, not listed.
        self.assertEqual(json.loads(h.publish("$JS.API.STREAM.INFO.A", b"") or b"{}")["state"]["consumer_count"], 0)
        self.assertEqual(json.loads(h.publish("$JS.API.CONSUMER.NAMES.A", b"") or b"{}")["consumers"], [])
        self.assertEqual(len(h.js.streams["A"].consumers), 1)

    def test_duplicate_from_two_sources_is_dropped_not_retried(self) -> None:
        """The same Nats-Msg-Id from two origins: the second copy is a duplicate, the sources go on."""
        h = Harness()
        h.create(name="A", subjects=["a"])
        h.create(name="B", subjects=["b"])
        both = h.create(name="S", sources=[{"name": "A"}, {"name": "B"}])
        h.clock.advance(0)
        h.ack("a", b"1", b"NATS/1.0\r\nNats-Msg-Id: same\r\n\r\n")
        h.ack("b", b"2", b"NATS/1.0\r\nNats-Msg-Id: same\r\n\r\n")
        h.ack("b", b"3")
        advance(h, 5)
        h.ack("b", b"4")
        self.assertEqual([(data, source) for _, _, data, source in contents(both)], [(b"1", "A 1"), (b"3", "B 2"), (b"4", "B 3")])
        self.assertEqual(len(h.js.streams["B"].consumers), 1, "no new consumer was asked for")

    def test_restart_after_the_copies_were_pushed_out(self) -> None:
        """
        A stream whose limit pushed out every copy from a source does not
        copy that source again from the start after a restart: it starts at
        the time of its last message, as nats-server.
        """
        folder = self.mktemp()
        h = Harness(JetStreamSettings(store_dir=folder))
        h.create(name="O", subjects=["o"])
        s = h.create(name="S", subjects=["s"], max_msgs=2, sources=[{"name": "O"}])
        h.clock.advance(0)
        for n in range(3):
            h.publish("o", b"o%d" % n, reply=False)
        h.advance(1)
        h.publish("s", b"s1", reply=False)
        h.publish("s", b"s2", reply=False)
        h.clock.advance(0)
        self.assertEqual([data for _, _, data, _ in contents(s)], [b"s1", b"s2"])
        h.js.stop()
        again = Harness(JetStreamSettings(store_dir=folder), start=h.time + SECOND)
        advance(again, 1)
        again.publish("o", b"o3", reply=False)
        again.clock.advance(0)
        s = again.js.streams["S"]
        self.assertEqual([(data, source) for _, _, data, source in contents(s)], [(b"s2", None), (b"o3", "O 4")])
        again.js.stop()

    def test_where_sources_resume_is_found_in_one_walk(self) -> None:
        """Each source's last copy, found walking back once for all, stopping when all are found."""
        h = Harness()
        h.create(name="A", subjects=["a"])
        h.create(name="B", subjects=["b"])
        s = h.create(name="S", subjects=["s"], sources=[{"name": "A"}, {"name": "B"}])
        h.clock.advance(0)
        for subject in ("a", "b", "a") + ("b",) * 5 + ("s",) * 10:
            h.publish(subject, b"x", reply=False)
        loads: List[int] = []
        load = s.store.load
        self.patch(s.store, "load", lambda seq: loads.append(seq) or load(seq))
        self.assertEqual(sourcing.last_copies(s.store, {"A", "B", "C"}), {"A": 2, "B": 6})
        self.assertEqual(len(loads), 18, "the whole stream, for C, which has no copy")
        loads.clear()
        self.assertEqual(sourcing.last_copies(s.store, {"A", "B"}), {"A": 2, "B": 6})
        self.assertEqual(loads, list(range(18, 2, -1)), "back to A's last copy, and no further")

    def test_what_the_event_log_appends_is_sourced(self) -> None:
        """Messages a stream takes by append (the event log's path, not a publish) reach its mirror and sources too."""
        h = Harness()
        origin = h.create(name="O", subjects=["o.>"])
        s = h.create(name="S", sources=[{"name": "O"}])
        m = h.create(name="M", mirror={"name": "O"})
        h.clock.advance(0)
        self.assertEqual(origin.append("o.x", b"NATS/1.0\r\nEventsvc-Handlers: feed\r\n\r\n", b"1"), 1)
        self.assertEqual(contents(s), [(1, "o.x", b"1", "O 1")])
        self.assertEqual(contents(m), [(1, "o.x", b"1", None)])

    def test_chained_sources_keep_one_header(self) -> None:
        h = Harness()
        h.create(name="A", subjects=["a.>"])
        h.create(name="B", sources=[{"name": "A"}])
        c = h.create(name="C", sources=[{"name": "B"}])
        h.clock.advance(0)
        h.clock.advance(0)
        h.ack("a.x", b"1")
        self.assertEqual(contents(c), [(1, "a.x", b"1", "B 1")])

    def test_external_api_of_this_server(self) -> None:
        """external.api names the origin's API by its domain; the header names the source with its hash, as nats-server."""
        h = Harness(JetStreamSettings(domain="edge"))
        h.create(name="O", subjects=["o.>"])
        h.ack("o.1", b"x")
        s = h.create(name="S", sources=[{"name": "O", "external": {"api": "$JS.edge.API", "deliver": ""}}])
        h.clock.advance(0)
        self.assertEqual(sourcing.go_hash("$JS.edge.API"), "n1VdnVvB")
        self.assertEqual(contents(s), [(1, "o.1", b"x", "O:n1VdnVvB 1")])
        info = json.loads(h.publish("$JS.API.STREAM.INFO.S", b"") or b"{}")
        self.assertEqual(info["config"]["sources"], [{"name": "O", "external": {"api": "$JS.edge.API", "deliver": ""}}])
        self.assertEqual(info["sources"][0]["external"], {"api": "$JS.edge.API", "deliver": ""})

    def test_origin_not_there_yet(self) -> None:
        """A source whose stream does not exist says why, and follows it once made."""
        from twisted.logger import LogLevel, Logger

        said: List[Dict[str, Any]] = []
        self.patch(sourcing.SourceLink, "log", Logger(observer=said.append))
        h = Harness()
        s = h.create(name="S", sources=[{"name": "LATER"}])
        advance(h, 10)
        warnings = [e for e in said if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1, "once, not at each of the five requests")
        self.assertEqual(warnings[0]["error"], "stream not found")
        info = json.loads(h.publish("$JS.API.STREAM.INFO.S", b"") or b"{}")
        self.assertEqual(info["sources"][0]["error"], {"code": 404, "err_code": 10059, "description": "stream not found"})
        self.assertEqual(info["sources"][0]["active"], -1)
        h.create(name="LATER", subjects=["l"])
        h.ack("l", b"1")
        advance(h, 3)
        self.assertEqual(contents(s), [(1, "l", b"1", "LATER 1")])
        self.assertNotIn("error", json.loads(h.publish("$JS.API.STREAM.INFO.S", b"") or b"{}")["sources"][0])

    def test_restart_resumes_without_gaps_or_duplicates(self) -> None:
        folder = self.mktemp()
        h = Harness(JetStreamSettings(store_dir=folder))
        h.create(name="O", subjects=["o.>"])
        h.create(name="S", sources=[{"name": "O"}])
        h.create(name="M", mirror={"name": "O"})
        h.clock.advance(0)
        for i in range(3):
            h.publish("o.a", b"%d" % i, reply=False)
        h.clock.advance(0)
        h.js.stop()
        again = Harness(JetStreamSettings(store_dir=folder))
        again.clock.advance(0)
        for i in range(3, 5):
            again.publish("o.a", b"%d" % i, reply=False)
        again.clock.advance(0)
        s, m = again.js.streams["S"], again.js.streams["M"]
        self.assertEqual([data for _, _, data, _ in contents(s)], [b"0", b"1", b"2", b"3", b"4"])
        self.assertEqual([source for _, _, _, source in contents(s)], ["O %d" % n for n in range(1, 6)])
        self.assertEqual([(seq, data) for seq, _, data, _ in contents(m)], [(n, b"%d" % (n - 1)) for n in range(1, 6)])
        again.js.stop()


class MonitoringTests(TestCase):
    """/jsz shows mirrors and sources as nats-server's StreamDetail does: lag and active."""

    def test_jsz_streams_with_lag(self) -> None:
        from eventsvc.ops.jsz import jsz

        h = Harness()
        h.create(name="O", subjects=["o.>"])
        h.create(name="M", mirror={"name": "O"})
        h.create(name="S", sources=[{"name": "O"}, {"name": "GONE"}])
        h.clock.advance(0)
        h.ack("o.a")
        advance(h, 0.5)
        service = type("Service", (), {"jetstream": h.js})()
        page: Any = jsz(service, "NID", {b"accounts": [b"1"], b"streams": [b"1"], b"consumers": [b"1"]})
        self.assertEqual(page["consumers"], 0, "the direct consumers of mirrors and sources are not counted")
        details = {d["name"]: d for d in page["account_details"][0]["stream_detail"]}
        self.assertNotIn("consumer_detail", details["O"])
        self.assertEqual(details["M"]["mirror"], {"name": "O", "lag": 0, "active": SECOND // 2})
        self.assertEqual(details["S"]["sources"][0], {"name": "O", "lag": 0, "active": SECOND // 2})
        self.assertEqual(details["S"]["sources"][1]["active"], -1)
        self.assertEqual(details["S"]["sources"][1]["error"]["description"], "stream not found")
        self.assertNotIn("sources", details["O"])
        self.assertNotIn("mirror", details["S"])


    def test_lag_while_catching_up(self) -> None:
        """A mirror made after 2,500 messages: its lag, as each copy is stored, counts down what is left."""
        h = Harness()
        h.create(name="O", subjects=["o"])
        for _ in range(2500):
            h.publish("o", b"x", reply=False)
        mirror = h.create(name="M", mirror={"name": "O"})
        lags: List[int] = []
        store = mirror.store_mirrored

        def watched(*args: Any) -> bool:
            lags.append(mirror.info()["mirror"]["lag"])
            return store(*args)

        self.patch(mirror, "store_mirrored", watched)
        h.clock.advance(0)
        self.assertEqual(mirror.store.state().last_seq, 2500)
        self.assertEqual(lags[:3], [2498, 2497, 2496], "pending after the delivery, less one (nats-server's lag)")
        self.assertEqual(lags[-2:], [0, 0])


class Side:
    """One eventsvc of the two: a broker with leaf nodes, and its JetStream in a domain."""

    def __init__(self, name: str, domain: str, store_dir: Optional[str] = None, node: Any = None) -> None:
        self.node = node or Node(name)
        self.time = T0
        self.domain = domain
        self.store_dir = store_dir
        self.js = self.start_js()
        self.replies: List[bytes] = []
        self.node.broker.subscribe("_R.>", lambda s, r, p, h: self.replies.append(p))
        self.n = 0

    def start_js(self) -> JetStream:
        js = JetStream(self.node.broker, JetStreamSettings(domain=self.domain, store_dir=self.store_dir),
                       self.node.clock, now=lambda: self.time)
        js.start()
        return js

    def create(self, **config: Any) -> Any:
        return self.js.add_stream(decode_config(json.dumps(config).encode()))

    def publish(self, subject: str, payload: bytes) -> Optional[Dict[str, Any]]:
        self.n += 1
        before = len(self.replies)
        self.node.broker.publish(subject, payload, "_R.%d" % self.n)
        self.node.clock.advance(0)
        return json.loads(self.replies[-1]) if len(self.replies) > before else None


class AcrossALeafLinkTests(TestCase):
    """An edge (domain edge) leaf of a hub (domain hub), both eventsvc, the link in memory."""

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.edge = Side("E", "edge", os.path.join(self.folder, "edge"))
        self.hub = Side("H", "hub", os.path.join(self.folder, "hub"))
        self.pump, _, _ = leaf(self.edge.node, self.hub.node)
        #: Whether the link carries anything (False: every byte written is lost).
        self.up = True
        self.elapse(0.5)

    def tearDown(self) -> None:
        self.edge.js.stop()
        self.hub.js.stop()

    def elapse(self, seconds: float, step: float = 0.05) -> None:
        """Both servers' time goes on; the link carries what they write (or loses it, when down)."""
        while True:
            for _ in range(3):
                if self.up:
                    self.pump.flush()
                else:
                    self.pump.clientIO.getOutBuffer()
                    self.pump.serverIO.getOutBuffer()
            if seconds <= 1e-9:
                return
            for side in (self.edge, self.hub):
                side.time += int(step * SECOND)
                side.node.clock.advance(step)
            seconds -= step

    def events(self, first: int, last: int) -> None:
        for n in range(first, last + 1):
            ack = self.edge.publish("event.x", b"e%d" % n)
            self.assertEqual(ack, {"stream": "EVENTS", "domain": "edge", "seq": n})

    def assertEachOnce(self, stream: Any, count: int) -> None:
        held = contents(stream)
        self.assertEqual(sorted(data for _, _, data, _ in held), sorted(b"e%d" % n for n in range(1, count + 1)))
        self.assertEqual(len(held), count)

    def source_from_edge(self) -> Any:
        self.edge.create(name="EVENTS", subjects=["event.>"])
        return self.hub.create(name="HUB", sources=[{"name": "EVENTS", "external": {"api": "$JS.edge.API", "deliver": ""}}])

    def test_source_across_an_outage(self) -> None:
        hub = self.source_from_edge()
        self.events(1, 10)
        self.elapse(0.5)
        self.assertEachOnce(hub, 10)
        self.up = False
        self.events(11, 30)
        self.elapse(10)
        self.assertEachOnce(hub, 10)
        self.up = True
        self.elapse(5)
        self.assertEachOnce(hub, 30)
        headers = [source for _, _, _, source in contents(hub)]
        self.assertEqual(headers, ["EVENTS:%s %d" % (sourcing.go_hash("$JS.edge.API"), n) for n in range(1, 31)])
        info = hub.info()
        self.assertEqual(info["sources"][0]["lag"], 0)
        self.assertLess(info["sources"][0]["active"], 2 * SECOND)

    def test_lost_delivery_is_fetched_again(self) -> None:
        """A delivery lost on the way: the next heartbeat's last delivery says so, and a new consumer starts after the last kept."""
        hub = self.source_from_edge()
        self.events(1, 3)
        self.elapse(0.5)
        self.up = False
        self.events(4, 4)  # its delivery is lost; the link stays
        self.elapse(0.05)
        self.up = True
        self.elapse(4)
        self.assertEachOnce(hub, 4)
        self.events(5, 6)
        self.elapse(0.5)
        self.assertEachOnce(hub, 6)
        self.assertEqual([data for _, _, data, _ in contents(hub)], [b"e%d" % n for n in (1, 2, 3, 4, 5, 6)])

    def test_mirror_of_the_hub_at_the_edge(self) -> None:
        self.hub.create(name="ORDERS", subjects=["orders.>"])
        for n in range(1, 4):
            self.hub.publish("orders.x", b"e%d" % n)
        mirror = self.edge.create(name="ORDERS", mirror={"name": "ORDERS", "external": {"api": "$JS.hub.API", "deliver": ""}})
        self.elapse(0.5)
        self.up = False
        for n in range(4, 8):
            self.hub.publish("orders.x", b"e%d" % n)
        self.elapse(8)
        self.up = True
        self.elapse(5)
        self.assertEqual([(seq, data) for seq, _, data, _ in contents(mirror)], [(n, b"e%d" % n) for n in range(1, 8)])

    def test_restart_of_either_side(self) -> None:
        hub = self.source_from_edge()
        self.events(1, 5)
        self.elapse(0.5)
        # The edge restarts: its direct consumer is gone; the hub's link
        # hears nothing for 3 s and asks again after what it kept.
        self.edge.js.stop()
        self.edge.js = self.edge.start_js()
        self.events(6, 9)
        self.elapse(6)
        self.assertEachOnce(self.hub.js.streams["HUB"], 9)
        # The hub restarts: it finds where it was in its own last copy.
        self.hub.js.stop()
        self.events(10, 12)
        self.hub.js = self.hub.start_js()
        self.elapse(4)
        hub = self.hub.js.streams["HUB"]
        self.assertEachOnce(hub, 12)
        self.assertEqual([data for _, _, data, _ in contents(hub)], [b"e%d" % n for n in range(1, 13)])

    def test_push_consumer_across_the_link(self) -> None:
        """
        A client of the hub with a push consumer on the edge's stream gets
        each message on the stream's subject with its ack reply, as from
        nats-server: the link carries it on the deliver subject as
        C{<ack reply>@<subject>}, and the hub puts the subject back.
        """
        self.edge.create(name="EVENTS", subjects=["event.>"])
        client = self.hub.node.client()
        client.send(b"SUB deliver.here 1\r\n")
        client.received()
        self.elapse(0.2)
        reply = "_R.c"
        self.hub.node.broker.publish("$JS.edge.API.CONSUMER.CREATE.EVENTS", json.dumps({
            "stream_name": "EVENTS", "config": {"deliver_subject": "deliver.here", "ack_policy": "explicit"}}).encode(), reply)
        self.elapse(0.2)
        answers = [json.loads(answer) for answer in self.hub.replies]
        self.assertEqual(len(answers), 1, "answered by the edge alone")
        created = answers[0]
        self.events(1, 1)
        self.elapse(0.2)
        got = client.received()
        self.assertRegex(got, rb"^MSG event\.x 1 \$JS\.ACK\.EVENTS\.%s\.1\.1\.1\.\d+\.0 2\r\ne1\r\n$" % created["name"].encode())
        # Its ack goes back across the link to the edge's consumer.
        ack = got.split(b" ")[3]
        self.hub.node.client().send(b"PUB " + ack + b" 4\r\n+ACK\r\n")
        self.elapse(0.2)
        consumer = self.edge.js.streams["EVENTS"].consumers[created["name"]]
        self.assertEqual(consumer.info()["ack_floor"]["stream_seq"], 1)

    def test_mirror_skips_what_the_origin_deleted_while_down(self) -> None:
        """The origin deleted a message the mirror had not got: skipped (the delivery sequence has no gap), the mirror's limit kept."""
        origin = self.hub.create(name="ORDERS", subjects=["orders.>"])
        mirror = self.edge.create(name="COPY", max_msgs=3, mirror={"name": "ORDERS", "external": {"api": "$JS.hub.API", "deliver": ""}})
        for n in range(1, 6):
            self.hub.publish("orders.x", b"e%d" % n)
        self.elapse(0.5)
        self.up = False
        for n in range(6, 9):
            self.hub.publish("orders.x", b"e%d" % n)
        origin.delete_message(7)
        self.elapse(5)
        self.up = True
        self.elapse(5)
        self.assertEqual([(seq, data) for seq, _, data, _ in contents(mirror)], [(5, b"e5"), (6, b"e6"), (8, b"e8")])


class AcrossAGatewayTests(TestCase):
    """
    A mirror and a source in cluster B of a stream in cluster A, the two
    clusters joined by gateways (each JetStream in its own domain), both
    eventsvc, the links in memory: the origin's API is reached by the
    domain's prefix (C{external.api} C{$JS.a.API}).
    """

    def setUp(self) -> None:
        self.a = Side("A", "a", node=test_supercluster.Node("A", ["B"], jetstream=True, jetstream_domain="a"))
        self.b = Side("B", "b", node=test_supercluster.Node("B", ["A"], jetstream=True, jetstream_domain="b"))
        self.pumps = [test_supercluster.link(self.a.node, self.b.node)[0], test_supercluster.link(self.b.node, self.a.node)[0]]
        self.elapse(0.5)

    def tearDown(self) -> None:
        self.a.js.stop()
        self.b.js.stop()

    def elapse(self, seconds: float, step: float = 0.05) -> None:
        while True:
            for _ in range(3):
                for pump in self.pumps:
                    pump.flush()
            if seconds <= 1e-9:
                return
            for side in (self.a, self.b):
                side.time += int(step * SECOND)
                side.node.clock.advance(step)
            seconds -= step

    def test_mirror_and_source_of_the_other_cluster(self) -> None:
        self.a.create(name="ORDERS", subjects=["orders.>"])
        for n in range(1, 4):
            self.assertEqual(self.a.publish("orders.x", b"o%d" % n), {"stream": "ORDERS", "domain": "a", "seq": n})
        mirror = self.b.create(name="COPY", mirror={"name": "ORDERS", "external": {"api": "$JS.a.API", "deliver": ""}})
        source = self.b.create(name="ALL", subjects=["all.>"], sources=[{"name": "ORDERS", "external": {"api": "$JS.a.API", "deliver": ""}}])
        self.elapse(1)
        for n in range(4, 6):
            self.a.publish("orders.x", b"o%d" % n)
        self.elapse(1)
        self.assertEqual([(seq, subject, data) for seq, subject, data, _ in contents(mirror)],
                         [(n, "orders.x", b"o%d" % n) for n in range(1, 6)])
        self.assertEqual([data for _, _, data, _ in contents(source)], [b"o%d" % n for n in range(1, 6)])
        self.assertEqual(mirror.info()["mirror"]["lag"], 0)

    def test_gateway_info_says_jetstream_and_domain(self) -> None:
        info = self.a.node.manager.info()
        self.assertEqual((info["jetstream"], info["domain"]), (True, "a"))
        self.assertNotIn("jetstream", test_supercluster.Node("C", ["A"]).manager.info())

    def test_each_clusters_plain_api_answers_once(self) -> None:
        """
        Gateway INFO says each runs JetStream, so neither keeps the other's
        interest in the plain API: a request is answered by its own cluster
        (it was answered by both), and the other's by its domain.
        """
        self.a.create(name="ORDERS", subjects=["orders.>"])
        client = self.b.node.client(b'CONNECT {"verbose":false,"headers":true}\r\n')
        client.send(b"SUB _X.> 1\r\nPUB $JS.API.STREAM.NAMES _X.1 0\r\n\r\nPUB $JS.a.API.STREAM.NAMES _X.2 0\r\n\r\n")
        self.elapse(0.5)
        got = client.received()
        self.assertEqual(got.count(b"MSG _X.1 "), 1, got)
        self.assertEqual(got.count(b"MSG _X.2 "), 1, got)
