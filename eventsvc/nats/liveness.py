"""
Liveness: the pinger of a client connection or a route.

Every C{interval} the pinger sends PING, unless the peer showed signs of
life within the interval (a client's reads or its own PING: nats-server's
rule, so busy connections are not pinged at all); past C{ping_max} PINGs
without a PONG the connection is stale, and C{stale} is called.

The pingers of one clock and interval share one delayed call
(L{PingSchedule}), not one each: the reactor keeps its delayed calls in a
heap, and every C{callLater} pays for the heap's depth, the one that ends
each reactor turn (L{eventsvc.nats.tcp.TurnEnd}) included.  With a timer per
connection, a fleet of 200 slow publishers cost some 14 comparisons of
delayed calls, in Python, per message (13% of a turn's instructions on
CPython, 9% on PyPy); with 10,000 connections, more.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, Optional
from weakref import WeakKeyDictionary

from twisted.logger import Logger

from eventsvc.nats.timers import cancel

PING = b"PING\r\n"
PONG = b"PONG\r\n"


class PingSchedule:
    """
    When the pingers of one clock and one interval are due, under one
    delayed call.  A pinger is due C{interval} after it was added, and it
    is added (again) at the clock's time, so the pingers are due in the
    order they were added: a first-in first-out queue (an ordered dict,
    which also drops a stopped pinger at once) holds them, and the one
    delayed call is for the first.  Each pinger is called at the time its
    own C{callLater} would have run.
    """

    __slots__ = ("clock", "interval", "due", "_call", "_running")

    log = Logger()

    def __init__(self, clock: Any, interval: float) -> None:
        self.clock = clock
        self.interval = interval
        #: Pinger -> when it is due, in that order.
        self.due: "OrderedDict[Pinger, float]" = OrderedDict()
        self._call: Any = None
        self._running = False

    def add(self, pinger: "Pinger") -> None:
        """C{pinger} is due one interval from now (L{Pinger._due} is called then)."""
        due = self.due
        due[pinger] = self.clock.seconds() + self.interval
        due.move_to_end(pinger)
        if self._call is None and not self._running:
            self._call = self.clock.callLater(self.interval, self._run)

    def remove(self, pinger: "Pinger") -> None:
        """C{pinger} is no longer due; with none left, the delayed call goes too."""
        if self.due.pop(pinger, None) is not None and not self.due:
            self._call = cancel(self._call)

    def __contains__(self, pinger: "Pinger") -> bool:
        return pinger in self.due

    def _run(self) -> None:
        self._call = None
        self._running = True
        due = self.due
        try:
            # Those due now, each once: a pinger called is added again at the
            # end, due an interval later (at once, were the interval 0).
            for _ in range(len(due)):
                if not due:
                    break
                pinger, when = next(iter(due.items()))
                if when > self.clock.seconds():
                    break
                del due[pinger]
                try:
                    pinger._due()
                except Exception:
                    # (One connection's failure is its own: the others due
                    # now are still pinged, as their own timers would be.)
                    self.log.failure("pinging a peer")
        finally:
            self._running = False
            if due and self._call is None:
                self._call = self.clock.callLater(max(next(iter(due.values())) - self.clock.seconds(), 0.0), self._run)


_schedules: "WeakKeyDictionary[Any, Dict[float, PingSchedule]]" = WeakKeyDictionary()


def schedule(clock: Any, interval: float) -> PingSchedule:
    """The L{PingSchedule} of C{clock} (an C{IReactorTime}) and C{interval}, made when first asked for."""
    mine = _schedules.get(clock)
    if mine is None:
        mine = _schedules[clock] = {}
    found = mine.get(interval)
    if found is None:
        found = mine[interval] = PingSchedule(clock, interval)
    return found


class Pinger:
    """
    @ivar pings_out: PINGs sent and not answered.
    """

    __slots__ = (
        "clock", "interval", "ping_max", "_send", "_stale", "_last_heard", "pings_out", "last_ping_in", "_schedule",
        "rtt", "_sent_at",
    )

    def __init__(
        self,
        clock: Any,
        interval: float,
        ping_max: int,
        send: Callable[[bytes], None],
        stale: Callable[[], None],
        last_heard: Optional[Callable[[], float]] = None,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.ping_max = ping_max
        #: Queue bytes for the peer and write them out.
        self._send = send
        self._stale = stale
        #: When the peer last sent anything (None: always ping, as routes are).
        self._last_heard = last_heard
        self.pings_out = 0
        self.last_ping_in = -1.0
        #: Set by L{start}: the schedule it waits in.
        self._schedule: Optional[PingSchedule] = None
        #: Seconds from our last answered PING to its PONG (0: none answered yet).
        self.rtt = 0.0
        self._sent_at = -1.0

    def start(self) -> None:
        """Ping every interval from now on (started once; again after L{stop}, anew)."""
        if self._schedule is None:
            self._schedule = schedule(self.clock, self.interval)
            self._schedule.add(self)

    def stop(self) -> None:
        """No more PINGs (the connection closed, or is stale)."""
        if self._schedule is not None:
            self._schedule.remove(self)
            self._schedule = None

    def pong_received(self) -> None:
        self.pings_out = 0
        if self._sent_at >= 0:
            self.rtt = max(self.clock.seconds() - self._sent_at, 0.0)
            self._sent_at = -1.0

    def ping_now(self) -> None:
        """A PING at once (a link just up, to know its round trip, as nats-server's first PING)."""
        self.pings_out += 1
        self._sent_at = self.clock.seconds()
        self._send(PING)

    def ping_received(self) -> None:
        """The peer pinged us: it is alive (and is answered by the connection)."""
        self.last_ping_in = self.clock.seconds()

    def _due(self) -> None:
        """An interval has passed (L{PingSchedule} calls it): PING, unless the peer was heard from; stale past C{ping_max}."""
        interval = self.interval
        if self._schedule is None:
            return
        self._schedule.add(self)
        if self._last_heard is not None:
            now = self.clock.seconds()
            # As nats-server: no PING while the peer shows signs of life.
            if now - self._last_heard() < interval or now - self.last_ping_in < interval:
                return
        if self.pings_out + 1 > self.ping_max:
            self.stop()
            self._stale()
            return
        self.pings_out += 1
        if self._sent_at < 0:
            self._sent_at = self.clock.seconds()
        self._send(PING)
