"""
The C{stream} and C{consumer} subcommands: JetStream's streams and
consumers listed and described, asked through the C{$JS.API} as any NATS
client asks (so they work against nats-server too), with the
configuration's identity.

They only read: nothing here creates, changes or deletes a stream.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from eventsvc.cli import wire
from eventsvc.cli.common import EX_FAIL, EX_OK, Failed, load, say
from eventsvc.jetstream.wire import parse_rfc3339

#: Most pages a listing reads (nats-server's pages are 256 streams or consumers).
MAX_PAGES = 1000


class NotEnabled(Failed):
    """Nothing answers the JetStream API there."""


def api_prefix(domain: Optional[str]) -> str:
    """Where the API is asked: C{$JS.API}, or C{$JS.<domain>.API} for a domain."""
    return "$JS.{}.API".format(domain) if domain else "$JS.API"


def ask(conn: wire.Connection, prefix: str, verb: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """
    One API request and its answer, without its C{type}.

    @raise NotEnabled: no responders (JetStream is off, or not in that domain).
    @raise Failed: an error answered (its description and codes), or an answer that is not JSON.
    """
    subject = prefix + "." + verb
    answer = wire.request(conn, subject, json.dumps(body).encode("utf-8") if body else b"")
    if answer.status == "503":
        raise NotEnabled("JetStream is not enabled on that server (no responders on {})".format(subject))
    value = wire.decode_object(answer.payload, "the answer to {}".format(subject))
    error = value.get("error")
    if isinstance(error, dict):
        raise Failed("{} ({}, err_code {}, on {})".format(
            error.get("description", "error"), error.get("code", "?"), error.get("err_code", "?"), subject))
    value.pop("type", None)
    return value


def paged(conn: wire.Connection, prefix: str, verb: str, key: str) -> List[Dict[str, Any]]:
    """Every item of a paged listing (STREAM.LIST, CONSUMER.LIST), page after page."""
    items: List[Dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        page = ask(conn, prefix, verb, {"offset": len(items)} if items else None)
        got = page.get(key) or []
        items.extend(got)
        if not got or len(items) >= int(page.get("total", 0)):
            break
    return items


def _run(options: argparse.Namespace, work: Callable[[wire.Connection, str], int]) -> int:
    """Connect with the configuration's identity, do the work, and say in one line what went wrong."""
    config = load(options.config)
    who = wire.identity(config, options, agent_listener=options.gateway)
    try:
        conn = wire.connect(who, options.timeout, "eventsvc-" + options.command)
    except Failed as e:
        return say("eventsvc: {}: {}".format(who.where, e), EX_FAIL)
    try:
        return work(conn, api_prefix(options.domain))
    except Failed as e:
        return say("eventsvc: {}: {}".format(who.where, e), EX_FAIL)
    except OSError as e:
        return say("eventsvc: {}: no answer from JetStream within {}s ({})".format(who.where, options.timeout, e or "timed out"), EX_FAIL)
    finally:
        conn.close()


# -- what a user reads ------------------------------------------------------------


def size(n: int) -> str:
    """Bytes as the nats CLI shows them (1,023 B, 1.5 KiB, 2.0 MiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return "{:,} B".format(n) if unit == "B" else "{:.1f} {}".format(value, unit)
        value /= 1024
    return str(n)  # pragma: no cover


def duration(ns: int) -> str:
    """A JSON duration (ns) as Go writes short ones: 2m0s, 30s, 1h0m0s, 500ms."""
    if ns <= 0:
        return "0s"
    if ns < 1_000_000_000:
        return "{:g}ms".format(ns / 1e6)
    seconds = ns / 1e9
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    fraction = seconds - int(seconds)
    text = "{:g}s".format(secs + fraction) if fraction else "{}s".format(secs)
    if hours:
        return "{}h{}m{}".format(hours, minutes, text)
    if minutes:
        return "{}m{}".format(minutes, text)
    return text


def when(text: Optional[str]) -> str:
    """An API time as "2026-12-06 22:13:14 UTC"; Go's zero time (nothing yet) as "never"."""
    if not text or text.startswith("0001-01-01"):
        return "never"
    try:
        ns = parse_rfc3339(text)
    except ValueError:
        return text
    return datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def limit(value: Any, show: Callable[[int], str] = lambda n: "{:,}".format(n)) -> str:
    """A limit: -1 or 0 is none."""
    return "unlimited" if not value or value < 0 else show(int(value))


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell, numbers to the right."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header)] + [line(r) for r in rows]) + "\n"


def fields(pairs: List[Tuple[str, str]]) -> str:
    """Labelled lines, the labels aligned on their colons."""
    width = max(len(k) for k, _ in pairs)
    return "".join("  {}: {}\n".format(k.rjust(width), v) for k, v in pairs)


def stream_table(infos: List[Dict[str, Any]]) -> str:
    rows = []
    for info in sorted(infos, key=lambda i: i["config"]["name"]):
        c, s = info["config"], info["state"]
        rows.append([
            c["name"], c.get("storage", "file"), ", ".join(c.get("subjects") or []), "{:,}".format(s.get("messages", 0)),
            size(s.get("bytes", 0)), "{:,}".format(s.get("consumer_count", 0)), when(s.get("last_ts")),
        ])
    return table(["STREAM", "STORAGE", "SUBJECTS", "MESSAGES", "BYTES", "CONSUMERS", "LAST MESSAGE"], rows, numeric=(3, 4, 5))


def stream_text(info: Dict[str, Any]) -> str:
    c, s = info["config"], info["state"]
    title = "Stream {}, created {}".format(c["name"], when(info.get("created")))
    if c.get("description"):
        title += "\n  " + c["description"]
    config = [
        ("subjects", ", ".join(c.get("subjects") or []) or "(none)"),
        ("storage", c.get("storage", "file")),
        ("retention", c.get("retention", "limits")),
        ("replicas", str(c.get("num_replicas", 1))),
        ("discard", c.get("discard", "old") + (" (per subject)" if c.get("discard_new_per_subject") else "")),
        ("duplicate window", duration(c.get("duplicate_window", 0))),
        ("max messages", limit(c.get("max_msgs"))),
        ("max bytes", limit(c.get("max_bytes"), size)),
        ("max age", limit(c.get("max_age"), duration)),
        ("max msgs per subject", limit(c.get("max_msgs_per_subject"))),
        ("max message size", limit(c.get("max_msg_size"), size)),
        ("max consumers", limit(c.get("max_consumers"))),
    ]
    flags = [name for name, key in (
        ("sealed", "sealed"), ("deny delete", "deny_delete"), ("deny purge", "deny_purge"),
        ("rollups allowed", "allow_rollup_hdrs"), ("direct get", "allow_direct"),
    ) if c.get(key)]
    if flags:
        config.append(("options", ", ".join(flags)))
    state = [
        ("messages", "{:,}".format(s.get("messages", 0))),
        ("bytes", size(s.get("bytes", 0))),
        ("first", "#{} at {}".format(s.get("first_seq", 0), when(s.get("first_ts")))),
        ("last", "#{} at {}".format(s.get("last_seq", 0), when(s.get("last_ts")))),
        ("subjects", "{:,}".format(s.get("num_subjects", 0))),
        ("deleted", "{:,}".format(s.get("num_deleted", 0))),
        ("consumers", "{:,}".format(s.get("consumer_count", 0))),
    ]
    return "{}\n\nConfiguration:\n{}\nState:\n{}".format(title, fields(config), fields(state))


def _kind(c: Dict[str, Any]) -> str:
    durable = "durable" if c.get("durable_name") else "ephemeral"
    return "{} {}".format(durable, "push" if c.get("deliver_subject") else "pull")


def consumer_table(infos: List[Dict[str, Any]]) -> str:
    rows = []
    for info in sorted(infos, key=lambda i: i["name"]):
        c = info.get("config", {})
        rows.append([
            info["name"], _kind(c), c.get("ack_policy", ""), "{:,}".format(info.get("num_pending", 0)),
            "{:,}".format(info.get("num_ack_pending", 0)), "{:,}".format(info.get("num_redelivered", 0)),
            "{:,}".format(info.get("num_waiting", 0)), when(info.get("delivered", {}).get("last_active")),
        ])
    return table(
        ["CONSUMER", "KIND", "ACK", "PENDING", "ACK PENDING", "REDELIVERED", "WAITING", "LAST DELIVERY"], rows, numeric=(3, 4, 5, 6),
    )


def consumer_text(info: Dict[str, Any]) -> str:
    c = info.get("config", {})
    title = "Consumer {} of stream {}, created {}".format(info["name"], info.get("stream_name", "?"), when(info.get("created")))
    if c.get("description"):
        title += "\n  " + c["description"]
    config = [("kind", _kind(c))]
    if c.get("deliver_subject"):
        config.append(("deliver subject", c["deliver_subject"] + (" (group {})".format(c["deliver_group"]) if c.get("deliver_group") else "")))
    start = c.get("deliver_policy", "all")
    if c.get("opt_start_seq"):
        start += " from #{}".format(c["opt_start_seq"])
    if c.get("opt_start_time"):
        start += " from {}".format(when(c["opt_start_time"]))
    config += [
        ("filter subject", c.get("filter_subject") or "(all)"),
        ("deliver policy", start),
        ("ack policy", c.get("ack_policy", "")),
        ("ack wait", duration(c.get("ack_wait", 0))),
        ("max deliver", limit(c.get("max_deliver"))),
        ("max ack pending", limit(c.get("max_ack_pending"))),
        ("replay policy", c.get("replay_policy", "instant")),
    ]
    if not c.get("deliver_subject"):
        config.append(("max waiting", limit(c.get("max_waiting"))))
    if c.get("backoff"):
        config.append(("backoff", ", ".join(duration(b) for b in c["backoff"])))
    for label, key in (("idle heartbeat", "idle_heartbeat"), ("inactive threshold", "inactive_threshold")):
        if c.get(key):
            config.append((label, duration(c[key])))
    flags = [name for name, key in (("flow control", "flow_control"), ("headers only", "headers_only")) if c.get(key)]
    if flags:
        config.append(("options", ", ".join(flags)))
    delivered, floor = info.get("delivered", {}), info.get("ack_floor", {})
    state = [
        ("last delivered", "consumer #{} stream #{} at {}".format(
            delivered.get("consumer_seq", 0), delivered.get("stream_seq", 0), when(delivered.get("last_active")))),
        ("ack floor", "consumer #{} stream #{} at {}".format(
            floor.get("consumer_seq", 0), floor.get("stream_seq", 0), when(floor.get("last_active")))),
        ("pending", "{:,}".format(info.get("num_pending", 0))),
        ("ack pending", "{:,}".format(info.get("num_ack_pending", 0))),
        ("redelivered", "{:,}".format(info.get("num_redelivered", 0))),
        ("waiting pulls", "{:,}".format(info.get("num_waiting", 0))),
    ]
    return "{}\n\nConfiguration:\n{}\nState:\n{}".format(title, fields(config), fields(state))


def _emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# -- the subcommands ----------------------------------------------------------------


def stream_ls(options: argparse.Namespace) -> int:
    """Every stream, one a line; --json: each stream's info, one JSON object a line."""

    def work(conn: wire.Connection, prefix: str) -> int:
        infos = paged(conn, prefix, "STREAM.LIST", "streams")
        if options.json:
            _emit("".join(json.dumps(i) + "\n" for i in infos))
        elif not infos:
            say("no streams", EX_OK)
        else:
            _emit(stream_table(infos))
        return EX_OK

    return _run(options, work)


def stream_info(options: argparse.Namespace) -> int:
    """One stream's configuration and state; --json: its info as the API gives it."""

    def work(conn: wire.Connection, prefix: str) -> int:
        info = ask(conn, prefix, "STREAM.INFO." + options.stream)
        _emit(json.dumps(info) + "\n" if options.json else stream_text(info))
        return EX_OK

    if not _valid_name(options.stream):
        return say("eventsvc: {!r} is not a stream name (no spaces, '.', '*' or '>')".format(options.stream), 2)
    return _run(options, work)


def consumer_ls(options: argparse.Namespace) -> int:
    """A stream's consumers, one a line; --json: each one's info, one JSON object a line."""

    def work(conn: wire.Connection, prefix: str) -> int:
        infos = paged(conn, prefix, "CONSUMER.LIST." + options.stream, "consumers")
        if options.json:
            _emit("".join(json.dumps(i) + "\n" for i in infos))
        elif not infos:
            say("no consumers on stream {}".format(options.stream), EX_OK)
        else:
            _emit(consumer_table(infos))
        return EX_OK

    if not _valid_name(options.stream):
        return say("eventsvc: {!r} is not a stream name (no spaces, '.', '*' or '>')".format(options.stream), 2)
    return _run(options, work)


def consumer_info(options: argparse.Namespace) -> int:
    """One consumer's configuration and state; --json: its info as the API gives it."""

    def work(conn: wire.Connection, prefix: str) -> int:
        info = ask(conn, prefix, "CONSUMER.INFO.{}.{}".format(options.stream, options.consumer))
        _emit(json.dumps(info) + "\n" if options.json else consumer_text(info))
        return EX_OK

    for what, name in (("stream", options.stream), ("consumer", options.consumer)):
        if not _valid_name(name):
            return say("eventsvc: {!r} is not a {} name (no spaces, '.', '*' or '>')".format(name, what), 2)
    return _run(options, work)


def _valid_name(name: str) -> bool:
    """A name that can be one token of an API subject."""
    return bool(name) and not any(c in name for c in " \t\r\n.*>")
