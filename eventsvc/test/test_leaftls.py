"""
A leaf link's close over real TLS on a real socket (Twisted's C{startTLS},
which a leaf link uses after its plaintext INFO): what a peer sees when
the hub closes the link and the peer never answers the close_notify.
"""

from __future__ import annotations

import json
import ssl
from typing import Any, List, Optional

from twisted.internet import defer, reactor
from twisted.internet import ssl as twisted_ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from eventsvc.security import tls
from eventsvc.test.test_leaf import Node
from eventsvc.nats.links.leaf_connection import RemoteLeaf
from eventsvc.test.tlshelpers import PKI


class SilentTLSPeer(Protocol):
    """
    A peer doing TLS with Python's C{ssl} over memory buffers that answers
    nothing after its first words: a close_notify it gets is noted
    (C{notified}), never answered.  C{tls} is set by the subclass (at once,
    or after a plaintext INFO); L{handshaken} and L{heard} are its turns.
    """

    tls: Optional[ssl.SSLObject] = None

    def __init__(self) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.handshaken = False
        self.data = b""
        self.notified = False
        self.lost: defer.Deferred[None] = defer.Deferred()

    def pump(self, data: bytes) -> None:
        """C{data} from the socket through TLS: the handshake, then what it decrypts; what TLS has to send is sent."""
        assert self.tls is not None
        self.incoming.write(data)
        if not self.handshaken:
            try:
                self.tls.do_handshake()
                self.handshaken = True
                self.on_handshake()
            except ssl.SSLWantReadError:
                pass
        if self.handshaken:
            while True:
                try:
                    got = self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                if not got:
                    # (How SSLObject.read says the close_notify came.)
                    self.notified = True
                    break
                self.heard(got)
                self.data += got
        pending = self.outgoing.read()
        if pending:
            self.transport.write(pending)

    def on_handshake(self) -> None:
        """The handshake is done."""

    def heard(self, got: bytes) -> None:
        """C{got} was decrypted (C{data} holds what came before it)."""

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(None)


class SilentTLSSpoke(SilentTLSPeer):
    """
    A spoke that reads INFO, does the TLS handshake and sends C{first}, and
    then answers nothing.
    """

    def __init__(self, context: ssl.SSLContext, first: bytes) -> None:
        super().__init__()
        self.context = context
        self.first = first
        self.plain = b""

    def dataReceived(self, data: bytes) -> None:
        if self.tls is None:
            self.plain += data
            if b"\r\n" not in self.plain:
                return
            assert json.loads(self.plain[5:self.plain.index(b"\r\n")])["tls_required"]
            self.tls = self.context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
            data = b""
        self.pump(data)

    def on_handshake(self) -> None:
        assert self.tls is not None
        self.tls.write(self.first)


class SilentTLSHub(SilentTLSPeer):
    """
    A hub that sends INFO, does the TLS handshake, answers the spoke's
    CONNECT with C{answer}, and then answers nothing.
    """

    def __init__(self, context: ssl.SSLContext, answer: bytes) -> None:
        super().__init__()
        self.answer = answer
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def connectionMade(self) -> None:
        info = {"server_id": "NSILENT", "client_id": 1, "leafnode_urls": [], "tls_required": True}
        self.transport.write(b"INFO " + json.dumps(info).encode() + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.pump(data)

    def heard(self, got: bytes) -> None:
        if not self.data:
            assert self.tls is not None
            self.tls.write(self.answer)


class LeafTLSCloseTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        self.pki.issue("service", ["localhost"])
        self.pki.issue("spoke")
        self.hub = Node("H", tls_accept=tls.mutual_tls_server(
            self.pki.path("service.crt"), self.pki.path("service.key"), self.pki.path("ca.crt")
        ), user="leaf", password="pw")
        self.links: List[Any] = []

        def accepted(addr: Any) -> Any:
            link = self.hub.leafs.accepted()
            self.links.append(link)
            return link

        factory = Factory()
        factory.buildProtocol = accepted  # type: ignore[method-assign]
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def spoke(self, first: bytes) -> "defer.Deferred[SilentTLSSpoke]":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.pki.path("ca.crt"))
        context.load_cert_chain(self.pki.path("spoke.crt"), self.pki.path("spoke.key"))
        spoke = SilentTLSSpoke(context, first)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        return connectProtocol(endpoint, spoke)

    @defer.inlineCallbacks
    def test_hub_closes_without_the_spokes_close_notify(self) -> Any:
        """
        A spoke with the wrong password, over TLS, that never answers the
        hub's close_notify: it reads the error and the close_notify, and
        then the hub closes the socket (as nats-server: Go's
        C{tls.Conn.Close}), rather than wait for an answer for as long as
        the spoke likes.
        """
        spoke = yield self.spoke(b'CONNECT {"verbose":false,"user":"leaf","pass":"wrong"}\r\n')
        timer = reactor.callLater(5, lambda: spoke.lost.called or spoke.transport.abortConnection())
        self.addCleanup(lambda: timer.active() and timer.cancel())
        yield spoke.lost
        self.assertTrue(timer.active(), "the hub left the socket open")
        self.assertEqual(spoke.data, b"-ERR 'Authorization Violation'\r\n")
        self.assertTrue(spoke.notified)
        self.assertEqual(self.hub.leafs.leafs, {})

    @defer.inlineCallbacks
    def test_spoke_closes_without_the_hubs_close_notify(self) -> Any:
        """
        A spoke whose hub (over TLS) refuses it and then never answers the
        spoke's close_notify: the spoke closes its socket all the same.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.path("service.crt"), self.pki.path("service.key"))
        hub = SilentTLSHub(context, b"-ERR 'Authorization Violation'\r\n")
        factory = Factory()
        factory.buildProtocol = lambda addr: hub  # type: ignore[method-assign]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        options = twisted_ssl.optionsForClientTLS("localhost", trustRoot=self.pki.trust_root())
        spoke = Node("S", tls_dial=lambda name: options)
        uplink = spoke.leafs.dialled(RemoteLeaf(("tls://127.0.0.1:%d" % port.getHost().port,), "leaf", "pw", tls=True))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), uplink)
        timer = reactor.callLater(5, lambda: hub.lost.called or hub.transport.abortConnection())
        self.addCleanup(lambda: timer.active() and timer.cancel())
        yield hub.lost
        self.assertTrue(timer.active(), "the spoke left the socket open")
        self.assertTrue(hub.data.startswith(b"CONNECT {"), hub.data)
        self.assertTrue(hub.notified)
        self.assertTrue(uplink.closed)

    @defer.inlineCallbacks
    def test_openssl_side_freed_at_the_close(self) -> Any:
        """
        A leaf link's TLS layer (Twisted's, from the startTLS after its
        plaintext INFO) frees OpenSSL's side of the connection at the
        close, as a client listener's does, not when the collector finds it
        (on PyPy, thousands of connections later): its memory BIOs are
        gone, and a stray call is pyOpenSSL's clean error.
        """
        from eventsvc.nats.links import leaf_connection

        started: List[Any] = []
        twisteds = leaf_connection.start_tls

        def start_tls(transport: Any, context: Any) -> None:
            twisteds(transport, context)
            started.append((transport.protocol, transport.protocol._tlsConnection))

        self.patch(leaf_connection, "start_tls", start_tls)
        spoke = yield self.spoke(b'CONNECT {"verbose":false,"user":"leaf","pass":"wrong"}\r\n')
        yield spoke.lost
        self.assertEqual(self.hub.leafs.leafs, {})
        ((layer, connection),) = started
        self.assertIsNone(layer._tlsConnection)
        self.assertIsNone(connection._into_ssl)
        self.assertIsNone(connection._from_ssl)
        self.assertRaises(TypeError, connection.bio_read, 1)
