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
handshake bytes wait, its socket paused, for a later turn.  The greeting
and the TLS layer's set-up are the first step and share the budget too:
Twisted accepts up to a hundred and more connections in one turn, and on
PyPy setting each up cost 1-4 ms (300 at once held the reactor 370 ms).

The TLS layer (L{TLSLayer}) is Twisted's C{TLSMemoryBIOProtocol} with
fewer trips through the memory BIO: a write is handed to OpenSSL whole and
its records are read out and written in one piece, and the records of one
read are decrypted together and given to the connection as one string.

This module builds no certificates: it is given a context factory.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import Any, Callable, Deque, List, Optional
from weakref import WeakKeyDictionary

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from OpenSSL._util import ffi as _ffi, lib as _lib
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

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


class TLSLayer(TLSMemoryBIOProtocol):
    """
    Twisted's TLS layer, with fewer trips through the memory BIO.

    Twisted cuts each write into 16 KiB pieces and, per piece, encrypts,
    reads the send BIO (at most 32 KiB) and writes to the socket; and it
    hands every TLS record of a read to the protocol on its own.  Here a
    write goes to OpenSSL in one call where it takes it (C{memoryview}s, no
    copies of the rest), the send BIO is drained whole into one socket write,
    and the records of one read reach the protocol as one string, so a 64 KiB
    read is one parse, not four or more with a partial message carried
    between them.  An empty send BIO is seen by asking how much it holds,
    not by reading it and catching the WantReadError pyOpenSSL raises (after
    most reads there is nothing to send); so is the end of what a read
    brought (L{_all_read}).  What the protocol sees and the order of data,
    close and errors are Twisted's.
    """

    #: How much one C{bio_read} asks for: a socket write of up to 64 KiB
    #: (Twisted reads at most that much at a time) in one call, more in a
    #: few.  C{recv} gives at most one record (16 KiB) a call, whatever it
    #: is asked for, so it asks for Twisted's 32 KiB.
    chunk = 1 << 16
    record = 1 << 15
    #: The peer's end was given to OpenSSL (C{bio_shutdown}): from then on
    #: a read that finds nothing says how the stream ended, so it is made.
    _ended = False

    @property
    def handshake_done(self) -> bool:
        """Whether the handshake is over (the session's state says the same, at a cost)."""
        return bool(self._handshakeDone)

    def makeConnection(self, transport: Any) -> None:
        """
        As Twisted's, less two costs that dominated setting up a connection
        on PyPy: the transport's interfaces are declared on the layer once
        (Twisted declares each of them in turn, each replacing the last, and
        then all of them, which is what stays), and no handshake step is
        tried before the client has sent anything (a server's first step
        only finds nothing to read).
        """
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            self.wrappedProtocol.makeConnection(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """
        As Twisted's, and the producer is let go, as a TCP transport lets
        go of its own: it holds this layer (it writes to it), which would
        keep the two, and the connection, in a cycle for the collector.
        OpenSSL's side of the connection is freed at once (L{lost_and_freed}).
        """
        self._ended = True
        lost_and_freed(self, super().connectionLost, reason)
        self._producer = None

    def loseConnection(self) -> None:
        """
        As Twisted's (a close_notify after what was written), and then the
        TCP connection closes too, once that is sent, as nats-server's does
        (Go's C{tls.Conn.Close}).  Twisted's waits for the peer's
        close_notify before it closes the socket, which a peer that is gone,
        or never means to answer, does not send: a server-side close (an
        C{-ERR}, an authentication timeout, a stale peer) then left the
        socket open for as long as the peer liked, and no longer counted.
        """
        super().loseConnection()
        close_after_notify(self)

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        view = memoryview(data)
        done = 0
        while done < len(data):
            try:
                done += connection.send(view[done:] if done else data)
            except WantReadError:
                self._bufferedWrite(data[done:])
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                return
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        connection = self._tlsConnection
        outgoing = getattr(connection, "_from_ssl", None)
        if outgoing is not None and not _lib.BIO_get_mem_data(outgoing, _UNUSED_POINTER):
            # Nothing to send: the send BIO is empty.  Asked, not tried:
            # pyOpenSSL says so with a WantReadError, and after most reads,
            # and a few times in each connection's set-up, there is nothing.
            return
        try:
            records = connection.bio_read(self.chunk)
        except WantReadError:
            return  # nothing to send
        if len(records) == self.chunk:
            more = [records]
            while True:
                try:
                    records = connection.bio_read(self.chunk)
                except WantReadError:
                    break
                more.append(records)
                if len(records) < self.chunk:
                    break
            records = b"".join(more)
        self.transport.write(records)  # type: ignore[union-attr]  # (connected: a transport is there)

    def _all_read(self) -> bool:
        """
        Whether a C{recv} now could only say C{WantReadError}: no bytes wait
        in the receive BIO, and no data of a record OpenSSL has opened.

        Asked, not tried: the last C{recv} of every read of a TLS connection
        found nothing, and pyOpenSSL says so with an exception (1.2 us on
        CPython, 0.9 on PyPy in a loop; more in a connection's path), where
        asking costs 0.2 and 0.02.  OpenSSL takes a record from the BIO
        only when it reads it, and only as much of it as there is (a
        context reads ahead only if told to, which pyOpenSSL's binding
        cannot do), so a record not yet read, whole or in part, is in the
        BIO, and one read in part is C{SSL_pending}.  A part of a record
        it took in a previous read cannot be read until the rest comes, in
        the BIO.  Once the peer's end is given (L{connectionLost}) the
        read is made: it says how the stream ended.
        """
        connection = self._tlsConnection
        incoming = getattr(connection, "_into_ssl", None)
        if incoming is None or self._ended:
            return False  # (a binding without the BIO: try, as Twisted does)
        return not _lib.BIO_get_mem_data(incoming, _UNUSED_POINTER) and not _lib.SSL_pending(connection._ssl)

    def _flushReceiveBIO(self) -> None:
        connection = self._tlsConnection
        got: List[bytes] = []
        while not self._lostTLSConnection:
            if self._all_read():
                break
            try:
                got.append(connection.recv(self.record))
            except WantReadError:
                break
            except ZeroReturnError:
                # What came before the close first, as Twisted gives it.
                self._deliver(got)
                got = []
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._deliver(got)
                got = []
                self._tlsShutdownFinished(Failure())
        self._deliver(got)
        self._flushSendBIO()

    def _deliver(self, got: List[bytes]) -> None:
        if got and not self._aborted:
            self.wrappedProtocol.dataReceived(got[0] if len(got) == 1 else b"".join(got))


#: Where BIO_get_mem_data writes the address of the bytes in a memory BIO
#: (unused: only how many are there is asked).  One for all: the reactor's thread
#: alone uses it, and nothing keeps what it points at.
_UNUSED_POINTER = _ffi.new("char **")

def _free_now(connection: Any) -> None:
    """
    Free OpenSSL's side of a closed connection (C{SSL_free}: its state,
    its record buffers, both memory BIOs) now, not when the collector
    finds the pyOpenSSL object that owns it.

    On CPython that is the same moment.  On PyPy it was the next minor
    collection, and with PyPy's nursery (240 MB on the bench machine) that
    came every few thousand connections: as many closed connections' worth
    of OpenSSL memory were then freed at once, and glibc's allocator, with
    its bins long and scattered, cost a real PyPy server 16% of its CPU on
    mutual TLS connections (CPython 3%).  Twisted's layer drops the
    connection at its close (its C{_tlsConnection} is None from then on),
    so nothing of ours reaches it again; its BIO pointers are cleared, so
    a stray call on it is pyOpenSSL's clean error, not a freed pointer.
    """
    ssl = getattr(connection, "_ssl", None)
    release = getattr(_ffi, "release", None)  # (cffi 1.12 on)
    if ssl is None or release is None:
        return
    connection._into_ssl = connection._from_ssl = None
    release(ssl)


def lost_and_freed(layer: TLSMemoryBIOProtocol, lost: Callable[[Any], None], reason: Any) -> None:
    """
    C{lost(reason)}: Twisted's C{connectionLost} of C{layer}; then, if the
    layer let go of its connection (its C{_tlsConnection} is None once it
    has told its protocol), OpenSSL's side of it is freed (L{_free_now}).
    The close of every TLS layer of ours: L{TLSLayer}'s and, through
    L{free_at_close}, Twisted's own.
    """
    connection = layer._tlsConnection
    lost(reason)
    if connection is not None and layer._tlsConnection is None:
        _free_now(connection)


def free_at_close(transport: Any) -> None:
    """
    Have the TLS layer under a connection free OpenSSL's side at its close
    (L{lost_and_freed}), as L{TLSLayer} does for the client listener:
    C{transport} is Twisted's layer itself (a listener or a dial over TLS:
    Twisted's C{listenSSL} and C{connectSSL}, a WebSocket listener's
    wrapping factory), or a TCP transport whose C{startTLS} put one under
    it (a leaf link's, after its plaintext INFO).  Anything else, and a
    L{TLSLayer}, is left alone.

    On PyPy, Twisted's layer left it to the next minor collection, which
    freed thousands of links' and WebSocket clients' OpenSSL state at once
    (L{_free_now}).  The layer's own C{connectionLost} is replaced, on this
    one layer (Twisted builds it: there is no class of ours to give it),
    and the replacement removes itself when called, so the layer is no
    longer in a cycle with its own method once it is closed.
    """
    layer = transport if isinstance(transport, TLSMemoryBIOProtocol) else (
        getattr(transport, "protocol", None) if getattr(transport, "TLS", False) else None)
    if not isinstance(layer, TLSMemoryBIOProtocol) or isinstance(layer, TLSLayer) or "connectionLost" in vars(layer):
        return
    twisteds = layer.connectionLost

    def connectionLost(reason: Any = None) -> None:
        del layer.connectionLost  # (Twisted's again, and no cycle)
        lost_and_freed(layer, twisteds, reason)

    layer.connectionLost = connectionLost  # type: ignore[method-assign]


#: One TLS factory per context (it only keeps the live layers).
_factories: "WeakKeyDictionary[Any, TLSMemoryBIOFactory]" = WeakKeyDictionary()


def close_after_notify(layer: TLSMemoryBIOProtocol) -> None:
    """
    After C{layer}'s C{loseConnection} (Twisted's: a close_notify after what
    was written): close the TCP connection under it too, once that is sent,
    rather than wait for the peer's close_notify.  Not while a write waits
    for the handshake or a producer is registered: Twisted shuts the layer
    down only after those, and waits for the peer then (a producer is let
    go of by L{eventsvc.nats.outbound.Outbound.close_transport} first).
    """
    if (layer.disconnecting and not layer._aborted and layer._producer is None and not layer._appSendBuffer
            and layer.transport is not None):
        layer.transport.loseConnection()


def start_tls(transport: Any, context: Any) -> None:
    """
    Twisted's C{startTLS} on C{transport} (a leaf link's, after its
    plaintext INFO), and its TLS layer closes as L{TLSLayer} does: the
    close_notify, then the TCP close (as nats-server's, Go's
    C{tls.Conn.Close}).  Twisted's layer waited for the peer's close_notify,
    so a peer that never sent it kept the socket for as long as it liked.
    OpenSSL's side is freed at the close (L{free_at_close}).
    """
    transport.startTLS(context)
    layer = transport.protocol
    if not isinstance(layer, TLSMemoryBIOProtocol):
        return  # (iosim's transports only pretend to start TLS)
    free_at_close(layer)
    twisteds = layer.loseConnection

    def loseConnection() -> None:
        twisteds()
        close_after_notify(layer)

    layer.loseConnection = loseConnection  # type: ignore[method-assign]


def _tls_factory(context_factory: Any) -> TLSMemoryBIOFactory:
    factory = _factories.get(context_factory)
    if factory is None:
        # The wrapped factory is only there for start/stop bookkeeping: the
        # protocol is given to the TLS layer directly.
        factory = _factories[context_factory] = TLSMemoryBIOFactory(context_factory, False, Factory())
    return factory


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
        #: Accepted, and waiting for the budget to be greeted (paused meanwhile).
        self._ungreeted = False
        self._gone = False

    def connectionMade(self) -> None:
        budget = self.budget
        if budget is None:
            self._greet()
            return
        if not budget.allows():
            # A burst of connections: this one is greeted on a later turn.
            # Meanwhile the client connection holds the raw transport, so
            # that closing it (a shutdown) closes the socket.
            self._ungreeted = True
            self.inner.transport = self.transport
            self.transport.pauseProducing()
            budget.wait(self)
            return
        started = perf_counter()
        self._greet()
        budget.charge(perf_counter() - started)

    def _greet(self) -> None:
        """INFO in plaintext, then the TLS layer, waiting for the client's hello."""
        if not self.inner.greet(self.transport):
            return
        self.tls = TLSLayer(_tls_factory(self.context_factory), self.inner)
        # The session's handshake clock starts (and times the client out).
        self.inner.tls_begun()
        self.tls.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._ungreeted:
            # Sent before INFO (the socket is paused, but a transport may
            # have read already): it waits for the TLS layer.
            self._held.append(data)
            return
        if self.tls is None:
            return
        budget = self.budget
        # The layer's own flag, not the session's state: asking the session
        # (an Automat machine) builds a function per call on PyPy, and this
        # is every read of a TLS connection.
        if budget is None or self.tls.handshake_done:
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
        """A new turn: the greeting, or the held bytes to the TLS layer, if the budget allows yet."""
        if self._gone:
            return
        if self._ungreeted:
            assert self.budget is not None
            if self.inner.closed:
                # Closed while it waited (a shutdown): its socket is going.
                self._ungreeted = False
                del self._held[:]
                return
            if not self.budget.allows():
                self.budget.wait(self)
                return
            self._ungreeted = False
            self.transport.resumeProducing()
            started = perf_counter()
            self._greet()
            self.budget.charge(perf_counter() - started)
            if self._held:
                # What came early is the handshake's first step, in its turn.
                self.budget.wait(self)
            return
        if not self._held:
            return
        assert self.budget is not None
        if self.tls is None:
            del self._held[:]  # refused at its greeting
            return
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
        if self._ungreeted:
            # Gone before its greeting: the connection was never registered,
            # only counted by its listener, which it leaves now.
            self.inner.connectionLost(reason)
        if self.tls is not None:
            # The TLS layer tells the client connection why (an SSL error
            # during the handshake, or the close).
            self.tls.connectionLost(reason)
