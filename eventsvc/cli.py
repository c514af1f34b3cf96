"""
The C{eventsvc} admin command: subcommands that fit the configuration file.

    eventsvc check-config --config patch.toml
    eventsvc health-check --config patch.toml
    eventsvc certs --out dev/certs
    eventsvc publish --config patch.toml --type nodeTerminated --file event.json

Each prints one line saying what happened and exits 0 on success, 1 when
something is unhealthy or failed, 78 for a configuration problem, 2 for a
wrong command line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import ssl
import sys
import time
from typing import Callable, List, Optional, Sequence

from eventsvc import __version__, config as configuration, wirejson

EX_OK, EX_FAIL, EX_USAGE, EX_CONFIG = 0, 1, 2, 78


class Unhealthy(Exception):
    pass


def _load(path: str) -> configuration.Config:
    try:
        return configuration.load(path)
    except configuration.ConfigError as e:
        raise SystemExit(_say("eventsvc: {}".format(e), EX_CONFIG))


def _say(line: str, code: int) -> int:
    (sys.stdout if code == EX_OK else sys.stderr).write(line + "\n")
    return code


def check_config(options: argparse.Namespace) -> int:
    """
    Load the configuration and everything it names, as start-up would, and
    describe what will run; warn about what would refuse events.
    """
    from twisted.internet.testing import MemoryReactorClock

    from eventsvc.app import StartupError, make_service

    config = _load(options.config)
    try:
        make_service(config, MemoryReactorClock())
    except StartupError as e:
        return _say("eventsvc: {}".format(e), EX_CONFIG)
    lines = ["ok: {}".format(options.config)]
    lines += ["  " + line for line in describe(config)]
    lines += ["warning: " + line for line in warnings(config)]
    return _say("\n".join(lines), EX_OK)


def describe(config: configuration.Config) -> List[str]:
    """What a configuration will run, one line per part, as check-config prints it."""
    out = []
    s, tls, gw, cl = config.service, config.tls, config.gateway, config.cluster
    if s.enabled:
        security = (
            "mutual TLS (client certificates signed by {})".format(tls.root_ca_path) if tls.enabled
            else "plaintext, no client certificates, no authentication"
        )
        out.append("service listener on {}:{}: {}; at most {} connections".format(s.host, s.port, security, s.listener_limit))
    if gw.enabled:
        if gw.disable_frontend_tls:
            front = "plaintext (disable_frontend_tls)"
        else:
            front = "TLS by SNI ({})".format(", ".join(e.server_name for e in gw.frontend_tls))
        auth = []
        if gw.tokens or gw.tokens_file:
            auth.append("tokens ({} listed{})".format(len(gw.tokens), ", and " + gw.tokens_file if gw.tokens_file else ""))
        if gw.users:
            auth.append("users ({})".format(len(gw.users)))
        if gw.identities:
            auth.append("identities ({})".format(", ".join(i.name for i in gw.identities)))
        if gw.http_auth_url:
            auth.append("HTTP check at {}".format(gw.http_auth_url))
        if gw.python_authenticator:
            auth.append("python:{}".format(gw.python_authenticator))
        out.append("gateway listener on {}:{}: {}; authentication: {}; at most {} connections".format(
            gw.host, gw.port, front, ", ".join(auth), gw.max_connections))
        p = gw.permissions
        out.append("gateway agents may publish to {} and subscribe to {}".format(
            _subjects(p.publish_allow, p.publish_deny), _subjects(p.subscribe_allow, p.subscribe_deny)))
        out.append("health-check token file: {}".format(gw.health_token_file))
    if config.monitor.enabled:
        out.append("monitor on http://{}:{}/ (/healthz /varz /connz /subsz /routez /metrics)".format(config.monitor.host, config.monitor.port))
    if cl.enabled:
        parts = ["cluster {}".format(cl.name)]
        if cl.listen:
            parts.append("accepting routes on {}:{}".format(cl.host, cl.port))
        if cl.routes:
            parts.append("dialling {}".format(", ".join(cl.routes)))
        parts.append("mutual TLS" if cl.tls else "plaintext routes")
        if cl.user:
            parts.append("route credentials required")
        out.append(", ".join(parts))
    if s.enabled:
        if s.data_dir:
            out.append("spool: {} (events survive a restart); dead letters: {}".format(
                os.path.join(s.data_dir, "events.spool"), config.events.dead_letter_file))
        else:
            out.append("no spool ([service] data_dir unset): events are held in memory and lost on a crash; dead letters: {}".format(
                config.events.dead_letter_file))
        out.append("events on {}.<type> (queue group {}), at most {} waiting".format(
            config.events.subject_prefix, config.events.queue_group, s.event_limit))
        for name in configuration.HANDLER_NAMES:
            address = getattr(config.handlers, name)
            types = _routed_to(config, name)
            out.append("handler {}: {} <- {}".format(name, address or "(no address)", ", ".join(types) or "no event types"))
    return out


def warnings(config: configuration.Config) -> List[str]:
    """What will run but refuse or lose events."""
    out = []
    if not config.service.enabled:
        return out
    path = config.source or "the configuration"
    for name in configuration.HANDLER_NAMES:
        types = _routed_to(config, name)
        if types and not getattr(config.handlers, name):
            out.append("{}: [handlers] {} has no address, so {} will be refused (set it, or route them elsewhere in [events.routing])".format(
                path, name, ", ".join(types)))
    return out


def _routed_to(config: configuration.Config, handler: str) -> List[str]:
    from eventsvc.events.types import EVENT_TYPES, Registry

    registry = Registry(config.events.routing)
    return [t for t in EVENT_TYPES if handler in registry.handlers_for(t)]


def _subjects(allow: Sequence[str], deny: Sequence[str]) -> str:
    text = ", ".join(allow) if allow else "anything"
    return text + (" (except {})".format(", ".join(deny)) if deny else "")


class _Conn:
    """Just enough of a NATS client for the health check."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        #: The server's INFO.
        self.info: dict = {}

    def close(self) -> None:
        """
        Close as a well-behaved client does: TLS close_notify, then FIN,
        then read to the end, so the server logs "Client Closed" rather
        than the "Read Error" of a reset.
        """
        sock = self.sock
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock = sock.unwrap()
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(1.0)
            while sock.recv(65536):
                pass
        except (OSError, ValueError):
            pass
        finally:
            sock.close()
            self.sock.close()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise Unhealthy("the gateway closed the connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise Unhealthy("the gateway closed the connection")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _local(host: str) -> str:
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _open(host: str, port: int, timeout: float, tls: Callable[[], ssl.SSLContext], server_name: str) -> _Conn:
    """
    Connect, read INFO, and upgrade to TLS when the server asks for it, with
    the context C{tls()} makes then (so a TLS problem is an error here, in
    the caller's handling, and a plaintext server needs no certificate).
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise Unhealthy("cannot connect: {}".format(e.strerror or e))
    conn = _Conn(sock)
    info = conn.line()
    if not info.startswith(b"INFO "):
        sock.close()
        raise Unhealthy("no INFO from {}:{}".format(host, port))
    conn.info = json.loads(info[5:])
    if conn.info.get("tls_required"):
        try:
            conn.sock = tls().wrap_socket(sock, server_hostname=server_name)
        except BaseException:
            sock.close()
            raise
    return conn


def publish(options: argparse.Namespace) -> int:
    """Send one event to the service listener and print its acknowledgement."""
    import uuid
    from datetime import datetime, timezone

    config = _load(options.config)
    try:
        raw = sys.stdin.read() if options.file == "-" else open(options.file, encoding="utf-8").read()
        event = wirejson.loads(raw)
        if not isinstance(event, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return _say("eventsvc: {}: cannot use the event: {}".format(options.file, e), EX_FAIL)
    event.setdefault("event_id", str(uuid.uuid4()))
    event.setdefault("published", datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"))
    event.setdefault("type", {"name": options.type})
    body = json.dumps(event).encode("utf-8")
    host, port = _local(config.service.host), config.service.port

    def tls() -> ssl.SSLContext:
        if not (config.tls.enabled or options.cert):
            raise Unhealthy("the service requires TLS: set [tls] or --cert and --key")
        context = ssl.create_default_context(cafile=options.ca or config.tls.root_ca_path or None)
        context.load_cert_chain(options.cert or config.tls.cert_path, options.key or config.tls.key_path)
        return context

    subject = "{}.{}".format(config.events.subject_prefix, options.type).encode()
    inbox = ("_INBOX." + secrets.token_hex(8)).encode()
    try:
        conn = _open(host, port, options.timeout, tls, options.server_name)
        try:
            conn.sock.sendall(
                b'CONNECT {"verbose":false,"pedantic":false,"name":"eventsvc-publish","protocol":1}\r\n'
                + b"SUB %s 1\r\nPUB %s %s %d\r\n%s\r\n" % (inbox, subject, inbox, len(body), body)
            )
            while True:
                line = conn.line()
                if line.startswith(b"-ERR"):
                    raise Unhealthy(line.decode("utf-8", "replace"))
                if line.startswith(b"MSG "):
                    answer = conn.read(int(line.split()[-1]) + 2)[:-2]
                    break
        finally:
            conn.close()
    except (Unhealthy, OSError, ValueError, ssl.SSLError) as e:
        return _say("eventsvc: cannot publish to {}:{}: {}".format(host, port, e), EX_FAIL)
    ack = json.loads(answer)
    return _say(answer.decode("utf-8"), EX_OK if ack.get("success") else EX_FAIL)


def health_check(options: argparse.Namespace) -> int:
    config = _load(options.config)
    gw = config.gateway
    if not gw.enabled:
        return _say("unhealthy: [gateway] is not enabled in {}".format(options.config), EX_FAIL)
    host, port = _local(gw.host), gw.port
    try:
        with open(gw.health_token_file, encoding="ascii") as f:
            token = f.read().strip()
    except OSError as e:
        return _say(
            "unhealthy: cannot read the health-check token {} ({}); is the gateway running?".format(gw.health_token_file, e.strerror),
            EX_FAIL,
        )
    started = time.monotonic()
    name = gw.frontend_tls[0].server_name if gw.frontend_tls else host
    try:
        conn = _open(host, port, options.timeout, lambda: ssl.create_default_context(cafile=options.ca or config.tls.root_ca_path or None), name)
        try:
            subject = _echo(conn, token)
            status = _status(conn)
        finally:
            conn.close()
    except (Unhealthy, OSError, ValueError, ssl.SSLError) as e:
        return _say("unhealthy: gateway {}:{}: {}".format(host, port, e), EX_FAIL)
    if status.get("status") != "ok":
        return _say("unhealthy: gateway {}:{}: {}".format(host, port, status.get("error") or "status {!r}".format(status.get("status"))), EX_FAIL)
    elapsed = (time.monotonic() - started) * 1000
    return _say("healthy: gateway {}:{} echoed a request on {} in {:.1f} ms".format(host, port, subject, elapsed), EX_OK)


def _echo(conn: _Conn, token: str) -> str:
    """
    Log in with the health-check token and answer our own request through
    the gateway: a request/reply echo, as the Go gateway's health check.
    Returns the subject it used.
    """
    subject = "healthcheck." + secrets.token_hex(8)
    inbox = "_INBOX." + secrets.token_hex(8)
    connect = {
        "verbose": False, "pedantic": False, "auth_token": token, "name": "eventsvc-health-check",
        "lang": "python", "version": __version__, "protocol": 1,
    }
    payload = secrets.token_hex(8).encode()
    conn.sock.sendall(
        b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n"
        + b"SUB %s 1\r\nSUB %s 2\r\nPUB %s %s %d\r\n%s\r\n" % (subject.encode(), inbox.encode(), subject.encode(), inbox.encode(), len(payload), payload)
    )
    while True:
        sid, reply, body = _next_message(conn)
        if sid == b"1" and reply:
            # The request reached us through the gateway: answer it.
            conn.sock.sendall(b"PUB %s %d\r\n%s\r\n" % (reply, len(body), body))
        elif sid == b"2":
            if body != payload:
                raise Unhealthy("the echo came back changed")
            return subject


def _status(conn: _Conn) -> dict:
    """
    Ask the server itself how it is (what /healthz says: starting, lame
    duck, shutting down, a configured route down), on its own subject.
    """
    server_id = conn.info.get("server_id", "")
    inbox = "_INBOX." + secrets.token_hex(8)
    conn.sock.sendall(b"SUB %s 3\r\nPUB healthcheck.status.%s %s 0\r\n\r\n" % (inbox.encode(), server_id.encode(), inbox.encode()))
    while True:
        sid, _, body = _next_message(conn)
        if sid == b"3":
            answer = wirejson.loads(body)
            if not isinstance(answer, dict):
                raise Unhealthy("the status answer is not a JSON object")
            return answer


def _next_message(conn: _Conn) -> "tuple[bytes, Optional[bytes], bytes]":
    """The next MSG's sid, reply subject and payload; answers PINGs, fails on -ERR."""
    while True:
        line = conn.line()
        if line.startswith(b"-ERR"):
            raise Unhealthy("the gateway refused the health check: {}".format(line.decode("utf-8", "replace")))
        if line == b"PING":
            conn.sock.sendall(b"PONG\r\n")
            continue
        if not line.startswith(b"MSG "):
            continue
        args = line.split()
        body = conn.read(int(args[-1]) + 2)[:-2]
        return args[2], args[3] if len(args) == 5 else None, body


_NOTICE = b"# FAKE development certificate made by `eventsvc certs` - NOT FOR PRODUCTION\n"


def certs(options: argparse.Namespace) -> int:
    from eventsvc.security import certs as minting

    out = options.out
    names = [n for n in options.names.split(",") if n]
    files = ["ca.crt", "ca.key"] + [r + ext for r in ("service", "gateway", "client") for ext in (".crt", ".key")]
    existing = [f for f in files if os.path.exists(os.path.join(out, f))]
    if existing and not options.force:
        return _say("eventsvc: {} already holds {}; use --force to replace them".format(out, ", ".join(existing)), EX_FAIL)
    try:
        os.makedirs(out, exist_ok=True)
        ca = minting.make_ca()
        minted = {"ca": ca}
        for role in ("service", "gateway", "client"):
            minted[role] = minting.make_cert(ca, "eventsvc-" + role, names)
        for role, m in minted.items():
            _write(os.path.join(out, role + ".crt"), _NOTICE + m.cert_pem, 0o644)
            _write(os.path.join(out, role + ".key"), _NOTICE + m.key_pem, 0o600)
    except OSError as e:
        return _say("eventsvc: cannot write certificates to {}: {}".format(out, e.strerror or e), EX_FAIL)
    return _say("wrote a FAKE development CA and service, gateway and client certificates for {} to {}".format(", ".join(names), out), EX_OK)


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="eventsvc", description="Administer an eventsvc deployment.")
    top.add_argument("--version", action="version", version="eventsvc " + __version__)
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    p = commands.add_parser("check-config", help="check a configuration and every file it names")
    p.add_argument("--config", "-c", required=True, help="the TOML configuration patch")
    p.set_defaults(run=check_config)
    p = commands.add_parser("health-check", help="request/reply echo through the configured gateway")
    p.add_argument("--config", "-c", required=True, help="the TOML configuration patch")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    p.add_argument("--ca", help="CA to trust for the gateway's certificate (default: [tls] root_ca_path)")
    p.set_defaults(run=health_check)
    p = commands.add_parser("publish", help="send one event and print the acknowledgement")
    p.add_argument("--config", "-c", required=True, help="the TOML configuration patch")
    p.add_argument("--type", required=True, help="the event type (e.g. nodeTerminated)")
    p.add_argument("--file", default="-", help="the event as JSON (default: standard input)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    p.add_argument("--cert", help="client certificate (default: [tls] cert_path)")
    p.add_argument("--key", help="its key (default: [tls] key_path)")
    p.add_argument("--ca", help="CA to trust (default: [tls] root_ca_path)")
    p.add_argument("--server-name", default="localhost", help="name to check on the server certificate")
    p.set_defaults(run=publish)
    p = commands.add_parser("certs", help="make a FAKE development CA and certificates")
    p.add_argument("--out", required=True, help="folder to write them to")
    p.add_argument("--names", default="localhost,127.0.0.1,::1", help="DNS names and IPs they are valid for")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(run=certs)
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parser().parse_args(argv)
    if getattr(options, "timeout", None) is not None:
        socket.setdefaulttimeout(options.timeout)
    return options.run(options)


if __name__ == "__main__":
    raise SystemExit(main())
