"""
A connection's life on a TLS listener measured in one process, without
sockets: what `natsbench -mode connect` does to the server (nats.go over
mutual TLS: INFO in plaintext, the handshake with a client certificate,
CONNECT and PING, PING, close_notify and the close), driven through the
listener's own factory with a memory-BIO pyOpenSSL client, many times.

    python bench/tlsinproc.py [--connections N] [--repeat R] [--plain]
    python bench/tlsinproc.py --profile          (cProfile of the server side)
    python bench/tlsinproc.py --compare OTHER_PYTHON_OR_TREE [--rounds 5] [--split]
    python bench/tlsinproc.py --split            (the server's handshake calls apart)
    valgrind --tool=cachegrind python bench/tlsinproc.py --connections N --once

The client's work is timed apart (process time around each client call)
and taken off, so the figure is the server's CPU per connection: its
Python and its share of the handshake's crypto.  The client offers X25519
only, as nats.go on Go 1.19 (natsbench's) does, and keeps no session:
natsbench's client does not resume.  C{--resume} gives the client one
session to offer again (what a client with a session cache does).
C{--split} also times the server's calls of C{do_handshake} (OpenSSL's
handshake, C alone: the server's context has no Python callback a
handshake without ALPN calls), so the rest (the server's Python, its
other OpenSSL calls, the allocator) is told apart from the handshake's
crypto, and two runtimes or two OpenSSL builds can be compared on each.

It imports eventsvc from the running interpreter, so C{--compare} runs the
same loop in another tree's virtual environment, alternately with this
one.  It prints figures; it never passes or fails.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, List, Optional, Tuple

#: What nats.go sends after the handshake (Connect), then Flush's PING.
CONNECT = (
    b'CONNECT {"verbose":false,"pedantic":false,"tls_required":true,"name":"","lang":"go",'
    b'"version":"1.31.0","protocol":1,"echo":true,"headers":true,"no_responders":true}\r\nPING\r\n'
)
PING = b"PING\r\n"


class World:
    """A broker and a TLS (or plain) listener's factory on a fake clock, and a client context."""

    logging = False

    def __init__(self, plain: bool = False, resume: bool = False) -> None:
        from OpenSSL import SSL
        from twisted.internet.address import IPv4Address
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from eventsvc.nats.listener import ClientFactory
        from eventsvc.nats.server import Broker
        from eventsvc.nats.settings import ClientSettings
        from eventsvc.security import certs
        from eventsvc.security.tls import mutual_tls_server

        from twisted.logger import globalLogBeginner

        from eventsvc.ops.logs import make_observer

        # Logging as twistd runs it: [log]'s default observer (text, info),
        # writing to a file (here /dev/null: each line is still a write).
        if not World.logging:
            World.logging = True
            globalLogBeginner.beginLoggingTo(
                [make_observer("text", "info", open(os.devnull, "w"))], discardBuffer=True, redirectStandardIO=False)
        self.SSL = SSL
        self.address = IPv4Address
        directory = tempfile.mkdtemp()
        ca = certs.make_ca()
        paths = {}
        for role, minted in (("ca", ca), ("server", certs.make_cert(ca, "server", ["localhost"])),
                             ("client", certs.make_cert(ca, "client", ["client"]))):
            for ext, data in ((".crt", minted.cert_pem), (".key", minted.key_pem)):
                paths[role + ext] = os.path.join(directory, role + ext)
                with open(paths[role + ext], "wb") as f:
                    f.write(data)
        tls = None if plain else mutual_tls_server(paths["server.crt"], paths["server.key"], paths["ca.crt"])
        self.clock = Clock()
        self.broker = Broker(server_id="NBENCH")
        self.factory = ClientFactory(self.broker, ClientSettings(tls=tls, tls_verify=tls is not None, parse_budget=1e9), self.clock)
        self.factory.handshakes.seconds = float("inf")
        self.plain = plain
        self.resume = resume
        self.session: Any = None
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.use_certificate_file(paths["client.crt"])
        ctx.use_privatekey_file(paths["client.key"])
        ctx.load_verify_locations(paths["ca.crt"])
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        from OpenSSL._util import lib

        # nats.go on Go 1.19 offers an X25519 key share (OpenSSL 3.5+
        # would offer a post-quantum hybrid first: another handshake).
        # (Where the binding has no way to say so, the library's default.)
        if hasattr(lib, "SSL_CTX_set1_curves_list"):
            lib.SSL_CTX_set1_curves_list(ctx._context, b"X25519")
        if resume:
            ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
        self.client_context = ctx

        class Wire(StringTransport):
            """What the server writes, kept for the client to read."""

            def write(self, data: bytes) -> None:
                self.out.append(data)

            def writeSequence(self, seq: List[bytes]) -> None:
                self.out.extend(seq)

            def loseConnection(self) -> None:
                self.disconnecting = True

            def abortConnection(self) -> None:
                self.disconnecting = True

            def lost(self) -> None:
                """As Twisted's TCP transport, before it tells its protocol: its producer is let go."""
                self.producer = None

        self.wire = Wire
        self.count = 0
        self.client_time = 0.0
        self.server_bytes = 0
        #: The server's CPU in do_handshake (with C{split}).
        self.handshake_time = 0.0

    def split(self) -> None:
        """Time the server's C{do_handshake} calls (the client's go on untimed here: its own clock takes them off)."""
        SSL = self.SSL
        handshake = SSL.Connection.do_handshake
        client_context = self.client_context
        clock = time.process_time
        world = self

        def timed(connection: Any) -> None:
            if connection._context is client_context:
                return handshake(connection)
            started = clock()
            try:
                return handshake(connection)
            finally:
                world.handshake_time += clock() - started

        SSL.Connection.do_handshake = timed  # type: ignore[method-assign]

    def connection(self) -> None:
        """One connection's life, as natsbench's client lives it."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        SSL = self.SSL
        clock = time.process_time
        self.count += 1
        proto = self.factory.buildProtocol(None)
        transport = self.wire(peerAddress=self.address("TCP", "127.0.0.1", 10000 + self.count % 50000))
        transport.out = []
        proto.makeConnection(transport)

        def take() -> bytes:
            data = b"".join(transport.out)
            del transport.out[:]
            self.server_bytes += len(data)
            return data

        info = take()
        assert info.startswith(b"INFO "), info
        if self.plain:
            proto.dataReceived(CONNECT)
            assert take() == b"PONG\r\n"
            proto.dataReceived(PING)
            assert take() == b"PONG\r\n"
            transport.lost()
            proto.connectionLost(Failure(ConnectionDone()))
            return
        started = clock()
        client = SSL.Connection(self.client_context, None)
        client.set_connect_state()
        client.set_tlsext_host_name(b"localhost")
        if self.session is not None:
            client.set_session(self.session)
        self.client_time += clock() - started
        got = b""
        for _ in range(20):
            started = clock()
            try:
                client.do_handshake()
                done = True
            except SSL.WantReadError:
                done = False
            try:
                hello = client.bio_read(65536)
            except SSL.WantReadError:
                hello = b""
            if done:
                client.send(CONNECT)
                hello += client.bio_read(65536)
            self.client_time += clock() - started
            if hello:
                proto.dataReceived(hello)
            back = take()
            started = clock()
            if back:
                client.bio_write(back)
            if done:
                try:
                    while True:
                        got += client.recv(65536)
                except SSL.WantReadError:
                    pass
            self.client_time += clock() - started
            if done and got:
                break
        assert got.endswith(b"PONG\r\n"), got
        if self.count == 1:
            from OpenSSL._util import ffi, lib

            group = ffi.string(lib.SSL_get0_group_name(client._ssl)).decode() if hasattr(lib, "SSL_get0_group_name") else "?"
            print("first handshake: {} {}, group {}, resumed {}".format(
                client.get_protocol_version_name(), client.get_cipher_name(), group, bool(lib.SSL_session_reused(client._ssl))),
                file=sys.stderr)
        if self.resume and self.session is None:
            self.session = client.get_session()
        started = clock()
        client.send(PING)
        data = client.bio_read(65536)
        self.client_time += clock() - started
        proto.dataReceived(data)
        started = clock()
        client.bio_write(take())
        assert client.recv(65536) == b"PONG\r\n"
        # Close: close_notify, then the socket (nats.go's Close).
        try:
            client.shutdown()
        except SSL.Error:
            pass
        data = client.bio_read(65536)
        self.client_time += clock() - started
        proto.dataReceived(data)
        take()
        transport.lost()
        proto.connectionLost(Failure(ConnectionDone()))


def run(connections: int, repeat: int, plain: bool, resume: bool, split: bool = False) -> Tuple[float, float, int, float]:
    """
    Best server CPU seconds per connection of C{repeat} rounds, the
    client's, bytes the server wrote per connection, and (C{split}) the
    server's seconds in C{do_handshake} in that round.
    """
    world = World(plain, resume)
    if split:
        world.split()
    for _ in range(min(200, connections)):  # warm up (and the JIT, on PyPy)
        world.connection()
    best = float("inf")
    client = handshake = 0.0
    for _ in range(repeat):
        world.client_time = world.handshake_time = 0.0
        world.server_bytes = 0
        gc.collect()
        started = time.process_time()
        for _ in range(connections):
            world.connection()
        spent = time.process_time() - started
        server = (spent - world.client_time) / connections
        if server < best:
            best, client, handshake = server, world.client_time / connections, world.handshake_time / connections
    assert not world.factory.live and not world.broker.clients if hasattr(world.broker, "clients") else True
    return best, client, world.server_bytes // connections, handshake


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="a plaintext listener (no TLS)")
    parser.add_argument("--resume", action="store_true", help="the client offers its first session again")
    parser.add_argument("--split", action="store_true", help="time the server's do_handshake calls apart from the rest")
    parser.add_argument("--once", action="store_true", help="one round, no figures (for cachegrind)")
    parser.add_argument("--profile", action="store_true", help="cProfile one round, by internal time")
    parser.add_argument("--compare", metavar="OTHER", help="alternate with another interpreter (another tree's venv), or with another tree's source (a directory holding eventsvc/, on this interpreter)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.once:
        world = World(options.plain, options.resume)
        for _ in range(options.connections):
            world.connection()
        return
    if options.profile:
        import cProfile
        import pstats

        world = World(options.plain, options.resume)
        for _ in range(200):
            world.connection()
        profile = cProfile.Profile(time.process_time)
        profile.runcall(lambda: [world.connection() for _ in range(options.connections)])
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(45)
        by_file: dict = {}
        for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            key = "/".join(filename.split("/")[-3:]) if filename != "~" else name
            by_file[key] = by_file.get(key, 0.0) + tottime
        print("internal time by file, us a connection (client included):")
        for key, spent in sorted(by_file.items(), key=lambda kv: -kv[1])[:30]:
            print("  {:70s} {:8.1f}".format(key, spent / options.connections * 1e6))
        if os.environ.get("CALLEES"):
            stats.sort_stats("cumulative").print_callees(os.environ["CALLEES"])
        return
    split = options.split and not options.plain
    if options.raw:
        server, client, written, handshake = run(options.connections, options.repeat, options.plain, options.resume, split)
        print(server, client, written, handshake)
        return
    pythons = [sys.executable] + ([options.compare] if options.compare else [])
    if not options.compare:
        server, client, written, handshake = run(options.connections, options.repeat, options.plain, options.resume, split)
        print("{}: server {:.1f} us CPU a connection (client {:.1f} us), {} bytes written".format(
            "plain" if options.plain else "mutual TLS", server * 1e6, client * 1e6, written))
        if split:
            print("  of which do_handshake {:.1f} us, the rest {:.1f} us".format(handshake * 1e6, (server - handshake) * 1e6))
        return
    results: List[List[float]] = [[] for _ in pythons]
    handshakes: List[List[float]] = [[] for _ in pythons]
    for _ in range(options.rounds):
        for i, python in enumerate(pythons):
            args = [python, os.path.abspath(__file__), "--raw", "--connections", str(options.connections), "--repeat", str(options.repeat)]
            args += ["--plain"] if options.plain else []
            args += ["--resume"] if options.resume else []
            args += ["--split"] if split else []
            env = dict(os.environ)
            if os.path.isdir(python):
                args[0] = sys.executable
                env["PYTHONPATH"] = python
            out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout.split()
            results[i].append(float(out[0]))
            handshakes[i].append(float(out[3]))
    for python, spent, handshake in zip(pythons, results, handshakes):
        print("{:50s} best {:.1f} us  median {:.1f} us".format(python, min(spent) * 1e6, sorted(spent)[len(spent) // 2] * 1e6))
        if split:
            rest = sorted(s - h for s, h in zip(spent, handshake))
            print("{:50s} do_handshake median {:.1f} us, the rest median {:.1f} us (best {:.1f})".format(
                "", sorted(handshake)[len(handshake) // 2] * 1e6, rest[len(rest) // 2] * 1e6, rest[0] * 1e6))
    print("this / other: best {:.3f}, median {:.3f}".format(
        min(results[0]) / min(results[1]), sorted(results[0])[len(results[0]) // 2] / sorted(results[1])[len(results[1]) // 2]))


if __name__ == "__main__":
    main()
