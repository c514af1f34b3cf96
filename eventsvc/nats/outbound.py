"""
How output is held back: what a connection owes its peer, and the rules
that keep one slow peer from slowing anyone else.  Client connections and
routes both use it.

The broker appends frames to L{Outbound.out} as it delivers, and calls
L{Outbound.flush} once per read of the connection that published them, so
a read carrying a thousand messages costs each subscriber one write.

The outbound part is the streaming producer of its transport: when the
transport's buffer passes its high-water mark, Twisted pauses it, and from
then on frames are held here (L{HeldOutput}).  Twisted resumes a producer
only once its buffer is empty, so each resume hands over at most
C{PUSH_SIZE}: what stays held is the peer's real backlog.  As in
nats-server:

  - over half of C{max_pending} held, a connection whose publishes feed it
    stops being read for 0.1-1 s (L{stall_duration}) or until this one
    drains below the mark (L{Outbound.stall});
  - over C{max_pending}, or paused longer than C{write_deadline}, the peer
    is cut off (C{on_slow}), and nobody else waits for it.

A connection's reads are paused for several reasons at once (a stall, an
authenticator answering, the parse budget); L{ReadGate} resumes them only
when none is left.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Set

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from eventsvc.nats.tcp import send_at_turn_end
from eventsvc.nats.timers import cancel


class HeldOutput:
    """
    Frames held while a transport is paused (its buffer is over its
    high-water mark); each resume takes at least PUSH_SIZE of them.
    """

    __slots__ = ("frames", "size")
    PUSH_SIZE = 256 * 1024

    def __init__(self) -> None:
        self.frames: List[bytes] = []
        self.size = 0

    def hold(self, data: bytes) -> int:
        """Keep C{data}; returns how many bytes are held now."""
        self.frames.append(data)
        self.size += len(data)
        return self.size

    def take(self) -> List[bytes]:
        """
        The next frames to hand to the transport, at least PUSH_SIZE bytes
        of them when there are (empty when nothing is held).  A list, for
        C{writeSequence}: the transport joins what it buffers anyway, and a
        join here too cost PyPy's collector a large allocation per resume.
        """
        frames = self.frames
        count = size = 0
        while count < len(frames) and size < self.PUSH_SIZE:
            size += len(frames[count])
            count += 1
        taken = frames[:count]
        del frames[:count]
        self.size -= size
        return taken

    def clear(self) -> None:
        del self.frames[:]
        self.size = 0


class ReadGate:
    """
    Why a connection's transport is not being read: it is paused while any
    reason holds and resumed when the last one goes.
    """

    __slots__ = ("transport", "reasons")

    def __init__(self) -> None:
        self.transport: Any = None
        self.reasons: Set[str] = set()

    def hold(self, reason: str) -> None:
        if not self.reasons and self.transport is not None:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def release(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons and self.transport is not None:
            self.transport.resumeProducing()

    def holding(self, reason: str) -> bool:
        return reason in self.reasons


STALLED = "stalled"


@implementer(IPushProducer)
class Outbound:
    """
    What one connection owes its peer.

    @ivar out: frames waiting for the next L{flush} (the broker appends).
    @ivar gate: the connection's L{ReadGate}: a stall holds it.
    """

    def __init__(
        self,
        clock: Any,
        max_pending: int,
        on_slow: Callable[[str], None],
        write_deadline: Optional[float] = None,
        stalls: bool = True,
        gate: Optional[ReadGate] = None,
    ) -> None:
        self.clock = clock
        self.max_pending = max_pending
        #: Called with nats-server's reason when the peer must be cut off.
        self.on_slow = on_slow
        self.write_deadline = write_deadline
        #: Whether going over half of max_pending stalls the publishers
        #: (clients: yes; routes: no, they are cut at max_pending only).
        self.stalls = stalls
        self.gate = gate if gate is not None else ReadGate()
        self.transport: Any = None
        self.out: List[bytes] = []
        self.closed = False
        self.paused = False
        self._held = HeldOutput()
        self._deadline_timer: Any = None
        self._stall_timer: Any = None
        self._stalled_producers: List["Outbound"] = []

    def attach(self, transport: Any) -> None:
        """
        Write to C{transport} from now on, as its streaming producer; the
        TCP transport under it sends at the end of each turn it is written
        in (L{send_at_turn_end}).
        """
        self.transport = transport
        self.gate.transport = transport
        transport.registerProducer(self, True)
        send_at_turn_end(transport)

    def close_transport(self, transport: Any) -> bool:
        """
        Close C{transport} (the connection's: this part may never have been
        attached to it) after what it was handed, unregistered first:
        Twisted's TLS layer shuts down (its close_notify, then the TCP close)
        only once no producer is registered with it, and a server-side close
        of a TLS connection (C{-ERR} then close, a timeout, a stale peer)
        that left us registered never closed the socket: the peer kept it
        open, uncounted, for as long as it liked.  Returns whether the peer
        was not taking what it was sent (the transport had paused us): the
        caller then gives it write_deadline before it cuts.
        """
        backlogged = self.paused
        if self.transport is not None:
            self.transport.unregisterProducer()
        transport.loseConnection()
        return backlogged

    def flush(self) -> bool:
        """
        Write what C{out} holds.  Returns True when the peer is over its
        stall mark, so the connection that published to it should stall.
        """
        out = self.out
        if not out or self.closed:
            return False
        if not self.paused:
            # Unjoined: the TCP transport joins a turn's writes once, or
            # sends them as they are (tcp.TurnEndWrites); a layer over it
            # (TLS, WebSocket) joins them once.  (A copy of the list: the
            # plans hold out.append.)
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writeSequence(out[:])
            del out[:]
            return False
        data = out[0] if len(out) == 1 else b"".join(out)
        del out[:]
        held = self._held.hold(data)
        if held > self.max_pending:
            self.on_slow("Slow Consumer (Pending Bytes)")
            return False
        return self.stalls and held > self.max_pending // 2

    def write_all(self, extra: bytes = b"") -> None:
        """
        Hand the transport everything owed now, what a full socket held back
        first, and C{extra} (a closing -ERR): a close owes the peer every
        frame accepted for it, as nats-server flushes them all before it
        closes (only a slow consumer's or a failed write's close does not).
        """
        held = self._held
        if held.size:
            self.transport.writeSequence(held.frames[:])
            held.clear()
        if extra:
            self.out.append(extra)
        if self.out:
            self.transport.write(b"".join(self.out))
            del self.out[:]

    @property
    def pending_bytes(self) -> int:
        """Bytes owed to the peer and not yet handed to the transport."""
        return self._held.size + sum(map(len, self.out))

    @property
    def held_bytes(self) -> int:
        return self._held.size

    # -- IPushProducer: the transport's buffer ------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: the peer is not reading fast enough."""
        if self.paused or self.closed:
            return
        self.paused = True
        if self.write_deadline is not None:
            self._deadline_timer = self.clock.callLater(self.write_deadline, self._deadline_passed)

    def resumeProducing(self) -> None:
        """The transport's buffer is empty: hand it the next piece."""
        self.paused = False
        self._deadline_timer = cancel(self._deadline_timer)
        if self._held.size and not self.closed:
            # This may pause us again at once: that is the point.
            self.transport.writeSequence(self._held.take())
        if self._stalled_producers and self._held.size <= self.max_pending // 2:
            self._release_producers()

    def stopProducing(self) -> None:
        pass

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        self.on_slow("Slow Consumer (Write Deadline)")

    # -- publisher stalls -----------------------------------------------------

    def stall(self, consumer: "Outbound") -> None:
        """
        Stop reading from this (publishing) connection until C{consumer}
        drains below its stall mark, or for nats-server's stall time.
        """
        if self._stall_timer is not None or self.closed:
            return
        consumer._stalled_producers.append(self)
        self.gate.hold(STALLED)
        self._stall_timer = self.clock.callLater(stall_duration(consumer._held.size, consumer.max_pending), self.unstall)

    @property
    def stalled(self) -> bool:
        return self._stall_timer is not None

    def unstall(self) -> None:
        timer, self._stall_timer = self._stall_timer, None
        if timer is None:
            return
        cancel(timer)
        if not self.closed:
            self.gate.release(STALLED)

    def _release_producers(self) -> None:
        producers, self._stalled_producers = self._stalled_producers, []
        for producer in producers:
            producer.unstall()

    def close(self) -> None:
        """The connection is gone: nothing more is written, and nobody waits for it."""
        self.closed = True
        self._deadline_timer = cancel(self._deadline_timer)
        self._stall_timer = cancel(self._stall_timer)
        self._release_producers()
        self._held.clear()
        del self.out[:]


def stall_duration(pending: int, max_pending: int) -> float:
    """How long a fast producer waits for a consumer (nats-server's rule)."""
    if pending >= max_pending:
        return 1.0
    half = max_pending // 2
    ttl = 0.1
    if pending > half:
        ttl += 0.1 * ((pending - half) // max(1, half // 10))
    return ttl
