"""
Greet in plaintext, then speak TLS on the same connection.

nats-server 2.9 writes INFO (with C{tls_required}) before any TLS, and the
client starts the handshake on the same socket.  L{InfoThenTLS} owns the raw
connection: it has the client connection write INFO, then inserts a
C{TLSMemoryBIOProtocol} between the socket and the client connection, which
sees a TLS transport from then on.  It works over any transport, so tests
run real TLS in memory.  Plaintext after INFO is not TLS: the handshake
fails and the connection closes without a word, as nats-server does.

Handshakes share a budget of CPU per reactor turn (L{HandshakeBudget}): a
burst of hundreds of clients handshaking at once (a fleet reconnecting)
would otherwise have one turn do every handshake step that is ready, and
stall every connected client for as long.  Past the budget, a connection's
handshake bytes wait, its socket paused, for a later turn.

This module builds no certificates: it is given a context factory.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import Any, Deque, List, Optional

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from eventsvc.nats.client import ClientConnection


class HandshakeBudget:
    """
    Seconds of TLS handshake work a listener does per reactor turn; the
    connections over it wait for the next turn, in arrival order.
    """

    def __init__(self, clock: Any, seconds: float = 0.02) -> None:
        self.clock = clock
        self.seconds = seconds
        self.spent = 0.0
        self._waiting: Deque["InfoThenTLS"] = deque()
        self._turn: Any = None

    def allows(self) -> bool:
        return self.spent < self.seconds

    def charge(self, seconds: float) -> None:
        self.spent += seconds
        self._next_turn()

    def wait(self, connection: "InfoThenTLS") -> None:
        self._waiting.append(connection)
        self._next_turn()

    def _next_turn(self) -> None:
        if self._turn is None:
            self._turn = self.clock.callLater(0, self._new_turn)

    def _new_turn(self) -> None:
        self._turn = None
        self.spent = 0.0
        waiting, self._waiting = self._waiting, deque()
        for connection in waiting:
            connection.resume_handshake()


class InfoThenTLS(Protocol):
    """The raw connection of a TLS listener."""

    log = Logger()
    #: TCP or TLS: more than ITransport says (producers, TLS, abort).
    transport: Any

    def __init__(self, inner: ClientConnection, context_factory: Any, budget: Optional[HandshakeBudget] = None) -> None:
        self.inner = inner
        self.context_factory = context_factory
        self.budget = budget
        self.tls: Optional[Any] = None
        #: Handshake bytes waiting for the budget (the socket is paused meanwhile).
        self._held: List[bytes] = []
        self._gone = False

    def connectionMade(self) -> None:
        if not self.inner.greet(self.transport):
            return
        # The wrapped factory is only there for start/stop bookkeeping: the
        # protocol is given to the TLS layer directly.
        factory = TLSMemoryBIOFactory(self.context_factory, False, Factory())
        self.tls = TLSMemoryBIOProtocol(factory, self.inner)
        # The session's handshake clock starts (and times the client out).
        self.inner.tls_begun()
        self.tls.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.tls is None:
            return
        budget = self.budget
        if budget is None or not self.inner.session.handshaking:
            self.tls.dataReceived(data)
            return
        if self._held or not budget.allows():
            # Over this turn's budget: the bytes wait for a later turn.
            if not self._held:
                self.transport.pauseProducing()
                budget.wait(self)
            self._held.append(data)
            return
        started = perf_counter()
        self.tls.dataReceived(data)
        budget.charge(perf_counter() - started)

    def resume_handshake(self) -> None:
        """A new turn: the held bytes go to the TLS layer, if the budget allows yet."""
        if self._gone or not self._held:
            return
        assert self.budget is not None and self.tls is not None
        if not self.budget.allows():
            self.budget.wait(self)
            return
        data = b"".join(self._held)
        del self._held[:]
        self.transport.resumeProducing()
        self.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._gone = True
        del self._held[:]
        if self.tls is not None:
            # The TLS layer tells the client connection why (an SSL error
            # during the handshake, or the close).
            self.tls.connectionLost(reason)
