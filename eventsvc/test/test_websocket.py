"""
NATS over WebSocket (L{eventsvc.nats.websocket}) on memory transports and a
fake clock: the upgrade, origin checks, frames in and out, the limits of
the client connection, and the close codes nats-server uses.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from eventsvc.nats.listener import ClientFactory
from eventsvc.nats.server import Broker
from eventsvc.nats.settings import ClientSettings
from eventsvc.nats.origins import OriginPolicy, origin_of
from eventsvc.nats.websocket import CLOSE_TIMEOUT, websocket_wire
from eventsvc.security.auth import TokenAuthenticator
from eventsvc.security.permissions import Permissions
from eventsvc.test import wsframes
from eventsvc.test.helpers import with_limits

HOST = "127.0.0.1:8080"


class SocketTransport(StringTransport):
    """Like a TCP transport, unregistering when no producer is registered is harmless (autobahn does it on every drop)."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class Peer:
    """One WebSocket connection to the listener, on a StringTransport."""

    def __init__(self, test: "Harness", origin: str = "", deflate: bool = False, port: int = 50000) -> None:
        self.test = test
        self.transport = SocketTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.proto = test.wire.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(wsframes.upgrade_request(HOST, origin=origin, deflate=deflate))
        self.response, _, rest = self.transport.value().partition(b"\r\n\r\n")
        self.transport.clear()
        self.pending = rest

    @property
    def status(self) -> int:
        return int(self.response.split(b" ", 2)[1])

    def send(self, payload: bytes, pieces: int = 1) -> None:
        """One binary message, in C{pieces} frames (a fragmented message), each a write of its own."""
        size = max(1, -(-len(payload) // pieces))
        chunks = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
        for i, chunk in enumerate(chunks):
            opcode = wsframes.BINARY if i == 0 else 0
            self.proto.dataReceived(wsframes.frame(chunk, opcode=opcode, fin=i == len(chunks) - 1))

    def frames(self):
        data = self.pending + self.transport.value()
        self.transport.clear()
        frames, self.pending = wsframes.read_frames(data)
        return frames

    def text(self) -> bytes:
        return wsframes.payloads(self.frames())


class Harness(TestCase):
    def setUp(self) -> None:
        self.build()

    def build(self, origins: OriginPolicy = OriginPolicy(), compression: bool = False, **settings) -> None:
        self.clock = Clock()
        self.broker = Broker()
        settings.setdefault("name", "websocket")
        self.clients = ClientFactory(self.broker, with_limits(ClientSettings, **settings), self.clock)
        self.wire = websocket_wire(self.clients, origins, compression, 2.0, None, self.clock)

    def open(self, **kwargs) -> Peer:
        peer = Peer(self, **kwargs)
        self.assertEqual(peer.status, 101, peer.response)
        return peer

    def assertClosedByUs(self, peer: Peer, reason: str) -> None:
        """
        What a close we begin must look like: the socket let go at once
        (written out, then closed), the client gone from the broker (/connz)
        and the listener's count with nats-server's reason, nothing more read,
        and the socket aborted CLOSE_TIMEOUT later if it has not gone.
        """
        self.assertTrue(peer.transport.disconnecting)
        self.assertFalse(peer.transport.disconnected, "not aborted yet: what is owed is being written")
        client = peer.proto.client
        self.assertNotIn(client, self.clients.live)
        self.assertNotIn(client.cid, self.broker.clients)  # (what /connz lists)
        (closed,) = [c for c in self.broker.closed if c.cid == client.cid]
        self.assertEqual(closed.close_reason, reason)
        peer.proto.dataReceived(wsframes.frame(b"PING\r\n"))
        self.assertEqual(peer.frames(), [], "nothing is read after our close")
        self.clock.advance(CLOSE_TIMEOUT)
        self.assertTrue(peer.transport.disconnected, "aborted: the peer did not let the socket go")
        peer.proto.connectionLost(Failure(ConnectionDone()))
        mine = (peer.proto, peer.transport, client, client.pinger)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if getattr(c.func, "__self__", None) in mine], [])


class WebSocketTests(Harness):
    def test_info_first_in_a_binary_frame(self) -> None:
        """After the upgrade the server's first message is INFO, alone in one binary frame, as nats-server sends it."""
        peer = self.open()
        frames = peer.frames()
        self.assertEqual(len(frames), 1)
        opcode, fin, rsv1, payload = frames[0]
        self.assertEqual((opcode, fin, rsv1), (wsframes.BINARY, True, False))
        self.assertTrue(payload.startswith(b"INFO {") and payload.endswith(b"\r\n"))
        self.assertNotIn(b"Server:", peer.response)
        self.assertEqual(len(self.clients.live), 1)

    def test_pub_sub_across_frames(self) -> None:
        """A message split across frames (and an operation split across them) is parsed as one stream."""
        peer = self.open()
        peer.frames()
        peer.send(b'CONNECT {"verbose":false}\r\nSUB a.b 1\r\nPUB a.b 11\r\nhello world\r\nPING\r\n', pieces=7)
        self.assertEqual(peer.text(), b"MSG a.b 1 11\r\nhello world\r\nPONG\r\n")

    def test_text_frames_too(self) -> None:
        """nats-server reads text frames as it reads binary ones; so do we."""
        peer = self.open()
        peer.frames()
        peer.proto.dataReceived(wsframes.frame(b"PING\r\n", opcode=wsframes.TEXT))
        self.assertEqual(peer.text(), b"PONG\r\n")

    def test_tcp_and_websocket_clients_meet(self) -> None:
        """The WebSocket client is a client of the same broker: what it publishes reaches the others' subscriptions."""
        a, b = self.open(), self.open(port=50001)
        a.frames(), b.frames()
        a.send(b"CONNECT {\"verbose\":false}\r\nSUB news 7\r\nPING\r\n")
        self.assertEqual(a.text(), b"PONG\r\n")
        b.send(b"CONNECT {\"verbose\":false}\r\nPUB news 2\r\nhi\r\n")
        self.assertEqual(a.text(), b"MSG news 7 2\r\nhi\r\n")

    def test_parse_error_closes_with_protocol_error(self) -> None:
        """-ERR first, then a close frame with 1002 and nats-server's reason; the socket is let go at once, aborted after CLOSE_TIMEOUT."""
        peer = self.open()
        peer.frames()
        peer.send(b"BOGUS\r\n")
        frames = peer.frames()
        self.assertEqual(frames[0][3], b"-ERR 'Unknown Protocol Operation'\r\n")
        self.assertEqual(frames[1], (wsframes.CLOSE, True, False, b"\x03\xeaProtocol Violation"))
        self.assertClosedByUs(peer, "Protocol Violation")

    def test_max_payload(self) -> None:
        """Over max_payload: nats-server's error, then close code 1009, and the socket goes."""
        self.build(max_payload=16)
        peer = self.open()
        peer.frames()
        peer.send(b"PUB a 17\r\n" + b"x" * 17 + b"\r\n")
        frames = peer.frames()
        self.assertEqual(frames[0][3], b"-ERR 'Maximum Payload Violation'\r\n")
        self.assertEqual(frames[1][3][:2], b"\x03\xf1")
        self.assertClosedByUs(peer, "Maximum Message Payload Exceeded")

    def test_authentication(self) -> None:
        """The listener's authenticator and permissions apply: a wrong token is refused (1008), a right one gets its rights."""
        readonly = Permissions(publish_deny=[">"], subscribe_allow=[">"])
        self.build(authenticator=TokenAuthenticator(["watch"], readonly))
        bad = self.open()
        bad.frames()
        bad.send(b'CONNECT {"auth_token":"nope"}\r\n')
        frames = bad.frames()
        self.assertEqual(frames[0][3], b"-ERR 'Authorization Violation'\r\n")
        self.assertEqual(frames[1][3], b"\x03\xf0Authentication Failure")
        self.assertTrue(bad.transport.disconnecting)
        good = self.open(port=50002)
        good.frames()
        good.send(b'CONNECT {"auth_token":"watch","verbose":false}\r\nSUB > 1\r\nPUB x 1\r\ny\r\nPING\r\n')
        self.assertEqual(good.text(), b"-ERR 'Permissions Violation for Publish to \"x\"'\r\nPONG\r\n")

    def test_authentication_timeout(self) -> None:
        """No CONNECT within auth_timeout: closed with 1008, as on the other listeners."""
        self.build(authenticator=TokenAuthenticator(["t"], None), auth_timeout=1.0)
        peer = self.open()
        peer.frames()
        self.clock.advance(1.0)
        frames = peer.frames()
        self.assertEqual(frames[0][3], b"-ERR 'Authentication Timeout'\r\n")
        self.assertEqual(frames[1][3], b"\x03\xf0Authentication Timeout")
        self.assertClosedByUs(peer, "Authentication Timeout")

    def test_stale_connection(self) -> None:
        """PINGs unanswered: stale, closed with 1006 as nats-server does."""
        self.build(ping_interval=1.0, ping_max=2)
        peer = self.open()
        peer.frames()
        peer.send(b'CONNECT {"verbose":false}\r\n')
        for _ in range(3):
            self.clock.advance(1.0)
        text = peer.frames()
        self.assertEqual(wsframes.payloads(text), b"PING\r\nPING\r\n-ERR 'Stale Connection'\r\n")
        self.assertEqual(text[-1][3], b"\x03\xeeStale Connection")

    def test_slow_consumer(self) -> None:
        """A subscriber whose socket stopped draining is cut off past max_pending, as on TCP; the publisher goes on."""
        self.build(max_pending=4096, max_payload=2048)
        slow, fast = self.open(), self.open(port=50001)
        slow.frames(), fast.frames()
        slow.send(b'CONNECT {"verbose":false}\r\nSUB big 1\r\n')
        slow.transport.producer.pauseProducing()  # (the kernel's buffer is full)
        fast.send(b'CONNECT {"verbose":false}\r\n')
        for _ in range(4):
            fast.send(b"PUB big 2000\r\n" + b"x" * 2000 + b"\r\n")
        self.assertTrue(slow.transport.disconnecting)
        self.assertEqual(self.broker.slow_consumers, 1)
        self.assertEqual(len(self.clients.live), 1)
        fast.send(b"PING\r\n")
        self.assertEqual(fast.text(), b"PONG\r\n")

    def test_upgrade_timeout(self) -> None:
        """A connection that never finishes the HTTP upgrade is dropped after handshake_timeout, and never counted."""
        transport = SocketTransport()
        proto = self.wire.buildProtocol(None)
        proto.makeConnection(transport)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(2.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clients.live, set())

    def test_not_an_upgrade(self) -> None:
        """A plain GET gets an HTTP error, not a page."""
        transport = SocketTransport()
        proto = self.wire.buildProtocol(None)
        proto.makeConnection(transport)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 4"), transport.value()[:80])

    def test_connection_lost_unregisters(self) -> None:
        """The socket gone: the client leaves the broker and the listener's live set, its subscriptions removed."""
        peer = self.open()
        peer.send(b"SUB a 1\r\n")
        self.assertTrue(self.broker.sublist.match(b"a").plain)
        peer.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clients.live, set())
        self.assertFalse(self.broker.sublist.match(b"a").plain)

    def test_server_shutdown(self) -> None:
        """Closed by the server going away: 1001."""
        peer = self.open()
        peer.frames()
        (client,) = self.clients.live
        client.close(None, "Server Shutdown")
        self.assertEqual(peer.frames()[-1][3], b"\x03\xe9Server Shutdown")
        self.assertClosedByUs(peer, "Server Shutdown")

    def test_compression(self) -> None:
        """With compression on, an offer is answered without context takeover, and long messages are deflated."""
        self.build(compression=True)
        peer = self.open(deflate=True)
        self.assertIn(b"permessage-deflate", peer.response)
        self.assertIn(b"server_no_context_takeover", peer.response)
        info = peer.frames()
        self.assertTrue(info[0][2], "INFO is longer than the threshold: deflated")
        peer.send(b'CONNECT {"verbose":false}\r\nSUB a 1\r\nPUB a 100\r\n' + b"z" * 100 + b"\r\nPING\r\n")
        frames = peer.frames()
        self.assertEqual(wsframes.payloads(frames), b"MSG a 1 100\r\n" + b"z" * 100 + b"\r\n" + b"PONG\r\n")
        self.assertTrue(frames[0][2])

    def test_compression_off(self) -> None:
        """Without compression, an offer is declined: no extension in the answer."""
        peer = self.open(deflate=True)
        self.assertNotIn(b"permessage-deflate", peer.response)


class ClosesMeanClosedTests(Harness):
    """Issue 26: a WebSocket we close is closed, whatever its peer does next."""

    def test_unmasked_frame(self) -> None:
        """A client frame without a mask: close 1002 with what was wrong, the socket let go at once, gone from /connz."""
        peer = self.open()
        peer.frames()
        peer.proto.dataReceived(wsframes.frame(b"PING\r\n", mask=None))
        (close,) = peer.frames()
        self.assertEqual(close[:3], (wsframes.CLOSE, True, False))
        self.assertEqual(close[3], b"\x03\xeaunmasked client-to-server frame")
        self.assertClosedByUs(peer, "Protocol Violation")

    def test_huge_declared_frame_refused_at_its_header(self) -> None:
        """A header declaring 2^62 bytes: refused (1009) before any of its payload is read, the rest never read."""
        peer = self.open()
        peer.frames()
        peer.proto.dataReceived(wsframes.header(2 ** 62) + b"\x00" * 5000)
        (close,) = peer.frames()
        self.assertEqual(close[3][:2], b"\x03\xf1")
        self.assertIn(b"exceeds payload limit", close[3])
        self.assertEqual(peer.proto.data, b"", "the payload that came with the header is dropped, not read")
        self.assertClosedByUs(peer, "Maximum Message Payload Exceeded")

    def test_declared_length_over_the_cap(self) -> None:
        """The cap is max_pending: a frame just over it is refused at its header; a message within it passes."""
        self.build(max_pending=64 * 1024)
        peer = self.open()
        peer.frames()
        peer.send(b'CONNECT {"verbose":false}\r\nPUB a 40000\r\n' + b"x" * 40000 + b"\r\nPING\r\n")
        self.assertEqual(peer.text(), b"PONG\r\n")
        peer.proto.dataReceived(wsframes.header(64 * 1024 + 1))
        self.assertEqual(peer.frames()[0][3][:2], b"\x03\xf1")
        self.assertClosedByUs(peer, "Maximum Message Payload Exceeded")

    def test_close_frame_answered_and_dropped(self) -> None:
        """The peer closing first: answered, the socket let go, the client gone as Client Closed."""
        peer = self.open()
        peer.frames()
        peer.proto.dataReceived(wsframes.frame(b"\x03\xe8bye", opcode=wsframes.CLOSE))
        self.assertEqual(peer.frames()[0][0], wsframes.CLOSE)
        self.assertTrue(peer.transport.disconnecting)
        peer.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.broker.clients, {})
        self.assertEqual(self.broker.closed[-1].close_reason, "Client Closed")


#: What a deflate bomb inflates to: operations that parse (a bomb of zeros
#: would be refused by the parser at once, which tests nothing here).
BOMB_UNIT = b"PUB bomb 0\r\n\r\n"


class InflateTests(Harness):
    """Compressed messages are inflated a slice at a time, under the parse budget, and a bomb is cut."""

    def setUp(self) -> None:
        self.build(compression=True, max_pending=1024 * 1024)
        # A budget no slice fits in: one slice per reactor turn, whatever the machine's speed.
        self.wire.inflate_budget = 1e-9

    def send_deflated(self, peer: Peer, payload: bytes) -> None:
        peer.proto.dataReceived(wsframes.frame(wsframes.deflate(payload), rsv1=True))

    def turn(self) -> bool:
        """
        One reactor turn: the calls due now, not those they schedule for
        the next turn (Clock.advance(0) would run those too).  False when
        none was due.
        """
        now = self.clock.seconds()
        due = [call for call in self.clock.getDelayedCalls() if call.getTime() <= now]
        for call in due:
            if call.active():
                self.clock.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)
        return bool(due)

    def turns(self, peer: Peer, most: int = 1000) -> int:
        """Reactor turns until nothing more is due for C{peer}'s input, or it is closed."""
        n = 0
        while n < most and not peer.transport.disconnecting and self.turn():
            n += 1
        return n

    def test_compressed_message_in_slices(self) -> None:
        """A message inflating to 800 KB (under the cap) is inflated over several turns; what follows it waits its turn; all of it arrives, in order."""
        peer = self.open(deflate=True)
        peer.frames()
        ops = b'CONNECT {"verbose":false}\r\nSUB x 1\r\n' + BOMB_UNIT * 50000 + b"PUB x 5\r\nfirst\r\n"
        self.send_deflated(peer, ops)
        self.assertEqual(peer.transport.producerState, "paused", "the socket is not read while a message inflates")
        peer.send(b"PUB x 6\r\nsecond\r\nPING\r\n")
        self.assertEqual(wsframes.payloads(peer.frames()), b"")
        self.assertGreater(self.turns(peer), 5)
        self.assertEqual(peer.text(), b"MSG x 1 5\r\nfirst\r\nMSG x 1 6\r\nsecond\r\nPONG\r\n")
        self.assertEqual(peer.transport.producerState, "producing")
        self.assertFalse(peer.transport.disconnecting)

    def test_messages_inflate_each_alone(self) -> None:
        """The client is asked to compress each message alone (as nats-server asks): message after message inflates from a fresh start."""
        peer = self.open(deflate=True)
        self.assertIn(b"client_no_context_takeover", peer.response)
        peer.frames()
        self.send_deflated(peer, b'CONNECT {"verbose":false}\r\nSUB each.alone 1\r\n')
        for body in (b"abc", b"abcabc", b"abc"):
            self.send_deflated(peer, b"PUB each.alone %d\r\n%s\r\n" % (len(body), body))
        self.turns(peer)
        self.assertEqual(peer.text(), b"MSG each.alone 1 3\r\nabc\r\nMSG each.alone 1 6\r\nabcabc\r\nMSG each.alone 1 3\r\nabc\r\n")

    def test_nothing_inflated_while_the_client_holds_its_reads(self) -> None:
        """A client that holds its reads (a stalled publisher) is handed no inflated data until it reads again; then all of it, in order."""
        peer = self.open(deflate=True)
        peer.send(b'CONNECT {"verbose":false}\r\nSUB held 1\r\n')
        peer.frames()
        client = peer.proto.client
        client.gate.hold("test")
        self.send_deflated(peer, b"PUB held 2\r\nhi\r\nPING\r\n")
        peer.send(b"PUB held 5\r\nafter\r\n")
        self.turns(peer)
        self.assertEqual(peer.frames(), [])
        self.assertEqual(client.in_msgs, 0)
        client.gate.release("test")
        self.turns(peer)
        self.assertEqual(peer.text(), b"MSG held 1 2\r\nhi\r\nPONG\r\nMSG held 1 5\r\nafter\r\n")
        self.assertEqual(peer.transport.producerState, "producing")

    def test_bomb_cut_at_the_cap(self) -> None:
        """1 MB of deflate inflating far past max_pending: cut with 1009 at the cap, over several turns, while another client is served."""
        peer = self.open(deflate=True)
        peer.send(b'CONNECT {"verbose":false}\r\n')
        peer.frames()
        other = self.open(port=50001)
        other.frames()
        bomb = wsframes.deflate(BOMB_UNIT * (16 * 1024 * 1024 // len(BOMB_UNIT)))
        self.assertLess(len(bomb), 200 * 1024)
        peer.proto.dataReceived(wsframes.frame(bomb, rsv1=True))
        self.assertFalse(peer.transport.disconnecting, "one slice per turn: not inflated in one go")
        other.send(b"PING\r\n")
        self.assertEqual(other.text(), b"PONG\r\n")
        turns = self.turns(peer)
        self.assertGreaterEqual(turns, 10)
        self.assertLessEqual(turns, 40, "cut at the cap (1 MiB, 16 slices), not at the end of 16 MiB")
        close = peer.frames()[-1]
        self.assertEqual(close[0], wsframes.CLOSE)
        self.assertEqual(close[3], b"\x03\xf1a compressed message inflates past the limit of 1048576 bytes")
        self.assertClosedByUs(peer, "Maximum Message Payload Exceeded")
        self.assertFalse(other.transport.disconnecting)

    def test_not_deflate(self) -> None:
        """Compressed data that does not inflate: 1007, and the socket goes."""
        peer = self.open(deflate=True)
        peer.frames()
        peer.proto.dataReceived(wsframes.frame(b"\xff\xff\xff\xff not deflate", rsv1=True))
        self.turns(peer)
        close = peer.frames()[-1]
        self.assertEqual(close[3][:2], b"\x03\xef")
        self.assertClosedByUs(peer, "Protocol Violation")


class OriginTests(Harness):
    def test_any_origin_by_default(self) -> None:
        self.assertEqual(Peer(self, origin="http://anywhere.example").status, 101)

    def test_allowed_origins(self) -> None:
        """Only the listed origins (scheme, host and port) get in; others get 403, and nothing is counted."""
        self.build(origins=OriginPolicy.from_urls(False, ("https://console.example.com", "http://127.0.0.1:8222")))
        self.assertEqual(Peer(self, origin="https://console.example.com").status, 101)
        self.assertEqual(Peer(self, origin="https://console.example.com:443").status, 101)
        self.assertEqual(Peer(self, origin="http://127.0.0.1:8222").status, 101)
        for origin in ("http://console.example.com", "https://evil.example", "http://127.0.0.1:9999"):
            peer = Peer(self, origin=origin)
            self.assertEqual(peer.status, 403, origin)
        self.assertEqual(len(self.clients.live), 3)

    def test_no_origin_header(self) -> None:
        """Not from a browser (no Origin): let through, as RFC 6455 and nats-server have it."""
        self.build(origins=OriginPolicy.from_urls(True, ("https://console.example.com",)))
        self.assertEqual(Peer(self).status, 101)

    def test_same_origin(self) -> None:
        """same_origin: the page must come from the listener's own host and port."""
        self.build(origins=OriginPolicy.from_urls(True, ()))
        self.assertEqual(Peer(self, origin="http://" + HOST).status, 101)
        self.assertEqual(Peer(self, origin="http://127.0.0.1:8222").status, 403)

    def test_origin_of(self) -> None:
        self.assertEqual(origin_of("https://A.example"), ("https", "a.example", 443))
        self.assertEqual(origin_of("http://a.example:81"), ("http", "a.example", 81))
        for bad in ("a.example", "ftp://a.example", "http://"):
            self.assertRaises(ValueError, origin_of, bad)


class WebSocketTLSTests(TestCase):
    """wss://: the WebSocket listener under TLS (a wrapping factory of Twisted's layer), real TLS in memory."""

    def test_openssl_side_freed_at_the_close(self) -> None:
        """
        A WebSocket client's TLS layer frees OpenSSL's side of its
        connection at the close, as a client listener's does, not when the
        collector finds it (on PyPy, thousands of connections later).
        """
        from twisted.internet.protocol import Protocol
        from twisted.internet.ssl import optionsForClientTLS
        from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
        from twisted.test.iosim import FakeTransport, connect

        from eventsvc.security import tls
        from eventsvc.test.tlshelpers import PKI, _Unused

        pki = PKI(self.mktemp())
        identity = PKI.private(pki.issue("websocket", ["localhost"]))
        clock = Clock()
        clients = ClientFactory(Broker(), with_limits(ClientSettings, name="websocket"), clock)
        wire = websocket_wire(clients, OriginPolicy(), False, 2.0, tls.server_options(identity), clock)
        server = wire.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))

        class Browser(Protocol):
            got = b""

            def connectionMade(self) -> None:
                self.transport.write(wsframes.upgrade_request(HOST))

            def dataReceived(self, data: bytes) -> None:
                self.got += data

        browser = Browser()
        client = TLSMemoryBIOProtocol(
            TLSMemoryBIOFactory(optionsForClientTLS("localhost", trustRoot=pki.trust_root()), True, _Unused()), browser)
        pump = connect(
            server, FakeTransport(server, True, peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)),
            client, FakeTransport(client, False, peerAddress=IPv4Address("TCP", "127.0.0.1", 443)),
        )


        def flush() -> None:
            # (The server's layer joins small writes on the clock's next turn.)
            for _ in range(3):
                pump.flush()
                clock.advance(0)

        flush()
        self.assertTrue(browser.got.startswith(b"HTTP/1.1 101 "), browser.got[:40])
        self.assertEqual(len(clients.live), 1)
        connection = server._tlsConnection
        browser.transport.loseConnection()
        flush()
        self.assertEqual(len(clients.live), 0)
        self.assertIsNone(connection._into_ssl)
        self.assertIsNone(connection._from_ssl)
        self.assertRaises(TypeError, connection.bio_read, 1)
