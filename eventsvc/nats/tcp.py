"""
Socket options and the write path every connection of a messaging server
wants.

Nagle's algorithm holds a small write back until the previous one is
acknowledged, and the peer's delayed ACK waits up to 40 ms: a message
written after a PONG reaches its subscriber 40 ms late.  nats-server sets
TCP_NODELAY on every connection; so do we, under TLS too (L{no_delay}).

Twisted writes in three steps: C{write} buffers and registers the socket for
writability (C{epoll_ctl}), the next reactor turn's C{doWrite} sends, and,
with nothing left, unregisters it (C{epoll_ctl} again).  For a server that
answers each request with one small write (a request's reply, a JetStream
PubAck), those two calls are two of every message's five or so system calls,
and the send waits a whole turn (an C{epoll_wait}) for a socket that was
writable all along.  L{send_at_turn_end} changes that for a NATS
connection's TCP transport (L{TurnEndWrites}): what is written within a
reactor turn is still buffered by Twisted and goes out once per turn, but at
the end of the turn it was written in (for all the connections written to,
as the reactor's poll returns, or from one C{callLater(0)}: L{TurnEnd}), with one C{send} (C{sendmsg} for a list of large
pieces, which need no join).  Only what the socket does not take is left to
Twisted, which registers for writability and sends the rest as it always
does.  A close (C{loseConnection}: a TLS layer's answer to close_notify, a
C{-ERR} then close) with nothing unsent from before is done at the end of
its turn too, after that turn's output is sent, as the reactor would after
Twisted's C{doWrite} (L{TurnEndWrites.loseConnection}).  Aborting, producers
pausing and resuming, and errors are Twisted's own: the rest of its
transport is untouched, and anything unusual (a pull producer, an unsent
backlog, a half-close) goes Twisted's way.

A TLS or WebSocket connection writes through its layer to the TCP transport
under it, so it gains the same without its layer being bypassed.

Work that must be done before a turn's output goes out, and that itself
writes, registers with L{at_turn_end}: a file store's group commit, whose
durability callbacks write the PubAcks.  The turn's end runs those calls
first, in the order they were made, and then sends what they wrote along
with the rest of the turn's output.  Were the store's write a C{callLater(0)}
of its own, a PubAck written from it would queue the send for the turn after
(Twisted runs the delayed calls made while it runs them only after one more
poll): one more C{epoll_wait} per synchronous publish, and its latency.

This module must not decide what is written, only how it reaches the
socket: no frame is built, reordered or dropped here.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional, Type
from weakref import WeakKeyDictionary

from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: The most pieces one C{sendmsg} takes (Linux's IOV_MAX).
IOV_MAX = 1024
#: Pieces at least this large on average are sent as they are (C{sendmsg});
#: smaller ones are joined first, which costs less than a long I/O vector.
#: Measured (process time, 64 KiB over loopback TCP): PyPy joins 64 KiB in
#: 27 us and sends 128 pieces of 530 bytes in 29 us all told, against 35-64 us
#: joined; but each piece costs it some 0.25 us, so 266-byte pieces are
#: cheaper joined.  CPython joins 64 KiB in 2.5 us, and an I/O vector is
#: no cheaper until its pieces are 4 KiB.
SENDMSG_PIECE = 4096 if sys.implementation.name == "cpython" else 512
#: Whether C{writeSequence} joins what it is given at once (CPython), instead
#: of looking at each piece in a loop of its own (PyPy).  A subscriber's
#: flush hands over two pieces a message (its prefix and the message); on
#: CPython the loop that checked and counted them cost 83 ns a piece, and
#: the join at the turn's end 13 more, where one C{bytes.join} here (which
#: refuses what is not bytes-like as it goes) costs the 13 alone, and the
#: turn's end then sends the one piece as it is.  PyPy's JIT makes the loop
#: cheap and its joins dear (27 us for 64 KiB), so it keeps the pieces.
JOIN_SEQUENCES = sys.implementation.name == "cpython"


def _layers(transport: Any) -> Any:
    """C{transport}, then what it writes to (a TLS layer keeps its TCP transport as C{transport}), a few deep."""
    for _ in range(4):
        if transport is None:
            return
        yield transport
        transport = getattr(transport, "transport", None)


def no_delay(transport: Any) -> None:
    """
    Set TCP_NODELAY on the TCP connection under C{transport}, walking down
    through TLS layers (a C{TLSMemoryBIOProtocol} keeps the TCP transport as
    its own C{transport}).  Transports without a socket (tests, memory) are
    left alone.
    """
    for layer in _layers(transport):
        setter = getattr(type(layer), "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(layer, True)
            except OSError:
                pass  # not a TCP socket (a UNIX one), or already gone
            return


class TurnEndCall:
    """
    A call at the end of this turn (L{at_turn_end}), before the turn's
    output is sent.  It answers as much of C{IDelayedCall} as a timer's
    holder uses (C{active}, C{cancel}, C{getTime}), so it can stand where a
    C{callLater(0)} stood.
    """

    __slots__ = ("_turn", "_func", "_pending")

    def __init__(self, turn: "TurnEnd", func: Callable[[], None]) -> None:
        self._turn = turn
        self._func = func
        self._pending = True

    def active(self) -> bool:
        """Whether it is yet to run (not run, not cancelled)."""
        return self._pending

    def cancel(self) -> None:
        """Do not run it."""
        self._pending = False

    def getTime(self) -> float:
        """When it runs: now (at the end of this turn)."""
        return float(self._turn.reactor.seconds())

    def _run(self) -> None:
        if self._pending:
            self._pending = False
            self._func()


#: L{TurnEnd._call} while the turn ends when the reactor's poll returns.
_AFTER_POLL = object()


def _poll_methods() -> Any:
    """The polls of the reactors whose turn is C{mainLoop}'s run-what-is-due, then C{doIteration} (here, in one thread)."""
    methods = []
    for module, cls, name in (("epollreactor", "EPollReactor", "doPoll"), ("pollreactor", "PollReactor", "doPoll"),
                              ("selectreactor", "SelectReactor", "doSelect")):
        try:
            imported = __import__("twisted.internet." + module, fromlist=[cls])
        except ImportError:
            continue
        methods.append(getattr(getattr(imported, cls), name))
    return methods


class TurnEnd:
    """
    The end of one reactor's turn: the calls made for it (L{at_turn_end}),
    then the TCP transports written to in this turn, each sending what it
    holds (L{TurnEndWrites._send_turn}); all from one C{callLater(0)}, or,
    for what the reactor's poll made due (a read), when the poll returns.

    A C{callLater(0)} per turn was a twentieth of a synchronous JetStream
    publish's instructions (a C{DelayedCall}, its heap push and pop, and
    the timeout worked out with it): an epoll, poll or select reactor's
    C{doIteration} is wrapped, once per reactor, to say while its poll
    runs (L{_polling}) and to end the turn as it returns.  What is written
    outside the poll (a timer's callback, a call made by a turn end) still
    takes a C{callLater(0)}; so does everything on any other reactor (an
    asyncio one, a C{task.Clock} in tests).
    """

    __slots__ = ("reactor", "queued", "calls", "_call", "_polling")

    #: Rounds of calls made by calls run in the same turn end, at most; the
    #: rest wait for the next turn, so a chain of them cannot starve the reactor.
    ROUNDS = 8

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.queued: List["TurnEndWrites"] = []
        self.calls: List[TurnEndCall] = []
        #: None; a C{DelayedCall} of L{send}; or L{_AFTER_POLL}.
        self._call: Any = None
        #: Whether the reactor's poll (its read callbacks) is running now.
        self._polling = False
        self._wrap_poll()

    def _wrap_poll(self) -> None:
        """Have the reactor's C{doIteration} end the turn as its poll returns, when the reactor is one whose turn is known."""
        reactor = self.reactor
        if "doIteration" in vars(reactor) or getattr(type(reactor), "doIteration", None) not in _poll_methods():
            return
        poll = reactor.doIteration
        turn = self

        def doIteration(timeout: Optional[float]) -> None:
            turn._polling = True
            try:
                poll(timeout)
            finally:
                # (Even when the poll raised: what it read is sent, and a
                # turn end left owed would keep the next from being asked.)
                turn._polling = False
                call = turn._call
                if call is _AFTER_POLL:
                    turn.send()
                elif call is not None and call.cancelled:
                    # Its delayed call was cancelled from outside (trial's
                    # janitor cancels what a test left; an application
                    # may clean up so): owed for good, it kept every later
                    # turn end from being asked, and nothing this reactor's
                    # connections wrote went out again.
                    turn.send()

        reactor.doIteration = doIteration

    def _schedule(self) -> None:
        """Have this turn end (L{send}) once, whatever waits for it."""
        if self._call is None:
            self._call = _AFTER_POLL if self._polling else self.reactor.callLater(0, self.send)

    def add(self, transport: "TurnEndWrites") -> None:
        self.queued.append(transport)
        self._schedule()

    def call(self, func: Callable[[], None]) -> TurnEndCall:
        """Call C{func} at the end of this turn, before the turn's output is sent."""
        call = TurnEndCall(self, func)
        self.calls.append(call)
        self._schedule()
        return call

    def send(self) -> None:
        """
        The turn is over: the calls made for its end run, in order (and the
        calls they make, a few rounds deep); then each transport written to,
        by them too, sends what it holds.
        """
        rounds = 0
        while self.calls and rounds < self.ROUNDS:
            calls, self.calls = self.calls, []
            rounds += 1
            for call in calls:
                try:
                    call._run()
                except Exception:
                    # (One call's bug must not keep the turn's output back.)
                    log.failure("a call at the end of a reactor turn failed")
        # What is written from here on (a producer resumed) is the next turn's.
        self._call = None
        queued, self.queued = self.queued, []
        for transport in queued:
            # One connection's error (its producer's, say) is its own: the
            # others of the turn are still sent to, and not left queued for
            # good, which would keep them from ever sending again.
            try:
                transport._send_turn()
            except Exception:
                log.failure("sending {transport} its turn's output", transport=transport)
        if self.calls:
            self._schedule()


_turn_ends: "WeakKeyDictionary[Any, TurnEnd]" = WeakKeyDictionary()


def turn_end(reactor: Any) -> TurnEnd:
    """
    The turn end of C{reactor}, made on first use, for a caller that makes
    calls at the end of many turns (a file store's flushes) and keeps it:
    L{TurnEnd.call} is L{at_turn_end} without the look-up.
    """
    turn = _turn_ends.get(reactor)
    if turn is None:
        turn = _turn_ends[reactor] = TurnEnd(reactor)
    return turn


def at_turn_end(reactor: Any, func: Callable[[], None]) -> TurnEndCall:
    """
    Call C{func} at the end of this turn of C{reactor} (any C{IReactorTime},
    a C{task.Clock} in tests), before the output written in the turn, and by
    C{func}, is sent: where a C{callLater(0)} would leave what C{func} writes
    to the turn after.  Calls run in the order they were made.
    """
    return turn_end(reactor).call(func)


def _refuse(iovec: List[bytes]) -> None:
    """Raise Twisted's TypeError for the first piece of C{iovec} that is not bytes, if any."""
    for piece in iovec:
        if piece.__class__ is not bytes:
            raise TypeError("Data must be bytes, not {!r}".format(type(piece).__name__))


class TurnEndWrites:
    """
    Mixed into a Twisted TCP transport's class (C{tcp.Server},
    C{tcp.Client}) by L{send_at_turn_end}: C{write} and C{writeSequence}
    buffer as Twisted's do (and pause a streaming producer past the buffer's
    size as they do), but the socket is sent to at the end of the turn
    without being registered for writability; only what it does not take
    is left to Twisted's C{doWrite}.
    """

    #: Set by L{send_at_turn_end}: this reactor's turn.
    _turn: TurnEnd
    #: Whether this transport waits in C{_turn} to send.
    _queued = False
    #: Whether C{loseConnection} was called and the close waits for the
    #: turn's end (L{loseConnection}).
    _closing = False
    #: An orderly close is one C{close()}, without Twisted's C{shutdown()}
    #: first: the socket is ours alone (Python's sockets are close-on-exec,
    #: and eventsvc never forks), so C{close()} sends the FIN itself, as
    #: nats-server's (Go's C{Close}) does.  A system call of about 18 a
    #: plain connection, nearly always after the peer had closed first.
    _shouldShutdown = False

    # (Twisted's FileDescriptor and tcp.Connection: what is read and set of them.)
    connected: int
    disconnecting: int
    disconnected: int
    _writeDisconnected: bool
    _writeDisconnecting: bool
    _aborting: bool
    _tempDataBuffer: List[bytes]
    _tempDataLen: int
    dataBuffer: bytes
    offset: int
    producer: Any
    producerPaused: bool
    streamingProducer: bool
    socket: Any
    TLS: bool
    startWriting: Callable[[], None]
    stopReading: Callable[[], None]
    connectionLost: Callable[[Any], None]
    _maybePauseProducer: Callable[[], None]

    def write(self, data: bytes) -> None:
        """Buffer C{data}, to be sent at the end of this turn (Twisted's C{write}, less its C{startWriting})."""
        if self.TLS:
            # Twisted's startTLS (a leaf link's): through its TLS layer, whose
            # records take Twisted's own way to the socket.
            super().write(data)  # type: ignore[misc]
            return
        if not self.connected or self._writeDisconnected or not data:
            return
        if data.__class__ is not bytes:
            raise TypeError("Data must be bytes, not {!r}".format(type(data).__name__))
        had = self._tempDataLen
        self._tempDataBuffer.append(data)
        self._tempDataLen = had + len(data)
        self._buffered(had)

    def writeSequence(self, iovec: List[bytes]) -> None:
        """Buffer every piece of C{iovec}, unjoined, to be sent at the end of this turn."""
        if self.TLS:
            super().writeSequence(iovec)  # type: ignore[misc]
            return
        if not self.connected or self._writeDisconnected or not iovec:
            return
        if JOIN_SEQUENCES:
            try:
                joined = b"".join(iovec)
            except TypeError:
                _refuse(iovec)
                raise
            size = len(joined)
            if not size:
                return
            had = self._tempDataLen
            if size < SENDMSG_PIECE * len(iovec):
                self._tempDataBuffer.append(joined)
            else:
                # Large pieces: sent as they are (sendmsg), as before.
                self._tempDataBuffer.extend(iovec)
            self._tempDataLen = had + size
            self._buffered(had)
            return
        size = 0
        for piece in iovec:
            if piece.__class__ is not bytes:
                _refuse(iovec)
            size += len(piece)
        if not size:
            return
        had = self._tempDataLen
        self._tempDataBuffer.extend(iovec)
        self._tempDataLen = had + size
        self._buffered(had)

    def _buffered(self, had: int) -> None:
        """C{had} bytes were buffered before this write."""
        self._maybePauseProducer()
        if self._queued:
            return
        if (had or self.offset < len(self.dataBuffer) or self.disconnecting or self._writeDisconnecting
                or (self.producer is not None and not self.streamingProducer)):
            # Sending is Twisted's business now: a backlog (it registered for
            # writability, so startWriting costs nothing), a close, a pull producer.
            self.startWriting()
            return
        self._queued = True
        self._turn.add(self)

    def loseConnection(self) -> None:
        """
        Close once what is written is sent.  Twisted's own stops reading and
        registers the socket for writability (two C{epoll_ctl}s), sends on
        the next turn and then closes, unregistering it (a third): every TLS
        connection's close, whose close_notify is written and the connection
        closed in the same call, and every C{-ERR} then close.  When nothing
        written earlier is still unsent (no backlog of Twisted's, no producer
        waiting to be resumed), the close is left to the end of this turn
        instead: the turn's output is sent, in one C{send}, and the socket
        closed, as Twisted's C{doWrite} would have (C{connectionLost} with
        C{ConnectionDone}), one C{epoll_ctl} in all.  Nothing is read from
        the socket meanwhile (L{doRead}), and whatever is unusual (the
        socket does not take it all, a paused producer, a half-close) goes
        Twisted's way from where it stands.
        """
        if (self.TLS or not self.connected or self.disconnecting or self._writeDisconnected or self._writeDisconnecting
                or self.offset < len(self.dataBuffer)
                or (self._tempDataLen and not self._queued)
                or (self.producer is not None and (not self.streamingProducer or self.producerPaused))):
            super().loseConnection()  # type: ignore[misc]
            return
        self.disconnecting = 1
        self._closing = True
        if not self._queued:
            self._queued = True
            self._turn.add(self)

    def doRead(self) -> Any:
        """Twisted's, unless the connection is closing at this turn's end: it stopped reading when asked to close."""
        if self._closing:
            return None
        return super().doRead()  # type: ignore[misc]

    def readConnectionLost(self, reason: Failure) -> None:
        """
        The peer closed its side: Twisted's, which tells the protocol of a
        half-close when it can take one (C{IHalfCloseableProtocol}) and
        closes the connection otherwise.  Whether it can is asked once per
        protocol class (L{_half_closeable}), not of the interface registry
        at every close (1.5 us of each plaintext connection's close).
        """
        protocol = self.protocol  # type: ignore[attr-defined]
        if _half_closeable(protocol):
            super().readConnectionLost(reason)  # type: ignore[misc]
        else:
            self.connectionLost(reason)

    def _close_twisted_way(self) -> None:
        """A close waiting for the turn's end that cannot be done there: Twisted's C{doWrite} sends what is left, then closes."""
        self._closing = False
        self.stopReading()
        self.startWriting()

    def _send_turn(self) -> None:
        """The end of the turn: send what is buffered; what the socket does not take, Twisted sends."""
        self._queued = False
        if not self.connected or self.disconnected or self._aborting:
            return
        closing = self._closing
        if not self._tempDataLen and not closing:
            return
        if closing:
            if self.offset < len(self.dataBuffer) or self._writeDisconnecting:
                self._close_twisted_way()
                return
            if not self._tempDataLen:
                self._closed_at_turn_end()
                return
        elif self.offset < len(self.dataBuffer) or self.disconnecting or self._writeDisconnecting:
            self.startWriting()
            return
        pieces = self._tempDataBuffer
        size = self._tempDataLen
        try:
            if len(pieces) == 1:
                sent = self.socket.send(pieces[0])
            elif size >= SENDMSG_PIECE * len(pieces):
                sent = self.socket.sendmsg(pieces[:IOV_MAX])
            else:
                joined = b"".join(pieces)
                pieces[:] = [joined]
                sent = self.socket.send(joined)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Twisted's doWrite meets the error again and closes the
            # connection its way (connectionLost with the reason).
            if closing:
                self._close_twisted_way()
            else:
                self.startWriting()
            return
        if sent == size:
            del pieces[:]
            self._tempDataLen = 0
            if closing:
                self._closed_at_turn_end()
                return
            producer = self.producer
            if producer is not None and self.producerPaused:
                # As Twisted's doWrite when its buffer empties.
                self.producerPaused = False
                producer.resumeProducing()
            return
        if sent:
            self._tempDataBuffer = _after(pieces, sent)
            self._tempDataLen = size - sent
        if closing:
            self._close_twisted_way()
        else:
            self.startWriting()

    def _closed_at_turn_end(self) -> None:
        """All is sent of a connection closing at the turn's end: it closes, as Twisted's reactor closes it after C{doWrite}."""
        producer = self.producer
        if producer is not None and (not self.streamingProducer or self.producerPaused):
            # (Paused by what was written after the close: Twisted resumes it, and closes once it is done.)
            self._close_twisted_way()
            return
        self._closing = False
        self.connectionLost(Failure(CONNECTION_DONE))


#: Protocol classes, and whether theirs take a half-close (L{_half_closeable}).
_half_closing: Dict[type, bool] = {}


def _half_closeable(protocol: Any) -> bool:
    """
    Whether C{protocol} may take a half-close (Twisted adapts it to
    C{IHalfCloseableProtocol}): its class declares it, or an adapter is
    registered for it (both asked once per class, at its first close), or
    this instance alone is said to provide something (C{directlyProvides}:
    then Twisted asks, every time).
    """
    if "__provides__" in getattr(protocol, "__dict__", ()):
        return True
    cls = protocol.__class__
    known = _half_closing.get(cls)
    if known is None:
        from twisted.internet.interfaces import IHalfCloseableProtocol

        known = _half_closing[cls] = IHalfCloseableProtocol(protocol, None) is not None
    return known


def _after(pieces: List[bytes], sent: int) -> List[bytes]:
    """What of C{pieces} is left once their first C{sent} bytes are sent."""
    for i, piece in enumerate(pieces):
        if sent < len(piece):
            return [piece[sent:]] + pieces[i + 1:] if sent else pieces[i:]
        sent -= len(piece)
    return []


#: Each transport class met, and what it becomes (L{_turn_end_class}): itself
#: when it already sends at turn ends, None when it is no TCP transport (a
#: TLS or WebSocket layer, a test's).
_classes: Dict[type, Optional[type]] = {}


def _turn_end_class(cls: type) -> Optional[type]:
    """C{cls} with L{TurnEndWrites} mixed in (made once per class), or None when it is not Twisted's TCP transport."""
    try:
        return _classes[cls]
    except KeyError:
        pass
    from twisted.internet import tcp

    made: Optional[type]
    if issubclass(cls, TurnEndWrites):
        made = cls
    elif not issubclass(cls, tcp.Connection):
        made = None
    else:
        made = type("TurnEnd" + cls.__name__, (TurnEndWrites, cls), {})
        # (Found again at once: a connection's transport is asked twice,
        # once set up and once its writer attached.)
        _classes[made] = made
    _classes[cls] = made
    return made


def set_up(transport: Any) -> None:
    """
    What a NATS connection's TCP transport needs before its first write
    (the greeting INFO): TCP_NODELAY (L{no_delay}) and sends at the end of
    each turn (L{send_at_turn_end}).  Set up later, the INFO took Twisted's
    way: registered for writability and sent on the next turn, then
    unregistered, two C{epoll_ctl}s and a reactor turn per connection.
    """
    for layer in _layers(transport):
        cls: Type[Any] = type(layer)
        made = _turn_end_class(cls)
        if made is None:
            continue
        # (One walk down the layers for both: this is every connection's.)
        try:
            layer.setTcpNoDelay(True)
        except OSError:
            pass
        if made is not cls:
            layer._turn = turn_end(layer.reactor)
            layer.__class__ = made
        return
    no_delay(transport)


def send_at_turn_end(transport: Any) -> bool:
    """
    Have the TCP transport under C{transport} (walking down through TLS and
    WebSocket layers) send at the end of each turn it is written in
    (L{TurnEndWrites}).  Returns False, leaving it alone, when there is no
    Twisted TCP transport under it (memory transports in tests, another
    reactor's kind).
    """
    for layer in _layers(transport):
        cls: Type[Any] = type(layer)
        made = _turn_end_class(cls)
        if made is None:
            continue
        if made is not cls:
            layer._turn = turn_end(layer.reactor)
            layer.__class__ = made
        return True
    return False
