"""
Subcommands that talk NATS to a running eventsvc: publish an event, sub,
request, and the health check.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import List, Optional

from eventsvc import config as configuration, wirejson
from eventsvc.cli import wire
from eventsvc.cli.common import EX_FAIL, EX_OK, EX_USAGE, Failed, load, routed_to, say
from eventsvc.security.permissions import health_inbox


def publish(options: argparse.Namespace) -> int:
    """Send one event to the service listener and print its acknowledgement."""
    config = load(options.config)
    mixed_up = _handler_not_type(config, options.type)
    if mixed_up:
        return say("eventsvc: {}".format(mixed_up), EX_USAGE)
    try:
        raw = sys.stdin.read() if options.file == "-" else open(options.file, encoding="utf-8").read()
        event = wirejson.loads(raw)
        if not isinstance(event, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return say("eventsvc: {}: cannot use the event: {}".format(options.file, e), EX_FAIL)
    event.setdefault("event_id", str(uuid.uuid4()))
    event.setdefault("published", datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"))
    event.setdefault("type", {"name": options.type})
    body = json.dumps(event).encode("utf-8")
    who = wire.identity(config, options)
    subject = "{}.{}".format(config.events.subject_prefix, options.type)
    try:
        conn = wire.connect(who, options.timeout, "eventsvc-publish")
        try:
            answer = wire.request(conn, subject, body)
        finally:
            conn.close()
        ack = wire.decode_object(answer.payload, "the acknowledgement")
    except (Failed, OSError) as e:
        return say("eventsvc: cannot publish to {}:{}: {}".format(who.host, who.port, e), EX_FAIL)
    return say(answer.payload.decode("utf-8"), EX_OK if ack.get("success") else EX_FAIL)


def _handler_not_type(config: configuration.Config, name: str) -> str:
    """
    Why C{name} is a [handlers] key given where an event type belongs, with
    the types that would reach that handler, or "" (C{cfgingest} is both).
    """
    from eventsvc.events.types import EVENT_TYPES

    if name in EVENT_TYPES or name not in configuration.HANDLER_NAMES:
        return ""
    types = routed_to(config, name)
    if not types:
        return "--type {}: {} is a [handlers] key, not an event type, and no event type is routed to it in {}".format(
            name, name, config.source)
    return "--type {}: {} is a [handlers] key, not an event type; did you mean an event type of this handler: {}".format(
        name, name, ", ".join(types))


def sub(options: argparse.Namespace) -> int:
    """Print the messages on a subject, with their headers, as they arrive."""
    config = load(options.config)
    who = wire.identity(config, options, agent_listener=options.gateway)
    try:
        conn = wire.connect(who, options.timeout, "eventsvc-sub")
    except Failed as e:
        return say("eventsvc: {}: {}".format(who.where, e), EX_FAIL)
    received = 0
    try:
        queue = b" " + options.queue.encode() if options.queue else b""
        conn.send(b"SUB %s%s 1\r\n" % (options.subject.encode(), queue) + (b"UNSUB 1 %d\r\n" % options.count if options.count else b"") + b"PING\r\n")
        conn.pong()  # a refused subscription says so before the PONG
        sys.stderr.write("listening on {} at {}{}\n".format(
            options.subject, who.where, " in queue group " + options.queue if options.queue else ""))
        sys.stderr.flush()
        conn.sock.settimeout(options.wait or None)
        while not options.count or received < options.count:
            message = conn.next_message()
            received += 1
            print_message(received, message)
    except Failed as e:
        return say("eventsvc: {}: {}".format(who.where, e), EX_FAIL)
    except OSError as e:
        # (socket.timeout is an OSError: --wait passed.)
        return say("eventsvc: {}: {} after {} messages".format(who.where, e or "timed out", received), EX_FAIL)
    except KeyboardInterrupt:
        return EX_OK
    finally:
        conn.close()
    return EX_OK


def request(options: argparse.Namespace) -> int:
    """Send a request and print the reply."""
    config = load(options.config)
    who = wire.identity(config, options, agent_listener=options.gateway)
    headers = _headers(options.header)
    try:
        conn = wire.connect(who, options.timeout, "eventsvc-request")
        try:
            reply = wire.request(conn, options.subject, options.data.encode("utf-8"), headers)
        finally:
            conn.close()
    except Failed as e:
        return say("eventsvc: {}: {}".format(who.where, e), EX_FAIL)
    except OSError as e:
        return say("eventsvc: {}: no reply on {} within {}s ({})".format(who.where, options.subject, options.timeout, e), EX_FAIL)
    if reply.status == "503":
        return say("eventsvc: {}: no responders on {}".format(who.where, options.subject), EX_FAIL)
    print_message(1, reply)
    return EX_OK


def _headers(given: Optional[List[str]]) -> Optional[bytes]:
    if not given:
        return None
    lines = [b"NATS/1.0"]
    for header in given:
        key, sep, value = header.partition(":")
        if not sep or not key.strip():
            raise SystemExit(say("eventsvc: --header {!r} is not Key:Value".format(header), 2))
        lines.append("{}: {}".format(key.strip(), value.strip()).encode("utf-8"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def print_message(n: int, message: wire.Message) -> None:
    """As the nats CLI prints one: where it came on, its headers, a blank line, the payload."""
    head = '[#{}] Received on "{}"'.format(n, message.subject)
    if message.reply:
        head += ' with reply "{}"'.format(message.reply)
    out = [head] + message.header_lines()
    if message.headers:
        out.append("")
    sys.stdout.write("\n".join(out) + "\n" + message.payload.decode("utf-8", "replace") + "\n\n")
    sys.stdout.flush()


def health_check(options: argparse.Namespace) -> int:
    """
    A request/reply echo, then the server's own health: through the agent
    listener ([gateway]) with the per-start health-check token when this
    node runs one, else through the service listener with the service's
    mutual-TLS identity.
    """
    config = load(options.config)
    gw = config.gateway
    if gw.enabled:
        try:
            with open(gw.health_token_file, encoding="ascii") as f:
                token = f.read().strip()
        except OSError as e:
            return say(
                "unhealthy: cannot read the health-check token {} ({}); is the gateway running?".format(gw.health_token_file, e.strerror),
                EX_FAIL,
            )
        who = wire.identity(config, argparse.Namespace(token=token, ca=options.ca), agent_listener=True)
        # The token's identity may use only this inbox.
        inbox = health_inbox(token)
    elif config.service.enabled:
        who = wire.identity(config, options)
        inbox = "_INBOX.hc" + secrets.token_hex(12)
    else:
        return say("unhealthy: neither [service] nor [gateway] runs in {}".format(options.config), EX_FAIL)
    started = time.monotonic()
    try:
        conn = wire.connect(who, options.timeout, "eventsvc-health-check")
        try:
            subject = _echo(conn, inbox)
            answer = wire.request(conn, "healthcheck.status." + conn.info.get("server_id", ""), b"", inbox_prefix=inbox)
        finally:
            conn.close()
        if answer.status == "503":
            raise Failed("nothing answers the health question (an eventsvc older than this command?)")
        status = wire.decode_object(answer.payload, "the status")
    except (Failed, OSError) as e:
        return say("unhealthy: {}: {}".format(who.where, e), EX_FAIL)
    if status.get("status") != "ok":
        return say("unhealthy: {}: {}".format(who.where, status.get("error") or "status {!r}".format(status.get("status"))), EX_FAIL)
    elapsed = (time.monotonic() - started) * 1000
    return say("healthy: {} echoed a request on {} in {:.1f} ms".format(who.where, subject, elapsed), EX_OK)


def _echo(conn: wire.Connection, inbox_prefix: str) -> str:
    """
    Answer our own request through the agent listener ([gateway]): a
    request/reply echo, as the Go gateway's health check.  Returns the subject it used.
    """
    subject = "healthcheck." + secrets.token_hex(8)
    payload = secrets.token_hex(8).encode()
    conn.send(b"SUB %s 1\r\nPING\r\n" % subject.encode())
    conn.pong()
    inbox = inbox_prefix + "." + secrets.token_hex(8)
    conn.send(b"SUB %s 2\r\nPUB %s %s %d\r\n%s\r\n" % (inbox.encode(), subject.encode(), inbox.encode(), len(payload), payload))
    while True:
        message = conn.next_message()
        if message.sid == b"1" and message.reply:
            # The request reached us through the agent listener: answer it.
            conn.send(b"PUB %s %d\r\n%s\r\n" % (message.reply.encode(), len(message.payload), message.payload))
        elif message.sid == b"2":
            if message.payload != payload:
                raise Failed("the echo came back changed")
            return subject
