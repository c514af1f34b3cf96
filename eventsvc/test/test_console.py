"""
The console's resources on the monitor (L{eventsvc.ops.console}), rendered
in memory: what the page is given, the Host and origin checks, the dead
letters and their replay through the event service, and /eventz.
"""

from __future__ import annotations

import io
import json
import os
from urllib.parse import parse_qs

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from eventsvc import config
from eventsvc.app import make_service
from eventsvc.test.eventsamples import event

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


class ConsoleOffTests(SynchronousTestCase):
    def test_off_unless_configured(self) -> None:
        """Without [console] the monitor serves no page, no credentials and no replay."""
        svc = make_service(config.parse("[service]\nport = 0\n[monitor]\nport = 0\n"), MemoryReactorClock())
        svc.startService()
        self.addCleanup(svc.stopService)
        for path in ("/", "/console.json", "/deadletterz", "/console/console.js"):
            self.assertEqual(request(svc, path)[0], 404, path)
