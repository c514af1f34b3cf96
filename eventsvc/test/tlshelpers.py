"""
Real TLS in memory: certificates minted per test, and a NATS-like client
that reads INFO in plaintext and then upgrades, over iosim.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, List, Optional

from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test.iosim import FakeTransport, connect

from eventsvc.nats.settings import ClientSettings
from eventsvc.nats.listener import ClientFactory
from eventsvc.test.helpers import with_limits
from eventsvc.nats.server import Broker
from eventsvc.security import certs


class PKI:
    """A CA, and certificates from it (or from elsewhere), as files and objects."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.ca = certs.make_ca()
        self.write("ca.crt", self.ca.cert_pem)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def issue(self, name: str, names=(), ca: Optional[certs.Minted] = None, **kwargs: Any) -> certs.Minted:
        minted = certs.make_cert(ca or self.ca, name, names or [name], **kwargs)
        self.write(name + ".crt", minted.cert_pem)
        self.write(name + ".key", minted.key_pem)
        return minted

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def trust_root(self, ca: Optional[certs.Minted] = None) -> Any:
        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM((ca or self.ca).cert_pem)])

    @staticmethod
    def private(minted: certs.Minted) -> ssl.PrivateCertificate:
        return ssl.PrivateCertificate.loadPEM(minted.cert_pem + minted.key_pem)

    def expired(self, name: str) -> certs.Minted:
        now = datetime.datetime.now(datetime.timezone.utc)
        return self.issue(name, not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1))


class _Unused:
    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


class AppSide(Protocol):
    """What the client application sees once TLS is up."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.data = b""
        self.lost: Optional[Any] = None
        self.handshaken = False
        self.server_certificate: Any = None

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)

    def handshakeCompleted(self) -> None:
        self.handshaken = True
        self.server_certificate = self.transport.getPeerCertificate()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class UpgradingClient(Protocol):
    """
    Reads the plaintext INFO line, then starts TLS with C{options} (or, when
    C{options} is None, carries on in plaintext), as NATS clients do.
    """

    def __init__(self, options: Any, first: bytes = b"CONNECT {}\r\nPING\r\n") -> None:
        self.options = options
        self.info = b""
        self.plain = b""
        self.app = AppSide(first)
        self.tls: Any = None
        self.lost: Optional[Any] = None

    def dataReceived(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.dataReceived(data)
            return
        if not self.info.endswith(b"\r\n"):
            self.info += data
            if not self.info.endswith(b"\r\n"):
                return
            if self.options is None:
                self.transport.write(self.app.first)
                return
            from zope.interface import directlyProvides
            from twisted.internet.interfaces import IHandshakeListener

            directlyProvides(self.app, IHandshakeListener)
            self.tls = TLSMemoryBIOProtocol(TLSMemoryBIOFactory(self.options, True, _Unused()), self.app)
            self.tls.makeConnection(self.transport)
        else:
            self.plain += data

    def info_fields(self) -> dict:
        return json.loads(self.info[5:].strip())

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason
        if self.tls is not None:
            self.tls.connectionLost(reason)


class TLSHarness:
    def __init__(self, tls: Any, **settings: Any) -> None:
        self.clock = Clock()
        self.broker = Broker(server_id="NTEST")
        self.settings = with_limits(ClientSettings, tls=tls, **settings)
        self.factory = ClientFactory(self.broker, self.settings, self.clock)
        # The handshake budget is real CPU time; on a busy machine a greeting
        # and a handshake step could spend it and leave the rest for a turn
        # no test drives.  Tests that want it spent spend it themselves.
        self.factory.handshakes.seconds = float("inf")

    def connect(self, client: UpgradingClient, port: int = 50000):
        server = self.factory.buildProtocol(None)
        pump = connect(
            server,
            FakeTransport(server, True, peerAddress=IPv4Address("TCP", "127.0.0.1", port)),
            client,
            FakeTransport(client, False),
            greet=True,
        )
        pump.flush()
        return server, pump
