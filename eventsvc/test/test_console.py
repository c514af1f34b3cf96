"""
The console's resources on the monitor (L{eventsvc.ops.console}), rendered
in memory: what the page is given, the history it draws, the Host and
origin checks, the dead letters and their replay through the event service,
and /eventz; and the monitor's index at / when the console is off.
"""

from __future__ import annotations

import io
import json
import os
import re
from urllib.parse import parse_qs

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from eventsvc import __version__, config
from eventsvc.app import make_service
from eventsvc.ops.console import HISTORY_SIZE
from eventsvc.test.eventsamples import event, payload
from eventsvc.test.test_agents import connect

CONFIG = """
[service]
port = 0
data_dir = "{data}"
[handlers]
event_feed = "python:eventsvc.test.test_monitor:accept"
[websocket]
port = 0
no_tls = true
allowed_origins = ["https://ops.example.com"]
[[websocket.identities]]
name = "console"
token = "watch"
subscribe_allow = [">"]
publish_allow = [{publish}]
[monitor]
port = 0
[console]
"""


def request(svc, path: str, method: bytes = b"GET", host: str = "127.0.0.1:8222", headers=None, body: bytes = b""):
    monitor = svc.getServiceNamed("monitor")
    path, _, query = path.partition("?")
    req = DummyRequest([part.encode() for part in path.lstrip("/").split("/")])
    req.method = method
    req.uri = (path + ("?" + query if query else "")).encode()
    req.args = parse_qs(query.encode(), keep_blank_values=True)
    req.requestHeaders.setRawHeaders(b"host", [host.encode()])
    for name, value in (headers or {}).items():
        req.requestHeaders.setRawHeaders(name.encode(), [value.encode()])
    req.content = io.BytesIO(body)
    resource = getChildForRequest(monitor.site.resource, req)
    rendered = resource.render(req)
    if rendered is not server.NOT_DONE_YET:
        req.write(rendered)
    for _ in range(50):  # an answer that waits for the event service (its spool syncs on a timer)
        if req.written or req.finished:
            break
        svc.reactor.advance(0.1)
    return req.responseCode or 200, b"".join(req.written), req


class ConsoleTests(SynchronousTestCase):
    def start(self, publish: str = '"$EVENTSVC.replay.>"') -> None:
        self.data = self.mktemp()
        os.makedirs(self.data)
        self.reactor = MemoryReactorClock()
        self.svc = make_service(config.parse(CONFIG.format(data=self.data, publish=publish)), self.reactor)
        self.svc.startService()
        self.addCleanup(self.svc.stopService)
        self.dead = self.svc.config.events.dead_letter_file
        records = [
            {"time": 1.0, "handler": "event_feed", "event_id": "evt-1", "attempts": 3, "reason": "HTTP 500", "event": event("event_feed", "evt-1")},
            {"time": 2.0, "handler": "event_feed", "event_id": "evt-2", "attempts": 9, "reason": "timeout", "event": event("event_feed", "evt-2")},
        ]
        with open(self.dead, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))

    def setUp(self) -> None:
        self.start()

    def test_page(self) -> None:
        code, body, req = request(self.svc, "/")
        self.assertEqual(code, 200)
        self.assertIn(b"<title>eventsvc console</title>", body)
        self.assertIn(b"default-src 'self'", req.responseHeaders.getRawHeaders(b"content-security-policy")[0])
        code, body, _ = request(self.svc, "/console/console.js")
        self.assertEqual(code, 200)
        self.assertIn(b"ConsoleNats", request(self.svc, "/console/nats.js")[1])
        self.assertEqual(request(self.svc, "/console/")[0], 404)  # no listing

    def test_console_json(self) -> None:
        code, body, _ = request(self.svc, "/console.json")
        self.assertEqual(code, 200)
        answer = json.loads(body)
        self.assertEqual(answer["identity"], "console")
        self.assertEqual(answer["credentials"], {"auth_token": "watch"})
        self.assertEqual(answer["websocket_scheme"], "ws")
        for host in ("localhost:8222", "[::1]:8222", "ops.example.com"):
            self.assertEqual(request(self.svc, "/console.json", host=host)[0], 200, host)
        # A name that is none of those: a page that rebound its DNS name to 127.0.0.1.
        for host in ("evil.example:8222", ""):
            self.assertEqual(request(self.svc, "/console.json", host=host)[0], 403, host)

    def test_dead_letters(self) -> None:
        code, body, _ = request(self.svc, "/deadletterz")
        answer = json.loads(body)
        self.assertEqual((code, answer["total"]), (200, 2))
        self.assertEqual([d["event_id"] for d in answer["dead_letters"]], ["evt-2", "evt-1"])  # the newest first
        self.assertEqual({d["replayable"] for d in answer["dead_letters"]}, {True})
        self.assertEqual(answer["dead_letters"][0]["type"], "event_feed")
        self.assertNotIn("event", answer["dead_letters"][0])

    def test_dead_letters_host_rule(self) -> None:
        """The dead letters answer under the console's Host rule: a rebound DNS name gets 403 and no event id; /connz and /varz do not ask."""
        for host in ("localhost:8222", "[::1]:8222", "ops.example.com", "127.0.0.1"):
            self.assertEqual(request(self.svc, "/deadletterz", host=host)[0], 200, host)
        for host in ("evil.example:8222", "evil.example", ""):
            code, body, _ = request(self.svc, "/deadletterz", host=host)
            self.assertEqual(code, 403, host)
            self.assertNotIn(b"evt-", body)
            self.assertIn("configured host", json.loads(body)["error"])
        for path in ("/connz", "/varz"):
            self.assertEqual(request(self.svc, path, host="evil.example")[0], 200, path)

    def replay(self, event_id: str = "evt-1", **headers):
        headers.setdefault("x-eventsvc-console", "replay")
        code, body, _ = request(self.svc, "/deadletterz/replay", b"POST", headers=headers, body=json.dumps({"event_id": event_id}).encode())
        return code, json.loads(body)

    def test_replay(self) -> None:
        """Through the event service's replay subject: acknowledged, then out of the file; the other stays."""
        accepted = self.svc.getServiceNamed("events").accepted
        code, answer = self.replay()
        self.assertEqual((code, answer), (200, {"event_id": "evt-1", "replayed": 1, "errors": []}))
        self.assertEqual(self.svc.getServiceNamed("events").accepted, accepted + 1)
        with open(self.dead) as f:
            self.assertEqual([json.loads(line)["event_id"] for line in f], ["evt-2"])
        self.assertEqual(self.replay()[0], 404)

    def test_replay_checks(self) -> None:
        """No header, another origin, another Host, bad JSON: refused, and the file is untouched."""
        with open(self.dead) as f:
            before = f.read()
        code, body, _ = request(self.svc, "/deadletterz/replay", b"POST", body=b'{"event_id":"evt-1"}')
        self.assertEqual(code, 403)
        self.assertEqual(self.replay(origin="https://evil.example")[0], 403)
        code, body, _ = request(self.svc, "/deadletterz/replay", b"POST", host="evil.example",
                                headers={"x-eventsvc-console": "1"}, body=b'{"event_id":"evt-1"}')
        self.assertEqual(code, 403)
        code, body, _ = request(self.svc, "/deadletterz/replay", b"POST", headers={"x-eventsvc-console": "1"}, body=b"[")
        self.assertEqual(code, 400)
        self.assertEqual(self.replay(origin="http://127.0.0.1:8222")[0], 200)  # its own page
        with open(self.dead) as f:
            self.assertEqual(len(f.read().splitlines()), len(before.splitlines()) - 1)

    def test_read_only_identity_cannot_replay(self) -> None:
        """A console identity that may not publish to $EVENTSVC.replay.<handler> replays nothing, and the page is told."""
        self.start(publish='"nothing.here"')
        answer = json.loads(request(self.svc, "/deadletterz")[1])
        self.assertEqual({d["replayable"] for d in answer["dead_letters"]}, {False})
        code, answer = self.replay()
        self.assertEqual(code, 403)
        self.assertIn("may not publish to $EVENTSVC.replay.event_feed", answer["error"])
        with open(self.dead) as f:
            self.assertEqual(len(f.read().splitlines()), 2)

    def test_eventz(self) -> None:
        events = self.svc.getServiceNamed("events")
        code, body, _ = request(self.svc, "/eventz")
        answer = json.loads(body)
        self.assertEqual((code, answer["enabled"], answer["accepted"]), (200, True, events.accepted))
        self.assertEqual(set(answer["handlers"]), set(events.handlers))
        latency = answer["handlers"]["event_feed"]["latency"]
        self.assertEqual(latency["buckets"][-1][0], "+Inf")


    def history(self, query: str = "") -> dict:
        code, body, req = request(self.svc, "/console/history.json" + query)
        self.assertEqual((code, req.responseHeaders.getRawHeaders(b"content-type")), (200, [b"application/json"]))
        return json.loads(body)

    def test_history_from_start(self) -> None:
        """
        One sample a second from the moment the service started, on its
        clock: messages and bytes in and out per second, events accepted and
        refused per second, and what is queued and connected then.
        """
        self.assertEqual(self.history()["columns"]["t"], [])  # (a rate needs two readings)
        start = self.reactor.seconds()
        self.reactor.advance(1)
        self.reactor.advance(1)
        watcher = connect(self.svc, "service", b"CONNECT {}\r\nSUB orders.> 1\r\n")
        producer = connect(self.svc, "service", b"CONNECT {}\r\n" + b"PUB orders.eu 5\r\nhello\r\n" * 4)
        event_feed = payload("event_feed", "evt-history")
        producer.send(b"PUB event.event_feed _INBOX.a %d\r\n%s\r\nPUB event.event_feed _INBOX.b 8\r\nnot json\r\n" % (len(event_feed), event_feed))
        self.reactor.advance(0.5)
        self.reactor.advance(0.5)
        answer = self.history()
        self.assertEqual((answer["interval"], answer["size"]), (1.0, HISTORY_SIZE))
        columns = answer["columns"]
        self.assertEqual(columns["t"], [start + 1, start + 2, start + 3])
        # All that traffic came in that third second: its rates are /varz's counters.
        varz = json.loads(request(self.svc, "/varz")[1])
        for key in ("in_msgs", "in_bytes", "out_msgs", "out_bytes"):
            self.assertEqual(columns[key], [0, 0, varz[key]], key)
        # (In: four on orders.eu, two events, and the service's two answers; out: four to the watcher and the answers.)
        self.assertEqual((varz["in_msgs"], varz["out_msgs"]), (8, 6))
        self.assertEqual((columns["accepted"][-1], columns["refused"][-1]), (1, 1))
        self.assertEqual(columns["connections"], [0, 0, 2])
        self.assertEqual(len(columns["queued"]), 3)
        # The page asks for what it has not got yet.
        later = self.history("?since={}".format(start + 2))["columns"]
        self.assertEqual((later["t"], later["in_msgs"]), ([start + 3], [8]))
        self.reactor.advance(1)
        self.reactor.advance(1)
        self.assertEqual(self.history("?since={}".format(start + 3))["columns"]["in_msgs"], [0, 0])
        # A late turn of the reactor gives one sample over the longer time, not a spike.
        producer.send(b"PUB orders.eu 5\r\nhello\r\n" * 4)
        self.reactor.advance(2)
        later = self.history("?since={}".format(start + 5))["columns"]
        self.assertEqual((later["t"], later["in_msgs"]), ([start + 7], [2]))
        del watcher

    def test_history_keeps_an_hour(self) -> None:
        """The ring keeps the last HISTORY_SIZE seconds (and not many more in memory), and stops with the service."""
        history = self.svc.getServiceNamed("monitor").history
        for _ in range(HISTORY_SIZE + 100):
            self.reactor.advance(1)
            self.assertLess(len(history), HISTORY_SIZE + 60)
        t = self.history()["columns"]["t"]
        self.assertEqual((len(t), t[0], t[-1]), (HISTORY_SIZE, 101, HISTORY_SIZE + 100))
        self.assertEqual(self.history("?since=3650")["columns"]["t"], list(range(3651, HISTORY_SIZE + 101)))
        self.svc.stopService()
        self.reactor.advance(10)
        self.assertEqual(self.history()["columns"]["t"][-1], HISTORY_SIZE + 100)

    def test_history_refuses_a_bad_since(self) -> None:
        code, body, _ = request(self.svc, "/console/history.json?since=yesterday")
        self.assertEqual((code, json.loads(body)), (400, {"error": "since is a time in seconds since the epoch, not 'yesterday'"}))


class ConsoleOffTests(SynchronousTestCase):
    def start(self, extra: str = "") -> object:
        svc = make_service(config.parse("[service]\nport = 0\n[monitor]\nport = 0\n" + extra), MemoryReactorClock())
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    def test_off_unless_configured(self) -> None:
        """Without [console] the monitor serves no page, no credentials, no replay and no history."""
        svc = self.start()
        for path in ("/console.json", "/deadletterz", "/console/console.js", "/console/history.json"):
            self.assertEqual(request(svc, path)[0], 404, path)
        self.assertIsNone(svc.getServiceNamed("monitor").history)

    def test_index(self) -> None:
        """
        / lists the monitor's endpoints, as nats-server's monitor does: each
        a link, with nats-server's names where it has the endpoint, and ours.
        """
        svc = self.start('[handlers]\nevent_feed = "python:eventsvc.test.test_monitor:accept"\n')
        code, body, req = request(svc, "/")
        self.assertEqual((code, req.responseHeaders.getRawHeaders(b"content-type")), (200, [b"text/html; charset=utf-8"]))
        page = body.decode("utf-8")
        self.assertIn("<title>eventsvc monitor</title>", page)
        links = re.findall(r'<a href="\./(\w+)">([^<]+)</a>', page)
        self.assertEqual(links, [
            ("varz", "General"), ("jsz", "JetStream"), ("connz", "Connections"), ("subsz", "Subscriptions"), ("routez", "Routes"),
            ("leafz", "LeafNodes"), ("gatewayz", "Gateways"), ("healthz", "Health Probe"), ("eventz", "Events"),
            ("metrics", "Prometheus metrics"),
        ])
        self.assertIn("NATS protocol of nats-server 2.9.10", page)
        self.assertIn("eventsvc/" + __version__, page)
        # Each is served.
        for path, _ in links:
            self.assertEqual(request(svc, "/" + path)[0], 200, path)
        # An endpoint the monitor gains is listed too, under its path.
        svc.getServiceNamed("monitor").site.resource.putChild(b"accountz", Resource())
        self.assertIn('<a href="./accountz">accountz</a>', request(svc, "/")[1].decode())
