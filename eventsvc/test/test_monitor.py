"""
The monitoring pages and metrics, rendered in memory.
"""

from __future__ import annotations

import json

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from eventsvc import config
from eventsvc.app import make_service
from eventsvc.ops.monitor import go_duration, uptime
from eventsvc.test.eventsamples import payload
from eventsvc.test.test_agents import connect


def get(svc, path: str):
    monitor = svc.getServiceNamed("monitor")
    name, _, query = path.lstrip("/").partition("?")
    request = DummyRequest([b""])
    request.args = {}
    for pair in filter(None, query.split("&")):
        k, _, v = pair.partition("=")
        request.args.setdefault(k.encode(), []).append(v.encode())
    child = monitor.site.resource.children[name.encode()]
    body = child.render_GET(request)
    code = request.responseCode or 200
    if name == "metrics":
        return code, body.decode()
    return code, json.loads(body)


class MonitorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.svc = make_service(
            config.parse('[service]\nport = 0\n[monitor]\nenabled = true\nport = 0\n[handlers]\nevent_feed = "python:eventsvc.test.test_monitor:accept"\n'),
            MemoryReactorClock(),
        )
        self.svc.startService()
        self.addCleanup(self.svc.stopService)

    def test_healthz(self) -> None:
        self.assertEqual(get(self.svc, "/healthz"), (200, {"status": "ok"}))
        self.svc.state = "stopping"
        code, body = get(self.svc, "/healthz")
        self.assertEqual(code, 503)
        self.assertEqual(body, {"status": "unavailable", "error": "eventsvc is shutting down"})
        self.svc.state = "lame duck"
        self.assertEqual(get(self.svc, "/healthz"), (503, {"status": "unavailable", "error": "eventsvc is in lame duck mode"}))

    def test_varz_and_connz(self) -> None:
        a = connect(self.svc, "service", b'CONNECT {"verbose":false,"name":"alice","lang":"python","version":"1.0"}\r\nSUB foo 1\r\nSUB bar q 2\r\n')
        b = connect(self.svc, "service", b"CONNECT {}\r\nPUB foo 5\r\nhello\r\n")
        code, varz = get(self.svc, "/varz")
        self.assertEqual(code, 200)
        self.assertEqual((varz["connections"], varz["total_connections"]), (2, 2))
        self.assertEqual((varz["in_msgs"], varz["in_bytes"], varz["out_msgs"], varz["out_bytes"]), (1, 5, 1, 5))
        self.assertEqual(varz["ping_interval"], 120 * 10**9)
        self.assertEqual(varz["max_payload"], 1048576)
        code, connz = get(self.svc, "/connz?subs=1")
        self.assertEqual(connz["num_connections"], 2)
        first = connz["connections"][0]
        self.assertEqual((first["name"], first["lang"], first["version"]), ("alice", "python", "1.0"))
        self.assertEqual(first["subscriptions_list"], ["foo", "bar"])
        self.assertEqual((first["out_msgs"], first["out_bytes"], first["subscriptions"]), (1, 5, 2))
        self.assertEqual(connz["connections"][1]["in_msgs"], 1)
        _, page = get(self.svc, "/connz?limit=1&offset=1")
        self.assertEqual((page["num_connections"], page["total"], page["connections"][0]["cid"]), (1, 2, b.proto.cid))
        b.send(b"BOGUS\r\n")
        _, closed = get(self.svc, "/connz?state=closed")
        self.assertEqual(closed["connections"][0]["cid"], b.proto.cid)
        self.assertEqual(closed["connections"][0]["reason"], "Protocol Violation")
        self.assertIn("stop", closed["connections"][0])
        _, varz = get(self.svc, "/varz")
        self.assertEqual(varz["connections"], 1)
        self.assertEqual(varz["http_req_stats"]["/varz"], 2)
        del a

    def test_connz_orders_and_refusals(self) -> None:
        clock = self.svc.getServiceNamed("monitor").monitor.clock
        old = connect(self.svc, "service", b'CONNECT {"verbose":false}\r\n')
        clock.advance(10)
        new = connect(self.svc, "service", b'CONNECT {"verbose":false}\r\nSUB a 1\r\n')
        clock.advance(5)
        old.send(b"PING\r\n")  # old is now the most recently active
        cids = lambda query: [c["cid"] for c in get(self.svc, "/connz?" + query)[1]["connections"]]
        o, n = old.proto.cid, new.proto.cid
        self.assertEqual(cids("sort=last"), [o, n])
        self.assertEqual(cids("sort=idle"), [o, n])  # nats-server: last activity minus start, descending
        self.assertEqual(cids("sort=uptime"), [n, o])
        self.assertEqual(cids("sort=subs"), [n, o])
        self.assertEqual(cids("sort=start"), [o, n])
        self.assertEqual(cids("cid=%d" % n), [n])
        self.assertEqual(cids("limit=1&offset=1"), [n])
        new.send(b"BOGUS\r\n")
        clock.advance(1)
        old.proto.connectionLost(None)
        self.assertEqual(cids("state=closed&sort=stop"), [o, n])  # the latest first
        self.assertEqual(cids("state=closed&sort=reason"), [o, n])  # "Client Closed" < "Protocol Violation"
        for query, message in (
            ("sort=nope", "invalid sorting option: nope"),
            ("sort=stop", "sort by stop only valid on closed connections"),
            ("offset=-x", "Error decoding int for 'offset': strconv.Atoi: parsing \"-x\": invalid syntax"),
        ):
            monitor = self.svc.getServiceNamed("monitor")
            request = DummyRequest([b""])
            request.args = {k.encode(): [v.encode()] for k, v in [query.split("=")]}
            body = monitor.site.resource.children[b"connz"].render_GET(request)
            self.assertEqual((request.responseCode, body.decode()), (400, message))

    def test_subsz_routez(self) -> None:
        connect(self.svc, "service", b'CONNECT {"verbose":false}\r\nSUB foo 1\r\nPUB foo 0\r\n\r\n')
        _, subsz = get(self.svc, "/subsz")
        # One client subscription, plus the event dispatcher's two (events, replays)
        # and the health question health-check asks (healthcheck.status.<server_id>).
        self.assertEqual(subsz["num_subscriptions"], 4)
        self.assertGreaterEqual(subsz["num_inserts"], 4)
        _, routez = get(self.svc, "/routez")
        self.assertEqual((routez["num_routes"], routez["routes"]), (0, []))
        _, gatewayz = get(self.svc, "/gatewayz")
        self.assertEqual((gatewayz["outbound_gateways"], gatewayz["inbound_gateways"]), ({}, {}))

    def test_subsz_list(self) -> None:
        """/subsz?subs=1 lists the subscriptions as nats-server does: its keys in its order, SubDetail objects, the page's length as total."""
        c = connect(self.svc, "service", b'CONNECT {"verbose":false}\r\nSUB foo.bar 1\r\nSUB foo.* q1 2\r\nUNSUB 2 5\r\nPUB foo.bar 2\r\nhi\r\n')
        code, subsz = get(self.svc, "/subsz?subs=1")
        self.assertEqual(code, 200)
        self.assertEqual(list(subsz), [
            "server_id", "now", "num_subscriptions", "num_cache", "num_inserts", "num_removes", "num_matches",
            "cache_hit_rate", "max_fanout", "avg_fanout", "total", "offset", "limit", "subscriptions_list",
        ])
        # Ours two, the event service's two and the health question's one.
        self.assertEqual((subsz["total"], subsz["offset"], subsz["limit"]), (5, 0, 1024))
        mine = [s for s in subsz["subscriptions_list"] if s["cid"] == c.proto.cid]
        self.assertEqual(sorted(mine, key=lambda s: s["sid"]), [
            {"account": "$G", "subject": "foo.bar", "sid": "1", "msgs": 0, "cid": c.proto.cid},
            {"account": "$G", "subject": "foo.*", "qgroup": "q1", "sid": "2", "msgs": 1, "max": 5, "cid": c.proto.cid},
        ])
        # The event service's own (in-process) subscriptions are listed too, as nats-server lists its system ones.
        self.assertEqual(len(subsz["subscriptions_list"]), subsz["num_subscriptions"])
        _, tested = get(self.svc, "/subsz?subs=1&test=foo.bar")
        self.assertEqual([s["subject"] for s in tested["subscriptions_list"]], ["foo.bar", "foo.*"])
        _, page = get(self.svc, "/subsz?subs=1&offset=1&limit=2")
        self.assertEqual((page["total"], page["offset"], page["limit"], len(page["subscriptions_list"])), (2, 1, 2, 2))
        # Nothing on the page, another account, or no subs: the figures alone.
        for query in ("/subsz?subs=1&test=nothing.here", "/subsz?subs=1&acc=$SYS", "/subsz", "/subsz?subs=0"):
            self.assertNotIn("subscriptions_list", get(self.svc, query)[1], query)
            self.assertEqual(get(self.svc, query)[1]["num_subscriptions"], 5, query)
        for query, message in (
            ("subs=detail", "Error decoding boolean for 'subs': strconv.ParseBool: parsing \"detail\": invalid syntax"),
            ("test=foo.*", "invalid test subject, must be valid publish subject: foo.*"),
            ("limit=x", "Error decoding int for 'limit': strconv.Atoi: parsing \"x\": invalid syntax"),
        ):
            request = DummyRequest([b""])
            request.args = {k.encode(): [v.encode()] for k, v in [query.split("=")]}
            body = self.svc.getServiceNamed("monitor").site.resource.children[b"subsz"].render_GET(request)
            self.assertEqual((request.responseCode, body.decode()), (400, message))

    def test_connz_subs_detail(self) -> None:
        """/connz?subs=detail: each connection's subscriptions as nats-server's SubDetail (no account); subs=1 the subjects."""
        c = connect(self.svc, "service", b'CONNECT {"verbose":false}\r\nSUB foo 1\r\nSUB bar q 2\r\nUNSUB 2 3\r\n')
        _, connz = get(self.svc, "/connz?subs=detail")
        (row,) = connz["connections"]
        self.assertNotIn("subscriptions_list", row)
        self.assertEqual(row["subscriptions_list_detail"], [
            {"subject": "foo", "sid": "1", "msgs": 0, "cid": c.proto.cid},
            {"subject": "bar", "qgroup": "q", "sid": "2", "msgs": 0, "max": 3, "cid": c.proto.cid},
        ])
        self.assertEqual(get(self.svc, "/connz?subs=DETAIL")[1]["connections"], connz["connections"])
        (row,) = get(self.svc, "/connz?subs=1")[1]["connections"]
        self.assertEqual((row["subscriptions_list"], "subscriptions_list_detail" in row), (["foo", "bar"], False))

    def test_metrics_move(self) -> None:
        _, before = get(self.svc, "/metrics")
        self.assertIn("eventsvc_in_msgs_total 0.0", before)
        c = connect(self.svc, "service", b'CONNECT {"verbose":false}\r\nPUB x 3\r\nabc\r\n')
        self.svc.broker.publish("event.event_feed", payload("event_feed", "m-1"))
        self.svc.broker.publish("event.nope", b"{}")
        _, after = get(self.svc, "/metrics")
        self.assertIn('eventsvc_connections{listener="service"} 1.0', after)
        self.assertIn("eventsvc_in_msgs_total 3.0", after)
        self.assertIn('eventsvc_events_accepted_total{type="event_feed"} 1.0', after)
        self.assertIn('eventsvc_events_refused_total{reason="invalid"} 1.0', after)
        self.assertIn('eventsvc_events_delivered_total{handler="event_feed",type="event_feed"} 1.0', after)
        self.assertIn('eventsvc_delivery_latency_seconds_count{handler="event_feed"} 1.0', after)
        self.assertIn("eventsvc_events_queued 0.0", after)
        del c


def accept(event):
    return None


class FormatTests(SynchronousTestCase):
    def test_go_durations(self) -> None:
        self.assertEqual(go_duration(0), "0s")
        self.assertEqual(go_duration(0.000539), "539µs")
        self.assertEqual(go_duration(0.0015), "1.5ms")
        self.assertEqual(go_duration(2), "2s")
        self.assertEqual(go_duration(123.5), "2m3.5s")
        self.assertEqual(go_duration(3723), "1h2m3s")

    def test_uptime(self) -> None:
        self.assertEqual(uptime(5), "5s")
        self.assertEqual(uptime(3723), "1h2m3s")
        self.assertEqual(uptime(90061), "1d1h1m1s")


class LongPageTests(SynchronousTestCase):
    """Thousands of closed connections are written a slice per reactor turn, and the answer is whole."""

    def test_closed_connections_in_slices(self) -> None:

        from eventsvc.ops import monitor as monitor_module

        clock = MemoryReactorClock()
        svc = make_service(config.parse("[service]\nport = 0\n[monitor]\nport = 0\n"), clock)
        svc.startService()
        self.addCleanup(svc.stopService)
        for _ in range(monitor_module.ROWS_PER_TURN * 3 + 7):
            connect(svc, "service", b'CONNECT {"verbose":false}\r\n').proto.connectionLost(None)
        site = svc.getServiceNamed("monitor").site
        request = DummyRequest([b""])
        request.args = {b"state": [b"closed"], b"limit": [b"10000"]}
        site.resource.children[b"connz"].render_GET(request)
        written = len(request.written)
        self.assertFalse(request.finished)
        while not request.finished:
            clock.advance(0)
        self.assertGreater(len(request.written), written)
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["num_connections"], monitor_module.ROWS_PER_TURN * 3 + 7)
        self.assertEqual(len(body["connections"]), body["num_connections"])
        self.assertEqual(body["connections"][0]["reason"], "Client Closed")


class LongSubscriptionListTests(SynchronousTestCase):
    def test_subscriptions_in_slices(self) -> None:
        """/subsz?subs=1 with thousands of subscriptions is written a slice per reactor turn, and the answer is whole."""
        from eventsvc.ops import monitor as monitor_module

        clock = MemoryReactorClock()
        svc = make_service(config.parse("[service]\nport = 0\n[monitor]\nport = 0\n"), clock)
        svc.startService()
        self.addCleanup(svc.stopService)
        count = monitor_module.ROWS_PER_TURN * 4 + 3
        connect(svc, "service", b'CONNECT {"verbose":false}\r\n' + b"".join(b"SUB many.%d %d\r\n" % (i, i) for i in range(count)))
        clock.advance(0)  # (the parser's later turns)
        everyone = svc.broker.sublist.count  # (and the event service's two, and the health question)
        self.assertEqual(everyone, count + 3)
        request = DummyRequest([b""])
        request.args = {b"subs": [b"1"], b"limit": [b"100000"]}
        svc.getServiceNamed("monitor").site.resource.children[b"subsz"].render_GET(request)
        self.assertFalse(request.finished)
        while not request.finished:
            clock.advance(0)
        body = json.loads(b"".join(request.written))
        self.assertEqual((body["total"], len(body["subscriptions_list"])), (everyone, everyone))
        self.assertLessEqual({"many.%d" % i for i in range(count)}, {s["subject"] for s in body["subscriptions_list"]})


class ClosedConnectionTests(SynchronousTestCase):
    def test_closed_connections_are_kept_as_figures_only(self) -> None:
        """/connz?state=closed keeps what it shows, not the connection (which would stay alive for the collector)."""
        import gc
        import weakref

        from eventsvc.nats.server import Broker, ClosedConnection

        class Conn:
            in_msgs = out_msgs = in_bytes = out_bytes = 3
            name, lang, client_version, identity, listener = "n", "go", "1.0", None, "gateway"
            start = last_activity = 1.0
            stopped, close_reason, rtt, peer = 2.0, "Client Closed", 0.001, object()
            held = b"x" * 1000

        broker = Broker(server_id="T")
        conn = Conn()
        conn.cid = broker.register(conn)
        gone = weakref.ref(conn)
        broker.unregister(conn)
        del conn
        gc.collect()
        self.assertIsNone(gone())
        [closed] = broker.closed
        self.assertIsInstance(closed, ClosedConnection)
        self.assertEqual((closed.cid, closed.name, closed.in_bytes, closed.close_reason, closed.closed, closed.subs), (1, "n", 3, "Client Closed", True, ()))
