"""
Greet in plaintext, then speak TLS on the same connection.

nats-server 2.9 writes INFO (with C{tls_required}) before any TLS, and the
client starts the handshake on the same socket.  L{InfoThenTLS} owns the raw
connection: it has the client connection write INFO, then inserts a
C{TLSMemoryBIOProtocol} between the socket and the client connection, which
sees a TLS transport from then on.  It works over any transport, so tests
run real TLS in memory.  Plaintext after INFO is not TLS: the handshake
fails and the connection closes without a word, as nats-server does.

This module builds no certificates: it is given a context factory.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from eventsvc.nats.client import ClientConnection


class InfoThenTLS(Protocol):
    """The raw connection of a TLS listener."""

    log = Logger()
    #: TCP or TLS: more than ITransport says (producers, TLS, abort).
    transport: Any

    def __init__(self, inner: ClientConnection, context_factory: Any, clock: Any, timeout: float) -> None:
        self.inner = inner
        self.context_factory = context_factory
        self.clock = clock
        self.timeout = timeout
        self.tls: Optional[Any] = None
        self._timer: Any = None

    def connectionMade(self) -> None:
        if not self.inner.greet(self.transport):
            return
        # The wrapped factory is only there for start/stop bookkeeping: the
        # protocol is given to the TLS layer directly.
        factory = TLSMemoryBIOFactory(self.context_factory, False, Factory())
        self.tls = TLSMemoryBIOProtocol(factory, self.inner)
        self.inner.awaiting_handshake = True
        self.inner.handshake_timer = self.clock.callLater(self.timeout, self._timed_out)
        self.tls.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.tls is not None:
            # The TLS layer tells the client connection why (an SSL error
            # during the handshake, or the close).
            self.tls.connectionLost(reason)

    def _timed_out(self) -> None:
        self.inner.handshake_timer = None
        self.inner.awaiting_handshake = False
        self.log.info("TLS handshake with {host}:{port} timed out", host=self.inner.peer.host, port=self.inner.peer.port)
        self.inner.close_reason, self.inner.close_detail = "TLS Handshake Failure", "handshake timeout"
        self.inner._teardown()
        self.transport.abortConnection()
