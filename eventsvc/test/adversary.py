"""
Attacks on a running server, and a probe that measures what everyone else
feels meanwhile: the round trip of a PING from an innocent client.

Each attack is bounded in count and time and talks only to 127.0.0.1.  Used
by test_adversarial (eventsvc against its own bounds) and usable by hand
against nats-server for comparison:

    python -m eventsvc.test.adversary 4222 deep_wildcards
    python -m eventsvc.test.adversary 4222 route_flood 6222 8222
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Callable, Dict, List, Optional


def connect(port: int, connect: bytes = b'CONNECT {"verbose":false,"pedantic":false}\r\n', timeout: float = 10) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    read_line(s)
    s.sendall(connect)
    return s


def read_line(s: socket.socket) -> bytes:
    """
    One line, with its CRLF, and not a byte more: what follows stays in the
    socket for the next reader.  Peeked at, then taken whole (a byte per
    recv, as before, cost the 20,000 connections of the closed-connections
    attack 10 million system calls); a byte at a time where peeking cannot
    be done (a TLS socket).
    """
    data = b""
    while True:
        try:
            seen = s.recv(65536, socket.MSG_PEEK)
        except ValueError:  # (ssl.SSLSocket: no flags)
            seen = s.recv(1)
            if not seen:
                raise ConnectionError("closed after {!r}".format(data))
            data += seen
            if data.endswith(b"\r\n"):
                return data
            continue
        if not seen:
            raise ConnectionError("closed after {!r}".format(data))
        # (The CRLF may straddle two peeks: look from the last byte taken.)
        end = (data + seen).find(b"\r\n", max(len(data) - 1, 0))
        take = len(seen) if end < 0 else end + 2 - len(data)
        while take:
            got = s.recv(take)
            if not got:
                raise ConnectionError("closed after {!r}".format(data))
            data += got
            take -= len(got)
        if end >= 0:
            return data


def ping(s: socket.socket) -> None:
    """PING and wait for the PONG (skipping whatever else comes)."""
    s.sendall(b"PING\r\n")
    data = b""
    while b"PONG\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk


class Probe:
    """An innocent client pinging every C{interval} seconds, noting each round trip."""

    def __init__(self, port: int, interval: float = 0.01, server_pid: int = 0) -> None:
        self.port = port
        self.interval = interval
        #: With the server's pid, round trips are read on its
        #: L{eventsvc.test.process.ServedClock} (the wall clock less the time
        #: the server's reactor and this probe waited for a CPU); C{walls}
        #: keeps the wall clock's too.
        self.server_pid = server_pid
        self.rtts: List[float] = []
        self.walls: List[float] = []
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Probe":
        self._sock = connect(self.port)
        ping(self._sock)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        clock: Callable[[], float] = time.monotonic
        if self.server_pid:
            from eventsvc.test.process import ServedClock

            clock = ServedClock((self.server_pid, None), reader=True)
        while not self._stop.is_set():
            started, wall = clock(), time.monotonic()
            try:
                ping(self._sock)
            except OSError as e:
                self.errors.append(str(e))
                return
            self.walls.append(time.monotonic() - wall)
            self.rtts.append(clock() - started)
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self._sock.close()

    @property
    def worst(self) -> float:
        return max(self.rtts) if self.rtts else float("inf")

    def summary(self) -> str:
        if not self.rtts:
            return "no round trips ({})".format("; ".join(self.errors) or "none measured")
        ordered = sorted(self.rtts)
        text = "{} round trips, p50 {:.1f} ms, p99 {:.1f} ms, worst {:.1f} ms".format(
            len(ordered), ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000, ordered[-1] * 1000)
        if self.server_pid:
            text += " less waits for a CPU (wall clock: worst {:.1f} ms)".format(max(self.walls) * 1000)
        return text


def _deep(i: int, depth: int = 40) -> bytes:
    # A deep wildcard subject: a.*.b.*. ... ending in >.
    return b".".join(b"t%d" % (i % 7) if k % 2 else b"*" for k in range(depth)) + b".>"


def deep_wildcards(port: int) -> None:
    """300 deep wildcard SUBs, publishes to 1,100 distinct subjects, then a disconnect."""
    attacker = connect(port)
    attacker.sendall(b"".join(b"SUB %s %d\r\n" % (_deep(i), i) for i in range(300)))
    ping(attacker)
    pub = connect(port)
    subjects = [b".".join(b"t%d" % ((i + k) % 7) for k in range(45)) for i in range(1100)]
    pub.sendall(b"".join(b"PUB %s 1\r\nx\r\n" % s for s in subjects))
    ping(pub)
    attacker.close()
    ping(pub)
    pub.close()


def wildcard_churn(port: int, seconds: float = 2.0) -> None:
    """SUB and UNSUB of one deep wildcard, over and over, while another publishes to many subjects."""
    attacker = connect(port)
    pub = connect(port)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        attacker.sendall(b"".join(b"SUB %s c%d\r\nUNSUB c%d\r\n" % (_deep(n + i), n + i, n + i) for i in range(50)))
        pub.sendall(b"".join(b"PUB s.%d.x 1\r\nx\r\n" % ((n + i) % 900) for i in range(50)))
        n += 50
        ping(attacker)
    attacker.close()
    pub.close()


def many_subs(port: int, count: int = 10000) -> None:
    """10,000 SUBs in one write on one connection, then a disconnect."""
    attacker = connect(port)
    attacker.sendall(b"".join(b"SUB many.%d.x %d\r\n" % (i, i) for i in range(count)))
    ping(attacker)
    attacker.close()


def long_subjects(port: int, count: int = 2000, tokens: int = 1000) -> None:
    """PUBs to distinct 1,000-token subjects (near the control-line limit)."""
    pub = connect(port)
    sub = connect(port)
    sub.sendall(b"SUB a.> 1\r\n")
    ping(sub)
    batch = []
    for i in range(count):
        subject = b"a." + b".".join(b"%d" % ((i * 31 + k) % 10) for k in range(tokens - 1))
        batch.append(b"PUB %s 1\r\nx\r\n" % subject)
        if len(batch) == 100:
            pub.sendall(b"".join(batch))
            batch = []
    pub.sendall(b"".join(batch))
    ping(pub)
    pub.close()
    sub.close()


def connection_burst(port: int, count: int = 500, clock: Callable[[], float] = time.monotonic) -> float:
    """C{count} connections opened at once; returns the seconds until every one had its INFO, on C{clock}."""
    started = clock()
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    greeted = 0
    for s in socks:
        s.setblocking(True)
        s.settimeout(30)
        try:
            if s.recv(5).startswith(b"INFO"):
                greeted += 1
        except OSError:
            pass
    took = clock() - started
    for s in socks:
        s.close()
    if greeted != count:
        raise AssertionError("{} of {} connections greeted".format(greeted, count))
    return took


def json_bomb(port: int, attempts: int = 50, depth: int = 2000) -> None:
    """CONNECTs of deeply nested JSON, again and again."""
    bomb = b"CONNECT " + b"[" * depth + b"]" * depth + b"\r\n"
    for _ in range(attempts):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        read_line(s)
        s.sendall(bomb)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
        s.close()


def fan_out_burst(port: int) -> None:
    """600 wildcard subscriptions that all match, 1,100 distinct subjects published in one write, then a disconnect."""
    attacker = connect(port)
    attacker.sendall(b"".join(b"SUB %s %d\r\n" % (b"*." * (1 + i % 40) + b">", i) for i in range(600)))
    ping(attacker)
    pub = connect(port)
    subjects = [b".".join(b"t%d" % ((i * 7 + k) % 13) for k in range(45)) for i in range(1100)]
    pub.sendall(b"".join(b"PUB %s 1\r\nx\r\n" % s for s in subjects))
    ping(pub)
    attacker.close()
    ping(pub)
    pub.close()


def closed_connections_page(port: int, monitor: int = 0, closed: int = 3000, fetches: int = 5) -> None:
    """Many closed connections, then /connz?state=closed asked for all of them, again and again."""
    import http.client

    for i in range(closed):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        read_line(s)
        s.sendall(b'CONNECT {"verbose":false,"name":"gone-%d"}\r\n' % i)
        s.close()
    for _ in range(fetches):
        conn = http.client.HTTPConnection("127.0.0.1", monitor, timeout=30)
        conn.request("GET", "/connz?state=closed&limit=10000&subs=1")
        body = conn.getresponse().read()
        conn.close()
        assert body.startswith(b"{"), body[:100]


def tls_login_burst(port: int, ca: str, token: str, count: int = 300, why: Optional[Dict[str, int]] = None) -> int:
    """
    C{count} clients at once, each a TLS handshake and a token login at the
    gateway; returns how many got in.  C{why}, if given, counts the others
    by the step they failed at and the error ("tls: SSLEOFError").
    """
    import ssl

    context = ssl.create_default_context(cafile=ca)
    done: List[int] = []

    def one() -> None:
        step = "connect"
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            step = "info"
            read_line(s)
            step = "tls"
            t = context.wrap_socket(s, server_hostname="localhost")
            step = "login"
            t.sendall(b'CONNECT {"verbose":false,"auth_token":"%s"}\r\n' % token.encode())
            ping(t)
            t.close()
            done.append(1)
        except (OSError, ssl.SSLError) as e:
            if why is not None:
                key = "{}: {}".format(step, type(e).__name__)
                why[key] = why.get(key, 0) + 1

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return len(done)


# -- WebSocket (issue 26): a close we begin must close; a frame too big is
# refused at its header; a deflate bomb is cut without holding anyone up.
# Each takes the WebSocket listener's port.

#: What the deflate bomb inflates to: operations that parse (a bomb of zeros
#: is refused by the parser at its first slice, which tests nothing).
BOMB_UNIT = b"PUB bomb 0\r\n\r\n"
_bombs: Dict[int, bytes] = {}
#: The token the WebSocket attackers log in with (a listener needs some way to
#: authenticate; a server without authentication ignores it).
WS_TOKEN = "FAKE-adversary-token"


def deflate_bomb(size: int = 1 << 30) -> bytes:
    """A permessage-deflate message of about 2 MB inflating to C{size} bytes of BOMB_UNIT (built once per size)."""
    import zlib

    if size not in _bombs:
        block = BOMB_UNIT * ((1 << 20) // len(BOMB_UNIT))
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        # A full flush starts each block afresh: every block compresses to
        # the same bytes, so one is compressed and repeated.
        one = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
        _bombs[size] = one * (size // len(block))
    return _bombs[size]


def _ws_client(port: int, name: str, deflate: bool = False) -> "object":
    from eventsvc.test.wsframes import RawClient

    client = RawClient(port, deflate=deflate)
    if client.status != 101:
        raise AssertionError("WebSocket upgrade refused: {!r}".format(client.response))
    client.send(b'CONNECT {"verbose":false,"name":"%s","auth_token":"%s"}\r\nPING\r\n' % (name.encode(), WS_TOKEN.encode()))
    client.frames(until=b"PONG\r\n")
    return client


def _connz_names(monitor: int) -> List[str]:
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", monitor, timeout=10)
    conn.request("GET", "/connz?limit=100000")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return [c.get("name", "") for c in body["connections"]]


def _until_gone(sock: socket.socket, started: float, limit: float) -> Optional[float]:
    """Read (and never answer) until the server lets the socket go; the seconds it took, or None if it held on past C{limit}."""
    while True:
        left = started + limit - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except socket.timeout:
            return None
        except OSError:  # reset
            return time.monotonic() - started


def ws_protocol_errors(port: int, monitor: int, count: int = 20, limit: float = 5.0,
                       clock: Callable[[], float] = time.monotonic) -> float:
    """
    C{count} WebSockets each sending an unmasked frame and never answering
    the close frame: returns the longest one was held (its socket open or
    listed in /connz), on C{clock}; C{limit} when one outlived it on the
    wall clock.
    """
    from eventsvc.test.wsframes import frame

    worst = 0.0
    for i in range(count):
        name = "ws-unmasked-{}".format(i)
        client = _ws_client(port, name)
        started, served = time.monotonic(), clock()
        client.sock.sendall(frame(b"PING\r\n", mask=None))  # type: ignore[attr-defined]
        took = _until_gone(client.sock, started, limit)  # type: ignore[attr-defined]
        while took is not None and name in _connz_names(monitor):
            if time.monotonic() - started > limit:
                took = None
                break
            time.sleep(0.01)
        client.close()  # type: ignore[attr-defined]
        worst = max(worst, limit if took is None else clock() - served)
    return worst


def ws_huge_header(port: int, seconds: float = 3.0, clock: Callable[[], float] = time.monotonic) -> "tuple[int, float]":
    """
    A frame header declaring 2^62 bytes, then random data as fast as the
    server takes it, for up to C{seconds}: returns (bytes sent after the
    header, seconds on C{clock} until the server let the socket go, or
    C{seconds} when it held on that long on the wall clock).
    """
    import os

    from eventsvc.test.wsframes import header

    client = _ws_client(port, "ws-huge-header")
    sock = client.sock  # type: ignore[attr-defined]
    started, served = time.monotonic(), clock()
    sock.sendall(header(2 ** 62))
    junk = os.urandom(65536)
    sent = 0
    sock.settimeout(0.2)
    gone = False
    while time.monotonic() - started < seconds:
        try:
            sent += sock.send(junk)
        except socket.timeout:
            continue  # not read: is it closed?
        except OSError:  # reset, broken pipe: let go
            gone = True
            break
    took = clock() - served
    client.close()  # type: ignore[attr-defined]
    return sent, took if gone else seconds


def ws_deflate_bomb(port: int, size: int = 1 << 30) -> "tuple[int, float]":
    """
    One compressed message of about 2 MB inflating to C{size} (1 GiB) of
    valid operations: returns (the close code, seconds until the close frame).
    """
    import struct

    from eventsvc.test.wsframes import CLOSE, frame, read_frames

    bomb = deflate_bomb(size)
    client = _ws_client(port, "ws-deflate-bomb", deflate=True)
    if b"permessage-deflate" not in client.response:  # type: ignore[attr-defined]
        raise AssertionError("compression not offered")
    started = time.monotonic()
    sock = client.sock  # type: ignore[attr-defined]
    sock.sendall(frame(bomb, rsv1=True))
    # Frames until the close frame (what comes before it is not looked at).
    buffer, code = client.buffer, 0  # type: ignore[attr-defined]
    # The server spends about 5 s of CPU on a bomb (4.5 million PUBs
    # parsed as they inflate, to the 64 MiB cap); on a machine loaded 10
    # deep that was 13-30 s of wall time, and 30 s ran out.  A wait, not a
    # bound: the probe is what measures the server meanwhile.
    sock.settimeout(90)
    while not code:
        frames, buffer = read_frames(buffer)
        closes = [payload for opcode, _, _, payload in frames if opcode == CLOSE]
        if closes:
            code = struct.unpack("!H", closes[0][:2])[0]
            break
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        buffer += chunk
    took = time.monotonic() - started
    client.close()  # type: ignore[attr-defined]
    return code, took


def subscriptions(monitor: int) -> int:
    """The server's subscription count, from its /subsz (nats-server's too)."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", monitor, timeout=30)
    conn.request("GET", "/subsz")
    count = json.loads(conn.getresponse().read())["num_subscriptions"]
    conn.close()
    return int(count)


def settle(monitor: int, at_most: int, seconds: float = 30.0) -> None:
    """Wait until the server holds at most C{at_most} subscriptions (a closed link's interest is gone)."""
    deadline = time.monotonic() + seconds
    while subscriptions(monitor) > at_most:
        if time.monotonic() > deadline:
            raise AssertionError("still {} subscriptions after {}s".format(subscriptions(monitor), seconds))
        time.sleep(0.05)


def _flood(s: socket.socket, lines: Callable[[int], bytes], count: int, chunk: int = 2000) -> None:
    """C{count} interest lines as fast as the socket takes them, then a PING answered once all are read."""
    for first in range(0, count, chunk):
        s.sendall(b"".join(lines(i) for i in range(first, min(first + chunk, count))))
    ping(s)


def route_flood(port: int, cluster_port: int, monitor: int = 0, count: int = 200000, cluster: str = "eventsvc") -> None:
    """
    A route peer that passed the handshake (no credentials configured)
    sends C{count} distinct C{RS+ $G flood.N.x}, then goes; with a monitor
    port, until its interest is gone from the server.
    """
    before = subscriptions(monitor) if monitor else 0
    s = socket.create_connection(("127.0.0.1", cluster_port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    read_line(s)  # the server's INFO
    s.sendall(
        b'CONNECT {"echo":false,"verbose":false,"pedantic":false,"headers":true,"name":"FLOODER","cluster":"%s"}\r\n'
        b'INFO {"server_id":"FLOODER","server_name":"flooder","cluster":"%s","proto":2,"headers":true}\r\n'
        % (cluster.encode(), cluster.encode()))
    _flood(s, lambda i: b"RS+ $G flood.%d.x\r\n" % i, count)
    s.close()
    if monitor:
        settle(monitor, before)


def leaf_flood(port: int, leaf_port: int, monitor: int = 0, count: int = 200000) -> None:
    """
    A leaf node that passed the handshake (no credentials configured)
    sends C{count} distinct C{LS+ flood.N.x}, then goes; with a monitor
    port, until its interest is gone from the server.
    """
    before = subscriptions(monitor) if monitor else 0
    s = socket.create_connection(("127.0.0.1", leaf_port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    read_line(s)  # the hub's INFO
    s.sendall(b'CONNECT {"server_id":"FLOODER","name":"flooder","headers":true}\r\n')
    _flood(s, lambda i: b"LS+ flood.%d.x\r\n" % i, count)
    s.close()
    if monitor:
        settle(monitor, before)


ATTACKS: Dict[str, Callable[..., object]] = {
    f.__name__: f for f in (
        deep_wildcards, wildcard_churn, many_subs, long_subjects, connection_burst, json_bomb, fan_out_burst,
        route_flood, leaf_flood,
    )
}


#: Attacks on a WebSocket listener: python -m eventsvc.test.adversary <NATS port> <name> <WebSocket port> [<monitor port>]
WS_ATTACKS: Dict[str, Callable[..., object]] = {
    "ws_protocol_errors": lambda ws, monitor: ws_protocol_errors(ws, monitor),
    "ws_huge_header": lambda ws, monitor: ws_huge_header(ws),
    "ws_deflate_bomb": lambda ws, monitor: ws_deflate_bomb(ws),
}


def main() -> None:
    # (route_flood and leaf_flood take the peer port, and a monitor port,
    # next; the WebSocket attacks the WebSocket port and a monitor port.)
    port, name, more = int(sys.argv[1]), sys.argv[2], [int(a) for a in sys.argv[3:]]
    if name == "ws_deflate_bomb":
        deflate_bomb()  # built before the probe starts
    with Probe(port) as probe:
        started = time.monotonic()
        if name in WS_ATTACKS:
            result = WS_ATTACKS[name](more[0], more[1] if len(more) > 1 else 0)
        else:
            result = ATTACKS[name](port, *more)
        took = time.monotonic() - started
    shown = " -> {:.2f}".format(result) if isinstance(result, float) else " -> {}".format(result) if result is not None else ""
    print("{}: {:.2f}s{}; probe: {}".format(name, took, shown, probe.summary()))


if __name__ == "__main__":
    main()
