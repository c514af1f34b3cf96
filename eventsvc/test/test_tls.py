"""
Mutual TLS on a listener, and SNI-selected front-end certificates, with
real TLS in memory (TLSMemoryBIOProtocol over iosim): INFO in plaintext,
then the upgrade on the same connection, as nats-server 2.9 does it.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import ssl
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.security import certs, tls
from eventsvc.test.tlshelpers import PKI, TLSHarness, UpgradingClient


class MutualTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        self.pki.issue("service", ["localhost"])
        self.options = tls.mutual_tls_server(
            self.pki.path("service.crt"), self.pki.path("service.key"), self.pki.path("ca.crt")
        )
        self.harness = TLSHarness(self.options, tls_verify=True)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def client_options(self, cert=None, ca=None):
        return ssl.optionsForClientTLS(
            "localhost",
            trustRoot=self.pki.trust_root(ca),
            clientCertificate=PKI.private(cert) if cert is not None else None,
        )

    def log_text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.logged)

    def test_info_then_upgrade(self) -> None:
        client = UpgradingClient(self.client_options(self.pki.issue("alice")))
        server, pump = self.harness.connect(client)
        info = client.info_fields()
        self.assertTrue(info["tls_required"])
        self.assertTrue(info["tls_verify"])
        self.assertTrue(client.app.handshaken)
        self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")
        # The peer is known by its certificate once the handshake is done.
        subject = server.inner.peer.certificate.get_subject()
        self.assertEqual(subject.commonName, "alice")

    def test_one_log_line_per_connection(self) -> None:
        """
        A connection that comes, handshakes, logs in and goes writes one
        line at info, when it closes, saying where it came in, how it went
        and why it ended (a fleet reconnecting writes one event a connection).
        """
        from twisted.logger import LogLevel, formatEvent

        client = UpgradingClient(self.client_options(self.pki.issue("alice")))
        server, pump = self.harness.connect(client)
        self.harness.clock.advance(1.5)
        self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")
        self.assertEqual([e for e in self.logged if e["log_level"] >= LogLevel.info], [])
        client.tls.loseConnection()  # close_notify, then the socket
        pump.flush()
        lines = [e for e in self.logged if e["log_level"] >= LogLevel.info]
        self.assertEqual(len(lines), 1, [formatEvent(e) for e in lines])
        cid = server.inner.cid
        self.assertEqual(formatEvent(lines[0]), "client {} from 127.0.0.1:50000 on - closed: Client Closed".format(cid))
        self.assertEqual((lines[0]["tls"], lines[0]["seconds"], lines[0]["detail"]), (True, 1.5, ""))

    def test_cipher_suite(self) -> None:
        """
        A TLS 1.3 client offering OpenSSL's suites (AES-256-GCM first) gets
        AES-128-GCM, as nats-server gives nats.go; one that offers only
        AES-256-GCM or ChaCha20 gets it.
        """
        from OpenSSL import SSL
        from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
        from zope.interface import implementer

        self.pki.issue("alice")

        @implementer(IOpenSSLClientConnectionCreator)
        class Offering:
            def __init__(self, suites: Optional[bytes]) -> None:
                self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
                self.context.use_certificate_file(pki.path("alice.crt"))
                self.context.use_privatekey_file(pki.path("alice.key"))
                if suites is not None:
                    from OpenSSL._util import lib

                    # (What set_tls13_ciphersuites does, where pyOpenSSL has it: not 24.1, PyPy's.)
                    if lib.SSL_CTX_set_ciphersuites(self.context._context, suites) != 1:
                        raise ValueError(suites)

            def clientConnectionForTLS(self, tls_protocol: object) -> SSL.Connection:
                connection = SSL.Connection(self.context, None)
                connection.set_connect_state()
                return connection

        pki = self.pki
        for offered, chosen in ((None, "TLS_AES_128_GCM_SHA256"),
                                (b"TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
                                (b"TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256")):
            client = UpgradingClient(Offering(offered))
            server, pump = self.harness.connect(client)
            self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")
            handle = server.tls.getHandle()
            self.assertEqual((handle.get_protocol_version_name(), handle.get_cipher_name()), ("TLSv1.3", chosen))

    def sent_chain(self, options) -> list:
        """The common names of the certificates a client is sent, in order, by a listener with C{options}."""
        client = UpgradingClient(self.client_options(self.pki.issue("alice")))
        _, pump = TLSHarness(options, tls_verify=True).connect(client)
        self.assertTrue(client.app.handshaken)
        return [c.to_cryptography().subject.rfc4514_string() for c in client.tls.getHandle().get_peer_cert_chain()]

    def test_chain_sent(self) -> None:
        """
        The listener sends its certificate and the CA's, the chain OpenSSL
        builds from the trust store, and builds it once, not in every
        handshake (a verification of our own certificate each time).
        """
        # (Asked before a connection is made: pyOpenSSL then forbids it.)
        self.assertTrue(self.options.getContext().set_mode(0) & tls._NO_AUTO_CHAIN)
        # What OpenSSL builds in each handshake, for the same files, is the same.
        per_handshake = ssl.CertificateOptions(
            privateKey=self.options.privateKey, certificate=self.options.certificate,
            trustRoot=self.pki.trust_root(), raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        self.assertFalse(per_handshake.getContext().set_mode(0) & tls._NO_AUTO_CHAIN)
        chain = self.sent_chain(self.options)
        self.assertEqual([name.split(",")[0] for name in chain], ["CN=service", "CN=eventsvc FAKE development CA"])
        self.assertEqual(self.sent_chain(per_handshake), chain)

    def test_chain_of_a_certificate_from_another_ca(self) -> None:
        """A listener whose certificate another CA signed sends it alone, as before (OpenSSL finds no more)."""
        other = certs.make_ca("another CA")
        self.pki.issue("elsewhere", ["localhost"], ca=other)
        options = tls.mutual_tls_server(self.pki.path("elsewhere.crt"), self.pki.path("elsewhere.key"), self.pki.path("ca.crt"))
        self.assertFalse(options.getContext().set_mode(0) & tls._NO_AUTO_CHAIN)
        client = UpgradingClient(ssl.optionsForClientTLS(
            "localhost", trustRoot=self.pki.trust_root(other), clientCertificate=PKI.private(self.pki.issue("alice"))))
        TLSHarness(options, tls_verify=True).connect(client)
        self.assertTrue(client.app.handshaken)
        self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")
        chain = client.tls.getHandle().get_peer_cert_chain()
        self.assertEqual([c.to_cryptography().subject.rfc4514_string().split(",")[0] for c in chain], ["CN=elsewhere"])

    def test_client_offering_alpn(self) -> None:
        """A client that offers ALPN the server does not speak is served without a protocol, as nats-server does."""
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=self.pki.trust_root(), clientCertificate=PKI.private(self.pki.issue("alpn")),
            acceptableProtocols=[b"h2", b"nats"],
        )
        client = UpgradingClient(options)
        self.harness.connect(client)
        self.assertTrue(client.app.handshaken)
        self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")

    def test_messages_flow_over_tls(self) -> None:
        a = UpgradingClient(self.client_options(self.pki.issue("a")), b'CONNECT {"verbose":false}\r\nSUB x 1\r\nPING\r\n')
        _, pump_a = self.harness.connect(a)
        b = UpgradingClient(self.client_options(self.pki.issue("b")), b'CONNECT {"verbose":false}\r\nPUB x 5\r\nhello\r\n')
        _, pump_b = self.harness.connect(b)
        pump_a.flush()
        self.assertEqual(a.app.data, b"PONG\r\nMSG x 1 5\r\nhello\r\n")

    def assertRefused(self, client: UpgradingClient) -> None:
        server, pump = self.harness.connect(client)
        # (Under TLS 1.3 the client may think its side done before the
        # server has checked its certificate: judge by the server.)
        self.assertNotIn(b"PONG", client.app.data)
        self.assertIsNotNone(client.lost)
        self.assertEqual(self.harness.broker.clients, {})
        self.assertIn("TLS handshake with 127.0.0.1:50000 failed", self.log_text())

    def test_no_client_certificate(self) -> None:
        self.assertRefused(UpgradingClient(self.client_options(None)))

    def test_certificate_from_another_ca(self) -> None:
        other = certs.make_ca("someone else's CA")
        self.assertRefused(UpgradingClient(self.client_options(self.pki.issue("mallory", ca=other))))

    def test_expired_certificate(self) -> None:
        self.assertRefused(UpgradingClient(self.client_options(self.pki.expired("old"))))

    def test_plaintext_after_info(self) -> None:
        """A client that ignores tls_required is closed without a word."""
        client = UpgradingClient(None, b"CONNECT {}\r\nPING\r\n")
        self.harness.connect(client)
        # No NATS answer at all (some OpenSSL builds send a TLS alert record).
        self.assertTrue(client.plain == b"" or client.plain.startswith(b"\x15\x03"), client.plain)
        self.assertIsNotNone(client.lost)
        self.assertEqual(self.harness.broker.clients, {})

    def test_handshake_timeout(self) -> None:
        client = UpgradingClient(None, b"")
        server, pump = self.harness.connect(client)
        self.assertIsNone(client.lost)
        self.harness.clock.advance(2.1)
        pump.flush()
        self.assertIsNotNone(client.lost)
        self.assertIn("timed out", self.log_text())
        self.assertEqual(self.harness.broker.clients, {})

    def test_handshake_timeout_from_the_configuration(self) -> None:
        """
        [tls] timeout is the [service] listener's TLS handshake clock (and
        [gateway] tls_timeout the agents' listener's): a client that has not
        finished its handshake is still served at 4.9 s of 5, and cut at 5.
        """
        from eventsvc import config
        from eventsvc.listeners import agent_listener, service_listener

        pki = self.pki
        written = config.parse(
            '[tls]\ncert_path = "{}"\nkey_path = "{}"\nroot_ca_path = "{}"\ntimeout = 5\n'
            '[gateway]\ntls_timeout = 3.5\ntokens = ["t"]\n[[gateway.frontend_tls]]\nserver_name = "localhost"\n'
            'cert_path = "{}"\nkey_path = "{}"\n'.format(
                pki.path("service.crt"), pki.path("service.key"), pki.path("ca.crt"), pki.path("service.crt"), pki.path("service.key")),
            "eventsvc.toml")
        listener = service_listener(written, self.harness.broker, self.harness.clock, self.options)
        self.harness.factory = listener.factory
        listener.factory.handshakes.seconds = float("inf")
        client = UpgradingClient(None, b"")
        server, pump = self.harness.connect(client)
        self.harness.clock.advance(4.9)
        pump.flush()
        self.assertIsNone(client.lost)
        self.harness.clock.advance(0.1)
        pump.flush()
        self.assertIsNotNone(client.lost)
        self.assertIn("timed out", self.log_text())
        self.assertEqual(agent_listener(written, self.harness.broker, self.harness.clock).factory.settings.tls_timeout, 3.5)

    def test_auth_timer_starts_after_handshake(self) -> None:
        from eventsvc.test.test_client import TokenAuthenticator

        harness = TLSHarness(self.options, tls_verify=True, authenticator=TokenAuthenticator(), auth_timeout=2.0)
        client = UpgradingClient(self.client_options(self.pki.issue("slow")), b"")
        server, pump = harness.connect(client)
        self.assertTrue(client.app.handshaken)
        # Only the TLS timer ran before; now the auth timer runs.
        harness.clock.advance(1.9)
        pump.flush()
        self.assertIsNone(client.lost)
        harness.clock.advance(0.2)
        pump.flush()
        self.assertEqual(client.app.data, b"-ERR 'Authentication Timeout'\r\n")


class ServerCloseTests(SynchronousTestCase):
    """
    A close the server decides on, over TLS: the client reads what it was
    owed and the error, and then the connection ends, whether or not the
    client ever answers the close_notify (a peer that is gone, or hostile,
    does not).  Twisted's TLS layer closed nothing while a producer (the
    connection's outbound part) was registered with it, and after that
    waited for the peer's close_notify.
    """

    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        self.pki.issue("service", ["localhost"])
        self.options = tls.mutual_tls_server(
            self.pki.path("service.crt"), self.pki.path("service.key"), self.pki.path("ca.crt")
        )

    def client(self, first: bytes) -> UpgradingClient:
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=self.pki.trust_root(), clientCertificate=PKI.private(self.pki.issue("c")),
        )
        return UpgradingClient(options, first)

    def test_error_then_close(self) -> None:
        harness = TLSHarness(self.options, tls_verify=True)
        client = self.client(b'CONNECT {"verbose":false}\r\nSUB x 1\r\nPUB x 2\r\nhi\r\nPING\r\nFOO\r\n')
        server, pump = harness.connect(client)
        pump.flush()
        self.assertEqual(client.app.data, b"MSG x 1 2\r\nhi\r\nPONG\r\n-ERR 'Unknown Protocol Operation'\r\n")
        self.assertIsNotNone(client.lost)
        self.assertTrue(server.transport.disconnecting)
        self.assertEqual(harness.broker.clients, {})

    def test_authentication_timeout_closes(self) -> None:
        """A client that handshakes and then says nothing is cut at the auth timeout, socket and all."""
        from eventsvc.test.test_client import TokenAuthenticator

        harness = TLSHarness(self.options, tls_verify=True, authenticator=TokenAuthenticator(), auth_timeout=2.0)
        client = self.client(b"")
        server, pump = harness.connect(client)
        self.assertTrue(client.app.handshaken)
        harness.clock.advance(2.1)
        pump.flush()
        self.assertEqual(client.app.data, b"-ERR 'Authentication Timeout'\r\n")
        self.assertIsNotNone(client.lost)

    def test_stale_connection_closes(self) -> None:
        """A client that stops answering PINGs is closed as stale, socket and all (it will not answer the close_notify either)."""
        harness = TLSHarness(self.options, tls_verify=True, ping_interval=10.0, ping_max=2)
        client = self.client(b'CONNECT {"verbose":false}\r\n')
        server, pump = harness.connect(client)
        # From here on the client reads nothing and answers nothing.
        client.tls.dataReceived = lambda data: None
        for _ in range(4):
            harness.clock.advance(10.1)
            pump.flush()
        self.assertIsNotNone(client.lost)
        self.assertEqual(harness.broker.clients, {})


class SNITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        entries = []
        for name in ("events.example.com", "gateway.example.org"):
            minted = self.pki.issue(name)
            entries.append((name, tls.server_options(PKI.private(minted))))
        self.harness = TLSHarness(tls.SNIServerContexts(entries))

    def served_name(self, sni: str) -> str:
        options = ssl.optionsForClientTLS(sni, trustRoot=self.pki.trust_root())
        client = UpgradingClient(options)
        self.harness.connect(client)
        self.assertTrue(client.app.handshaken, sni)
        return client.app.server_certificate.get_subject().commonName

    def test_each_name_gets_its_certificate(self) -> None:
        self.assertEqual(self.served_name("events.example.com"), "events.example.com")
        self.assertEqual(self.served_name("gateway.example.org"), "gateway.example.org")
        self.assertEqual(self.served_name("GATEWAY.example.org"), "gateway.example.org")

    def test_client_offering_alpn(self) -> None:
        """The gateway's TLS too: a client offering ALPN (h2, say) is served, with no protocol chosen."""
        options = ssl.optionsForClientTLS("events.example.com", trustRoot=self.pki.trust_root(), acceptableProtocols=[b"h2"])
        client = UpgradingClient(options)
        self.harness.connect(client)
        self.assertTrue(client.app.handshaken)

    def test_unknown_name_gets_default(self) -> None:
        # The client then refuses it (wrong name): the default was what was offered.
        options = ssl.CertificateOptions(trustRoot=self.pki.trust_root(), raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        client = UpgradingClient(options)
        self.harness.connect(client)
        self.assertTrue(client.app.handshaken)
        self.assertEqual(client.app.server_certificate.get_subject().commonName, "events.example.com")


class FileErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        self.pki.issue("service")
        self.pki.issue("other")

    def assertFileError(self, cert: str, key: str, ca: str, *fragments: str) -> None:
        with self.assertRaises(tls.TLSFilesError) as caught:
            tls.mutual_tls_server(self.pki.path(cert), self.pki.path(key), self.pki.path(ca))
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_missing(self) -> None:
        self.assertFileError("nope.crt", "service.key", "ca.crt", "nope.crt", "[tls] cert_path", "cannot read")

    def test_not_pem(self) -> None:
        self.assertFileError("service.key", "service.key", "ca.crt", "[tls] cert_path", "not a PEM certificate")
        self.assertFileError("service.crt", "service.crt", "ca.crt", "[tls] key_path", "not a PEM private key")
        self.assertFileError("service.crt", "service.key", "service.key", "[tls] root_ca_path")

    def test_key_mismatch(self) -> None:
        self.assertFileError("service.crt", "other.key", "ca.crt", "other.key", "is not the key of", "service.crt")


class HandshakeBudgetTests(SynchronousTestCase):
    """Past a turn's budget, handshake bytes wait (the socket paused) for the next turn, in order."""

    def test_over_budget_waits_for_the_next_turn(self) -> None:
        from twisted.internet.task import Clock

        from eventsvc.nats.upgrade import HandshakeBudget, InfoThenTLS

        clock = Clock()
        budget = HandshakeBudget(clock, seconds=0.02)
        fed = []

        class Session:
            handshaking = True

        class Inner:
            session = Session()

        class TLS:
            handshake_done = False

            def __init__(self, name):
                self.name = name

            def dataReceived(self, data):
                fed.append((self.name, data))
                budget.charge(0.025)  # as if the step had cost 25 ms: a turn's whole budget

        class Transport:
            def __init__(self):
                self.paused = 0

            def pauseProducing(self):
                self.paused += 1

            def resumeProducing(self):
                self.paused -= 1

        connections = []
        for name in "abc":
            c = InfoThenTLS(Inner(), None, budget)
            c.tls, c.transport = TLS(name), Transport()
            connections.append(c)
        a, b, c = connections
        a.dataReceived(b"a1")   # the budget was there: it goes now, and spends the turn's budget
        b.dataReceived(b"b1")   # budget gone: waits
        b.dataReceived(b"b2")
        c.dataReceived(b"c1")
        self.assertEqual(fed, [("a", b"a1")])
        self.assertEqual((b.transport.paused, c.transport.paused), (1, 1))
        clock.advance(0)        # next turn: b's held bytes, together, then c waits again
        self.assertEqual(fed[1], ("b", b"b1b2"))
        self.assertEqual(b.transport.paused, 0)
        clock.advance(0)
        self.assertEqual(fed[2], ("c", b"c1"))
        self.assertEqual(c.transport.paused, 0)
        # After the handshake, nothing is budgeted.
        a.tls.handshake_done = True
        for _ in range(5):
            a.dataReceived(b"x")
        self.assertEqual(len(fed), 8)

    def test_a_lost_connection_is_not_resumed(self) -> None:
        from twisted.internet.task import Clock

        from eventsvc.nats.upgrade import HandshakeBudget, InfoThenTLS

        clock = Clock()
        budget = HandshakeBudget(clock, seconds=0.0)
        fed = []

        class Session:
            handshaking = True

        class Inner:
            session = Session()

        class TLS:
            handshake_done = False

            def dataReceived(self, data):
                fed.append(data)

            def connectionLost(self, reason):
                pass

        class Transport:
            def pauseProducing(self):
                pass

            def resumeProducing(self):
                raise AssertionError("resumed after the connection was lost")

        conn = InfoThenTLS(Inner(), None, budget)
        conn.tls, conn.transport = TLS(), Transport()
        conn.dataReceived(b"hello")
        conn.connectionLost(None)
        clock.advance(0)
        self.assertEqual(fed, [])


class BurstGreetingTests(SynchronousTestCase):
    """
    Greeting and setting up TLS is the first handshake step and shares the
    turn's budget: a burst of connections accepted in one turn is greeted
    over the next ones (on PyPy each cost 1-4 ms; 300 held the reactor 0.4 s).
    """

    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        identity = PKI.private(self.pki.issue("service", ["localhost"]))
        self.harness = TLSHarness(tls.server_options(identity))
        self.budget = self.harness.factory.handshakes
        self.client_options = ssl.optionsForClientTLS("localhost", trustRoot=self.pki.trust_root())

    def test_greeted_on_a_later_turn(self) -> None:
        self.budget.charge(self.budget.seconds)  # this turn's budget is spent
        client = UpgradingClient(self.client_options)
        server, pump = self.harness.connect(client)
        self.assertEqual(client.info, b"")
        self.assertEqual(self.harness.broker.clients, {})
        self.harness.clock.advance(0)
        pump.flush()
        self.assertTrue(client.info.startswith(b"INFO {"), client.info)
        self.assertTrue(client.app.handshaken)
        self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")

    def test_early_bytes_wait_for_the_greeting(self) -> None:
        """
        Bytes sent before INFO are kept for the TLS layer, not dropped: a
        client that writes plaintext at once is closed as soon as it is
        greeted (its bytes are no TLS hello), not left to the TLS timeout.
        """
        from twisted.internet.protocol import Protocol
        from twisted.test.iosim import FakeTransport, connect

        class Eager(Protocol):
            received = b""
            lost = None

            def connectionMade(self) -> None:
                self.transport.write(b"CONNECT {}\r\nPING\r\n")

            def dataReceived(self, data: bytes) -> None:
                self.received += data

            def connectionLost(self, reason: object = None) -> None:
                self.lost = reason

        self.budget.charge(self.budget.seconds)
        server = self.harness.factory.buildProtocol(None)
        client = Eager()
        pump = connect(server, FakeTransport(server, True), client, FakeTransport(client, False))
        self.assertEqual(client.received, b"")
        self.harness.clock.advance(0)  # greeted: INFO, then the held bytes
        pump.flush()
        self.harness.clock.advance(0)
        pump.flush()
        self.assertTrue(client.received.startswith(b"INFO {"), client.received)
        self.assertNotIn(b"PONG", client.received)
        self.assertIsNotNone(client.lost)
        self.assertEqual(self.harness.broker.clients, {})

    def test_gone_before_its_greeting(self) -> None:
        self.budget.charge(self.budget.seconds)
        client = UpgradingClient(self.client_options)
        server, pump = self.harness.connect(client)
        self.assertEqual(len(self.harness.factory.live), 1)
        client.transport.loseConnection()
        pump.flush()
        self.harness.clock.advance(0)
        pump.flush()
        self.assertEqual(client.info, b"")
        self.assertEqual(self.harness.factory.live, set())
        self.assertEqual(self.harness.broker.clients, {})
        self.assertEqual(list(self.harness.broker.closed), [])


    def test_shut_down_before_its_greeting(self) -> None:
        """A shutdown closes a connection that waits for its greeting: no INFO, no error."""
        self.budget.charge(self.budget.seconds)
        client = UpgradingClient(self.client_options)
        server, pump = self.harness.connect(client)
        for conn in list(self.harness.factory.live):
            conn.close(None, "Server Shutdown")
        # The next turn comes before the socket is gone: it must not greet.
        self.harness.clock.advance(0)
        pump.flush()
        self.assertIsNotNone(client.lost)
        self.assertEqual(client.info, b"")
        self.assertEqual(self.harness.factory.live, set())
        self.assertEqual(self.harness.broker.clients, {})


class TLSLayerTests(SynchronousTestCase):
    """The TLS layer's bigger trips through the memory BIO lose and reorder nothing."""

    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        identity = PKI.private(self.pki.issue("service", ["localhost"]))
        self.harness = TLSHarness(tls.server_options(identity))
        self.client_options = ssl.optionsForClientTLS("localhost", trustRoot=self.pki.trust_root())

    def test_large_messages_both_ways(self) -> None:
        """A 1 MiB payload (64 TLS records) in, and out to a subscriber, byte for byte."""
        payload = bytes(range(256)) * 4096
        sub = UpgradingClient(self.client_options, b'CONNECT {"verbose":false}\r\nSUB big 1\r\nPING\r\n')
        _, sub_pump = self.harness.connect(sub)
        self.assertEqual(sub.app.data, b"PONG\r\n")
        pub = UpgradingClient(self.client_options, b'CONNECT {"verbose":false}\r\nPUB big %d\r\n%s\r\nPING\r\n' % (len(payload), payload))
        _, pub_pump = self.harness.connect(pub)
        for _ in range(50):
            self.harness.clock.advance(0)
            pub_pump.flush()
            sub_pump.flush()
        self.assertEqual(pub.app.data, b"PONG\r\n")
        self.assertEqual(sub.app.data, b"PONG\r\nMSG big 1 %d\r\n%s\r\n" % (len(payload), payload))

    def test_records_of_one_read_arrive_together(self) -> None:
        """Four records in one read reach the connection as one string, in order."""
        from twisted.internet.protocol import Protocol
        from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
        from twisted.test.iosim import FakeTransport, connect

        from eventsvc.nats.upgrade import TLSLayer
        from eventsvc.test.tlshelpers import _Unused

        class Recorder(Protocol):
            def __init__(self) -> None:
                self.reads = []

            def dataReceived(self, data: bytes) -> None:
                self.reads.append(data)

        identity = PKI.private(self.pki.issue("layer", ["localhost"]))
        inner = Recorder()
        server = TLSLayer(TLSMemoryBIOFactory(tls.server_options(identity), False, _Unused()), inner)
        peer = Recorder()
        client = TLSMemoryBIOProtocol(TLSMemoryBIOFactory(self.client_options, True, _Unused()), peer)
        pump = connect(server, FakeTransport(server, True), client, FakeTransport(client, False))
        pieces = [bytes([65 + i]) * 20000 for i in range(4)]  # each over 16 KiB: at least one record each
        for piece in pieces:
            client.write(piece)
        pump.flush()
        self.assertEqual(b"".join(inner.reads), b"".join(pieces))
        self.assertLess(len(inner.reads), 4)
        server.write(b"".join(pieces))
        pump.flush()
        self.assertEqual(b"".join(peer.reads), b"".join(pieces))

    def _layer_and_client(self) -> "tuple":
        """A server TLS layer with a recording protocol, a client, and the pump between them, handshaken."""
        from twisted.internet.protocol import Protocol
        from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
        from twisted.test.iosim import FakeTransport, connect

        from eventsvc.nats.upgrade import TLSLayer
        from eventsvc.test.tlshelpers import _Unused

        class Recorder(Protocol):
            def __init__(self) -> None:
                self.reads: list = []
                self.reason = None

            def dataReceived(self, data: bytes) -> None:
                self.reads.append(data)

            def connectionLost(self, reason=None) -> None:  # type: ignore[override]
                self.reason = reason

        identity = PKI.private(self.pki.issue("layer", ["localhost"]))
        inner = Recorder()
        server = TLSLayer(TLSMemoryBIOFactory(tls.server_options(identity), False, _Unused()), inner)
        client = TLSMemoryBIOProtocol(TLSMemoryBIOFactory(self.client_options, True, _Unused()), Recorder())
        server_transport = FakeTransport(server, True)
        pump = connect(server, server_transport, client, FakeTransport(client, False))
        return server, inner, client, server_transport, pump

    def test_reads_cut_anywhere(self) -> None:
        """
        Records that come a byte at a time, or cut across reads anywhere,
        reach the connection whole and in order (what a read leaves of a
        record waits in OpenSSL or the BIO for the next).
        """
        server, inner, client, server_transport, pump = self._layer_and_client()
        sent = []
        for size in (1, 7, 5, 4096, 16385, 3):
            piece = bytes([97 + len(sent)]) * size
            sent.append(piece)
            client.write(piece)
        wire = client.transport.stream  # what the client wrote, not yet delivered
        client.transport.stream = []
        data = b"".join(wire)
        cuts = [1, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181]
        at = 0
        for cut in cuts + [len(data)]:
            server.dataReceived(data[at:at + cut])
            at += cut
        self.assertEqual(b"".join(inner.reads), b"".join(sent))

    def test_a_record_read_in_parts(self) -> None:
        """
        A record bigger than what one C{recv} asks for is read in several,
        in the same read: what OpenSSL holds of an opened record counts as
        not yet read, though the BIO is empty.
        """
        server, inner, client, server_transport, pump = self._layer_and_client()
        server.record = 1000  # (16 KiB records, read 1,000 bytes a call)
        client.write(b"z" * 16000)
        pump.flush()
        self.assertEqual(b"".join(inner.reads), b"z" * 16000)
        self.assertEqual(len(inner.reads), 1)

    def test_peer_gone_without_close_notify(self) -> None:
        """
        A peer that closes the TCP connection without TLS's close_notify
        (after data, or after none) is an unclean close, as Twisted's layer
        says: the connection hears C{ConnectionLost}, not C{ConnectionDone},
        after the data (OpenSSL's read at the end says the stream was cut).
        """
        from twisted.internet.error import ConnectionDone, ConnectionLost
        from twisted.python.failure import Failure

        for data in (b"", b"last words"):
            server, inner, client, server_transport, pump = self._layer_and_client()
            if data:
                client.write(data)
                pump.flush()
            server_transport.disconnecting = True
            server.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(b"".join(inner.reads), data)
            self.assertIsNotNone(inner.reason)
            self.assertTrue(inner.reason.check(ConnectionLost), inner.reason)

    def test_openssl_side_freed_at_the_close(self) -> None:
        """
        A closed connection's OpenSSL state is freed at its close, not when
        the collector finds it (on PyPy, thousands of connections later):
        its memory BIOs are gone, and a stray call on it is pyOpenSSL's
        clean error, after the connection heard its close.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        server, inner, client, server_transport, pump = self._layer_and_client()
        client.write(b"hello")
        pump.flush()
        connection = server._tlsConnection
        server_transport.disconnecting = True
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(b"".join(inner.reads), b"hello")
        self.assertIsNotNone(inner.reason)
        self.assertIsNone(connection._into_ssl)
        self.assertIsNone(connection._from_ssl)
        self.assertRaises(TypeError, connection.bio_read, 1)

    def test_free_at_close_finds_twisteds_layers(self) -> None:
        """
        L{free_at_close} takes Twisted's layer as a transport, or under a
        TCP transport that started TLS (its C{protocol}); it leaves a
        L{TLSLayer} (which frees its own) and a transport without TLS
        alone, and hooks a layer once.
        """
        from twisted.internet.testing import StringTransport

        from eventsvc.nats.upgrade import free_at_close

        server, inner, client, server_transport, pump = self._layer_and_client()
        free_at_close(server)
        free_at_close(StringTransport())
        self.assertNotIn("connectionLost", vars(server))
        tcp = StringTransport()
        tcp.TLS, tcp.protocol = True, client  # type: ignore[attr-defined]
        free_at_close(tcp)
        hooked = vars(client)["connectionLost"]
        free_at_close(client)
        self.assertIs(vars(client)["connectionLost"], hooked)


class ChainFileTests(SynchronousTestCase):
    """
    A certificate file holding the certificate and then its intermediate CA
    (a chain file), peers trusting the root alone: every certificate of the
    file is sent, as nats-server sends its C{cert_file}'s.
    """

    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        self.root = certs.make_ca("root CA", path_length=1)
        self.intermediate = certs.make_intermediate(self.root, "intermediate CA")
        self.pki.write("root.crt", self.root.cert_pem)
        for name in ("service", "alice"):
            minted = self.pki.issue(name, ["localhost"], ca=self.intermediate)
            self.pki.write(name + "-chain.crt", minted.cert_pem + self.intermediate.cert_pem)
        self.listener = tls.mutual_tls_server(self.pki.path("service-chain.crt"), self.pki.path("service.key"), self.pki.path("root.crt"))

    def identity(self, name: str) -> tls.Identity:
        return tls.load_identity(self.pki.path(name + "-chain.crt"), self.pki.path(name + ".key"), "[tls]")

    def connect(self, server_options, client_options) -> UpgradingClient:
        client = UpgradingClient(client_options)
        TLSHarness(server_options, tls_verify=True).connect(client)
        return client

    def sent(self, client: UpgradingClient) -> list:
        return [c.to_cryptography().subject.rfc4514_string().split(",")[0] for c in client.tls.getHandle().get_peer_cert_chain()]

    def test_intermediate(self) -> None:
        """make_intermediate's CA chains to the root: a certificate it signs verifies with the root alone trusted."""
        from OpenSSL import crypto

        store = crypto.X509Store()
        store.add_cert(crypto.X509.from_cryptography(self.root.certificate))
        leaf = crypto.X509.from_cryptography(self.pki.issue("leaf", ca=self.intermediate).certificate)
        with self.assertRaises(crypto.X509StoreContextError):
            crypto.X509StoreContext(store, leaf).verify_certificate()
        chain = crypto.X509StoreContext(store, leaf, [crypto.X509.from_cryptography(self.intermediate.certificate)]).get_verified_chain()
        self.assertEqual([c.get_subject().commonName for c in chain], ["leaf", "intermediate CA", "root CA"])

    def test_listener_sends_its_chain(self) -> None:
        """
        A client trusting the root alone verifies the listener (sent its
        certificate and the intermediate), and the listener, trusting the
        root alone, takes the client's certificate sent with its chain.
        """
        client = self.connect(self.listener, tls.client_options("localhost", self.pki.trust_root(self.root), self.identity("alice")))
        self.assertTrue(client.app.handshaken)
        self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")
        self.assertEqual(self.sent(client), ["CN=service", "CN=intermediate CA"])

    def test_client_certificate_without_its_chain_is_refused(self) -> None:
        """The root alone is trusted: a client certificate from the intermediate, sent alone, does not verify."""
        client = self.connect(self.listener, ssl.optionsForClientTLS(
            "localhost", trustRoot=self.pki.trust_root(self.root), clientCertificate=PKI.private(self.pki.issue("bob", ca=self.intermediate))))
        self.assertNotIn(b"PONG", client.app.data)
        self.assertIsNotNone(client.lost)

    def test_chain_not_doubled(self) -> None:
        """With the intermediate also trusted, the file's chain is sent once, as it is, not a built one besides."""
        self.pki.write("both.crt", self.root.cert_pem + self.intermediate.cert_pem)
        listener = tls.mutual_tls_server(self.pki.path("service-chain.crt"), self.pki.path("service.key"), self.pki.path("both.crt"))
        client = self.connect(listener, tls.client_options("localhost", self.pki.trust_root(self.root), self.identity("alice")))
        self.assertEqual(self.sent(client), ["CN=service", "CN=intermediate CA"])

    def test_every_ca_of_the_root_file_is_trusted(self) -> None:
        """root_ca_path may hold several CAs, as nats-server's ca_file: a client from either is taken."""
        other = certs.make_ca("second root")
        self.pki.write("roots.crt", self.root.cert_pem + other.cert_pem)
        listener = tls.mutual_tls_server(self.pki.path("service-chain.crt"), self.pki.path("service.key"), self.pki.path("roots.crt"))
        for ca in (self.intermediate, other):
            client = self.connect(listener, ssl.optionsForClientTLS(
                "localhost", trustRoot=self.pki.trust_root(self.root), clientCertificate=PKI.private(self.pki.issue("carol", ca=ca)),
                extraCertificateOptions={"extraCertChain": [tls._for_chain(ssl.Certificate.loadPEM(self.intermediate.cert_pem))]} if ca is self.intermediate else None))
            self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")

    def test_links_send_their_chains(self) -> None:
        """Routes, gateways, leaf nodes and gRPC targets (peer_tls) present the chain both ways."""
        accept, dial = tls.peer_tls(self.pki.path("service-chain.crt"), self.pki.path("service.key"), self.pki.path("root.crt"))
        client = self.connect(accept, dial("localhost"))
        self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")
        self.assertEqual(self.sent(client), ["CN=service", "CN=intermediate CA"])

    def test_https_handlers_send_their_chain(self) -> None:
        """The HTTPS handler client (MutualTLSPolicy) presents its chain too, and trusts each CA of root_ca_path."""
        other = certs.make_ca("second root")
        self.pki.write("roots.crt", other.cert_pem + self.root.cert_pem)
        policy = tls.MutualTLSPolicy(tls.load_certificates(self.pki.path("roots.crt"), "[tls] root_ca_path"), self.identity("alice"))
        client = self.connect(self.listener, policy.creatorForNetloc(b"localhost", 443))
        self.assertEqual(client.app.data, b"+OK\r\nPONG\r\n")
        self.assertEqual(self.sent(client), ["CN=service", "CN=intermediate CA"])

    def test_frontend_certificates_send_their_chain(self) -> None:
        """The gateway's SNI certificates and the WebSocket's (server_options) are sent with their chains."""
        self.pki.issue("events.example.com", ca=self.intermediate)
        self.pki.write("events-chain.crt", self.pki_read("events.example.com.crt") + self.intermediate.cert_pem)
        options = tls.server_options(tls.load_identity(self.pki.path("events-chain.crt"), self.pki.path("events.example.com.key"), "[gateway]"))
        sni = tls.SNIServerContexts([("events.example.com", options)])
        client = UpgradingClient(ssl.optionsForClientTLS("events.example.com", trustRoot=self.pki.trust_root(self.root)))
        TLSHarness(sni).connect(client)
        self.assertTrue(client.app.handshaken)
        self.assertEqual(self.sent(client), ["CN=events.example.com", "CN=intermediate CA"])

    def pki_read(self, name: str) -> bytes:
        with open(self.pki.path(name), "rb") as f:
            return f.read()

    def test_key_of_another_certificate_in_the_file(self) -> None:
        """The key must be the file's first certificate's: a chain file in the wrong order is refused, saying so."""
        self.pki.write("reversed.crt", self.intermediate.cert_pem + self.pki_read("service.crt"))
        with self.assertRaises(tls.TLSFilesError) as caught:
            tls.mutual_tls_server(self.pki.path("reversed.crt"), self.pki.path("service.key"), self.pki.path("root.crt"))
        self.assertIn("service.key ([tls] key_path) is not the key of", str(caught.exception))
        self.assertIn("reversed.crt (cert_path; the key must be its first certificate's)", str(caught.exception))

    def test_broken_further_certificate(self) -> None:
        """A block of the chain that is no certificate is named, not passed over."""
        broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        self.pki.write("broken.crt", self.pki_read("service.crt") + broken)
        with self.assertRaises(tls.TLSFilesError) as caught:
            tls.mutual_tls_server(self.pki.path("broken.crt"), self.pki.path("service.key"), self.pki.path("root.crt"))
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertIn("broken.crt ([tls] cert_path): not a PEM certificate (certificate 2 of 2", message)

    def test_text_between_certificates(self) -> None:
        """Text around the blocks (openssl's subject and issuer lines, say) is passed over, as nats-server does."""
        self.pki.write("annotated.crt", b"subject=CN = service\n" + self.pki_read("service.crt") + b"issuer=CN = root CA\n" + self.intermediate.cert_pem)
        identity = tls.load_identity(self.pki.path("annotated.crt"), self.pki.path("service.key"), "[tls]")
        self.assertEqual(len(identity.chain), 1)
