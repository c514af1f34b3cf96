"""
Monitoring over HTTP, as nats-server's: /healthz, /varz, /connz, /subsz,
/routez with its field names and units (durations in nanoseconds where it
uses them, Go duration strings for rtt/uptime/idle, RFC 3339 times), so
nats-top, the Prometheus exporter and client test suites read them;
/metrics in Prometheus' text format; and at / an index of them, as
nats-server's (the console's page instead, when [console] is on).

Everything is computed when a page is asked for: nothing here adds work to
the message path.
"""

from __future__ import annotations

import html
import json
import os
import resource as _resource
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, Optional

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import resource, server

from eventsvc.nats.listener import ListenError
from eventsvc.ops import jsz as js_ops
from eventsvc.nats.subjects import subject_matches, valid_literal_subject


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def go_duration(seconds: float) -> str:
    """A duration as Go's time.Duration prints it ("539µs", "1.5ms", "2m3s")."""
    ns = int(round(seconds * 1e9))
    if ns == 0:
        return "0s"
    if ns < 1000:
        return "%dns" % ns
    if ns < 1000000:
        return _trim(ns / 1e3) + "µs"
    if ns < 1000000000:
        return _trim(ns / 1e6) + "ms"
    s = ns / 1e9
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += "%dh" % hours
    if hours or minutes:
        out += "%dm" % minutes
    return out + _trim(secs) + "s"


def _trim(value: float) -> str:
    return ("%.9f" % value).rstrip("0").rstrip(".")


def uptime(seconds: float) -> str:
    """nats-server's uptime format: "1d2h3m4s", "5s"."""
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    out = ""
    for value, unit in ((days, "d"), (hours, "h"), (minutes, "m")):
        if value or out:
            out += "%d%s" % (value, unit)
    return out + "%ds" % seconds


def _end(c: Any, now: float) -> float:
    return c.stopped if c.closed and c.stopped else now


#: /connz?sort=...: nats-server's options, each a key and whether it is
#: descending (cid and start are the connection order; ties keep it).
_CONNZ_SORT: Dict[str, "tuple[Optional[Callable[[Any, float], Any]], bool]"] = {
    "cid": (None, False),
    "start": (None, False),
    "subs": (lambda c, now: len(c.subs), True),
    "pending": (lambda c, now: 0 if c.closed else c.pending_bytes, True),
    "msgs_to": (lambda c, now: c.out_msgs, True),
    "msgs_from": (lambda c, now: c.in_msgs, True),
    "bytes_to": (lambda c, now: c.out_bytes, True),
    "bytes_from": (lambda c, now: c.in_bytes, True),
    "last": (lambda c, now: c.last_activity, True),
    # nats-server's "idle" orders by last activity minus start.
    "idle": (lambda c, now: c.last_activity - c.start, True),
    "uptime": (lambda c, now: _end(c, now) - c.start, False),
    "stop": (lambda c, now: c.stopped, True),
    "reason": (lambda c, now: c.close_reason or "Client Closed", False),
}


def arg(args: Dict[bytes, List[bytes]], name: str) -> str:
    """A query parameter's first value, or the empty string."""
    return args.get(name.encode(), [b""])[0].decode("utf-8", "replace")


def arg_int(args: Dict[bytes, List[bytes]], name: str) -> int:
    text = arg(args, name)
    try:
        return int(text) if text else 0
    except ValueError:
        raise ValueError("Error decoding int for '{}': strconv.Atoi: parsing {}: invalid syntax".format(name, json.dumps(text))) from None


def arg_bool(args: Dict[bytes, List[bytes]], name: str) -> bool:
    """Go's strconv.ParseBool spellings, as nats-server reads them."""
    text = arg(args, name)
    if text in ("", "0", "f", "F", "false", "FALSE", "False"):
        return False
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    raise ValueError("Error decoding boolean for '{}': strconv.ParseBool: parsing {}: invalid syntax".format(name, json.dumps(text)))


def arg_subs(args: Dict[bytes, List[bytes]]) -> "tuple[bool, bool]":
    """
    /connz's (and /routez's) C{subs}: (listed, in detail), as nats-server's
    decodeSubs reads it: C{detail} in any case, else a boolean.
    """
    if arg(args, "subs").lower() == "detail":
        return True, True
    return arg_bool(args, "subs"), False


def sub_detail(sub: Any, cid: int) -> dict:
    """A subscription as nats-server's SubDetail (its omitempty fields left out when empty)."""
    out: Dict[str, Any] = {"subject": sub.subject.decode("utf-8", "replace")}
    if sub.queue:
        out["qgroup"] = sub.queue.decode("utf-8", "replace")
    # (msgs: what the broker counts, the deliveries of a subscription with
    # an auto-unsubscribe max; nats-server counts every subscription's.)
    out.update(sid=sub.sid.decode("utf-8", "replace"), msgs=sub.delivered)
    if sub.max:
        out["max"] = sub.max
    out["cid"] = cid
    return out


#: The one account there is (nats-server's global account): every subscription's.
GLOBAL_ACCOUNT = "$G"


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss * 1024


class Monitor:
    """Reads the running service's state into nats-server shaped dicts."""

    def __init__(self, service: Any, clock: Any, http_host: str = "", http_port: int = 0) -> None:
        self.service = service
        self.clock = clock
        self.http_host = http_host
        self.http_port = http_port
        self.requests: Dict[str, int] = {}
        self.started = time.time()
        self._cpu = (time.monotonic(), time.process_time())

    @property
    def broker(self) -> Any:
        return self.service.broker

    def _named(self, name: str) -> Any:
        """The running service's child service C{name}, or None."""
        try:
            return self.service.getServiceNamed(name)
        except KeyError:
            return None

    def listener(self, name: str) -> Any:
        """The factory of listener C{name} (its settings and state), or None."""
        listener = self._named(name)
        return None if listener is None else listener.factory

    def cluster(self) -> Any:
        return self._named("cluster")

    def supercluster(self) -> Any:
        return self._named("supercluster")

    def leafnodes(self) -> Any:
        return self._named("leafnodes")

    def eventz(self) -> dict:
        """
        The typed events' counters (eventsvc's own; /metrics has the same
        as Prometheus series): accepted and refused, and per handler what it
        delivered, retried and dead-lettered by type, its backlog and its
        delivery-latency histogram (cumulative buckets, seconds); and the
        store: C{{"kind": "file"|"memory", "path", "state": "ok"|"full"|"read-only",
        "error"}}.
        """
        events = getattr(self.service, "events", None)
        out: Dict[str, Any] = {"server_id": self.broker.server_id, "now": rfc3339(time.time())}
        if events is None:
            return dict(out, enabled=False, store={"kind": "memory", "path": None, "state": "ok", "error": None})
        handlers = {}
        for name, handler in sorted(events.handlers.items()):
            buckets, total = handler.latency.snapshot()
            handlers[name] = dict(
                {key: dict(sorted(counts.items())) for key, counts in handler.by_type.items()},
                backlog=handler.backlog_size,
                backlog_growing_seconds=handler.growing_seconds(),
                requests=handler.attempts,
                # Failing with no success since; /healthz waits [events] down_after.
                down=handler.down_since is not None,
                down_since=None if handler.down_since is None else rfc3339(time.time() - handler.down_for()),
                last_error=handler.last_error,
                failed_attempts=handler.failed_attempts,
                latency={"buckets": buckets, "sum": total, "count": buckets[-1][1]},  # (the last bucket is +Inf: all of them)
            )
        return dict(
            out, enabled=True, queued=events.pending, accepted=events.accepted,
            accepted_by_type=dict(sorted(events.accepted_by_type.items())),
            refused=events.refused, refused_by_reason=dict(sorted(events.refused_by_reason.items())),
            handlers=handlers, store=events.store,
        )

    def healthz(self) -> "tuple[int, dict]":
        ok, why = self.service.health()
        if not ok:
            return 503, {"status": "unavailable", "error": why}
        return 200, {"status": "ok"}

    def _cpu_percent(self) -> float:
        now = (time.monotonic(), time.process_time())
        wall, cpu = now[0] - self._cpu[0], now[1] - self._cpu[1]
        self._cpu = now
        return round(100.0 * cpu / wall, 1) if wall > 0 else 0.0

    def varz(self) -> dict:
        b = self.broker
        agent_listener = self.listener("gateway")
        listener = self.listener("service") or agent_listener
        s = listener.settings
        agents = agent_listener.settings if agent_listener is not None else None
        cluster = self.cluster()
        supercluster = self.supercluster()
        leafs = self.leafnodes()
        totals = b.totals()
        now = time.time()
        info = {
            "server_id": b.server_id,
            "server_name": b.server_name,
            "version": b.version,
            "proto": 1,
            "go": b.implementation,
            "host": s.host,
            "port": listener.state.port,
            "max_connections": s.max_connections,
            "ping_interval": int(s.ping_interval * 1e9),
            "ping_max": s.ping_max,
            "http_host": self.http_host,
            "http_port": self.http_port,
            "http_base_path": "",
            "https_port": 0,
            "auth_timeout": (agents or s).auth_timeout,
            "max_control_line": s.max_control_line,
            "max_payload": s.max_payload,
            "max_pending": s.max_pending,
            "cluster": {} if cluster is None else {
                "name": cluster.settings.cluster_name, "addr": cluster.settings.host, "cluster_port": cluster.port,
                "urls": list(cluster.configured),
            },
            "gateway": {} if supercluster is None else {
                "name": supercluster.settings.name, "host": supercluster.settings.host, "port": supercluster.port,
                "auth_timeout": supercluster.settings.handshake_timeout, "tls_timeout": supercluster.settings.handshake_timeout,
                "gateways": [
                    {"name": r.name, "urls": [u.split("://", 1)[-1] for u in r.urls]}
                    for r in sorted(supercluster.remotes.values(), key=lambda r: r.name)
                ],
            },
            "leaf": {} if leafs is None else _leaf_varz(leafs),
            "mqtt": {},
            "websocket": {},
            "jetstream": js_ops.varz_jetstream(self.service),
            "tls_timeout": s.tls_timeout,
            "write_deadline": int(s.write_deadline * 1e9),
            "start": rfc3339(self.started),
            "now": rfc3339(now),
            "uptime": uptime(now - self.started),
            "mem": rss_bytes(),
            "cores": os.cpu_count() or 1,
            "gomaxprocs": 1,
            "cpu": self._cpu_percent(),
            "connections": totals["connections"],
            "total_connections": totals["total_connections"],
            "routes": 0 if cluster is None else len(cluster.routes),
            "remotes": 0 if cluster is None else len(cluster.routes),
            "leafnodes": 0 if leafs is None else len(leafs.leafs),
            "in_msgs": totals["in_msgs"],
            "out_msgs": totals["out_msgs"],
            "in_bytes": totals["in_bytes"],
            "out_bytes": totals["out_bytes"],
            "slow_consumers": totals["slow_consumers"],
            "subscriptions": totals["subscriptions"],
            "http_req_stats": dict(self.requests),
            "config_load_time": rfc3339(getattr(self.service, "config_loaded", self.started)),
        }
        if s.tls_required:
            info["tls_required"] = True
            info["tls_verify"] = s.tls_verify
        return info

    def _connection(self, c: Any, subs: bool, now: float, detail: bool = False) -> dict:
        out = {
            "cid": c.cid,
            "kind": "Client",
            # (nats-server's clientTypeString)
            "type": "websocket" if c.websocket else "nats",
            "ip": c.peer.host,
            "port": c.peer.port,
            "start": rfc3339(c.start),
            "last_activity": rfc3339(c.last_activity),
        }
        if c.closed:
            out["stop"] = rfc3339(c.stopped or now)
            out["reason"] = c.close_reason or "Client Closed"
        end = c.stopped if c.closed and c.stopped else now
        out.update(
            rtt=go_duration(c.rtt),
            uptime=uptime(end - c.start),
            idle=uptime(end - c.last_activity),
            pending_bytes=0 if c.closed else c.pending_bytes,
            in_msgs=c.in_msgs,
            out_msgs=c.out_msgs,
            in_bytes=c.in_bytes,
            out_bytes=c.out_bytes,
            subscriptions=len(c.subs),
        )
        for key, value in (("name", c.name), ("lang", c.lang), ("version", c.client_version)):
            if value:
                out[key] = value
        if c.identity is not None:
            out["authorized_user"] = c.identity.name
        if c.listener:
            out["listener"] = c.listener
        if detail and c.subs:
            out["subscriptions_list_detail"] = [sub_detail(sub, c.cid) for sub in c.subs.values()]
        elif subs and c.subs:
            out["subscriptions_list"] = [sub.subject.decode("utf-8", "replace") for sub in c.subs.values()]
        return out

    def connz(self, args: Dict[bytes, List[bytes]]) -> "dict | tuple[int, str]":
        """
        nats-server's /connz: C{subs} (C{1}: the subjects, C{detail}: each
        subscription as /subsz lists it), C{offset}, C{limit}, C{state},
        C{cid} and C{sort} (with its orders); a parameter it would refuse
        is refused with 400 and its message.
        """
        try:
            subs, detail = arg_subs(args)
            offset = max(0, arg_int(args, "offset"))
            limit = arg_int(args, "limit")
            cid = arg_int(args, "cid")
            state = arg(args, "state").lower() or "open"
            if state not in ("open", "closed", "any", "all"):
                raise ValueError("Error decoding state for {}".format(arg(args, "state")))
            sort = arg(args, "sort") or "cid"
            if sort not in _CONNZ_SORT:
                raise ValueError("invalid sorting option: {}".format(sort))
            if sort in ("stop", "reason") and state != "closed":
                raise ValueError("sort by {} only valid on closed connections".format(sort))
        except ValueError as e:
            return 400, str(e)
        if limit <= 0:
            limit = 1024
        now = self.clock.seconds()
        if state == "closed":
            conns = list(self.broker.closed)
        elif state in ("any", "all"):
            conns = list(self.broker.clients.values()) + list(self.broker.closed)
        else:
            conns = list(self.broker.clients.values())
        if cid > 0:
            conns, limit = [c for c in conns if c.cid == cid], 1
        key, descending = _CONNZ_SORT[sort]
        conns.sort(key=lambda c: c.cid)
        if key is not None:
            conns.sort(key=lambda c: key(c, now), reverse=descending)
        page = conns[offset : offset + limit]
        if len(page) > ROWS_PER_TURN:
            # Thousands of them (closed connections, say) are described and
            # written a slice per reactor turn: one request must not stall
            # every client for the 400 ms that 10,000 take at once.
            connections: Any = Rows(page, lambda c: self._connection(c, subs, now, detail))
        else:
            connections = [self._connection(c, subs, now, detail) for c in page]
        return {
            "server_id": self.broker.server_id,
            "now": rfc3339(time.time()),
            "num_connections": len(page),
            "total": len(conns),
            "offset": offset,
            "limit": limit,
            "connections": connections,
        }

    def subsz(self, args: Dict[bytes, List[bytes]]) -> "dict | tuple[int, str]":
        """
        nats-server's /subsz: the index's figures; with C{subs=1} also the
        subscriptions of this server's clients (and its own, in-process
        ones; not what routes, gateways and leaf links bring), each as
        nats-server's SubDetail, C{offset}/C{limit} at a time (1024 by
        default), those matching the subject C{test} only, of account
        C{acc} only.  As nats-server: C{total} is the length of the page,
        and a page with no subscription answers with the figures alone.
        """
        try:
            subs = arg_bool(args, "subs")
            offset = max(0, arg_int(args, "offset"))
            limit = arg_int(args, "limit")
        except ValueError as e:
            return 400, str(e)
        test = arg(args, "test")
        if test and not valid_literal_subject(test.encode("utf-8")):
            return 400, "invalid test subject, must be valid publish subject: {}".format(test)
        sl = self.broker.sublist
        cached, max_fanout, avg_fanout = sl.cache_stats()
        figures = {
            "num_subscriptions": sl.count,
            "num_cache": cached,
            "num_inserts": sl.inserts,
            "num_removes": sl.removes,
            "num_matches": sl.matches,
            "cache_hit_rate": round(sl.cache_hits / sl.matches, 4) if sl.matches else 0,
            "max_fanout": max_fanout,
            "avg_fanout": avg_fanout,
        }
        if not subs or arg(args, "acc") not in ("", GLOBAL_ACCOUNT):
            return figures
        if limit <= 0:
            limit = 1024
        local = [sub for sub in sl.all() if not _from_a_link(sub.owner)]
        if test:
            subject = test.encode("utf-8")
            local = [sub for sub in local if subject_matches(sub.subject, subject)]
        page = local[offset : offset + limit]
        if not page:
            return figures

        def describe(sub: Any) -> dict:
            return dict(account=GLOBAL_ACCOUNT, **sub_detail(sub, getattr(sub.owner, "cid", 0)))

        return dict(
            {"server_id": self.broker.server_id, "now": rfc3339(time.time())},
            **figures,
            total=len(page),
            offset=offset,
            limit=limit,
            # 100,000 of them are written a slice per reactor turn, as /connz's rows.
            subscriptions_list=Rows(page, describe) if len(page) > ROWS_PER_TURN else [describe(sub) for sub in page],
        )

    def jsz(self, args: Dict[bytes, List[bytes]]) -> "dict | tuple[int, str]":
        """nats-server's /jsz (L{eventsvc.ops.jsz.jsz})."""
        return js_ops.jsz(self.service, self.broker.server_id, args)

    def routez(self) -> dict:
        cluster = self.cluster()
        routes = []
        # The cluster's permissions, in nats-server's shape ({"allow": [...], "deny": [...]}).
        permissions = {}
        if cluster is not None:
            for key, perms in (("import", cluster.settings.imports), ("export", cluster.settings.exports)):
                if perms is not None:
                    lists = {"allow": perms.subscribe_allow, "deny": perms.subscribe_deny}
                    permissions[key] = {k: [s.decode() for s in v] for k, v in lists.items() if v}
        now = self.clock.seconds()
        for i, r in enumerate(sorted(cluster.routes.values(), key=lambda r: r.remote_id) if cluster else []):
            routes.append({
                "rid": i + 1,
                "remote_id": r.remote_id,
                "remote_name": r.remote_info.get("server_name", ""),
                "did_solicit": bool(r.solicited),
                "is_configured": bool(r.solicited) and r.solicited in cluster.configured,
                "ip": r.host,
                "port": r.port,
                "start": rfc3339(r.start),
                "last_activity": rfc3339(r.last_activity),
                **({"rtt": go_duration(r.rtt)} if r.rtt else {}),
                "uptime": uptime(now - r.start),
                "idle": uptime(now - r.last_activity),
                **permissions,
                "pending_size": r.pending_bytes,
                "in_msgs": r.in_msgs,
                "out_msgs": r.out_msgs,
                "in_bytes": r.in_bytes,
                "out_bytes": r.out_bytes,
                "subscriptions": len(r.subs),
            })
        return {"server_id": self.broker.server_id, "now": rfc3339(time.time()), "num_routes": len(routes), "routes": routes}

    def gatewayz(self) -> dict:
        """nats-server's /gatewayz: this cluster's gateway, its links out and in."""
        gateways = self.supercluster()
        if gateways is None:
            return {"server_id": self.broker.server_id, "now": rfc3339(time.time()), "outbound_gateways": {}, "inbound_gateways": {}}
        now = self.clock.seconds()

        def link(c: Any) -> dict:
            # (nats-server calls an inbound link configured never, an outbound one when it was.)
            return {"configured": c.dialled and c.name in gateways.settings_names, "connection": {
                "cid": c.cid,
                "kind": "Gateway",
                "ip": c.host,
                "port": c.port,
                "start": rfc3339(c.start),
                "last_activity": rfc3339(c.last_activity),
                **({"rtt": go_duration(c.rtt)} if c.rtt else {}),
                "uptime": uptime(now - c.start),
                "idle": uptime(now - c.last_activity),
                "pending_bytes": c.pending_bytes,
                "in_msgs": c.in_msgs,
                "out_msgs": c.out_msgs,
                "in_bytes": c.in_bytes,
                "out_bytes": c.out_bytes,
                "subscriptions": len(c.interest.subs) if c.dialled else 0,
                "name": c.remote_id,
            }}

        inbound: Dict[str, list] = {}
        for c in gateways.inbound:
            inbound.setdefault(c.name, []).append(link(c))
        host, _, port = gateways.url.rpartition(":")
        return {
            "server_id": self.broker.server_id,
            "now": rfc3339(time.time()),
            "name": gateways.settings.name,
            "host": host,
            "port": int(port) if port.isdigit() else gateways.port,
            "outbound_gateways": {name: link(c) for name, c in sorted(gateways.outbound.items())},
            "inbound_gateways": dict(sorted(inbound.items())),
        }


    def leafz(self, args: Dict[bytes, List[bytes]]) -> "dict | tuple[int, str]":
        """
        nats-server's /leafz: every leaf link up (C{subs=1}: with the
        subjects the other side is subscribed to), and the other side's
        JetStream domain when it runs JetStream.
        """
        leafs = self.leafnodes()
        links = [] if leafs is None else sorted(leafs.leafs.values(), key=lambda c: c.cid)
        try:
            subs = arg_bool(args, "subs")
        except ValueError as e:
            return 400, str(e)
        rows = []
        for c in links:
            row = {
                "account": "$G",
                "ip": c.host,
                "port": c.port,
                **({"rtt": go_duration(c.rtt)} if c.rtt else {}),
                "in_msgs": c.in_msgs,
                "out_msgs": c.out_msgs,
                "in_bytes": c.in_bytes,
                "out_bytes": c.out_bytes,
                "subscriptions": len(c.subs),
            }
            # (Not in nats-server 2.9's /leafz: the other side's JetStream, from its CONNECT or INFO.)
            if c.remote_jetstream:
                row["jetstream"] = True
            if c.remote_domain:
                row["domain"] = c.remote_domain
            if subs and c.subs:
                row["subscriptions_list"] = sorted(
                    (subject if queue is None else subject + b" " + queue).decode("utf-8", "replace") for subject, queue in c.subs
                )
            rows.append(row)
        return {"server_id": self.broker.server_id, "now": rfc3339(time.time()), "leafnodes": len(rows), "leafs": rows}


def _from_a_link(owner: Any) -> bool:
    """Whether a subscription is a route's, a gateway's or a leaf link's (nats-server's localSubs leaves those out)."""
    return owner.kind.link


def _leaf_varz(leafs: Any) -> dict:
    """varz's "leaf", as nats-server's: the listener (when accepting) and the remotes."""
    s = leafs.settings
    leaf: Dict[str, Any] = {}
    if s.accept:
        leaf.update(host=s.host, port=leafs.port, auth_timeout=s.handshake_timeout, tls_timeout=s.handshake_timeout)
    if leafs.remotes:
        leaf["remotes"] = [
            {"local_account": "$G", "urls": [u.split("://", 1)[-1].rpartition("@")[2] for u in r.urls]} for r in leafs.remotes
        ]
    return leaf


#: How many connections /connz describes per reactor turn.
ROWS_PER_TURN = 250
_ROWS_MARK = "\x00rows\x00"


class Rows:
    """
    A long list in a monitoring answer, described and written a slice per
    reactor turn (C{per_turn} items; fewer for items that cost more to
    describe).  An answer holds one, at any depth.
    """

    def __init__(self, items: List[Any], render: Callable[[Any], dict], per_turn: int = 0) -> None:
        self.items = items
        self.render = render
        self.per_turn = per_turn or ROWS_PER_TURN


def _take_rows(value: Any) -> "tuple[Any, Optional[Rows]]":
    """C{value} with its first L{Rows} (depth first) replaced by the mark, and that Rows (or None)."""
    if isinstance(value, Rows):
        return _ROWS_MARK, value
    if isinstance(value, dict):
        for key, item in value.items():
            replaced, rows = _take_rows(item)
            if rows is not None:
                return dict(value, **{key: replaced}), rows
    elif isinstance(value, list):
        for i, item in enumerate(value):
            replaced, rows = _take_rows(item)
            if rows is not None:
                return value[:i] + [replaced] + value[i + 1 :], rows
    return value, None


class _JSON(resource.Resource):
    isLeaf = True

    def __init__(self, monitor: Monitor, path: str, produce: Callable[[Any], Any]) -> None:
        super().__init__()
        self.monitor = monitor
        self.path = path
        self.produce = produce

    def render_GET(self, request: Any) -> Any:
        self.monitor.requests[self.path] = self.monitor.requests.get(self.path, 0) + 1
        result = self.produce(request)
        code, body = result if isinstance(result, tuple) else (200, result)
        request.setResponseCode(code)
        if isinstance(body, str):
            # A refused parameter: plain text, as nats-server answers it.
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return body.encode("utf-8")
        request.setHeader(b"content-type", b"application/json")
        marked, value = _take_rows(body)
        if value is None:
            return json.dumps(body, indent=2).encode("utf-8") + b"\n"
        head, _, tail = json.dumps(marked, indent=2).partition(json.dumps(_ROWS_MARK))
        request.write(head.encode("utf-8") + b"[")
        self._write_rows(request, value, 0, tail.encode("utf-8") + b"\n")
        request.notifyFinish().addErrback(lambda _: None)
        return server.NOT_DONE_YET

    def _write_rows(self, request: Any, rows: "Rows", start: int, tail: bytes) -> None:
        if getattr(request, "_disconnected", False):
            return  # the client went away: stop describing
        chunk = rows.items[start : start + rows.per_turn]
        text = ",".join(json.dumps(rows.render(item), indent=2) for item in chunk)
        request.write(((",\n" if start else "\n") + text).encode("utf-8") if chunk else b"")
        start += len(chunk)
        if start < len(rows.items):
            self.monitor.clock.callLater(0, self._write_rows, request, rows, start, tail)
        else:
            request.write(b"\n]" + tail)
            request.finish()


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, monitor: Monitor) -> None:
        super().__init__()
        from prometheus_client import CollectorRegistry

        self.monitor = monitor
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MetricsCollector(monitor))

    def render_GET(self, request: Any) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.monitor.requests["/metrics"] = self.monitor.requests.get("/metrics", 0) + 1
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class MetricsCollector:
    """Prometheus metrics, read from the service when scraped."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.monitor
        totals = m.broker.totals()
        by_listener: Dict[str, int] = {}
        for c in m.broker.clients.values():
            by_listener[c.listener or "-"] = by_listener.get(c.listener or "-", 0) + 1
        g = GaugeMetricFamily("eventsvc_connections", "Client connections open now", labels=["listener"])
        for name, count in sorted(by_listener.items()):
            g.add_metric([name], count)
        yield g
        yield CounterMetricFamily("eventsvc_connections_total", "Client connections accepted", value=totals["total_connections"])
        for key, help_ in (
            ("in_msgs", "Messages received from clients"),
            ("out_msgs", "Messages delivered to subscribers"),
            ("in_bytes", "Payload bytes received"),
            ("out_bytes", "Payload bytes delivered"),
            ("slow_consumers", "Clients cut off as slow consumers"),
        ):
            yield CounterMetricFamily("eventsvc_" + key, help_, value=totals[key])
        yield GaugeMetricFamily("eventsvc_subscriptions", "Subscriptions", value=totals["subscriptions"])
        cluster = m.cluster()
        yield GaugeMetricFamily("eventsvc_routes", "Routes to other servers", value=0 if cluster is None else len(cluster.routes))
        gateways = m.supercluster()
        if gateways is not None:
            links = GaugeMetricFamily("eventsvc_gateway_links", "Gateway connections up, by remote gateway and direction", labels=["gateway", "direction"])
            counters = {
                key: CounterMetricFamily("eventsvc_gateway_" + key, help_, labels=["gateway", "direction"])
                for key, help_ in (
                    ("in_msgs", "Messages received on a gateway link (while it is up)"),
                    ("out_msgs", "Messages sent on a gateway link (while it is up)"),
                    ("in_bytes", "Payload bytes received on a gateway link"),
                    ("out_bytes", "Payload bytes sent on a gateway link"),
                )
            }
            per: Dict[Any, List[Any]] = {}
            for c in list(gateways.outbound.values()) + list(gateways.inbound):
                per.setdefault((c.name, "outbound" if c.dialled else "inbound"), []).append(c)
            for name in gateways.down():
                per.setdefault((name, "outbound"), [])
            for labels, conns in sorted(per.items()):
                links.add_metric(list(labels), len(conns))
                for key, family in counters.items():
                    family.add_metric(list(labels), sum(getattr(c, key) for c in conns))
            yield links
            yield from counters.values()
            yield CounterMetricFamily("eventsvc_gateway_dropped", "Gateway messages dropped (not imported, or a reply routed to another cluster)", value=gateways.dropped)
        leafs = m.leafnodes()
        if leafs is not None:
            yield from _leaf_metrics(leafs)
        yield from js_ops.metrics(m.service)
        events = getattr(m.service, "events", None)
        if events is None:
            return
        yield GaugeMetricFamily("eventsvc_events_queued", "Events accepted and not yet delivered", value=events.pending)
        accepted = CounterMetricFamily("eventsvc_events_accepted", "Events accepted", labels=["type"])
        for type_name, count in sorted(events.accepted_by_type.items()):
            accepted.add_metric([type_name], count)
        yield accepted
        refused = CounterMetricFamily("eventsvc_events_refused", "Events refused", labels=["reason"])
        for reason, count in sorted(events.refused_by_reason.items()):
            refused.add_metric([reason], count)
        yield refused
        families = {
            key: CounterMetricFamily("eventsvc_events_" + key, "Events " + key.replace("_", " ") + " by handlers", labels=["handler", "type"])
            for key in ("delivered", "retried", "dead_lettered")
        }
        backlog = GaugeMetricFamily("eventsvc_handler_backlog", "Events waiting for a handler", labels=["handler"])
        growing = GaugeMetricFamily(
            "eventsvc_handler_backlog_growing_seconds",
            "How long a handler's backlog has been growing without shrinking (0: it is not)", labels=["handler"],
        )
        down = GaugeMetricFamily(
            "eventsvc_handler_down_seconds",
            "How long a handler's target has failed with no success since (0: it is taking events)", labels=["handler"],
        )
        requests = CounterMetricFamily(
            "eventsvc_handler_requests", "Deliveries attempted by handlers (one per event, or per batch)", labels=["handler"]
        )
        latency = HistogramMetricFamily(
            "eventsvc_delivery_latency_seconds", "From acceptance to delivery", labels=["handler"]
        )
        for name, handler in sorted(events.handlers.items()):
            for key, family in families.items():
                for type_name, count in sorted(handler.by_type[key].items()):
                    family.add_metric([name, type_name], count)
            backlog.add_metric([name], handler.backlog_size)
            growing.add_metric([name], handler.growing_seconds())
            down.add_metric([name], handler.down_for())
            requests.add_metric([name], handler.attempts)
            buckets, total = handler.latency.snapshot()
            latency.add_metric([name], buckets, total)
        yield from families.values()
        yield backlog
        yield growing
        yield down
        yield requests
        yield latency


def _leaf_metrics(leafs: Any) -> Any:
    """Leaf links up, and each link's counters, by the other side's server name and who dialled."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["leafnode", "direction"]
    links = GaugeMetricFamily("eventsvc_leafnode_links", "Leaf node links up, by remote server and direction", labels=labels)
    counters = {
        key: CounterMetricFamily("eventsvc_leafnode_" + key, help_, labels=labels)
        for key, help_ in (
            ("in_msgs", "Messages received on a leaf node link (while it is up)"),
            ("out_msgs", "Messages sent on a leaf node link (while it is up)"),
            ("in_bytes", "Payload bytes received on a leaf node link"),
            ("out_bytes", "Payload bytes sent on a leaf node link"),
        )
    }
    per: Dict[Any, List[Any]] = {}
    for c in leafs.leafs.values():
        per.setdefault((c.describe(), "outbound" if c.dialled else "inbound"), []).append(c)
    for url in leafs.down():
        per.setdefault((url, "outbound"), [])
    for key, conns in sorted(per.items()):
        links.add_metric(list(key), len(conns))
        for name, family in counters.items():
            family.add_metric(list(key), sum(getattr(c, name) for c in conns))
    yield links
    yield from counters.values()
    yield CounterMetricFamily("eventsvc_leafnode_loops", "Leaf node links closed for a loop", value=leafs.loops)


#: The index's names for the endpoints it lists, in its order (nats-server's
#: names where it has the endpoint); an endpoint not named here is listed
#: after them under its path.
_INDEX = (
    ("varz", "General"),
    ("jsz", "JetStream"),
    ("connz", "Connections"),
    ("subsz", "Subscriptions"),
    ("routez", "Routes"),
    ("leafz", "LeafNodes"),
    ("gatewayz", "Gateways"),
    ("healthz", "Health Probe"),
    ("eventz", "Events"),
    ("deadletterz", "Dead letters"),
    ("metrics", "Prometheus metrics"),
)


class _Index(resource.Resource):
    """
    The monitor's / when the console is off: its endpoints, listed as
    nats-server's monitor lists its own, read from the root at each request
    so that an endpoint added to it is listed.
    """

    isLeaf = True

    def __init__(self, monitor: Monitor, root: resource.Resource) -> None:
        super().__init__()
        self.monitor = monitor
        self.root = root

    def endpoints(self) -> List["tuple[str, str]"]:
        """(path, name) of each endpoint on the root."""
        mounted = {name.decode("ascii", "replace") for name in self.root.children if name}
        known = [(path, name) for path, name in _INDEX if path in mounted]
        named = {path for path, _ in _INDEX}
        return known + [(path, path) for path in sorted(mounted - named)]

    def render_GET(self, request: Any) -> bytes:
        self.monitor.requests["/"] = self.monitor.requests.get("/", 0) + 1
        b = self.monitor.broker
        links = "\n".join(
            '  <li><a href="./{0}">{1}</a> <code>/{0}</code></li>'.format(html.escape(path), html.escape(name)) for path, name in self.endpoints()
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")
        return """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>eventsvc monitor</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin-left: 32px; color: #223; }}
  ul {{ list-style: none; padding: 0; }}
  li {{ padding-bottom: 6px; }}
  a {{ display: inline-block; min-width: 12em; color: #48485c; text-decoration: none; }}
  a:hover {{ font-weight: 600; color: #3b32ca; }}
  code {{ color: #777; }}
  .version {{ color: #555; }}
</style>
</head>
<body>
<h1>eventsvc monitor</h1>
<p class="version">{implementation} &middot; NATS protocol of nats-server {version} &middot; server {name}</p>
<ul>
{links}
</ul>
<p>Each endpoint answers JSON (<code>/metrics</code>: Prometheus' text format), in nats-server's shapes where it has them.
The live console is served here when <code>[console]</code> is configured (docs/operations.md).</p>
</body>
</html>
""".format(
            implementation=html.escape(b.implementation), version=html.escape(b.version), name=html.escape(b.server_name), links=links,
        ).encode("utf-8")


class _QuietSite(server.Site):
    """No log line per scrape: that is noise."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class MonitorService(Service):
    """Serves the monitoring pages on [monitor] host and port."""

    log = Logger()

    def __init__(
        self, parent_service: Any, host: str, port: int, reactor: Any, where: str, backlog: int = 50, console: Any = None,
    ) -> None:
        self.setName("monitor")
        self.monitor = Monitor(parent_service, reactor, host, port)
        self.host, self.port, self.reactor, self.where, self.backlog = host, port, reactor, where, backlog
        self.listening: Optional[Any] = None
        root = resource.Resource()
        m = self.monitor
        for path, produce in (
            ("healthz", lambda r: m.healthz()),
            ("varz", lambda r: m.varz()),
            ("connz", lambda r: m.connz(r.args)),
            ("subsz", lambda r: m.subsz(r.args)),
            ("routez", lambda r: m.routez()),
            ("gatewayz", lambda r: m.gatewayz()),
            ("leafz", lambda r: m.leafz(r.args)),
            ("eventz", lambda r: m.eventz()),
            ("jsz", lambda r: m.jsz(r.args)),
        ):
            root.putChild(path.encode(), _JSON(m, "/" + path, produce))
        root.putChild(b"metrics", _Metrics(m))
        root.putChild(b"", _Index(m, root))
        #: The console's history of per-second figures (None without [console]).
        self.history: Any = None
        if console is not None:
            from eventsvc.ops.console import add_console

            self.history = add_console(root, m, console)
        self.site = _QuietSite(root)

    def startService(self) -> None:
        try:
            self.listening = self.reactor.listenTCP(self.port, self.site, backlog=self.backlog, interface=self.host)
        except CannotListenError as e:
            raise ListenError("cannot listen on {}:{} (set by {}): {}".format(self.host, self.port, self.where, e.socketError))
        self.monitor.http_port = self.listening.getHost().port
        if self.history is not None:
            self.history.start()
        super().startService()
        self.log.info("monitor listening for HTTP on {host}:{port}", host=self.host, port=self.monitor.http_port)

    def stopService(self) -> Any:
        super().stopService()
        if self.history is not None:
            self.history.stop()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            return listening.stopListening()
        return None
