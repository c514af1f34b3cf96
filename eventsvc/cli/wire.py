"""
Just enough of a blocking NATS client for the admin command.

It greets, upgrades to TLS when the server asks (INFO then TLS, as
nats-server 2.9), logs in with the configuration's identity (the service's
mutual-TLS certificate, or a gateway token), and reads messages with their
headers.  It is not a client library: one connection, one thread, a
timeout on every read.
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from eventsvc import __version__, config as configuration, wirejson
from eventsvc.cli.common import Failed


class Message(NamedTuple):
    subject: str
    sid: bytes
    reply: Optional[str]
    #: The header block (C{NATS/1.0 ...}), or None.
    headers: Optional[bytes]
    payload: bytes

    def header_lines(self) -> List[str]:
        """The headers as "Key: value" lines, the status line first when it has one."""
        if not self.headers:
            return []
        lines = self.headers.decode("utf-8", "replace").split("\r\n")
        status = lines[0][len("NATS/1.0"):].strip()
        return (["status: " + status] if status else []) + [line for line in lines[1:] if line]

    @property
    def status(self) -> str:
        """The status code of a status message (503: no responders), or ""."""
        if not self.headers:
            return ""
        return self.headers.split(b"\r\n", 1)[0][len(b"NATS/1.0"):].strip().split(b" ", 1)[0].decode("ascii", "replace")


class Connection:
    """One connection to a NATS listener."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        #: The server's INFO.
        self.info: Dict[str, Any] = {}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise Failed("the server closed the connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise Failed("the server closed the connection")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def next_message(self) -> Message:
        """
        The next MSG or HMSG; answers PING, skips +OK, PONG and INFO.

        @raise Failed: on C{-ERR} (with the server's words), or a close.
        """
        while True:
            line = self.line()
            if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                return self._message(line)
            self._control(line)

    def pong(self) -> None:
        """Wait for the PONG that answers our PING (an -ERR first is a refusal)."""
        while True:
            line = self.line()
            if line == b"PONG":
                return
            if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                self._message(line)  # not ours to keep before we asked
                continue
            self._control(line)

    def _control(self, line: bytes) -> None:
        if line.startswith(b"-ERR"):
            raise Failed(line[5:].strip().strip(b"'").decode("utf-8", "replace"))
        if line == b"PING":
            self.send(b"PONG\r\n")

    def _message(self, line: bytes) -> Message:
        args = line.split()
        if args[0] == b"HMSG":
            reply = args[3] if len(args) == 6 else None
            hdr, total = int(args[-2]), int(args[-1])
            body = self.read(total + 2)[:-2]
            return Message(args[1].decode("utf-8", "replace"), args[2], _text(reply), body[:hdr], body[hdr:])
        reply = args[3] if len(args) == 5 else None
        payload = self.read(int(args[-1]) + 2)[:-2]
        return Message(args[1].decode("utf-8", "replace"), args[2], _text(reply), None, payload)

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


def _text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("utf-8", "replace")


def local(host: str) -> str:
    """Where to reach a listener bound to C{host} from this machine."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def open_connection(host: str, port: int, timeout: float, tls: Callable[[], ssl.SSLContext], server_name: str) -> Connection:
    """
    Connect, read INFO, and upgrade to TLS when the server asks for it, with
    the context C{tls()} makes then (so a TLS problem is an error here, in
    the caller's handling, and a plaintext server needs no certificate).
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise Failed("cannot connect: {}".format(e.strerror or e))
    conn = Connection(sock)
    info = conn.line()
    if not info.startswith(b"INFO "):
        sock.close()
        raise Failed("no INFO from {}:{}".format(host, port))
    conn.info = json.loads(info[5:])
    if conn.info.get("tls_required"):
        try:
            conn.sock = tls().wrap_socket(sock, server_hostname=server_name)
        except BaseException:
            sock.close()
            raise
    return conn


def login(conn: Connection, name: str, token: str = "") -> None:
    """CONNECT (headers and no_responders on) and a PING: a refusal is raised here."""
    options: Dict[str, Any] = {
        "verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1,
        "name": name, "lang": "python", "version": __version__,
    }
    if token:
        options["auth_token"] = token
    conn.send(b"CONNECT " + json.dumps(options).encode("utf-8") + b"\r\nPING\r\n")
    conn.pong()


class Identity(NamedTuple):
    """Which listener to reach and how to prove who we are there."""

    where: str
    host: str
    port: int
    tls: Callable[[], ssl.SSLContext]
    server_name: str
    token: str


def identity(config: configuration.Config, options: Any, agent_listener: bool = False) -> Identity:
    """
    The configuration's own identity: the service listener with the [tls]
    certificate (or --cert/--key), or, with C{agent_listener} (--gateway, or
    no service in this process), the agent listener ([gateway]) with --token
    or the first plain [gateway] token.
    """
    ca = getattr(options, "ca", None)
    if agent_listener or not config.service.enabled:
        gw = config.gateway
        if not gw.enabled:
            raise Failed("neither [service] nor [gateway] runs in {}".format(config.source))
        token = getattr(options, "token", None) or next((t for t in gw.tokens if not t.startswith("sha256:")), "")
        if not token:
            raise Failed("the gateway needs a token: give --token (the configured ones are hashed)")
        host = local(gw.host)
        name = gw.frontend_tls[0].server_name if gw.frontend_tls else host
        return Identity(
            "gateway {}:{}".format(host, gw.port), host, gw.port,
            lambda: ssl.create_default_context(cafile=ca or config.tls.root_ca_path or None), name, token,
        )
    cert, key = getattr(options, "cert", None), getattr(options, "key", None)

    def mutual() -> ssl.SSLContext:
        if not (config.tls.enabled or cert):
            raise Failed("the service requires TLS: set [tls] or --cert and --key")
        context = ssl.create_default_context(cafile=ca or config.tls.root_ca_path or None)
        context.load_cert_chain(cert or config.tls.cert_path, key or config.tls.key_path)
        return context

    host = local(config.service.host)
    return Identity(
        "service {}:{}".format(host, config.service.port), host, config.service.port, mutual,
        getattr(options, "server_name", None) or "localhost", "",
    )


def connect(who: Identity, timeout: float, name: str) -> Connection:
    """Open and log in; any failure is a L{Failed} (the caller says where)."""
    try:
        conn = open_connection(who.host, who.port, timeout, who.tls, who.server_name)
    except ssl.SSLError as e:
        raise Failed("TLS: {}".format(e))
    except (OSError, ValueError) as e:
        raise Failed(str(e))
    try:
        login(conn, name, who.token)
    except Failed as e:
        conn.close()
        raise Failed("refused: {}".format(e))
    except (OSError, ssl.SSLError) as e:
        conn.close()
        raise Failed(str(e))
    return conn


def request(conn: Connection, subject: str, payload: bytes, headers: Optional[bytes] = None, inbox_prefix: str = "_INBOX") -> Message:
    """Publish C{payload} on C{subject} with a fresh inbox for the reply, and wait for it."""
    inbox = inbox_prefix + "." + secrets.token_hex(11)
    sid = b"r" + secrets.token_hex(3).encode()
    out = b"SUB %s %s\r\nUNSUB %s 1\r\n" % (inbox.encode(), sid, sid)
    if headers:
        out += b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject.encode(), inbox.encode(), len(headers), len(headers) + len(payload), headers, payload)
    else:
        out += b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), inbox.encode(), len(payload), payload)
    conn.send(out)
    while True:
        message = conn.next_message()
        if message.sid == sid:
            return message


def decode_object(payload: bytes, what: str) -> Dict[str, Any]:
    """A JSON object answered by the server (an acknowledgement, a status)."""
    try:
        value = wirejson.loads(payload)
    except ValueError as e:
        raise Failed("{} is not JSON: {}".format(what, e))
    if not isinstance(value, dict):
        raise Failed("{} is not a JSON object".format(what))
    return value
