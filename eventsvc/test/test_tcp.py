"""TCP_NODELAY on every kind of connection: clients, TLS layers, routes, HTTP deliveries."""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from eventsvc.events.handlers import NoDelayEndpoints
from eventsvc.nats.tcp import no_delay


class FakeTCP:
    def __init__(self):
        self.no_delay = None

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled


class Layer:
    """Something over a transport, as TLSMemoryBIOProtocol is (it keeps it as .transport)."""

    def __init__(self, transport):
        self.transport = transport


class NoDelayTests(SynchronousTestCase):
    def test_tcp(self):
        tcp = FakeTCP()
        no_delay(tcp)
        self.assertIs(tcp.no_delay, True)

    def test_under_tls(self):
        tcp = FakeTCP()
        no_delay(Layer(Layer(tcp)))
        self.assertIs(tcp.no_delay, True)

    def test_no_socket(self):
        # A transport of memory (tests) has nothing to set: no error.
        no_delay(Layer(None))
        no_delay(object())

    def test_http_delivery_connections(self):
        """The Agent's endpoints set TCP_NODELAY once connected, for HTTP and HTTPS."""
        from twisted.internet.testing import MemoryReactorClock

        endpoints = NoDelayEndpoints(MemoryReactorClock())
        for url in (b"http://127.0.0.1:8080/e", b"https://127.0.0.1:8443/e"):
            endpoint = endpoints.endpointForURI(URI.fromBytes(url))
            tcp = FakeTCP()
            protocol = Layer(Layer(tcp))
            endpoint._inner = type("E", (), {"connect": lambda self, factory: succeed(protocol)})()
            self.assertIs(self.successResultOf(endpoint.connect(None)), protocol)
            self.assertIs(tcp.no_delay, True)
