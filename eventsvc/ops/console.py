"""
The live console, on the monitor's listener: the page at /, its files under
/console/, the last hour of per-second figures (/console/history.json, so
the charts open full), what the page needs to connect (/console.json), and
the dead letters (/deadletterz, and POST /deadletterz/replay).

The page speaks NATS over the [websocket] listener as the console identity
([console] identity), and can do there only what that identity's
permissions allow.  Replaying a dead letter is a publish to
C{$EVENTSVC.replay.<handler>}: it is refused unless the console identity
may publish there.

What keeps the console safe to leave on:
  - the monitor binds to loopback unless told otherwise;
  - /console.json (it holds the identity's secret), /deadletterz (event
    ids, handlers and why each failed) and the replay answer only to a
    Host the operator named: an IP address, localhost, the
    monitor's host, or a host of [websocket] allowed_origins.  A page on
    another site that rebinds its name to 127.0.0.1 is refused;
  - a replay must be a POST with the header C{X-Eventsvc-Console}, which a
    page on another origin cannot send without CORS, which is never
    granted; an Origin header, when present, must be the monitor's own.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import uuid
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import resource, server, static

from eventsvc.events.deadletters import read_dead_letters
from eventsvc.events.deadletters import REPLAY_PREFIX
from eventsvc.files import write_atomic
from eventsvc.nats.timers import cancel

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "console", "static")
#: Dead letters listed at most (the newest).
LIST_LIMIT = 200
#: Seconds a replay waits for the event service's acknowledgement.
REPLAY_TIMEOUT = 5.0
#: What a request under a Host the operator did not name is told.
UNTRUSTED_HOST = "the console answers only under an IP address, localhost or a configured host"
#: Samples the history keeps: an hour of one a second.
HISTORY_SIZE = 3600
HISTORY_INTERVAL = 1.0

log = Logger()


@dataclass(frozen=True)
class ConsoleSettings:
    """What the console is given by the configuration ([console], [websocket])."""

    identity: str
    #: The CONNECT keys it logs in with: auth_token, or user and pass.
    credentials: Dict[str, str]
    #: The identity's permissions (an IPermissions).
    permissions: Any
    #: Where the page connects; "" for the page's own host and the listener's port.
    websocket_url: str = ""
    websocket_secure: bool = False
    dead_letter_file: str = ""
    #: Host names (besides IP addresses and localhost) the console answers under.
    hosts: Tuple[str, ...] = field(default_factory=tuple)

    def may_replay(self, handler: str) -> bool:
        return bool(self.permissions is None or self.permissions.may_publish((REPLAY_PREFIX + handler).encode("utf-8")))


def add_console(root: Any, monitor: Any, settings: ConsoleSettings) -> "History":
    """
    Put the console's resources on the monitor's root.  The history they
    serve is returned: the monitor starts and stops it with its listener.
    """
    history = History(monitor)
    root.putChild(b"", _Page(os.path.join(STATIC, "index.html")))
    files = _Files(STATIC)
    files.putChild(b"history.json", _History(history))
    root.putChild(b"console", files)
    root.putChild(b"console.json", _ConsoleJSON(monitor, settings))
    dead = _DeadLetterz(monitor, settings)
    dead.putChild(b"replay", _Replay(monitor, settings))
    root.putChild(b"deadletterz", dead)
    return history


class History:
    """
    The last hour of per-second figures, from the moment the service
    started: what the console's charts draw when the page opens.

    One sample a second on the reactor's clock reads the counters the
    monitor already keeps (what /varz and /eventz read) and keeps their
    change per second; nothing is added to the message path.  The samples
    are kept a column each (the time, then L{COLUMNS}), in arrays of
    doubles: an hour is some 300 kB.
    """

    #: Rates (per second) of the server's counters, then the events', then gauges.
    COLUMNS = ("in_msgs", "out_msgs", "in_bytes", "out_bytes", "accepted", "refused", "queued", "connections")

    def __init__(self, monitor: Any, size: int = HISTORY_SIZE, interval: float = HISTORY_INTERVAL) -> None:
        self.monitor = monitor
        self.size = size
        self.interval = interval
        self.columns: Dict[str, "array[float]"] = {name: array("d") for name in ("t",) + self.COLUMNS}
        self._last: Optional[Tuple[float, Tuple[int, ...]]] = None
        self._loop = LoopingCall(self.sample)
        self._loop.clock = monitor.clock

    def __len__(self) -> int:
        return len(self.columns["t"])

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _read(self) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        totals = self.monitor.broker.totals()
        events = getattr(self.monitor.service, "events", None)
        counters = (
            totals["in_msgs"], totals["out_msgs"], totals["in_bytes"], totals["out_bytes"],
            events.accepted if events is not None else 0, events.refused if events is not None else 0,
        )
        return counters, (events.pending if events is not None else 0, totals["connections"])

    def sample(self) -> None:
        """Keep one sample: each counter's change per second since the last, and the gauges now."""
        now = self.monitor.clock.seconds()
        counters, gauges = self._read()
        if self._last is not None:
            then, before = self._last
            # (A late turn of the reactor makes a longer second, not a spike.)
            elapsed = max(now - then, 1e-3)
            row = (round(now, 3),) + tuple(round((c - b) / elapsed, 2) for c, b in zip(counters, before)) + gauges
            for column, value in zip(self.columns.values(), row):
                column.append(value)
            # Trimmed a minute at a time, not a sample at a time (each trim moves the whole array).
            if len(self) >= self.size + 60:
                for column in self.columns.values():
                    del column[: len(column) - self.size]
        self._last = (now, counters)

    def since(self, after: float = 0.0) -> Dict[str, Any]:
        """The samples (of the last L{size}) later than C{after}, a list per column (as a chart takes them)."""
        first = max(bisect_right(self.columns["t"], after), len(self) - self.size)
        return {
            "interval": self.interval,
            "size": self.size,
            "columns": {
                name: [int(v) if v.is_integer() else v for v in column[first:]] for name, column in self.columns.items()
            },
        }


def trusted_host(request: Any, settings: ConsoleSettings, monitor_host: str) -> bool:
    """
    Whether the request names a host the operator chose (see the module
    docstring): what defeats DNS rebinding.
    """
    host = (request.getHeader(b"host") or b"").decode("latin-1")
    name = urlsplit("//" + host).hostname or ""
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in ("localhost", monitor_host) or name in settings.hosts


def _json(request: Any, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=2).encode("utf-8") + b"\n"


class _Files(static.File):
    """The page's files; no folder listings, no index page."""

    indexNames: List[str] = []

    def directoryListing(self) -> Any:
        return resource.NoResource()


class _Page(resource.Resource):
    isLeaf = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        # The page runs only its own scripts, and talks only to this monitor
        # and to WebSockets (the NATS listener).
        request.setHeader(
            b"content-security-policy",
            b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
        )
        request.setHeader(b"x-frame-options", b"DENY")
        with open(self.path, "rb") as f:
            return f.read()


class _History(resource.Resource):
    """GET /console/history.json[?since=T]: the history's samples (after time T)."""

    isLeaf = True

    def __init__(self, history: History) -> None:
        super().__init__()
        self.history = history

    def render_GET(self, request: Any) -> bytes:
        text = (request.args.get(b"since") or [b"0"])[0].decode("latin-1")
        try:
            after = float(text or 0)
        except ValueError:
            return _json(request, 400, {"error": "since is a time in seconds since the epoch, not {!r}".format(text)})
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        # Compact: an hour of samples is some 30,000 numbers.
        return json.dumps(self.history.since(after), separators=(",", ":")).encode("utf-8")


class _ConsoleResource(resource.Resource):
    """A console resource: it reads the running service through the monitor, and is told the console's settings."""

    def __init__(self, monitor: Any, settings: ConsoleSettings) -> None:
        super().__init__()
        self.monitor = monitor
        self.settings = settings


class _ConsoleJSON(_ConsoleResource):
    """What the page needs to connect: the WebSocket URL and the identity's credentials."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        s = self.settings
        if not trusted_host(request, s, self.monitor.http_host):
            return _json(request, 403, {"error": UNTRUSTED_HOST})
        websocket = self.monitor.listener("websocket")
        return _json(request, 200, {
            "identity": s.identity,
            "websocket_url": s.websocket_url,
            "websocket_port": websocket.state.port if websocket is not None else 0,
            "websocket_scheme": "wss" if s.websocket_secure else "ws",
            "credentials": s.credentials,
            "server_name": self.monitor.broker.server_name,
        })


class _DeadLetterz(_ConsoleResource):
    """GET: the newest dead letters (at most LIST_LIMIT), without their bodies, and whether each may be replayed."""

    def getChild(self, path: bytes, request: Any) -> Any:
        if path == b"":
            return self
        return resource.NoResource()

    def render_GET(self, request: Any) -> bytes:
        if not trusted_host(request, self.settings, self.monitor.http_host):
            # What failed and why is for the operator, not for a page that
            # rebound its DNS name to this monitor.
            return _json(request, 403, {"error": UNTRUSTED_HOST})
        path = self.settings.dead_letter_file
        _, records, bad = read_dead_letters(path) if path else ([], [], [])
        found = [r for r in records if r is not None]
        rows = [{
            "time": r.get("time"), "handler": r.get("handler"), "event_id": r.get("event_id"),
            "type": (r.get("event") or {}).get("type", {}).get("name") if isinstance(r.get("event"), dict) else None,
            "attempts": r.get("attempts"), "reason": r.get("reason"),
            "replayable": self.settings.may_replay(str(r.get("handler"))),
        } for r in found[-LIST_LIMIT:]]
        rows.reverse()
        return _json(request, 200, {"file": path, "total": len(found), "unreadable_lines": bad, "dead_letters": rows})


class _Replay(_ConsoleResource):
    """
    POST {"event_id": "..."}: put that dead letter back for its handler, as
    C{eventsvc dead-letters replay --id} does (through the event service's
    replay subject, then out of the file under its lock).
    """

    isLeaf = True

    def render_POST(self, request: Any) -> Any:
        s = self.settings
        if not trusted_host(request, s, self.monitor.http_host):
            return _json(request, 403, {"error": UNTRUSTED_HOST})
        if not request.getHeader(b"x-eventsvc-console"):
            return _json(request, 403, {"error": "a replay needs the X-Eventsvc-Console header (sent by the console page)"})
        origin = (request.getHeader(b"origin") or b"").decode("latin-1")
        if origin and urlsplit(origin).netloc != (request.getHeader(b"host") or b"").decode("latin-1"):
            return _json(request, 403, {"error": "a replay must come from the console's own page"})
        try:
            event_id = json.loads(request.content.read() or b"{}")["event_id"]
            if not isinstance(event_id, str) or not event_id:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return _json(request, 400, {"error": 'send {"event_id": "..."}'})
        if not s.dead_letter_file:
            return _json(request, 404, {"error": "no dead-letter file ([events] dead_letter_file)"})
        d = replay(self.monitor.broker, self.monitor.clock, s, event_id)

        def answer(result: Tuple[int, Dict[str, Any]]) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_json(request, *result))
                request.finish()

        d.addCallback(answer)
        d.addErrback(lambda f: answer((500, {"error": f.getErrorMessage()})))
        return server.NOT_DONE_YET


def replay(broker: Any, clock: Any, settings: ConsoleSettings, event_id: str) -> Deferred:
    """
    Replay the dead letters with C{event_id}, each once: the file is locked
    while the event service acknowledges, and only what it accepted is taken
    out.  Fires with (HTTP code, answer).
    """
    path = settings.dead_letter_file
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return succeed((404, {"error": "no dead letters"}))
    except OSError as e:
        return succeed((500, {"error": "{}: {}".format(path, e.strerror)}))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return succeed((409, {"error": "the dead-letter file is busy (a replay is under way)"}))
    lines, records, _ = read_dead_letters(path)
    chosen = [i for i, r in enumerate(records) if r is not None and r.get("event_id") == event_id]
    if not chosen:
        os.close(fd)
        return succeed((404, {"error": "no dead letter has event id {}".format(event_id)}))
    refused = [records[i]["handler"] for i in chosen if not settings.may_replay(str(records[i]["handler"]))]
    if refused:
        os.close(fd)
        return succeed((403, {"error": "the console identity {!r} may not publish to {}".format(
            settings.identity, ", ".join(REPLAY_PREFIX + str(h) for h in refused))}))
    done: Deferred = Deferred()
    replayed: List[int] = []
    errors: List[str] = []
    waiting = set(chosen)

    def finish() -> None:
        if done.called:
            return
        try:
            if replayed:
                kept = [line for i, line in enumerate(lines) if i not in replayed]
                write_atomic(path, "".join(line + "\n" for line in kept).encode("utf-8"), 0o600)
        finally:
            os.close(fd)
        for sub in subs:
            sub.unsubscribe()
        cancel(timer)
        log.info("console: replayed {count} dead letter(s) of {event_id}", count=len(replayed), event_id=event_id)
        code = 200 if replayed and not errors else 502
        done.callback((code, {"event_id": event_id, "replayed": len(replayed), "errors": errors}))

    def timed_out() -> None:
        errors.append("no acknowledgement in {}s".format(REPLAY_TIMEOUT))
        finish()

    subs: List[Any] = []
    timer = clock.callLater(REPLAY_TIMEOUT, timed_out)
    for i in chosen:
        inbox = "_INBOX.console.{}".format(uuid.uuid4().hex)

        def acked(subject: str, reply: Any, payload: bytes, headers: Any, i: int = i) -> None:
            try:
                ack = json.loads(payload)
            except ValueError:
                ack = {"success": False, "error": "not JSON"}
            if ack.get("success"):
                replayed.append(i)
            else:
                errors.append(str(ack.get("error")))
            waiting.discard(i)
            if not waiting:
                finish()

        subs.append(broker.subscribe(inbox, acked))
        record = records[i]
        if not broker.publish(REPLAY_PREFIX + str(record["handler"]), json.dumps(record["event"]).encode("utf-8"), reply=inbox):
            errors.append("no event service answers on {}".format(REPLAY_PREFIX + str(record["handler"])))
            waiting.discard(i)
    if not waiting:
        finish()
    return done
